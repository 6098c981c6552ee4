"""Typed readers of the files the report shows: a run's artifacts and the committed benchmark results.

Each benchmark kind is found by its file name (``<date>-<kind>.json``, the newest date wins) and read
into a small record with named fields; a missing file gives ``None``, never a stale number of
another file. The report never re-runs anything.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .fmt import dig, is_number

TASKS = ("task02", "task03")
EVAL_SPLITS = ("validation", "validation_augmented")
DATED = re.compile(r"^(\d{4}-\d{2}-\d{2})-(.+)\.json$")

# Benchmark kinds the report reads, by the part of the file name after the date.
KINDS = {
    "proxy": "the packaged pipeline under the grading harness (stages, reference runtime, components)",
    "robustness-proxy": "robustness comparison runs (every perturbation family, leave one family out)",
    "same-calibration-proxy": "Task 2 and Task 3 under the same threshold rule",
    "robust-training-proxy": "Task 3's training variants on a holdout of the train split",
    "fusion-share-proxy": "the network's share of Task 3's fused score",
    "jpeg-bias-proxy": "the classical model trained with and without the compression cue",
    "attribution-proxy": "attribution, open set and leave one generator out",
}


def _read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def newest(bench: Path | None, kind: str) -> Path | None:
    """The newest ``<date>-<kind>.json`` in ``bench`` (by the date in its name), or None."""
    if bench is None or not Path(bench).is_dir():
        return None
    found = []
    for path in Path(bench).glob("*.json"):
        match = DATED.match(path.name)
        if match and match.group(2) == kind:
            found.append((match.group(1), path))
    return max(found)[1] if found else None


def newest_with(bench: Path | None, accepts) -> Path | None:
    """The newest dated result for which ``accepts(document)`` holds (for kinds written inside another file)."""
    if bench is None or not Path(bench).is_dir():
        return None
    for path in sorted(Path(bench).glob("*.json"), reverse=True):
        if DATED.match(path.name):
            try:
                if accepts(_read_json(path)):
                    return path
            except (OSError, ValueError):
                continue
    return None


def _has_family_records(document) -> bool:
    return isinstance(document, dict) and isinstance(dig(document, "families", "families"), dict)


@dataclass(frozen=True)
class Stage:
    name: str
    timeout_seconds: float | None
    wall_seconds: float | None
    peak_mb: float | None
    ok: bool


@dataclass(frozen=True)
class ProxyBench:
    """``benchmarks/run_bench.py``: the six stages under the harness, the reference runtime, the components."""

    path: Path
    reference_seconds: float | None
    reference_threads: int | None
    cpu: str | None
    stages: list[Stage]
    holdout: dict  # task -> harness scores on the labelled predict split
    flipped: dict  # task -> scores on the shortcut-flipped predict split
    components: dict  # task -> {model name -> {split -> metrics}}

    def stage(self, name: str) -> Stage | None:
        return next((s for s in self.stages if s.name == name), None)

    @property
    def peak_mb(self) -> float | None:
        peaks = [s.peak_mb for s in self.stages if is_number(s.peak_mb)]
        return max(peaks) if peaks else None


def read_proxy_bench(path: Path | None) -> ProxyBench | None:
    if path is None:
        return None
    data = _read_json(path)
    harness = data.get("harness") or {}
    stages = [Stage(s.get("name", "?"), s.get("timeout_seconds"), s.get("wall_seconds"),
                    s.get("peak_rss_mb"), bool(s.get("ok"))) for s in harness.get("stages") or []]
    reference = data.get("reference") or {}
    return ProxyBench(Path(path), reference.get("elapsed_seconds"), reference.get("threads"),
                      (data.get("machine") or {}).get("cpu"), stages,
                      {t: dig(harness, "tasks", t, "scores") for t in TASKS},
                      {t: dig(data, "flipped", t, "scores") for t in TASKS}, data.get("components") or {})


@dataclass(frozen=True)
class Target:
    """One target of the robustness comparison runs, as the benchmark judged it."""

    name: str
    value: float | None
    goal: str
    met: bool | None


@dataclass(frozen=True)
class Robustness:
    """``benchmarks/robustness.py``: both detectors under every perturbation family."""

    path: Path
    n_runs: int
    seeds: list
    families: dict  # family -> {"strengths", "unit", "trained_as"}
    targets: list[Target]
    splits: dict  # task -> split -> metric -> {"mean", "std", "n"}
    per_condition: dict  # task -> "family@strength" -> metric -> {"mean", ...}
    held_out: dict  # family -> {"strength", "task03_source", "task02": {...}, "task03": {...}}
    lofo: list[str]
    figures: dict

    def target(self, prefix: str) -> Target | None:
        return next((t for t in self.targets if t.name.startswith(prefix)), None)

    def mean(self, task: str, split: str, metric: str):
        return dig(self.splits, task, split, metric, "mean")

    def worst_held_out(self, metric: str = "fpr") -> tuple[str, dict] | None:
        """The held-out family with the highest Task 3 ``metric`` at moderate strength."""
        rows = [(f, r) for f, r in self.held_out.items() if is_number(dig(r, "task03", metric, "mean"))]
        return max(rows, key=lambda fr: dig(fr[1], "task03", metric, "mean")) if rows else None


def read_robustness(path: Path | None) -> Robustness | None:
    if path is None:
        return None
    d = _read_json(path)
    return Robustness(Path(path), len(d.get("runs") or []), [r.get("seed") for r in d.get("runs") or []],
                      d.get("families") or {},
                      [Target(t["name"], t.get("value"), t.get("goal", ""), t.get("met")) for t in d.get("targets") or []],
                      d.get("splits") or {}, dig(d, "summary", "per_condition") or {},
                      dig(d, "summary", "held_out_moderate") or {}, list(d.get("leave_one_family_out") or {}),
                      d.get("figures") or {})


UNDER_PROCESSING_RULE = "calibration + calibration_augmented + calibration reals under processing"
RULE_NAMES = {"calibration": "clean", "calibration + calibration_augmented": "both",
              UNDER_PROCESSING_RULE: "processed"}


@dataclass(frozen=True)
class SameCalibration:
    """``benchmarks/same_calibration.py``: each detector under each threshold rule."""

    path: Path
    own_rule: dict  # task -> rule name
    rules: dict  # task -> rule -> {"threshold", "splits": {split: metrics}}

    def split(self, task: str, rule: str, split: str) -> dict | None:
        return dig(self.rules, task, rule, "splits", split)


def read_same_calibration(path: Path | None) -> SameCalibration | None:
    if path is None:
        return None
    same = _read_json(path).get("same_rule") or {}
    if not all(isinstance(same.get(t), dict) for t in TASKS):
        return None
    return SameCalibration(Path(path), {t: same[t].get("own_rule") for t in TASKS},
                           {t: same[t].get("rules") or {} for t in TASKS})


@dataclass(frozen=True)
class RobustTraining:
    """``benchmarks/robust_training.py``: Task 3's training variants on a holdout of the train split."""

    path: Path
    seeds: list
    never_trained: list[str]
    variants: dict  # name -> {"policy", "overrides"}
    summary: dict  # name (and "task02") -> {"never_trained_mean": {...}, "never_trained_worst_fpr": {...}}
    holdout_size: int | None


