"""Training configs: YAML files validated by pydantic, with ``--set key=value`` overrides.

An unknown key, a wrong type or an out-of-range value is a :class:`UserError` that names
the file and the dotted key (``adversarial.p: ...``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from abexrat.errors import UserError

MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_NODES = 100_000  # after aliases are expanded: a "billion laughs" file stops here


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """Nodes in the document with every alias expanded, counted in time linear in the unique nodes."""
    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = 1  # a recursive alias counts once instead of looping
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(n, memo) for n in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    else:
        size = 1
    memo[key] = size
    return size


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Strict):
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
    split_seed: int = Field(0, ge=0)
    aug_pool: str = Field(
        "published",
        description="'published' (train_aug.json's synthetic rows), 'none', or a pool folder / Parquet file",
    )
    aug_ratio: float = Field(1.0, ge=0.0, le=1.0)
    aug_seed: int = Field(0, ge=0)


class EncoderConfig(Strict):
    name: str = "hybrid"
    options: dict[str, Any] = Field(default_factory=dict)


class ModelConfig(Strict):
    hidden: list[int] = Field(default_factory=lambda: [512])
    dropout: float = Field(0.2, ge=0.0, lt=1.0)

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
        from abexrat.adversarial import METHODS

        if v not in METHODS:
            raise ValueError(f"unknown method {v!r} (known: {', '.join(METHODS)})")
        return v


class TrainConfig(Strict):
    """One training recipe: data -> encoder -> MLP + loss + adversarial method."""

    name: str = "run"
    seed: int = Field(0, ge=0, description="the first seed; a run with N seeds uses seed .. seed+N-1")
    seeds: int = Field(1, ge=1, le=100)
    data: DataConfig = Field(default_factory=DataConfig)
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    train: OptimConfig = Field(default_factory=OptimConfig)
    adversarial: AdversarialConfig = Field(default_factory=AdversarialConfig)

    def seed_list(self) -> list[int]:
        return list(range(self.seed, self.seed + self.seeds))


def format_validation_error(err: ValidationError, where: str) -> str:
    """The first problem as ``where: dotted.key: message`` (plus how many more)."""
    errs = err.errors()
    e = errs[0]
    loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
    msg = e["msg"]
    if e["type"] == "extra_forbidden":
        msg = "unknown key"
    elif "input" in e and not isinstance(e["input"], dict | list):
        msg = f"{msg} (got {e['input']!r})"
    more = f" (and {len(errs) - 1} more problem{'s' if len(errs) > 2 else ''})" if len(errs) > 1 else ""
    return f"{where}: {loc}: {msg}{more}"


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from ``path`` with ``yaml.safe_load`` (no tags that build objects)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    data = path.read_bytes()
    if len(data) > MAX_CONFIG_BYTES:
        raise UserError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes; not a config")
    try:
        text = data.decode("utf-8")
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None and _expanded_size(node, {}) > MAX_CONFIG_NODES:
            raise UserError(f"{path}: more than {MAX_CONFIG_NODES} values once aliases are expanded; not a config")
        obj = yaml.safe_load(text)
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{path}: not valid YAML{where}: {problem}") from None
    if obj is None:
        obj = {}
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected a mapping of keys at the top level, got {type(obj).__name__}")
    return obj


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``["adversarial.eps=0.3", "model.hidden=[256,128]"]``: values parse as YAML scalars/lists."""
    for item in overrides:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected key=value")
        key, value = item.split("=", 1)
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            raise UserError(f"--set {key}: cannot parse value {value!r}") from None
        node = raw
        parts = key.strip().split(".")
        for p in parts[:-1]:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise UserError(f"--set {key}: {p!r} is not a section")
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
