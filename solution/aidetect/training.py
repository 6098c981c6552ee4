"""The training loop: checkpointed every epoch, resumable, and bound by a deadline.

Shape after torchvision's reference ``train.py``: ``train_one_epoch``,
``evaluate`` and ``fit``; one checkpoint dict (model, optimizer, scheduler,
epoch, config, history) written atomically every epoch, the best model beside
it, and a re-run resumes from the last checkpoint.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .augment import NEUTRAL, POLICIES, AugmentPolicy, augment, without
from .budget import Deadline
from .cleaning import PreparedSplit
from .dataio import save_torch
from .errors import PipelineError
from .modelfiles import CHECKPOINT_FILE, NETWORK_FILE, load_checkpoint, load_network_file, save_network
from .labels import binary_label
from .metrics import recall_at_fpr
from .models import build_model, to_tensor
from .progress import progress
from .settings import DETECTION

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    arch: str = "tracenet"
    width: int = 32
    with_rgb: bool = False  # TraceNet: append the colour image to the high-pass inputs
    stem_stride: int = 2
    epochs: int = 30
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    source_loss_weight: float = 0.5  # joint 6-way source head (attribution)
    policy: str = "neutral"
    clean_fraction: float = 0.0  # share of samples given the neutral policy instead
    patience: int = 8  # epochs without holdout improvement before stopping
    # No early stop before this many epochs: in the first epochs, at a warm-up learning rate, a small holdout's
    # score jumps by chance (0.27 to 0.73 between two epochs on 70 images), and a lucky early peak followed by
    # ``patience`` noisy epochs stopped a network that had barely started learning.
    min_epochs: int = 0
    holdout_fraction: float = 0.15
    seed: int = 0
    eval_batch_size: int = 16
    exclude_families: tuple[str, ...] = ()  # training families left out (leave-one-family-out benchmark)
    # Weight of the consistency term: each image is also seen as a neutral (barely processed) view, and the
    # two views' logits are pulled together, so that processing moves no image's score (0: no pairs).
    consistency_weight: float = 0.0
    # The classical model's weight on the processed views of real images (1: as every other row): above 1
    # a processed real photo called generated costs more than a missed generated one.
    classical_real_view_weight: float = 1.0

    def policies(self) -> tuple[AugmentPolicy, AugmentPolicy]:
        """(the task's policy, the neutral one), less the excluded training families."""
        return without(POLICIES[self.policy], self.exclude_families), without(NEUTRAL, self.exclude_families)

    def model_kwargs(self) -> dict:
        if self.arch != "tracenet":
            return {}
        return {"width": self.width, "with_rgb": self.with_rgb, "stem_stride": self.stem_stride}


@dataclass
class FitResult:
    best_epoch: int
    best_score: float
    epochs_run: int
    stopped_because: str
    history: list = field(default_factory=list)
    seconds: float = 0.0
    planned_epochs: int | None = None  # the schedule's length: below config.epochs when the deadline shortened it


MAX_HOLDOUT = 600  # images: enough to pick an epoch; held in memory as crops, so it must not grow with the data


def stratified_holdout(source_class: np.ndarray, fraction: float, seed: int,
                       max_size: int = MAX_HOLDOUT) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, holdout) with ``fraction`` of every source class held out, at most ``max_size`` in all."""
    rng = np.random.default_rng(seed)
    fraction = min(fraction, max_size / max(1, len(source_class)))
    holdout = []
    for c in np.unique(source_class):
        members = np.flatnonzero(source_class == c)
        take = int(round(fraction * len(members))) if len(members) >= 4 else 0
        holdout.extend(rng.choice(members, size=take, replace=False).tolist())
    holdout = np.array(sorted(holdout), dtype=np.int64)
    train = np.setdiff1d(np.arange(len(source_class)), holdout)
    return train, holdout


def iterate_batches(data: PreparedSplit, indices: np.ndarray, config: TrainConfig, epoch: int):
    """Shuffled, augmented mini-batches (x, y_binary, y_source, x_pair) for one epoch.

    ``x_pair`` holds a neutral view of each image of ``x`` when the consistency term is on, else None.
    """
    rng = np.random.default_rng([config.seed, epoch])
    policy, neutral = config.policies()
    order = rng.permutation(indices)
    for start in range(0, len(order), config.batch_size):
        chosen = order[start : start + config.batch_size]
        if len(chosen) < 2:
            continue  # BatchNorm needs two samples
        views = [
            augment(data.crops[i], neutral if rng.random() < config.clean_fraction else policy, rng) for i in chosen
        ]
        pairs = None
        if config.consistency_weight > 0:
            pairs = to_tensor(np.stack([augment(data.crops[i], neutral, rng) for i in chosen]))
        source = data.source_class[chosen]
        yield (to_tensor(np.stack(views)), torch.from_numpy(binary_label(source)).float(), torch.from_numpy(source),
               pairs)


@torch.no_grad()
def score_crops(model: torch.nn.Module, crops: np.ndarray, batch_size: int = 16, deadline: Deadline | None = None,
                desc: str | None = None) -> np.ndarray:
    """Generated-image logits of whole crops (the model is fully convolutional)."""
    model.eval()
    scores = []
    with progress(total=len(crops), desc=desc or "score", deadline=deadline) as bar:
        for start in range(0, len(crops), batch_size):
            batch = np.asarray(crops[start : start + batch_size])
            scores.append(model(to_tensor(batch)).numpy())
            bar.update(len(batch))
    return np.concatenate(scores) if scores else np.zeros(0, dtype=np.float32)


@torch.no_grad()
def embed_crops(model: torch.nn.Module, crops: np.ndarray, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(binary logits, source logits, embeddings) of whole crops."""
    model.eval()
    outs = [[], [], []]
    for start in range(0, len(crops), batch_size):
        for store, value in zip(outs, model.forward_all(to_tensor(np.asarray(crops[start : start + batch_size])))):
            store.append(value.numpy())
    return tuple(np.concatenate(o) for o in outs)


