"""Stratified k-fold cross-validation over the original reports: a far less noisy score than one split.

The originals of the chosen splits (by default train + val: the test split stays unseen) are pooled
and cut into k stratified folds. Each fold trains on the other folds' originals plus only the
synthetic rows made from those originals (never one made from a held-out report), with its own
fitted encoder (tf-idf fits on the fold's training rows), and predicts its held-out fold. The
out-of-fold predictions of all n pooled reports are scored at once, per seed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from abexrat.config import TrainConfig
from abexrat.data import Dataset, Split, stratified_folds
from abexrat.embed import EmbeddingCache
from abexrat.features import Features, build_encoder, featurize
from abexrat.metrics import score
from abexrat.train import fit, predict_proba


@dataclass
class CVFeatures:
    """Per fold, Features whose ``val`` is the held-out fold (``test`` is empty)."""

    classes: list[str]
    y: np.ndarray  # (n,) int64: the pooled originals' labels
    held_out: list[np.ndarray]  # per fold, indices into the pool
    folds: list[Features]


def cv_datasets(ds: Dataset, k: int, seed: int, splits: list[str]) -> tuple[list[Dataset], np.ndarray, list[Any]]:
    """One Dataset per fold (train = the other folds, val = this fold), the pool's labels (n,),
    and each fold's held-out indices into the pool."""
    parts = [getattr(ds, s) for s in splits]
    # Ids are namespaced by split: a val report may share its number with a training one.
    pool = Split(
        [f"{s}:{i}" for s, p in zip(splits, parts) for i in p.ids],
        [t for p in parts for t in p.texts],
        np.concatenate([p.labels for p in parts]),
    )
    synth = ds.synthetic
    folds = stratified_folds(pool.labels, k, seed)
    out = []
    for train_idx, held in folds:
        train = pool.subset(train_idx)
        # Synthetic rows are made from training originals: keep those whose source trains here.
        sources = {i.split(":", 1)[1] for i in train.ids if i.startswith("train:")}
        keep = [j for j, s in enumerate(synth.source_ids) if s in sources]
        out.append(Dataset(ds.name, ds.classes, train, pool.subset(held), pool.subset([]), synth.subset(keep)))
    return out, pool.labels, [held for _, held in folds]


def cv_featurize(
    ds: Dataset,
    cfg: TrainConfig,
    k: int,
    seed: int,
    splits: list[str],
    cache: EmbeddingCache | None = None,
    short: bool | None = None,
) -> CVFeatures:
    """Embed every fold with its own fitted encoder (per-text caches are shared across folds);
    ``short``: embed the short copies too (default: when ``cfg.data.short_copies`` asks for them)."""
    cache = cache or EmbeddingCache()
    short = cfg.data.short_copies if short is None else short
    datasets, y, held = cv_datasets(ds, k, seed, splits)
    folds = [featurize(fold, build_encoder(cfg), cache, short=short) for fold in datasets]
    return CVFeatures(ds.classes, y, held, folds)


def cv_train_and_score(
    cvf: CVFeatures,
    cfg: TrainConfig,
    seeds: list[int],
    on_epoch: Callable[[int, dict[str, list[float]]], None] | None = None,
) -> tuple[float, dict[str, Any]]:
    """Train every fold (all seeds batched) and score the out-of-fold predictions.

    Returns (training seconds, ``score`` of the pooled predictions, with ``pred`` (S, n))."""
    oof = np.zeros((len(seeds), len(cvf.y)), np.int64)
    train_s = 0.0
    for feats, held in zip(cvf.folds, cvf.held_out):
        X, y = feats.training_set_for(cfg)
        result = fit(X, y, len(cvf.classes), cfg, seeds, on_epoch=on_epoch)
        oof[:, held] = predict_proba(result.model, feats.X_val).argmax(-1)
        train_s += result.train_s
    scores = score(cvf.y, oof, cvf.classes)
    scores["pred"] = oof.tolist()
    return train_s, scores
