"""Scores over seeds: macro-F1, weighted-F1, accuracy, per-class P/R/F1 and confusion matrices."""

from __future__ import annotations

from typing import Any

import numpy as np


def confusions(y: np.ndarray, preds: np.ndarray, n_classes: int) -> np.ndarray:
    """Confusion matrices (rows: true class) of broadcastable ``y`` and ``preds`` (..., n) -> (..., C, C)."""
    y, preds = np.broadcast_arrays(np.asarray(y, dtype=np.int64), np.asarray(preds, dtype=np.int64))
    lead = y.shape[:-1]
    k = int(np.prod(lead)) if lead else 1
    cc = n_classes * n_classes
    codes = y.reshape(k, -1) * n_classes + preds.reshape(k, -1) + (np.arange(k, dtype=np.int64) * cc)[:, None]
    return np.bincount(codes.ravel(), minlength=k * cc).reshape(*lead, n_classes, n_classes)


def per_class(conf: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall and F1 of every class of confusion matrices (..., C, C) -> (..., C) each;
    0 where undefined (sklearn's ``zero_division=0``)."""
    conf = conf.astype(np.float64)
    tp = np.diagonal(conf, axis1=-2, axis2=-1)
    support, predicted = conf.sum(-1), conf.sum(-2)
    denom = support + predicted  # 2 tp + fp + fn
    return {
        "precision": np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0),
        "recall": np.divide(tp, support, out=np.zeros_like(tp), where=support > 0),
        "f1": np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0),
    }


def scores(conf: np.ndarray) -> dict[str, np.ndarray]:
    """macro-F1, weighted-F1 and accuracy of confusion matrices (..., C, C) -> (...) each.

    Macro-F1 averages over the classes present in the true or the predicted labels, as sklearn's
    ``f1_score(labels=present)`` does; weighted-F1 weights every class by its support. These are
    sklearn's numbers (a test checks them against ``sklearn.metrics``), computed from counts: no
    import of scikit-learn (a second of every trial worker's start), and vectorized over seeds and
    bootstrap resamples."""
    f1 = per_class(conf)["f1"]
    conf = conf.astype(np.float64)
    tp = np.diagonal(conf, axis1=-2, axis2=-1)
    support, predicted = conf.sum(-1), conf.sum(-2)
    present = (support + predicted) > 0
    n = support.sum(-1)
    return {
        "macro_f1": (f1 * present).sum(-1) / np.maximum(present.sum(-1), 1),
        "weighted_f1": (f1 * support).sum(-1) / np.maximum(n, 1),
        "accuracy": tp.sum(-1) / np.maximum(n, 1),
    }


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Macro-F1 over the classes present in y_true or y_pred (sklearn's convention)."""
    return float(scores(confusions(y_true, y_pred, n_classes))["macro_f1"])


def summarize(values: list[float]) -> dict[str, Any]:
    """``{"mean", "std", "per_seed"}``; std is the sample standard deviation (0 for one seed)."""
    arr = np.asarray(values, dtype=np.float64)
    std = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
    return {"mean": float(arr.mean()), "std": std, "per_seed": [float(v) for v in arr]}


def score_confusion(conf: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Scores of S seeds from their confusion matrices (S, C, C), rows true: macro-F1, weighted-F1
    and accuracy as ``{"mean", "std", "per_seed"}``, per-class precision / recall / F1 / support,
    and the matrices themselves (how streamed files are scored without holding their labels)."""
    conf = np.asarray(conf, dtype=np.int64)
    top, cls = scores(conf), per_class(conf)
    support = conf[0].sum(1) if len(conf) else np.zeros(len(classes), np.int64)
    return {
        **{k: summarize(list(top[k])) for k in ("macro_f1", "weighted_f1", "accuracy")},
        "per_class": {
            name: {
                **{k: summarize(list(cls[k][:, c])) for k in ("precision", "recall", "f1")},
                "support": int(support[c]),
            }
            for c, name in enumerate(classes)
        },
        "confusion": {
            "labels": list(classes),
            "rows_are": "true",
            "per_seed": [m.tolist() for m in conf],
            "total": conf.sum(0).tolist(),
        },
    }


def score(y_true: np.ndarray, preds: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Scores of S seeds' predictions: y_true (n,), preds (S, n) of class indices (see
    :func:`score_confusion` for what it holds)."""
    return score_confusion(confusions(np.asarray(y_true)[None], np.atleast_2d(preds), len(classes)), classes)
