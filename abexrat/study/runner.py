"""``abexrat study run``: a search (Optuna TPE on Ray Tune) or an ablation grid, then a final round.

Stages, each a Ray Tune experiment under the study folder::

    DIR/search/   the search or the ablation grid (resumable)
    DIR/final/    the best configuration and the baselines, K seeds each, scored on val and test
    DIR/best/     the final round's best model, an ``abexrat train`` run folder (predict reads it)
    DIR/best.yaml its config, for ``abexrat train``
    DIR/trials.parquet, DIR/trials.csv, DIR/summary.json   written last, atomically

Selection uses validation only; the test split is scored once, in the final round.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from pathlib import Path
from typing import Any

from abexrat.card import study_provenance
from abexrat.core.errors import Interrupted, UserError
from abexrat.core.io import atomic_path, write_json, write_text
from abexrat.core.ray_session import cluster_resources, connect
from abexrat.study.config import Study
from abexrat.study.grouped import (
    GROUP,
    SHARED_KEYS,
    GroupedSearch,
    configuration_ids,
    configurations,
    per_configuration,
    sub_id,
)
from abexrat.study.restarts import failed_attempts, restarted_trials
from abexrat.study.storage import optuna_study_name, public_settings, public_url, search_storage, storage_url
from abexrat.study.tracking import WandbTrials, log_summary, wandb_mode
from abexrat.study.trial import LIMIT_STATUS

SEARCH, FINAL = "search", "final"
BUDGET_STATUS = "BUDGET"  # trials.parquet status of a trial the study's time_budget_s cut off


# ---------------------------------------------------------------- Ray


# What a trial's worker imports before it can train (~2 s of each slot on 2 cores). An embedded Ray
# imports them in the workers it prestarts at start-up, while the driver loads and encodes the data.
TRIAL_MODULES = ("torch", "ray.tune", "abexrat.study.trial")


# ---------------------------------------------------------------- progress


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


def _callbacks(
    total: int, label: str, study: Study, job: str, out: Path, mode: str, arms: dict[str, dict[str, Any]] | None = None
) -> list[Any]:
    from ray.tune import Callback

    class _Progress(ConsoleProgress, Callback):
        pass

    cbs: list[Any] = [_Progress(total, label, study.objective.metric, list(study.space))]
    if mode != "disabled":
        cbs.append(WandbTrials(study.name, study.tracking, job, out, mode, study, arms))
    return cbs


# ---------------------------------------------------------------- stages


def _trainable(
    study: Study,
    feats: Any,
    arms: dict[str, dict[str, Any]],
    seeds: list[int],
    with_test: bool,
    timed: bool,
    cv: Any = None,
    best_sink: Any = None,
) -> Any:
    """The trial function with its data; ``timed``: the time limit applies (the search stage only)."""
    from ray import tune

    from abexrat.study.trial import run_trial

    threads = max(1, int(study.resources.cpu))
    limits = {
        "trial_time_s": study.limits.trial_time_s if timed else None,
        "trial_memory_gb": study.limits.trial_memory_gb,
    }
    fn = tune.with_parameters(
        run_trial,
        feats=feats,
        study=study.model_dump(mode="json"),
        arms=arms,
        seeds=seeds,
        with_test=with_test,
        threads=threads,
        limits=limits,
        cv=cv,
        best_sink=best_sink,
    )
    res = {"cpu": study.resources.cpu, "gpu": study.resources.gpu}
    if study.limits.trial_memory_gb:  # Ray places a trial only where this much memory is free
        res["memory"] = int(study.limits.trial_memory_gb * 2**30)
    return tune.with_resources(fn, res)


def _check_resources_fit(study: Study) -> None:
    """On a fixed (local) cluster, a GPU or memory request no node can grant would leave trials
    pending forever."""
    import ray

    gpus = max((n["Resources"].get("GPU", 0.0) for n in ray.nodes() if n.get("Alive")), default=0.0)
    if study.resources.gpu > gpus:
        raise UserError(
            f"resources.gpu: {study.resources.gpu:g} GPU per trial, but this machine's Ray has {gpus:g}"
            " (set resources.gpu: 0 to train on CPUs, or join a cluster with GPUs: --address)"
        )
    want = study.limits.trial_memory_gb
    if not want:
        return
    most = max((n["Resources"].get("memory", 0.0) for n in ray.nodes() if n.get("Alive")), default=0.0)
    if want * 2**30 > most:
        raise UserError(
            f"limits.trial_memory_gb: {want:g} GB per trial, but no Ray node offers more than {most / 2**30:.1f} GB"
        )


def _max_concurrent(study: Study) -> int:
    cpus, gpus = cluster_resources()
    n = math.floor(cpus / study.resources.cpu)
    if study.resources.gpu:
        n = min(n, math.floor(gpus / study.resources.gpu))
    return max(1, min(n, study.budget.max_concurrent or n))


def _run_config(study: Study, stage: str, out: Path, callbacks: list[Any]) -> Any:
    from ray import tune

    return tune.RunConfig(
        name=stage,
        storage_path=str(out.resolve()),
        callbacks=callbacks,
        verbose=0,
        failure_config=tune.FailureConfig(max_failures=study.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
    )


def _quiet_configs(record: logging.LogRecord) -> bool:
    """A grouped trial's ``configs`` (one dict of scores per configuration) is not a TensorBoard
    value; its scores reach trials.parquet and W&B per configuration: no warning per epoch."""
    return "ray/tune/configs=" not in record.getMessage()


def _quiet_nan(record: logging.LogRecord) -> bool:
    """A trial stopped by a limit reports NaN on purpose (Optuna records it as failed): no warning."""
    return "nan is not acceptable" not in record.getMessage()


def run_search(
    study: Study, feats: Any, out: Path, resume: bool, mode: str, cv: Any = None, storage: Any = None
) -> tuple[Any, list[Any]]:
    """The search (TPE) or the ablation grid; resumable from ``out/search``. ``storage``: the
    search's Optuna storage (default: :func:`search_storage`'s)."""
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from abexrat.study.storage import TrackedOptunaSearch

    searcher_log = logging.getLogger("ray.tune.search.optuna.optuna_search")
    if _quiet_nan not in searcher_log.filters:
        searcher_log.addFilter(_quiet_nan)
    tbx_log = logging.getLogger("ray.tune.logger.tensorboardx")
    if _quiet_configs not in tbx_log.filters:
        tbx_log.addFilter(_quiet_configs)
    # A trial run again after its node died reports its epochs again under the same Optuna trial,
    # which keeps the first value of each step and warns once per epoch: expected, so not shown.
    warnings.filterwarnings("ignore", message="The reported value is ignored because this `step=", category=UserWarning)

    from abexrat.study.space import SearchSpace

    seeds = list(range(study.seed, study.seed + study.seeds_per_trial))
    metric, mode_ = study.objective.metric, study.objective.mode
    if study.kind == "ablation":
        arms = study.arms()
        param_space: dict[str, Any] = {"arm": tune.grid_search(list(arms))}
        search_alg, num_samples, job = None, 1, "ablation"
        total = len(arms)
        seeds = list(range(study.seed, study.seed + study.final.seeds))
    else:
        arms, param_space, job = {}, {}, "search"
        sampler = optuna.samplers.TPESampler(
            seed=study.seed, multivariate=True, n_startup_trials=max(3, min(10, study.budget.num_samples // 3))
        )
        obj = study.objective
        search_alg = TrackedOptunaSearch(  # several objectives: multi-objective TPE over all of them
            space=SearchSpace({k: p.model_dump() for k, p in study.space.items()}),
            metric=obj.metrics if obj.multi else metric,
            mode=obj.modes if obj.multi else mode_,
            sampler=sampler,
            study_name=optuna_study_name(study),
            storage=storage or search_storage(study, out, out / SEARCH, resume),
            seeds=seeds,
            wandb_run=None if mode == "disabled" else f"{study.name}-search-{{trial_id}}",
        )
        num_samples = total = study.budget.num_samples
        per_trial = study.budget.configs_per_trial
        if per_trial > 1:  # Tune trials of several configurations each (the last one may hold fewer)
            search_alg = GroupedSearch(search_alg, per_trial, total)
            num_samples = -(-total // per_trial)
    scheduler = None
    if study.early_stopping.enabled and study.kind == "search":
        epochs = study.train_config().train.epochs
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            max_t=epochs,
            grace_period=min(study.early_stopping.grace_period, epochs),
            reduction_factor=study.early_stopping.reduction_factor,
        )
    callbacks = _callbacks(total, job, study, job, out, mode, arms)
    trainable = _trainable(study, feats, arms, seeds, with_test=study.kind == "ablation", timed=True, cv=cv)
    path = out / SEARCH
    if resume and tune.Tuner.can_restore(str(path.resolve())):
        tuner = tune.Tuner.restore(
            str(path.resolve()),
            trainable=trainable,
            resume_unfinished=True,
            resume_errored=True,
            param_space=param_space or None,
        )
        # Restored callbacks are the pickled ones: give them back their live parts.
        callbacks = list(tuner._local_tuner._run_config.callbacks or [])  # noqa: SLF001
    else:
        if path.exists() and not resume and any(path.iterdir()):
            raise UserError(f"{path}: a study already ran here; pass --resume to continue it or choose another --out")
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                metric=metric,
                mode=mode_,
                search_alg=search_alg,
                scheduler=scheduler,
                num_samples=num_samples,
                time_budget_s=study.budget.time_budget_s,
                max_concurrent_trials=_max_concurrent(study),
                reuse_actors=True,
            ),
            run_config=_run_config(study, SEARCH, out, callbacks),
        )
    return _fit(tuner, path, trainable, callbacks, param_space=param_space or None)


def run_final(
    study: Study,
    feats: Any,
    out: Path,
    best: dict[str, Any],
    mode: str,
    resume: bool,
    cv: Any = None,
    best_sink: Any = None,
    front: dict[str, dict[str, Any]] | None = None,
) -> tuple[Any, list[Any]]:
    """The best configuration, the Pareto ``front``'s other members (several objectives) and each
    baseline, ``final.seeds`` seeds, scored on val and test (and with ``cv``, cross-validated too);
    the best arm's models go to ``best_sink``."""
    from ray import tune

    named = {"best": best, **(front or {}), **study.baselines}
    arms = {name: study.final.arm(over) for name, over in named.items()}
    seeds = list(range(study.seed, study.seed + study.final.seeds))
    callbacks = _callbacks(len(arms), "final", study, FINAL, out, mode, arms)
    trainable = _trainable(study, feats, arms, seeds, with_test=True, timed=False, cv=cv, best_sink=best_sink)
    path = out / FINAL
    if resume and tune.Tuner.can_restore(str(path.resolve())):
        tuner = tune.Tuner.restore(
            str(path.resolve()), trainable=trainable, resume_unfinished=True, resume_errored=True
        )
        callbacks = list(tuner._local_tuner._run_config.callbacks or [])  # noqa: SLF001
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={"arm": tune.grid_search(list(arms))},
            tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=_max_concurrent(study), reuse_actors=True),
            run_config=_run_config(study, FINAL, out, callbacks),
        )
    return _fit(tuner, path, trainable, callbacks)


