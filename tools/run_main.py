"""The main job: the six stages through the grading harness, then explainability and the report.

    python tools/run_main.py --data demo --out runs/demo

Prints where the predictions, metrics, scorecard, figures and report are.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

from grade import grade, summary_text


def run_optional(title: str, command: list[str]) -> bool:
    """Run a follow-up step if its script exists; report, never hide, a failure."""
    script = REPO / command[1]
    if not script.exists():
        print(f"[main] {title}: {script.relative_to(REPO)} not present, skipped")
        return False
    print(f"[main] {title}: {' '.join(command[1:])}", flush=True)
    result = subprocess.run([sys.executable, *command[1:]], cwd=REPO)
    if result.returncode != 0:
        print(f"[main] {title} FAILED with exit code {result.returncode}")
    return result.returncode == 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="demo", help="dataset root with data/<split>/ (and labels/)")
    parser.add_argument("--out", default="runs/demo", help="folder for the scorecard, artifacts, figures, report")
    parser.add_argument("--timeout-scale", type=float, default=1.0, help="scale of the official stage timeouts")
    parser.add_argument("--skip-report", action="store_true")
    args = parser.parse_args(argv)
    out = (REPO / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    card = grade(str((REPO / args.data).resolve()), str(REPO / "solution"), workspace=str(out / "workspace"),
                 timeout_scale=args.timeout_scale, out=str(out / "scorecard.json"),
                 artifacts_out=str(out / "artifacts"))
    artifacts = out / "artifacts"
    data = (REPO / args.data / "data").resolve()
    # A short explanation budget: the main job is a demo; the benchmark explains the proxy run in full.
    run_optional("explainability", ["python", "explainability/explain.py", "--artifacts", str(artifacts),
                                    "--data", str(data), "--out", str(out / "explainability"),
                                    "--max-images", "8", "--max-occlusion-images", "2", "--timeout_seconds", "240"])
    if not args.skip_report:
        run_optional("report", ["python", "report/build_report.py", "--artifacts", str(artifacts),
                                "--explain", str(out / "explainability"), "--out", str(out / "report.pdf")])
    print()
    print(summary_text(card))
    print(f"[main] finished in {time.monotonic() - started:.0f}s")
    print(f"[main] scorecard:   {out / 'scorecard.json'}")
    for task in ("task02", "task03"):
        print(f"[main] {task}: predictions {artifacts / task / 'predictions.csv'}, metrics {artifacts / task / 'metrics.json'}")
    print(f"[main] exploration: {artifacts / 'clean'}")
    print(f"[main] explainability: {out / 'explainability'}")
    print(f"[main] report: {out / 'report.pdf'}")
    return 0 if card.get("all_valid") else 1


if __name__ == "__main__":
    sys.exit(main())
