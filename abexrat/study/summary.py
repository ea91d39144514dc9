"""summary.json: what a finished study found, in one JSON file (the report and ``abexrat study show`` read it).

Its presence marks a finished study, so it is written last; :func:`build_summary` only assembles it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from abexrat.config import TrainConfig
from abexrat.core.errors import UserError
from abexrat.core.ray_session import cluster_resources
from abexrat.study import pareto
from abexrat.study.config import Study
from abexrat.study.restarts import restarted_trials
from abexrat.study.stages import FINAL
from abexrat.study.storage import optuna_study_name, public_url, storage_url
from abexrat.study.table import BUDGET_STATUS
from abexrat.study.tracking import WandbTrials
from abexrat.study.trial import LIMIT_STATUS


def scores(r: dict[str, Any], split: str) -> dict[str, Any]:
    """A trial's flat ``<split>_<metric>`` results as ``{metric: {mean, std, per_seed}}`` plus the
    per-class F1 and confusion matrices."""
    out = {}
    for k in ("macro_f1", "weighted_f1", "accuracy"):
        if f"{split}_{k}" in r:
            out[k] = {"mean": r[f"{split}_{k}"], "std": r[f"{split}_{k}_std"], "per_seed": r[f"{split}_{k}_per_seed"]}
    if f"{split}_per_class_f1" in r:
        out["per_class_f1"] = r[f"{split}_per_class_f1"]
        out["confusion"] = r[f"{split}_confusion"]
    return out


@dataclass
class Outcome:
    """What a study's two stages produced, as the summary reports it."""

    results: Any  # the search stage's Tune results
    final_results: Any
    search_stage: str  # the stage column of trials.parquet: "search" or "ablation"
    search_df: Any  # the search stage's rows of trials.parquet
    table: Any  # every row of trials.parquet
    best_r: Any  # the best search trial's Tune result
    best_overrides: dict[str, Any]
    best_cfg: TrainConfig  # as the final round trained it
    best_run: str | None  # the best model's run folder under the study's, if it came back
    by_arm: dict[str, dict[str, Any]]  # the final round's metrics by arm
    arms: dict[str, dict[str, Any]]  # an ablation's arms (empty for a search)
    front_ids: Any
    front: dict[str, dict[str, Any]]
    front_trials: Any
    feats: Any
    encode_s: float
    wall: float
    tracking_mode: str  # W&B's mode; "disabled" when W&B is off
    callbacks: list[Any]  # both stages' Tune callbacks
    tracking_wait: float  # seconds the driver waited for W&B when the stages closed


def _tracking(out: Path, o: Outcome) -> dict[str, Any]:
    """W&B's part: its mode, the runs both stages logged and what waiting for them cost the driver."""
    return {
        "mode": o.tracking_mode,
        "runs": sum(len(c.runs) for c in o.callbacks if isinstance(c, WandbTrials)),
        "busy_s": sum(c.busy_s for c in o.callbacks if isinstance(c, WandbTrials)),
        "driver_wait_s": o.tracking_wait,
        "dir": str((out / "wandb").resolve()),
    }


def _resources(study: Study) -> dict[str, Any]:
    return {
        "cpu_per_trial": study.resources.cpu,
        "cpu_per_final_arm": study.final.cpu or study.resources.cpu,
        "gpu_per_trial": study.resources.gpu,
        "cluster_cpus": cluster_resources()[0],
        "cluster_gpus": cluster_resources()[1],
    }


def build_summary(study: Study, out: Path, o: Outcome) -> dict[str, Any]:
    """summary.json's content (the report's run and W&B's summary run are added by the runner)."""
    summary = {
        "study": study.name,
        "kind": study.kind,
        "best_config": {
            "eps": o.best_cfg.adversarial.eps,
            "p": o.best_cfg.adversarial.p,
            "aug_ratio": o.best_cfg.data.aug_ratio,
            "method": o.best_cfg.adversarial.method,
            "overrides": o.best_overrides,
            "train_config": o.best_cfg.model_dump(mode="json"),
        },
        "best_val_macro_f1": float(o.best_r.metrics[study.objective.metric]),
        "best_run": o.best_run,
        "optuna": None
        if study.kind != "search"
        else {"storage": public_url(storage_url(study.optuna, out)), "study_name": optuna_study_name(study)},
        "seeds": list(range(study.seed, study.seed + study.final.seeds)),
        "val": scores(o.by_arm["best"], "val"),
        "test": scores(o.by_arm["best"], "test"),
        "test_pred": o.by_arm["best"].get("test_pred"),
        "val_pred": o.by_arm["best"].get("val_pred"),
        "val_labels": None if o.feats.is_memmapped else o.feats.y_val.tolist(),
        "cv": None
        if study.cv is None
        else {
            **study.cv.model_dump(),
            "best": scores(o.by_arm["best"], "cv"),
            "baselines": {name: scores(m, "cv") for name, m in o.by_arm.items() if name in study.baselines},
            "note": "search trials' val_* scores are these folds' out-of-fold scores",
        },
        "baselines": {
            name: {
                "overrides": study.baselines[name],
                "val": scores(m, "val"),
                "test": scores(m, "test"),
                "test_pred": m.get("test_pred"),
                "val_pred": m.get("val_pred"),
            }
            for name, m in o.by_arm.items()
            if name in study.baselines
        },
        "trials": int((o.table["stage"] != "final").sum()),
        "trials_failed": int(((o.table["stage"] != "final") & (o.table["status"] == "ERROR")).sum()),
        "trials_stopped": {
            status: int(((o.table["stage"] != "final") & (o.table["status"] == status)).sum())
            for status in [*LIMIT_STATUS.values(), BUDGET_STATUS]
        },
        "limits": study.limits.model_dump(),
        # trials run again under their own ids after a worker or node died (or a retried error)
        "trial_restarts": restarted_trials(o.results, o.search_stage) + restarted_trials(o.final_results, FINAL),
        "wall_s": o.wall,
        "encode_s": o.encode_s,
        "classes": o.feats.classes,
        "test_labels": None if o.feats.is_memmapped else o.feats.y_test.tolist(),
        "streamed": o.feats.memmap_dir,  # the feature files' folder, or None
        "tracking": _tracking(out, o),
        "resources": _resources(study),
    }
    pareto.attach_robustness(summary, o.by_arm)
    if study.objective.multi:
        obj, best_id = study.objective, str(o.best_r.metrics.get("trial_id"))
        summary["pareto"] = pareto.summary_front(
            o.search_df, obj.metrics, obj.modes, o.front_ids, best_id, o.front, o.front_trials, o.by_arm, scores
        )
    if study.kind == "ablation":
        summary["arms"] = {
            r.config["arm"]: {
                "overrides": o.arms[r.config["arm"]],
                "val": scores(r.metrics, "val"),
                "test": scores(r.metrics, "test"),
                "test_pred": r.metrics.get("test_pred"),
                "val_pred": r.metrics.get("val_pred"),
            }
            for r in o.results
            if r.metrics and "test_macro_f1" in r.metrics
        }
    return summary


def load_summary(out: Path) -> dict[str, Any]:
    path = out / "summary.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: not found; run the study first") from None
    except json.JSONDecodeError:
        raise UserError(f"{path}: not valid JSON") from None