def holdout_views(data: PreparedSplit, indices: np.ndarray, config: TrainConfig) -> list[tuple[str, np.ndarray]]:
    """Fixed evaluation views of the holdout: the clean crops, plus policy views when robust."""
    views = [("clean", np.asarray(data.crops[indices]))]
    if config.policy != "neutral":
        rng = np.random.default_rng([config.seed, 999])
        policy = config.policies()[0]
        views.append((config.policy, np.stack([augment(data.crops[i], policy, rng) for i in indices])))
    return views


def selection_score(y_true: np.ndarray, scores: np.ndarray) -> float:
    """(ROC AUC + recall at the FPR cap) / 2: ranking quality and the operating point that matters."""
    from sklearn.metrics import roc_auc_score

    if len(np.unique(y_true)) < 2:
        return float("nan")
    return (float(roc_auc_score(y_true, scores)) + recall_at_fpr(y_true, scores, DETECTION.max_fpr)) / 2


def holdout_score(model, views, y_true, batch_size) -> tuple[float, dict]:
    """Selection criterion: the mean over views of ``selection_score``."""
    from sklearn.metrics import roc_auc_score

    parts = {}
    for name, crops in views:
        scores = score_crops(model, crops, batch_size, desc=f"holdout {name}")
        auc = roc_auc_score(y_true, scores) if len(np.unique(y_true)) == 2 else float("nan")
        parts[name] = {"roc_auc": float(auc),
                       "recall_at_fpr_0.2": recall_at_fpr(y_true, scores, DETECTION.max_fpr),
                       "selection_score": selection_score(y_true, scores)}
    values = [p["selection_score"] for p in parts.values()]
    return float(np.nanmean(values)) if values else float("nan"), parts


