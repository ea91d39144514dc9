"""Feature files on disk: one dataset's vectors, split by split, that trials memory-map.

A folder holds ``<split>.f32`` (n, dim) float32 rows, ``<split>.y`` (n,) int64 labels and
``meta.json`` (rows per split, dim, classes). It is written aside and renamed whole, so a
folder that exists but whose sizes disagree with its meta.json was changed from outside.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "test")
FORMAT = 1  # the feature files' layout; part of their cache key


def discard_unless_whole(folder: Path) -> bool:
    """Whether ``folder`` holds whole feature files: each of the sizes its meta.json names. A folder
    that does not is removed, so the caller encodes it again (a file cut short or grown by anything
    outside abexrat)."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        rows, dim = meta["rows"], int(meta["dim"])
        ok = all(
            (folder / f"{s}.f32").stat().st_size == 4 * dim * rows[s]
            and (folder / f"{s}.y").stat().st_size == 8 * rows[s]
            for s in SPLITS
        )
    except (OSError, ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        shutil.rmtree(folder, ignore_errors=True)
    return ok


def open_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A split's vectors, memory-mapped (n, d) float32, and its labels (n,) int64."""
    meta = json.loads((folder / "meta.json").read_text())
    n, d = meta["rows"][split], meta["dim"]
    y = np.fromfile(folder / f"{split}.y", np.int64)
    if n == 0:
        return np.zeros((0, d), np.float32), y
    # copy-on-write: torch wants a writable array, and nothing must ever write back into the cache
    return np.memmap(folder / f"{split}.f32", np.float32, mode="c", shape=(n, d)), y
