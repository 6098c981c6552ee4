"""Attribution maps and the deletion test that checks whether they are faithful.

Every map attributes the score that ``TaskModel.explained`` returns (the
network's generated logit, or the classical log-odds for the fallback) and
keeps its sign: positive
pixels push towards "generated", negative ones towards "real". The evidence
for the decision on an image is the map times the sign of its prediction
(+1 generated, -1 real); all three methods are linear in the output in that
sense (Grad-CAM before its ReLU, Integrated Gradients, occlusion differences).

"Removing" pixels means replacing them by a Gaussian blur of the same image
(sigma ``BLUR_SIGMA``): the detector reads high-frequency generator traces, so
blurring deletes exactly that information while keeping colours and layout. The
same blurred image is the Integrated-Gradients baseline and the occlusion
patch, so all three methods and the deletion curve speak about one notion of
"absence".

Blur is not neutral for a detector that reads residuals: a blurred block is
smoother than any camera or decoder output, and the proxy run's detector scores
a fully blurred crop as *more* generated. The deletion test therefore also runs
with an in-distribution replacement (``resampled``): each removed 8x8 block is
replaced by a block of the same image from elsewhere (on the same 8-pixel
grid), shifted to the removed block's mean colour. The replacement keeps the
image's own noise, compression and up-sampling statistics and its local
brightness; only the placement of evidence changes, which is what an
attribution map claims to know.
"""
from __future__ import annotations

import numpy as np
import torch
from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Occlusion
from scipy.integrate import trapezoid
from scipy.ndimage import gaussian_filter

from aidetect.models import to_tensor

from .loading import TaskModel

BLUR_SIGMA = 3.0  # pixels
BLOCK = 8  # deletion unit in pixels: one JPEG block, at most one cell of the last block's feature map
DELETION_FRACTIONS = np.round(np.linspace(0.0, 1.0, 11), 2)  # steps of 10 %
N_RANDOM_ORDERS = 3
IG_STEPS = 16
OCCLUSION_WINDOW = 32
OCCLUSION_STRIDE = 16
METHODS = ("gradcam", "integrated_gradients", "occlusion")


def blurred(crops: np.ndarray, sigma: float = BLUR_SIGMA) -> np.ndarray:
    """Gaussian blur of uint8 crops (N, H, W, 3), rounded back to uint8."""
    out = gaussian_filter(np.asarray(crops, dtype=np.float32), sigma=(0, sigma, sigma, 0), mode="reflect")
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def resampled(crops: np.ndarray, rng: np.random.Generator, block: int = BLOCK) -> np.ndarray:
    """Each ``block`` x ``block`` block replaced by another block of the same crop, moved to its mean colour.

    Source blocks are drawn uniformly from the crop's own grid (never the block itself), so the
    replacement carries the image's residual statistics (in distribution), not blur's smoothness.
    """
    crops = np.asarray(crops)
    n, h, w, _ = crops.shape
    rows, cols = h // block, w // block
    out = crops.copy()
    for i in range(n):
        image = crops[i].astype(np.float32)
        blocks = image[: rows * block, : cols * block].reshape(rows, block, cols, block, -1).transpose(0, 2, 1, 3, 4)
        blocks = blocks.reshape(rows * cols, block, block, -1)
        source = rng.integers(0, rows * cols - 1, size=rows * cols)
        source = source + (source >= np.arange(rows * cols))  # skip the block itself
        means = blocks.mean(axis=(1, 2), keepdims=True)
        moved = blocks[source] - means[source] + means
        grid = moved.reshape(rows, cols, block, block, -1).transpose(0, 2, 1, 3, 4).reshape(rows * block, cols * block, -1)
        out[i, : rows * block, : cols * block] = np.clip(np.rint(grid), 0, 255).astype(crops.dtype)
    return out


# --- maps ----------------------------------------------------------------------------


def head_bias(model: TaskModel) -> float:
    head = getattr(model.network, "binary_head", None)
    return float(head.bias.item()) if head is not None and head.bias is not None else 0.0


