"""The console every command prints to: ``out`` (stdout), ``err`` (stderr) and progress bars.

Shared by the main CLI and its command groups (``abexrat augment``), so each prints the same way
without importing the other.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console

out = Console()
err = Console(stderr=True)


class Task:
    """One progress bar: ``task(n)`` advances it by n; ``finish()`` ends a bar with no known total."""

    def __init__(self, bar: Any, tid: Any) -> None:
        self.bar, self.tid = bar, tid

    def __call__(self, n: int = 1) -> None:
        self.bar.advance(self.tid, n)

    def finish(self) -> None:
        done = next(t.completed for t in self.bar.tasks if t.id == self.tid)
        self.bar.update(self.tid, total=done, completed=done)


class Progress:
    """Rich progress bars on stderr; ``task(name, total)`` returns a :class:`Task` (call it to advance)."""

    def __init__(self, bar: Any) -> None:
        self.bar = bar

    def task(self, name: str, total: int | None) -> Task:
        """``total=None``: a count with no known end (a file being scanned)."""
        return Task(self.bar, self.bar.add_task(name, total=total))


@contextmanager
def progress() -> Iterator[Progress]:
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as RichProgress

    with RichProgress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    ) as bar:
        yield Progress(bar)
