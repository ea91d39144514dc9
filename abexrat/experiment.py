"""One configuration end to end: features -> seeds trained -> scores -> the run folder (``abexrat train``).

One path for every data size: :func:`abexrat.feature_source.make_features` holds the vectors in
memory or memory-maps them from streamed feature files, and training and scoring read both the same
way (scoring a chunk at a time into confusion matrices). Only how many predictions are kept differs:
a streamed dataset's are too many.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from abexrat.config import TrainConfig
from abexrat.feature_source import make_features
from abexrat.features import Features
from abexrat.metrics import confusions, score_confusion
from abexrat.run_folder import run_metrics, save_run
from abexrat.train import TrainResult, fit, predict_proba


def predict_split(
    model: Any, X: np.ndarray, y: np.ndarray, n_classes: int, keep: bool, chunk: int = 65536
) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-seed confusion matrices (S, C, C), rows true, of ``X`` (n, dim) scored a chunk at a time
    (memory-mapped vectors are never all read at once), and with ``keep`` the predictions (S, n)."""
    conf = np.zeros((model.n_seeds, n_classes, n_classes), np.int64)
    kept = [np.zeros((model.n_seeds, 0), np.int64)]
    for i in range(0, len(X), chunk):
        pred = predict_proba(model, np.asarray(X[i : i + chunk])).argmax(-1)  # (S, chunk)
        conf += confusions(np.asarray(y[i : i + chunk]), pred, n_classes)
        if keep:
            kept.append(pred)
    return conf, (np.concatenate(kept, axis=1) if keep else None)


def train_and_score(
    feats: Features,
    cfg: TrainConfig,
    seeds: list[int],
    on_epoch: Callable[[int, dict[str, list[float]]], None] | None = None,
    with_test: bool = True,
) -> tuple[TrainResult, dict[str, Any]]:
    """Train all seeds on the config's training set; score on val and, ``with_test``, on test (test is
    never used to choose: a search trial does not even score it)."""
    X, y = feats.training_set_for(cfg)
    result = fit(X, y, len(feats.classes), cfg, seeds, val=(feats.X_val, feats.y_val), on_epoch=on_epoch)
    scores: dict[str, Any] = {}
    splits = [("val", feats.X_val, feats.y_val)] + ([("test", feats.X_test, feats.y_test)] if with_test else [])
    keep = not feats.is_memmapped  # (S, n): paired tests compare these; a streamed dataset's are too many
    for split, Xs, ys in splits:
        conf, pred = predict_split(result.model, Xs, ys, len(feats.classes), keep)
        scores[split] = score_confusion(conf, feats.classes)
        if pred is not None:
            scores[f"{split}_pred"] = pred.astype(int).tolist()
    scores["train_size"] = int(len(y))
    if cfg.robustness.enabled:
        from abexrat.robustness import evaluate

        robust = {split: (Xs, ys) for split, Xs, ys in splits}
        n = len(feats.classes)
        scores["robustness"], preds = evaluate(result.model, robust, n, result.scale, cfg.robustness, feats.perturbed)
        if not feats.is_memmapped:
            scores["robustness_pred"] = preds
    return result, scores


def train_and_score_variants(
    feats: Features,
    cfg: TrainConfig,
    seeds: list[int],
    variants: list[tuple[float, float]],
    on_epoch: Callable[[int, dict[str, list[float]]], None] | None = None,
) -> tuple[TrainResult, list[dict[str, Any]]]:
    """Train ``cfg`` under each (eps, p) variant as one batched model and score each on val (a
    search trial's work for several configurations at once). Returns the result (its records hold
    G S values, variant by variant) and one ``{"val": score, "train_size": n}`` per variant."""
    X, y = feats.training_set_for(cfg)
    val = (feats.X_val, feats.y_val)
    result = fit(X, y, len(feats.classes), cfg, seeds, val=val, on_epoch=on_epoch, variants=variants)
    conf, _ = predict_split(result.model, feats.X_val, feats.y_val, len(feats.classes), keep=False)  # (G S, C, C)
    S = len(seeds)
    return result, [
        {"val": score_confusion(conf[j * S : (j + 1) * S], feats.classes), "train_size": int(len(y))}
        for j in range(len(variants))
    ]


def run_config(cfg: TrainConfig, out: Path, progress: Any = None, stream: bool = False) -> dict[str, Any]:
    """``abexrat train``: features (in memory, or streamed with ``stream`` or for a file too large for
    memory), ``cfg.seeds`` seeds trained, scored, saved. Returns metrics.json."""
    t0 = time.perf_counter()
    made = make_features(cfg, progress, stream)
    feats, seeds = made.feats, cfg.seed_list()
    tick = progress.task(f"training {len(seeds)} seed(s)", cfg.train.epochs) if progress else None
    result, scores = train_and_score(feats, cfg, seeds, on_epoch=(lambda e, r: tick(1)) if tick else None)
    extra = {"streamed": made.streamed} if made.streamed is not None else {}
    metrics = run_metrics(cfg, feats, result, scores, scores["train_size"], t0, **extra)
    save_run(out, cfg, made.encoder, feats.classes, result, metrics)
    return metrics
