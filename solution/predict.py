"""Stage 'predict' of the pipeline: `python predict.py --timeout_seconds N` (see README.md)."""
import sys

from aidetect.stages import run_stage

if __name__ == "__main__":
    sys.exit(run_stage("predict"))
