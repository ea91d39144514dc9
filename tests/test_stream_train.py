"""``abexrat train`` on a dataset file too large for memory: Ray Data scans and encodes it, training
reads the vectors from disk; a rerun encodes nothing; bad rows end in one line and exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import make_report


@pytest.fixture(scope="module")
def local_ray():  # noqa: ANN201
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _rows(tiny_dir: Path) -> list[dict]:
    """The tiny dataset's originals as one user file (no synthetic rows, no splits)."""
    rows = []
    for split in ("train", "val", "test"):
        rows += [r for r in json.loads((tiny_dir / f"{split}.json").read_text()) if "-aug-" not in str(r.get("id"))]
    return [
        {"id": str(r.get("id", r.get("idx"))), "title": r["title"], "summary": r["summary"], "gold": r["gold"]}
        for r in rows
    ]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_train_streams_a_file_too_large_for_memory(
    local_ray,  # noqa: ANN001
    tiny_dir: Path,
    tiny_config: Path,
    cli,  # noqa: ANN001
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import abexrat.data
    from abexrat.embed import NoCache, embed_texts
    from abexrat.encoders import load_encoder
    from abexrat.feature_files import open_split
    from abexrat.stream_train import split_of
    from abexrat.text import compose_text

    rows = _rows(tiny_dir)
    data = _write(tmp_path / "reports.jsonl", rows)
    # This machine "has" 100 bytes free: the file cannot be read whole, so train streams it.
    monkeypatch.setattr(abexrat.data, "available_memory", lambda: 100)
    args = ["train", tiny_config, "--set", f"data.dataset={data}", "--set", "data.aug_pool=none"]
    args += ["--set", "data.untitled_copies=true", "--set", "data.val_fraction=0.2", "--set", "data.test_fraction=0.2"]
    r = cli(*args, "--out", tmp_path / "run")
    assert r.code == 0, r.stderr
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    counts = {s: sum(c.values()) for s, c in m["streamed"]["rows"].items()}
    assert sum(counts.values()) == len(rows) == 133 + 42 + 42
    # Each row's split is the seeded hash of its text, at the configured fractions.
    texts = [compose_text(r["title"], r["summary"]) for r in rows]
    want = [split_of(t, 0, 0.2, 0.2) for t in texts]
    assert [counts[s] for s in ("train", "val", "test")] == [want.count(k) for k in range(3)]
    assert 0.45 * len(rows) < counts["train"] < 0.75 * len(rows)
    # Training rows: every original plus an untitled copy of each titled one (train rows have titles).
    titled = sum(1 for r, s in zip(rows, want) if s == 0 and r["title"])
    assert titled > 0 and m["train_size"] == counts["train"] + titled
    assert m["timings"]["texts_encoded"] == len(rows) and m["timings"]["texts_cached"] == 0
    assert m["val"]["macro_f1"]["mean"] > 0.7 and m["test"]["macro_f1"]["mean"] > 0.7
    assert sum(map(sum, m["test"]["confusion"]["per_seed"][0])) == counts["test"]
    # The vectors on disk are the run's encoder applied to each split's texts (order aside).
    folder = Path(m["streamed"]["features"])
    enc = load_encoder(tmp_path / "run" / "encoder")
    for k, split in enumerate(("val", "test")):
        X, y = open_split(folder, split)
        mine = [i for i, s in enumerate(want) if s == k + 1]
        ref = embed_texts(enc, [texts[i] for i in mine], cache=NoCache())
        order = lambda A: A[np.lexsort(A.T[::-1])]  # noqa: E731
        np.testing.assert_allclose(order(np.asarray(X)), order(ref), atol=1e-6)
        assert sorted(y.tolist()) == sorted(m["classes"].index(rows[i]["gold"]) for i in mine)

    # A rerun of the same command encodes nothing: the features are found by their content key.
    r = cli(*args, "--out", tmp_path / "again")
    assert r.code == 0, r.stderr
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert again["timings"]["texts_encoded"] == 0 and again["timings"]["texts_cached"] == len(rows)
    assert again["test"]["macro_f1"] == m["test"]["macro_f1"]
    # Encoded afresh, the features come out in file order again: the same command, the same run.
    import shutil

    shutil.rmtree(folder)
    r = cli(*args, "--out", tmp_path / "fresh")
    assert r.code == 0, r.stderr
    fresh = json.loads((tmp_path / "fresh" / "metrics.json").read_text())
    assert fresh["timings"]["texts_encoded"] == len(rows) and fresh["history"] == m["history"]

    # The trained run scores like any other (predict streams the file too).
    p = cli("predict", tmp_path / "run", data, "--jsonl")
    assert p.code == 0, p.stderr
    assert sorted(json.loads(x)["id"] for x in p.stdout.splitlines()) == sorted(r["id"] for r in rows)

    # Short copies: every training row once more, as its narrative's first sentence.
    r = cli(*args, "--set", "data.short_copies=true", "--out", tmp_path / "short")
    assert r.code == 0, r.stderr
    short = json.loads((tmp_path / "short" / "metrics.json").read_text())
    assert short["train_size"] == 2 * counts["train"] + titled
    assert short["streamed"]["features"] != m["streamed"]["features"]


def test_bad_rows_in_a_streamed_file_end_in_one_line(
    local_ray,  # noqa: ANN001
    tiny_dir: Path,
    tiny_config: Path,
    cli,  # noqa: ANN001
    tmp_path: Path,
) -> None:
    import random

    from abexrat.stream_train import split_of

    rows = _rows(tiny_dir)
    base = ["train", tiny_config, "--stream", "--set", "data.aug_pool=none"]

    def train(data: Path, *more: str) -> tuple[int, str]:
        r = cli(*base, "--set", f"data.dataset={data}", *more, "--out", tmp_path / "run")
        return r.code, " ".join(r.stderr.split())

    bad = [dict(r) for r in rows]
    bad[150] = {**bad[150], "title": "", "summary": "  "}
    code, msg = train(_write(tmp_path / "empty.jsonl", bad))
    assert code == 2 and f"empty.jsonl: row id '{rows[150]['id']}': empty or null text" in msg

    # A label that only appears in val or test: the scan names the row.
    rng = random.Random(1)
    while split_of(text := make_report(rng, "FIRES AND EXPLOSIONS"), 0, 0.1, 0.1) != 2:
        pass
    code, msg = train(
        _write(tmp_path / "new.jsonl", [*rows, {"id": "x9", "title": "", "summary": text, "gold": "ELECTRICAL"}])
    )
    assert code == 2 and "new.jsonl: row id 'x9': label 'ELECTRICAL' is in test but never in training" in msg

    code, msg = train(_write(tmp_path / "ok.jsonl", rows), "--set", f"data.aug_pool={tmp_path}")
    assert code == 2 and "data.aug_pool: streamed training uses the file's own rows" in msg
    r = cli("train", tiny_config, "--stream", "--out", tmp_path / "run")  # its dataset is a folder
    assert r.code == 2 and "data.dataset: --stream trains on one .jsonl, .csv or .parquet file" in " ".join(
        r.stderr.split()
    )
    assert "Traceback" not in r.stderr and not (tmp_path / "run" / "metrics.json").exists()


def test_a_study_over_a_file_too_large_for_memory_memory_maps_its_vectors(
    local_ray,  # noqa: ANN001
    tiny_dir: Path,
    cli,  # noqa: ANN001
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The study streams the file once (Ray Data), and every trial memory-maps the same vectors: the
    object store carries the folder's name, not the arrays."""
    import pandas as pd

    import abexrat.data

    rows = _rows(tiny_dir)
    data = _write(tmp_path / "reports.jsonl", rows)
    monkeypatch.setattr(abexrat.data, "available_memory", lambda: 100)

    def study(name: str, space: str) -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(f"""
name: {name}
trainer:
  data: {{dataset: "{data}", aug_pool: none, val_fraction: 0.2, test_fraction: 0.2}}
  encoder: {{name: hybrid, options: {{tfidf_dim: 32, tfidf_min_df: 1}}}}
  model: {{hidden: [32], dropout: 0.1}}
  train: {{epochs: 6, batch_size: 32, lr: 0.003}}
tracking: {{mode: offline}}
space:
{space}
budget: {{num_samples: 3}}
seeds_per_trial: 2
final: {{seeds: 2}}
baselines:
  no_adversarial: {{adversarial.method: none}}
""")
        return path

    eps_p = (
        "  adversarial.eps: {type: float, low: 0.01, high: 1.0, log: true}\n"
        "  adversarial.p: {type: float, low: 0.0, high: 1.0}"
    )
    r = cli("study", "run", study("streamed", eps_p), "--out", tmp_path / "out")
    assert r.code == 0, r.stderr
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["trials"] == 3 and s["trials_failed"] == 0
    folder = Path(s["streamed"])
    meta = json.loads((folder / "meta.json").read_text())
    assert sum(meta["rows"].values()) == len(rows)
    table = pd.read_parquet(tmp_path / "out" / "trials.parquet")
    assert list(table["stage"]) == ["search"] * 3 + ["final"] * 2 and set(table["status"]) == {"TERMINATED"}
    assert table["val_macro_f1"].notna().all() and table["train_s"].gt(0).all()
    assert s["test"]["macro_f1"]["mean"] > 0.7 and len(s["test"]["macro_f1"]["per_seed"]) == 2
    assert s["test_labels"] is None and s["test_pred"] is None  # too many to keep for a large file
    assert (tmp_path / "out" / "report" / "index.html").is_file()
    # The best model is a run folder like any study's: it scores the file (streamed again).
    assert s["best_run"] == "best"
    p = cli("evaluate", tmp_path / "out" / "best", data, "--json", tmp_path / "scored.json")
    assert p.code == 0, p.stderr
    scored = json.loads((tmp_path / "scored.json").read_text())
    assert scored["n"] == len(rows) and scored["macro_f1"] > 0.7 and scored["seeds"] == [0, 1]

    # Searching what the encoding fixed cannot work: one line, exit 2, nothing written.
    r = cli(
        "study",
        "run",
        study("bad", eps_p + "\n  data.aug_ratio: {type: float, low: 0.0, high: 1.0}"),
        "--out",
        tmp_path / "bad",
    )
    msg = " ".join(r.stderr.split())
    assert r.code == 2 and "space: data.aug_ratio: a dataset too large for memory is read and encoded once" in msg
    assert not (tmp_path / "bad").exists()
