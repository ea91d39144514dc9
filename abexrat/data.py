"""Datasets: the published OSHA splits, a user's own tables, splits, folds and downloads.

A report's text is its title and summary joined, whitespace collapsed. Rows are checked
on load; every problem is a :class:`UserError` naming the file and the row.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from abexrat.core.errors import UserError
from abexrat.core.io import cache_dir, clip, sha256_file, short_repr, write_bytes

OSHA_CLASSES: tuple[str, ...] = (
    "FALLS,SLIPS,TRIPS",
    "CONTACT WITH OBJECTS AND EQUIPMENT",
    "EXPOSURE TO HARMFUL SUBSTANCES OR ENVIRONMENTS",
    "TRANSPORTATION INCIDENTS",
    "FIRES AND EXPLOSIONS",
    "OVEREXERTION AND BODILY REACTION",
    "VIOLENCE AND OTHER INJURIES BY PERSONS OR ANIMALS",
)
OSHA_COMMIT = "ac3a80cc4ba2b0c7a327c86f7d97d9fd1dd62200"
OSHA_URL = f"https://raw.githubusercontent.com/nxcc-lab/ABEX-RAT/{OSHA_COMMIT}/data"
OSHA_FILES: dict[str, str] = {
    "train_aug.json": "a8512aaed17f857245d3bbd1a8b13d64a42ae091759109489ecc3ee9d11662b0",
    "val.json": "c4d4ff54b819193adaf7a84a64f3d9f4ac083d929ca153a34cbb6fb618c0336f",
    "test.json": "f8032b6f87aea091e1cfff14da187ad27226da5f674a0a6d157d8e91d471871e",
}
_AUG_ID = re.compile(r"^(?P<src>.+)-aug-(?P<k>\d+)$")
_SPACE = re.compile(r"\s+")


# A report's title and summary are one text with the title on its first line: the only line
# break a text can hold (whitespace inside each part is collapsed), so the encoders can weigh the
# title on its own (``encoder.title_weight``) while every other stage sees a single string.
TITLE_SEP = "\n"


def compose_text(title: str | None, summary: str | None) -> str:
    """Title and summary as one report: whitespace collapsed, empty parts dropped, the title
    (when both are present) on the first line."""
    parts = [_SPACE.sub(" ", p).strip() for p in (title, summary) if p]
    return TITLE_SEP.join(p for p in parts if p)


def split_title(text: str) -> tuple[str, str]:
    """(title, rest) of a composed text; ("", text) when it has no title line."""
    title, sep, rest = text.partition(TITLE_SEP)
    return (title, rest) if sep else ("", text)


# A sentence ends at . ! or ? after a lower-case letter, a digit or a bracket, before a capital:
# "a.m. on" and "No. 2" do not end one, "...the ladder. Employee #1 fell" does.
SENTENCE_END = re.compile(r"(?<=[a-z0-9)][.!?])\s+(?=[A-Z])")


def first_sentence(text: str) -> str:
    """The first sentence of a report's narrative, without its title: a short one-line report."""
    narrative = " ".join(split_title(text)[1].split())
    return SENTENCE_END.split(narrative, maxsplit=1)[0]


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


