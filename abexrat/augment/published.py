"""``import-published``: the paper's own ABEX output (train_aug.json's 2,785 synthetic rows) as a pool.

The rows keep their ids (``"<source>-aug-<k>"``), sources and labels; their abstracts, seeds and
prompts were not published, so those columns are null. The filter flags are null too: the rows
were never filtered here, and a null says "not checked" where False would say "passed".
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from abexrat.augment.pipeline import POOL_FILE, SUMMARY_FILE, pool_schema, versions, write_table
from abexrat.core.io import sha256_file, write_json
from abexrat.osha import OSHA_COMMIT, OSHA_FILES, load_osha, resolve_data_dir

PUBLISHED_ENGINE = "published"
# What the paper says produced them; the exact checkpoints and prompts were not released.
PUBLISHED_MODEL = "ABEX-RAT paper (Qwen3 abstraction, BART-based expansion)"
_K = re.compile(r"-aug-(\d+)$")


def import_published(out_dir: Path, data_dir: str | Path | None = None) -> dict[str, Any]:
    """Write ``out_dir/pool.parquet`` and ``pool.json`` from the OSHA files' synthetic rows; returns pool.json."""
    ds = load_osha(data_dir)
    syn = ds.synthetic
    rows = []
    for rid, text, label, src in zip(syn.ids, syn.texts, syn.labels, syn.source_ids):
        rows.append(
            {
                "id": rid,
                "source_id": src,
                "label": ds.classes[int(label)],
                "abstract": None,
                "text": text,
                "engine": PUBLISHED_ENGINE,
                "model": PUBLISHED_MODEL,
                "prompt_version": None,
                "seed": None,
                "k": int(_K.search(rid).group(1)),  # type: ignore[union-attr]  # load_osha matched the pattern
            }
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_table(out_dir / POOL_FILE, rows, pool_schema())
    per_class: dict[str, dict[str, int]] = {}
    for r in rows:
        c = per_class.setdefault(r["label"], {"sources": 0, "generated": 0, "kept": 0})
        c["generated"] += 1
        c["kept"] += 1
    for label in per_class:
        per_class[label]["sources"] = len({r["source_id"] for r in rows if r["label"] == label})
    source = resolve_data_dir(data_dir) / "train_aug.json"
    summary = {
        "name": "published",
        "kind": "published",
        "dataset": ds.name,
        "rows": len(rows),
        "counts": {
            "sources": len({r["source_id"] for r in rows}),
            "generated": len(rows),
            "removed": {},
            "kept": len(rows),
            "per_class": per_class,
        },
        "source": {
            "file": str(source),
            "sha256": sha256_file(source),
            "expected_sha256": OSHA_FILES["train_aug.json"],
            "commit": OSHA_COMMIT,
        },
        "versions": versions(),
    }
    write_json(out_dir / SUMMARY_FILE, summary)
    return summary
