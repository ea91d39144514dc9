"""The benchmarks' own logic on a tiny problem: FLOPs counted from the executed matmuls equal the
analytic count, and the floor replays them."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from abexrat.config import TrainConfig  # noqa: E402


def _data() -> tuple:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    X = (rng.normal(size=(200, 24)) + 3.0 * np.eye(4, 24)[y]).astype(np.float32)
    cfg = TrainConfig.model_validate(
        {
            "model": {"hidden": [40], "dropout": 0.2},
            "loss": {"name": "focal", "gamma": 2.0},
            "train": {"epochs": 1, "batch_size": 32},
            "adversarial": {"method": "rat", "eps": 0.3, "p": 0.5},
        }
    )
    return X, y, X[:50].copy(), y[:50].copy(), 4, cfg


def test_trainer_bench_counts_what_runs_and_replays_it() -> None:
    import bench_trainer

    data = _data()
    for method in ("rat", "none"):
        r = bench_trainer.bench(method, S=2, threads=1, epochs=1, repeats=1, data=data)
        assert r["flops_counted"] == r["flops_analytic"]["total"]
        assert r["steps"] == 7 and (r["attack_steps"] > 0) == (method == "rat")
        assert r["trainer_flops_fraction"] > 0 and r["floor_gflops"] > 0


def test_optuna_peer_searches_the_study_space_in_one_process(tmp_path, tiny_dir) -> None:  # noqa: ANN001
    """bench_study's one-process peer: the study's space, seeds and sampler through study.optimize(n_jobs)."""
    import bench_study
    from optuna_study import run_optuna

    overrides = {
        "data": {"dataset": str(tiny_dir), "aug_pool": "published"},
        "encoder": {"name": "hybrid", "options": {"tfidf_dim": 32, "tfidf_min_df": 1}},
        "model": {"hidden": [32]},
    }
    study = bench_study.make_study("optuna-peer", 4, 2, 2, tmp_path, trainer_overrides=overrides)
    res = run_optuna(study, n_jobs=2, trials=4)
    assert res["trials"] == 4 and res["trials_after_budget"] == 0 and res["n_jobs"] == 2
    assert 0.0 < res["best_val_macro_f1"] <= 1.0
    assert res["trials_per_hour"] == res["trials"] / res["search_wall_s"] * 3600
    assert res["sum_train_s"] > 0.0 and res["study_overhead_fraction"] < 1.0
    # a time budget: nothing that ends after it counts
    timed = run_optuna(study, n_jobs=2, timeout_s=0.5)
    assert timed["search_wall_s"] <= 0.5 and timed["trials"] + timed["trials_after_budget"] >= 1
