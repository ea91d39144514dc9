"""Choosing the best trial of a stage, and telling a finished stage from an interrupted one."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from abexrat.core.errors import Interrupted
from abexrat.study.grouped import configurations
from abexrat.study.table import ended


def best_result(results: Any, metric: str, mode: str, early_stopping: bool = False) -> Any:
    """The best trial by its last reported ``metric``, among trials that ran to their end or were stopped by
    ASHA; errored trials, trials stopped by a limit and trials cut by the time budget (their partial
    scores) are never chosen."""
    ok = [
        r
        for r in results
        if not r.error
        and r.metrics
        and not r.metrics.get("limit")
        and ended(r.metrics, early_stopping)
        and isinstance(r.metrics.get(metric), int | float)
        and math.isfinite(r.metrics[metric])
    ]
    if not ok:
        return None
    pick = max if mode == "max" else min
    return pick(ok, key=lambda r: r.metrics[metric])


def check_interrupted(results: Any, wanted: int, out: Path, early_stopping: bool = False) -> None:
    """Tune returns normally on SIGINT, leaving unfinished trials PENDING/RUNNING in its saved state.

    A trial counts as finished when it reached its final report (``val_accuracy``), or was stopped by
    a limit (its last report names the ``limit``), unless ASHA may have stopped it early on purpose.
    """
    trials = results._experiment_analysis.trials  # noqa: SLF001
    unfinished = [
        t
        for t in trials
        if t.status not in ("TERMINATED", "ERROR")
        or (t.status == "TERMINATED" and not ended(t.last_result, early_stopping))
    ]
    if len(trials) < wanted or unfinished:
        done = sum(len(configurations(t.config)) for t in trials if t.status == "TERMINATED" and t not in unfinished)
        raise Interrupted(
            f"interrupted after {done} finished trial(s); the state is saved in {out}. "
            f"Continue with: abexrat study run STUDY.yaml --out {out} --resume"
        )
