"""Reports rendered from small real studies (a search and an ablation), checked against their results files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from abexrat.report import stats
from abexrat.report.tables import pct, points
from tests.test_study import local_ray, study_file  # noqa: F401 - the module-scoped Ray fixture

SEARCH = """
space:
  adversarial.eps: {type: float, low: 0.01, high: 1.0, log: true}
  adversarial.p: {type: float, low: 0.0, high: 1.0}
  data.aug_ratio: {type: float, low: 0.0, high: 1.0}
budget: {num_samples: 5}
seeds_per_trial: 1
final: {seeds: 3, overrides: {model.ensemble: 2}}
baselines:
  no_adversarial: {adversarial.method: none}
"""
ABLATION = """
kind: ablation
ablation:
  factors:
    abex: {on: {data.aug_ratio: 1.0}, off: {data.aug_ratio: 0.0}}
    rat: {on: {adversarial.method: rat}, off: {adversarial.method: none}}
final: {seeds: 3}
"""


def _run(tmp: Path, tiny_dir: Path, name: str, body: str) -> Path:
    from abexrat.study.config import load_study
    from abexrat.study.runner import run_study

    path = study_file(tmp, tiny_dir, name, body)
    path.write_text(path.read_text().replace("epochs: 4,", "epochs: 3,").replace("mode: offline", "mode: disabled"))
    run_study(load_study(path), tmp / name)
    return tmp / name


@pytest.fixture(scope="module")
def studies(local_ray, tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> dict[str, Path]:  # noqa: ANN001, F811
    tmp = tmp_path_factory.mktemp("report-studies")
    return {
        "search": _run(tmp, tiny_dir, "tiny-report-search", SEARCH),
        "ablation": _run(tmp, tiny_dir, "tiny-report-ablation", ABLATION),
    }


@pytest.fixture(scope="module")
def reports(studies: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from abexrat.report import build_report

    out = tmp_path_factory.mktemp("reports")
    return {k: build_report(d, out / k, []).parent for k, d in studies.items()}


def _summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def md_table(md: str, section: str, first_column: str) -> dict[str, dict[str, str]]:
    """The Markdown table under ``## section`` whose first column is ``first_column``: row name -> column -> cell."""
    body = md.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    for block in re.split(r"\n\s*\n", body):
        lines = [x for x in block.strip().splitlines() if x.startswith("|")]
        if len(lines) < 2:
            continue
        cols = [c.strip() for c in lines[0].strip("|").split(" | ")]
        if cols[0] != first_column:
            continue
        rows = [[c.strip() for c in x.strip().strip("|").split(" | ")] for x in lines[2:]]
        return {r[0]: dict(zip(cols, r)) for r in rows}
    raise AssertionError(f"no table starting with {first_column!r} in section {section!r}")


def _interval(cell: str) -> tuple[float, float, float]:
    m = re.fullmatch(r"(-?[\d.]+) ± [\d.]+ \[(-?[\d.]+), (-?[\d.]+)\]", cell)
    assert m, cell
    return float(m[1]), float(m[2]), float(m[3])


def _p(cell: str) -> float:
    return 0.0 if cell == "< 0.001" else float(cell)


def test_headline_shows_the_summary_and_the_paper(studies: dict[str, Path], reports: dict[str, Path]) -> None:
    s = _summary(studies["search"])
    md, html = (reports["search"] / "report.md").read_text(), (reports["search"] / "index.html").read_text()
    t = s["test"]
    for text in (md, html):
        assert f"{pct(t['macro_f1']['mean'])} ± {pct(t['macro_f1']['std'])}" in text
        assert f"{pct(t['weighted_f1']['mean'])} ± {pct(t['weighted_f1']['std'])}" in text
        assert "90.32" in text and "92.82" in text
        assert s["best_config"]["method"] in text
        assert "The final round (the best and the baselines) trained with model.ensemble=2; the search did not." in text
    table = md_table(md, "Headline", "configuration")
    best = table["best"]
    for split in ("val", "test"):
        for metric, label in (("macro_f1", "macro-F1"), ("weighted_f1", "weighted-F1")):
            cell = best[f"{split} {label}"]
            assert cell.startswith(f"{pct(s[split][metric]['mean'])} ± {pct(s[split][metric]['std'])}")
    mean, low, high = _interval(best["test macro-F1"])
    assert low <= mean <= high  # the bootstrap interval holds the mean
    assert table["baseline no_adversarial"]["test macro-F1"].startswith(
        pct(s["baselines"]["no_adversarial"]["test"]["macro_f1"]["mean"])
    )
    paper = next(v for k, v in table.items() if "paper" in k)
    assert paper["test macro-F1"] == "90.32" and paper["test weighted-F1"] == "92.82"
    vs = md_table(md, "Best against the baselines", "best against")["baseline no_adversarial"]
    delta = s["test"]["macro_f1"]["mean"] - s["baselines"]["no_adversarial"]["test"]["macro_f1"]["mean"]
    assert vs["Δ test macro-F1"].startswith(points(delta)) and 0 <= _p(vs["p"]) <= 1


