"""The search's Optuna samplers, by name (a study's ``optuna.sampler``), each seeded by the study.

- ``tpe`` (default): multivariate TPE; its first trials (a third of the budget, 3 to 10) are random.
  With several objectives it is multi-objective TPE.
- ``random``: independent uniform draws. The configurations depend on the seed alone, not on the
  results, so two searches with the same seed train the same configurations (how a benchmark
  compares two ways of running the same trials).
- ``qmc``: scrambled Sobol points, spread more evenly over the space than random draws.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _tpe(seed: int, num_samples: int) -> Any:
    import optuna

    return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=max(3, min(10, num_samples // 3)))


def _random(seed: int, num_samples: int) -> Any:
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


def _qmc(seed: int, num_samples: int) -> Any:
    import optuna

    return optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=seed, warn_independent_sampling=False)


SAMPLERS: dict[str, Callable[[int, int], Any]] = {"tpe": _tpe, "random": _random, "qmc": _qmc}


def make_sampler(name: str, seed: int, num_samples: int) -> Any:
    """The Optuna sampler ``name`` (a key of :data:`SAMPLERS`) for a search of ``num_samples`` trials."""
    return SAMPLERS[name](seed, num_samples)
