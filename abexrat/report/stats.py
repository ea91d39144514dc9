"""Bootstrap confidence intervals and paired tests over the test reports.

A score here is the mean over S seeds of a per-seed metric on the same n reports:
``y`` (n,) true classes and ``preds`` (S, n) predicted classes, as ``summary.json`` stores them.

* A confidence interval resamples the reports with replacement (one draw shared by every seed),
  scores each seed on the draw and averages over seeds: it says how much the score depends on
  which reports happened to land in the test split. The draw is stratified by true class, as the
  splits are: each class keeps its number of reports, so a class with one test report is never
  dropped from a resample (which would move macro-F1 by a whole class's share).
* A paired comparison of two arms on the same reports and seeds gives the difference of their
  scores, a paired-bootstrap interval for it, and a two-sided approximate-randomization p-value.
  Both take the **report** as the unit: the interval resamples reports, and the test swaps a
  report's predictions between the arms with probability 1/2, all seeds of that report together.
  The seeds' predictions of one report mostly agree, so swapping each (seed, report) pair on its
  own (as if each were an independent observation) would make the null distribution far too
  narrow and p far too small beside an interval that covers 0. Both numbers hold the trained
  models fixed and ask how much the difference depends on which reports were drawn; how much it
  depends on the seed is reported beside them (``Paired.seed_sd``, the spread of the per-seed
  differences), not mixed in.
* :func:`holm` adjusts the p-values of a family of comparisons against one reference (Holm's
  step-down method: the family-wise error rate is controlled under any dependence).

Scores come from confusion matrices counted with ``np.bincount`` (:func:`abexrat.metrics.confusions`
and :func:`abexrat.metrics.scores`), so thousands of resamples take well under a second.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from abexrat.metrics import confusions, scores

METRICS = ("macro_f1", "weighted_f1", "accuracy")
N_RESAMPLES = 2000
LEVEL = 0.95
_CHUNK = 200  # resamples per vectorized block (bounds memory: S * chunk * n codes)


@dataclass(frozen=True)
class Interval:
    """A score (mean over seeds) and its bootstrap interval."""

    mean: float
    low: float
    high: float


@dataclass(frozen=True)
class Paired:
    """``a - b``: the difference of two arms' scores, its paired-bootstrap interval, its p-value
    (reports as the unit), and the per-seed differences' mean and standard deviation (seeds paired
    by position: seed k of ``a`` against seed k of ``b``)."""

    delta: float
    low: float
    high: float
    p: float
    seed_deltas: tuple[float, ...] = ()

    @property
    def seed_sd(self) -> float:
        d = np.asarray(self.seed_deltas)
        return float(d.std(ddof=1)) if len(d) > 1 else 0.0


def per_seed(y: np.ndarray, preds: np.ndarray, n_classes: int) -> dict[str, np.ndarray]:
    """Each metric per seed, (S,): the values ``summary.json`` lists as ``per_seed``."""
    return scores(confusions(np.asarray(y)[None], np.atleast_2d(preds), n_classes))


def _strata(y: np.ndarray) -> list[np.ndarray]:
    return [np.flatnonzero(y == c) for c in np.unique(y)]


def _draw(rng: np.random.Generator, strata: list[np.ndarray], k: int) -> np.ndarray:
    """``k`` stratified resamples of report indices, (k, n): each class's reports drawn from that class."""
    return np.concatenate([ix[rng.integers(0, len(ix), size=(k, len(ix)))] for ix in strata], axis=1)


def bootstrap(
    y: np.ndarray, preds: np.ndarray, n_classes: int, n_resamples: int = N_RESAMPLES, seed: int = 0
) -> dict[str, np.ndarray]:
    """Each metric's mean over seeds on ``n_resamples`` resamples of the reports, (n_resamples,)."""
    y, preds = np.asarray(y), np.atleast_2d(preds)
    strata = _strata(y)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {m: [] for m in METRICS}
    for start in range(0, n_resamples, _CHUNK):
        idx = _draw(rng, strata, min(_CHUNK, n_resamples - start))
        conf = confusions(y[idx][None], preds[:, idx], n_classes)  # (S, chunk, C, C)
        for m, v in scores(conf).items():
            parts[m].append(v.mean(0))
    return {m: np.concatenate(v) for m, v in parts.items()}


def interval(values: np.ndarray, mean: float, level: float = LEVEL) -> Interval:
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(mean), float(lo), float(hi))


def confidence(
    y: np.ndarray, preds: np.ndarray, n_classes: int, n_resamples: int = N_RESAMPLES, seed: int = 0
) -> dict[str, Interval]:
    """Each metric: the mean over seeds and its percentile-bootstrap interval over the reports."""
    point = per_seed(y, preds, n_classes)
    boot = bootstrap(y, preds, n_classes, n_resamples, seed)
    return {m: interval(boot[m], float(point[m].mean())) for m in METRICS}


def paired(
    y: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    n_classes: int,
    metric: str = "macro_f1",
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> Paired:
    """Arm ``a`` against arm ``b`` (both (S, n) on the same reports and seeds): delta = score(a) - score(b).

    The interval resamples reports (stratified) jointly for both arms; the p-value is two-sided,
    (1 + #{|delta*| >= |delta|}) / (1 + n_resamples) over random swaps of whole reports (a swapped
    report's predictions trade arms for every seed at once).
    """
    y, a, b = np.asarray(y), np.atleast_2d(a), np.atleast_2d(b)
    if a.shape != b.shape or a.shape[1] != len(y):
        raise ValueError(f"paired arms need the same seeds and reports: {a.shape} vs {b.shape}, {len(y)} labels")
    seed_deltas = per_seed(y, a, n_classes)[metric] - per_seed(y, b, n_classes)[metric]
    delta = float(seed_deltas.mean())
    rng = np.random.default_rng(seed)
    strata = _strata(y)
    boot, perm = [], []
    for start in range(0, n_resamples, _CHUNK):
        k = min(_CHUNK, n_resamples - start)
        idx = _draw(rng, strata, k)
        ya = y[idx][None]
        boot.append(
            scores(confusions(ya, a[:, idx], n_classes))[metric].mean(0)
            - scores(confusions(ya, b[:, idx], n_classes))[metric].mean(0)
        )
        swap = (rng.random((k, a.shape[1])) < 0.5)[:, None, :]  # (k, 1, n): one coin per report, all seeds
        pa, pb = np.where(swap, b, a), np.where(swap, a, b)
        perm.append(
            scores(confusions(y, pa, n_classes))[metric].mean(-1)
            - scores(confusions(y, pb, n_classes))[metric].mean(-1)
        )
    d_perm = np.concatenate(perm)
    extreme = int((np.abs(d_perm) >= abs(delta) - 1e-12).sum())
    ci = interval(np.concatenate(boot), delta)
    return Paired(delta, ci.low, ci.high, (1 + extreme) / (1 + n_resamples), tuple(float(d) for d in seed_deltas))


def holm(pvalues: list[float | None]) -> list[float | None]:
    """Holm-adjusted p-values of one family of comparisons (``None`` entries are skipped): the k-th
    smallest of m is multiplied by m - k + 1, the results made non-decreasing and capped at 1."""
    known = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    out: list[float | None] = [None] * len(pvalues)
    m, running = len(known), 0.0
    for k, (p, i) in enumerate(known):
        running = max(running, min(1.0, (m - k) * p))
        out[i] = running
    return out