def read_robust_training(path: Path | None) -> RobustTraining | None:
    if path is None:
        return None
    d = _read_json(path)
    return RobustTraining(Path(path), d.get("seeds") or [], dig(d, "summary", "never_trained_families") or [],
                          d.get("variants") or {}, dig(d, "summary", "variants") or {},
                          dig(d, "data", "split", "holdout"))


@dataclass(frozen=True)
class FusionShare:
    """``benchmarks/fusion_share.py``: the fused score with the network's share varied."""

    path: Path
    shares: dict  # share (float) -> {"never_trained_worst_fpr", "never_trained_mean_fpr", "mean_roc_auc", ...}


def read_fusion_share(path: Path | None) -> FusionShare | None:
    if path is None:
        return None
    shares = _read_json(path).get("shares") or {}
    return FusionShare(Path(path), {float(k): v for k, v in shares.items()})


@dataclass(frozen=True)
class JpegBias:
    """``benchmarks/jpeg_bias.py``: the classical model with and without the compression cue."""

    path: Path
    tasks: dict  # task -> variant -> {"splits": {split: metrics}}


def read_jpeg_bias(path: Path | None) -> JpegBias | None:
    return None if path is None else JpegBias(Path(path), _read_json(path).get("tasks") or {})


@dataclass(frozen=True)
class Families:
    """``benchmarks/families.py`` (inside an older proxy result): every model family under one budget."""

    path: Path
    records: dict  # family -> {"train_seconds", "splits": {split: metrics}}
    budget_seconds: float | None


def read_families(path: Path | None) -> Families | None:
    if path is None:
        return None
    block = _read_json(path).get("families") or {}
    records = block.get("families") if isinstance(block.get("families"), dict) else None
    return None if not records else Families(Path(path), records, block.get("budget_seconds"))


@dataclass(frozen=True)
class Attribution:
    path: Path
    main: dict  # the attribution result (schema of aidetect.attribution)
    logo: list
    predict_scored: dict | None
    artifacts: str | None = None  # the run whose detectors it used, as the result names it

    def used(self, artifacts: Path, repo: Path) -> bool:
        """Whether this result was computed on the detectors of ``artifacts`` (same folder, links resolved)."""
        if not self.artifacts:
            return False
        named = Path(self.artifacts)
        named = named if named.is_absolute() else repo / named
        return named.resolve() == Path(artifacts).resolve()


