"""What an augmentation run generates: the source reports it picks, how many samples each, and
the keys that name their generated rows in the cache (see :mod:`abexrat.augment.pipeline`)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from abexrat.augment.config import AugmentConfig, StepConfig
from abexrat.augment.engines import model_identity
from abexrat.augment.prompts import PROMPT_VERSION, prompt_digest
from abexrat.core.errors import UserError
from abexrat.data import Dataset

CACHE_VERSION = "1"


@dataclass(frozen=True)
class SourceJob:
    """One original report to augment with ``k`` synthetic reports."""

    source_key: str
    source_id: str
    label: str
    text: str
    k: int


def derive_seed(seed: int, source_id: str, k: int) -> int:
    """A 31-bit seed of sample ``k`` of a source (k = 0: its abstract), stable across runs and machines."""
    digest = hashlib.sha256(f"{seed}\0{source_id}\0{k}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


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