RETRY_ROUNDS = 3


def _lost_with_their_node(results: Any) -> int:
    """Trials Tune ended in ERROR because their actor or node died, not because the trial raised.

    Tune retries such a trial ``max_failures`` times only while it is RUNNING: one whose reused actor
    dies while it is still PENDING (being reset for it) is marked ERROR at once. None count after an
    interrupt (trials left unfinished): continuing those is ``--resume``'s business.
    """
    from ray.exceptions import NodeDiedError, ObjectLostError, RayActorError, WorkerCrashedError

    trials = results._experiment_analysis.trials  # noqa: SLF001
    if any(t.status not in ("TERMINATED", "ERROR") for t in trials):
        return 0
    system = (RayActorError, WorkerCrashedError, NodeDiedError, ObjectLostError)
    return sum(1 for r in results if r.error is not None and isinstance(r.error, system))


def _fit(tuner: Any, path: Path, trainable: Any, callbacks: list[Any], **restore: Any) -> tuple[Any, list[Any]]:
    """``tuner.fit()``; trials lost with a dead node are run again (same trial ids) by restoring the
    experiment with ``resume_errored``, at most ``RETRY_ROUNDS`` times."""
    from ray import tune

    results = tuner.fit()
    for round_ in range(1, RETRY_ROUNDS + 1):
        lost = _lost_with_their_node(results)
        if not lost:
            break
        print(f"{path.name}: {lost} trial(s) lost with their node; running them again ({round_}/{RETRY_ROUNDS})")
        _close(callbacks)
        tuner = tune.Tuner.restore(
            str(path.resolve()), trainable=trainable, resume_unfinished=True, resume_errored=True, **restore
        )
        restored = list(tuner._local_tuner._run_config.callbacks or [])  # noqa: SLF001
        for old, new in zip(callbacks, restored):
            if isinstance(old, WandbTrials) and isinstance(new, WandbTrials):
                new.runs, new.busy_s = list(old.runs), old.busy_s  # the live counts, not the pickled ones
        callbacks = restored
        results = tuner.fit()
    return results, callbacks