def read_attribution(path: Path | None) -> Attribution | None:
    if path is None:
        return None
    d = _read_json(path)
    main = d.get("attribution")
    if not isinstance(main, dict) or "splits" not in main:
        return None
    return Attribution(Path(path), main, d.get("logo") if isinstance(d.get("logo"), list) else [],
                       d.get("predict_scored") if isinstance(d.get("predict_scored"), dict) else None,
                       d.get("artifacts") if isinstance(d.get("artifacts"), str) else None)


@dataclass
class Inputs:
    """Every file the report reads, each read once; ``used`` lists them for the report's source list."""

    artifacts: Path
    bench: Path | None
    explain: Path | None
    exploration: dict | None = None
    cleaning: dict | None = None
    metrics: dict = field(default_factory=dict)  # task -> metrics.json
    detectors: dict = field(default_factory=dict)  # task -> detector.json
    proxy: ProxyBench | None = None
    robustness: Robustness | None = None
    same: SameCalibration | None = None
    robust_training: RobustTraining | None = None
    fusion_share: FusionShare | None = None
    jpeg_bias: JpegBias | None = None
    families: Families | None = None
    attribution: Attribution | None = None
    summary: dict | None = None  # explainability/output/summary.json
    used: list = field(default_factory=list)  # [{"what", "path", "status"}]

    def note(self, what: str, path: Path | None, found: bool) -> None:
        self.used.append({"what": what, "path": str(path) if path else "", "status": "read" if found else "not run"})


def _optional_json(inputs: Inputs, path: Path, what: str) -> dict | None:
    found = path.is_file()
    inputs.note(what, path, found)
    return _read_json(path) if found else None


def read_inputs(artifacts: Path, bench: Path | None, explain: Path | None) -> Inputs:
    """Read the run's artifacts, the newest benchmark result of each kind and the explanations."""
    inputs = Inputs(Path(artifacts), Path(bench) if bench else None, Path(explain) if explain else None)
    a = inputs.artifacts
    inputs.exploration = _optional_json(inputs, a / "clean" / "exploration.json", "exploration")
    inputs.cleaning = _optional_json(inputs, a / "clean" / "cleaning.json", "cleaning")
    for task in TASKS:
        inputs.metrics[task] = _optional_json(inputs, a / task / "metrics.json", f"{task} metrics")
        inputs.detectors[task] = _optional_json(inputs, a / task / "detector.json", f"{task} detector")
    readers = {"proxy": ("proxy", read_proxy_bench), "robustness-proxy": ("robustness", read_robustness),
               "same-calibration-proxy": ("same", read_same_calibration),
               "robust-training-proxy": ("robust_training", read_robust_training),
               "fusion-share-proxy": ("fusion_share", read_fusion_share),
               "jpeg-bias-proxy": ("jpeg_bias", read_jpeg_bias), "attribution-proxy": ("attribution", read_attribution)}
    for kind, (attr, reader) in readers.items():
        path = newest(inputs.bench, kind)
        setattr(inputs, attr, reader(path))
        inputs.note(KINDS[kind], path or (inputs.bench / f"<date>-{kind}.json" if inputs.bench else None),
                    getattr(inputs, attr) is not None)
    families_path = newest_with(inputs.bench, _has_family_records)
    inputs.families = read_families(families_path)
    inputs.note("model families", families_path, inputs.families is not None)
    if inputs.explain is not None:
        inputs.summary = _optional_json(inputs, inputs.explain / "summary.json", "explanations")
    return inputs


# What a final report cannot do without (``--allow-missing`` builds a draft with gaps instead).
REQUIRED = (("clean", "exploration.json"), ("task02", "metrics.json"), ("task03", "metrics.json"))


def missing_inputs(artifacts: Path, bench: Path | None, explain: Path | None) -> list[str]:
    """The inputs a final report needs that are absent; checked before anything is written."""
    problems = []
    if not Path(artifacts).is_dir():
        problems.append(f"artifacts folder {artifacts} does not exist (run `make bench` or the six stages)")
    else:
        problems += [f"{Path(artifacts).joinpath(*parts)} is missing" for parts in REQUIRED
                     if not Path(artifacts).joinpath(*parts).is_file()]
    if bench is None or not Path(bench).is_dir():
        problems.append(f"benchmark results folder {bench} does not exist")
    elif newest(bench, "proxy") is None:
        problems.append(f"no <date>-proxy.json benchmark result in {bench} (run `make bench`)")
    if explain is None or not (Path(explain) / "summary.json").is_file():
        problems.append(f"no summary.json in the explanations folder {explain} (run `make explain`)")
    return problems
