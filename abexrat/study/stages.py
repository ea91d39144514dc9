"""The two Tune experiments of a study: the search (Optuna TPE, or an ablation grid) and the
final round, each with its trainable, scheduler, searcher and run config.

Each stage lives in its own folder under the study's (``DIR/search``, ``DIR/final``), so either
can be restored with ``--resume``.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from abexrat.core.errors import UserError
from abexrat.core.ray_session import cluster_resources
from abexrat.study.config import Study
from abexrat.study.grouped import GroupedSearch
from abexrat.study.progress import stage_callbacks
from abexrat.study.reruns import fit_with_reruns
from abexrat.study.storage import optuna_study_name, search_storage

SEARCH, FINAL = "search", "final"


def _trainable(
    study: Study,
    feats: Any,
    arms: dict[str, dict[str, Any]],
    seeds: list[int],
    with_test: bool,
    timed: bool,
    cv: Any = None,
    best_sink: Any = None,
    cpu: float | None = None,
) -> Any:
    """The trial function with its data; ``timed``: the time limit applies (the search stage only);
    ``cpu``: CPUs per trial, if not ``resources.cpu``."""
    from ray import tune

    from abexrat.study.trial import run_trial

    cpu = cpu or study.resources.cpu
    threads = max(1, int(cpu))
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
    res = {"cpu": cpu, "gpu": study.resources.gpu}
    if study.limits.trial_memory_gb:  # Ray places a trial only where this much memory is free
        res["memory"] = int(study.limits.trial_memory_gb * 2**30)
    return tune.with_resources(fn, res)


def check_resources_fit(study: Study) -> None:
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


def max_concurrent(study: Study, cpu: float | None = None) -> int:
    """Trials at once: as many as the cluster's CPUs (and GPUs) hold, at ``cpu`` (default
    ``resources.cpu``) each, at most ``budget.max_concurrent``."""
    cpus, gpus = cluster_resources()
    n = math.floor(cpus / (cpu or study.resources.cpu) + 1e-9)
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


def _quiet_tune_logs() -> None:
    """Silence what a study produces on purpose (see the filters above), once per process."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    searcher_log = logging.getLogger("ray.tune.search.optuna.optuna_search")
    if _quiet_nan not in searcher_log.filters:
        searcher_log.addFilter(_quiet_nan)
    tbx_log = logging.getLogger("ray.tune.logger.tensorboardx")
    if _quiet_configs not in tbx_log.filters:
        tbx_log.addFilter(_quiet_configs)
    # A trial run again after its node died reports its epochs again under the same Optuna trial,
    # which keeps the first value of each step and warns once per epoch: expected, so not shown.
    warnings.filterwarnings("ignore", message="The reported value is ignored because this `step=", category=UserWarning)


@dataclass
class SearchPlan:
    """What the search stage samples: the ablation's arms or the searcher's space, and how many."""

    arms: dict[str, dict[str, Any]]
    param_space: dict[str, Any]
    search_alg: Any
    num_samples: int
    total: int  # configurations, for the progress line
    job: str
    seeds: list[int]


