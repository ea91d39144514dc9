"""The benchmarks' own logic on a tiny problem: FLOPs counted from the executed matmuls equal the
analytic count, and the floor replays them."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

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
        assert len(r["products_in_order_s"]) == len(r["update_s"]) == 1
        assert r["products_in_order_s"][0] > 0 and r["update_s"][0] > 0
        ceiling = r["floor_s"][0] / (r["products_in_order_s"][0] + r["update_s"][0])
        assert r["trainer_flops_fraction_ceiling"] == pytest.approx(ceiling)


def test_census_records_the_calls_in_the_order_they_ran() -> None:
    import bench_trainer
    import torch

    a, b = torch.randn(2, 3, 4), torch.randn(2, 4, 5)
    order: list = []
    calls, flops = bench_trainer.census(lambda: (torch.bmm(a, b), torch.mm(a[0], b[0]), torch.bmm(a, b)), order=order)
    assert [k[0].overloadpacket.__name__ for k in order] == ["bmm", "mm", "bmm"]
    assert calls == {order[0]: 2, order[1]: 1} and order[0] == order[2]
    assert flops == 2 * (2 * 2 * 3 * 4 * 5) + 2 * 3 * 4 * 5
    assert bench_trainer.in_order_time(order, threads=1) > 0


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


def test_transformer_bench_peers_agree_and_the_census_counts_the_products(tmp_path, osha_dir, monkeypatch) -> None:  # noqa: ANN001
    """bench_transformer's pieces on a random 2-layer BERT, in this process: every peer encodes, the
    fp32 ones agree with the reference, and the counted FLOPs are the analytic count of the padded
    batches."""
    pytest.importorskip("sentence_transformers", reason="the bench extra: pip install -e .[bench]")
    pytest.importorskip("onnxruntime", reason="the bench extra")
    from bench_embed import build_bert
    from bench_transformer import BATCH, PEERS, REFERENCE, _encoder, export_onnx, floor, osha_sample
    from transformers import AutoTokenizer

    monkeypatch.setenv("ABEXRAT_DATA_DIR", str(osha_dir))
    texts, _ = osha_sample(40)
    assert len(set(texts)) == 40
    folder = tmp_path / "bert"
    build_bert(folder, texts, hidden=32, layers=2, heads=2, vocab=2000)
    onnx = tmp_path / "model.onnx"
    _, fused = export_onnx(folder, onnx)
    assert onnx.is_file() and fused is True
    vecs = {peer: _encoder(peer, str(folder), folder, onnx, 1)[0](texts) for peer in PEERS}
    for peer, v in vecs.items():
        assert v.shape == (40, 32), peer
        np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    cos = {peer: float((v * vecs[REFERENCE]).sum(1).min()) for peer, v in vecs.items()}
    assert cos["sentence-transformers"] > 0.9999 and cos["onnxruntime"] > 0.9999, cos

    # The census: per batch of b texts padded to L (a multiple of 16), per layer 2·b·L·(4h² + 2·h·4h)
    # in the linears and 4·b·L²·h in attention, and the pooler's 2·b·h² on [CLS].
    tok = AutoTokenizer.from_pretrained(folder)
    lengths = sorted((len(x) for x in tok(texts, truncation=True, max_length=512)["input_ids"]), reverse=True)
    h, layers, expected = 32, 2, 0
    for i in range(0, len(lengths), BATCH):
        b, L = len(lengths[i : i + BATCH]), -(-lengths[i] // 16) * 16
        expected += layers * (2 * b * L * (4 * h * h + 2 * h * 4 * h) + 4 * b * L * L * h) + 2 * b * h * h
    got = floor(str(folder), texts, 1, encode_s=1.0)
    assert got["flops_counted"] == expected
    assert got["tokens"] == sum(lengths) and 0.0 <= got["padding_fraction"] < 1.0
    assert got["embed_flops_fraction"] == got["floor_s"] > 0.0  # encode_s = 1


def test_transformer_bench_cli_writes_the_run_keys(tmp_path, osha_dir) -> None:  # noqa: ANN001
    """The script end to end (a peer and the reference, each in its own process): run.py's keys."""
    pytest.importorskip("sentence_transformers", reason="the bench extra: pip install -e .[bench]")
    import json
    import os
    import subprocess

    from bench_embed import build_bert
    from bench_transformer import osha_sample

    os.environ.setdefault("ABEXRAT_DATA_DIR", str(osha_dir))
    folder = tmp_path / "bert"
    build_bert(folder, osha_sample(8)[0], hidden=32, layers=1, heads=2, vocab=500)
    out = tmp_path / "transformer.json"
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_transformer.py"
    cmd = [sys.executable, str(script), "--model", str(folder), "--texts", "8", "--threads", "1"]
    cmd += ["--peers", "abexrat,sentence-transformers", "--json", str(out)]
    env = {**os.environ, "ABEXRAT_DATA_DIR": str(osha_dir)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    rates = res["embed_texts_per_s"]
    assert set(rates) == {"abexrat", "sentence-transformers", "abexrat-fp32"} and all(v > 0 for v in rates.values())
    assert res["speedup_vs_sentence_transformers"] == rates["abexrat"] / rates["sentence-transformers"]
    assert res["speedup_vs_onnxruntime"] is None  # not run: no number made up
    assert res["min_cosine"]["abexrat-fp32"] > 0.99999 and res["min_cosine"]["sentence-transformers"] > 0.9999
    assert res["embed_flops_fraction"] > 0.0 and res["floors"][0]["clock"] == "process CPU time"
