# Two commands do all set-up on a fresh machine:
#   make run    - the main job on the embedded demo data (six stages through the grading harness,
#                 then explainability and the report)
#   make test   - the test suite
# Benchmarks on ../shared/proxy (long; results are committed under benchmarks/results/):
#   make bench  - the packaged pipeline through the harness with official timeouts, the model
#                 families and the course reference runtime in the same run
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO := demo
RUN := runs/demo
PROXY ?= ../shared/proxy
DATE := $(shell date +%F)

.PHONY: setup run demo-data test bench bench-families bench-attribution explain report submission lint clean

$(STAMP): requirements-dev.txt solution/requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

setup: $(STAMP)

demo-data: $(STAMP)
	$(PY) tools/make_demo_data.py --out $(DEMO)

run: demo-data
	$(PY) tools/run_main.py --data $(DEMO) --out $(RUN)

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) benchmarks/run_bench.py --data $(PROXY) --out benchmarks/results

lint: $(STAMP)
	$(VENV)/bin/hadolint --failure-threshold warning solution/Dockerfile

clean:
	rm -rf $(RUN) $(DEMO) report/build
