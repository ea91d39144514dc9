"""The report's tables, as rows of formatted text, computed from the results files only.

Scores are percentages with two decimals (``pct``): ``mean ± std`` over seeds, then the 95%
bootstrap interval over the reports in brackets where the predictions are stored. Differences
(``Δ``) are in percentage points, p-values two-sided.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from abexrat.report import stats
from abexrat.report.paper import PAPER_NAME, PAPER_TEST
from abexrat.report.results import Results

DASH = "—"
METRIC_NAMES = {"macro_f1": "macro-F1", "weighted_f1": "weighted-F1", "accuracy": "accuracy"}


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]
    note: str = ""
    classes: list[str] = field(default_factory=list)  # per-row CSS classes (HTML only), e.g. "reference"


# ---------------------------------------------------------------- formatting


def pct(x: float | None) -> str:
    return DASH if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def points(x: float | None) -> str:
    return DASH if x is None else f"{100 * x:+.2f}"


def pvalue(p: float | None) -> str:
    if p is None:
        return DASH
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def mean_std(scores: dict[str, Any], metric: str) -> str:
    m = scores.get(metric)
    if not m:
        return DASH
    return f"{pct(m['mean'])} ± {pct(m.get('std', 0.0))}"


def bracket(low: float, high: float) -> str:
    return f"[{pct(low)}, {pct(high)}]"


def seconds(s: float | None) -> str:
    if s is None or (isinstance(s, float) and math.isnan(s)):
        return DASH
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def number(x: float) -> str:
    return f"{x:.3g}" if isinstance(x, float) else str(x)


def overrides(d: dict[str, Any]) -> str:
    return ", ".join(f"{k}={f'{v:.4g}' if isinstance(v, float) else v}" for k, v in d.items()) or "(as the trainer)"


def arm_label(key: str) -> str:
    kind, _, name = key.partition(":")
    return {"best": "best", "baseline": f"baseline {name}", "arm": f"arm {name}"}.get(kind, key)


# ---------------------------------------------------------------- statistics per study


class Analysis:
    """One study's scores with their bootstrap intervals and paired tests, computed once each."""

    def __init__(self, r: Results, n_resamples: int = stats.N_RESAMPLES) -> None:
        self.r, self.n_resamples = r, n_resamples
        self.arms = r.arms()
        self.notes: list[str] = []
        self._ci: dict[tuple[str, str], dict[str, stats.Interval] | None] = {}

    def ci(self, key: str, split: str) -> dict[str, stats.Interval] | None:
        if (key, split) not in self._ci:
            self._ci[key, split] = self._confidence(key, split)
        return self._ci[key, split]

    def _confidence(self, key: str, split: str) -> dict[str, stats.Interval] | None:
        preds = self.r.preds(self.arms[key], split)
        if preds is None:
            return None
        y = self.r.labels(split)
        out = stats.confidence(y, preds, len(self.r.classes), self.n_resamples)
        stored = self.arms[key][split].get("macro_f1", {}).get("mean")
        if stored is not None and abs(out["macro_f1"].mean - stored) > 1e-6:
            self.notes.append(
                f"{arm_label(key)}: {split} predictions give macro-F1 {pct(out['macro_f1'].mean)}, "
                f"the summary says {pct(stored)}"
            )
        return out

    def cell(self, key: str, split: str, metric: str) -> str:
        """``mean ± std [low, high]`` from the summary's scores and the bootstrap over the reports."""
        text = mean_std(self.arms[key][split], metric)
        ci = self.ci(key, split)
        return f"{text} {bracket(ci[metric].low, ci[metric].high)}" if ci and text != DASH else text

    def paired(self, a: str, b: str, split: str = "test", metric: str = "macro_f1") -> stats.Paired | None:
        pa, pb = self.r.preds(self.arms[a], split), self.r.preds(self.arms[b], split)
        if pa is None or pb is None or pa.shape != pb.shape:
            return None
        return stats.paired(self.r.labels(split), pa, pb, len(self.r.classes), metric, self.n_resamples)

    def delta(self, a: str, b: str, split: str = "test", metric: str = "macro_f1") -> float | None:
        """Score(a) - score(b) from the summary's means."""
        ma, mb = self.arms[a][split].get(metric), self.arms[b][split].get(metric)
        return None if not ma or not mb else float(ma["mean"]) - float(mb["mean"])


