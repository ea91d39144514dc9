"""A small study on the GPU path, end to end, as ``studies/rat_search_gpu.yaml`` runs one:
``train.device: cuda``, a quarter of a GPU per trial (``resources.gpu``), and several configurations
per Tune trial (``budget.configs_per_trial``) trained as one batched model, on the embedded Ray the
study starts itself.

It needs a CUDA GPU that torch sees and skips elsewhere; a GPU machine's check script runs it with
``pytest tests/test_gpu_path.py``.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from tests.test_study import study_file
from tests.wandb_files import read_runs

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU that torch sees")

N_CONFIGS, PER_TRIAL, GPU_SHARE = 8, 4, 0.25


def test_a_small_study_trains_grouped_configurations_on_gpu_shares(tmp_path: Path, tiny_dir: Path) -> None:
    import ray

    from abexrat.study.config import load_study
    from abexrat.study.runner import run_study

    ray.shutdown()
    os.environ.pop("RAY_ADDRESS", None)
    path = study_file(
        tmp_path,
        tiny_dir,
        "tiny-gpu",
        f"""
space:
  adversarial.eps: {{type: float, low: 0.01, high: 1.0, log: true}}
  adversarial.p: {{type: float, low: 0.0, high: 1.0}}
budget: {{num_samples: {N_CONFIGS}, configs_per_trial: {PER_TRIAL}}}
seeds_per_trial: 2
resources: {{cpu: 1, gpu: {GPU_SHARE}}}
final: {{seeds: 2}}
baselines:
  no_adversarial: {{adversarial.method: none}}
""",
    )  # W&B offline
    # every trial, search and final, trains on CUDA (train.device: cuda fails where torch sees no GPU)
    path.write_text(path.read_text().replace("lr: 0.003}", "lr: 0.003, device: cuda}"))
    out = tmp_path / "out"
    summary = run_study(load_study(path), out)  # starts (and stops) its own Ray, which finds the GPU

    assert summary["resources"]["gpu_per_trial"] == GPU_SHARE and summary["resources"]["cluster_gpus"] >= 1
    assert summary["best_config"]["train_config"]["train"]["device"] == "cuda"
    table = pd.read_parquet(out / "trials.parquet")
    search = table[table["stage"] == "search"]
    final = table[table["stage"] == "final"]
    assert table["trial_id"].is_unique and len(search) == N_CONFIGS and len(final) == 2
    # one row per configuration: <tune id>-c<j>, PER_TRIAL configurations to each Tune trial
    tune_ids = Counter(t.rsplit("-c", 1)[0] for t in search["trial_id"])
    assert sorted(tune_ids.values()) == [PER_TRIAL] * (N_CONFIGS // PER_TRIAL), search["trial_id"].tolist()
    assert (table["status"] == "TERMINATED").all() and table["val_macro_f1"].between(0, 1).all()
    assert search[["param:adversarial.eps", "param:adversarial.p"]].drop_duplicates().shape[0] == N_CONFIGS
    assert summary["trials"] == N_CONFIGS and summary["trials_failed"] == 0 and summary["trial_restarts"] == []
    assert 0 <= summary["test"]["macro_f1"]["mean"] <= 1 and len(summary["test"]["macro_f1"]["per_seed"]) == 2
    # the best model trained on the GPU serves from its run folder
    best = json.loads((out / "best" / "metrics.json").read_text())
    assert best["test"]["macro_f1"]["per_seed"] == summary["test"]["macro_f1"]["per_seed"]
    # W&B (offline): one run per configuration, each with the cuda train config it trained
    runs = [r for r in read_runs(out / "wandb") if r.job_type != "summary"]
    assert Counter(r.config["trial_id"] for r in runs) == Counter(table["trial_id"])
    assert {r.config["train_config"]["train"]["device"] for r in runs} == {"cuda"}
