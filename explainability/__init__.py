"""Explaining the detectors of ``solution/``: attributions, perturbation audits, error analysis.

Entry point: ``python explainability/explain.py --help``. Everything here reads the
artifacts of a pipeline run (checkpoints, prepared crops, metadata) and never trains.
The modules import the pipeline's own package, ``solution/aidetect``; this is the
one place that puts it on the import path.
"""
import sys
from pathlib import Path

SOLUTION = Path(__file__).resolve().parents[1] / "solution"
if str(SOLUTION) not in sys.path:
    sys.path.insert(0, str(SOLUTION))