def _check_fits_in_memory(path: Path) -> None:
    """Refuse, with one line, a file whose rows cannot fit in memory, rather than be killed halfway."""
    need = path.stat().st_size * MEMORY_FACTOR.get(path.suffix.lower(), 4)
    free = available_memory()
    if free is not None and need > free:
        raise UserError(
            f"{path}: {path.stat().st_size / 2**30:.1f} GB on disk needs about {need / 2**30:.1f} GB in memory, "
            f"{free / 2**30:.1f} GB available; as one .jsonl, .csv or .parquet file abexrat streams it "
            "through Ray Data (train, evaluate, predict)"
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


@dataclass(frozen=True)
class Columns:
    """Which fields of a user's rows hold what. ``text`` wins over title + summary."""

    text: str | None = None
    label: str = "gold"
    title: str = "title"
    summary: str = "summary"
    id: str = "id"


def _at(i: int | str) -> str:
    """Where a row is, for messages: ``row 12`` (its number) or a caller's words (``row id '7'``)."""
    return f"row {i}" if isinstance(i, int) else i


def _row_text(path: Path, i: int | str, row: dict[str, Any], cols: Columns) -> str:
    fields = [cols.text] if cols.text else [cols.title, cols.summary]
    if not any(f in row for f in fields):
        raise UserError(f"{path}: {_at(i)}: missing column {' and '.join(map(short_repr, fields))}")
    for f in fields:
        if row.get(f) is not None and not isinstance(row[f], str):
            raise UserError(f"{path}: {_at(i)}: column {short_repr(f)} must be text, got {type(row[f]).__name__}")
    text = (
        compose_text(None, row.get(cols.text))
        if cols.text
        else compose_text(row.get(cols.title), row.get(cols.summary))
    )
    if not text:
        raise UserError(f"{path}: {_at(i)}: empty or null text")
    return text


def class_index(path: Path, where: str, row: dict[str, Any], label_column: str, index: dict[str, int]) -> int:
    """The class index of a scored row's label; a missing label or one the run never saw is a UserError."""
    label = row.get(label_column)
    if label not in index:
        what = "missing" if label is None else f"{label!r} is not a class of this run"
        raise UserError(f"{path}: {where}: label column {label_column!r}: {what}")
    return index[label]


def _row_label(path: Path, i: int | str, row: dict[str, Any], cols: Columns) -> str:
    if cols.label not in row:
        raise UserError(f"{path}: {_at(i)}: missing column {short_repr(cols.label)}")
    label = row[cols.label]
    if not isinstance(label, str) or not label.strip():
        raise UserError(
            f"{path}: {_at(i)}: label {short_repr(cols.label)} must be a non-empty string, got {short_repr(label)}"
        )
    return label.strip()


@dataclass
class _Rows:
    path: Path
    ids: list[str]
    texts: list[str]
    labels: list[str]


def parse_rows(path: str | Path, cols: Columns = Columns(), id_fields: tuple[str, ...] = ("id", "idx")) -> _Rows:
    """Read and check a labeled file: every row has text, a label and a unique id."""
    path = Path(path)
    rows = read_rows(path)
    if not rows:
        raise UserError(f"{path}: no rows")
    ids, texts, labels, seen = [], [], [], {}
    for i, row in enumerate(rows):
        rid = next((row[f] for f in (cols.id, *id_fields) if row.get(f) is not None), i)
        rid = str(rid)
        if rid in seen:
            raise UserError(f"{path}: row {i}: duplicate id {short_repr(rid)} (first at row {seen[rid]})")
        seen[rid] = i
        ids.append(rid)
        texts.append(_row_text(path, i, row, cols))
        labels.append(_row_label(path, i, row, cols))
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


# ---------------------------------------------------------------- OSHA


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """``--data-dir``, then ``$ABEXRAT_DATA_DIR``, then the user cache."""
    if data_dir:
        return Path(data_dir)
    if env := os.environ.get("ABEXRAT_DATA_DIR"):
        return Path(env)
    return cache_dir() / "data" / "osha"


def load_osha(data_dir: str | Path | None = None) -> Dataset:
    """The paper's splits: originals (int id) and synthetic rows (``"<src>-aug-<k>"``) of train_aug.json."""
    d = resolve_data_dir(data_dir)
    missing = [f for f in OSHA_FILES if not (d / f).is_file()]
    if missing:
        raise UserError(f"{d / missing[0]}: file not found (run `abexrat data fetch osha` or pass --data-dir)")
    train_rows = parse_rows(d / "train_aug.json")
    orig = [i for i, rid in enumerate(train_rows.ids) if not _AUG_ID.match(rid)]
    synth = [i for i, rid in enumerate(train_rows.ids) if _AUG_ID.match(rid)]
    val_rows, test_rows = parse_rows(d / "val.json"), parse_rows(d / "test.json")
    return _assemble("osha", train_rows, orig, synth, val_rows, test_rows)


def _assemble(
    name: str, train_rows: _Rows, orig: list[int], synth: list[int], val_rows: _Rows, test_rows: _Rows
) -> Dataset:
    if not orig:
        raise UserError(f"{train_rows.path}: no original (non-synthetic) training rows")
    classes = _class_order([train_rows.labels[i] for i in orig])
    train = _to_split(train_rows, classes, orig)
    train = Split(train.ids, train.texts, train.labels, list(train.ids))
    orig_ids = set(train.ids)
    synthetic = _to_split(train_rows, classes, synth)
    sources = []
    for i, rid in zip(synth, synthetic.ids):
        src = _AUG_ID.match(rid)["src"]  # type: ignore[index]
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
    orig = [i for i, rid in enumerate(tr.ids) if not _AUG_ID.match(rid)]
    synth = [i for i, rid in enumerate(tr.ids) if _AUG_ID.match(rid)]
    return _assemble(Path(train).stem, tr, orig, synth, parse_rows(val, cols), parse_rows(test, cols))


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


# ---------------------------------------------------------------- download


def fetch_osha(dest: str | Path | None = None, base_url: str | None = None, progress: Any = None) -> list[Path]:
    """Download the three OSHA files from the pinned commit and verify their sha256.

    ``base_url`` (or ``$ABEXRAT_OSHA_URL``) replaces the GitHub address, e.g. for a mirror.
    A file already present with the right digest is not downloaded again.
    """
    dest = resolve_data_dir(dest)
    base = (base_url or os.environ.get("ABEXRAT_OSHA_URL") or OSHA_URL).rstrip("/")
    out = []
    for name, digest in OSHA_FILES.items():
        target = dest / name
        if target.is_file() and sha256_file(target) == digest:
            out.append(target)
            continue
        url = f"{base}/{name}"
        try:
            with urllib.request.urlopen(url, timeout=60) as resp:
                data = resp.read()
        except Exception as e:
            raise UserError(f"{url}: download failed ({clip(str(e), 160)})") from None
        import hashlib

        got = hashlib.sha256(data).hexdigest()
        if got != digest:
            raise UserError(f"{url}: sha256 mismatch (expected {digest[:12]}..., got {got[:12]}...); nothing written")
        write_bytes(target, data)
        if progress:
            progress(name, len(data))
        out.append(target)
    return out
