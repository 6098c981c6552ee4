"""The report's argument in numbers: the abstract, the ablation of modelling choices, Task 3 against Task 2.

Every sentence here that judges (keeps / exceeds, beats / trails, adopted / not adopted) is chosen
from the numbers it states, through ``judge``; a changed result changes the sentence.
"""
from __future__ import annotations

from .fmt import NOT_RUN, dig, fmt_int, fmt_rate, is_number, table
from .judge import better_word, cap_phrase, change_phrase
from .results import UNDER_PROCESSING_RULE, Inputs
from .targets import MAX_FPR, Aim, measured_value, tally


def _r(x) -> str:
    return fmt_rate(x) if is_number(x) else NOT_RUN


def _split(inputs: Inputs, task: str, split: str, key: str):
    return dig(inputs.metrics.get(task), "splits", split, key)


def abstract_values(inputs: Inputs, all_aims: list[Aim]) -> dict:
    """The headline: what Task 2 and Task 3 achieve, which cap each keeps, and how many targets are met."""
    def headline(task, split, key):  # the seed mean when several seeds ran (as the targets table shows)
        return measured_value(inputs, task, split, key)[0]

    t2_val, t2_aug = (headline("task02", s, "fpr") for s in ("validation", "validation_augmented"))
    t3_val, t3_aug = (headline("task03", s, "fpr") for s in ("validation", "validation_augmented"))
    r2_aug = headline("task02", "validation_augmented", "recall_ai")
    r3_aug = headline("task03", "validation_augmented", "recall_ai")
    robust = inputs.robustness
    seeds = f"Over {robust.n_runs} seeds, t" if robust and robust.n_runs > 1 else "T"
    count = tally(all_aims)
    values = {
        "abs.t2_val": f"{seeds}ask 2 {cap_phrase(t2_val, MAX_FPR)} on validation with a recall of "
                      f"{_r(headline('task02', 'validation', 'recall_ai'))}",
        "abs.t2_aug": f"on the augmented validation split it {cap_phrase(t2_aug, MAX_FPR)} at a recall of {_r(r2_aug)}",
        "abs.t3_aug": f"Task 3 {cap_phrase(t3_aug, MAX_FPR)} there, at a recall of {_r(r3_aug)}",
        "abs.t3_val": f"and {cap_phrase(t3_val, MAX_FPR)} on validation at a recall of "
                      f"{_r(headline('task03', 'validation', 'recall_ai'))}",
        "abs.tally": f"{count['met']} of {count['total']} targets are met",
        "abs.cost": ("its threshold must also hold on processed calibration images, which costs recall"
                     if is_number(r2_aug) and is_number(r3_aug) and r3_aug < r2_aug else
                     "its threshold must also hold on processed calibration images"),
    }
    same = inputs.same
    if same:
        a = same.split("task03", UNDER_PROCESSING_RULE, "validation_augmented") or {}
        b = same.split("task02", UNDER_PROCESSING_RULE, "validation_augmented") or {}
        values["abs.equal"] = (f"under the same threshold rule Task 3 {better_word(a.get('recall_ai'), b.get('recall_ai'))} "
                               f"Task 2 on the augmented split (recall {_r(a.get('recall_ai'))} vs {_r(b.get('recall_ai'))})")
    else:
        values["abs.equal"] = f"the comparison under the same threshold rule is {NOT_RUN}"
    worst = next((x for x in all_aims if x.key == "heldout.fpr"), None)
    values["abs.heldout"] = (f"on perturbation families held out of its training (never trained on, or left out one at a time), its worst FPR is {worst.shown}"
                             if worst and worst.value is not None else f"never-trained families: {NOT_RUN}")
    return values


def data_values(inputs: Inputs) -> dict:
    """Sizes of the stand-in dataset, per split, from the exploration."""
    splits = dig(inputs.exploration, "splits") or {}
    values = {"data.split_sizes": ", ".join(f"{name.replace('_', ' ')} {fmt_int(dig(s, 'all', 'count'))}"
                                            for name, s in splits.items()) or NOT_RUN}
    total = sum(dig(s, "all", "count") or 0 for s in splits.values())
    values["data.total"] = fmt_int(total) if splits else NOT_RUN
    return values


