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

import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from abexrat.augment.cache import ChunkCache, GenStats, complete
from abexrat.augment.config import AugmentConfig, StepConfig
from abexrat.augment.engines import ENGINES, check_actor_fit, sampling_params
from abexrat.augment.filters import FILTERS, apply_filters
from abexrat.augment.plan import SourceJob, derive_seed, plan_sources, select_classes, spec_key
from abexrat.augment.prompts import PROMPT_VERSION, abstraction_messages, expansion_messages
from abexrat.core.io import atomic_path, write_json
from abexrat.data import Dataset

# Light CPU stages (building prompts) reserve nothing, so they run beside generator actors that
# reserve every core.
LIGHT_CPUS = 0
# Seconds the driver waits after writing each chunk: only for watching or testing an interrupted run.
PAUSE_ENV = "ABEXRAT_AUGMENT_CHUNK_PAUSE_S"
POOL_FILE, REJECTED_FILE, SUMMARY_FILE = "pool.parquet", "rejected.parquet", "pool.json"
_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL)
_LEAD = re.compile(r"^\s*(abstract|report|new report|accident report|summary)\s*:\s*", re.IGNORECASE)


def clean_generation(text: str) -> str:
    """A model's answer as plain text: no thinking block, no "Report:" lead, no quotes, one line."""
    text = _THINK.sub(" ", text or "")
    text = " ".join(text.split())
    for _ in range(2):  # '"Report: ..."' and 'Report: "..."' alike
        text = _LEAD.sub("", text)
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
            text = text[1:-1].strip()
    return text


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
    check_actor_fit(cfg.abstract, cfg.expand, ray.cluster_resources())
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


def _all_rows(
    jobs: list[SourceJob],
    cfg: AugmentConfig,
    cache: ChunkCache,
    stats: GenStats,
    progress: Callable[[str, int], Callable[[int], None]] | None,
) -> dict[str, list[dict[str, Any]]]:
    """Every job's generated rows by source key: from the cache, after generating what it lacks."""
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
    return cached


def _per_class(
    classes: list[str], jobs: list[SourceJob], rows: list[dict[str, Any]], kept: np.ndarray
) -> dict[str, dict[str, int]]:
    """Sources, generated rows and kept rows of each selected class (pool.json's ``per_class``)."""
    per_class = {c: {"sources": 0, "generated": 0, "kept": 0} for c in classes}
    for j in jobs:
        per_class[j.label]["sources"] += 1
    for r, k in zip(rows, kept):
        per_class[r["label"]]["generated"] += 1
        per_class[r["label"]]["kept"] += int(k)
    return per_class


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
    cached = _all_rows(jobs, cfg, cache, stats, progress)

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
    per_class = _per_class(select_classes(cfg, ds, where), jobs, rows, kept)
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
