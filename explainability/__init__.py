"""Explaining the detectors of ``solution/``: attributions, perturbation audits, error analysis.

Entry point: ``python explainability/explain.py --help``. Everything here reads the
artifacts of a pipeline run (checkpoints, prepared crops, metadata) and never trains.
The modules import the pipeline's own package, ``aidetect`` (``solution/aidetect``),
installed with this one by ``pip install -e .`` (``pyproject.toml``).
"""
