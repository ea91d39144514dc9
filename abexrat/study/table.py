"""trials.parquet and trials.csv: one row per configuration tried, search and final round.

Rows come from Tune's results table, split per configuration for grouped trials, with a status
taken from Tune's own trial records (a reused actor's metrics can belong to its previous trial).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from abexrat.core.io import atomic_path
from abexrat.study.grouped import GROUP, SHARED_KEYS, configuration_ids, configurations, per_configuration, sub_id
from abexrat.study.restarts import failed_attempts
from abexrat.study.trial import LIMIT_STATUS

BUDGET_STATUS = "BUDGET"  # trials.parquet status of a trial the study's time_budget_s cut off


def ended(last: dict[str, Any] | None, early_stopping: bool) -> bool:
    """Whether a trial whose last report is ``last`` reached its final report (``val_accuracy``) or was
    stopped by a limit (the report names the ``limit``); with ASHA on, a trial may also have been
    stopped early on purpose."""
    last = last or {}
    return early_stopping or "val_accuracy" in last or bool(last.get("limit"))


def trial_table(results: Any, stage: str, budget_spent: bool = False, early_stopping: bool = False) -> Any:
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
    unended = {t.trial_id for t in trials if not ended(t.last_result, early_stopping)}

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


def write_table(df: Any, out: Path) -> None:
    for suffix in ("parquet", "csv"):
        with atomic_path(out / f"trials.{suffix}") as tmp:
            if suffix == "parquet":
                df.astype({c: str for c in df.columns if df[c].dtype == object}).to_parquet(tmp, index=False)
            else:
                df.to_csv(tmp, index=False)