def make_optimizer(model, config: TrainConfig, steps_per_epoch: int, plan: dict):
    """AdamW with warm-up and cosine decay over ``plan["epochs"]``, which the deadline may shorten."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    warmup = min(steps_per_epoch, max(1, config.epochs * steps_per_epoch // 10))

    def schedule(step):
        total = max(1, plan["epochs"] * steps_per_epoch)
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup)))) * 0.98 + 0.02

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def train_one_epoch(model, optimizer, scheduler, batches, config: TrainConfig, class_weights, deadline, reserve,
                    n_batches, epoch) -> tuple[float, bool]:
    """One pass; returns (mean loss, interrupted by the deadline)."""
    model.train()
    pos_weight, source_weight = class_weights
    losses = []
    with progress(total=n_batches, desc=f"epoch {epoch + 1}/{config.epochs}", deadline=deadline) as bar:
        for x, y_binary, y_source, x_pair in batches:
            if deadline is not None and deadline.remaining() < reserve:
                return (float(np.mean(losses)) if losses else float("nan")), True
            if x_pair is not None:  # both views in one batch: BatchNorm sees processed and neutral images alike
                x, y_binary, y_source = torch.cat([x, x_pair]), y_binary.repeat(2), y_source.repeat(2)
            binary_logit, source_logit, _ = model.forward_all(x)
            loss = F.binary_cross_entropy_with_logits(binary_logit, y_binary, pos_weight=pos_weight)
            if config.source_loss_weight > 0:
                loss = loss + config.source_loss_weight * F.cross_entropy(source_logit, y_source, weight=source_weight)
            if x_pair is not None:
                processed, neutral = binary_logit.chunk(2)
                loss = loss + config.consistency_weight * F.smooth_l1_loss(processed, neutral)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix_str(f"loss {np.mean(losses[-20:]):.3f}")
    return float(np.mean(losses)) if losses else float("nan"), False


def _class_weights(source_class: np.ndarray, n_sources: int = 6):
    y = binary_label(source_class)
    n_pos, n_neg = max(1, int(y.sum())), max(1, int((1 - y).sum()))
    counts = np.bincount(source_class, minlength=n_sources).astype(np.float64)
    weight = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / max(1, (counts > 0).sum()), 0.0)
    return torch.tensor(n_neg / n_pos, dtype=torch.float32), torch.tensor(weight, dtype=torch.float32)


def fit(config: TrainConfig, data: PreparedSplit, out_dir: Path, deadline: Deadline, reserve_seconds: float,
        init_state: dict | None = None, resume: bool = True) -> tuple[torch.nn.Module, FitResult]:
    """Train ``config.arch`` on ``data``; keep ``checkpoint_last.pt`` and ``model_best.safetensors`` in ``out_dir``.

    ``reserve_seconds`` is kept free for what follows training (calibration,
    evaluation); ``init_state`` starts from another model's weights (Task 3).
    """
    started = time.monotonic()
    torch.manual_seed(config.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    last_path, best_path = out_dir / CHECKPOINT_FILE, out_dir / NETWORK_FILE
    train_idx, holdout_idx = stratified_holdout(data.source_class, config.holdout_fraction, config.seed)
    if len(holdout_idx) == 0 or len(np.unique(binary_label(data.source_class[holdout_idx]))) < 2:
        log.warning("training set too small for a holdout; selecting on the training images themselves")
        holdout_idx = train_idx
    y_holdout = binary_label(data.source_class[holdout_idx])
    views = holdout_views(data, holdout_idx, config)
    n_batches = sum(1 for s in range(0, len(train_idx), config.batch_size) if len(train_idx) - s >= 2)

    model = build_model(config.arch, **config.model_kwargs())
    plan = {"epochs": config.epochs}  # shortened when the deadline cannot fit them all
    optimizer, scheduler = make_optimizer(model, config, n_batches, plan)
    state = {"epoch": 0, "best_score": -math.inf, "best_epoch": -1, "history": [], "bad_epochs": 0,
             "planned_epochs": config.epochs}
    checkpoint = _load_resumable(last_path, config) if resume else None
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["lr_scheduler"])
        state = checkpoint["state"]
        plan["epochs"] = state.get("planned_epochs", config.epochs)
        log.info("resuming %s from epoch %d (best holdout score %.4f)", config.arch, state["epoch"], state["best_score"])
    elif init_state is not None:
        model.load_state_dict(init_state)
        log.info("starting %s from the given weights", config.arch)

    class_weights = _class_weights(data.source_class[train_idx])
    log.info("training %s: %d train / %d holdout images, %d epochs max, policy %s, %s",
             config.arch, len(train_idx), len(holdout_idx), config.epochs, config.policy, deadline.describe())
    stopped = "epoch budget"
    epoch_seconds = []
    while state["epoch"] < plan["epochs"]:
        epoch = state["epoch"]
        if epoch_seconds and deadline.remaining() - reserve_seconds < 0.5 * max(epoch_seconds):
            stopped = "time budget"
            break
        t0 = time.monotonic()
        loss, interrupted = train_one_epoch(
            model, optimizer, scheduler, iterate_batches(data, train_idx, config, epoch), config, class_weights,
            deadline, reserve_seconds, n_batches, epoch,
        )
        score, parts = holdout_score(model, views, y_holdout, config.eval_batch_size)
        state["epoch"] = epoch + 1
        state["history"].append({"epoch": epoch + 1, "loss": loss, "holdout_score": score, "holdout": parts,
                                 "seconds": time.monotonic() - t0, "complete": not interrupted})
        improved = score > state["best_score"]
        if improved:
            state["best_score"], state["best_epoch"], state["bad_epochs"] = score, epoch + 1, 0
            save_network(best_path, model.state_dict(), {"arch": config.arch, "config": asdict(config),
                                                          "epoch": epoch + 1, "holdout_score": score})
        else:
            state["bad_epochs"] += 1
        save_torch(last_path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                               "lr_scheduler": scheduler.state_dict(), "config": asdict(config), "state": state,
                               "finished": False})
        epoch_seconds.append(time.monotonic() - t0)
        epochs_left = int((deadline.remaining() - reserve_seconds) / np.mean(epoch_seconds))
        affordable = state["epoch"] + epochs_left
        # Finish the cosine decay inside the time budget rather than be cut at a high learning rate, but only
        # once the deadline is nearer than the holdout's patience: until then early stopping may still end the
        # training first, and a schedule cut on the timing of slow epochs would change the model with the load.
        if affordable < plan["epochs"] and epochs_left < config.patience:
            plan["epochs"] = state["planned_epochs"] = max(state["epoch"] + 1, affordable)
            log.info("time budget allows %d epochs: learning-rate schedule shortened", plan["epochs"])
        log.info("epoch %d: loss %.4f, holdout score %.4f%s (%s)", epoch + 1, loss, score,
                 " (best)" if improved else "", deadline.describe())
        if interrupted:
            stopped = "time budget"
            break
        if state["bad_epochs"] >= config.patience and state["epoch"] >= config.min_epochs:
            stopped = "converged (no holdout improvement)"
            break
    if last_path.exists():
        checkpoint = load_checkpoint(last_path)
        checkpoint["finished"] = True
        save_torch(last_path, checkpoint)
    if best_path.exists():
        model.load_state_dict(load_network_file(best_path)[0])
    result = FitResult(state["best_epoch"], state["best_score"], state["epoch"], stopped, state["history"],
                       time.monotonic() - started, plan["epochs"])
    log.info("training stopped: %s; best epoch %d, holdout score %.4f", stopped, result.best_epoch, result.best_score)
    return model, result


def _load_resumable(path: Path, config: TrainConfig) -> dict | None:
    if not path.exists():
        return None
    try:
        checkpoint = load_checkpoint(path)
    except Exception as exc:
        log.warning("checkpoint %s unreadable (%s); starting afresh", path, exc)
        return None
    if checkpoint.get("finished") or checkpoint.get("config") != asdict(config):
        return None
    return checkpoint


def load_model(path: Path) -> torch.nn.Module:
    """A model from a network file (``model_best.safetensors``), in eval mode."""
    state_dict, metadata = load_network_file(path)
    recorded = metadata.get("config", {})
    config = TrainConfig(**{**recorded, "exclude_families": tuple(recorded.get("exclude_families", ()))})
    # Today's defaults must not stand in for architecture fields an older checkpoint lacks:
    # a stride, say, changes no weight shape, so the model would load silently and be wrong.
    missing = sorted(set(config.model_kwargs()) - set(recorded))
    if missing:
        raise PipelineError(f"checkpoint {path} does not record {', '.join(missing)}: it predates this code, "
                            "retrain it")
    model = build_model(metadata["arch"], **config.model_kwargs())
    model.load_state_dict(state_dict)
    return model.eval()


def with_overrides(config: TrainConfig, **overrides) -> TrainConfig:
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})