# --- the ablation of modelling choices -------------------------------------------------------------

def _row(choice: str, against: str, measure: str, ours, other, source, higher_is_better: bool = True,
         fmt=_r) -> list[str]:
    verdict = better_word(ours, other, higher_is_better, better="better", worse="worse", tie="equal")
    return [choice, against, measure, fmt(ours), fmt(other), verdict, source]


def ablation_rows(inputs: Inputs) -> list[list[str]]:
    """One row per modelling choice, each backed by a measured comparison in a result file."""
    rows = []
    proxy = inputs.proxy
    parts = dig(proxy.components if proxy else None, "task02") or {}
    fusion = next((v for k, v in parts.items() if k.startswith("packaged")), None)
    boosting = next((v for k, v in parts.items() if k.startswith("classical")), None)
    network = parts.get("TraceNet")
    if fusion and boosting and network:
        best_part = max(dig(boosting, "validation", "roc_auc") or 0, dig(network, "validation", "roc_auc") or 0)
        rows.append(_row("fusion of both families (T2)", "best single family", "AUC val.",
                         dig(fusion, "validation", "roc_auc"), best_part, proxy.path.name))
    fam = inputs.families
    if fam:
        rec = fam.records
        if "classical_boosting" in rec and "classical_logistic" in rec:
            rows.append(_row("gradient boosting on features", "logistic regression", "AUC val.",
                             dig(rec["classical_boosting"], "splits", "validation", "roc_auc"),
                             dig(rec["classical_logistic"], "splits", "validation", "roc_auc"), fam.path.name))
        if "tracenet" in rec and "tracenet_rgb" in rec:
            rows.append(_row("residual-only network input", "residuals + RGB", "AUC val.",
                             dig(rec["tracenet"], "splits", "validation", "roc_auc"),
                             dig(rec["tracenet_rgb"], "splits", "validation", "roc_auc"), fam.path.name))
        if "tracenet" in rec and "course_baseline" in rec:
            rows.append(_row("TraceNet", "course baseline CNN", "AUC val.",
                             dig(rec["tracenet"], "splits", "validation", "roc_auc"),
                             dig(rec["course_baseline"], "splits", "validation", "roc_auc"), fam.path.name))
    jb = inputs.jpeg_bias
    if jb and "packaged" in (jb.tasks.get("task02") or {}):
        packaged = jb.tasks["task02"]["packaged"]["splits"]
        debiased = next((v["splits"] for k, v in jb.tasks["task02"].items() if k.startswith("debiased")), None)
        if debiased:
            rows.append(_row("JPEG views for both classes (T2)", "re-encoded at real-photo qualities",
                             "AUC val.", dig(packaged, "validation", "roc_auc"), dig(debiased, "validation", "roc_auc"),
                             jb.path.name))
            # A detector free of the cue keeps its recall when the containers are flipped: |shift| near 0.
            shift = lambda s: abs(dig(s, "predict, flipped", "recall_ai") - dig(s, "predict", "recall_ai"))  # noqa: E731
            rows.append(_row("", "", "|recall shift|, flip", shift(packaged), shift(debiased), jb.path.name,
                             higher_is_better=False))
    rt = inputs.robust_training
    if rt and "broad" in rt.summary and "baseline" in rt.summary:
        worst = lambda v: dig(rt.summary, v, "never_trained_worst_fpr", "mean")  # noqa: E731
        rows.append(_row("broad processing in T3 training", "narrow (JPEG, Gaussian blur)",
                         "worst FPR, unseen", worst("broad"), worst("baseline"), rt.path.name, higher_is_better=False))
        if "broad+consistency" in rt.summary:
            rows.append(_row("no consistency loss", "consistency loss", "worst FPR, unseen", worst("broad"),
                             worst("broad+consistency"), rt.path.name, higher_is_better=False))
    fs = inputs.fusion_share
    weight = dig(inputs.metrics.get("task03"), "fusion", "weight")
    if fs and is_number(weight) and weight in fs.shares:
        for other in (0.0, 1.0):
            if other in fs.shares:
                rows.append(_row(f"network share {weight:g} (T3)", f"share {other:g}", "worst FPR, unseen",
                                 fs.shares[weight].get("never_trained_worst_fpr"),
                                 fs.shares[other].get("never_trained_worst_fpr"), fs.path.name,
                                 higher_is_better=False))
                rows.append(_row("", "", "mean AUC, all", fs.shares[weight].get("mean_roc_auc"),
                                 fs.shares[other].get("mean_roc_auc"), fs.path.name))
    same = inputs.same
    if same:
        strict = same.split("task03", UNDER_PROCESSING_RULE, "validation_augmented") or {}
        clean = same.split("task03", "calibration", "validation_augmented") or {}
        rows.append(_row("T3 threshold on processed calib.", "on clean calibration", "FPR augm.",
                         strict.get("fpr"), clean.get("fpr"), same.path.name, higher_is_better=False))
        rows.append(_row("", "", "recall augm.", strict.get("recall_ai"), clean.get("recall_ai"), same.path.name))
    return rows