# ---------------------------------------------------------------- results


def _scores(r: dict[str, Any], split: str) -> dict[str, Any]:
    out = {}
    for k in ("macro_f1", "weighted_f1", "accuracy"):
        if f"{split}_{k}" in r:
            out[k] = {"mean": r[f"{split}_{k}"], "std": r[f"{split}_{k}_std"], "per_seed": r[f"{split}_{k}_per_seed"]}
    if f"{split}_per_class_f1" in r:
        out["per_class_f1"] = r[f"{split}_per_class_f1"]
        out["confusion"] = r[f"{split}_confusion"]
    return out


def _ended(last: dict[str, Any] | None, early_stopping: bool) -> bool:
    """Whether a trial whose last report is ``last`` reached its final report (``val_accuracy``) or was
    stopped by a limit (the report names the ``limit``); with ASHA on, a trial may also have been
    stopped early on purpose."""
    last = last or {}
    return early_stopping or "val_accuracy" in last or bool(last.get("limit"))


def _trial_table(results: Any, stage: str, budget_spent: bool = False, early_stopping: bool = False) -> Any:
    import pandas as pd

    trials = results._experiment_analysis.trials  # noqa: SLF001
    df = _one_row_per_configuration(results.get_dataframe())
    if df.empty and not trials:
        return df
    keep = [
        c
        for c in df.columns
        if c.startswith("config/")
        or c
        in (
            "trial_id",
            "val_macro_f1",
            "val_weighted_f1",
            "val_accuracy",
            "val_macro_f1_std",
            "test_macro_f1",
            "test_weighted_f1",
            "test_accuracy",
            "cv_macro_f1",
            "cv_weighted_f1",
            "val_robust_macro_f1",
            "val_fgm_auc",
            "val_natural_macro_f1",
            "test_robust_macro_f1",
            "test_fgm_auc",
            "test_natural_macro_f1",
            "robust_s",
            "selection",
            "train_s",
            "trial_s",
            "train_size",
            "epoch",
            "training_iteration",
            "time_total_s",
        )
    ]
    df = df[keep].rename(columns=lambda c: c.replace("config/", "param:"))
    # A trial that never reported (it failed before its first epoch) has no row yet: every trial gets one.
    reported = set(df["trial_id"]) if "trial_id" in df else set()
    missing = [
        {"trial_id": row_id, **{f"param:{k}": v for k, v in c.items()}}
        for t in trials
        for row_id, c in zip(configuration_ids(t.trial_id, t.config), configurations(t.config))
        if row_id not in reported
    ]
    if missing:
        df = pd.concat([df, pd.DataFrame(missing)], ignore_index=True)
    df.insert(0, "stage", stage)
    # Status from Tune's own trial records (a result's metrics can belong to a reused actor's last trial).
    status = {t.trial_id: t.status for t in trials}
    limit = {t.trial_id: (t.last_result or {}).get("limit") for t in trials}
    unended = {t.trial_id for t in trials if not _ended(t.last_result, early_stopping)}

    def row_status(trial_id: str) -> str:
        if status.get(trial_id) == "ERROR":
            return "ERROR"
        if limit.get(trial_id):
            return LIMIT_STATUS.get(limit[trial_id], "STOPPED")
        # Stopped by the study's time budget mid-training, or before it started.
        return BUDGET_STATUS if budget_spent and trial_id in unended else "TERMINATED"

    df["status"] = [row_status(str(t).split("-c")[0]) for t in df["trial_id"]]
    failures = {t.trial_id: failed_attempts(t) for t in trials}
    df["failed_attempts"] = [failures.get(str(t).split("-c")[0], 0) for t in df["trial_id"]]
    return pd.DataFrame(df)


