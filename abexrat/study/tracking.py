"""Weights & Biases: one run per trial (group = study, job_type = search | ablation | final), cheaply.

The stock ``WandbLoggerCallback`` starts a logging actor per trial (about 3 s each on 2
cores). Here the driver keeps each trial's per-epoch results and, when the trial ends,
hands them to one background thread that writes the run with the in-process wandb
service (about 0.1 s of the driver's CPU a run), overlapping the trials still training.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ray.tune import Callback

from abexrat.study.config import Study, Tracking
from abexrat.study.grouped import GROUP, configurations, per_configuration, sub_id

_SKIP = {
    "config",
    "trial_id",
    "experiment_id",
    "date",
    "timestamp",
    "pid",
    "hostname",
    "node_ip",
    "time_this_iter_s",
    "time_total_s",
    "time_since_restore",
    "iterations_since_restore",
    "timesteps_total",
    "episodes_total",
    "timesteps_since_restore",
    "done",
    "should_checkpoint",
    "checkpoint_dir_name",
    "training_iteration",
}


def wandb_mode(tracking: Tracking) -> str:
    """``auto``: online with an API key (or a login), else offline."""
    if not tracking.wandb or tracking.mode == "disabled":
        return "disabled"
    if tracking.mode != "auto":
        return tracking.mode
    if os.environ.get("WANDB_MODE") in ("offline", "disabled", "online"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path.home() / ".netrc"
    return "online" if netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore") else "offline"


def _scalars(result: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v for k, v in result.items() if k not in _SKIP and isinstance(v, int | float) and not isinstance(v, bool)
    }


class WandbTrials(Callback):
    """A Tune callback that writes one W&B run per finished trial from a background thread.

    A run's config holds the trial's Tune parameters, its id and, given the study's ``settings``
    and the stage's ``arms``, the full train config it trained (``train_config``).
    """

    def __init__(
        self,
        study: str,
        tracking: Tracking,
        job_type: str,
        folder: Path,
        mode: str,
        settings: Study | None = None,
        arms: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.study, self.tracking, self.job_type, self.folder, self.mode = study, tracking, job_type, folder, mode
        self.settings, self.arms = settings, arms or {}
        self.busy_s = 0.0
        self.runs: list[str] = []
        self._setup()

    def _setup(self) -> None:
        self._history: dict[str, list[dict[str, Any]]] = {}
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread: threading.Thread | None = None

    # Tune pickles callbacks with the experiment state: leave the thread and queue behind.
    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._setup()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict[str, Any], **info: Any) -> None:
        self._history.setdefault(trial.trial_id, []).append(result if GROUP in trial.config else _scalars(result))

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """The trial's run died and starts again from its first epoch: its run logs the attempt that
        finishes, not the dead one's epochs mixed with it."""
        self._history.pop(trial.trial_id, None)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._history.pop(trial.trial_id, None)  # no run for it; a retry round starts it afresh

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        history = self._history.pop(trial.trial_id, [])
        last = dict(trial.last_result or {})
        if GROUP not in trial.config:
            self._submit(trial.trial_id, dict(trial.config), history, last)
            return
        # several configurations in one trial (budget.configs_per_trial): one run each
        group = configurations(trial.config)
        steps = [per_configuration(rec, len(group)) for rec in history]
        for j, (params, final) in enumerate(zip(group, per_configuration(last, len(group)))):
            own = [_scalars(parts[j]) for parts in steps if j < len(parts)]
            self._submit(sub_id(trial.trial_id, j), dict(params), own, final)

    def _submit(
        self, trial_id: str, config: dict[str, Any], history: list[dict[str, Any]], final: dict[str, Any]
    ) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="wandb-trials", daemon=True)
            self._thread.start()
        self._queue.put((trial_id, config, history, final))

    def _work(self) -> None:
        import wandb

        while True:
            item = self._queue.get()
            if item is None:
                return
            t0 = time.perf_counter()
            trial_id, config, history, final = item
            try:
                extra = {"train_config": self._train_config(config)} if self.settings else {}
                run = wandb.init(
                    project=self.tracking.project,
                    entity=self.tracking.entity,
                    group=self.study,
                    job_type=self.job_type,
                    name=f"{self.study}-{self.job_type}-{trial_id}",
                    config={**config, "trial_id": trial_id, **extra},
                    dir=str(self.folder),
                    mode=self.mode,
                    reinit="create_new",
                    # The installed packages are the same for every trial: the first run of the
                    # stage records them (as does the summary run); listing them again costs each
                    # run ~70 ms of the CPU the trials train on.
                    settings=wandb.Settings(silent=True, console="off", x_save_requirements=not self.runs),
                )
                for rec in history:
                    run.log(rec, step=int(rec.get("epoch", 0)))
                run.summary.update({k: v for k, v in final.items() if k not in _SKIP and not k.endswith("_pred")})
                run.finish()
                self.runs.append(run.id)
            except Exception as e:  # tracking must never stop a study
                print(f"wandb: could not log trial {trial_id}: {e}")
            self.busy_s += time.perf_counter() - t0

    def _train_config(self, params: dict[str, Any]) -> dict[str, Any]:
        from abexrat.study.trial import trial_overrides

        assert self.settings is not None
        return self.settings.train_config(trial_overrides(params, self.arms)).model_dump(mode="json")

    def close(self) -> float:
        """Wait for the queue to drain; returns the seconds the driver waited."""
        t0 = time.perf_counter()
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        return time.perf_counter() - t0


def log_summary(
    study: str,
    tracking: Tracking,
    folder: Path,
    mode: str,
    summary: dict[str, Any],
    table: Any,
    files: list[Path] | None = None,
    model_dir: Path | None = None,
) -> str | None:
    """One ``summary`` run: the trial table, the headline numbers, any report files as an artifact,
    and the best model's run folder (``model_dir``) as a ``model`` artifact."""
    if mode == "disabled":
        return None
    import wandb

    # wandb stages logged tables and artifact files under its data folder (~/.local/share/wandb by
    # default): keep those copies inside the study folder unless the user chose a place ($WANDB_DATA_DIR).
    with _env("WANDB_DATA_DIR", os.environ.get("WANDB_DATA_DIR") or str(Path(folder) / "wandb" / "data")):
        run = wandb.init(
            project=tracking.project,
            entity=tracking.entity,
            group=study,
            job_type="summary",
            name=f"{study}-summary",
            dir=str(folder),
            mode=mode,
            reinit="create_new",
            settings=wandb.Settings(silent=True, console="off"),
            config={"study": study},
        )
        run.log({"trials": wandb.Table(dataframe=table)})
        run.summary.update({k: v for k, v in summary.items() if isinstance(v, int | float | str)})
        if files:
            art = wandb.Artifact(f"{study}-report", type="report")
            for f in files:
                art.add_file(str(f))
            run.log_artifact(art)
        if model_dir is not None:
            best = summary["best_config"]
            meta = {k: best[k] for k in ("method", "eps", "p", "aug_ratio")}
            meta |= {"val_macro_f1": summary["best_val_macro_f1"], "test_macro_f1": summary["test"]["macro_f1"]["mean"]}
            model = wandb.Artifact(f"{study}-best", type="model", metadata=meta)
            # immutable: W&B reads the files in place instead of staging a copy (the encoder is ~150 MB)
            model.add_dir(str(model_dir), policy="immutable")
            run.log_artifact(model, aliases=["best"])
        run.finish()
    return run.id


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old
