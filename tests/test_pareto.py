"""Studies with several objectives: Pareto flags on hand-made points, and a two-objective study end
to end on real Ray, real Optuna (multi-objective TPE) and W&B offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from abexrat.core.errors import UserError
from abexrat.study.pareto import mark, pareto_mask
from tests.test_study import local_ray, study_file  # noqa: F401 - the module-scoped Ray fixture
from tests.wandb_files import read_runs


def test_pareto_flags_on_hand_made_points() -> None:
    pts = np.array(
        [
            [0.80, 0.50],  # 0: front (best clean)
            [0.70, 0.60],  # 1: front
            [0.60, 0.70],  # 2: front (best robust)
            [0.65, 0.55],  # 3: dominated by 1
            [0.70, 0.60],  # 4: a tie with 1: neither dominates, both on the front
            [0.80, 0.40],  # 5: dominated by 0 (equal clean, worse robust)
            [np.nan, 0.99],  # 6: not finished: never on the front, dominates nothing
        ]
    )
    assert pareto_mask(pts, ["max", "max"]).tolist() == [True, True, True, False, True, False, False]
    # minimizing the second objective: 5 (top clean, lowest second) dominates every other point
    assert pareto_mask(pts, ["max", "min"]).tolist() == [False, False, False, False, False, True, False]
    assert pareto_mask(pts[:1], ["max", "max"]).tolist() == [True]
    df = pd.DataFrame({"trial_id": list("abcdefg"), "m1": pts[:, 0], "m2": pts[:, 1], "status": ["TERMINATED"] * 7})
    df.loc[1, "status"] = "ERROR"  # an errored trial's values are not a result: 3 and 4 move up
    ids = mark(df, ["m1", "m2"], ["max", "max"])
    assert df["pareto"].tolist() == [True, False, True, False, True, False, False]
    assert ids == ["a", "e", "c"]  # by the first objective, best first


def test_an_objective_lists_metrics_with_modes(tmp_path: Path, tiny_dir: Path) -> None:
    from abexrat.study.config import load_study

    body = "space:\n  adversarial.eps: {type: float, low: 0.01, high: 1.0}\n"
    ok = load_study(
        study_file(tmp_path, tiny_dir, "ok", body + "objective: {metric: [val_macro_f1, val_robust_macro_f1]}\n")
    )
    assert ok.objective.metrics == ["val_macro_f1", "val_robust_macro_f1"] and ok.objective.modes == ["max", "max"]
    assert ok.objective.metric == "val_macro_f1" and ok.objective.multi
    single = load_study(study_file(tmp_path, tiny_dir, "single", body))
    assert single.objective.metrics == ["val_macro_f1"] and not single.objective.multi
    for bad, key in (
        ("objective: {metric: [val_macro_f1, val_robust_macro_f1], mode: [max]}", "one direction per metric"),
        ("objective: {metric: [val_macro_f1, val_macro_f1]}", "named twice"),
        ("objective: {metric: [val_macro_f1, val_nope]}", "objective.metric"),
        ("objective: {metric: val_robust_macro_f1}\ncv: {folds: 2}", "cv trials score folds"),
    ):
        with pytest.raises(UserError, match=key):
            load_study(study_file(tmp_path, tiny_dir, "bad", body + bad + "\n"))


TWO = """
space:
  adversarial.method: {type: categorical, choices: [none, fgm, pgd]}
  adversarial.eps: {type: float, low: 0.05, high: 1.0, log: true}
objective:
  metric: [val_macro_f1, val_robust_macro_f1]
  mode: [max, max]
  front_size: 2
budget: {num_samples: 6}
seeds_per_trial: 1
final: {seeds: 2}
baselines:
  no_adversarial: {adversarial.method: none}
"""


def test_a_two_objective_study_end_to_end(local_ray, tmp_path: Path, tiny_dir: Path) -> None:  # noqa: ANN001, F811
    from abexrat.study.config import load_study
    from abexrat.study.runner import run_study

    path = study_file(tmp_path, tiny_dir, "tiny-pareto", TWO)
    path.write_text(path.read_text().replace("epochs: 4,", "epochs: 3,"))
    s = run_study(load_study(path), tmp_path / "out")
    out = tmp_path / "out"
    df = pd.read_parquet(out / "trials.parquet")
    search = df[df["stage"] == "search"].set_index("trial_id")
    assert len(search) == 6 and search["val_robust_macro_f1"].notna().all()
    # the flags are the front of the two objectives as the table holds them
    done = search[search["status"] == "TERMINATED"]
    expect = pareto_mask(done[["val_macro_f1", "val_robust_macro_f1"]].to_numpy(), ["max", "max"])
    assert done["pareto"].astype(bool).tolist() == expect.tolist()
    p = s["pareto"]
    assert p["metrics"] == ["val_macro_f1", "val_robust_macro_f1"] and p["modes"] == ["max", "max"]
    assert sorted(m["trial_id"] for m in p["front"]) == sorted(done.index[expect])
    for m in p["front"]:
        assert m["values"]["val_robust_macro_f1"] == pytest.approx(done.loc[m["trial_id"], "val_robust_macro_f1"])
    # the best (by clean macro-F1) is on the front; up to front_size others were retrained with the final seeds
    assert sum(m["arm"] == "best" for m in p["front"]) == 1
    retrained = [m for m in p["front"] if m["arm"] and m["arm"] != "best"]
    assert len(retrained) == min(2, len(p["front"]) - 1)
    for m in retrained:
        assert len(m["test"]["macro_f1"]["per_seed"]) == 2 and m["robustness"]["test"]["pgd"]["auc"]["mean"] >= 0
    final = df[df["stage"] == "final"]
    assert len(final) == 1 + len(retrained) + 1  # best, front members, the baseline
    # robustness of every final arm is in the summary, scored on test
    assert s["robustness"]["test"]["clean"]["macro_f1"]["mean"] == pytest.approx(s["test"]["macro_f1"]["mean"])
    assert "robustness" in s["baselines"]["no_adversarial"]
    # W&B (offline) logged both objectives for every search trial, equal to the table's
    runs = [r for r in read_runs(out / "wandb") if r.job_type == "search"]
    assert len(runs) == 6
    for r in runs:
        row = search.loc[r.config["trial_id"]]
        for metric in ("val_macro_f1", "val_robust_macro_f1"):
            assert r.summary[metric] == pytest.approx(row[metric])
    # the report has its robustness section
    md = (out / "report" / "report.md").read_text()
    assert "## Robustness" in md and "Pareto front" in md and (out / "report" / "robustness_curves.png").exists()
    pgd_area = f"{100 * s['robustness']['test']['pgd']['auc']['mean']:.2f}"
    assert "| best | PGD | " in md and pgd_area in md
    # --compare shows each study's robustness
    from abexrat.report import build_report

    cmp = (build_report(out, tmp_path / "cmp", [out]).parent / "report.md").read_text()
    assert "best: clean test macro-F1" in cmp.split("## Studies compared")[1] and pgd_area in cmp
