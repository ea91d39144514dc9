"""Scoring files larger than memory: Ray Data streams the rows through a trained run.

``abexrat predict`` and ``abexrat evaluate`` read their input whole when it fits in memory. A file
that does not (or any file, with ``--stream``) goes through Ray Data instead: the file is read in
blocks (``ray.data.read_json`` / ``read_csv`` / ``read_parquet``), each batch is encoded and scored
by a :class:`Scorer` actor that loads the run once, and the driver consumes the results batch by
batch (``iter_batches``): printed predictions, or a confusion matrix per seed that the metrics are
computed from. Nothing holds all the rows, texts or vectors at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from abexrat.core.errors import UserError
from abexrat.data import STREAM_SUFFIXES
from abexrat.rows import Columns, class_index, plain_value, row_id, row_text, where_in_stream

STREAM_BATCH = 512  # rows per batch: a few MB of text and vectors at a time


def setup_data() -> None:
    """abexrat's Ray Data settings: rows come out in file order (predictions print in the file's
    order, and streamed training's feature files, hence its runs, are the same every time); and
    abexrat draws its own progress bars, which Ray Data's (logged every 10 s when stdout is not a
    terminal) and its INFO lines would bury."""
    import logging

    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)


def check_streamable(path: Path) -> None:
    """A file Ray Data can read in blocks: JSON Lines, CSV or Parquet (a JSON list is one document)."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    if suffix not in STREAM_SUFFIXES:
        hint = " (convert a JSON list to JSON Lines, one report per line)" if suffix == ".json" else ""
        raise UserError(f"{path}: streaming reads .jsonl, .csv or .parquet, not {suffix!r}{hint}")


def read_stream(path: Path) -> Any:
    """A lazy Ray Dataset of the file's rows (JSON Lines, CSV or Parquet)."""
    import ray.data

    check_streamable(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return ray.data.read_json(str(path), lines=True)
    if suffix == ".csv":
        return ray.data.read_csv(str(path))
    return ray.data.read_parquet(str(path))


class Scorer:
    """A Ray Data actor: loads a run once, then maps a batch of rows to ids, labels and probabilities.

    Output columns: ``id`` (str), ``proba`` ((C,) mean over seeds), ``pred`` ((S,) each seed's
    class), and with a label column ``gold`` (the class index).
    """

    def __init__(self, run_dir: str, path: str, text_column: str | None, label_column: str | None) -> None:
        from abexrat.run_folder import load_run

        self.run = load_run(run_dir)
        self.path, self.text_column, self.label_column = Path(path), text_column, label_column
        self.index = {c: k for k, c in enumerate(self.run.classes)}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # A bad row comes back as an ``error`` column, not an exception: Ray Data would retry the
        # batch and wrap the message in its own; the driver raises it as the one-line UserError.
        try:
            out = self._score(batch)
        except UserError as e:
            S, C = self.run.model.n_seeds, len(self.run.classes)
            out = {"id": np.asarray([""], dtype=object), "proba": np.zeros((1, C), np.float32)}
            out["pred"] = np.zeros((1, S), np.int64)
            if self.label_column is not None:
                out["gold"] = np.zeros(1, np.int64)
            out["error"] = np.asarray([str(e)], dtype=object)
            return out
        out["error"] = np.asarray([""] * len(out["id"]), dtype=object)
        return out

    def _score(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from abexrat.embed import embed_texts
        from abexrat.train import predict_proba

        torch.set_num_threads(1)
        keys = list(batch)
        n = len(batch[keys[0]]) if keys else 0
        rows = [{k: plain_value(batch[k][i]) for k in keys} for i in range(n)]
        ids = [row_id(r, "") for r in rows]
        cols = Columns(text=self.text_column)
        texts = [row_text(self.path, where_in_stream(ids[i]), r, cols) for i, r in enumerate(rows)]
        proba = predict_proba(self.run.model, embed_texts(self.run.encoder, texts))  # (S, n, C)
        out = {"id": np.asarray(ids, dtype=object), "proba": proba.mean(0), "pred": proba.argmax(-1).T}
        if self.label_column is not None:
            gold = [
                class_index(self.path, where_in_stream(ids[i]), r, self.label_column, self.index)
                for i, r in enumerate(rows)
            ]
            out["gold"] = np.asarray(gold, np.int64)
        return out


def scored_batches(
    run_dir: Path, path: Path, text_column: str | None, label_column: str | None = None
) -> Iterator[dict[str, np.ndarray]]:
    """Scorer output for every batch of ``path``, in file order, with an embedded local Ray if none runs."""
    from abexrat.core.ray_session import connect

    started = connect(None)
    setup_data()
    try:
        kwargs = {"run_dir": str(run_dir), "path": str(path), "text_column": text_column, "label_column": label_column}
        yield from checked_batches(map_stream(path, Scorer, kwargs), path)
    finally:
        if started:
            import ray

            ray.shutdown()


def map_stream(path: Path, actor: type, kwargs: dict[str, Any]) -> Any:
    """The file's rows in batches of ``STREAM_BATCH`` through one ``actor(**kwargs)`` (lazy)."""
    import ray.data

    return read_stream(path).map_batches(
        actor,
        fn_constructor_kwargs=kwargs,
        batch_size=STREAM_BATCH,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=1),
    )


def checked_batches(ds: Any, path: Path) -> Iterator[dict[str, np.ndarray]]:
    """The dataset's output batches; a batch's ``error`` (a bad row) is raised as the UserError it is."""
    try:
        for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
            bad = [e for e in b["error"] if e]
            if bad:
                raise UserError(bad[0])
            yield b
    except UserError:
        raise
    except Exception as e:  # the file itself is unreadable (Ray Data's reader failed)
        raise _user_error(e, path) from None


def _user_error(e: BaseException, path: Path) -> UserError:
    lines = [x for x in str(e).strip().splitlines() if x.strip()]
    return UserError(f"{path}: cannot stream this file ({(lines[-1] if lines else type(e).__name__)[:300]})")


def stream_confusion(
    run_dir: Path, path: Path, n_classes: int, text_column: str | None, label_column: str
) -> tuple[np.ndarray, int]:
    """Per-seed confusion matrices (S, C, C) over the whole file, and its row count."""
    from abexrat.metrics import confusions

    conf: np.ndarray | None = None
    n = 0
    for b in scored_batches(run_dir, path, text_column, label_column):
        batch = confusions(b["gold"], b["pred"].T, n_classes)  # gold (n_b,), pred (n_b, S) -> (S, C, C)
        conf = batch if conf is None else conf + batch
        n += len(b["gold"])
    if conf is None or n == 0:
        raise UserError(f"{path}: no rows")
    return conf, n