def _one_row_per_configuration(df: Any) -> Any:
    """Tune's results table with each grouped trial (``budget.configs_per_trial``) split into one
    row per configuration: trial id ``<tune id>-c<j>``, its own ``config/<key>`` and scores."""
    import pandas as pd

    if df.empty or f"config/{GROUP}" not in df:
        return df
    rows = []
    for rec in df.to_dict("records"):
        group = rec.pop(f"config/{GROUP}")
        if not isinstance(group, list):
            rows.append(rec)
            continue
        parts = per_configuration({"configs": rec.pop("configs", None), **rec}, len(group))
        for j, (params, part) in enumerate(zip(group, parts)):
            row = {k: v for k, v in rec.items() if k in SHARED_KEYS or k in ("trial_id", "date", "timestamp")}
            row.update(part, trial_id=sub_id(rec["trial_id"], j), **{f"config/{k}": v for k, v in params.items()})
            for key in ("train_s", "trial_s", "time_total_s"):  # each configuration's share of the trial
                if isinstance(row.get(key), int | float):
                    row[key] = row[key] / len(group)
            rows.append(row)
    return pd.DataFrame(rows)


def _best(results: Any, metric: str, mode: str, early_stopping: bool = False) -> Any:
    """The best trial by its last reported ``metric``, among trials that ran to their end or were stopped by
    ASHA; errored trials, trials stopped by a limit and trials cut by the time budget (their partial
    scores) are never chosen."""
    ok = [
        r
        for r in results
        if not r.error
        and r.metrics
        and not r.metrics.get("limit")
        and _ended(r.metrics, early_stopping)
        and isinstance(r.metrics.get(metric), int | float)
        and math.isfinite(r.metrics[metric])
    ]
    if not ok:
        return None
    pick = max if mode == "max" else min
    return pick(ok, key=lambda r: r.metrics[metric])