def test_ablation_deltas_are_the_arms_means_against_full(studies: dict[str, Path], reports: dict[str, Path]) -> None:
    s = _summary(studies["ablation"])
    table = md_table((reports["ablation"] / "report.md").read_text(), "Ablation", "arm")
    assert set(table) == set(s["arms"])
    full = s["arms"]["full"]["test"]["macro_f1"]["mean"]
    assert table["full"]["Δ test macro-F1 vs full"] == "reference"
    for arm, row in table.items():
        a = s["arms"][arm]["test"]["macro_f1"]
        mean, low, high = _interval(row["test macro-F1"])
        assert f"{mean:.2f}" == pct(a["mean"]) and low <= mean <= high
        if arm != "full":
            m = re.fullmatch(r"([+-][\d.]+) \[(-?[\d.]+), (-?[\d.]+)\]", row["Δ test macro-F1 vs full"])
            assert m and m[1] == points(a["mean"] - full), row
            assert 0 <= _p(row["p"]) <= 1


def test_paired_tests_and_intervals_on_the_real_predictions(studies: dict[str, Path]) -> None:
    s = _summary(studies["ablation"])
    y, C = np.asarray(s["test_labels"]), len(s["classes"])
    full = np.asarray(s["arms"]["full"]["test_pred"])
    per_seed = stats.per_seed(y, full, C)
    for metric in stats.METRICS:  # the numpy scores are sklearn's, as the study stored them
        assert per_seed[metric] == pytest.approx(s["arms"]["full"]["test"][metric]["per_seed"])
    same = stats.paired(y, full, full, C)
    assert same.delta == 0 and same.p == 1 and same.low == same.high == 0
    other = np.asarray(s["arms"]["abex=off+rat=off"]["test_pred"])
    t = stats.paired(y, other, full, C)
    assert t.delta == pytest.approx(
        s["arms"]["abex=off+rat=off"]["test"]["macro_f1"]["mean"] - s["arms"]["full"]["test"]["macro_f1"]["mean"]
    )
    assert 0 < t.p <= 1 and t.low <= t.delta <= t.high
    perfect = stats.confidence(y, np.tile(y, (3, 1)), C)
    assert all(ci.low == ci.high == ci.mean == 1.0 for ci in perfect.values())  # identical predictions: no width
    ci = stats.confidence(y, full, C)["macro_f1"]
    assert ci.low < ci.mean < ci.high


def test_search_importances_and_figures(studies: dict[str, Path], reports: dict[str, Path]) -> None:
    from abexrat.report import search
    from abexrat.report.results import load

    r = load(studies["search"])
    study, why = search.optuna_study(r)
    assert study is not None, why
    assert len(study.trials) == 5
    imp = search.importances(study)
    assert set(imp) == {"adversarial.eps", "adversarial.p", "data.aug_ratio"}
    assert sum(imp.values()) == pytest.approx(1.0, abs=1e-6)
    table = md_table((reports["search"] / "report.md").read_text(), "Search", "parameter")
    assert {k: float(v["fANOVA importance"]) for k, v in table.items()} == pytest.approx(imp, abs=1e-3)
    for name in ("importances.png", "history.png", "eps_p.png", "parallel.png", "per_class_f1.png", "confusion.png"):
        assert (reports["search"] / name).stat().st_size > 5000, name
    # an ablation has no search stage: no search figures, and it says so
    assert not (reports["ablation"] / "history.png").exists()
    assert "No search figures" in (reports["ablation"] / "report.md").read_text()