def gradcam_maps(model: TaskModel, crops: np.ndarray, centre: np.ndarray | None = None,
                 batch_size: int = 8) -> np.ndarray:
    """Signed Grad-CAM of the network logit on ``model.network.stages[-1]``, upsampled to the crop.

    Returns (N, H, W) float32 in logit units per cell of the last block (the
    ReLU of the usual Grad-CAM is left out: negative cells push towards "real").
    With ``centre`` (each image's threshold on the network logit), every cell
    gives up an equal share of ``centre - bias``, so the cells sum to
    ``logit - threshold`` (see ``gradcam_completeness``): positive cells push
    the image over the threshold, negative ones below it.
    """
    cam = LayerGradCam(model.explained, model.network.stages[-1])
    bias = head_bias(model)
    maps = []
    for start in range(0, len(crops), batch_size):
        x = to_tensor(np.array(crops[start : start + batch_size])).requires_grad_(True)
        with torch.enable_grad():
            layer_map = cam.attribute(x, relu_attributions=False).detach()
        if centre is not None:
            shift = (torch.as_tensor(np.asarray(centre[start : start + len(x)]), dtype=torch.float32) - bias)
            layer_map = layer_map - shift.view(-1, 1, 1, 1) / (layer_map.shape[-1] * layer_map.shape[-2])
        upsampled = LayerAttribution.interpolate(layer_map, tuple(x.shape[-2:]), interpolate_mode="bilinear")
        maps.append(upsampled[:, 0].numpy().astype(np.float32))
    return np.concatenate(maps) if maps else np.zeros((0,) + crops.shape[1:3], dtype=np.float32)


def gradcam_completeness(model: TaskModel, crops: np.ndarray) -> dict:
    """How exactly the Grad-CAM cells add up to the logit.

    With global average pooling and a linear head, Grad-CAM's channel weights
    are the head's weights over the number of cells, so the cells sum to
    ``logit - bias``: Grad-CAM is then the class activation map, an exact
    decomposition of the score over the cells. Measured, not assumed.
    """
    x = to_tensor(np.array(crops)).requires_grad_(True)
    with torch.enable_grad():
        layer_map = LayerGradCam(model.explained, model.network.stages[-1]).attribute(x, relu_attributions=False)
    with torch.no_grad():
        logits = model.explained(x)
    bias = head_bias(model)
    error = (layer_map.detach().sum(dim=(1, 2, 3)) - (logits - bias)).abs()
    cells = list(layer_map.shape[-2:])
    return {"n": int(len(crops)), "max_abs_error": float(error.max()),
            "mean_abs_logit": float(logits.abs().mean()), "cells": cells,
            "cell_px": int(round(crops.shape[1] / cells[0])), "receptive_field_px": receptive_field(model, crops[:1])}


def receptive_field(model: TaskModel, crop: np.ndarray) -> int:
    """Side in pixels of the input region that moves the central cell of the last block (measured by gradient)."""
    x = to_tensor(np.array(crop)).requires_grad_(True)
    with torch.enable_grad():
        features = model.network.feature_map(x.contiguous(memory_format=torch.channels_last))
        features[0, :, features.shape[2] // 2, features.shape[3] // 2].sum().backward()
    reach = x.grad[0].abs().sum(dim=0) > 0
    rows, cols = np.flatnonzero(reach.any(dim=1).numpy()), np.flatnonzero(reach.any(dim=0).numpy())
    return int(max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1)) if len(rows) else 0


def integrated_gradients_maps(model: TaskModel, crops: np.ndarray, baselines: np.ndarray,
                              n_steps: int = IG_STEPS) -> tuple[np.ndarray, np.ndarray]:
    """Integrated Gradients from the blurred image to the image, summed over colour channels.

    Returns (maps (N, H, W), relative completeness error |delta| / |f(x) - f(baseline)| per image).
    """
    ig = IntegratedGradients(model.explained)
    maps, errors = [], []
    for i in range(len(crops)):
        x, base = to_tensor(np.array(crops[i : i + 1])), to_tensor(np.array(baselines[i : i + 1]))
        with torch.enable_grad():
            attribution, delta = ig.attribute(x, baselines=base, n_steps=n_steps, internal_batch_size=n_steps,
                                              return_convergence_delta=True)
        with torch.no_grad():
            gap = float((model.explained(x) - model.explained(base)).abs().item())
        maps.append(attribution[0].sum(0).detach().numpy().astype(np.float32))
        errors.append(float(abs(delta.item())) / max(gap, 1e-6))
    return np.stack(maps), np.asarray(errors)


