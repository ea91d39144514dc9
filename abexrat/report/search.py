"""The search stage as an in-memory Optuna study, rebuilt from ``trials.parquet`` and ``study.json``'s space.

Optuna's own tools then apply unchanged: fANOVA importances and the matplotlib visualizations.
Categorical choices that are lists (e.g. hidden sizes) are shown as their JSON text.
"""

from __future__ import annotations

import json
import math
import warnings
from typing import Any

from abexrat.choices import decode_params, encode_choice
from abexrat.report.results import Results

PREFIX = "param:"


def search_rows(r: Results) -> Any:
    """The search stage's trials (a DataFrame), or None for an ablation or without a trial table."""
    if r.kind != "search" or r.trials is None:
        return None
    return r.trials[r.trials["stage"] == "search"]


def space(r: Results) -> dict[str, dict[str, Any]]:
    return dict((r.study or {}).get("space") or {})


def objective(r: Results) -> tuple[str, str]:
    obj = (r.study or {}).get("objective") or {}
    return obj.get("metric", "val_macro_f1"), obj.get("mode", "max")


def _display(v: Any) -> Any:
    v = decode_params({"v": v})["v"]
    return v if isinstance(v, str | int | float | bool) or v is None else json.dumps(v)


def _distribution(p: dict[str, Any]) -> Any:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if p["type"] == "float":
        return FloatDistribution(p["low"], p["high"], log=bool(p.get("log")), step=p.get("step"))
    if p["type"] == "int":
        return IntDistribution(int(p["low"]), int(p["high"]), log=bool(p.get("log")), step=int(p.get("step") or 1))
    return CategoricalDistribution([_display(encode_choice(c)) for c in p["choices"]])


def _value(v: Any, p: dict[str, Any], dist: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if p["type"] == "float":
        return float(v)
    if p["type"] == "int":
        return int(v)
    shown = _display(v)
    for c in dist.choices:  # parquet may hold a choice as its text: match by value, then by text
        if c == shown or str(c) == str(shown):
            return c
    return None


def optuna_study(r: Results) -> tuple[Any, str | None]:
    """``(study, None)`` with one COMPLETE trial per finished search trial, or ``(None, why not)``."""
    rows = search_rows(r)
    if rows is None:
        return None, "an ablation study has no search stage" if r.kind != "search" else "no trials.parquet"
    params = {k: p for k, p in space(r).items() if PREFIX + k in rows.columns}
    metric, mode = objective(r)
    if not params or metric not in rows.columns:
        return None, "study.json's space does not match trials.parquet's columns"
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = {k: _distribution(p) for k, p in params.items()}
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize", study_name=r.name)
    for _, row in rows.iterrows():
        value = row[metric]
        if row.get("status") == "ERROR" or value is None or math.isnan(float(value)):
            continue
        values = {k: _value(row[PREFIX + k], params[k], dists[k]) for k in params}
        if any(v is None for v in values.values()):
            continue
        study.add_trial(optuna.trial.create_trial(params=values, distributions=dists, value=float(value)))
    if len(study.trials) < 2:
        return None, f"{len(study.trials)} completed search trial(s): too few to analyse"
    return study, None


def importances(study: Any) -> dict[str, float]:
    """fANOVA importances of the searched parameters (they sum to 1), or {} when they cannot be computed."""
    import optuna

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            imp = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)
            )
    except (RuntimeError, ValueError, ZeroDivisionError):  # e.g. every trial scored the same
        return {}
    return {k: float(v) for k, v in imp.items() if not math.isnan(v)}