def _write_table(df: Any, out: Path) -> None:
    for suffix in ("parquet", "csv"):
        with atomic_path(out / f"trials.{suffix}") as tmp:
            if suffix == "parquet":
                df.astype({c: str for c in df.columns if df[c].dtype == object}).to_parquet(tmp, index=False)
            else:
                df.to_csv(tmp, index=False)


def _check_streamed_study(study: Study) -> None:
    """What a study over a streamed dataset cannot do: its vectors are encoded once, for the base."""
    if study.cv is not None:
        raise UserError(
            "cv: a dataset too large for memory is split by its rows' hashes; cross-validation needs it in memory"
        )
    fixed = [k for k in study.space if k.startswith(("data.", "encoder."))]
    if fixed:
        raise UserError(
            f"space: {fixed[0]}: a dataset too large for memory is read and encoded once, with the base "
            "config's data and encoder settings; take this key out of the space"
        )


def _trains_short_copies(study: Study) -> bool:
    """Whether any trial may train on short copies (``data.short_copies``): only then are they embedded."""
    if "data.short_copies" in study.space:
        return True
    overrides = [{}, *(study.final.arm(o) for o in study.baselines.values()), study.final.overrides]
    if study.kind == "ablation":
        overrides += list(study.arms().values())
    return any(study.train_config(o).data.short_copies for o in overrides)


