"""Tests of the grading harness ``tools/grade.py`` on a FAKE solution and a tiny dataset.

The fake solution has six stdlib/pyarrow-only stage scripts that probe what the harness must
guarantee: read-only ``data/``, no network, the timeout (SIGTERM ignored -> SIGKILL, child
processes killed too), a failing stage followed by further stages, peak-memory measurement,
``.dockerignore`` handling, prediction validation and scoring.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[1]
GRADE_PY = REPO / "tools" / "grade.py"


def _load_grade():
    spec = importlib.util.spec_from_file_location("grade_harness", GRADE_PY)
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules["grade_harness"] = mod
    spec.loader.exec_module(mod)
    return mod


grade_mod = _load_grade()

PRED_IDS = [100 + i for i in range(12)]
CLASSES = [i % 6 for i in range(12)]
GENERATORS = ["coco", "sd21", "sdxl", "sd3", "dalle3", "mj6"]


def _label_rule(rid: int) -> int:  # what the fake predict.py predicts
    return 0 if rid % 3 == 0 else 1


# ----------------------------------------------------------------------------- fixtures
def make_dataset(root: Path) -> Path:
    img = b"\xff\xd8\xff\xe0fake-jpeg-bytes"
    for split in ["train", "calibration", "calibration_augmented", "validation",
                  "validation_augmented"]:
        d = root / "data" / split
        d.mkdir(parents=True)
        t = pa.table({"image": pa.array([img] * 6, pa.binary()),
                      "source_class": pa.array(list(range(6)), pa.int8())})
        pq.write_table(t, d / "part-0.parquet")
    d = root / "data" / "predict"
    d.mkdir(parents=True)
    for k, chunk in enumerate([PRED_IDS[:7], PRED_IDS[7:]]):  # two files
        t = pa.table({"row_id": pa.array(chunk, pa.int32()),
                      "image": pa.array([img] * len(chunk), pa.binary())})
        pq.write_table(t, d / f"part-{k}.parquet")
    (root / "labels").mkdir()
    pq.write_table(pa.table({"row_id": pa.array(PRED_IDS, pa.int32()),
                             "source_class": pa.array(CLASSES, pa.int8()),
                             "generator": pa.array([GENERATORS[c] for c in CLASSES],
                                                   pa.string())}),
                   root / "labels" / "predict_labels.parquet")
    return root


ARGS = """
import argparse, json, os, sys, time
ap = argparse.ArgumentParser()
ap.add_argument("--timeout_seconds", type=int, required=True)
ARGS = ap.parse_args()
os.makedirs("artifacts", exist_ok=True)
"""

READ_IDS = """
import glob
import pyarrow.parquet as pq
ids = []
for f in sorted(glob.glob("data/predict/*.parquet")):
    ids += pq.read_table(f, columns=["row_id"]).column("row_id").to_pylist()
"""  # fake predict stages: every row_id of data/predict/, in order


STAGE_SCRIPTS = {
    "clean.py": ARGS + """
