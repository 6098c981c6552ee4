# Two commands do all set-up on a fresh machine:
#   make run    - the main job on the embedded demo data (six stages through the grading harness,
#                 then explainability and the report)
#   make test   - the test suite (make test-slow: with its slow real-conditions twins)
#   make mutation-check - break each promise on purpose in a copy and check that a test fails
# Benchmarks on the proxy dataset, or any dataset root in the course layout given as DATA=/path/to/root
# (long; results are committed under benchmarks/results/; docs/proxy.md describes the proxy):
#   make bench  - the packaged pipeline through the harness with official timeouts, the model
#                 families and the course reference runtime in the same run
#   make explain, make report - explanations and the report from that run
#   make bench-families, make bench-attribution - the families alone, the attribution benchmark
#   make bench-jpeg-bias - the compression cue: the classical model trained with and without it
#   make bench-calibration - Task 2 and Task 3 compared under the same threshold rule
#   make bench-seeds, make bench-robustness - two more seeds of the six stages, then the robustness
#                 comparison runs (every perturbation family, leave-one-family-out) over the three seeds
#   make bench-robust-training, make bench-fusion-share - Task 3's training variants and its fusion share,
#                 compared on a holdout of the train split
#   make bench-throughput - images per second and peak memory of both predict stages on 1,000 and 20,000 images
#                 (with the detectors of `make bench`'s run, or the shipped ones in models/ without it)
#   make submission ID=<student id> - the course zip
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO := demo
RUN := runs/demo
# The dataset root of every benchmark (data/<split>/*.parquet, labels/): override with DATA=/path/to/root.
# The one documented default: where the proxy benchmark (docs/proxy.md) lies on the development machine.
DATA ?= ../shared/proxy
DATE := $(shell date +%F)

.PHONY: setup run demo-data convert-proxy-run test test-slow mutation-check bench bench-throughput bench-seeds bench-robustness bench-robust-training bench-fusion-share bench-families bench-attribution bench-jpeg-bias bench-calibration explain report submission lint clean

$(STAMP): requirements-dev.txt solution/requirements.txt solution/constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

setup: $(STAMP)

demo-data: $(STAMP)
	$(PY) tools/make_demo_data.py --out $(DEMO)

run: demo-data
	$(PY) tools/run_main.py --data $(DEMO) --out $(RUN)

# The suite in two worker processes that share one demo run (tests/conftest.py); a test file runs in one
# worker, so its module fixtures are made once. On the 2-core machine a stage's imports, start-up and
# single-threaded steps leave a core idle that the other worker uses.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder tests

# The suite plus its slow real-conditions twins (train.py beside two busy processes), in one process: the
# twins compare a quiet machine with a loaded one, and a second worker would load the quiet one.
test-slow: $(STAMP)
	$(PY) -m pytest -q --run-slow tests

# Named breakages of the specification's promises, each applied to a temporary copy of the repository;
# every one must make one of its guarding tests fail (about an hour on the 2-core machine).
mutation-check: $(STAMP)
	$(PY) tools/mutation_check.py --out benchmarks/results/$(DATE)-mutation-check.json

bench: $(STAMP)
	PYTHONPATH=tools $(PY) benchmarks/run_bench.py --data $(DATA) --out benchmarks/results

# After `make bench` (they read its run in runs/proxy):
PROXY_RUN := runs/proxy/artifacts
bench-families: $(STAMP)
	$(PY) benchmarks/families.py --artifacts $(PROXY_RUN) --budget 300 --out runs/proxy_families.json

bench-attribution: $(STAMP)
	$(PY) benchmarks/attribution_bench.py --artifacts $(PROXY_RUN) --data $(DATA)/data \
		--out benchmarks/results/$(DATE)-attribution-proxy.json --epochs 6 --run-seconds 320

bench-jpeg-bias: $(STAMP)
	$(PY) benchmarks/jpeg_bias.py --artifacts $(PROXY_RUN) --data $(DATA) \
		--out benchmarks/results/$(DATE)-jpeg-bias-proxy.json

# Throughput needs detectors only, not a run: the proxy run's when there is one, else the shipped ones in models/.
THROUGHPUT_DETECTORS := $(if $(wildcard $(PROXY_RUN)/task02/detector.json),$(PROXY_RUN),models)
bench-throughput: $(STAMP)
	$(PY) benchmarks/throughput.py --artifacts $(THROUGHPUT_DETECTORS) --data $(DATA)/data/predict --images 1000 20000 \
		--out benchmarks/results/$(DATE)-throughput.json

bench-calibration: $(STAMP)
	$(PY) benchmarks/same_calibration.py --artifacts $(PROXY_RUN) \
		--out benchmarks/results/$(DATE)-same-calibration-proxy.json

# Seeds 1 and 2 of the six stages through the harness (seed 0 is `make bench`'s run in runs/proxy).
EXTRA_SEEDS ?= 1 2
bench-seeds: $(STAMP)
	for seed in $(EXTRA_SEEDS); do \
		AMLS_SEED=$$seed $(PY) tools/grade.py --data $(DATA) --quiet --out runs/proxy-seed$$seed/scorecard.json \
			--artifacts-out runs/proxy-seed$$seed/artifacts || exit 1; \
	done
	$(PY) benchmarks/seeds.py --runs runs/proxy $(foreach s,$(EXTRA_SEEDS),runs/proxy-seed$(s)) \
		--out benchmarks/results/$(DATE)-seeds-proxy.json

# Task 3's training variants compared on a holdout of the proxy's train split (never validation):
bench-robust-training: $(STAMP)
	$(PY) benchmarks/robust_training.py --data $(DATA) --seeds 0 1 2 \
		--out benchmarks/results/$(DATE)-robust-training-proxy.json

# After bench-robust-training (it reads runs/robust-training): the network's share of Task 3's fused score
bench-fusion-share: $(STAMP)
	$(PY) benchmarks/fusion_share.py --workdir runs/robust-training --variant broad --seed 0 \
		--out benchmarks/results/$(DATE)-fusion-share-proxy.json

bench-robustness: $(STAMP)
	$(PY) benchmarks/robustness.py --data $(DATA) --runs runs/proxy $(foreach s,$(EXTRA_SEEDS),runs/proxy-seed$(s)) \
		--proxy-bench $$(ls -t benchmarks/results/[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]-proxy.json | head -1) \
		--out benchmarks/results/$(DATE)-robustness-proxy.json

# Runs made before the safe model formats hold pickles, which the pipeline refuses to load: converted once, here.
convert-proxy-run: $(STAMP)
	$(PY) tools/convert_artifacts.py $(PROXY_RUN)

explain: convert-proxy-run
	$(PY) explainability/explain.py --artifacts $(PROXY_RUN) --data $(DATA)/data --out explainability/output \
		--timeout_seconds 900

report: $(STAMP)
	$(PY) report/build_report.py --artifacts $(PROXY_RUN) --explain explainability/output --out report/report.pdf

submission: $(STAMP)
	$(PY) tools/make_submission.py $(if $(ID),--id $(ID),)

lint: $(STAMP)
	$(VENV)/bin/hadolint --failure-threshold warning solution/Dockerfile

clean:
	rm -rf $(RUN) $(DEMO) report/build