# ---------------------------------------------------------------- tables


def best_config(r: Results) -> Table:
    b = r.summary["best_config"]
    row = [str(b.get("method", DASH)), number(b.get("eps")), number(b.get("p")), number(b.get("aug_ratio"))]
    row += [overrides(b.get("overrides") or {}), pct(r.summary.get("best_val_macro_f1"))]
    return Table(["method", "ε", "p", "r (aug. ratio)", "overrides", "val macro-F1 (search)"], [row])


def headline(a: Analysis) -> Table:
    """Best, the baselines, and the paper as a reference row: val and test macro- and weighted-F1."""
    cols = ["configuration", "seeds"] + [
        f"{s} {METRIC_NAMES[m]}" for s in ("val", "test") for m in ("macro_f1", "weighted_f1")
    ]
    rows, classes = [], []
    for key in ["best"] + [k for k in a.arms if k.startswith("baseline:")]:
        n = len(a.arms[key]["test"].get("macro_f1", {}).get("per_seed", []))
        rows.append(
            [arm_label(key), str(n)] + [a.cell(key, s, m) for s in ("val", "test") for m in ("macro_f1", "weighted_f1")]
        )
        classes.append("best" if key == "best" else "")
    rows.append([PAPER_NAME, DASH, DASH, DASH, pct(PAPER_TEST["macro_f1"]), pct(PAPER_TEST["weighted_f1"])])
    classes.append("reference")
    note = (
        "mean ± std over seeds (how much the score moves with the seed); in brackets the 95% bootstrap interval "
        f"over the reports ({a.n_resamples} resamples stratified by class, seeds averaged: how much it depends on "
        "which reports were drawn, the trained models held fixed), where the predictions are stored."
    )
    return Table(cols, rows, note, classes)


def seed_spread(t: stats.Paired | None) -> str:
    """The per-seed differences: mean ± sd in points, and how many seeds favour the first arm."""
    if t is None or not t.seed_deltas:
        return DASH
    d = np.asarray(t.seed_deltas)
    return f"{points(float(d.mean()))} ± {100 * t.seed_sd:.2f} ({int((d > 0).sum())}/{len(d)} > 0)"


STATS_NOTE = (
    "The interval (paired bootstrap, {n} resamples of the test reports, stratified by class) and p (two-sided "
    "paired permutation test, a report's predictions swapped between the arms for all seeds at once) both take "
    "the report as the unit and the trained models as fixed: they say how much Δ depends on which reports were "
    "drawn. The seed column is the spread of the per-seed Δ (seed k against seed k): how much it depends on the "
    "seed. "
)
HOLM_NOTE = "p is Holm-adjusted over the {m} comparisons of this table (per metric), for the family-wise error rate."


def _holm_rows(tests: list[stats.Paired | None]) -> list[str]:
    adjusted = stats.holm([t.p if t else None for t in tests])
    return [pvalue(p) for p in adjusted]


def versus_baselines(a: Analysis) -> Table | None:
    keys = [k for k in a.arms if k.startswith("baseline:")]
    if not keys:
        return None
    tests = {m: [a.paired("best", k, "test", m) for k in keys] for m in ("macro_f1", "weighted_f1")}
    ps = {m: _holm_rows(tests[m]) for m in tests}
    rows = []
    for i, key in enumerate(keys):
        row = [arm_label(key)]
        for metric in ("macro_f1", "weighted_f1"):
            t = tests[metric][i]
            d = a.delta("best", key, "test", metric)
            row += [points(d) + (f" {bracket(t.low, t.high)}" if t else ""), ps[metric][i]]
            if metric == "macro_f1":
                row.append(seed_spread(t))
        rows.append(row)
    cols = ["best against", "Δ test macro-F1", "p", "Δ per seed (macro-F1)", "Δ test weighted-F1", "p"]
    note = "Δ = best − baseline in points, from the summary's means. " + STATS_NOTE.format(n=a.n_resamples)
    if len(keys) > 1:
        note += HOLM_NOTE.format(m=len(keys))
    return Table(cols, rows, note)


