"""Training configs: YAML files validated by pydantic, with ``--set key=value`` overrides.

An unknown key, a wrong type or an out-of-range value is a :class:`UserError` that names
the file and the dotted key (``adversarial.p: ...``).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from abexrat.core.errors import UserError
from abexrat.core.io import clip, short_repr
from abexrat.core.safe_yaml import load_yaml, plain_data_problem

MAX_SEED = 2**31 - 1  # numpy's and scikit-learn's legacy generators take seeds below 2**32


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataSource(Strict):
    """Which reports, read how, split how: what a train config's and an augment config's ``data`` share."""

    dataset: str = Field(
        "osha", description="'osha' (the paper's splits), a file, or a folder with train/val/test files"
    )
    data_dir: str | None = Field(None, description="where the OSHA files are (else $ABEXRAT_DATA_DIR, else the cache)")
    text_column: str | None = None
    label_column: str = "gold"
    title_column: str = "title"
    summary_column: str = "summary"
    val_fraction: float = Field(0.1, gt=0.0, lt=0.5)
    test_fraction: float = Field(0.1, gt=0.0, lt=0.5)
    split_seed: int = Field(0, ge=0, le=MAX_SEED)


class DataConfig(DataSource):
    aug_pool: str = Field(
        "published",
        description="'published' (train_aug.json's synthetic rows), 'none', or a pool folder / Parquet file",
    )
    aug_ratio: float = Field(1.0, ge=0.0, le=1.0)
    aug_seed: int = Field(0, ge=0, le=MAX_SEED)
    untitled_copies: bool = Field(
        False, description="also train on each titled training original without its title (reports with none)"
    )
    short_copies: bool = Field(
        False,
        description="also train on each training original cut to its narrative's first sentence, untitled"
        " (short one-line reports)",
    )


def one_of(value: str, module: str, registry: str, what: str) -> str:
    """``value`` if the registry ``module.registry`` names it, else the ValueError a validator
    raises. The registry's module is imported only when a config is checked: configs load without
    torch."""
    import importlib

    names = getattr(importlib.import_module(module), registry)
    if value not in names:
        raise ValueError(f"unknown {what} {value!r} (known: {', '.join(names)})")
    return value


def check_encoder_options(name: str, options: dict[str, Any]) -> None:
    """Each option must be a constructor field of the encoder, of its type: a wrong type would
    otherwise surface as a traceback deep inside the fit (``tfidf_dim: "x"``). A combination's
    parts are checked the same way, each as ``{name, options, weight}``."""
    cls = _encoder_class(name)
    if cls is None:  # an unknown name is reported when the encoder is built
        return
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls) if f.init and not f.name.startswith("_")]
    known = [k for k in known if k not in ("model", "fit_digest")]
    for key, value in options.items():
        name_ = {"dim": "dim_"}.get(key, key)
        if name_ not in known:
            raise ValueError(f"options: unknown option {short_repr(key)} (known: {', '.join(known)})")
        hint = hints[name_]
        v = tuple(value) if isinstance(value, list) and typing.get_origin(hint) is tuple else value
        try:
            TypeAdapter(hint).validate_python(v, strict=True)
        except ValidationError:
            raise ValueError(f"options.{key}: expected {_hint_name(hint)}, got {short_repr(value)}") from None
        if key == "encoders":
            for i, part in enumerate(value):
                try:
                    EncoderPart.model_validate(part)
                except ValidationError as e:
                    raise ValueError(f"options.encoders[{i}].{_first_error(e)}") from None
            continue
        numbers = v if isinstance(v, tuple) else (v,)
        for x in numbers:
            if isinstance(x, bool) or not isinstance(x, int | float):
                continue
            if isinstance(x, int) and not 1 <= x <= 10_000_000:
                raise ValueError(f"options.{key}: must be in 1..10000000, got {short_repr(value)}")
            if isinstance(x, float) and not (math.isfinite(x) and 0 <= x <= 1e6):
                raise ValueError(f"options.{key}: must be a finite number in [0, 1e6], got {short_repr(value)}")


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{where}: {err['msg'].removeprefix('Value error, ')}" if where else err["msg"].removeprefix("Value error, ")


class EncoderPart(Strict):
    """One part of a ``combined`` encoder: a registered encoder, its options, and its weight."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict)
    weight: float = Field(1.0, ge=0.0, le=1e6)

    @model_validator(mode="after")
    def _options(self) -> EncoderPart:
        check_encoder_options(self.name, self.options)
        return self


