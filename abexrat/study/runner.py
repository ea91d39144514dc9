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

import contextlib
import importlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from abexrat.card import study_provenance
from abexrat.config import TrainConfig
from abexrat.core.errors import UserError
from abexrat.core.io import write_json, write_text
from abexrat.core.ray_session import connect
from abexrat.study.best import best_result, check_interrupted
from abexrat.study.best_run import take_model, write_best_run
from abexrat.study.config import Study
from abexrat.study.grouped import configurations
from abexrat.study.progress import close_callbacks
from abexrat.study.stages import FINAL, SEARCH, check_resources_fit, run_final, run_search
from abexrat.study.storage import public_settings, search_storage
from abexrat.study.summary import Outcome, build_summary
from abexrat.study.table import trial_table, write_table
from abexrat.study.tracking import log_summary, wandb_mode
from abexrat.study.trial import LIMIT_STATUS

# What a trial's worker imports before it can train (~2 s of each slot on 2 cores). An embedded Ray
# imports them in the workers it prestarts at start-up, while the driver loads and encodes the data.
TRIAL_MODULES = ("torch", "ray.tune", "abexrat.study.trial")
# What Tune imports in the driver as a search starts, before its first trial: its usage tags import
# every logger integration (wandb's: ~0.7 s), its default loggers tensorboardX (~0.2-2 s). Imported
# in a thread while the data is encoded, they no longer hold up the first trials.
TUNE_LAZY_MODULES = ("ray.air.integrations.wandb", "tensorboardX")
# What the first W&B run of a process imports in ``wandb.init`` (its launch-inputs check, ~0.5 s):
# otherwise the thread that logs the trials spends that CPU while the first trials train.
WANDB_RUN_MODULES = ("wandb.sdk.launch.inputs.internal",)
# Modules that code in the main thread reads from ``sys.modules`` without the import lock (scipy's
# and scikit-learn's array checks read ``sys.modules["torch"].Tensor`` while the data is encoded): one
# that the thread is still importing would be seen there half-initialized, so these (tensorboardX
# imports torch) are imported before the thread starts.
UNLOCKED_PROBED_MODULES = ("torch",)


def _import_in_background(modules: tuple[str, ...]) -> threading.Thread:
    """Import ``modules`` in a daemon thread (join it before the code that needs them); one that
    fails to import is left to fail where it is used. ``UNLOCKED_PROBED_MODULES`` are imported first,
    in the calling thread."""
    for name in UNLOCKED_PROBED_MODULES:
        importlib.import_module(name)

    def work() -> None:
        for name in modules:
            with contextlib.suppress(Exception):
                importlib.import_module(name)

    thread = threading.Thread(target=work, name="ahead-imports", daemon=True)
    thread.start()
    return thread


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


@dataclass
class Inputs:
    """What the trials train on: the base config and, held in memory, its dataset and encoder
    (a streamed dataset is read and encoded once Ray is up)."""

    base: TrainConfig
    streamed: bool
    ds: Any = None
    encoder: Any = None


def _check_inputs(study: Study, out: Path, resume: bool) -> Inputs:
    """Whatever bad input can fail on comes before the first write, so a failed start leaves nothing behind."""
    from abexrat.datasets import load_dataset
    from abexrat.features import build_encoder
    from abexrat.stream_train import check_streamable, wants_stream

    base = study.train_config()
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder; choose another --out")
    if not resume and (out / SEARCH).is_dir() and any((out / SEARCH).iterdir()):
        raise UserError(
            f"{out / SEARCH}: a study already ran here; pass --resume to continue it or choose another --out"
        )
    if wants_stream(base, False):  # a data file too large for memory: trials memory-map its vectors
        _check_streamed_study(study)
        check_streamable(Path(base.data.dataset))
        return Inputs(base, streamed=True)
    return Inputs(base, streamed=False, ds=load_dataset(base), encoder=build_encoder(base))


