"""What watches a stage's trials: a live console line, and W&B runs when tracking is on.

Tune calls these callbacks on the driver; they hold live handles (a rich bar, W&B runs) that a
restored experiment's pickled copies lack, hence ``close_callbacks`` and the care in ``__setstate__``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from abexrat.study.config import Study
from abexrat.study.grouped import configurations
from abexrat.study.tracking import WandbTrials


class ConsoleProgress:
    """Tune callback: a live line with trials done / running and the best validation score so far."""

    def __init__(self, total: int, label: str, metric: str, keys: list[str]) -> None:
        self.total, self.label, self.metric, self.keys = total, label, metric, keys
        self.done = 0
        self.best: float | None = None
        self.best_params: dict[str, Any] = {}
        self._bar: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_bar"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._bar = None

    def _ensure(self) -> Any:
        if self._bar is None:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[info]}"),
                console=Console(stderr=True),
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=self.total, info="")
        return self._bar

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        group = configurations(trial.config)
        self.done += len(group)
        value = last.get(self.metric)
        ok = isinstance(value, int | float) and math.isfinite(value)  # a trial stopped by a limit reports NaN
        if ok and (self.best is None or value > self.best):
            self.best = float(value)
            self.best_params = dict(group[last.get("config_best", 0)])
        self._refresh(trials)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._refresh(trials)

    def _refresh(self, trials: list) -> None:
        bar = self._ensure()
        running = sum(1 for t in trials if t.status == "RUNNING")
        best = (
            ""
            if self.best is None
            else f"best val macro-F1 {100 * self.best:.2f} "
            + " ".join(f"{k.split('.')[-1]}={_fmt(v)}" for k, v in self.best_params.items())
        )
        bar.update(self._task, completed=self.done, info=f"running {running}  {best}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def stage_callbacks(
    total: int,
    label: str,
    study: Study,
    job: str,
    out: Path,
    tracking_mode: str,
    arms: dict[str, dict[str, Any]] | None = None,
) -> list[Any]:
    """A stage's Tune callbacks: the console line, and W&B's unless ``tracking_mode`` is ``disabled``."""
    from ray.tune import Callback

    class _Progress(ConsoleProgress, Callback):
        pass

    cbs: list[Any] = [_Progress(total, label, study.objective.metric, list(study.space))]
    if tracking_mode != "disabled":
        cbs.append(WandbTrials(study.name, study.tracking, job, out, tracking_mode, study, arms))
    return cbs


def close_callbacks(callbacks: list[Any]) -> float:
    wait = 0.0
    for c in callbacks:
        if isinstance(c, WandbTrials):
            wait += c.close()
        elif isinstance(c, ConsoleProgress):
            c.close()
    return wait