def test_per_class_and_cost_tables_match_the_files(studies: dict[str, Path], reports: dict[str, Path]) -> None:
    import pandas as pd

    s = _summary(studies["search"])
    md = (reports["search"] / "report.md").read_text()
    per_class = md_table(md, "Per class", "class")
    counts = np.bincount(s["test_labels"], minlength=len(s["classes"]))
    for c, name in enumerate(s["classes"]):
        assert per_class[name]["test reports"] == str(counts[c])
        assert per_class[name]["best"] == pct(s["test"]["per_class_f1"][name])
        assert per_class[name]["baseline no_adversarial"] == pct(
            s["baselines"]["no_adversarial"]["test"]["per_class_f1"][name]
        )
    cost = md_table(md, "Cost", "")
    assert cost["trials"]["value"] == f"{s['trials']} ({s['trials_failed']} failed)"
    trials = pd.read_parquet(studies["search"] / "trials.parquet")
    cpu_h = trials["trial_s"].sum() * s["resources"]["cpu_per_trial"] / 3600
    assert cost["CPU-hours (trials × CPUs per trial)"]["value"] == f"{cpu_h:.3f}"


def test_every_image_exists(reports: dict[str, Path]) -> None:
    for folder in reports.values():
        html = (folder / "index.html").read_text()
        srcs = re.findall(r'<img src="([^"]+)"', html)
        assert srcs and all((folder / src).is_file() for src in srcs)
        md_srcs = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (folder / "report.md").read_text())
        assert sorted(md_srcs) == sorted(srcs)


def test_cli_compare_and_bad_input(studies: dict[str, Path], tmp_path: Path, cli) -> None:  # noqa: ANN001
    out = tmp_path / "reports" / "both"
    r = cli("report", studies["search"], "--compare", studies["ablation"], "--out", out)
    assert r.code == 0, r.stderr
    assert str(out / "index.html") in " ".join(r.stdout.split())
    table = md_table((out / "report.md").read_text(), "Studies compared", "study")
    for folder in studies.values():
        s = _summary(folder)
        row = table[s["study"]]
        assert row["test macro-F1"].startswith(pct(s["test"]["macro_f1"]["mean"]))
        assert row["trials"] == str(s["trials"])
    a, b = (_summary(studies[k])["test"]["macro_f1"]["mean"] for k in ("search", "ablation"))
    assert table["tiny-report-ablation"]["Δ test macro-F1 vs tiny-report-search"].startswith(points(b - a))
    assert (out / "compare.png").is_file()
    # a rerun replaces the report in place
    assert cli("report", studies["search"], "--out", out).code == 0
    assert "Studies compared" not in (out / "report.md").read_text()

    r = cli("report", tmp_path / "nowhere", "--out", tmp_path / "x")
    assert r.code == 2 and "nowhere" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "empty").mkdir()
    r = cli("report", tmp_path / "empty", "--out", tmp_path / "x")
    assert r.code == 2 and "summary.json" in r.stderr
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "summary.json").write_text('{"study": "x"}')
    r = cli("report", tmp_path / "bad", "--out", tmp_path / "x")
    assert r.code == 2 and "summary.json: not a study summary" in " ".join(r.stderr.split())
    assert not (tmp_path / "x").exists()
    # --out never replaces a folder that is not a report (here: the study itself)
    before = sorted(p.name for p in studies["ablation"].iterdir())
    r = cli("report", studies["search"], "--out", studies["ablation"])
    assert r.code == 2 and "is not a report folder" in " ".join(r.stderr.split())
    assert sorted(p.name for p in studies["ablation"].iterdir()) == before


def test_study_report_from_the_runners_summary(studies: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    """What ``study run`` calls before writing summary.json: the report from the in-memory summary."""
    from abexrat.report import study_report

    folder = studies["search"]
    s = _summary(folder)
    # with validation predictions and labels stored, the val cells get their intervals too
    s["val"], s["val_labels"], s["val_pred"] = s["test"], s["test_labels"], s["test_pred"]  # a stand-in split
    files = study_report(folder, s)
    assert {f.name for f in files} >= {"index.html", "report.md", "per_class_f1.png", "history.png"}
    best = md_table((folder / "report" / "report.md").read_text(), "Headline", "configuration")["best"]
    mean, low, high = _interval(best["val macro-F1"])
    assert f"{mean:.2f}" == pct(s["val"]["macro_f1"]["mean"]) and low <= mean <= high
    # a report problem never fails the study: a warning, no files
    assert study_report(folder, {"study": "x"}) == []
    assert "could not be written" in capsys.readouterr().err
