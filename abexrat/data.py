"""Datasets: rows read from files and checked, splits of them, folds and the augmentation ratio
(the published OSHA files are loaded by :mod:`abexrat.osha`).

A report's text is its title and summary joined, whitespace collapsed. Rows are checked
on load; every problem is a :class:`UserError` naming the file and the row.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from abexrat.core.errors import UserError
from abexrat.core.io import clip, short_repr
from abexrat.rows import Columns, row_id, row_label, row_text

OSHA_CLASSES: tuple[str, ...] = (
    "FALLS,SLIPS,TRIPS",
    "CONTACT WITH OBJECTS AND EQUIPMENT",
    "EXPOSURE TO HARMFUL SUBSTANCES OR ENVIRONMENTS",
    "TRANSPORTATION INCIDENTS",
    "FIRES AND EXPLOSIONS",
    "OVEREXERTION AND BODILY REACTION",
    "VIOLENCE AND OTHER INJURIES BY PERSONS OR ANIMALS",
)
AUG_ID = re.compile(r"^(?P<src>.+)-aug-(?P<k>\d+)$")


@dataclass(frozen=True)
class Split:
    """Reports of one split. ``labels`` is an int64 array of shape (n,) indexing the classes."""

    ids: list[str]
    texts: list[str]
    labels: np.ndarray
    source_ids: list[str] = field(default_factory=list)  # synthetic rows: the original's id

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, index: np.ndarray | list[int]) -> Split:
        index = np.asarray(index, dtype=np.int64)
        src = [self.source_ids[i] for i in index] if self.source_ids else []
        return Split([self.ids[i] for i in index], [self.texts[i] for i in index], self.labels[index], src)


@dataclass(frozen=True)
class Dataset:
    """Originals split three ways, plus a pool of synthetic training rows (may be empty)."""

    name: str
    classes: list[str]
    train: Split
    val: Split
    test: Split
    synthetic: Split

    def class_counts(self) -> dict[str, dict[str, int]]:
        out = {}
        for split in ("train", "synthetic", "val", "test"):
            c = np.bincount(getattr(self, split).labels, minlength=len(self.classes))
            out[split] = {name: int(n) for name, n in zip(self.classes, c)}
        return out


# ---------------------------------------------------------------- reading files


# Rows held as Python objects take several times their file's size (Parquet is also compressed).
MEMORY_FACTOR = {".json": 4, ".jsonl": 4, ".csv": 4, ".parquet": 10, ".pq": 10}


def available_memory() -> int | None:
    """Bytes of memory this machine can still give (MemAvailable on Linux), else None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def fits_in_memory(path: Path) -> bool:
    """Whether the rows of ``path`` can be held in memory (an estimate from the file's size)."""
    free = available_memory()
    return free is None or path.stat().st_size * MEMORY_FACTOR.get(path.suffix.lower(), 4) <= free


# The file formats Ray Data reads in batches: a file of these can be larger than memory.
STREAM_SUFFIXES = (".jsonl", ".csv", ".parquet", ".pq")


def streams(path: Path, asked: bool) -> bool:
    """Whether a data file goes through Ray Data in batches (train, evaluate, predict): asked, or too
    large for memory. One too large in a format that cannot stream is refused in one line."""
    if asked:
        return True
    if not path.is_file() or fits_in_memory(path):
        return False
    if path.suffix.lower() not in STREAM_SUFFIXES:
        _check_fits_in_memory(path)
    return True


def _check_fits_in_memory(path: Path) -> None:
    """Refuse, with one line, a file whose rows cannot fit in memory, rather than be killed halfway."""
    need = path.stat().st_size * MEMORY_FACTOR.get(path.suffix.lower(), 4)
    free = available_memory()
    if free is not None and need > free:
        hint = " (convert a JSON list to JSON Lines, one report per line)" if path.suffix.lower() == ".json" else ""
        raise UserError(
            f"{path}: {path.stat().st_size / 2**30:.1f} GB on disk needs about {need / 2**30:.1f} GB in memory, "
            f"{free / 2**30:.1f} GB available; as one .jsonl, .csv or .parquet file abexrat streams it "
            f"through Ray Data (train, evaluate, predict){hint}"
        )


