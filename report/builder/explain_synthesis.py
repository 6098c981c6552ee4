"""The explainability section's numbers and verdicts, from ``explainability/output/summary.json``.

The generated ``discussion.md`` stays the analysis log; the report carries this synthesis: what the
final detector attends to, which shortcuts the audits found, and how far the explanations can be
trusted. Each verdict is chosen from the number it states.
"""
from __future__ import annotations

from pathlib import Path

from .fmt import NOT_RUN, dig, fmt_rate, is_number
from .judge import TIE, change_verb

FINAL_TASK = "task03"
UNIFORM_TOP10 = 0.10  # the share of evidence the top 10 % of cells hold when the map is flat


def _r(x) -> str:
    return fmt_rate(x) if is_number(x) else NOT_RUN


def explain_values(summary: dict | None, task: str = FINAL_TASK) -> dict:
    t = dig(summary, "tasks", task)
    keys = ("ex.model", "ex.ablation", "ex.frequency", "ex.png", "ex.jpeg", "ex.resize", "ex.attention",
            "ex.errors", "ex.texture", "ex.deletion", "ex.baseline", "ex.hardest", "abs.explain", "ex.resampled",
            "ex.groups", "limits.explain", "concl.next")
    if not isinstance(t, dict):
        return {key: NOT_RUN for key in keys}
    v = {}
    model = t.get("model") or {}
    weight = model.get("fusion_weight_of_network")
    colour = "sees the colour image too" if model.get("sees_colour_image") else "sees only high-pass residuals, not the colour image"
    v["ex.model"] = (f"The final detector is a {t.get('kind', '?')}: the network carries a weight of "
                     f"{weight:g} of the fused score and {colour}" if is_number(weight)
                     else f"The final detector is a {t.get('kind', '?')}; its network {colour}")

    ab = t.get("channel_ablation") or {}
    base, npr, srm = (dig(ab, k, "network_roc_auc") for k in ("none", "without_npr_residual", "without_srm_residuals"))
    drops = {"NPR up-sampling residual": (base - npr) if is_number(base) and is_number(npr) else None,
             "SRM noise residuals": (base - srm) if is_number(base) and is_number(srm) else None}
    known = {k: x for k, x in drops.items() if x is not None}
    lead = (f"the network rests most on the {max(known, key=known.get)}: " if known and max(known.values()) > TIE
            else "no residual group carries the network alone: ")
    v["ex.ablation"] = lead + (f"zeroing the NPR residual {change_verb(base, npr, 'raises', 'drops', 'keeps')} the network's "
                        f"ROC AUC from {_r(base)} to {_r(npr)}, zeroing the SRM residuals "
                        f"{change_verb(base, srm, 'raises', 'drops', 'keeps')} it to {_r(srm)}; the fused detector's AUC "
                        f"moves only from {_r(dig(ab, 'none', 'roc_auc'))} to {_r(dig(ab, 'without_npr_residual', 'roc_auc'))}"
                        if is_number(base) else NOT_RUN)
    if not is_number(base):
        v["ex.ablation"] = NOT_RUN

    fq = t.get("frequency") or {}
    unfiltered = dig(fq, "unfiltered", "roc_auc")
    low = dig(fq, "low_pass", "0.25", "roc_auc")
    high = dig(fq, "high_pass", "0.05", "roc_auc")
    v["ex.frequency"] = (f"keeping only the lowest quarter of the spectrum {change_verb(unfiltered, low, 'raises', 'lowers', 'keeps')} "
                         f"the detector's AUC from {_r(unfiltered)} to {_r(low)}, removing only the lowest 5 % "
                         f"{'keeps' if is_number(high) and abs(high - unfiltered) < 0.05 else 'changes'} it at {_r(high)}"
                         if is_number(unfiltered) else NOT_RUN)
    spectra = dig(summary, "spectra", "log10_power_difference_generated_minus_real") or {}
    high_band = next((val for name, val in spectra.items() if name.startswith("high")), None)
    if is_number(high_band):
        v["ex.frequency"] += (f"; generated crops carry {'less' if high_band < 0 else 'more'} power than real ones "
                              f"at the highest frequencies ({high_band:+.2f} in log10 power)")

    variants = dig(t, "shortcut_audit", "variants") or {}
    n = dig(t, "shortcut_audit", "n_images")
    png = variants.get("png") or {}
    v["ex.png"] = (f"re-encoding every original as PNG leaves {png.get('n_identical_crops')} of {n} crops bit-identical, "
                   f"so the container cannot reach the model" if png else NOT_RUN)
    jpeg = variants.get("jpeg_q75") or {}
    before = dig(jpeg, "generated", "share_generated_before")
    after = dig(jpeg, "generated", "share_generated_after")
    real_change = dig(jpeg, "real", "share_generated_change")
    v["ex.jpeg"] = (f"re-compressing the originals as JPEG at quality 75 {change_verb(before, after)} the share of "
                    f"generated images flagged from {_r(before)} to {_r(after)} while the real photos' FPR changes by "
                    f"{real_change:+.3f}: compression still pulls a score towards \"real\", the cue of the JPEG-stored real photos"
                    if is_number(before) and is_number(real_change) else NOT_RUN)
    resize = variants.get("resize_x0.5") or {}
    if is_number(before) and is_number(after) and after < before - TIE:
        v["abs.explain"] = (f"The explanations find a compression cue that cleaning does not remove: re-compressing "
                            f"the generated images as JPEG lowers the share flagged from {_r(before)} to {_r(after)}")
    elif is_number(before):
        v["abs.explain"] = ("The explanations find no compression cue: re-compressing the generated images as JPEG "
                            f"does not lower the share flagged ({_r(before)} to {_r(after)})")
    else:
        v["abs.explain"] = f"The shortcut audit is {NOT_RUN}"
    v["ex.resize"] = (f"halving the originals' size changes the FPR by {dig(resize, 'real', 'share_generated_change'):+.3f} "
                      f"and the recall by {dig(resize, 'generated', 'share_generated_change'):+.3f}"
                      if is_number(dig(resize, "real", "share_generated_change")) else NOT_RUN)

    att = dig(t, "gradcam", "attention") or {}
    top_real, top_gen = dig(att, "real", "top10_mass"), dig(att, "generated", "top10_mass")
    centre = dig(att, "generated", "centre_share")
    centre_uniform = dig(att, "generated", "centre_uniform")
    if is_number(top_real) and is_number(top_gen):
        spread = ("concentrated" if top_gen > UNIFORM_TOP10 + 0.05 else "spread evenly")
        centred = ("with no centre bias" if is_number(centre) and abs(centre - centre_uniform) < 0.05
                   else "with a centre bias")
        v["ex.attention"] = (f"the top 10 % of Grad-CAM cells hold {_r(top_gen)} of the evidence on generated crops and "
                             f"{_r(top_real)} on real ones (a flat map: {UNIFORM_TOP10:.2f}): the evidence for "
                             f"\"generated\" is {spread}, {centred} (centre share {_r(centre)}, flat {_r(centre_uniform)})")
    else:
        v["ex.attention"] = NOT_RUN

    errors = t.get("errors") or {}
    fp, fn = len(errors.get("false_positives") or []), len(errors.get("false_negatives") or [])
    confusion = dig(t, "validation", "confusion") or {}
    v["ex.errors"] = (f"{confusion.get('fp', fp)} false positives and {confusion.get('fn', fn)} false negatives on "
                      f"validation" if confusion else f"{fp} false positives and {fn} false negatives shown")
    per_class = dig(t, "validation", "recall_per_class") or {}
    if per_class:
        hardest = min(per_class, key=lambda k: per_class[k])
        v["ex.hardest"] = f"generator {hardest} (recall {_r(per_class[hardest])})"
    else:
        v["ex.hardest"] = NOT_RUN
    texture = dig(t, "image_statistics", "by_class", "real", "texture") or {}
    rho = texture.get("spearman_with_score")
    v["ex.texture"] = (f"on real photos the score {'falls' if rho < 0 else 'rises'} with texture (Spearman {rho:+.2f}): "
                       f"{'smooth photos look generated to it, plausibly because smooth surfaces and strong compression flatten the residual it reads' if rho < 0 else 'textured photos look generated to it'}"
                       if is_number(rho) and abs(rho) > 0.3 else
                       (f"texture and score are barely related on real photos (Spearman {rho:+.2f})"
                        if is_number(rho) else NOT_RUN))

    dl = dig(t, "attributions", "deletion") or {}
    original, blurred = dl.get("mean_logit_original"), dl.get("mean_logit_fully_blurred")
    rising = dl.get("share_rising_when_fully_blurred")
    if is_number(original) and is_number(blurred):
        direction = "raises" if blurred > original + TIE else "lowers"
        v["ex.baseline"] = (f"replacing a whole crop by its blurred version {direction} the mean network logit from "
                            f"{original:.2f} to {blurred:.2f} (it rises for {_r(rising)} of the crops)")
        ood = blurred > original + TIE
        v["ex.deletion"] = (f"{dl.get('best_method', '?').replace('_', ' ')} orders pixels better than random "
                            f"(gain {dl.get('best_auc_gain_over_random', float('nan')):.2f} in area under the deletion curve, "
                            f"{dl.get('n_images')} crops)" if dl.get("best_beats_random") else
                            "no attribution method orders pixels better than random")
        v["ex.deletion"] += ("; but the blurred \"evidence removed\" baseline is itself out of distribution: it pushes "
                             "crops towards \"generated\", so the test measures how fast a method destroys the "
                             "crop rather than which evidence the decision rests on" if ood else
                             "; the blurred baseline lowers the logit, as a neutral baseline should")
    else:
        v["ex.baseline"] = v["ex.deletion"] = NOT_RUN
    v["ex.resampled"] = resampled_sentence(dig(t, "attributions", "deletion_resampled"))
    v["ex.groups"] = feature_groups_sentence(t.get("feature_groups"))
    groups = dig(t, "feature_groups", "groups") or {}
    if groups and v["abs.explain"] != NOT_RUN:
        top, drop = max(groups.items(), key=lambda kv: kv[1]["auc_drop_mean"])
        v["abs.explain"] += (f"; shuffling the classical model's {top} features costs the detector the most ROC AUC "
                             f"({drop['auc_drop_mean']:.3f})")
    v["limits.explain"] = limits_sentence(t)
    cues = []
    if is_number(before) and is_number(after) and after < before - TIE:
        cues.append("compression")
    if groups:
        top = max(groups, key=lambda name: groups[name]["auc_drop_mean"])
        if top == "colour":  # colour is content, not a generator trace
            cues.append("colour")
    v["concl.next"] = ("The next steps are calibration sets that cover more processing"
                       + (f" and a classical model that leans less on {' and '.join(cues)}." if cues else "."))
    return v