def run_study(
    study: Study,
    out: Path,
    address: str | None = None,
    resume: bool = False,
    data_dir: str | None = None,
    report: bool = True,
) -> dict[str, Any]:
    """Run a study end to end; returns what ``summary.json`` holds."""
    import pandas as pd
    import ray

    from abexrat.datasets import load_dataset
    from abexrat.embed import EmbeddingCache
    from abexrat.features import build_encoder, featurize

    t0 = time.perf_counter()
    out = Path(out)
    if data_dir:
        study = study.model_copy(
            update={"trainer": {**study.trainer, "data": {**study.trainer.get("data", {}), "data_dir": str(data_dir)}}}
        )
    base = study.train_config()
    # Whatever bad input can fail on comes before the first write, so a failed start leaves nothing behind.
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder; choose another --out")
    if not resume and (out / SEARCH).is_dir() and any((out / SEARCH).iterdir()):
        raise UserError(
            f"{out / SEARCH}: a study already ran here; pass --resume to continue it or choose another --out"
        )
    from abexrat.stream_train import check_streamable, stream_features, wants_stream

    streamed = wants_stream(base, False)  # a data file too large for memory: trials memory-map its vectors
    if streamed:
        _check_streamed_study(study)
        check_streamable(Path(base.data.dataset))
    else:
        ds = load_dataset(base)
        encoder = build_encoder(base)
    mode = wandb_mode(study.tracking)
    started = connect(address, preload=TRIAL_MODULES)
    try:
        if started:
            _check_resources_fit(study)
        storage = search_storage(study, out, out / SEARCH, resume) if study.kind == "search" else None
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "study.json", public_settings(study.model_dump(mode="json")))
        t_enc = time.perf_counter()
        short = _trains_short_copies(study)
        feats = stream_features(base)[0] if streamed else featurize(ds, encoder, EmbeddingCache(), short=short)
        if not streamed and base.robustness.enabled:  # natural perturbations: encoded once, for every trial
            from abexrat.perturb import dataset_vectors

            feats.perturbed = dataset_vectors(ds, encoder, base.robustness, EmbeddingCache())
        cv_ref = None
        if study.cv is not None:  # every fold's features, each with its own fitted encoder
            from abexrat.cv import cv_featurize

            c = study.cv
            cv_ref = ray.put(cv_featurize(ds, base, c.folds, c.seed, c.splits, EmbeddingCache(), short=short))
        encode_s = time.perf_counter() - t_enc
        feats_ref = ray.put(feats)  # one copy in the object store, shared by every trial
        t_search = time.perf_counter()
        results, cbs = run_search(study, feats_ref, out, resume, mode, cv_ref, storage)
        budget = study.budget.time_budget_s
        # Tune stops every trial once the budget is spent: the ones it cut are not an interruption.
        budget_spent = budget is not None and time.perf_counter() - t_search >= budget
        _close(cbs)
        early = study.early_stopping.enabled
        search_stage = "ablation" if study.kind == "ablation" else "search"  # the stage column of trials.parquet
        search_df = _trial_table(results, search_stage, budget_spent, early)
        per_trial = study.budget.configs_per_trial
        wanted = -(-study.budget.num_samples // per_trial) if study.kind == "search" else len(study.arms())
        if not budget_spent:
            _check_interrupted(results, wanted if budget is None else 0, out, early)
        best_r = _best(results, study.objective.metric, study.objective.mode, early)
        if best_r is None:
            stopped = int(search_df["status"].isin(list(LIMIT_STATUS.values())).sum()) if len(search_df) else 0
            why = f" ({stopped} stopped by limits)" if stopped else ""
            raise UserError(f"{out / SEARCH}: no trial finished{why}; see the trial errors there")
        best_over = dict(configurations(best_r.config)[best_r.metrics.get("config_best", 0)])
        from abexrat.choices import decode_params
        from abexrat.study.trial import trial_overrides

        arms = study.arms() if study.kind == "ablation" else {}
        best_overrides = trial_overrides(decode_params(best_over), arms)
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from abexrat.study.trial import BestModelSink

        # On the driver's node: a worker node that dies must not take the best model with it. Not
        # soft: Ray would spill it to any node, even one killed moments ago that the GCS still
        # counts alive (seen when a worker node is SIGKILLed during the search).
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        best_sink = ray.remote(num_cpus=0, scheduling_strategy=here)(BestModelSink).remote()
        from abexrat.study import pareto

        front_ids, front, front_trials = pareto.front_arms(study.objective, search_df, results, best_r, arms)
        final_results, fcbs = run_final(study, feats_ref, out, best_overrides, mode, resume, cv_ref, best_sink, front)
        _check_interrupted(final_results, 1 + len(front) + len(study.baselines), out)
        tracking_wait = _close(cbs + fcbs)
        final_df = _trial_table(final_results, "final")
        by_arm = {r.config["arm"]: r.metrics for r in final_results if r.metrics and "test_macro_f1" in r.metrics}
        if "best" not in by_arm:
            raise UserError(f"{out / FINAL}: the final retraining of the best configuration failed")
        table = pd.concat([search_df, final_df], ignore_index=True)
        if "pareto" in table:  # final rows are not search trials: never on the front
            table["pareto"] = table["pareto"].astype("boolean").fillna(False).astype(bool)
        _write_table(table, out)
        best_cfg = study.train_config(study.final.arm(best_overrides))  # as the final round trained it
        import yaml

        write_text(out / "best.yaml", yaml.safe_dump(best_cfg.model_dump(mode="json"), sort_keys=False))
        best_run = None
        if not streamed:
            chosen = study_provenance(study, float(best_r.metrics[study.objective.metric]), len(search_df))
            best_run = _write_best_run(out, best_cfg, ds, encoder, _take(best_sink), chosen)
        wall = time.perf_counter() - t0
        summary = {
            "study": study.name,
            "kind": study.kind,
            "best_config": {
                "eps": best_cfg.adversarial.eps,
                "p": best_cfg.adversarial.p,
                "aug_ratio": best_cfg.data.aug_ratio,
                "method": best_cfg.adversarial.method,
                "overrides": best_overrides,
                "train_config": best_cfg.model_dump(mode="json"),
            },
            "best_val_macro_f1": float(best_r.metrics[study.objective.metric]),
            "best_run": best_run,
            "optuna": None
            if study.kind != "search"
            else {"storage": public_url(storage_url(study.optuna, out)), "study_name": optuna_study_name(study)},
            "seeds": list(range(study.seed, study.seed + study.final.seeds)),
            "val": _scores(by_arm["best"], "val"),
            "test": _scores(by_arm["best"], "test"),
            "test_pred": by_arm["best"].get("test_pred"),
            "val_pred": by_arm["best"].get("val_pred"),
            "val_labels": None if feats.is_memmapped else feats.y_val.tolist(),
            "cv": None
            if study.cv is None
            else {
                **study.cv.model_dump(),
                "best": _scores(by_arm["best"], "cv"),
                "baselines": {name: _scores(m, "cv") for name, m in by_arm.items() if name in study.baselines},
                "note": "search trials' val_* scores are these folds' out-of-fold scores",
            },
            "baselines": {
                name: {
                    "overrides": study.baselines[name],
                    "val": _scores(m, "val"),
                    "test": _scores(m, "test"),
                    "test_pred": m.get("test_pred"),
                    "val_pred": m.get("val_pred"),
                }
                for name, m in by_arm.items()
                if name in study.baselines
            },
            "trials": int((table["stage"] != "final").sum()),
            "trials_failed": int(((table["stage"] != "final") & (table["status"] == "ERROR")).sum()),
            "trials_stopped": {
                status: int(((table["stage"] != "final") & (table["status"] == status)).sum())
                for status in [*LIMIT_STATUS.values(), BUDGET_STATUS]
            },
            "limits": study.limits.model_dump(),
            # trials run again under their own ids after a worker or node died (or a retried error)
            "trial_restarts": restarted_trials(results, search_stage) + restarted_trials(final_results, FINAL),
            "wall_s": wall,
            "encode_s": encode_s,
            "classes": feats.classes,
            "test_labels": None if feats.is_memmapped else feats.y_test.tolist(),
            "streamed": feats.memmap_dir,  # the feature files' folder, or None
            "tracking": {
                "mode": mode,
                "runs": sum(len(c.runs) for c in cbs + fcbs if isinstance(c, WandbTrials)),
                "busy_s": sum(c.busy_s for c in cbs + fcbs if isinstance(c, WandbTrials)),
                "driver_wait_s": tracking_wait,
                "dir": str((out / "wandb").resolve()),
            },
            "resources": {
                "cpu_per_trial": study.resources.cpu,
                "gpu_per_trial": study.resources.gpu,
                "cluster_cpus": cluster_resources()[0],
                "cluster_gpus": cluster_resources()[1],
            },
        }
        pareto.attach_robustness(summary, by_arm)
        if study.objective.multi:
            o, best_id = study.objective, str(best_r.metrics.get("trial_id"))
            summary["pareto"] = pareto.summary_front(
                search_df, o.metrics, o.modes, front_ids, best_id, front, front_trials, by_arm, _scores
            )
        if study.kind == "ablation":
            summary["arms"] = {
                r.config["arm"]: {
                    "overrides": arms[r.config["arm"]],
                    "val": _scores(r.metrics, "val"),
                    "test": _scores(r.metrics, "test"),
                    "test_pred": r.metrics.get("test_pred"),
                    "val_pred": r.metrics.get("val_pred"),
                }
                for r in results
                if r.metrics and "test_macro_f1" in r.metrics
            }
        from abexrat.report import study_report

        files = study_report(out, summary) if report else []  # out/report/, from the in-memory summary
        summary["tracking"]["summary_run"] = log_summary(
            study.name,
            study.tracking,
            out,
            mode,
            summary,
            table.astype(str),
            files=files,
            model_dir=out / best_run if best_run else None,
        )
        write_json(out / "summary.json", summary)  # last: its presence marks a finished study
        return summary
    finally:
        if started:
            ray.shutdown()


def _take(best_sink: Any) -> tuple[dict[str, bytes], dict[str, Any]] | None:
    import ray

    try:
        return ray.get(best_sink.take.remote())
    except ray.exceptions.RayError:  # its node died: the study's results stand without the model
        return None


def _write_best_run(
    out: Path,
    best_cfg: Any,
    ds: Any,
    encoder: Any,
    model: tuple[dict[str, bytes], dict[str, Any]] | None,
    chosen: str | None = None,
) -> str | None:
    """``out/best``: the final round's best model as an ``abexrat train`` run folder (predict and
    evaluate read it), written whole or not at all. The study's own encoder is the model's: no
    trial may change an encoder key (``load_study``). None when the model did not come back (the
    final round was resumed after the best arm had finished, or the sink's node died): then
    ``abexrat train out/best.yaml`` trains it."""
    import shutil

    from abexrat.embed import EmbeddingCache, fitted_encoder
    from abexrat.features import fit_texts
    from abexrat.run_folder import write_run

    if model is None:
        return None
    fitted_encoder(encoder, fit_texts(ds, encoder), EmbeddingCache())  # its fitted state, from the cache
    partial = out / ".best.partial"
    shutil.rmtree(partial, ignore_errors=True)
    write_run(partial, best_cfg, encoder, *model, chosen=chosen)
    shutil.rmtree(out / "best", ignore_errors=True)
    partial.rename(out / "best")
    return "best"


def _check_interrupted(results: Any, wanted: int, out: Path, early_stopping: bool = False) -> None:
    """Tune returns normally on SIGINT, leaving unfinished trials PENDING/RUNNING in its saved state.

    A trial counts as finished when it reached its final report (``val_accuracy``), or was stopped by
    a limit (its last report names the ``limit``), unless ASHA may have stopped it early on purpose.
    """
    trials = results._experiment_analysis.trials  # noqa: SLF001
    unfinished = [
        t
        for t in trials
        if t.status not in ("TERMINATED", "ERROR")
        or (t.status == "TERMINATED" and not _ended(t.last_result, early_stopping))
    ]
    if len(trials) < wanted or unfinished:
        done = sum(len(configurations(t.config)) for t in trials if t.status == "TERMINATED" and t not in unfinished)
        raise Interrupted(
            f"interrupted after {done} finished trial(s); the state is saved in {out}. "
            f"Continue with: abexrat study run STUDY.yaml --out {out} --resume"
        )


def _close(callbacks: list[Any]) -> float:
    wait = 0.0
    for c in callbacks:
        if isinstance(c, WandbTrials):
            wait += c.close()
        elif isinstance(c, ConsoleProgress):
            c.close()
    return wait


def load_summary(out: Path) -> dict[str, Any]:
    path = out / "summary.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: not found; run the study first") from None
    except json.JSONDecodeError:
        raise UserError(f"{path}: not valid JSON") from None