def read_rows(path: str | Path, text_field: str | None = None) -> list[dict[str, Any]]:
    """Rows of a JSON list, JSONL, CSV or Parquet file, as dicts. ``-`` reads standard input as
    JSON Lines, where (with ``text_field``) a line that is not a JSON object is one report's text,
    ``{text_field: line}``: ``echo "..." | abexrat predict RUN -``."""
    stdin = str(path) == "-"
    path = Path("<stdin>") if stdin else Path(path)
    if not stdin:
        if not path.is_file():
            raise UserError(f"{path}: file not found")
        _check_fits_in_memory(path)
    suffix = ".jsonl" if stdin else path.suffix.lower()
    try:
        if suffix == ".json":
            try:
                rows = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise UserError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
            if not isinstance(rows, list):
                raise UserError(f"{path}: expected a JSON list of rows, got {type(rows).__name__}")
        elif suffix == ".jsonl":
            rows = []
            lines = sys.stdin.read() if stdin else path.read_text(encoding="utf-8")
            for lineno, line in enumerate(lines.splitlines(), 1):
                if not line.strip():
                    continue
                if stdin and text_field and not line.lstrip().startswith("{"):
                    rows.append({text_field: line.strip()})
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}: line {lineno}: not valid JSON ({e.msg})") from None
        elif suffix == ".csv":
            import pyarrow.csv as pacsv

            rows = pacsv.read_csv(path).to_pylist()
        elif suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
        else:
            raise UserError(f"{path}: unsupported format {suffix!r} (use .json, .jsonl, .csv or .parquet)")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    except UserError:
        raise
    except Exception as e:  # pyarrow's own parse errors, a JSON nested too deeply: one short line
        raise UserError(f"{path}: cannot read: {clip(str(e) or type(e).__name__, 160)}") from None
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise UserError(f"{path}: row {i}: expected an object with fields, got {type(row).__name__}")
    return rows


@dataclass
class _Rows:
    path: Path
    ids: list[str]
    texts: list[str]
    labels: list[str]


def parse_rows(path: str | Path, cols: Columns = Columns()) -> _Rows:
    """Read and check a labeled file: every row has text, a label and a unique id."""
    path = Path(path)
    rows = read_rows(path)
    if not rows:
        raise UserError(f"{path}: no rows")
    ids, texts, labels, seen = [], [], [], {}
    for i, row in enumerate(rows):
        rid = row_id(row, i, cols)
        if rid in seen:
            raise UserError(f"{path}: row {i}: duplicate id {short_repr(rid)} (first at row {seen[rid]})")
        seen[rid] = i
        ids.append(rid)
        texts.append(row_text(path, i, row, cols))
        labels.append(row_label(path, i, row, cols))
    return _Rows(path, ids, texts, labels)


def _to_split(rows: _Rows, classes: list[str], rows_index: list[int] | None = None) -> Split:
    index = {c: k for k, c in enumerate(classes)}
    sel = range(len(rows.ids)) if rows_index is None else rows_index
    for i in sel:
        if rows.labels[i] not in index:
            raise UserError(f"{rows.path}: row {i}: label {short_repr(rows.labels[i])} never appears in training")
    return Split(
        [rows.ids[i] for i in sel],
        [rows.texts[i] for i in sel],
        np.array([index[rows.labels[i]] for i in sel], dtype=np.int64),
    )


def _check_disjoint(train: _Rows, other: _Rows, other_index: list[int] | None = None) -> None:
    first = {t.lower(): i for i, t in enumerate(train.texts)}
    for i in other_index if other_index is not None else range(len(other.texts)):
        j = first.get(other.texts[i].lower())
        if j is not None:
            raise UserError(
                f"{other.path}: row {i}: the same report as {train.path} row {j} (id {short_repr(train.ids[j])})"
            )


def _class_order(labels: list[str]) -> list[str]:
    present = set(labels)
    if present <= set(OSHA_CLASSES):
        return [c for c in OSHA_CLASSES if c in present]
    return sorted(present)


# ---------------------------------------------------------------- datasets from rows


