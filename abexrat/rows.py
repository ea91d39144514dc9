"""The one row parser: a row's id, text and label, checked, for every reader of user rows (in-memory
datasets, streamed training, streamed scoring, ``predict``/``evaluate``), so a row means the same
thing on every path.

Every problem is a :class:`UserError` naming the file and the row.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from abexrat.core.errors import UserError
from abexrat.core.io import short_repr
from abexrat.text import compose_text


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


def row_text(path: Path, i: int | str, row: dict[str, Any], cols: Columns) -> str:
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


def row_label(path: Path, i: int | str, row: dict[str, Any], cols: Columns) -> str:
    if cols.label not in row:
        raise UserError(f"{path}: {_at(i)}: missing column {short_repr(cols.label)}")
    label = row[cols.label]
    if not isinstance(label, str) or not label.strip():
        raise UserError(
            f"{path}: {_at(i)}: label {short_repr(cols.label)} must be a non-empty string, got {short_repr(label)}"
        )
    return label.strip()


def plain_value(v: Any) -> Any:
    """A numpy scalar or NaN (CSV's empty cell) as the plain value ``row_text`` expects."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and v != v:
        return None
    return v


def where_in_stream(rid: str) -> str:
    """Where a streamed row is, for messages: its id (a batch does not know its rows' numbers)."""
    return f"row id {rid!r}" if rid else "a row without an id"


def row_id(row: dict[str, Any], default: int | str, cols: Columns = Columns()) -> str:
    """A row's id: the first of ``cols.id``, ``id`` and ``idx`` present and not null, else ``default``
    (its row number, or "" where the number is unknown)."""
    return str(next((row[f] for f in (cols.id, "id", "idx") if row.get(f) is not None), default))
