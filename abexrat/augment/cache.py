"""The augmentation cache: generated rows per source key, in Parquet chunks written atomically,
so a rerun generates nothing and a killed run resumes at its first unwritten chunk."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from abexrat.augment.plan import SourceJob
from abexrat.core.io import atomic_path, cache_dir

CHUNK_COLUMNS = ("source_key", "source_id", "label", "k", "seed", "abstract", "text", "abstract_tokens", "text_tokens")


class ChunkCache:
    """Generated rows per source key, in Parquet chunks under ``root/augment/<spec key>/``."""

    def __init__(self, root: Path | None, spec: str) -> None:
        self.dir = (Path(root) if root else cache_dir()) / "augment" / spec

    def load(self, stats: GenStats | None = None) -> dict[str, list[dict[str, Any]]]:
        """Rows of every readable chunk, by source key; an unreadable chunk is deleted."""
        import pyarrow.parquet as pq

        found: dict[str, list[dict[str, Any]]] = {}
        for path in sorted(self.dir.glob("*.parquet")) if self.dir.is_dir() else []:
            try:
                rows = pq.read_table(path, columns=list(CHUNK_COLUMNS)).to_pylist()
            except Exception:
                path.unlink(missing_ok=True)  # corrupt or truncated: its sources are generated again
                if stats:
                    stats.chunks_dropped += 1
                continue
            for r in rows:
                found.setdefault(r["source_key"], []).append(r)
        return found

    def write(self, rows: list[dict[str, Any]]) -> Path:
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = sorted(rows, key=lambda r: (r["source_key"], r["k"]))
        name = hashlib.sha256("\n".join(sorted({r["source_key"] for r in rows})).encode()).hexdigest()[:32]
        path = self.dir / f"{name}.parquet"
        table = pa.Table.from_pylist([{c: r[c] for c in CHUNK_COLUMNS} for r in rows])
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        return path


def complete(rows: list[dict[str, Any]] | None, job: SourceJob) -> bool:
    """Whether cached rows hold all k samples of a job."""
    return rows is not None and sorted(r["k"] for r in rows) == list(range(1, job.k + 1))


@dataclass
class GenStats:
    """What a run generated vs found in the cache, and the tokens and seconds it took."""

    sources: int = 0
    sources_cached: int = 0
    sources_generated: int = 0
    rows_cached: int = 0
    rows_generated: int = 0
    chunks_written: int = 0
    chunks_dropped: int = 0  # unreadable chunk files found in the cache (their sources regenerated)
    abstract_tokens: int = 0
    expand_tokens: int = 0
    generate_s: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return (self.abstract_tokens + self.expand_tokens) / self.generate_s if self.generate_s else 0.0
