"""Studies with several objectives: the Pareto front of the search, its final round, its summary.

A trial is Pareto-optimal when no other finished trial is at least as good on every objective and
strictly better on one (each objective in its own direction). ``trials.parquet`` marks them
(``pareto``), the final round retrains the front (best by the primary objective first, then up to
``objective.front_size`` more members, in order of the primary objective) beside the baselines,
and ``summary.json``'s ``pareto`` holds the front with each member's search values and, for the
retrained ones, their final scores (val, test and robustness).

The same helpers add the robustness blocks of every final arm to the summary, for any study.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

FRONT_PREFIX = "front-"


def pareto_mask(values: np.ndarray, modes: list[str]) -> np.ndarray:
    """(n, k) objective values -> (n,) bool: not dominated by any other row. Rows with a
    non-finite value are never on the front (and dominate nothing)."""
    v = np.asarray(values, np.float64).reshape(len(values), len(modes))
    v = v * np.where(np.asarray(modes) == "max", 1.0, -1.0)  # every objective maximized
    ok = np.isfinite(v).all(1)
    front = ok.copy()
    for i in np.flatnonzero(ok):
        others = v[ok]
        dominated = ((others >= v[i]).all(1) & (others > v[i]).any(1)).any()
        front[i] = not dominated
    return front


def mark(df: Any, metrics: list[str], modes: list[str]) -> list[str]:
    """Add the ``pareto`` column to a search's trial table (only finished rows can be on it) and
    return the front's trial ids, best by the primary objective first."""
    if df.empty or any(m not in df.columns for m in metrics):
        df["pareto"] = False
        return []
    values = np.array(df[metrics].astype(float).to_numpy(), dtype=np.float64)  # a writable copy
    finished = (df["status"] == "TERMINATED").to_numpy() if "status" in df else np.ones(len(df), bool)
    values[~finished] = np.nan
    df["pareto"] = pareto_mask(values, modes)
    front = df[df["pareto"]]
    order = front[metrics[0]].astype(float).sort_values(ascending=modes[0] == "min").index
    return [str(df.at[i, "trial_id"]) for i in order]


def final_arms(
    front_ids: list[str], best_id: str, by_id: dict[str, Any], front_size: int, overrides: Callable[[Any], dict]
) -> dict[str, dict[str, Any]]:
    """The front members the final round retrains besides ``best``: ``front-1`` ... (up to
    ``front_size``), each as the overrides ``overrides(result)`` gives for its Tune result."""
    members = [t for t in front_ids if t != best_id and t in by_id][:front_size]
    return {f"{FRONT_PREFIX}{k}": overrides(by_id[t]) for k, t in enumerate(members, 1)}


def front_arms(
    objective: Any, search_df: Any, results: Any, best_r: Any, arms: dict[str, Any]
) -> tuple[list[str], dict[str, dict[str, Any]], list[str]]:
    """With several objectives: mark the Pareto-optimal rows of ``search_df`` (Tune's ``results``
    behind them) and name the front members the final round retrains besides the best: the front's
    trial ids, ``front-k`` -> overrides, and those members' trial ids. Nothing for one objective."""
    from abexrat.choices import decode_params
    from abexrat.study.grouped import configurations
    from abexrat.study.trial import trial_overrides

    if not objective.multi:
        return [], {}, []
    front_ids = mark(search_df, objective.metrics, objective.modes)
    by_id = {str(r.metrics.get("trial_id")): r for r in results if r.metrics and not r.error}
    best_id = str(best_r.metrics.get("trial_id"))

    def overrides(r: Any) -> dict[str, Any]:
        return trial_overrides(decode_params(dict(configurations(r.config)[0])), arms)

    front = final_arms(front_ids, best_id, by_id, objective.front_size, overrides)
    return front_ids, front, [t for t in front_ids if t != best_id and t in by_id][: objective.front_size]


def _arm_entry(metrics: dict[str, Any], scores: Callable[[dict[str, Any], str], dict[str, Any]]) -> dict[str, Any]:
    return {
        "val": scores(metrics, "val"),
        "test": scores(metrics, "test"),
        "val_pred": metrics.get("val_pred"),
        "test_pred": metrics.get("test_pred"),
        "robustness": metrics.get("robustness"),
        "robustness_pred": metrics.get("robustness_pred"),
    }


def summary_front(
    df: Any,
    metrics: list[str],
    modes: list[str],
    front_ids: list[str],
    best_id: str,
    extra: dict[str, dict[str, Any]],
    extra_ids: list[str],
    by_arm: dict[str, dict[str, Any]],
    scores: Callable[[dict[str, Any], str], dict[str, Any]],
) -> dict[str, Any]:
    """``summary.json``'s ``pareto``: the objectives and the front, each member with its search
    values and parameters, and the final arm that retrained it (``best``, ``front-k``, or none)."""
    arm_of = {best_id: "best", **{t: name for name, t in zip(extra, extra_ids)}}
    rows = df.set_index(df["trial_id"].astype(str))
    members = []
    for t in front_ids:
        row = rows.loc[t]
        params = {k.removeprefix("param:"): _plain(v) for k, v in row.items() if str(k).startswith("param:")}
        arm = arm_of.get(t)
        member = {"trial_id": t, "values": {m: float(row[m]) for m in metrics}, "params": params, "arm": arm}
        if arm and arm != "best" and arm in by_arm:
            member.update(overrides=extra[arm], **_arm_entry(by_arm[arm], scores))
        members.append(member)
    return {"metrics": metrics, "modes": modes, "front": members}


def attach_robustness(summary: dict[str, Any], by_arm: dict[str, dict[str, Any]]) -> None:
    """Every final arm's robustness block (and its test predictions under attack) into the summary:
    ``robustness`` beside ``best``'s scores and each baseline's."""
    if "best" in by_arm and by_arm["best"].get("robustness"):
        summary["robustness"] = by_arm["best"]["robustness"]
        summary["robustness_pred"] = by_arm["best"].get("robustness_pred")
    for name, entry in summary.get("baselines", {}).items():
        if name in by_arm and by_arm[name].get("robustness"):
            entry["robustness"] = by_arm[name]["robustness"]
            entry["robustness_pred"] = by_arm[name].get("robustness_pred")


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return None if isinstance(v, float) and not np.isfinite(v) else v