def limits_sentence(t: dict) -> str:
    """What the explanations leave open, from what the run measured."""
    covered = ("The gradient maps explain the network part only; the classical part is explained by perturbations "
               "and the feature-group importance alone" if t.get("feature_groups") else
               "The explanations cover the network part only")
    blur = dig(t, "attributions", "deletion") or {}
    resampled = dig(t, "attributions", "deletion_resampled")
    if isinstance(resampled, dict) and "best_method" in resampled:
        baseline = ", and the maps are checked against an in-distribution deletion baseline on one sample"
    elif is_number(blur.get("mean_logit_fully_blurred")) and is_number(blur.get("mean_logit_original")) \
            and blur["mean_logit_fully_blurred"] > blur["mean_logit_original"] + TIE:
        baseline = ", and the deletion test's only baseline (blur) is out of distribution"
    else:
        baseline = ""
    return covered + baseline


def feature_groups_sentence(result: dict | None) -> str:
    """Which inputs the whole detector leans on: AUC lost per shuffled feature group and for the network."""
    if not isinstance(result, dict) or not result.get("groups"):
        return f"{NOT_RUN} in these explanations"
    ranked = sorted(result["groups"].items(), key=lambda kv: -kv[1]["auc_drop_mean"])
    parts = ", ".join(f"{name} {drop['auc_drop_mean']:+.3f}" for name, drop in ranked)
    network = result.get("network")
    net = (f"; shuffling the network's score costs {network['auc_drop_mean']:+.3f}" if network else "")
    top = ranked[0][0]
    return (f"shuffling one classical feature group across images costs the detector this much ROC AUC: {parts}"
            f"{net}; the classical part leans most on its {top} features")