def occlusion_maps(model: TaskModel, crops: np.ndarray, baselines: np.ndarray, window: int = OCCLUSION_WINDOW,
                   stride: int = OCCLUSION_STRIDE) -> np.ndarray:
    """Occlusion: f(x) - f(x with a blurred ``window`` patch), averaged over the patches covering a pixel."""
    occlusion = Occlusion(model.explained)
    maps = []
    for i in range(len(crops)):
        x, base = to_tensor(np.array(crops[i : i + 1])), to_tensor(np.array(baselines[i : i + 1]))
        with torch.no_grad():
            attribution = occlusion.attribute(x, sliding_window_shapes=(3, window, window), strides=(3, stride, stride),
                                              baselines=base, perturbations_per_eval=16)
        maps.append(attribution[0, 0].numpy().astype(np.float32))
    return np.stack(maps)


def decision_maps(signed_maps: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Evidence for each image's own decision: ReLU(map * (+1 generated / -1 real))."""
    sign = np.where(np.asarray(predicted) == 1, 1.0, -1.0).reshape(-1, 1, 1)
    return np.maximum(signed_maps * sign, 0.0)


def attention_statistics(maps: np.ndarray, centre_fraction: float = 0.5, border: int = 16) -> dict:
    """How concentrated non-negative maps are, against a uniform map.

    ``top10_mass``: share of the mass in the 10 % highest pixels (uniform 0.10);
    ``centre_share``: mass in the central square of half the side (uniform 0.25);
    ``border_share``: mass in the outer ``border`` pixels (uniform given as ``border_uniform``).
    """
    maps = np.asarray(maps, dtype=np.float64)
    total = maps.sum(axis=(1, 2))
    usable = total > 0
    if not usable.any():
        return {"n": 0, "n_empty": int(len(maps))}
    maps, total = maps[usable], total[usable]
    n, h, w = maps.shape
    flat = np.sort(maps.reshape(n, -1), axis=1)[:, ::-1]
    top = max(1, int(round(0.1 * flat.shape[1])))
    ch, cw = int(h * centre_fraction), int(w * centre_fraction)
    top_left = ((h - ch) // 2, (w - cw) // 2)
    centre = maps[:, top_left[0] : top_left[0] + ch, top_left[1] : top_left[1] + cw].sum(axis=(1, 2))
    inner = maps[:, border : h - border, border : w - border].sum(axis=(1, 2))
    return {
        "n": int(n),
        "n_empty": int((~usable).sum()),
        "top10_mass": float(np.mean(flat[:, :top].sum(axis=1) / total)),
        "centre_share": float(np.mean(centre / total)),
        "centre_uniform": float(ch * cw / (h * w)),
        "border_share": float(np.mean(1.0 - inner / total)),
        "border_uniform": float(1.0 - (h - 2 * border) * (w - 2 * border) / (h * w)),
    }


# --- the deletion test -------------------------------------------------------------


def block_sums(maps: np.ndarray, block: int = BLOCK) -> np.ndarray:
    n, h, w = maps.shape
    cropped = maps[:, : h - h % block, : w - w % block]
    return cropped.reshape(n, h // block, block, w // block, block).sum(axis=(2, 4)).reshape(n, -1)


def removal_orders(maps: np.ndarray, rng: np.random.Generator, block: int = BLOCK) -> np.ndarray:
    """Blocks of each image, most evidence for "generated" first (ties in random order)."""
    sums = block_sums(maps, block)
    orders = np.empty(sums.shape, dtype=np.int64)
    for i, row in enumerate(sums):
        shuffled = rng.permutation(row.size)
        orders[i] = shuffled[np.argsort(-row[shuffled], kind="stable")]
    return orders


def random_orders(n_images: int, n_blocks: int, rng: np.random.Generator) -> np.ndarray:
    return np.stack([rng.permutation(n_blocks) for _ in range(n_images)]) if n_images else np.zeros((0, n_blocks), int)


def with_blocks_removed(crop: np.ndarray, baseline: np.ndarray, order: np.ndarray, k: int, block: int = BLOCK) -> np.ndarray:
    """``crop`` with its first ``k`` blocks of ``order`` replaced by the baseline's pixels."""
    h, w = crop.shape[:2]
    grid = np.zeros((h // block) * (w // block), dtype=bool)
    grid[order[:k]] = True
    mask = np.repeat(np.repeat(grid.reshape(h // block, w // block), block, axis=0), block, axis=1)
    out = crop.copy()
    out[: mask.shape[0], : mask.shape[1]][mask] = baseline[: mask.shape[0], : mask.shape[1]][mask]
    return out


def deletion_curves(model: TaskModel, crops: np.ndarray, baselines: np.ndarray, orders: dict[str, np.ndarray],
                    fractions: np.ndarray = DELETION_FRACTIONS, keep_going=lambda: True) -> dict[str, np.ndarray]:
    """Explained score of each image as its blocks are removed in each order: {name: (n_done, F)}.

    ``keep_going()`` is asked before each image; images not reached are left out.
    """
    n_blocks = next(iter(orders.values())).shape[1]
    curves = {name: [] for name in orders}
    for i in range(len(crops)):
        if not keep_going():
            break
        views = [with_blocks_removed(crops[i], baselines[i], order[i], int(round(f * n_blocks)))
                 for order in orders.values() for f in fractions[1:-1]]
        scores = model.explained_scores(np.stack([crops[i], baselines[i], *views]))
        start, end, inner = scores[0], scores[1], scores[2:].reshape(len(orders), len(fractions) - 2)
        for name, row in zip(orders, inner):
            curves[name].append(np.concatenate([[start], row, [end]]))
    return {name: np.asarray(rows).reshape(-1, len(fractions)) for name, rows in curves.items()}


def summarise_deletion(curves: dict[str, np.ndarray], fractions: np.ndarray, detected: np.ndarray) -> dict:
    """Mean curves, their areas, and which attribution falls fastest against random order.

    ``curves`` holds the methods plus ``random_<seed>`` entries; ``detected``
    marks images above the threshold (correctly detected generated images).
    """
    methods = [name for name in curves if not name.startswith("random_")]
    randoms = [name for name in curves if name.startswith("random_")]
    n = len(next(iter(curves.values())))
    detected = np.asarray(detected[:n], dtype=bool)

    def area(rows):
        return float(trapezoid(rows.mean(axis=0), fractions)) if len(rows) else float("nan")

    per_image_auc = {name: trapezoid(rows, fractions, axis=1) for name, rows in curves.items()}
    random_per_image = np.mean([per_image_auc[r] for r in randoms], axis=0)
    summary = {
        "n_images": int(n),
        "n_correctly_detected": int(detected.sum()),
        "fractions": [float(f) for f in fractions],
        "mean_logit": {name: curves[name].mean(axis=0).tolist() for name in methods},
        "mean_logit_detected": {name: curves[name][detected].mean(axis=0).tolist() if detected.any() else None
                                for name in methods},
        "auc": {name: area(curves[name]) for name in methods},
        "auc_detected": {name: area(curves[name][detected]) if detected.any() else None for name in methods},
        "random_mean_logit": np.mean([curves[r].mean(axis=0) for r in randoms], axis=0).tolist(),
        "random_mean_logit_by_seed": [curves[r].mean(axis=0).tolist() for r in randoms],
        "random_mean_logit_detected": (np.mean([curves[r][detected].mean(axis=0) for r in randoms], axis=0).tolist()
                                       if detected.any() else None),
        "auc_random_by_seed": [area(curves[r]) for r in randoms],
        "per_image_win_rate": {name: float(np.mean(per_image_auc[name] < random_per_image)) for name in methods},
    }
    start, end = next(iter(curves.values()))[:, 0], next(iter(curves.values()))[:, -1]
    # A replacement is only a neutral "removal" if it lowers the score; a detector that reads
    # smoothness as a sign of generation scores the fully blurred image higher.
    summary["mean_logit_original"] = float(start.mean())
    summary["mean_logit_fully_blurred"] = float(end.mean())  # fully replaced (blurred, or resampled)
    summary["share_rising_when_fully_blurred"] = float(np.mean(end > start))
    summary["auc_random"] = float(np.mean(summary["auc_random_by_seed"]))
    summary["auc_random_detected"] = (float(np.mean([area(curves[r][detected]) for r in randoms]))
                                      if detected.any() else None)
    if methods and n:
        best = min(methods, key=lambda name: summary["auc"][name])
        summary["best_method"] = best
        summary["best_auc_gain_over_random"] = summary["auc_random"] - summary["auc"][best]
        summary["best_beats_random"] = bool(summary["auc"][best] < summary["auc_random"])
        summary["best_beats_every_random_seed"] = bool(summary["auc"][best] < min(summary["auc_random_by_seed"]))
    return summary
