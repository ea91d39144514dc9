"""The augment config: which reports to augment, how much, with which engines and filters.

A YAML file validated by pydantic (unknown keys refused); a bad value is a :class:`UserError`
naming the file and the dotted key. Class names are checked against the dataset at run time.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from abexrat.config import DataConfig, DataSource, Strict, apply_overrides, one_of, validate
from abexrat.core.safe_yaml import load_yaml


class AugmentData(DataSource):
    """The dataset whose training originals are augmented (same meaning as a train config's ``data``)."""

    def as_data_config(self, where: str = "config") -> DataConfig:
        """The train-config form of this section (no pool: the originals alone are what ABEX rewrites).

        Validated like a train config's ``data``, so its bounds hold here too and a value out of
        them is a :class:`UserError` naming ``data.<key>``.
        """
        return validate(DataConfig, {**self.model_dump(), "aug_pool": "none"}, f"{where}: data")


class SelectConfig(Strict):
    """Which classes to augment: ``classes`` by name, else every class with at most ``max_originals`` reports."""

    classes: list[str] | None = None
    max_originals: int | None = Field(None, ge=1)
    max_sources_per_class: int | None = Field(None, ge=1, description="use only the first N reports of a class")


class AmountConfig(Strict):
    """How many synthetic reports: ``per_source`` (k per original) or ``target`` (class size after augmenting).

    Each is one int for every selected class or a mapping class -> int. A target is reached by giving
    each source ``floor(need / n)`` samples and one more to ``need mod n`` of them (seeded choice).
    """

    per_source: int | dict[str, int] | None = None
    target: int | dict[str, int] | None = None

    @field_validator("per_source", "target")
    @classmethod
    def _counts(cls, v: Any) -> Any:
        values = v.values() if isinstance(v, dict) else [] if v is None else [v]
        if any(not 0 <= n <= 100_000 for n in values):
            raise ValueError("amounts must be in [0, 100000]")
        return v

    @model_validator(mode="after")
    def _one(self) -> AmountConfig:
        if self.per_source is not None and self.target is not None:
            raise ValueError("give per_source or target, not both")
        if self.per_source is None and self.target is None:
            self.per_source = 5
        return self


class StepConfig(Strict):
    """One generation step: engine, model, sampling, and the actor pool that runs it."""

    engine: str = "transformers"
    model: str = "Qwen/Qwen3-0.6B"
    temperature: float = Field(0.7, ge=0.0, le=5.0, description="0 = greedy")
    top_p: float = Field(0.8, gt=0.0, le=1.0)
    max_new_tokens: int = Field(128, ge=1, le=16384)
    # > 1 discourages tokens already generated: small models otherwise loop on one sentence.
    repetition_penalty: float = Field(1.0, ge=1.0, le=2.0)
    concurrency: int = Field(1, ge=1, le=4096, description="actors (vllm: GPU engine replicas)")
    batch_size: int = Field(16, ge=1, le=65536, description="rows per batch sent to an actor")
    num_cpus: float = Field(1.0, ge=0.0, le=1024.0, description="transformers: CPUs reserved per actor")
    num_gpus: float = Field(0.0, ge=0.0, le=64.0, description="transformers: GPUs reserved per actor")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    tensor_parallel_size: int = Field(1, ge=1, le=64, description="vllm: GPUs per engine replica")
    max_model_len: int | None = Field(None, ge=16)
    accelerator_type: str | None = Field(None, description="vllm: e.g. H100")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="vllm: extra engine arguments")
    # Qwen3 thinks aloud by default; an abstract or a report must not start with a monologue.
    chat_template_kwargs: dict[str, Any] = Field(default_factory=lambda: {"enable_thinking": False})

    @field_validator("engine")
    @classmethod
    def _known(cls, v: str) -> str:
        return one_of(v, "abexrat.augment.engines", "ENGINES", "engine")


class ExpandConfig(StepConfig):
    """The expansion step. ``model`` left out: the abstraction step's LLM (one LLM, two prompts), with
    its engine, actor pool and engine settings unless given here; sampling stays the expander's own.

    ``style: seq2seq`` feeds the bare abstract to an encoder-decoder expander such as BART.
    """

    engine: str | None = None  # type: ignore[assignment]
    model: str | None = None  # type: ignore[assignment]
    style: Literal["chat", "seq2seq"] = "chat"
    temperature: float = Field(1.0, ge=0.0, le=5.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_new_tokens: int = Field(192, ge=1, le=16384)

    @field_validator("engine")
    @classmethod
    def _known(cls, v: str | None) -> str | None:
        return None if v is None else StepConfig._known(v)


class FilterConfig(Strict):
    """Which generated rows are dropped; each filter's count is reported."""

    min_words: int = Field(12, ge=0)
    max_words: int = Field(400, ge=1)
    exact_dup: bool = True
    near_dup: float | None = Field(0.8, gt=0.0, le=1.0, description="Jaccard of word 3-gram sets; null = off")
    label_check: bool = False
    label_threshold: float = Field(0.5, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _bounds(self) -> FilterConfig:
        if self.min_words > self.max_words:
            raise ValueError("min_words is larger than max_words")
        return self


# What an expander that is the abstraction LLM inherits from the abstract section (not sampling).
SHARED_ENGINE_SETTINGS = (
    "engine",
    "concurrency",
    "batch_size",
    "num_cpus",
    "num_gpus",
    "device",
    "tensor_parallel_size",
    "max_model_len",
    "accelerator_type",
    "engine_kwargs",
    "chat_template_kwargs",
)


class AugmentConfig(Strict):
    """One ABEX run: originals -> abstracts -> k reports each -> filters -> a pool."""

    name: str = "augment"
    seed: int = Field(0, ge=0, description="every sample's seed is derived from it, the source id and k")
    data: AugmentData = Field(default_factory=AugmentData)
    select: SelectConfig = Field(default_factory=lambda: SelectConfig(max_originals=200))
    amount: AmountConfig = Field(default_factory=AmountConfig)
    abstract: StepConfig = Field(default_factory=StepConfig)
    expand: ExpandConfig = Field(default_factory=ExpandConfig)
    filters: FilterConfig = Field(default_factory=FilterConfig)
    chunk_size: int = Field(16, ge=1, le=100_000, description="source reports per cache chunk")

    @model_validator(mode="after")
    def _resolve(self) -> AugmentConfig:
        # The default expander is the abstraction LLM itself, run the same way: its engine settings
        # come from the abstract section unless the expand section names them.
        if self.expand.model is None:
            given = set(self.expand.model_fields_set)
            for name in SHARED_ENGINE_SETTINGS:
                if name not in given:
                    setattr(self.expand, name, copy.deepcopy(getattr(self.abstract, name)))
            self.expand.model = self.abstract.model
        if self.expand.engine is None:
            self.expand.engine = self.abstract.engine
        if self.expand.style == "seq2seq" and self.expand.engine == "vllm":
            raise ValueError("expand.style: seq2seq needs engine transformers (vLLM runs decoder-only models here)")
        return self


def load_augment_config(path: str | Path | None, overrides: list[str] | None = None) -> AugmentConfig:
    """A validated :class:`AugmentConfig` from YAML (``None``: the defaults) and ``--set`` overrides."""
    raw = load_yaml(path) if path else {}
    raw = apply_overrides(raw, overrides or [])
    cfg = validate(AugmentConfig, raw, str(path or "config"))
    cfg.data.as_data_config(str(path or "config"))  # the dataset keys must also pass a train config's checks
    return cfg
