"""Training configs: YAML files validated by pydantic, with ``--set key=value`` overrides.

An unknown key, a wrong type or an out-of-range value is a :class:`UserError` that names
the file and the dotted key (``adversarial.p: ...``).
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from abexrat.errors import UserError
from abexrat.io import clip, short_repr

MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_NODES = 100_000  # after aliases are expanded: a "billion laughs" file stops here
MAX_CONFIG_DEPTH = 32  # configs nest a few levels; deeper is hostile (and recursion in the parsers)
MAX_SEED = 2**31 - 1  # numpy's and scikit-learn's legacy generators take seeds below 2**32
PLAIN = (str, int, float, bool, type(None))


_BRACKET = re.compile(r"[\[\]{}]")


def _flow_too_deep(text: str, limit: int = 2 * MAX_CONFIG_DEPTH) -> bool:
    """More than ``limit`` unclosed ``[``/``{``: PyYAML's scanner is quadratic in that depth (seconds for
    a few thousand), so such a file is refused before it is parsed. Brackets inside strings count too,
    hence the generous limit."""
    depth = 0
    for m in _BRACKET.finditer(text):
        depth += 1 if m.group() in "[{" else -1
        if depth > limit:
            return True
    return False


def _check_depth(root: yaml.Node) -> str | None:
    """Why the node graph is unacceptable (too deep, or an alias inside its own anchor), else None.

    Iterative, so a hostile file cannot exhaust the Python stack here, and each node is visited
    once (aliases share nodes: walking every path of an alias bomb would take exponential time).
    """

    def children(node: yaml.Node) -> list[yaml.Node]:
        if isinstance(node, yaml.SequenceNode):
            return list(node.value)
        if isinstance(node, yaml.MappingNode):
            return [c for kv in node.value for c in kv]
        return []

    entered, height = set(), {}  # entered and not yet left = on the current path
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, leaving = stack.pop()
        key = id(node)
        if leaving:
            entered.discard(key)
            height[key] = 1 + max((height[id(c)] for c in children(node)), default=0)
            if height[key] > MAX_CONFIG_DEPTH:
                return f"nested deeper than {MAX_CONFIG_DEPTH} levels"
            continue
        if key in height:
            continue
        if key in entered:  # reached again from below itself
            return "an alias refers to its own anchor (a recursive structure)"
        entered.add(key)
        stack.append((node, True))
        for c in children(node):
            if id(c) in entered:
                return "an alias refers to its own anchor (a recursive structure)"
            if id(c) not in height:
                stack.append((c, False))
    return None


def plain_data_problem(obj: Any, where: str = "") -> str | None:
    """Where ``obj`` holds something other than strings, numbers, booleans, null, lists and mappings.

    ``yaml.safe_load`` also builds dates, timestamps, bytes (``!!binary``) and sets (``!!set``):
    no config key takes those, and they break JSON results later, so they are refused up front.
    """
    stack: list[tuple[Any, str]] = [(obj, where)]
    while stack:
        value, at = stack.pop()
        if isinstance(value, PLAIN):
            continue
        if isinstance(value, list):
            stack.extend((v, f"{at}[{i}]") for i, v in enumerate(value))
        elif isinstance(value, dict):
            for k, v in value.items():
                if not isinstance(k, PLAIN):  # non-string scalars (`on:` is True) are the schema's to judge
                    return f"{at or '(top level)'}: key {short_repr(k)} is a {type(k).__name__}, not a plain value"
                stack.append((v, f"{at}.{k}" if at else k))
        else:
            kind = type(value).__name__
            return f"{at or '(top level)'}: a {kind} value; only strings, numbers, booleans, null, lists and mappings"
    return None


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
    split_seed: int = Field(0, ge=0, le=MAX_SEED)
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
    if name.startswith("hf:"):
        from abexrat.hf import HFEncoder

        return HFEncoder
    if name.startswith("vllm:"):
        from abexrat.vllm import VLLMEncoder

        return VLLMEncoder
    from abexrat.encoders import ENCODERS

    cls = ENCODERS.get(name)
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
        from abexrat.adversarial import METHODS

        if v not in METHODS:
            raise ValueError(f"unknown method {v!r} (known: {', '.join(METHODS)})")
        return v


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


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from ``path`` with ``yaml.safe_load`` (no tags that build objects).

    Hostile files end in a :class:`UserError`: non-UTF-8 bytes, more than 1 MiB, alias bombs,
    recursive aliases, deep nesting, and values that are not plain data (dates, bytes, sets).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    data = path.read_bytes()
    if len(data) > MAX_CONFIG_BYTES:
        raise UserError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes; not a config")
    try:
        text = data.decode("utf-8")
        if _flow_too_deep(text):
            raise UserError(f"{path}: nested deeper than {MAX_CONFIG_DEPTH} levels; not a config")
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None:
            if problem := _check_depth(node):
                raise UserError(f"{path}: {problem}; not a config")
            if _expanded_size(node, {}) > MAX_CONFIG_NODES:
                raise UserError(f"{path}: more than {MAX_CONFIG_NODES} values once aliases are expanded; not a config")
        obj = yaml.safe_load(text)
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    except RecursionError:  # the YAML composer recurses per level, before the depth check can run
        raise UserError(f"{path}: nested too deeply; not a config") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or (str(e).splitlines() or [type(e).__name__])[0]
        raise UserError(f"{path}: not valid YAML{where}: {clip(problem, 160)}") from None
    except UserError:
        raise
    except Exception as e:  # PyYAML's own constructors on forced tags: `!!timestamp x`, `!!int x`, a 5000-digit int
        raise UserError(
            f"{path}: not valid YAML: a value cannot be read ({clip(str(e) or type(e).__name__, 120)})"
        ) from None
    if obj is None:
        obj = {}
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected a mapping of keys at the top level, got {type(obj).__name__}")
    if problem := plain_data_problem(obj):
        raise UserError(f"{path}: {clip(problem, 200)}")
    return obj


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
