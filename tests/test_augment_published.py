"""``abexrat augment import-published``: the paper's 2,785 synthetic rows as a pool, read back by training."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from abexrat.config import DataConfig, TrainConfig
from abexrat.data import select_synthetic
from abexrat.datasets import load_dataset

PAPER_COUNTS = {
    "TRANSPORTATION INCIDENTS": 955,
    "FIRES AND EXPLOSIONS": 890,
    "OVEREXERTION AND BODILY REACTION": 740,
    "VIOLENCE AND OTHER INJURIES BY PERSONS OR ANIMALS": 200,
}


def test_import_published_writes_the_papers_pool(osha_dir: Path, tmp_path: Path, cli) -> None:  # noqa: ANN001
    out = tmp_path / "published-pool"
    res = cli("augment", "import-published", "--out", out, "--data-dir", osha_dir)
    assert res.code == 0, res.stderr
    assert "wrote" in res.stdout and "(2785 rows)" in res.stdout

    table = pq.read_table(out / "pool.parquet")
    assert table.num_rows == 2785
    for col in ("id", "source_id", "label", "abstract", "text", "engine", "model", "prompt_version", "seed"):
        assert col in table.column_names
    rows = table.to_pylist()
    assert Counter(r["label"] for r in rows) == PAPER_COUNTS
    assert all(r["abstract"] is None and r["seed"] is None and r["engine"] == "published" for r in rows)
    assert all(r["flag_length"] is None for r in rows)  # never filtered here: unknown, not "passed"

    raw = json.loads((osha_dir / "train_aug.json").read_text())
    originals = {str(r["id"]): r["gold"] for r in raw if isinstance(r["id"], int)}
    synthetic = {r["id"]: r for r in raw if isinstance(r["id"], str)}
    assert len(originals) == 3576 and len(synthetic) == 2785
    assert [r["id"] for r in rows] == list(synthetic)  # the file's rows, in the file's order
    for r in rows:
        m = re.fullmatch(r"(\d+)-aug-(\d+)", r["id"])
        assert m and r["source_id"] == m[1] and r["k"] == int(m[2])
        assert r["source_id"] in originals and originals[r["source_id"]] == r["label"]
        assert r["text"] == " ".join(synthetic[r["id"]]["title"].split())
    per_source = Counter((r["label"], r["source_id"]) for r in rows)
    expected_k = {
        "TRANSPORTATION INCIDENTS": 5,
        "FIRES AND EXPLOSIONS": 5,
        "OVEREXERTION AND BODILY REACTION": 20,
        "VIOLENCE AND OTHER INJURIES BY PERSONS OR ANIMALS": 20,
    }
    assert all(n == expected_k[label] for (label, _), n in per_source.items())

    summary = json.loads((out / "pool.json").read_text())
    assert summary["rows"] == 2785 and summary["counts"]["sources"] == 416
    assert {c: v["kept"] for c, v in summary["counts"]["per_class"].items()} == PAPER_COUNTS
    assert summary["source"]["sha256"] == summary["source"]["expected_sha256"]

    # Training reads it as a pool and gets exactly the published rows, so r samples the same rows.
    published = load_dataset(TrainConfig(data=DataConfig(dataset="osha", data_dir=str(osha_dir))))
    pooled = load_dataset(TrainConfig(data=DataConfig(dataset="osha", data_dir=str(osha_dir), aug_pool=str(out))))
    a, b = published.synthetic, pooled.synthetic
    assert (a.ids, a.texts, a.source_ids) == (b.ids, b.texts, b.source_ids)
    np.testing.assert_array_equal(a.labels, b.labels)
    pick_a = select_synthetic(a, len(published.classes), 0.4, seed=3)
    pick_b = select_synthetic(b, len(pooled.classes), 0.4, seed=3)
    np.testing.assert_array_equal(pick_a, pick_b)
    assert len(pick_a) == sum(int(np.ceil(0.4 * n)) for n in PAPER_COUNTS.values())
