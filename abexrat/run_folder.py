"""The run folder: what ``abexrat train`` writes and ``predict``/``evaluate`` read.

A run folder holds::

    metrics.json                      config, seeds, val/test scores (written last)
    config.yaml                       the resolved config
    README.md                         the model card
    encoder/encoder.{json,safetensors} the fitted encoder
    models/seed-<k>/model.safetensors one MLP per seed, plus model.json (shapes, classes)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from abexrat.config import TrainConfig
from abexrat.core.errors import UserError
from abexrat.core.io import write_bytes, write_json, write_text
from abexrat.encoders import Encoder, load_encoder, save_encoder
from abexrat.features import Features
from abexrat.model import EnsembleMLP
from abexrat.train import TrainResult


def model_files(result: TrainResult, classes: list[str], encoder_key: str) -> dict[str, bytes]:
    """Every seed's MLP as a run folder's files (``models/seed-<s>/model.safetensors`` and
    ``model.json``), as bytes: a study's trial sends them to the driver, which has the encoder."""
    from safetensors.torch import save

    files = {}
    for s, seed in enumerate(result.seeds):
        folder = f"models/seed-{seed}"
        files[f"{folder}/model.safetensors"] = save(result.model.seed_state(s))
        meta = {
            "seed": seed,
            "dims": result.model.dims,
            "ensemble": result.model.group,
            "classes": classes,
            "encoder_key": encoder_key,
            "input_scale": result.scale,
        }
        files[f"{folder}/model.json"] = (json.dumps(meta, indent=2) + "\n").encode()
    return files


def save_run(
    out: Path, cfg: TrainConfig, enc: Encoder, classes: list[str], result: TrainResult, metrics: dict[str, Any]
) -> None:
    """Write a run folder; metrics.json goes last, so its presence marks a complete run."""
    write_run(out, cfg, enc, model_files(result, classes, enc.key), metrics)


def write_run(
    out: Path,
    cfg: TrainConfig,
    enc: Encoder,
    files: dict[str, bytes],
    metrics: dict[str, Any],
    chosen: str | None = None,
) -> None:
    """A run folder from its parts (``files``: :func:`model_files`), its model card (README.md;
    ``chosen``: how a study chose its config), metrics.json last."""
    from abexrat.card import model_card

    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    save_encoder(enc, out / "encoder")
    for name, data in files.items():
        write_bytes(out / name, data)
    write_text(out / "README.md", model_card(cfg, metrics, chosen))
    write_json(out / "metrics.json", metrics)


@dataclass
class LoadedRun:
    folder: Path
    config: dict[str, Any]
    classes: list[str]
    encoder: Encoder
    model: EnsembleMLP
    seeds: list[int]


def load_run(folder: str | Path) -> LoadedRun:
    """A trained run: its encoder and every seed's MLP (safetensors + JSON, no pickle)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    metrics_path = folder / "metrics.json"
    if not metrics_path.is_file():
        raise UserError(f"{metrics_path}: not found; {folder} is not a finished run (abexrat train ... --out {folder})")
    try:
        metrics = json.loads(metrics_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{metrics_path}: not valid JSON") from None
    seeds = metrics.get("seeds") or []
    states, classes = [], None
    for seed in seeds:
        mdir = folder / "models" / f"seed-{seed}"
        try:
            meta = json.loads((mdir / "model.json").read_text())
            states.append(load_file(str(mdir / "model.safetensors")))
        except (OSError, ValueError) as e:
            raise UserError(f"{mdir}: cannot load the model of seed {seed} ({e})") from None
        classes = meta["classes"]
    if not states or classes is None:
        raise UserError(f"{metrics_path}: names no seed models")
    enc = load_encoder(folder / "encoder")
    return LoadedRun(folder, metrics.get("config", {}), classes, enc, EnsembleMLP.from_members(states), seeds)


def run_metrics(
    cfg: TrainConfig,
    feats: Features,
    result: TrainResult,
    scores: dict[str, Any],
    train_size: int,
    t0: float,
    **extra: Any,
) -> dict[str, Any]:
    """metrics.json of a trained run (``extra`` keys go before the timings)."""
    stats = feats.stats
    return {
        "config": cfg.model_dump(mode="json"),
        "seeds": result.seeds,
        "classes": feats.classes,
        "val": scores["val"],
        "test": scores["test"],
        "train_size": int(train_size),
        "history": result.history,
        **({"robustness": scores["robustness"]} if "robustness" in scores else {}),
        **extra,
        "timings": {
            "encode_s": stats.encode_s,
            "fit_encoder_s": stats.fit_s,
            "texts_encoded": stats.encoded,
            "texts_cached": stats.cached,
            "train_s": result.train_s,
            "total_s": time.perf_counter() - t0,
        },
    }