def _encode(study: Study, inputs: Inputs) -> tuple[Any, Any]:
    """The features every trial shares and, with ``cv``, every fold's (an object ref), encoded once."""
    import ray

    from abexrat.console import progress
    from abexrat.embed import EmbeddingCache
    from abexrat.feature_source import make_features

    base, ds = inputs.base, inputs.ds
    short = _trains_short_copies(study)
    with progress() as bars:  # encoding a transformer is minutes of a study's start
        made = make_features(base, bars, untitled=True, short=short, dataset=ds, encoder=inputs.encoder)
    feats, inputs.encoder = made.feats, made.encoder
    cv_ref = None
    if study.cv is not None:  # every fold's features, each with its own fitted encoder
        from abexrat.cv import cv_featurize

        c = study.cv
        cv_ref = ray.put(cv_featurize(ds, base, c.folds, c.seed, c.splits, EmbeddingCache(), short=short))
    return feats, cv_ref


def _best_of_search(study: Study, results: Any, search_df: Any, out: Path, early: bool) -> tuple[Any, dict[str, Any]]:
    """The best search trial and, decoded, the overrides of its best configuration."""
    from abexrat.choices import decode_params
    from abexrat.study.trial import trial_overrides

    best_r = best_result(results, study.objective.metric, study.objective.mode, early)
    if best_r is None:
        stopped = int(search_df["status"].isin(list(LIMIT_STATUS.values())).sum()) if len(search_df) else 0
        why = f" ({stopped} stopped by limits)" if stopped else ""
        raise UserError(f"{out / SEARCH}: no trial finished{why}; see the trial errors there")
    best_over = dict(configurations(best_r.config)[best_r.metrics.get("config_best", 0)])
    arms = study.arms() if study.kind == "ablation" else {}
    return best_r, trial_overrides(decode_params(best_over), arms)


