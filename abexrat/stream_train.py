"""Training on a dataset larger than memory: Ray Data reads and encodes it, training reads the
vectors from disk.

``abexrat train`` takes this path when ``data.dataset`` is one JSON Lines, CSV or Parquet file whose
rows would not fit in memory (:func:`abexrat.data.fits_in_memory`), or with ``--stream``:

1. **Scan.** Ray Data reads the file in blocks and checks each row's text and label. A row's split
   comes from a hash of its text, seeded by ``data.split_seed``, at ``data.val_fraction`` and
   ``data.test_fraction``: identical reports always share a split, so none is in both train and
   test. The driver keeps only class counts and a seeded reservoir sample of at most
   ``FIT_SAMPLE`` training texts, which a fitted encoder (the tf-idf part) fits on.
2. **Encode.** Ray Data actors holding the fitted encoder embed each batch (and, with
   ``data.untitled_copies``, each titled training row once more without its title, and with
   ``data.short_copies``, each training row as its narrative's first sentence); the driver
   appends each split's vectors to a float32 file. The files sit in the cache under a key of the
   file (path, size, mtime), the columns, the split settings and the encoder; they are written in a
   temporary folder and renamed when complete, so a rerun encodes nothing and a killed run leaves
   no half-written features.
3. **Train and score** as for a dataset in memory (:mod:`abexrat.experiment`):
   :func:`abexrat.train.fit` reads the memory-mapped training vectors a block of rows at a time, and
   val and test are scored a chunk at a time into confusion matrices.

This is the streamed backend of :func:`abexrat.feature_source.make_features`. The run folder is an
in-memory run's. Not streamed: synthetic pools (``data.aug_pool`` must be
``none``, or ``published``, of which a user's file has none) and the duplicate-id check.

In a study (``abexrat study run``) the :class:`~abexrat.features.Features` are memory-mapped the
same way, and pickle (``ray.put``) as the folder's name, so every trial maps the same files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from abexrat.config import TrainConfig
from abexrat.core.errors import UserError
from abexrat.data import _class_order, streams
from abexrat.datasets import columns
from abexrat.encoders import Encoder
from abexrat.feature_files import FORMAT, SPLITS, discard_unless_whole, open_split
from abexrat.features import Features
from abexrat.rows import plain_value, row_id, row_label, row_text, where_in_stream
from abexrat.stream import (
    check_streamable,
    checked_batches,
    map_stream,
    setup_data,
)
from abexrat.text import first_sentence, split_title

FIT_SAMPLE = 50_000  # training texts a fitted encoder learns from


def wants_stream(cfg: TrainConfig, asked: bool) -> bool:
    """Whether the config's data streams (train, study): the file rule of
    :func:`abexrat.data.streams`, for a ``data.dataset`` that is one data file."""
    path = Path(cfg.data.dataset)
    if cfg.data.dataset == "osha" or not path.is_file():
        if asked:
            raise UserError(f"data.dataset: --stream trains on one .jsonl, .csv or .parquet file, not {path}")
        return False
    return streams(path, asked)


def split_of(text: str, seed: int, val_fraction: float, test_fraction: float) -> int:
    """0 (train), 1 (val) or 2 (test), from a seeded hash of the text alone."""
    h = hashlib.blake2b(text.encode("utf-8"), digest_size=8, key=seed.to_bytes(8, "little"))
    u = int.from_bytes(h.digest(), "little") / 2**64
    return 2 if u < test_fraction else 1 if u < test_fraction + val_fraction else 0


class RowReader:
    """Checks a batch of raw rows: their ids, texts, labels and splits (the scan's map function and
    the encoder actors' first step). A bad row's one-line message comes back in an ``error`` column
    (raised by the driver) rather than as an exception, which Ray Data would retry and wrap."""

    def __init__(self, path: str, cfg: dict[str, Any]) -> None:
        train_cfg = TrainConfig.model_validate(cfg)
        d = train_cfg.data
        self.path = Path(path)
        self.cols = columns(train_cfg)
        self.split_args = (d.split_seed, d.val_fraction, d.test_fraction)

    def rows(self, batch: dict[str, np.ndarray]) -> tuple[list[str], list[str], list[str], np.ndarray]:
        keys = list(batch)
        n = len(batch[keys[0]]) if keys else 0
        rows = [{k: plain_value(batch[k][i]) for k in keys} for i in range(n)]
        ids = [row_id(r, "", self.cols) for r in rows]
        texts = [row_text(self.path, where_in_stream(rid), r, self.cols) for rid, r in zip(ids, rows)]
        labels = [row_label(self.path, where_in_stream(rid), r, self.cols) for rid, r in zip(ids, rows)]
        splits = np.asarray([split_of(t, *self.split_args) for t in texts], np.int8)
        return ids, texts, labels, splits

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The scan: id, label and split of every row; the text of training rows only."""
        try:
            ids, texts, labels, splits = self.rows(batch)
        except UserError as e:
            return {**self.row_columns([""], [""], [""], np.full(1, -1, np.int8)), "error": _obj([str(e)])}
        texts = [t if s == 0 else "" for t, s in zip(texts, splits)]
        return {**self.row_columns(ids, texts, labels, splits), "error": _obj([""] * len(ids))}

    @staticmethod
    def row_columns(ids: list[str], texts: list[str], labels: list[str], splits: np.ndarray) -> dict[str, np.ndarray]:
        return {"id": _obj(ids), "text": _obj(texts), "label": _obj(labels), "split": splits}


class Embedder(RowReader):
    """A Ray Data actor: loads the fitted encoder once, then maps raw rows to vectors ``x`` (n, d),
    class indices ``y`` and splits (untitled copies of titled training rows and short copies of all
    training rows appended as train)."""

    def __init__(self, path: str, cfg: dict[str, Any], encoder_dir: str, classes: list[str]) -> None:
        import torch

        from abexrat.encoders import load_encoder

        super().__init__(path, cfg)
        torch.set_num_threads(1)
        self.enc = load_encoder(Path(encoder_dir))
        self.index = {c: k for k, c in enumerate(classes)}
        data = TrainConfig.model_validate(cfg).data
        self.untitled, self.short = data.untitled_copies, data.short_copies

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from abexrat.embed import NoCache, embed_texts

        try:
            ids, texts, labels, splits = self.rows(batch)
        except UserError as e:  # one placeholder row carrying the message, in the usual columns
            x, bad = np.zeros((1, self.enc.dim), np.float32), np.full(1, -1, np.int8)
            return {
                "x": x,
                "y": np.full(1, -1, np.int64),
                "split": bad,
                "copy": np.ones(1, bool),
                "error": _obj([str(e)]),
            }
        y = [self.index.get(label, -1) for label in labels]
        n = len(y)
        train = [k for k in range(n) if splits[k] == 0]
        if self.untitled:
            for k in [k for k in train if split_title(texts[k])[0]]:
                texts.append(split_title(texts[k])[1])
                y.append(y[k])
        if self.short:
            for k in train:
                texts.append(first_sentence(texts[k]))
                y.append(y[k])
        splits = np.concatenate([splits, np.zeros(len(texts) - len(splits), np.int8)])
        x = embed_texts(self.enc, texts, cache=NoCache())
        copy = np.arange(len(y)) >= n  # the copies, appended after the file's rows
        out = {"x": x.astype(np.float32), "y": np.asarray(y, np.int64), "split": splits, "copy": copy}
        return {**out, "error": _obj([""] * len(y))}


def _obj(values: list[str]) -> np.ndarray:
    return np.asarray(values, dtype=object)


def scan(path: Path, cfg: TrainConfig, advance: Any = None) -> tuple[list[str], dict[str, Counter], list[str]]:
    """Pass 1: (classes, label counts per split, a seeded sample of <= FIT_SAMPLE training texts)."""
    ds = map_stream(path, RowReader, {"path": str(path), "cfg": cfg.model_dump(mode="json")})
    counts: dict[str, Counter] = {s: Counter() for s in SPLITS}
    first: dict[tuple[str, str], str] = {}  # (split, label) -> the first such row, for messages
    rng = np.random.default_rng(cfg.data.split_seed)
    sample: list[str] = []
    seen_train = 0
    for b in checked_batches(ds, path):
        for rid, text, label, split in zip(b["id"], b["text"], b["label"], b["split"]):
            name = SPLITS[split]
            counts[name][label] += 1
            first.setdefault((name, label), rid)
            if split == 0:  # reservoir sampling (Algorithm R): each training text equally likely
                seen_train += 1
                if len(sample) < FIT_SAMPLE:
                    sample.append(text)
                elif (j := int(rng.integers(seen_train))) < FIT_SAMPLE:
                    sample[j] = text
        if advance:
            advance(len(b["id"]))
    if not counts["train"]:
        raise UserError(f"{path}: no training rows (is the file empty?)")
    classes = _class_order(list(counts["train"]))
    for name in ("val", "test"):
        for label in counts[name]:
            if label not in counts["train"]:
                where = where_in_stream(first[(name, label)])
                raise UserError(f"{path}: {where}: label {label!r} is in {name} but never in training")
    return classes, counts, sample


def features_key(path: Path, cfg: TrainConfig, encoder_key: str) -> str:
    """The feature files' content key: the file as it is on disk, how it is read and split, the encoder."""
    st = path.stat()
    d = cfg.data
    spec = {
        "format": FORMAT,
        "file": [str(path.resolve()), st.st_size, st.st_mtime_ns],
        "columns": [d.text_column, d.label_column, d.title_column, d.summary_column],
        "split": [d.split_seed, d.val_fraction, d.test_fraction],
        "untitled": d.untitled_copies,
        **({"short": True} if d.short_copies else {}),  # absent when off: earlier features keep their key
        "encoder": encoder_key,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:32]


def encode(
    path: Path, cfg: TrainConfig, encoder_dir: Path, classes: list[str], folder: Path, advance: Any = None
) -> None:
    """Pass 2: every split's vectors and labels into ``folder`` (written aside, then renamed)."""
    kwargs = {
        "path": str(path),
        "cfg": cfg.model_dump(mode="json"),
        "encoder_dir": str(encoder_dir),
        "classes": classes,
    }
    ds = map_stream(path, Embedder, kwargs)
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        rows, dim = dict.fromkeys(SPLITS, 0), 0
        with ExitStack() as stack:
            files = {
                s: (stack.enter_context(open(tmp / f"{s}.f32", "wb")), stack.enter_context(open(tmp / f"{s}.y", "wb")))
                for s in SPLITS
            }
            for b in checked_batches(ds, path):
                dim = b["x"].shape[1]
                for k, s in enumerate(SPLITS):
                    keep = b["split"] == k
                    files[s][0].write(np.ascontiguousarray(b["x"][keep], np.float32).tobytes())
                    files[s][1].write(b["y"][keep].astype(np.int64).tobytes())
                    rows[s] += int(keep.sum())
                if advance:
                    advance(int((~b["copy"]).sum()))
        (tmp / "meta.json").write_text(json.dumps({"rows": rows, "dim": dim, "classes": classes}))
        try:
            os.replace(tmp, folder)
        except OSError:
            if not (folder / "meta.json").is_file():  # else another run finished the same features first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def stream_features(cfg: TrainConfig, progress: Any = None) -> tuple[Features, Encoder, dict[str, Any]]:
    """Scan, fit the encoder and (unless the cache has them) encode ``cfg``'s data file; Ray must be
    up. Returns the memory-mapped features, the fitted encoder and what the streaming found."""
    from abexrat.embed import EmbeddingCache, EmbedStats, fit_encoder
    from abexrat.encoders import save_encoder
    from abexrat.features import build_encoder

    path = Path(cfg.data.dataset)
    if cfg.data.aug_pool not in ("none", "published"):
        raise UserError(
            f"data.aug_pool: streamed training uses the file's own rows; set it to 'none', not {cfg.data.aug_pool!r}"
        )
    check_streamable(path)
    setup_data()
    advance = progress.task("scanning", None) if progress else None
    classes, counts, sample = scan(path, cfg, advance)
    if advance:
        advance.finish()
    enc, cache, stats = build_encoder(cfg), EmbeddingCache(), EmbedStats()
    t_fit = time.perf_counter()
    fit_encoder(enc, sample, cache)
    stats.fit_s = time.perf_counter() - t_fit
    folder = cache.root / "streamed" / features_key(path, cfg, enc.key)
    n_rows = sum(sum(c.values()) for c in counts.values())
    if discard_unless_whole(folder):
        stats.cached = n_rows
    else:
        advance = progress.task("encoding", n_rows) if progress else None
        t_enc = time.perf_counter()
        folder.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder.parent) as staged:  # the actors load the encoder from here
            save_encoder(enc, Path(staged) / "encoder")
            encode(path, cfg, Path(staged) / "encoder", classes, folder, advance)
        stats.encode_s, stats.encoded = time.perf_counter() - t_enc, n_rows
    (X, y), (Xv, yv), (Xt, yt) = (open_split(folder, s) for s in SPLITS)
    if not len(yv) or not len(yt):
        raise UserError(f"{path}: too few rows for a val and a test split ({len(yv)} val, {len(yt)} test)")
    d = X.shape[1]
    empty = np.zeros((0, d), np.float32), np.zeros(0, np.int64)
    feats = Features(classes, X, y, *empty, [], Xv, yv, Xt, yt, enc.key, stats, memmap_dir=str(folder))
    info = {"rows": {s: dict(counts[s]) for s in SPLITS}, "fit_sample": len(sample), "features": str(folder)}
    return feats, enc, info