def ablation_table(inputs: Inputs) -> dict:
    rows = ablation_rows(inputs) or [[NOT_RUN] * 7]
    for row in rows:  # the date identifies the result file; the folder is benchmarks/results
        row[-1] = row[-1].replace(".json", "")[:10] if row[-1] != NOT_RUN else row[-1]
    return table(["choice", "compared with", "measure", "ours", "other", "ours is", "result of"], rows,
                 align="lllrrll",
                 note="Each row compares two variants trained under the same budget on the proxy data "
                      "(benchmarks/results/<date>-*.json). \"unseen\": perturbation families that no variant "
                      "trains on, at moderate strength, on a holdout of the train split.")


# --- Task 3 against Task 2 -----------------------------------------------------------------------

def task3_values(inputs: Inputs) -> dict:
    """Sentences comparing the two detectors on both splits, at their own thresholds and at equal rules."""
    values = {}
    for split, key in (("validation", "val"), ("validation_augmented", "aug")):
        values[f"cmp.{key}"] = change_phrase("recall", _split(inputs, "task02", split, "recall_ai"),
                                             _split(inputs, "task03", split, "recall_ai"))
        values[f"cmp.{key}.fpr"] = change_phrase("the FPR", _split(inputs, "task02", split, "fpr"),
                                                 _split(inputs, "task03", split, "fpr"))
        values[f"cmp.{key}.t2cap"] = cap_phrase(_split(inputs, "task02", split, "fpr"), MAX_FPR)
        values[f"cmp.{key}.t3cap"] = cap_phrase(_split(inputs, "task03", split, "fpr"), MAX_FPR)
    same = inputs.same
    for split, key in (("validation", "val"), ("validation_augmented", "aug")):
        a = same.split("task03", UNDER_PROCESSING_RULE, split) if same else None
        b = same.split("task02", UNDER_PROCESSING_RULE, split) if same else None
        values[f"same.{key}"] = (f"Task 3 {better_word(a['recall_ai'], b['recall_ai'])} Task 2 "
                                 f"({_r(a['recall_ai'])} vs {_r(b['recall_ai'])}, FPR {_r(a['fpr'])} vs {_r(b['fpr'])})"
                                 if a and b else NOT_RUN)
    proxy = inputs.proxy
    for task, key in (("task02", "t2"), ("task03", "t3")):
        before = dig(proxy.holdout if proxy else None, task, "recall_ai")
        after = dig(proxy.flipped if proxy else None, task, "recall_ai")
        values[f"flip.{key}"] = change_phrase("recall", before, after)
    robust = inputs.robustness
    if robust:
        for split, key in (("validation", "val"), ("validation_augmented", "aug")):
            a = robust.mean("task03", split, "recall_at_fpr_0.2")
            b = robust.mean("task02", split, "recall_at_fpr_0.2")
            values[f"eqfpr.{key}"] = f"Task 3 {better_word(a, b)} Task 2 ({_r(a)} vs {_r(b)})"
        families = robust.held_out
        below = [f for f, r in families.items() if is_number(dig(r, "task03", "fpr", "mean"))
                 and dig(r, "task03", "fpr", "mean") <= MAX_FPR]
        values["robust.n_heldout"] = str(len(families))
        values["robust.n_below"] = str(len(below))
        over = sorted((f for f in families if f not in below), key=lambda f: -dig(families[f], "task03", "fpr", "mean"))
        values["robust.over"] = ", ".join(
            f"{f.replace('_', ' ')} {_r(dig(families[f], 'task03', 'fpr', 'mean'))}" for f in over) or "none"
        t2_over = [f for f, r in families.items() if (dig(r, "task02", "fpr", "mean") or 0) > MAX_FPR]
        values["robust.t2_over"] = str(len(t2_over))
        values["robust.runs"] = str(robust.n_runs)
        values["robust.seeds"] = ", ".join(str(s) for s in robust.seeds) or NOT_RUN
        values["robust.lofo"] = ", ".join(robust.lofo) or "none"
        values["limits.heldout"] = (f"as {len(over)} of {len(families)} held-out families show"
                                    if over else f"although none of the {len(families)} held-out families did here")
        values["robust.families"] = str(len(robust.families))
        values["robust.unseen"] = str(sum(f.get("trained_as") is None for f in robust.families.values()))
    else:
        for key in ("eqfpr.val", "eqfpr.aug", "robust.n_heldout", "robust.n_below", "robust.over", "robust.t2_over",
                    "robust.runs", "robust.seeds", "robust.lofo", "robust.families", "robust.unseen",
                    "limits.heldout"):
            values[key] = NOT_RUN
    return values