def _search_plan(study: Study, out: Path, resume: bool, tracking_mode: str, storage: Any) -> SearchPlan:
    """An ablation: one Tune trial per arm, with the final round's seeds. A search: the study's
    Optuna sampler (TPE by default, multi-objective over several objectives), in groups of
    ``budget.configs_per_trial``."""
    from ray import tune

    from abexrat.study.samplers import make_sampler
    from abexrat.study.space import SearchSpace
    from abexrat.study.storage import TrackedOptunaSearch

    if study.kind == "ablation":
        arms = study.arms()
        seeds = list(range(study.seed, study.seed + study.final.seeds))
        return SearchPlan(arms, {"arm": tune.grid_search(list(arms))}, None, 1, len(arms), "ablation", seeds)
    seeds = list(range(study.seed, study.seed + study.seeds_per_trial))
    sampler = make_sampler(study.optuna.sampler, study.seed, study.budget.num_samples)
    obj = study.objective
    search_alg: Any = TrackedOptunaSearch(  # several objectives: multi-objective TPE over all of them
        space=SearchSpace({k: p.model_dump() for k, p in study.space.items()}),
        metric=obj.metrics if obj.multi else obj.metric,
        mode=obj.modes if obj.multi else obj.mode,
        sampler=sampler,
        study_name=optuna_study_name(study),
        storage=storage or search_storage(study, out, out / SEARCH, resume),
        seeds=seeds,
        wandb_run=None if tracking_mode == "disabled" else f"{study.name}-search-{{trial_id}}",
    )
    num_samples = total = study.budget.num_samples
    per_trial = study.budget.configs_per_trial
    if per_trial > 1:  # Tune trials of several configurations each (the last one may hold fewer)
        search_alg = GroupedSearch(search_alg, per_trial, total)
        num_samples = -(-total // per_trial)
    return SearchPlan({}, {}, search_alg, num_samples, total, "search", seeds)


def _scheduler(study: Study) -> Any:
    """ASHA over epochs when the study stops early (searches only), else none."""
    if not (study.early_stopping.enabled and study.kind == "search"):
        return None
    from ray.tune.schedulers import ASHAScheduler

    epochs = study.train_config().train.epochs
    return ASHAScheduler(
        time_attr="training_iteration",
        max_t=epochs,
        grace_period=min(study.early_stopping.grace_period, epochs),
        reduction_factor=study.early_stopping.reduction_factor,
    )


def run_search(
    study: Study, feats: Any, out: Path, resume: bool, tracking_mode: str, cv: Any = None, storage: Any = None
) -> tuple[Any, list[Any]]:
    """The search (TPE) or the ablation grid; resumable from ``out/search``. ``tracking_mode``: W&B's
    mode (``disabled``: no W&B); ``storage``: the search's Optuna storage (default: :func:`search_storage`'s)."""
    from ray import tune

    _quiet_tune_logs()
    plan = _search_plan(study, out, resume, tracking_mode, storage)
    callbacks = stage_callbacks(plan.total, plan.job, study, plan.job, out, tracking_mode, plan.arms)
    with_test = study.kind == "ablation"
    trainable = _trainable(study, feats, plan.arms, plan.seeds, with_test=with_test, timed=True, cv=cv)
    path = out / SEARCH
    if resume and tune.Tuner.can_restore(str(path.resolve())):
        tuner = tune.Tuner.restore(
            str(path.resolve()),
            trainable=trainable,
            resume_unfinished=True,
            resume_errored=True,
            param_space=plan.param_space or None,
        )
        # Restored callbacks are the pickled ones: give them back their live parts.
        callbacks = list(tuner._local_tuner._run_config.callbacks or [])  # noqa: SLF001
    else:
        if path.exists() and not resume and any(path.iterdir()):
            raise UserError(f"{path}: a study already ran here; pass --resume to continue it or choose another --out")
        tuner = tune.Tuner(
            trainable,
            param_space=plan.param_space,
            tune_config=tune.TuneConfig(
                metric=study.objective.metric,
                mode=study.objective.mode,  # the objective's direction: max or min
                search_alg=plan.search_alg,
                scheduler=_scheduler(study),
                num_samples=plan.num_samples,
                time_budget_s=study.budget.time_budget_s,
                max_concurrent_trials=max_concurrent(study),
                reuse_actors=True,
            ),
            run_config=_run_config(study, SEARCH, out, callbacks),
        )
    return fit_with_reruns(tuner, path, trainable, callbacks, param_space=plan.param_space or None)


def run_final(
    study: Study,
    feats: Any,
    out: Path,
    best: dict[str, Any],
    tracking_mode: str,
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
    callbacks = stage_callbacks(len(arms), "final", study, FINAL, out, tracking_mode, arms)
    cpu = study.final.cpu
    trainable = _trainable(study, feats, arms, seeds, with_test=True, timed=False, cv=cv, best_sink=best_sink, cpu=cpu)
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
            tune_config=tune.TuneConfig(
                num_samples=1, max_concurrent_trials=max_concurrent(study, cpu), reuse_actors=True
            ),
            run_config=_run_config(study, FINAL, out, callbacks),
        )
    return fit_with_reruns(tuner, path, trainable, callbacks)
