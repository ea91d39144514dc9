"""The report's robustness section: macro-F1 vs ε curves with bootstrap bands, the paired
comparisons of robustness against the best, the natural-perturbation table, the Pareto front of a
two-objective study, and the cost of scoring robustness; across studies with ``--compare``.

Every number comes from ``summary.json`` (each final arm's ``robustness`` block and its test
predictions under attack, ``pareto``) and ``trials.parquet`` (``robust_s``, the objectives).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from abexrat.report import stats
from abexrat.report.figures import Figure, _save, plt
from abexrat.report.tables import (
    DASH,
    HOLM_NOTE,
    Analysis,
    Table,
    arm_label,
    bracket,
    pct,
    points,
    pvalue,
    seconds,
)

ATTACK_NAMES = {"fgm": "FGM", "pgd": "PGD"}


def arms_with_robustness(a: Analysis) -> dict[str, dict[str, Any]]:
    """The final arms that were scored for robustness: best, the front members, the baselines."""
    s = a.r.summary
    out: dict[str, dict[str, Any]] = {}
    if s.get("robustness"):
        out["best"] = {"robustness": s["robustness"], "robustness_pred": s.get("robustness_pred")}
    for m in (s.get("pareto") or {}).get("front", []):
        if m.get("robustness") and m.get("arm") and m["arm"] != "best":
            out[f"front:{m['arm']}"] = m
    for name, b in s.get("baselines", {}).items():
        if b.get("robustness"):
            out[f"baseline:{name}"] = b
    return out


def _label(key: str) -> str:
    return key.partition(":")[2] if key.startswith("front:") else arm_label(key)


def _ms(s: dict[str, Any]) -> str:
    return f"{pct(s['mean'])} ± {pct(s.get('std', 0.0))}"


def _attacked(entry: dict[str, Any], attack: str) -> np.ndarray | None:
    """(E, S, n) test predictions under ``attack``, when stored."""
    p = ((entry.get("robustness_pred") or {}).get("test") or {}).get(attack)
    return None if p is None else np.asarray(p, dtype=np.int64)


def curves_table(a: Analysis, arms: dict[str, dict[str, Any]]) -> Table:
    eps = next(iter(arms.values()))["robustness"]["eps"]
    cols = ["configuration", "attack", "clean", *(f"ε={e:g}" for e in eps), "area"]
    rows = []
    for key, entry in arms.items():
        t = entry["robustness"]["test"]
        for attack in ("fgm", "pgd"):
            rows.append([_label(key), ATTACK_NAMES[attack], _ms(t["clean"]["macro_f1"])])
            rows[-1] += [_ms(v) for v in t[attack]["macro_f1"]] + [_ms(t[attack]["auc"])]
    note = (
        "test macro-F1 under attacks on the input vectors (true labels, each seed's model in eval mode), mean ± std "
        "over seeds; ε is relative to the mean training-vector norm; PGD takes "
        f"{next(iter(arms.values()))['robustness']['pgd_steps']} steps. area: the area under macro-F1 vs ε through "
        "the clean score at 0, divided by the largest ε (a macro-F1 averaged over the attack budget)."
    )
    return Table(cols, rows, note)


def paired_table(a: Analysis, arms: dict[str, dict[str, Any]]) -> Table | None:
    """Each arm against the best under the strongest PGD attack, paired over the same test reports and seeds."""
    if "best" not in arms:
        return None
    y, best = a.r.labels("test"), _attacked(arms["best"], "pgd")
    others = [k for k in arms if k != "best"]
    if y is None or best is None or not others:
        return None
    C = len(a.r.classes)
    tests: list[stats.Paired | None] = []
    for key in others:
        other = _attacked(arms[key], "pgd")
        ok = other is not None and other.shape == best.shape
        tests.append(stats.paired(y, best[-1], other[-1], C, n_resamples=a.n_resamples) if ok else None)
    ps = stats.holm([t.p if t else None for t in tests])
    eps = arms["best"]["robustness"]["eps"][-1]
    rows = []
    for key, t, p in zip(others, tests, ps):
        if t is None:
            rows.append([_label(key), DASH, DASH, DASH])
            continue
        d = np.asarray(t.seed_deltas)
        seed = f"{points(float(d.mean()))} ± {100 * t.seed_sd:.2f} ({int((d > 0).sum())}/{len(d)} > 0)"
        rows.append([_label(key), f"{points(t.delta)} {bracket(t.low, t.high)}", pvalue(p), seed])
    note = (
        f"Δ = best − configuration in test macro-F1 under PGD at ε={eps:g}. The interval (paired bootstrap) and p "
        "(paired permutation, a report's predictions swapped for all seeds at once) take the report as the unit and "
        "the models as fixed; the seed column is the spread of the per-seed Δ."
    )
    if len(others) > 1:
        note += " " + HOLM_NOTE.format(m=len(others))
    return Table(["best against", f"Δ PGD macro-F1 at ε={eps:g}", "p", "Δ per seed"], rows, note)


def natural_table(arms: dict[str, dict[str, Any]]) -> Table | None:
    first = next(iter(arms.values()))["robustness"]["test"]
    if not first.get("natural"):
        return None
    names = list(first["natural"])
    cols = ["perturbation", "reports changed", *(_label(k) for k in arms)]
    rows = [["none (clean)", DASH, *(_ms(e["robustness"]["test"]["clean"]["macro_f1"]) for e in arms.values())]]
    for name in names:
        changed = first["natural"][name].get("changed")
        row = [name.replace("_", " "), DASH if changed is None else f"{100 * changed:.1f}%"]
        row += [
            _ms(e["robustness"]["test"].get("natural", {}).get(name, {}).get("macro_f1", {"mean": np.nan}))
            for e in arms.values()
        ]
        rows.append(row)
    note = (
        "test macro-F1 (mean ± std over seeds) with each report perturbed (seeded) and re-encoded with the run's own "
        "encoder: title removed; the narrative's first sentence only; character noise (deletions, swaps, "
        "substitutions); word dropout."
    )
    return Table(cols, rows, note)


def curves_figure(a: Analysis, arms: dict[str, dict[str, Any]], folder: Path) -> Figure:
    """PGD macro-F1 vs ε per configuration, with 95% bootstrap bands over the test reports."""
    y = a.r.labels("test")
    C = len(a.r.classes)
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    for key, entry in arms.items():
        rb = entry["robustness"]
        xs = [0.0, *rb["eps"]]
        t = rb["test"]
        mean = [t["clean"]["macro_f1"]["mean"]] + [v["mean"] for v in t["pgd"]["macro_f1"]]
        line = ax.plot(xs, 100 * np.asarray(mean), marker="o", label=_label(key))[0]
        attacked, clean = _attacked(entry, "pgd"), a.r.preds(a.arms.get(key, entry), "test")
        if y is not None and attacked is not None and clean is not None and clean.shape == attacked.shape[1:]:
            n = min(a.n_resamples, 500)
            cis = [stats.confidence(y, p, C, n)["macro_f1"] for p in [clean, *attacked]]
            ax.fill_between(
                xs, [100 * c.low for c in cis], [100 * c.high for c in cis], color=line.get_color(), alpha=0.15
            )
    ax.set_xlabel("ε (relative to the mean training-vector norm)")
    ax.set_ylabel("test macro-F1 under PGD (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    name = _save(fig, folder, "robustness_curves.png")
    return Figure(
        name, "Macro-F1 vs ε (PGD)", "mean over seeds; bands: 95% bootstrap over the test reports (500 resamples)"
    )


def pareto_figure(a: Analysis, folder: Path) -> Figure | None:
    """The search's trials on its two objectives, the front joined, the final arms' val scores marked."""
    p = a.r.summary.get("pareto")
    df = a.r.trials
    if not p or df is None or len(p["metrics"]) != 2 or any(m not in df.columns for m in p["metrics"]):
        return None
    mx, my = p["metrics"]
    search = df[df["stage"] == "search"]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.scatter(100 * search[mx].astype(float), 100 * search[my].astype(float), s=18, color="0.6", label="trials")
    front = sorted(((m["values"][mx], m["values"][my]) for m in p["front"]), key=lambda v: v[0])
    if front:
        fx, fy = zip(*front)
        ax.plot(100 * np.asarray(fx), 100 * np.asarray(fy), "o-", color="tab:red", label="Pareto front")
    final = df[df["stage"] == "final"]
    arm_col = "param:arm" if "param:arm" in final.columns else None
    if arm_col and mx in final.columns and my in final.columns:
        for _, row in final.iterrows():
            arm = str(row[arm_col])
            marker = "*" if arm == "best" else "s" if arm.startswith("front-") else "X"
            ax.scatter(
                100 * float(row[mx]), 100 * float(row[my]), marker=marker, s=90, edgecolor="k", label=f"{arm} (final)"
            )
    ax.set_xlabel(mx.replace("_", " ") + " (%)")
    ax.set_ylabel(my.replace("_", " ") + " (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    name = _save(fig, folder, "pareto.png")
    return Figure(
        name, "Pareto front", "search trials on both objectives (val); final-round arms retrained with the final seeds"
    )


def cost_table(a: Analysis) -> Table | None:
    df = a.r.trials
    if df is None or "robust_s" not in df.columns:
        return None
    rows = []
    for stage in ("search", "ablation", "final"):
        part = df[df["stage"] == stage]
        r = part["robust_s"].astype(float)
        col = "trial_s" if "trial_s" in part.columns else None
        if not r.notna().any():
            continue
        share = f"{100 * float(r.sum() / part[col].astype(float).sum()):.1f}%" if col else DASH
        rows.append([stage, f"median {seconds(float(r.median()))}", share])
    return Table(["stage", "robustness scoring per trial", "share of trial time"], rows) if rows else None


def compare_table(analyses: list[Analysis]) -> Table | None:
    rows = []
    for a in analyses:
        rb = a.r.summary.get("robustness")
        if not rb:
            rows.append([a.r.name, DASH, DASH, DASH, DASH])
            continue
        t = rb["test"]
        nat = [v["macro_f1"]["mean"] for v in (t.get("natural") or {}).values()]
        nat_s = pct(float(np.mean(nat))) if nat else DASH
        rows.append([a.r.name, _ms(t["clean"]["macro_f1"]), _ms(t["pgd"]["auc"]), _ms(t["fgm"]["auc"]), nat_s])
    if all(r[1] == DASH for r in rows):
        return None
    cols = ["study", "best: clean test macro-F1", "PGD area", "FGM area", "natural perturbations (mean macro-F1)"]
    return Table(cols, rows, "each study's best configuration, test split; see the curves table for what the areas are")


def section_parts(a: Analysis, folder: Path) -> tuple[list[Table], list[Figure], str] | None:
    """The robustness section's tables, figures and intro, or None when no arm was scored for robustness."""
    arms = arms_with_robustness(a)
    if not arms:
        return None
    tables = [curves_table(a, arms)]
    tables += [t for t in (paired_table(a, arms), natural_table(arms), cost_table(a)) if t]
    figures = [curves_figure(a, arms, folder)]
    front = pareto_figure(a, folder)
    if front:
        figures.append(front)
    intro = "How each final configuration holds up under attacks on its input vectors and natural text perturbations."
    p = a.r.summary.get("pareto")
    if p:
        intro += (
            f" The search had {len(p['metrics'])} objectives ({', '.join(p['metrics'])}); "
            f"{len(p['front'])} trials are on its Pareto front (marked in trials.parquet)."
        )
    return tables, figures, intro