import socket
res = {"timeout_seconds": ARGS.timeout_seconds, "cwd": os.getcwd(),
       "env": {k: os.environ.get(k) for k in
               ["PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "OMP_NUM_THREADS"]}}
try:
    with open("data/written_by_stage.txt", "w") as f:
        f.write("x")
    res["data_write"] = "succeeded"
except OSError as e:
    res["data_write"] = "failed: " + e.__class__.__name__
res["data_listing"] = sorted(os.listdir("data"))
try:
    s = socket.create_connection(("1.1.1.1", 53), timeout=1)
    s.close()
    res["net"] = "connected"
except OSError as e:
    res["net"] = "failed: " + str(e)
res["stale_artifact_present"] = os.path.exists("artifacts/stale.txt")
res["pycache_present"] = os.path.exists("__pycache__")
res["nested_kept"] = os.path.exists("pkg/keep.txt")
with open("artifacts/checks.json", "w") as f:
    json.dump(res, f)
print("clean: checks written", res)
""",
    "prepare.py": ARGS + """
blob = b"x" * (80 * 2**20)   # 80 MB, really touched
pid = os.fork()              # a worker that shares the 80 MB with its parent (copy-on-write)
if pid == 0:
    time.sleep(1.5)
    os._exit(0)
for i in range(50):
    print("prepare line", i)
time.sleep(1.5)
os.waitpid(pid, 0)
print("prepare done", len(blob))
""",
    "train.py": ARGS + """
import signal, subprocess
signal.signal(signal.SIGTERM, lambda *a: print("train: got SIGTERM, ignoring it", flush=True))
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
with open("artifacts/train_child.pid", "w") as f:
    f.write(str(child.pid))
print("train: training forever", flush=True)
while True:
    time.sleep(0.1)
""",
    "predict.py": ARGS + READ_IDS + """
os.makedirs("artifacts/task02", exist_ok=True)
with open("artifacts/task02/predictions.csv.tmp", "w") as f:
    f.write("row_id,predicted_label\\n")
    for r in ids:
        f.write(f"{r},{0 if r % 3 == 0 else 1}\\n")
os.replace("artifacts/task02/predictions.csv.tmp", "artifacts/task02/predictions.csv")
with open("artifacts/task02/metrics.json", "w") as f:
    json.dump({"threshold": 0.42, "model": "fake",
               "splits": {"validation": {"recall_ai": 0.9, "fpr": 0.1, "roc_auc": 0.95},
                          "validation_augmented": {"recall_ai": 0.7, "fpr": 0.15,
                                                   "roc_auc": 0.85}}}, f)
print("predict: wrote", len(ids), "rows")
""",
    "train_augmented.py": ARGS + """
os.makedirs("artifacts/task03", exist_ok=True)
with open("artifacts/task03/metrics.json", "w") as f:
    f.write("{not json")
print("train_augmented: about to fail", file=sys.stderr)
sys.exit(3)
""",
    "predict_augmented.py": ARGS + READ_IDS + """
os.makedirs("artifacts/task03", exist_ok=True)
rows = [(r, 1) for r in ids[:-1]]          # the last id is missing
rows.append((ids[0], 0))                    # the first one is duplicated
rows[1] = (rows[1][0], 2)                   # a label outside {0, 1}
with open("artifacts/task03/predictions.csv", "w") as f:
    f.write("row_id,predicted_label\\n")
    f.writelines(f"{r},{l}\\n" for r, l in rows)
print("predict_augmented: wrote an invalid file")
""",
}


def make_solution(sol: Path) -> Path:
    sol.mkdir(parents=True)
    for name, code in STAGE_SCRIPTS.items():
        (sol / name).write_text(textwrap.dedent(code))
    (sol / ".dockerignore").write_text("# build context filter\ndata\nartifacts\n__pycache__\n"
                                       "*.pyc\n.pytest_cache\n")
    (sol / "artifacts").mkdir()
    (sol / "artifacts" / "stale.txt").write_text("must not be copied")
    (sol / "__pycache__").mkdir()
    (sol / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    (sol / "pkg").mkdir()
    (sol / "pkg" / "keep.txt").write_text("nested files are copied")
    (sol / "data").mkdir()
    (sol / "data" / "local_copy.txt").write_text("a local data folder is never copied")
    return sol


# ----------------------------------------------------------------------------- end to end
def test_full_run_on_fake_solution(tmp_path):
    root = make_dataset(tmp_path / "ds")
    sol = make_solution(tmp_path / "src" / "solution")
    ws = tmp_path / "ws"
    scale = 0.004  # 600 s -> 2 s, 1800 s -> 7 s
    card = grade_mod.grade(str(root), str(sol), workspace=str(ws), timeout_scale=scale,
                           grace=1.0, keep_workspace=True,
                           artifacts_out=str(tmp_path / "art_copy"), quiet=True)

    # the scorecard on disk equals the returned dict
    sc_path = ws / "scorecard.json"
    assert sc_path.is_file()
    on_disk = json.loads(sc_path.read_text())
    assert on_disk["stages_selected"] == grade_mod.STAGE_NAMES
    for key in ["date", "hostname", "cpu_model", "nproc", "threads_for_cpus8", "isolation",
                "timeout_scale", "data_root", "git_commit", "stages", "total_wall_seconds",
                "tasks", "all_valid", "warnings", "memory_measure", "kill_policy"]:
        assert key in on_disk, key
    assert on_disk["threads_for_cpus8"] == min(8, os.cpu_count())
    assert on_disk["timeout_scale"] == scale

    stages = {s["name"]: s for s in card["stages"]}
    assert [s["name"] for s in card["stages"]] == grade_mod.STAGE_NAMES
    assert stages["clean"]["timeout_seconds"] == 2
    assert stages["train"]["timeout_seconds"] == 7
    assert stages["clean"]["command"] == "python clean.py --timeout_seconds 2"
    for n in ["clean", "prepare", "predict", "predict_augmented"]:
        assert stages[n]["ok"] and stages[n]["exit_code"] == 0, stages[n]
        assert not stages[n]["timed_out"]

    # timeout: SIGTERM ignored -> SIGKILL after the grace, later stages still ran
    tr = stages["train"]
    assert tr["timed_out"] and tr["killed"] and not tr["ok"]
    assert tr["exit_code"] == -9 and tr["signal"] == "SIGKILL"
    assert 7 <= tr["wall_seconds"] < 7 + 1 + 3
    assert any("got SIGTERM" in line for line in tr["tail"])
    child_pid = int((ws / "solution" / "artifacts" / "train_child.pid").read_text())
    assert not _pid_alive(child_pid), "the stage's child process survived the timeout"

    # a failing stage is reported, the last stage still ran
    ta = stages["train_augmented"]
    assert ta["exit_code"] == 3 and not ta["ok"] and not ta["timed_out"]
    assert any("about to fail" in line for line in ta["tail"])

    # logs and tail
    pre = stages["prepare"]
    assert len(pre["tail"]) == 30 and pre["tail"][-1].startswith("prepare done")
    log = Path(pre["log"]).read_text()
    assert "prepare line 0" in log and "prepare line 49" in log
    assert Path(pre["log"]) == ws / "logs" / "prepare.log"

    # memory: 80 MB held for 1.5 s by a process and a forked worker sharing it must show up in
    # every measure; the RSS sum counts the shared pages twice, the PSS sum once
    assert pre["peak_rss_tree_sampled_mb"] is not None and pre["peak_rss_tree_sampled_mb"] >= 160
    assert pre["peak_rss_max_process_mb"] >= 80
    assert pre["peak_rss_mb"] == max(pre["peak_rss_tree_sampled_mb"],
                                     pre["peak_rss_max_process_mb"])
    assert 80 <= pre["peak_pss_tree_sampled_mb"] < pre["peak_rss_tree_sampled_mb"] - 60
    assert stages["clean"]["peak_rss_mb"] < pre["peak_rss_mb"]

    # build context: .dockerignore honoured, data/ never copied, env like the image
    checks = json.loads((ws / "solution" / "artifacts" / "checks.json").read_text())
    assert checks["stale_artifact_present"] is False
    assert checks["pycache_present"] is False
    assert checks["nested_kept"] is True
    assert "local_copy.txt" not in checks["data_listing"]
    assert sorted(checks["data_listing"]) == sorted(
        ["calibration", "calibration_augmented", "predict", "train", "validation",
         "validation_augmented"] + (["written_by_stage.txt"]
                                    if checks["data_write"] == "succeeded" else []))
    assert checks["cwd"] == str(ws / "solution")
    assert checks["env"]["PYTHONDONTWRITEBYTECODE"] == "1"
    assert checks["env"]["PYTHONUNBUFFERED"] == "1"
    assert checks["env"]["OMP_NUM_THREADS"] is None

    # isolation: read-only data and no network (when this machine permits unshare)
    (tmp_path / "probe_dst").mkdir()
    probe_ok, _ = grade_mod.probe_isolation(str(root / "data"), str(tmp_path / "probe_dst"))
    if probe_ok:
        assert card["isolation"] == "unshare(mount,net)+ro-bind"
        assert checks["data_write"].startswith("failed"), checks
        assert checks["net"].startswith("failed"), checks
        assert not (root / "data" / "written_by_stage.txt").exists()
    else:
        assert card["isolation"] == "none"
        assert card["warnings"]

    # task02: valid and scored
    t2 = card["tasks"]["task02"]
    assert t2["valid"] and t2["problems"] == []
    assert t2["predictions"]["n_rows"] == 12 and t2["predictions"]["n_expected"] == 12
    sc = t2["scores"]
    y = [int(c >= 1) for c in CLASSES]
    p = [_label_rule(r) for r in PRED_IDS]
    tp = sum(1 for a, b in zip(y, p) if a == 1 and b == 1)
    fp = sum(1 for a, b in zip(y, p) if a == 0 and b == 1)
    n_ai, n_real = sum(y), len(y) - sum(y)
    assert sc["n"] == 12
    assert sc["recall_ai"] == pytest.approx(tp / n_ai)
    assert sc["fpr"] == pytest.approx(fp / n_real)
    assert sc["accuracy"] == pytest.approx(sum(a == b for a, b in zip(y, p)) / 12)
    cm = sc["confusion_matrix"]
    assert cm["tp"] + cm["fn"] == n_ai and cm["tn"] + cm["fp"] == n_real and cm["tp"] == tp
    assert set(sc["per_source_class"]) == {str(c) for c in range(6)}
    assert set(sc["per_generator"]) == set(GENERATORS)
    # class 2: ids 102 and 108, both divisible by 3 -> predicted real -> recall 0;
    # class 0: ids 100 and 106, predicted ai -> true-negative rate 0
    assert sc["per_source_class"]["2"]["recall"] == 0.0
    assert sc["per_source_class"]["1"]["recall"] == 1.0
    assert sc["per_source_class"]["0"]["recall"] == pytest.approx(1 - sc["fpr"])
    assert sc["per_generator"]["sdxl"] == {"n": 2, "label": "ai_generated",
                                           "source_classes": {"2": 2},
                                           "predicted_ai_rate": 0.0, "recall": 0.0}
    mm = t2["model_metrics"]
    assert mm["threshold"] == 0.42
    assert mm["splits"]["validation"]["roc_auc"] == 0.95
    assert set(mm["splits"]) == {"validation", "validation_augmented"}

    # task03: invalid, every problem listed; malformed metrics.json does not crash
    t3 = card["tasks"]["task03"]
    assert not t3["valid"]
    probs = " | ".join(t3["problems"])
    assert "duplicated" in probs and "missing" in probs and "not in {0,1}" in probs
    assert "error" in t3["model_metrics"]
    assert card["all_valid"] is False

    # copies for the report
    assert (tmp_path / "art_copy" / "task02" / "predictions.csv").is_file()
    assert Path(t2["predictions_copy"]).is_file()
    text = grade_mod.summary_text(card)
    assert "train" in text and "TIMEOUT" in text and "INVALID" in text


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def test_cli_single_stage_without_isolation(tmp_path):
    root = make_dataset(tmp_path / "ds")
    sol = make_solution(tmp_path / "src" / "solution")
    out = tmp_path / "out" / "card.json"
    r = subprocess.run([sys.executable, str(GRADE_PY), "--data", str(root), "--solution",
                        str(sol), "--stages", "clean", "--timeout-scale", "0.01",
                        "--no-isolation", "--out", str(out)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stdout + r.stderr  # no predictions -> invalid -> exit 1
    assert "[clean] clean: checks written" in r.stdout  # streamed with the stage prefix
    card = json.loads(out.read_text())
    assert card["isolation"] == "none" and card["warnings"]
    assert [s["name"] for s in card["stages"]] == ["clean"]
    assert card["stages"][0]["timeout_seconds"] == 6
    assert card["tasks"]["task02"]["problems"] == ["file missing"]
    assert card["tasks"]["task02"]["model_metrics"] is None
    assert (out.parent / "logs" / "clean.log").is_file()
    # the temporary workspace is gone, the scorecard (outside it) stays
    assert not os.path.exists(card["workspace"])


# ----------------------------------------------------------------------------- units
def test_an_ordinary_user_gets_the_isolation_rootless(monkeypatch):
    """Not root: a user namespace in which the caller is root, so the read-only bind mount is allowed."""
    monkeypatch.setattr(grade_mod.os, "geteuid", lambda: 1000)
    assert grade_mod.unshare_argv() == ["unshare", "--user", "--map-root-user", "--mount", "--net", "--fork"]
    monkeypatch.setattr(grade_mod.os, "geteuid", lambda: 0)
    assert grade_mod.unshare_argv() == ["unshare", "--mount", "--net", "--fork"]


def test_dockerignore_semantics():
    di = grade_mod.DockerIgnore(["# comment", "data", "artifacts/", "*.pyc", "**/__pycache__",
                                 ".pytest_cache", "/build", "docs/*.md", "!docs/KEEP.md"])
    assert di.excluded("data") and di.excluded("data/train/x.parquet")
    assert di.excluded("artifacts/task02/predictions.csv")
    assert di.excluded("a.pyc") and not di.excluded("pkg/a.pyc")  # anchored like Docker
    assert di.excluded("__pycache__/a.pyc") and di.excluded("pkg/__pycache__/a.pyc")
    assert di.excluded("build/x") and not di.excluded("src/build/x")
    assert di.excluded("docs/a.md") and not di.excluded("docs/KEEP.md")
    assert not di.excluded("pkg/data.py") and not di.excluded("train.py")


def test_validate_predictions_edge_cases(tmp_path):
    ids = [1, 2, 3]
    f = tmp_path / "p.csv"
    f.write_text("row_id,predicted_label\n1,0\n2,1\n3,1\n")
    rep, preds = grade_mod.validate_predictions(str(f), ids)
    assert rep["valid"] and preds == {1: 0, 2: 1, 3: 1}
    f.write_text("\ufeffrow_id,predicted_label\n1,0\n2,1\n3,1\n")
    assert not grade_mod.validate_predictions(str(f), ids)[0]["valid"]
    f.write_text("row_id,label\n1,0\n2,1\n3,1\n")
    assert "header" in grade_mod.validate_predictions(str(f), ids)[0]["problems"][0]
    f.write_text("row_id,predicted_label\n1,0.0\n2,1\n3,1\n4,1\n")
    probs = " ".join(grade_mod.validate_predictions(str(f), ids)[0]["problems"])
    assert "not in {0,1}" in probs and "not in data/predict" in probs
    f.write_text("row_id,predicted_label\r\n1,0\r\n2,1\r\n3,1\r\n")
    rep, _ = grade_mod.validate_predictions(str(f), ids)
    assert rep["valid"] and rep["warnings"]
    rep, _ = grade_mod.validate_predictions(str(tmp_path / "none.csv"), ids)
    assert rep["problems"] == ["file missing"] and not rep["exists"]