def _best_model_sink() -> Any:
    """An actor the final round's best arm sends its models to, pinned to the driver's node."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from abexrat.study.trial import BestModelSink

    # On the driver's node: a worker node that dies must not take the best model with it. Not
    # soft: Ray would spill it to any node, even one killed moments ago that the GCS still
    # counts alive (seen when a worker node is SIGKILLed during the search).
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return ray.remote(num_cpus=0, scheduling_strategy=here)(BestModelSink).remote()


def _search(
    study: Study, feats_ref: Any, out: Path, resume: bool, tracking_mode: str, cv_ref: Any, storage: Any
) -> tuple[Any, list[Any], str, Any, bool]:
    """The search stage, checked: its results, callbacks, stage name, rows and whether the budget ran out."""
    t_search = time.perf_counter()
    results, cbs = run_search(study, feats_ref, out, resume, tracking_mode, cv_ref, storage)
    budget = study.budget.time_budget_s
    # Tune stops every trial once the budget is spent: the ones it cut are not an interruption.
    budget_spent = budget is not None and time.perf_counter() - t_search >= budget
    close_callbacks(cbs)
    early = study.early_stopping.enabled
    search_stage = "ablation" if study.kind == "ablation" else "search"  # the stage column of trials.parquet
    search_df = trial_table(results, search_stage, budget_spent, early)
    per_trial = study.budget.configs_per_trial
    wanted = -(-study.budget.num_samples // per_trial) if study.kind == "search" else len(study.arms())
    if not budget_spent:
        check_interrupted(results, wanted if budget is None else 0, out, early)
    return results, cbs, search_stage, search_df, early


def run_study(
    study: Study,
    out: Path,
    address: str | None = None,
    resume: bool = False,
    data_dir: str | None = None,
    report: bool = True,
) -> dict[str, Any]:
    """Run a study end to end; returns what ``summary.json`` holds."""
    import ray

    t0 = time.perf_counter()
    out = Path(out)
    if data_dir:
        study = study.model_copy(
            update={"trainer": {**study.trainer, "data": {**study.trainer.get("data", {}), "data_dir": str(data_dir)}}}
        )
    inputs = _check_inputs(study, out, resume)
    tracking_mode = wandb_mode(study.tracking)
    started = connect(address, preload=TRIAL_MODULES)
    try:
        if started:
            check_resources_fit(study)
        storage = search_storage(study, out, out / SEARCH, resume) if study.kind == "search" else None
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "study.json", public_settings(study.model_dump(mode="json")))
        imports = _import_in_background(TUNE_LAZY_MODULES + (WANDB_RUN_MODULES if tracking_mode != "disabled" else ()))
        t_enc = time.perf_counter()
        feats, cv_ref = _encode(study, inputs)
        encode_s = time.perf_counter() - t_enc
        feats_ref = ray.put(feats)  # one copy in the object store, shared by every trial
        imports.join()
        results, cbs, search_stage, search_df, early = _search(
            study, feats_ref, out, resume, tracking_mode, cv_ref, storage
        )
        best_r, best_overrides = _best_of_search(study, results, search_df, out, early)
        best_sink = _best_model_sink()
        from abexrat.study import pareto

        arms = study.arms() if study.kind == "ablation" else {}
        front_ids, front, front_trials = pareto.front_arms(study.objective, search_df, results, best_r, arms)
        final_results, fcbs = run_final(
            study, feats_ref, out, best_overrides, tracking_mode, resume, cv_ref, best_sink, front
        )
        check_interrupted(final_results, 1 + len(front) + len(study.baselines), out)
        tracking_wait = close_callbacks(cbs + fcbs)
        table, by_arm = _write_trials(out, search_df, final_results)
        best_cfg, best_run = _write_best(study, out, inputs, best_r, best_overrides, len(search_df), best_sink)
        outcome = Outcome(
            results,
            final_results,
            search_stage,
            search_df,
            table,
            best_r,
            best_overrides,
            best_cfg,
            best_run,
            by_arm,
            arms,
            front_ids,
            front,
            front_trials,
            feats,
            encode_s,
            time.perf_counter() - t0,
            tracking_mode,
            cbs + fcbs,
            tracking_wait,
        )
        summary = build_summary(study, out, outcome)
        _publish(study, out, summary, outcome, report)
        return summary
    finally:
        if started:
            ray.shutdown()


def _write_trials(out: Path, search_df: Any, final_results: Any) -> tuple[Any, dict[str, dict[str, Any]]]:
    """trials.parquet and trials.csv, both stages; returns the table and the final round's metrics by arm."""
    import pandas as pd

    final_df = trial_table(final_results, "final")
    by_arm = {r.config["arm"]: r.metrics for r in final_results if r.metrics and "test_macro_f1" in r.metrics}
    if "best" not in by_arm:
        raise UserError(f"{out / FINAL}: the final retraining of the best configuration failed")
    table = pd.concat([search_df, final_df], ignore_index=True)
    if "pareto" in table:  # final rows are not search trials: never on the front
        table["pareto"] = table["pareto"].astype("boolean").fillna(False).astype(bool)
    write_table(table, out)
    return table, by_arm


def _write_best(
    study: Study,
    out: Path,
    inputs: Inputs,
    best_r: Any,
    best_overrides: dict[str, Any],
    n_trials: int,
    best_sink: Any,
) -> tuple[TrainConfig, str | None]:
    """best.yaml and the best model's run folder (``best``)."""
    import yaml

    best_cfg = study.train_config(study.final.arm(best_overrides))  # as the final round trained it
    write_text(out / "best.yaml", yaml.safe_dump(best_cfg.model_dump(mode="json"), sort_keys=False))
    chosen = study_provenance(study, float(best_r.metrics[study.objective.metric]), n_trials)
    return best_cfg, write_best_run(out, best_cfg, inputs.encoder, take_model(best_sink), chosen)


def _publish(study: Study, out: Path, summary: dict[str, Any], o: Outcome, report: bool) -> None:
    """The report (``out/report``, from the in-memory summary), W&B's summary run, and summary.json last:
    its presence marks a finished study."""
    from abexrat.report import study_report

    files = study_report(out, summary) if report else []
    summary["tracking"]["summary_run"] = log_summary(
        study.name,
        study.tracking,
        out,
        o.tracking_mode,
        summary,
        o.table.astype(str),
        files=files,
        model_dir=out / o.best_run if o.best_run else None,
    )
    write_json(out / "summary.json", summary)