class EncoderConfig(Strict):
    name: str = "hybrid"
    options: dict[str, Any] = Field(default_factory=dict)
    # > 0: a report's title counts beside its whole text (see abexrat.embed.embed_texts).
    title_weight: float = Field(0.0, ge=0.0, le=100.0)
    # Fitted encoders (tf-idf) fit on the training originals and the synthetic pool's rows.
    fit_synthetic: bool = False

    @model_validator(mode="after")
    def _options(self) -> EncoderConfig:
        check_encoder_options(self.name, self.options)
        return self


def _encoder_class(name: str) -> type | None:
    from abexrat.encoders import encoder_class

    cls = encoder_class(name)
    return cls if isinstance(cls, type) and dataclasses.is_dataclass(cls) else None


def _hint_name(hint: Any) -> str:
    if typing.get_origin(hint) is typing.Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(hint))
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


class ModelConfig(Strict):
    hidden: list[int] = Field(default_factory=lambda: [512])
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    # Each seed's model is the probability average of this many MLPs, trained side by side (each
    # with its own init, order, dropout and attack draws; the first is the single-MLP seed's).
    ensemble: int = Field(1, ge=1, le=16, description="MLPs per seed, their class probabilities averaged")

    @field_validator("hidden")
    @classmethod
    def _sizes(cls, v: list[int]) -> list[int]:
        if len(v) > 8 or any(not 1 <= h <= 16384 for h in v):
            raise ValueError("at most 8 hidden layers, each of 1..16384 units")
        return v


class LossConfig(Strict):
    name: Literal["ce", "focal"] = "focal"
    gamma: float = Field(2.0, ge=0.0, le=10.0)
    alpha: Literal["balanced"] | list[float] | None = None
    logit_adjust: float = Field(
        0.0, ge=0.0, le=5.0, description="tau: train on logits + tau log(class prior) (Menon et al. 2021)"
    )

    @field_validator("alpha")
    @classmethod
    def _alpha(cls, v: Any) -> Any:
        if isinstance(v, list) and any(not 0.0 <= a <= 1000.0 for a in v):
            raise ValueError("each class weight must be in [0, 1000]")
        return v


class OptimConfig(Strict):
    epochs: int = Field(30, ge=1, le=10000)
    batch_size: int = Field(64, ge=1, le=1_000_000)
    lr: float = Field(1e-3, gt=0.0, le=1.0)
    weight_decay: float = Field(0.01, ge=0.0, le=1.0)
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="matmul precision of training: bf16 (fp32 weights and optimizer, bf16 products),"
        " fp32, or auto = bf16 where the CPU multiplies bf16 natively (AVX-512 BF16 / AMX), else fp32",
    )
    device: str = Field(
        "auto",
        pattern=r"^(auto|cpu|cuda(:[0-9]{1,2})?)$",
        description="where training runs: auto (a CUDA GPU when torch sees one, as in a Ray trial given"
        " a GPU share; else the CPU), cpu, cuda or cuda:N",
    )


class AdversarialConfig(Strict):
    method: str = "rat"
    eps: float = Field(
        0.5, ge=0.0, le=100.0, description="perturbation norm, relative to the mean training-vector norm"
    )
    p: float = Field(0.5, ge=0.0, le=1.0, description="rat: probability that a batch gets the fgm term")
    steps: int = Field(3, ge=1, le=100, description="pgd: number of steps")
    step_size: float = Field(0.0, ge=0.0, le=100.0, description="pgd: relative step size; 0 = 2.5 eps / steps")
    eps_min: float = Field(0.0, ge=0.0, le=100.0, description="dpaat: lower bound of the per-sample eps")
    eps_max: float = Field(0.0, ge=0.0, le=100.0, description="dpaat: upper bound; 0 = 2 eps")
    beta: float = Field(1.0, gt=0.0, le=100.0, description="dpaat: how strongly eps follows the loss z-score")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="dpaat: EMA momentum of the loss statistics")

    @field_validator("method")
    @classmethod
    def _known(cls, v: str) -> str:
        return one_of(v, "abexrat.adversarial", "METHODS", "method")


