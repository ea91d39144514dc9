"""Synthetic-report pools: Parquet files of ABEX output that training samples from.

A pool has at least the columns ``id``, ``source_id``, ``label`` and ``text``; a pool
folder holds ``pool.parquet``. Rows are checked against the dataset they augment.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from abexrat.core.errors import UserError
from abexrat.core.io import clip, short_repr
from abexrat.data import Dataset, Split

POOL_COLUMNS = ("id", "source_id", "label", "text")


def pool_file(path: Path) -> Path:
    return path / "pool.parquet" if path.is_dir() else path


def read_pool(path: Path, ds: Dataset) -> Split:
    """The pool's rows as a :class:`Split` over ``ds.classes`` (source ids must be training reports)."""
    import pyarrow.parquet as pq

    file = pool_file(path)
    if not file.is_file():
        raise UserError(f"{file}: pool not found")
    try:
        table = pq.read_table(file)
    except Exception as e:
        raise UserError(f"{file}: not a readable Parquet pool ({clip(str(e) or type(e).__name__, 160)})") from None
    missing = [c for c in POOL_COLUMNS if c not in table.column_names]
    if missing:
        raise UserError(f"{file}: missing column {missing[0]!r} (a pool needs {', '.join(POOL_COLUMNS)})")
    rows = table.select(list(POOL_COLUMNS)).to_pylist()
    index = {c: k for k, c in enumerate(ds.classes)}
    train_ids = set(ds.train.ids)
    ids, texts, labels, sources = [], [], [], []
    for i, r in enumerate(rows):
        if not isinstance(r["label"], str) or r["label"] not in index:  # a list or struct is unhashable
            raise UserError(f"{file}: row {i}: label {short_repr(r['label'])} is not a class of {ds.name}")
        if str(r["source_id"]) not in train_ids:
            raise UserError(f"{file}: row {i}: source_id {short_repr(r['source_id'])} is not a training report")
        if not isinstance(r["text"], str) or not r["text"].strip():
            raise UserError(f"{file}: row {i}: text must be a non-empty string, got {short_repr(r['text'])}")
        ids.append(str(r["id"]))
        texts.append(" ".join(r["text"].split()))
        labels.append(index[r["label"]])
        sources.append(str(r["source_id"]))
    return Split(ids, texts, np.asarray(labels, dtype=np.int64), sources)
