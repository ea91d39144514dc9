"""One configuration end to end: features -> seeds trained -> scores, and ``abexrat train``.

Training and scoring are the same for a dataset held in memory and for a streamed one
(:mod:`abexrat.stream_train`); only how the features are made and how many predictions are kept differ.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from abexrat.config import TrainConfig
from abexrat.datasets import load_dataset
from abexrat.embed import EmbeddingCache
from abexrat.encoders import leaves
from abexrat.features import Features, build_encoder, featurize, n_to_embed
from abexrat.metrics import score
from abexrat.run_folder import run_metrics, save_run
from abexrat.train import TrainResult, fit, predict_proba


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
    for split, Xs, ys in splits:
        pred = predict_proba(result.model, Xs).argmax(-1)
        scores[split] = score(ys, pred, feats.classes)
        if not feats.is_memmapped:  # (S, n): paired tests compare these; a streamed dataset's are too many
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
    pred = predict_proba(result.model, feats.X_val).argmax(-1)  # (G S, n)
    S = len(seeds)
    return result, [
        {"val": score(feats.y_val, pred[j * S : (j + 1) * S], feats.classes), "train_size": int(len(y))}
        for j in range(len(variants))
    ]


def run_config(cfg: TrainConfig, out: Path, progress: Any = None, stream: bool = False) -> dict[str, Any]:
    """``abexrat train``: load, embed, train ``cfg.seeds`` seeds, score, save. Returns metrics.json.

    A data file too large for memory (or ``stream``) goes through :mod:`abexrat.stream_train`."""
    from abexrat.stream_train import run_streamed, wants_stream

    if wants_stream(cfg, stream):
        return run_streamed(cfg, out, progress)
    t0 = time.perf_counter()
    ds = load_dataset(cfg)
    enc = build_encoder(cfg)
    untitled, short = cfg.data.untitled_copies, cfg.data.short_copies
    n_texts = n_to_embed(ds, untitled, short) * len(leaves(enc))  # the bar advances once per text and encoder part
    advance = progress.task("encoding", n_texts) if progress else None
    cache = EmbeddingCache()
    feats = featurize(ds, enc, cache, advance, untitled=untitled, short=short)  # fits enc too
    if cfg.robustness.enabled:
        from abexrat.perturb import dataset_vectors

        feats.perturbed = dataset_vectors(ds, enc, cfg.robustness, cache)
    seeds = cfg.seed_list()
    tick = progress.task(f"training {len(seeds)} seed(s)", cfg.train.epochs) if progress else None
    result, scores = train_and_score(feats, cfg, seeds, on_epoch=(lambda e, r: tick(1)) if tick else None)
    metrics = run_metrics(cfg, feats, result, scores, scores["train_size"], t0)
    save_run(out, cfg, enc, ds.classes, result, metrics)
    return metrics