def ablation(a: Analysis) -> Table | None:
    keys = [k for k in a.arms if k.startswith("arm:")]
    if not keys or "arm:full" not in a.arms:
        return None
    others = [k for k in keys if k != "arm:full"]
    tests = [a.paired(key, "arm:full") for key in others]
    ps = _holm_rows(tests)
    rows, classes = [], []
    for key in ["arm:full"] + others:
        arm = a.arms[key]
        row = [key.partition(":")[2], overrides(arm.get("overrides") or {}), mean_std(arm["val"], "macro_f1")]
        row += [a.cell(key, "test", "macro_f1"), a.cell(key, "test", "weighted_f1")]
        if key == "arm:full":
            row += ["reference", DASH, DASH]
        else:
            i = others.index(key)
            t = tests[i]
            d = a.delta(key, "arm:full")
            row += [points(d) + (f" {bracket(t.low, t.high)}" if t else ""), ps[i], seed_spread(t)]
        rows.append(row)
        classes.append("best" if key == "arm:full" else "")
    cols = ["arm", "overrides", "val macro-F1", "test macro-F1", "test weighted-F1", "Δ test macro-F1 vs full", "p"]
    cols.append("Δ per seed")
    note = "Δ = arm − full in points, from the summary's means. " + STATS_NOTE.format(n=a.n_resamples)
    if len(others) > 1:
        note += HOLM_NOTE.format(m=len(others))
    return Table(cols, rows, note, classes)


def series(a: Analysis, limit: int = 6) -> list[str]:
    """The arms the per-class figure and table compare: best, the baselines, else the ablation arms."""
    keys = ["best"] + [k for k in a.arms if k.startswith("baseline:")]
    if len(keys) == 1:
        keys += [k for k in a.arms if k.startswith("arm:")]
    return keys[:limit]


def per_class(a: Analysis) -> Table:
    keys = series(a, limit=16)
    y = a.r.labels("test")
    support = np.bincount(y, minlength=len(a.r.classes)) if y is not None else None
    rows = []
    for c, name in enumerate(a.r.classes):
        row = [name, DASH if support is None else str(int(support[c]))]
        row += [pct(a.arms[k]["test"].get("per_class_f1", {}).get(name)) for k in keys]
        rows.append(row)
    if support is not None:
        rows.sort(key=lambda row: -int(row[1]))
    return Table(["class", "test reports"] + [arm_label(k) for k in keys], rows, "test F1 per class, mean over seeds")


def importances(imp: dict[str, float], best: dict[str, Any]) -> Table:
    rows = [[k, f"{v:.3f}", number(best.get(k, DASH))] for k, v in sorted(imp.items(), key=lambda kv: -kv[1])]
    return Table(
        ["parameter", "fANOVA importance", "best value"], rows, "importances sum to 1 over the searched parameters"
    )