def timing_values(all_aims: list[Aim]) -> dict:
    """Training time against the reference runtime, and memory, in words chosen from the targets."""
    by_key = {a.key: a for a in all_aims}
    parts = []
    for key, name in (("runtime.train", "Task 2's training stage"), ("runtime.train_augmented", "Task 3's")):
        aim = by_key.get(key)
        if aim is None or aim.value is None:
            parts.append(f"{name}: {NOT_RUN}")
        else:
            verdict = "within" if aim.met else "over"
            parts.append(f"{name} took {aim.shown} of the reference runtime, {verdict} the limit of five times it")
    memory = by_key.get("memory")
    mem = (f"; the peak memory of any stage was {memory.shown} GB" if memory and memory.value is not None else "")
    return {"timing.sentence": "Under the grading harness on the same machine, " + "; ".join(parts) + mem + "."}


def conclusion_values(inputs: Inputs, all_aims: list[Aim]) -> dict:
    """The closing verdict: each clause picked from the number behind it."""
    t2_aug = _split(inputs, "task02", "validation_augmented", "fpr")
    t3_aug = _split(inputs, "task03", "validation_augmented", "fpr")
    r2 = _split(inputs, "task02", "validation_augmented", "recall_ai")
    r3 = _split(inputs, "task03", "validation_augmented", "recall_ai")
    by_key = {a.key: a for a in all_aims}
    equal = by_key.get("equal.rule")
    clauses = [f"On processed images the plain detector {cap_phrase(t2_aug, MAX_FPR)}, the robust one "
               f"{cap_phrase(t3_aug, MAX_FPR)}",
               f"at its own threshold the robust detector {better_word(r3, r2, better='finds more', worse='finds fewer', tie='finds as many')} "
               f"generated images ({_r(r3)} vs {_r(r2)})"]
    if equal and equal.value is not None:
        clauses.append(f"under the same threshold rule it {better_word(equal.value, 0.0)} the plain one by "
                       f"{equal.value:+.3f} in recall")
    worst = by_key.get("heldout.fpr")
    if worst and worst.value is not None:
        clauses.append(f"on never-trained processing its worst FPR ({worst.shown}) "
                       f"{'stays within' if worst.met else 'breaks'} the cap")
    return {"concl.sentence": "; ".join(clauses) + "."}
