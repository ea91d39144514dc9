"""ABEX on Ray Data: read -> abstract -> expand -> filter -> write, with a content-addressed chunk cache.

The Ray pipeline, over the source reports not yet in the cache::

    from_items(one row per source: abstraction messages)        read
    -> engine(abstract)   actor pool: generated_text = the abstract
    -> flat_map           k expansion requests per source, a seed each
    -> engine(expand)     actor pool: generated_text = a new report
    -> driver             rows grouped by chunk; a complete chunk is written at once

Then the filters run over every row of the plan (cached or new) and the pool is written.

**Cache.** A *spec key* hashes what decides the outputs apart from the source: both steps' engine,
model (a local folder by its file digest), sampling and token limits, the prompt version and
templates, and the run's seed. A *source key* hashes the spec key with one source's id, label, text
and sample count k. Generated rows are stored per chunk under ``<cache>/augment/<spec key>/`` as
Parquet files named by the digest of their source keys, each written atomically once all of its
sources' rows are in. A run looks up every source key first and generates only the missing ones:
a rerun generates nothing, and a killed run resumes at the first chunk it had not written.
Batch size and actor counts change the speed, not the rows, so they are not in the keys.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from abexrat.augment.config import AugmentConfig, StepConfig
from abexrat.augment.engines import ENGINES, model_identity, sampling_params
from abexrat.augment.filters import FILTERS, apply_filters
from abexrat.augment.prompts import PROMPT_VERSION, abstraction_messages, expansion_messages, prompt_digest
from abexrat.core.errors import UserError
from abexrat.core.io import atomic_path, cache_dir, write_json
from abexrat.data import Dataset

CACHE_VERSION = "1"
# Light CPU stages (building prompts) reserve little, so they fit beside the generator actors.
LIGHT_CPUS = 0.1
# Seconds the driver waits after writing each chunk: only for watching or testing an interrupted run.
PAUSE_ENV = "ABEXRAT_AUGMENT_CHUNK_PAUSE_S"
POOL_FILE, REJECTED_FILE, SUMMARY_FILE = "pool.parquet", "rejected.parquet", "pool.json"
CHUNK_COLUMNS = ("source_key", "source_id", "label", "k", "seed", "abstract", "text", "abstract_tokens", "text_tokens")
_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL)
_LEAD = re.compile(r"^\s*(abstract|report|new report|accident report|summary)\s*:\s*", re.IGNORECASE)


@dataclass(frozen=True)
class SourceJob:
    """One original report to augment with ``k`` synthetic reports."""

    source_key: str
    source_id: str
    label: str
    text: str
    k: int


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


def derive_seed(seed: int, source_id: str, k: int) -> int:
    """A 31-bit seed of sample ``k`` of a source (k = 0: its abstract), stable across runs and machines."""
    digest = hashlib.sha256(f"{seed}\0{source_id}\0{k}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def clean_generation(text: str) -> str:
    """A model's answer as plain text: no thinking block, no "Report:" lead, no quotes, one line."""
    text = _THINK.sub(" ", text or "")
    text = " ".join(text.split())
    for _ in range(2):  # '"Report: ..."' and 'Report: "..."' alike
        text = _LEAD.sub("", text)
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
            text = text[1:-1].strip()
    return text


# ---------------------------------------------------------------- plan


def step_identity(step: StepConfig) -> dict[str, Any]:
    """The parts of a step that change its output (not batch sizes or actor counts)."""
    penalty = {"repetition_penalty": step.repetition_penalty} if step.repetition_penalty != 1.0 else {}
    return {
        **penalty,
        "engine": step.engine,
        "model": model_identity(str(step.model)),
        "temperature": step.temperature,
        "top_p": step.top_p,
        "max_new_tokens": step.max_new_tokens,
        "max_model_len": step.max_model_len,
        "chat_template_kwargs": step.chat_template_kwargs,
    }


def spec_key(cfg: AugmentConfig) -> str:
    spec = {
        "cache_version": CACHE_VERSION,
        "seed": cfg.seed,
        "prompt_version": PROMPT_VERSION,
        "prompts": prompt_digest(),
        "abstract": step_identity(cfg.abstract),
        "expand": {**step_identity(cfg.expand), "style": cfg.expand.style},
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:32]


def _source_key(spec: str, source_id: str, label: str, text: str, k: int) -> str:
    blob = json.dumps([spec, source_id, label, text, k]).encode()
    return hashlib.sha256(blob).hexdigest()


