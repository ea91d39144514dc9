"""The report's statistics: the paired test's p-value under a known null, Holm's adjustment, and
the agreement of the paired interval with the p-value beside it.

The known-null check simulates what a study stores: S seeds' predictions of the same test reports,
where the seeds of one model mostly agree on a report (a report is easy or hard, and a hard one is
mistaken for the same class by most seeds). Two arms that differ only by seed then have no real
difference, and the p-value must be about uniform over repeats.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from abexrat.report import stats

CLASSES = 7
COUNTS = [120, 80, 40, 25, 15, 8, 2]  # imbalanced, as the OSHA test split


def _reports(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True classes, each report's chance of being right, and the class a hard report is taken for."""
    y = np.repeat(np.arange(CLASSES), COUNTS)
    right = np.where(rng.random(len(y)) < 0.85, rng.uniform(0.97, 1.0, len(y)), rng.uniform(0.1, 0.7, len(y)))
    wrong = (y + rng.integers(1, CLASSES, len(y))) % CLASSES
    return y, right, wrong


def _arm(rng: np.random.Generator, y: np.ndarray, right: np.ndarray, wrong: np.ndarray, seeds: int) -> np.ndarray:
    """(seeds, n) predictions: right with the report's chance, else mostly its usual wrong class."""
    ok = rng.random((seeds, len(y))) < right
    other = np.where(rng.random((seeds, len(y))) < 0.85, wrong, rng.integers(0, CLASSES, (seeds, len(y))))
    return np.where(ok, y, other)


def test_paired_p_is_uniform_when_arms_differ_only_by_seed() -> None:
    rng = np.random.default_rng(7)
    y, right, wrong = _reports(rng)
    agree = _arm(rng, y, right, wrong, 5)
    assert (agree == agree[0]).all(0).mean() > 0.75  # the simulation's seeds agree on most reports
    ps, covers = [], []
    for rep in range(150):
        a, b = _arm(rng, y, right, wrong, 5), _arm(rng, y, right, wrong, 5)
        t = stats.paired(y, a, b, CLASSES, n_resamples=400, seed=rep)
        ps.append(t.p)
        covers.append(t.low <= 0 <= t.high)
        assert len(t.seed_deltas) == 5 and t.delta == pytest.approx(np.mean(t.seed_deltas))
    ps_arr = np.asarray(ps)
    # uniform: Kolmogorov-Smirnov against U(0, 1), and the share below 0.05 within a binomial 99.9% bound
    assert sps.kstest(ps_arr, "uniform").pvalue > 0.001, np.quantile(ps_arr, [0.05, 0.25, 0.5, 0.75])
    below = int((ps_arr < 0.05).sum())
    assert below <= sps.binom.ppf(0.999, len(ps), 0.05), below
    # an interval covering 0 never sits beside a tiny p
    assert ps_arr[np.asarray(covers)].min() > 0.01


def test_a_real_difference_gets_a_small_p_and_an_interval_off_zero() -> None:
    rng = np.random.default_rng(3)
    y, right, wrong = _reports(rng)
    better = _arm(rng, y, np.minimum(1.0, right + 0.25), wrong, 5)
    worse = _arm(rng, y, right, wrong, 5)
    t = stats.paired(y, better, worse, CLASSES, n_resamples=1000)
    assert t.delta > 0.03 and t.low > 0 and t.p < 0.01
    assert sum(d > 0 for d in t.seed_deltas) >= 3 and t.seed_sd > 0


def test_holm_adjustment() -> None:
    # m = 4: sorted 0.01, 0.02, 0.03, 0.5 -> 0.04, 0.06, 0.06 (monotone), 0.5; None is left out
    assert stats.holm([0.03, 0.01, None, 0.5, 0.02]) == pytest.approx([0.06, 0.04, None, 0.5, 0.06])
    assert stats.holm([0.6, 0.9]) == [1.0, 1.0]  # capped at 1
    assert stats.holm([]) == []
    assert stats.holm([0.2]) == [0.2]  # one comparison: unchanged
