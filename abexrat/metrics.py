"""Scores over seeds: macro-F1, weighted-F1, accuracy, per-class P/R/F1 and confusion matrices."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Macro-F1 over the classes present in y_true or y_pred (sklearn's convention)."""
    return float(f1_score(y_true, y_pred, labels=_present(y_true, y_pred, n_classes), average="macro", zero_division=0))


def _present(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> list[int]:
    return sorted(set(np.unique(y_true).tolist()) | set(np.unique(y_pred).tolist()))


def summarize(values: list[float]) -> dict[str, Any]:
    """``{"mean", "std", "per_seed"}``; std is the sample standard deviation (0 for one seed)."""
    arr = np.asarray(values, dtype=np.float64)
    std = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
    return {"mean": float(arr.mean()), "std": std, "per_seed": [float(v) for v in arr]}


def score_confusion(conf: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """:func:`score` from per-seed confusion matrices (S, C, C), rows true: the same numbers, from
    one weighted sample per cell (how streamed files are scored without holding their labels)."""
    C = len(classes)
    y_true = np.repeat(np.arange(C), C)
    y_pred = np.tile(np.arange(C), C)
    return score(y_true, np.broadcast_to(y_pred, (len(conf), C * C)), classes, conf.reshape(len(conf), C * C))


def score(
    y_true: np.ndarray, preds: np.ndarray, classes: list[str], sample_weight: np.ndarray | None = None
) -> dict[str, Any]:
    """Scores of S seeds' predictions: y_true (n,), preds (S, n) of class indices; ``sample_weight``
    (S, n) counts each sample that many times (see :func:`score_confusion`)."""
    C = len(classes)
    labels = list(range(C))
    mf, wf, acc, per_p, per_r, per_f, conf = [], [], [], [], [], [], []
    for s, p in enumerate(preds):
        w = None if sample_weight is None else sample_weight[s]
        seen = slice(None) if w is None else w > 0
        present = _present(y_true[seen], p[seen], C)
        mf.append(f1_score(y_true, p, labels=present, average="macro", zero_division=0, sample_weight=w))
        wf.append(f1_score(y_true, p, labels=labels, average="weighted", zero_division=0, sample_weight=w))
        acc.append(accuracy_score(y_true, p, sample_weight=w))
        pr, rc, f, _ = precision_recall_fscore_support(y_true, p, labels=labels, zero_division=0, sample_weight=w)
        per_p.append(pr)
        per_r.append(rc)
        per_f.append(f)
        conf.append(confusion_matrix(y_true, p, labels=labels, sample_weight=w).astype(np.int64))
    support = np.asarray(conf[0]).sum(1) if conf else np.bincount(y_true, minlength=C)
    per_class = {
        name: {
            "precision": summarize([v[c] for v in per_p]),
            "recall": summarize([v[c] for v in per_r]),
            "f1": summarize([v[c] for v in per_f]),
            "support": int(support[c]),
        }
        for c, name in enumerate(classes)
    }
    return {
        "macro_f1": summarize(mf),
        "weighted_f1": summarize(wf),
        "accuracy": summarize(acc),
        "per_class": per_class,
        "confusion": {
            "labels": list(classes),
            "rows_are": "true",
            "per_seed": [m.tolist() for m in conf],
            "total": np.sum(conf, axis=0).tolist(),
        },
    }