def resampled_sentence(dl: dict | None) -> str:
    """The deletion test with blocks of the same image as replacement (in distribution), in words."""
    if not isinstance(dl, dict) or "best_method" not in dl:
        return ("the in-distribution variant of the test (each removed block replaced by a block of the same image "
                f"from elsewhere) is {NOT_RUN} on this run")
    method = dl["best_method"].replace("_", " ")
    original, replaced = dl.get("mean_logit_original"), dl.get("mean_logit_fully_blurred")
    drift = (f"; the fully replaced crop moves the mean logit from {original:.2f} to {replaced:.2f}"
             if is_number(original) and is_number(replaced) else "")
    if dl.get("best_beats_random"):
        return (f"with an in-distribution replacement (each removed block replaced by a block of the same image from "
                f"elsewhere, at its mean colour), {method} still removes evidence faster than random order (area gain "
                f"{dl.get('best_auc_gain_over_random', float('nan')):.2f}, {dl.get('n_images')} crops){drift}")
    return (f"with an in-distribution replacement (blocks of the same image from elsewhere), no map removes evidence "
            f"faster than random order ({dl.get('n_images')} crops){drift}: the maps are not shown to be faithful")


# Figures of the explainability section, in order, with captions; the final (Task 3) model's versions.
EXPLAIN_FIGURES = (
    ("task03_errors", "explain_errors", "The most confident false positives and false negatives of Task 3 on "
                                        "validation, each crop above the signed Grad-CAM map of the network part."),
    ("task03_gradcam_mean", "explain_attention", "Mean Grad-CAM evidence of Task 3's network on real and on generated "
                                                 "validation crops."),
    ("shortcut_audit", "explain_shortcuts", "Shortcut audit: change of the flagged share when the validation "
                                            "originals are re-encoded, resized, cut to 4:3 or given a border."),
    ("frequency_filtering", "explain_frequency", "The detectors' ROC AUC when the crops are low- or high-pass "
                                                 "filtered."),
)


def explain_figure_sources(explain: Path | None, summary: dict | None) -> list[tuple[Path, str, str]]:
    """(file, name in the build, caption) of each explanation figure that exists."""
    if explain is None:
        return []
    named = dig(summary, "figures") or {}
    found = []
    for key, name, caption in EXPLAIN_FIGURES:
        file_name = named.get(key, f"{key}.png")
        path = Path(explain) / file_name
        if path.is_file():
            found.append((path, name, caption))
    return found
