"""Extra stage 'attribute' (not graded): `python attribute.py --timeout_seconds N` after the six stages.

Writes artifacts/attribution/predictions.csv (row_id,predicted_source: real, generator_1..5 or
outlier), metrics.json and figures; see aidetect/attribution.py.
"""
import sys

from aidetect.stages import run_stage

if __name__ == "__main__":
    sys.exit(run_stage("attribute"))
