"""``build_report``: a study folder (and others to compare) -> ``index.html``, ``report.md`` and PNG figures.

Everything is written into a temporary folder beside ``out`` which then replaces ``out``, so a
reader sees the old report or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from abexrat.core.errors import UserError
from abexrat.report import figures, search, tables
from abexrat.report.paper import PAPER_NAME, PAPER_TEST
from abexrat.report.results import Results, load
from abexrat.report.stats import N_RESAMPLES


@dataclass
class Section:
    id: str
    title: str
    intro: str = ""
    tables: list[tables.Table] = field(default_factory=list)
    figures: list[figures.Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def build_report(
    study_dir: Path,
    out: Path,
    compare: list[Path] | None = None,
    n_resamples: int = N_RESAMPLES,
    summary: dict[str, Any] | None = None,
) -> Path:
    """Write the report of ``study_dir`` into ``out``; returns the path of ``out/index.html``.

    ``summary`` stands in for ``study_dir/summary.json`` when the runner has not written it yet.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "report.md").is_file())):
        raise UserError(f"{out}: exists and is not a report folder; choose another --out")
    main = tables.Analysis(load(study_dir, summary), n_resamples)
    others = [tables.Analysis(load(c), n_resamples) for c in compare or []]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        sections = _sections(main, others, tmp)
        context = _context(main, others, sections)
        (tmp / "index.html").write_text(_render("report.html.j2", context, html=True), encoding="utf-8")
        (tmp / "report.md").write_text(_render("report.md.j2", context, html=False), encoding="utf-8")
        os.chmod(tmp, 0o755)
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / "index.html"


def report_files(index: Path) -> list[Path]:
    """The files of a written report (index.html, report.md, the PNGs), e.g. for a W&B artifact."""
    return sorted(p for p in Path(index).parent.iterdir() if p.is_file())


def _replace(tmp: Path, out: Path) -> None:
    if not out.exists():
        os.replace(tmp, out)
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    with contextlib.suppress(OSError):
        shutil.rmtree(old)


# ---------------------------------------------------------------- content


def _sections(main: tables.Analysis, others: list[tables.Analysis], folder: Path) -> list[Section]:
    r = main.r
    intro = "The best configuration, scored once on test with the final seeds."
    final_overrides = ((r.study or {}).get("final") or {}).get("overrides") or {}
    if final_overrides:
        shown = ", ".join(f"{k}={v}" for k, v in final_overrides.items())
        intro += f" The final round (the best and the baselines) trained with {shown}; the search did not."
    out = [Section("headline", "Headline", intro, [tables.best_config(r), tables.headline(main)])]
    vs = tables.versus_baselines(main)
    if vs:
        out.append(Section("baselines", "Best against the baselines", tables=[vs]))
    abl = tables.ablation(main)
    if abl:
        out.append(
            Section(
                "ablation", "Ablation", "Each arm against the full method on the same test reports and seeds.", [abl]
            )
        )
    out.append(
        Section(
            "classes",
            "Per class",
            "The rare classes carry most of the macro-F1 differences.",
            [tables.per_class(main)],
            [f for f in (figures.per_class_f1(main, folder), figures.confusion(main, folder)) if f],
        )
    )
    from abexrat.report import robustness

    robust = robustness.section_parts(main, folder)
    if robust:
        out.append(Section("robustness", "Robustness", robust[2], robust[0], robust[1]))
    out.append(_search_section(main, folder))
    out.append(Section("cost", "Cost", tables=[tables.cost(r)]))
    if others:
        out.append(
            Section(
                "compare",
                "Studies compared",
                tables=[t for t in (tables.compare(main, others), robustness.compare_table([main, *others])) if t],
                figures=[figures.compare([main, *others], folder)],
            )
        )
    notes = main.notes + [n for a in others for n in a.notes]
    if notes:
        out.append(Section("checks", "Consistency checks", notes=notes))
    return out


def _search_section(a: tables.Analysis, folder: Path) -> Section:
    sec = Section("search", "Search")
    study, why = search.optuna_study(a.r)
    if study is None:
        sec.notes.append(f"No search figures: {why}.")
        return sec
    metric, _ = search.objective(a.r)
    name = metric.partition("_")[2]
    target = f"{metric.split('_')[0]} {tables.METRIC_NAMES.get(name, name.replace('_', ' '))}"
    imp = search.importances(study)
    rows = search.search_rows(a.r)
    sec.intro = f"{len(study.trials)} completed of {len(rows)} search trials."
    best = {k: v for k, v in study.best_trial.params.items()}
    if imp:
        sec.tables.append(tables.importances(imp, best))
    else:
        sec.notes.append("fANOVA importances could not be computed (e.g. every trial scored the same).")
    sec.figures = [
        f
        for f in (
            figures.importances(imp, folder),
            figures.history(study, folder, target),
            figures.eps_p_map(a, folder, target),
            figures.parallel(study, folder, target),
        )
        if f
    ]
    return sec


def _context(main: tables.Analysis, others: list[tables.Analysis], sections: list[Section]) -> dict[str, Any]:
    s = main.r.summary
    b = s["best_config"]
    return {
        "study": main.r.name,
        "kind": main.r.kind,
        "folder": str(main.r.folder),
        "compared": [a.r.name for a in others],
        "headline": {
            "method": b.get("method"),
            "eps": tables.number(b.get("eps")),
            "p": tables.number(b.get("p")),
            "r": tables.number(b.get("aug_ratio")),
            "test_macro": tables.mean_std(s["test"], "macro_f1"),
            "test_weighted": tables.mean_std(s["test"], "weighted_f1"),
            "paper_macro": tables.pct(PAPER_TEST["macro_f1"]),
            "paper_weighted": tables.pct(PAPER_TEST["weighted_f1"]),
            "seeds": len(s["test"]["macro_f1"].get("per_seed", [])),
        },
        "paper": PAPER_NAME,
        "sections": sections,
    }


def _render(template: str, context: dict[str, Any], html: bool) -> str:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("abexrat", "report/templates"),
        autoescape=html,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    if not html:
        env.filters["cell"] = lambda v: str(v).replace("|", "\\|").replace("\n", " ")
    return env.get_template(template).render(**context)


def study_report(study_dir: Path, summary: dict[str, Any] | None = None) -> list[Path]:
    """The report ``abexrat study run`` writes at the end (``STUDY_DIR/report``); its files, or [] on failure.

    ``summary``: the summary about to be written (see :func:`build_report`). A report problem
    never fails a finished study: it is printed as a warning instead.
    """
    try:
        return report_files(build_report(study_dir, Path(study_dir) / "report", [], summary=summary))
    except Exception as e:  # noqa: BLE001 - the study's results are already safe on disk
        import sys

        print(f"warning: the report of {study_dir} could not be written: {e}", file=sys.stderr)
        return []


__all__ = ["Results", "Section", "build_report", "report_files", "study_report"]