def _by_class(value: int | dict[str, int] | None, cls: str, key: str, where: str) -> int:
    if isinstance(value, dict):
        if cls not in value:
            raise UserError(f"{where}: {key}: no amount for class {cls!r}")
        return value[cls]
    return int(value or 0)


def select_classes(cfg: AugmentConfig, ds: Dataset, where: str = "config") -> list[str]:
    """The classes to augment, in the dataset's class order."""
    for key in ("per_source", "target"):
        value = getattr(cfg.amount, key)
        for c in value if isinstance(value, dict) else []:
            if c not in ds.classes:
                raise UserError(
                    f"{where}: amount.{key}: {c!r} is not a class of {ds.name} (classes: {', '.join(ds.classes)})"
                )
    sel = cfg.select
    if sel.classes is not None:
        for c in sel.classes:
            if c not in ds.classes:
                raise UserError(
                    f"{where}: select.classes: {c!r} is not a class of {ds.name} (classes: {', '.join(ds.classes)})"
                )
        return [c for c in ds.classes if c in sel.classes]
    if sel.max_originals is not None:
        counts = np.bincount(ds.train.labels, minlength=len(ds.classes))
        return [c for c, n in zip(ds.classes, counts) if n <= sel.max_originals]
    amounts = cfg.amount.per_source if cfg.amount.per_source is not None else cfg.amount.target
    if isinstance(amounts, dict):
        return [c for c in ds.classes if c in amounts]
    raise UserError(f"{where}: select: name the classes (select.classes) or a size threshold (select.max_originals)")


def plan_sources(cfg: AugmentConfig, ds: Dataset, where: str = "config") -> list[SourceJob]:
    """Every training original to augment with its k, in class order then training order.

    ``per_source`` gives k directly; ``target`` T gives a class of n originals T - n synthetic rows,
    ``floor`` shares for every source and one more for a seeded choice of the remainder.
    """
    spec = spec_key(cfg)
    jobs = []
    for cls in select_classes(cfg, ds, where):
        c = ds.classes.index(cls)
        rows = np.flatnonzero(ds.train.labels == c)
        n_all = len(rows)
        if cfg.select.max_sources_per_class is not None:
            rows = rows[: cfg.select.max_sources_per_class]
        if cfg.amount.per_source is not None:
            ks = np.full(len(rows), _by_class(cfg.amount.per_source, cls, "amount.per_source", where))
        else:
            need = max(0, _by_class(cfg.amount.target, cls, "amount.target", where) - n_all)
            base, extra = divmod(need, len(rows)) if len(rows) else (0, 0)
            ks = np.full(len(rows), base)
            rng = np.random.default_rng(derive_seed(cfg.seed, f"target:{cls}", 0))
            ks[rng.choice(len(rows), size=extra, replace=False)] += 1
        for i, k in zip(rows, ks):
            if k > 0:
                sid, text = ds.train.ids[i], ds.train.texts[i]
                jobs.append(SourceJob(_source_key(spec, sid, cls, text, int(k)), sid, cls, text, int(k)))
    return jobs


# ---------------------------------------------------------------- cache


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


# ---------------------------------------------------------------- generation on Ray Data


def _expansion_requests(row: dict[str, Any], seed: int, step: StepConfig, style: str) -> list[dict[str, Any]]:
    """One source's abstract -> its k expansion requests, each with its own seed."""
    abstract = clean_generation(str(row["generated_text"]))
    out = []
    for k in range(1, int(row["n_samples"]) + 1):
        s = derive_seed(seed, str(row["source_id"]), k)
        out.append(
            {
                "source_key": row["source_key"],
                "chunk": row["chunk"],
                "source_id": row["source_id"],
                "label": row["label"],
                "k": k,
                "seed": s,
                "abstract": abstract,
                "abstract_tokens": int(row["num_generated_tokens"]),
                # An empty abstract still gets a prompt; its reports will fail the length filter if empty.
                "messages": expansion_messages(abstract or "(no abstract)", str(row["label"]), style),
                "sampling_params": sampling_params(step, s),
            }
        )
    return out


def ensure_ray() -> None:
    """Start a local Ray (or join ``$RAY_ADDRESS``) unless this process already has one."""
    import ray

    if not ray.is_initialized():
        ray.init(ignore_reinit_error=True, include_dashboard=False, logging_level="WARNING")