def assemble_dataset(
    name: str, train_rows: _Rows, orig: list[int], synth: list[int], val_rows: _Rows, test_rows: _Rows
) -> Dataset:
    """A dataset from parsed rows: ``orig`` and ``synth`` index the training file's originals and
    synthetic rows (each naming its original); every split is checked disjoint from the others."""
    if not orig:
        raise UserError(f"{train_rows.path}: no original (non-synthetic) training rows")
    classes = _class_order([train_rows.labels[i] for i in orig])
    train = _to_split(train_rows, classes, orig)
    train = Split(train.ids, train.texts, train.labels, list(train.ids))
    orig_ids = set(train.ids)
    synthetic = _to_split(train_rows, classes, synth)
    sources = []
    for i, rid in zip(synth, synthetic.ids):
        src = AUG_ID.match(rid)["src"]  # type: ignore[index]
        if src not in orig_ids:
            raise UserError(
                f"{train_rows.path}: row {i}: synthetic row {short_repr(rid)} names source {short_repr(src)}, "
                "which is not a training report"
            )
        sources.append(src)
    synthetic = Split(synthetic.ids, synthetic.texts, synthetic.labels, sources)
    train_only = _Rows(train_rows.path, train.ids, train.texts, [train_rows.labels[i] for i in orig])
    for rows in (val_rows, test_rows):
        _check_disjoint(train_only, rows)
    _check_disjoint(val_rows, test_rows)
    return Dataset(name, classes, train, _to_split(val_rows, classes), _to_split(test_rows, classes), synthetic)


def load_splits(train: str | Path, val: str | Path, test: str | Path, cols: Columns = Columns()) -> Dataset:
    """A user's own three files; rows of train with ids ``"<src>-aug-<k>"`` are synthetic."""
    tr = parse_rows(train, cols)
    orig = [i for i, rid in enumerate(tr.ids) if not AUG_ID.match(rid)]
    synth = [i for i, rid in enumerate(tr.ids) if AUG_ID.match(rid)]
    return assemble_dataset(Path(train).stem, tr, orig, synth, parse_rows(val, cols), parse_rows(test, cols))


def load_table(
    path: str | Path, cols: Columns = Columns(), val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0
) -> Dataset:
    """One labeled file with no splits: stratified train / val / test by ``seed``."""
    rows = parse_rows(path, cols)
    classes = _class_order(rows.labels)
    counts = Counter(rows.labels)
    tiny = [c for c, n in counts.items() if n < 3]
    if tiny:
        raise UserError(f"{path}: label {short_repr(tiny[0])} has {counts[tiny[0]]} rows; a stratified split needs 3")
    y = np.array([classes.index(label) for label in rows.labels])
    idx_train, idx_val, idx_test = stratified_split(y, val_fraction, test_fraction, seed)
    train = _to_split(rows, classes, list(idx_train))
    train = Split(train.ids, train.texts, train.labels, list(train.ids))
    train_rows = _Rows(rows.path, train.ids, train.texts, [rows.labels[i] for i in idx_train])
    _check_disjoint(train_rows, rows, list(idx_val) + list(idx_test))
    return Dataset(
        Path(path).stem,
        classes,
        train,
        _to_split(rows, classes, list(idx_val)),
        _to_split(rows, classes, list(idx_test)),
        Split([], [], np.zeros(0, np.int64), []),
    )


def stratified_split(
    y: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices (train, val, test), each class split in the given fractions (at least one row each)."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    rest, test = train_test_split(idx, test_size=test_fraction, stratify=y, random_state=seed)
    frac = val_fraction / (1.0 - test_fraction)
    train, val = train_test_split(rest, test_size=frac, stratify=y[rest], random_state=seed)
    return np.sort(train), np.sort(val), np.sort(test)


def stratified_folds(y: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` stratified (train_index, held_out_index) pairs over ``y`` of shape (n,)."""
    from sklearn.model_selection import StratifiedKFold

    folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(np.asarray(a), np.asarray(b)) for a, b in folds.split(np.zeros(len(y)), y)]


# ---------------------------------------------------------------- augmentation ratio


def select_synthetic(
    pool: Split, n_classes: int, ratio: float, seed: int, allowed_sources: set[str] | None = None
) -> np.ndarray:
    """Indices into ``pool``: per class, the first ceil(ratio * n) rows in an order seeded by ``seed``.

    ``allowed_sources`` keeps only rows made from those originals (a training fold's reports).
    """
    if not 0.0 <= ratio <= 1.0:
        raise UserError(f"aug_ratio: must be in [0, 1], got {ratio}")
    keep = np.arange(len(pool))
    if allowed_sources is not None:
        keep = np.array([i for i in keep if pool.source_ids[i] in allowed_sources], dtype=np.int64)
    rng = np.random.default_rng(seed)
    chosen = []
    for c in range(n_classes):
        rows = keep[pool.labels[keep] == c] if len(keep) else keep
        order = rows[rng.permutation(len(rows))]
        chosen.append(order[: math.ceil(ratio * len(rows))])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)
