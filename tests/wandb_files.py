"""Read offline W&B runs back: the .wandb file is LevelDB's log format around protobuf Records.

wandb >= 0.19 writes it from its Go core and ships no Python reader, so the tests carry
this small one (header ':W&B' + magic 0xBEE1 + version, then 32 KiB blocks of records).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list[Any]:
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B" and magic == 0xBEE1, f"{path}: not a W&B run file"
    out, pos, pending = [], 7, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            pos += BLOCK - pos % BLOCK if pos % BLOCK else 0
            continue
        if kind in (FULL, FIRST):
            pending = chunk
        else:
            pending += chunk
        if kind in (FULL, LAST):
            rec = pb.Record()
            rec.ParseFromString(pending)
            out.append(rec)
    return out


@dataclass
class OfflineRun:
    folder: Path
    config: dict[str, Any] = field(default_factory=dict)
    group: str = ""
    name: str = ""  # the run's display name
    job_type: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)  # what the run saved under files/ (requirements.txt, ...)
    # logged artifacts: name -> {"type", "aliases", "metadata", "paths" (the manifest's file paths)}
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)


def read_run(folder: Path) -> OfflineRun:
    run = OfflineRun(folder)
    run.files = sorted(f.name for f in (folder / "files").glob("*") if f.is_file())
    for rec in records(next(folder.glob("run-*.wandb"))):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            run.group, run.job_type, run.name = rec.run.run_group, rec.run.job_type, rec.run.display_name
            for item in rec.run.config.update:
                run.config[item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in rec.config.update:
                run.config[item.key] = json.loads(item.value_json)
        elif kind == "history":
            run.history.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "artifact":
            a = rec.artifact
            run.artifacts[a.name] = {
                "type": a.type,
                "aliases": list(a.aliases),
                "metadata": json.loads(a.metadata) if a.metadata else {},
                "paths": sorted(e.path for e in a.manifest.contents),
            }
        elif kind == "summary":
            for item in rec.summary.update:
                run.summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    for key, value in run.config.items():  # wandb stores config values as {"value": v}
        if isinstance(value, dict) and set(value) == {"value"}:
            run.config[key] = value["value"]
    return run


def read_runs(wandb_dir: Path) -> list[OfflineRun]:
    return [read_run(d) for d in sorted(wandb_dir.glob("offline-run-*"))]