class RobustnessConfig(Strict):
    """How a trained run's robustness is measured (:mod:`abexrat.robustness`, :mod:`abexrat.perturb`):
    attacks on the input vectors at each ε of ``eps`` (relative to the mean training-vector norm, as
    ``adversarial.eps``), and natural perturbations of the texts, re-encoded with the run's encoder."""

    enabled: bool = True
    eps: list[float] = Field(default_factory=lambda: [0.025, 0.05, 0.1, 0.2], min_length=1, max_length=16)
    pgd_steps: int = Field(10, ge=1, le=100)
    natural: bool = Field(True, description="score the natural text perturbations (needs the texts and encoder)")
    char_noise: float = Field(0.05, ge=0.0, le=1.0, description="per-character rate of deletions, swaps, substitutions")
    word_dropout: float = Field(0.1, ge=0.0, lt=1.0, description="per-word rate of dropped words")
    seed: int = Field(0, ge=0, le=MAX_SEED)

    @field_validator("eps")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if any(not (0.0 < e <= 10.0) for e in v):
            raise ValueError(f"every ε must be in (0, 10] (got {v})")
        return sorted(set(v))


class TrainConfig(Strict):
    """One training recipe: data -> encoder -> MLP + loss + adversarial method."""

    name: str = "run"
    seed: int = Field(
        0, ge=0, le=MAX_SEED - 100, description="the first seed; a run with N seeds uses seed .. seed+N-1"
    )
    seeds: int = Field(1, ge=1, le=100)
    data: DataConfig = Field(default_factory=DataConfig)
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    train: OptimConfig = Field(default_factory=OptimConfig)
    adversarial: AdversarialConfig = Field(default_factory=AdversarialConfig)
    robustness: RobustnessConfig = Field(default_factory=RobustnessConfig)

    def seed_list(self) -> list[int]:
        return list(range(self.seed, self.seed + self.seeds))


def format_validation_error(err: ValidationError, where: str) -> str:
    """The first problem as ``where: dotted.key: message`` (plus how many more), on one short line."""
    errs = err.errors()
    e = errs[0]
    loc = clip(".".join(str(p) for p in e["loc"]) or "(top level)", 80)
    msg = e["msg"]
    if e["type"] == "extra_forbidden":
        msg = "unknown key"
    elif "input" in e and not isinstance(e["input"], dict | list):
        msg = f"{clip(msg, 120)} (got {short_repr(e['input'])})"
    more = f" (and {len(errs) - 1} more problem{'s' if len(errs) > 2 else ''})" if len(errs) > 1 else ""
    return f"{where}: {loc}: {clip(msg, 200)}{more}"


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``["adversarial.eps=0.3", "model.hidden=[256,128]"]``: values parse as YAML scalars/lists."""
    for item in overrides:
        if "=" not in item:
            raise UserError(f"--set {short_repr(item)}: expected key=value")
        key, value = item.split("=", 1)
        try:
            parsed = yaml.safe_load(value)
        except Exception:  # YAMLError, RecursionError, or a constructor's own error on a forced tag
            raise UserError(f"--set {clip(key, 80)}: cannot parse value {short_repr(value)}") from None
        if problem := plain_data_problem(parsed, key):
            raise UserError(f"--set {clip(problem, 200)}")
        node = raw
        parts = key.strip().split(".")
        for p in parts[:-1]:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise UserError(f"--set {clip(key, 80)}: {short_repr(p)} is not a section")
            node = child
        node[parts[-1]] = parsed
    return raw


def validate(model: type[BaseModel], raw: dict[str, Any], where: str) -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise UserError(format_validation_error(e, where)) from None


def load_train_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    raw = load_yaml(path) if path else {}
    raw = apply_overrides(raw, overrides or [])
    return validate(TrainConfig, raw, str(path or "config"))