def cost(r: Results) -> Table:
    s = r.summary
    res, trk = s.get("resources") or {}, s.get("tracking") or {}
    df = r.trials
    rows: list[list[str]] = []
    rows.append(["trials", f"{s['trials']} ({s.get('trials_failed', 0)} failed)"])
    trial_s = None
    if df is not None:
        col = "trial_s" if "trial_s" in df.columns else "time_total_s" if "time_total_s" in df.columns else None
        if col:
            trial_s = df[col].astype(float)
            final = df["stage"] == "final"
            rows.append(["final retrainings", str(int(final.sum()))])
            first = df[~final][col].astype(float).dropna()
            if len(first):
                rows.append(
                    [
                        "time per trial (search/ablation)",
                        f"median {seconds(float(first.median()))}, range {seconds(float(first.min()))}–"
                        f"{seconds(float(first.max()))}",
                    ]
                )
            if final.any():
                rows.append(
                    ["time per final retraining", f"median {seconds(float(df[final][col].astype(float).median()))}"]
                )
    rows.append(["wall time", seconds(float(s["wall_s"]))])
    rows.append(["encoding (once, shared by every trial)", seconds(s.get("encode_s"))])
    if trial_s is not None:
        busy = float(trial_s.sum())
        cpu, gpu = float(res.get("cpu_per_trial", 1)), float(res.get("gpu_per_trial", 0))
        rows.append(["trial time, summed", seconds(busy)])
        rows.append(["CPU-hours (trials × CPUs per trial)", f"{busy * cpu / 3600:.3f}"])
        rows.append(["GPU-hours (trials × GPUs per trial)", f"{busy * gpu / 3600:.3f}"])
        if s["wall_s"]:
            rows.append(["trials running at once, on average", f"{busy / float(s['wall_s']):.2f}"])
    if res:
        held = float(s["wall_s"]) / 3600
        rows.append(
            [
                "cluster held (CPU-hours, GPU-hours)",
                f"{held * float(res.get('cluster_cpus', 0)):.3f}, {held * float(res.get('cluster_gpus', 0)):.3f} "
                f"({number(res.get('cluster_cpus'))} CPUs, {number(res.get('cluster_gpus'))} GPUs)",
            ]
        )
    if trk:
        wait = float(trk.get("driver_wait_s") or 0.0)
        rows.append(
            [
                "tracking (W&B)",
                f"{trk.get('mode', DASH)}, {trk.get('runs', 0)} runs, "
                f"{seconds(trk.get('busy_s'))} in its background thread",
            ]
        )
        rows.append(
            [
                "tracking overhead (driver waited)",
                f"{seconds(wait)} ({100 * wait / max(float(s['wall_s']), 1e-9):.1f}% of wall)",
            ]
        )
    return Table(["", "value"], rows)


def compare(main: Analysis, others: list[Analysis]) -> Table:
    """One row per study: best settings, val and test scores; Δ against the first study, paired when possible."""
    cols = ["study", "kind", "trials", "best (method, ε, p, r)", "val macro-F1", "test macro-F1", "test weighted-F1"]
    cols += [f"Δ test macro-F1 vs {main.r.name}", "p", "wall time"]
    rows, classes = [], []
    tests = [_cross_paired(a, main) for a in others]
    ps = _holm_rows(tests)
    for a in [main, *others]:
        b = a.r.summary["best_config"]
        best = f"{b.get('method')}, {number(b.get('eps'))}, {number(b.get('p'))}, {number(b.get('aug_ratio'))}"
        row = [a.r.name, a.r.kind, str(a.r.summary["trials"]), best, a.cell("best", "val", "macro_f1")]
        row += [a.cell("best", "test", "macro_f1"), a.cell("best", "test", "weighted_f1")]
        if a is main:
            row += ["reference", DASH]
        else:
            d = float(a.r.summary["test"]["macro_f1"]["mean"]) - float(main.r.summary["test"]["macro_f1"]["mean"])
            t = tests[others.index(a)]
            row += [points(d) + (f" {bracket(t.low, t.high)}" if t else ""), ps[others.index(a)]]
        row.append(seconds(float(a.r.summary["wall_s"])))
        rows.append(row)
        classes.append("best" if a is main else "")
    rows.append(
        [PAPER_NAME, DASH, DASH, DASH, DASH, pct(PAPER_TEST["macro_f1"]), pct(PAPER_TEST["weighted_f1"])]
        + [points(PAPER_TEST["macro_f1"] - float(main.r.summary["test"]["macro_f1"]["mean"])), DASH, DASH]
    )
    classes.append("reference")
    note = (
        "Δ = study − first study in points; the interval and p are paired over the same test reports and seeds "
        "when both studies scored the same test split with the same number of seeds, else only Δ is shown; "
        "both take the report as the unit (see the best-against-baselines table)."
        + (" " + HOLM_NOTE.format(m=len(others)) if len(others) > 1 else "")
    )
    return Table(cols, rows, note, classes)


def _cross_paired(a: Analysis, main: Analysis) -> stats.Paired | None:
    ya, ym = a.r.labels("test"), main.r.labels("test")
    pa, pm = a.r.preds(a.arms["best"], "test"), main.r.preds(main.arms["best"], "test")
    if ya is None or ym is None or pa is None or pm is None or not np.array_equal(ya, ym) or pa.shape != pm.shape:
        return None
    if a.r.classes != main.r.classes:
        return None
    return stats.paired(ym, pa, pm, len(main.r.classes), "macro_f1", main.n_resamples)
