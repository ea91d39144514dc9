"""The report's PNG figures (matplotlib, Agg), each drawn from the results files only.

Every function writes its PNG into ``folder`` and returns a :class:`Figure`, or None when its data
is not there (e.g. the search figures of an ablation study).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from abexrat.report import search  # noqa: E402
from abexrat.report.paper import PAPER_TEST  # noqa: E402
from abexrat.report.tables import Analysis, arm_label, series  # noqa: E402

DPI = 110


@dataclass
class Figure:
    file: str  # a name in the report folder
    title: str
    caption: str


def _save(fig: Any, folder: Path, name: str) -> str:
    fig.savefig(folder / name, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return name


def short(classes: list[str]) -> list[str]:
    """Axis labels: each class's first word ("FALLS,SLIPS,TRIPS" -> "Falls"), or the full names if they clash."""
    first = [re.split(r"[ ,]", c.strip())[0].capitalize() or c for c in classes]
    return first if len(set(first)) == len(first) else [c[:24] for c in classes]


def per_class_f1(a: Analysis, folder: Path) -> Figure | None:
    keys = series(a)
    classes = a.r.classes
    y = a.r.labels("test")
    order = np.argsort(-np.bincount(y, minlength=len(classes))) if y is not None else np.arange(len(classes))
    support = np.bincount(y, minlength=len(classes)) if y is not None else None
    names = short(classes)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.2 * len(classes)), 4.2))
    width = 0.8 / len(keys)
    for i, key in enumerate(keys):
        f1 = a.arms[key]["test"].get("per_class_f1", {})
        vals = [100 * float(f1.get(classes[c], np.nan)) for c in order]
        ax.bar(np.arange(len(order)) + (i - (len(keys) - 1) / 2) * width, vals, width, label=arm_label(key))
    labels = [names[c] + ("" if support is None else f"\nn={support[c]}") for c in order]
    ax.set_xticks(np.arange(len(order)), labels, fontsize=8)
    ax.set_ylabel("test F1 (%), mean over seeds")
    ax.set_ylim(0, 118)
    ax.legend(fontsize=8, loc="upper center", ncol=len(keys), frameon=False)
    ax.set_title("Per-class test F1, classes from most to fewest test reports")
    ax.grid(axis="y", alpha=0.3)
    return Figure(
        _save(fig, folder, "per_class_f1.png"),
        "Per-class F1",
        "Test F1 per class; the rare classes on the right are where configurations differ most.",
    )


def confusion(a: Analysis, folder: Path) -> Figure | None:
    keys = series(a)
    if len(keys) > 2 and not any(k.startswith("baseline:") for k in keys):
        keys = [keys[0], keys[-1]]  # an ablation without baselines: best against the last (most reduced) arm
    keys = keys[:2]
    names = short(a.r.classes)
    fig, axes = plt.subplots(1, len(keys), figsize=(5.2 * len(keys), 5.0), squeeze=False, layout="constrained")
    for ax, key in zip(axes[0], keys):
        m = np.asarray(a.arms[key]["test"].get("confusion") or np.zeros((len(names), len(names))), dtype=float)
        rows = m.sum(1, keepdims=True)
        norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        for i in range(len(names)):
            for j in range(len(names)):
                if m[i, j]:
                    ax.text(
                        j,
                        i,
                        f"{int(m[i, j])}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black",
                    )
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_xlabel("predicted")
        if ax is axes[0][0]:
            ax.set_ylabel("true")
        ax.set_title(arm_label(key))
    fig.suptitle("Test confusion, summed over seeds (color: share of the true class)")
    return Figure(
        _save(fig, folder, "confusion.png"),
        "Confusion matrices",
        "Counts summed over seeds; each row's color is the share of that true class, so rare classes read the same.",
    )


def importances(imp: dict[str, float], folder: Path) -> Figure | None:
    if not imp:
        return None
    items = sorted(imp.items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(6.5, 0.5 * len(items) + 1.2))
    ax.barh([k for k, _ in items], [v for _, v in items], color="tab:blue")
    ax.set_xlabel("fANOVA importance (sums to 1)")
    ax.set_title("Hyperparameter importances")
    return Figure(
        _save(fig, folder, "importances.png"),
        "Parameter importances",
        "fANOVA (optuna.importance) over the completed search trials.",
    )