def generate(
    jobs: list[SourceJob],
    cfg: AugmentConfig,
    cache: ChunkCache,
    stats: GenStats,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Run the Ray Data pipeline over ``jobs`` and write each chunk of ``cfg.chunk_size`` sources as it completes."""
    if not jobs:
        return
    import ray

    ensure_ray()
    t0 = time.perf_counter()
    chunks = [jobs[i : i + cfg.chunk_size] for i in range(0, len(jobs), cfg.chunk_size)]
    expected = {c: sum(j.k for j in chunk) for c, chunk in enumerate(chunks)}
    items = [
        {
            "source_key": j.source_key,
            "chunk": c,
            "source_id": j.source_id,
            "label": j.label,
            "n_samples": j.k,
            "messages": abstraction_messages(j.text, j.label),
            "sampling_params": sampling_params(cfg.abstract, derive_seed(cfg.seed, j.source_id, 0)),
        }
        for c, chunk in enumerate(chunks)
        for j in chunk
    ]
    # One block per chunk, so chunks finish (and are written) one after another, not all at the end.
    ds = ray.data.from_items(items, override_num_blocks=len(chunks))
    ds = ENGINES[str(cfg.abstract.engine)](cfg.abstract).apply(
        ds, keep=["source_key", "chunk", "source_id", "label", "n_samples"]
    )
    ds = ds.flat_map(
        _expansion_requests,
        fn_kwargs={"seed": cfg.seed, "step": cfg.expand, "style": cfg.expand.style},
        num_cpus=LIGHT_CPUS,
    )
    ds = ENGINES[str(cfg.expand.engine)](cfg.expand).apply(
        ds, keep=["source_key", "chunk", "source_id", "label", "k", "seed", "abstract", "abstract_tokens"]
    )

    pause = float(os.environ.get(PAUSE_ENV) or 0)
    pending: dict[int, list[dict[str, Any]]] = {c: [] for c in expected}
    for row in ds.iter_rows():
        c = int(row["chunk"])
        pending[c].append(
            {
                "source_key": str(row["source_key"]),
                "source_id": str(row["source_id"]),
                "label": str(row["label"]),
                "k": int(row["k"]),
                "seed": int(row["seed"]),
                "abstract": str(row["abstract"]),
                "text": clean_generation(str(row["generated_text"])),
                "abstract_tokens": int(row["abstract_tokens"]),
                "text_tokens": int(row["num_generated_tokens"]),
            }
        )
        if len(pending[c]) == expected[c]:
            done = pending.pop(c)
            cache.write(done)
            stats.chunks_written += 1
            stats.rows_generated += len(done)
            stats.sources_generated += len(chunks[c])
            # An abstract's tokens are counted once per source, on its first sample.
            stats.abstract_tokens += sum(r["abstract_tokens"] for r in done if r["k"] == 1)
            stats.expand_tokens += sum(r["text_tokens"] for r in done)
            if progress:
                progress(len(chunks[c]))
            if pause:
                time.sleep(pause)
    if pending:
        missing = sum(expected[c] - len(rows) for c, rows in pending.items())
        raise RuntimeError(f"the pipeline lost {missing} row(s) of {len(pending)} chunk(s)")
    stats.generate_s = time.perf_counter() - t0


# ---------------------------------------------------------------- the run


def load_source_dataset(cfg: AugmentConfig) -> Dataset:
    """The dataset whose originals are augmented (no pool attached)."""
    from abexrat.config import TrainConfig
    from abexrat.datasets import load_dataset

    return load_dataset(TrainConfig(data=cfg.data.as_data_config()))


def versions() -> dict[str, str | None]:
    import importlib.metadata as md

    out: dict[str, str | None] = {}
    for pkg in ("abexrat", "ray", "transformers", "torch", "vllm", "pyarrow"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def pool_rows(
    jobs: list[SourceJob], cached: dict[str, list[dict[str, Any]]], cfg: AugmentConfig
) -> list[dict[str, Any]]:
    """Every planned row with its provenance, in plan order (class, source, k)."""
    out = []
    for j in jobs:
        for r in sorted(cached[j.source_key], key=lambda r: r["k"]):
            out.append(
                {
                    "id": f"{j.source_id}-aug-{r['k']}",
                    "source_id": j.source_id,
                    "label": j.label,
                    "abstract": r["abstract"],
                    "text": r["text"],
                    "engine": cfg.expand.engine,
                    "model": cfg.expand.model,
                    "prompt_version": PROMPT_VERSION,
                    "seed": r["seed"],
                    "k": r["k"],
                    "abstract_engine": cfg.abstract.engine,
                    "abstract_model": cfg.abstract.model,
                    "abstract_tokens": r["abstract_tokens"],
                    "text_tokens": r["text_tokens"],
                    "source_key": j.source_key,
                }
            )
    return out


def write_table(path: Path, rows: list[dict[str, Any]], schema: Any) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)


def pool_schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            ("id", pa.string()),
            ("source_id", pa.string()),
            ("label", pa.string()),
            ("abstract", pa.string()),
            ("text", pa.string()),
            ("engine", pa.string()),
            ("model", pa.string()),
            ("prompt_version", pa.string()),
            ("seed", pa.int64()),
            ("k", pa.int64()),
            ("abstract_engine", pa.string()),
            ("abstract_model", pa.string()),
            ("abstract_tokens", pa.int64()),
            ("text_tokens", pa.int64()),
            ("source_key", pa.string()),
            *[(f"flag_{name}", pa.bool_()) for name in FILTERS],
            ("near_dup_sim", pa.float32()),
            ("label_prob", pa.float32()),
        ]
    )


def run_augment(
    cfg: AugmentConfig,
    out_dir: Path,
    *,
    cache_root: Path | None = None,
    where: str = "config",
    progress: Callable[[str, int], Callable[[int], None]] | None = None,
) -> dict[str, Any]:
    """Plan, generate what the cache lacks, filter, and write ``out_dir/{pool.parquet, rejected.parquet, pool.json}``.

    ``pool.parquet`` holds the kept rows (what training samples from); ``rejected.parquet`` the
    removed ones with the flag of the filter that removed them. Returns pool.json's content.
    """
    t0 = time.perf_counter()
    ds = load_source_dataset(cfg)
    jobs = plan_sources(cfg, ds, where)
    spec = spec_key(cfg)
    cache = ChunkCache(cache_root, spec)
    stats = GenStats(sources=len(jobs))
    cached = cache.load(stats)
    missing = [j for j in jobs if not complete(cached.get(j.source_key), j)]
    stats.sources_cached = len(jobs) - len(missing)
    stats.rows_cached = sum(j.k for j in jobs) - sum(j.k for j in missing)
    if missing:
        tick = progress("generating (sources)", len(missing)) if progress else None
        generate(missing, cfg, cache, stats, tick)
        cached = cache.load(stats)
    lost = [j for j in jobs if not complete(cached.get(j.source_key), j)]
    if lost:
        raise RuntimeError(f"{len(lost)} source(s) still missing from the cache {cache.dir} after generation")

    rows = pool_rows(jobs, cached, cfg)
    index = {c: i for i, c in enumerate(ds.classes)}
    labels = np.array([index[r["label"]] for r in rows], dtype=np.int64)
    originals = ds.train.texts + ds.val.texts + ds.test.texts
    t_filter = time.perf_counter()
    res = apply_filters(
        [r["text"] for r in rows], labels, originals, cfg.filters, ds.train.texts, ds.train.labels, len(ds.classes)
    )
    for i, r in enumerate(rows):
        for name in FILTERS:
            r[f"flag_{name}"] = bool(res.flags[name][i])
        r["near_dup_sim"] = float(res.near_dup_sim[i])
        r["label_prob"] = float(res.label_prob[i])
    kept = res.kept
    filter_s = time.perf_counter() - t_filter

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # pool.json last, and an old one gone first: its presence means the files beside it match it.
    (out_dir / SUMMARY_FILE).unlink(missing_ok=True)
    schema = pool_schema()
    write_table(out_dir / POOL_FILE, [r for r, k in zip(rows, kept) if k], schema)
    write_table(out_dir / REJECTED_FILE, [r for r, k in zip(rows, kept) if not k], schema)
    per_class = {c: {"sources": 0, "generated": 0, "kept": 0} for c in select_classes(cfg, ds, where)}
    for j in jobs:
        per_class[j.label]["sources"] += 1
    for r, k in zip(rows, kept):
        per_class[r["label"]]["generated"] += 1
        per_class[r["label"]]["kept"] += int(k)
    summary = {
        "name": cfg.name,
        "kind": "abex",
        "dataset": ds.name,
        "rows": int(kept.sum()),
        "counts": {
            "sources": len(jobs),
            "generated": len(rows),
            "removed": res.removed,
            "kept": int(kept.sum()),
            "per_class": per_class,
        },
        "run": {
            **asdict(stats),
            "tokens_per_s": round(stats.tokens_per_s, 2),
            "filter_s": round(filter_s, 3),
            "total_s": round(time.perf_counter() - t0, 3),
        },
        "spec_key": spec,
        "cache_dir": str(cache.dir),
        "prompt_version": PROMPT_VERSION,
        "config": cfg.model_dump(mode="json"),
        "versions": versions(),
    }
    write_json(out_dir / SUMMARY_FILE, summary)  # last: its presence means the pool is complete
    return summary