def _optuna_plot(fn: Any, study: Any, folder: Path, name: str, target: str, **kw: Any) -> str:
    # Optuna's plots are marked experimental, and they switch the global style: keep both to themselves.
    with warnings.catch_warnings(), plt.rc_context():
        warnings.simplefilter("ignore")
        ax = fn(study, target_name=target, **kw)
        fig = (ax.flat[0] if isinstance(ax, np.ndarray) else ax).figure
        fig.set_size_inches(8, 4.5)
        return _save(fig, folder, name)


def history(study: Any, folder: Path, target: str) -> Figure:
    from optuna.visualization.matplotlib import plot_optimization_history

    return Figure(
        _optuna_plot(plot_optimization_history, study, folder, "history.png", target),
        "Optimization history",
        f"{target} per search trial, in order, and the best so far.",
    )


def parallel(study: Any, folder: Path, target: str) -> Figure:
    from optuna.visualization.matplotlib import plot_parallel_coordinate

    return Figure(
        _optuna_plot(plot_parallel_coordinate, study, folder, "parallel.png", target),
        "Parallel coordinates",
        f"Each line a search trial, colored by {target}.",
    )


def eps_p_map(a: Analysis, folder: Path, target: str) -> Figure | None:
    rows = search.search_rows(a.r)
    eps, p = search.PREFIX + "adversarial.eps", search.PREFIX + "adversarial.p"
    metric, mode = search.objective(a.r)
    if rows is None or eps not in rows.columns or p not in rows.columns or metric not in rows.columns:
        return None
    d = rows[[eps, p, metric]].astype(float).dropna()
    if len(d) < 2:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    sc = ax.scatter(d[eps], d[p], c=100 * d[metric], cmap="viridis", s=60, edgecolors="k", linewidths=0.4)
    best = d[metric].idxmax() if mode == "max" else d[metric].idxmin()
    ax.scatter(
        [d.loc[best, eps]], [d.loc[best, p]], marker="*", s=320, facecolors="none", edgecolors="red", linewidths=1.5
    )
    if search.space(a.r).get("adversarial.eps", {}).get("log"):
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("ε (adversarial.eps)")
    ax.set_ylabel("p (adversarial.p)")
    fig.colorbar(sc, ax=ax, label=f"{target} (%)")
    ax.set_title(f"ε × p: {target} of each search trial")
    ax.grid(alpha=0.3)
    return Figure(
        _save(fig, folder, "eps_p.png"),
        "ε × p map",
        f"Each point a search trial, colored by {target}; the red star marks the best.",
    )


def compare(analyses: list[Analysis], folder: Path) -> Figure:
    names = [a.r.name for a in analyses]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(names) + 2), 4.2))
    for i, a in enumerate(analyses):
        t = a.r.summary["test"]["macro_f1"]
        ci = a.ci("best", "test")
        m = 100 * float(t["mean"])
        if ci:
            err = [[m - 100 * ci["macro_f1"].low], [100 * ci["macro_f1"].high - m]]
            ax.errorbar([i + 0.08], [m], yerr=err, fmt="none", capsize=6, color="tab:blue")
        ax.errorbar([i], [m], yerr=[100 * float(t.get("std", 0.0))], fmt="o", capsize=3, color="k", elinewidth=2.5)
    ax.axhline(
        100 * PAPER_TEST["macro_f1"], ls="--", color="tab:red", label=f"paper {100 * PAPER_TEST['macro_f1']:.2f}"
    )
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_ylabel("test macro-F1 (%)")
    ax.set_title("Best configuration of each study: ± std over seeds (black), 95% bootstrap interval (blue)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return Figure(
        _save(fig, folder, "compare.png"),
        "Studies compared",
        "Test macro-F1 of each study's best configuration against the paper's.",
    )
