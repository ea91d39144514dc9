"""Study files (``studies/*.yaml``): what to search or ablate, with what budget, tracked where.

A study holds a ``trainer`` (a train config, or ``base:`` naming one) plus either a search
``space`` (kind ``search``) or ablation ``factors`` (kind ``ablation``). Every problem is a
:class:`UserError` naming the file and the dotted key.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from abexrat.config import MAX_SEED, Strict, TrainConfig, apply_overrides, validate
from abexrat.core.errors import UserError
from abexrat.core.io import short_repr
from abexrat.core.safe_yaml import load_yaml

# Names become folder names and W&B groups: letters, digits, '_', '.', '-', never a path.
# (``\Z``, not ``$``: ``$`` would also accept a trailing newline.)
NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
PRIMITIVE = (str, int, float, bool, type(None))
MAX_CHOICES = 1000
MAX_ARMS = 4096


class Param(Strict):
    """One searched hyperparameter, named by its dotted train-config key."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0, allow_inf_nan=False)
    choices: list[Any] | None = Field(None, max_length=MAX_CHOICES)

    @model_validator(mode="after")
    def _check(self) -> Param:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs non-empty 'choices'")
        else:
            if any(v is not None and not math.isfinite(v) for v in (self.low, self.high)):
                raise ValueError("low and high must be finite numbers")
            if self.low is None or self.high is None or not self.low < self.high:
                raise ValueError("needs low < high")
            if self.log and self.low <= 0:
                raise ValueError("a log-scaled parameter needs low > 0")
        return self


ObjectiveMetric = Literal[
    "val_macro_f1",
    "val_weighted_f1",
    "val_accuracy",
    # robustness on val (abexrat.robustness.flat_keys): the area under macro-F1 vs PGD's ε, FGM's,
    # and the mean macro-F1 over the natural text perturbations
    "val_robust_macro_f1",
    "val_fgm_auc",
    "val_natural_macro_f1",
]
ROBUST_METRICS = ("val_robust_macro_f1", "val_fgm_auc", "val_natural_macro_f1")


class Objective(Strict):
    """One metric and its direction, or (a list of each) several: a multi-objective search
    (abexrat.study.pareto), whose final round retrains up to ``front_size`` Pareto-optimal trials.
    ``metric`` and ``mode`` name the first one (the primary: it picks ``best``); ``metrics`` and
    ``modes`` all of them."""

    metric: ObjectiveMetric = "val_macro_f1"
    mode: Literal["max", "min"] = "max"
    metrics: list[ObjectiveMetric] = Field(default_factory=list, max_length=8)
    modes: list[Literal["max", "min"]] = Field(default_factory=list, max_length=8)
    front_size: int = Field(3, ge=0, le=100, description="front members (besides best) the final round retrains")

    @model_validator(mode="before")
    @classmethod
    def _lists(cls, v: Any) -> Any:
        if not isinstance(v, dict) or not isinstance(v.get("metric"), list):
            return v
        metrics, modes = v["metric"], v.get("mode", "max")
        modes = modes if isinstance(modes, list) else [modes] * len(metrics)
        if not metrics or len(modes) != len(metrics):
            raise ValueError(f"mode: one direction per metric ({len(metrics)} metrics, {len(modes)} modes)")
        return {**v, "metric": metrics[0], "mode": modes[0], "metrics": metrics, "modes": modes}

    @model_validator(mode="after")
    def _check(self) -> Objective:
        if not self.metrics:
            self.metrics, self.modes = [self.metric], [self.mode]
        if len(set(self.metrics)) != len(self.metrics):
            raise ValueError(f"metric: a metric is named twice: {self.metrics}")
        return self

    @property
    def multi(self) -> bool:
        return len(self.metrics) > 1


# The searched keys several configurations of one trial may differ in (``budget.configs_per_trial``):
# the trainer gives each member its own ε and p. Every other key fixes the data, the model or the
# schedule, which the configurations of a batch share.
BATCHED = ("adversarial.eps", "adversarial.p")
# The data keys a trial may change: every trial trains on the study's one featurization (embedded
# once, shared through the object store), and these only pick rows of it. Other data keys and every
# encoder key change the vectors themselves, so they belong under ``trainer:`` (one study each).
PER_TRIAL_DATA_KEYS = ("data.aug_ratio", "data.aug_seed", "data.untitled_copies", "data.short_copies")


class Budget(Strict):
    num_samples: int = Field(20, ge=1, le=100_000)  # configurations tried (Optuna trials)
    time_budget_s: float | None = Field(None, gt=0)
    max_concurrent: int | None = Field(None, ge=1, le=10_000)
    # > 1: each Ray Tune trial trains this many configurations that differ only in adversarial.eps
    # and adversarial.p as one batched model (abexrat.study.grouped): for GPUs, where one small MLP
    # leaves the device mostly idle.
    configs_per_trial: int = Field(1, ge=1, le=256)


class EarlyStopping(Strict):
    """ASHA over epochs: trials below the rung's top 1/reduction_factor stop early."""

    enabled: bool = False
    grace_period: int = Field(5, ge=1, le=100_000)
    reduction_factor: float = Field(3.0, gt=1.0, le=100.0)


class Resources(Strict):
    cpu: float = Field(1.0, gt=0, le=256)
    gpu: float = Field(0.0, ge=0, le=8)


class Tracking(Strict):
    wandb: bool = True
    project: str = "abexrat"
    entity: str | None = None
    mode: Literal["auto", "online", "offline", "disabled"] = "auto"


class OptunaStorage(Strict):
    """Where a search keeps its Optuna study (``optuna-dashboard`` and ``optuna.load_study`` read it).

    ``storage``: an RDB URL (``sqlite:///studies.db``, ``postgresql://user@host/db``, ``mysql://...``)
    or a journal file path; by default ``optuna.journal`` in the study folder. ``study_name``: the
    Optuna study's name (default: the study's ``name``). ``sampler``: how the search draws its
    configurations (:mod:`abexrat.study.samplers`).
    """

    storage: str | None = Field(None, min_length=1, max_length=4096)
    study_name: str | None = Field(None, min_length=1, max_length=512)
    sampler: Literal["tpe", "random", "qmc"] = "tpe"


class Limits(Strict):
    """Per-trial limits: a trial past one is stopped, marked (TIMEOUT / OOM in trials.parquet), never
    chosen as best, and the study goes on.

    ``trial_time_s`` is wall time from the trial's start (search or ablation stage; the final round is
    not limited). ``trial_memory_gb`` is the trial process's own resident memory (its heap and tensors,
    not the shared object store); it is also the trial's Ray ``memory`` request, so a node only runs
    as many trials as it has memory for.
    """

    trial_time_s: float | None = Field(None, gt=0, le=30 * 86400, allow_inf_nan=False)
    trial_memory_gb: float | None = Field(None, gt=0, le=4096, allow_inf_nan=False)


class Final(Strict):
    """The final round: the best configuration and each baseline, ``seeds`` seeds, scored on test.

    ``overrides`` (dotted keys, as a baseline's) apply to every final arm and not to the search, a
    baseline's or the best's own keys taking precedence: e.g. ``{model.ensemble: 3}`` scores the
    recipe's full model while the search ranks settings with cheaper single MLPs.
    """

    seeds: int = Field(5, ge=1, le=100)
    overrides: dict[str, Any] = Field(default_factory=dict, max_length=100)
    # 0.5 trains the best and two baselines at once on 2 CPUs (whole CPUs: two, then the third alone)
    cpu: float | None = Field(None, gt=0, le=256, description="CPUs per final arm (default: resources.cpu)")

    def arm(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """A final arm's overrides: ``overrides`` on top of the round's own."""
        return {**self.overrides, **overrides}


class CrossValidation(Strict):
    """Select on stratified k-fold CV over the pooled originals of ``splits`` instead of val.

    The default pools train + val, so the test split stays unseen until the final scoring; adding
    test pools all the originals (a less noisy estimate, but then test has informed the choice).
    """

    folds: int = Field(5, ge=2, le=20)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    splits: list[Literal["train", "val", "test"]] = Field(default_factory=lambda: ["train", "val"], min_length=1)

    @field_validator("splits")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"a split is named twice: {v}")
        return v


class Ablation(Strict):
    """Factors, each with named levels of overrides; the grid is their product."""

    factors: dict[str, dict[str, dict[str, Any]]]
    full: dict[str, str] = Field(
        default_factory=dict, description="the full method's level per factor (default: the first)"
    )

    @field_validator("factors", "full", mode="before")
    @classmethod
    def _on_off(cls, v: Any) -> Any:
        # YAML 1.1 reads the level names on/off (yes/no) as booleans: give them their names back.
        def name(k: Any) -> Any:
            return {True: "on", False: "off"}.get(k, k) if isinstance(k, bool) else k

        if not isinstance(v, dict):
            return v
        return {
            k: ({name(lk): lv for lk, lv in lvl.items()} if isinstance(lvl, dict) else name(lvl))
            for k, lvl in v.items()
        }

    @model_validator(mode="after")
    def _check(self) -> Ablation:
        if not self.factors:
            raise ValueError("needs at least one factor")
        arms = 1
        for f, levels in self.factors.items():
            if len(levels) < 1:
                raise ValueError(f"factor {short_repr(f)} has no levels")
            for name in (f, *levels):
                if not NAME.fullmatch(name):
                    raise ValueError(
                        f"factor or level name {short_repr(name)}: use 1-64 letters, digits, '_', '.', '-'"
                    )
            arms *= len(levels)
            if arms > MAX_ARMS:
                raise ValueError(f"more than {MAX_ARMS} arms in the grid")
        for f, level in self.full.items():
            if f not in self.factors or level not in self.factors[f]:
                raise ValueError(f"full: {short_repr(f)}={short_repr(level)} is not a factor level")
        return self


class Study(Strict):
    name: str
    kind: Literal["search", "ablation"] = "search"
    seed: int = Field(0, ge=0, le=MAX_SEED - 100)
    base: str | None = Field(None, description="a train config file the trainer section overrides")
    trainer: dict[str, Any] = Field(default_factory=dict)
    space: dict[str, Param] = Field(default_factory=dict)
    ablation: Ablation | None = None
    objective: Objective = Field(default_factory=Objective)
    budget: Budget = Field(default_factory=Budget)
    seeds_per_trial: int = Field(2, ge=1, le=100)
    early_stopping: EarlyStopping = Field(default_factory=EarlyStopping)
    resources: Resources = Field(default_factory=Resources)
    final: Final = Field(default_factory=Final)
    baselines: dict[str, dict[str, Any]] = Field(default_factory=dict, max_length=100)
    tracking: Tracking = Field(default_factory=Tracking)
    optuna: OptunaStorage = Field(default_factory=OptunaStorage)
    max_failures: int = Field(3, ge=0, le=100)
    limits: Limits = Field(default_factory=Limits)
    cv: CrossValidation | None = Field(None, description="select on k-fold cross-validation instead of val")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME.fullmatch(v):
            raise ValueError("use 1-64 letters, digits, '_', '.', '-' (it names folders and W&B groups)")
        return v

    @model_validator(mode="after")
    def _kind(self) -> Study:
        if self.kind == "search" and not self.space:
            raise ValueError("a search study needs a 'space'")
        if self.kind == "ablation" and self.ablation is None:
            raise ValueError("an ablation study needs 'ablation: {factors: ...}'")
        for name in self.baselines:
            if not NAME.fullmatch(name) or name == "best":
                raise ValueError(f"baseline name {short_repr(name)}: use letters, digits, '_', '.', '-' (not 'best')")
        if self.cv is not None and self.early_stopping.enabled:
            raise ValueError("cv: early stopping compares epochs of one split; turn one of them off")
        if self.budget.configs_per_trial > 1:
            self._check_grouped()
        self._check_objective()
        return self

    def _check_objective(self) -> None:
        """Robustness objectives need robustness scored on the fixed val split, trial by trial; several
        objectives need a search whose trials run to their end."""
        robust = [m for m in self.objective.metrics if m in ROBUST_METRICS]
        if robust and not self.trainer.get("robustness", {}).get("enabled", True):
            raise ValueError(f"objective: {robust[0]} needs trainer.robustness.enabled: true")
        if robust and self.cv is not None:
            raise ValueError(f"objective: {robust[0]} is scored on the val split; cv trials score folds")
        if robust and self.early_stopping.enabled:
            raise ValueError(f"objective: {robust[0]} comes after the last epoch; early stopping needs it per epoch")
        if robust and self.budget.configs_per_trial > 1:
            raise ValueError(f"objective: {robust[0]} is not scored per configuration; set configs_per_trial to 1")
        if robust and "val_natural_macro_f1" in robust and not self.trainer.get("robustness", {}).get("natural", True):
            raise ValueError("objective: val_natural_macro_f1 needs trainer.robustness.natural: true")
        if self.objective.multi and (self.kind != "search" or self.early_stopping.enabled):
            raise ValueError("objective: several metrics need a search (kind: search) without early stopping")
        if self.objective.multi and self.budget.configs_per_trial > 1:
            raise ValueError("objective: several metrics need budget.configs_per_trial: 1")

    def _check_grouped(self) -> None:
        """What several configurations per trial need: a search over ε or p, on the fixed split,
        and trials that run to their end (they stop together)."""
        where = "budget.configs_per_trial"
        if self.kind != "search":
            raise ValueError(f"{where}: only a search study asks for configurations; an ablation runs its grid")
        if not any(k in self.space for k in BATCHED):
            raise ValueError(
                f"{where}: the configurations of one trial differ only in {' and '.join(BATCHED)}; put one in the space"
            )
        if self.cv is not None:
            raise ValueError(f"{where}: cross-validated trials train fold after fold; set it to 1 with cv")
        if self.early_stopping.enabled:
            raise ValueError(f"{where}: early stopping stops a trial with all its configurations; turn one of them off")

    # ------------------------------------------------------------ derived configs

    def train_config(self, overrides: dict[str, Any] | None = None, where: str = "trainer") -> TrainConfig:
        """The trainer section with dotted ``overrides`` applied, validated."""
        raw = _deep_copy(self.trainer)
        sets = [f"{k}={_yaml_value(v)}" for k, v in (overrides or {}).items()]
        try:
            raw = apply_overrides(raw, sets)
        except UserError as e:  # e.g. a searched key under a trainer value that is not a section
            raise UserError(f"{where}: {str(e).removeprefix('--set ')}") from None
        return validate(TrainConfig, raw, where)

    def arms(self) -> dict[str, dict[str, Any]]:
        """Ablation arms: name -> dotted overrides, the full method first."""
        assert self.ablation is not None
        import itertools

        factors = self.ablation.factors
        full = {f: self.ablation.full.get(f, next(iter(levels))) for f, levels in factors.items()}
        combos = list(itertools.product(*[[(f, lv) for lv in levels] for f, levels in factors.items()]))
        combos.sort(key=lambda c: sum(lv != full[f] for f, lv in c))
        out = {}
        for combo in combos:
            name = (
                "full"
                if all(lv == full[f] for f, lv in combo)
                else "+".join(f"{f}={lv}" for f, lv in combo if lv != full[f])
            )
            merged: dict[str, Any] = {}
            for f, lv in combo:
                merged.update(factors[f][lv])
            out[name] = merged
        return out


def _deep_copy(d: dict[str, Any]) -> dict[str, Any]:
    import copy

    return copy.deepcopy(d)


def _yaml_value(v: Any) -> str:
    import json

    return json.dumps(v)  # JSON is YAML: lists, numbers, strings and null parse back as they were


def load_study(path: str | Path) -> Study:
    """Read and validate a study file; ``base:`` paths are relative to the study file."""
    path = Path(path)
    raw = load_yaml(path)
    study = validate(Study, raw, str(path))
    if study.base:
        base_path = (path.parent / study.base) if not Path(study.base).is_absolute() else Path(study.base)
        base = load_yaml(base_path)
        study = study.model_copy(update={"trainer": merge_trainer(base, study.trainer)})
    # The trainer, every searched key, every arm and every baseline must make a valid config.
    study.train_config(where=f"{path}: trainer")
    _check_shared_features(study, path)
    for key, p in study.space.items():
        if p.type == "categorical":
            samples = list(p.choices or [])
        else:
            samples = [int(p.low), int(p.high)] if p.type == "int" else [p.low, p.high]  # type: ignore[arg-type]
        for sample in samples:  # every choice and both ends of a range must be a valid config
            study.train_config({key: sample}, where=f"{path}: space.{key}")
    if study.kind == "ablation":
        for arm, over in study.arms().items():
            study.train_config(over, where=f"{path}: ablation arm {arm}")
    study.train_config(study.final.overrides, where=f"{path}: final.overrides")
    for name, over in study.baselines.items():
        study.train_config(study.final.arm(over), where=f"{path}: baselines.{name}")
    return study


def _check_shared_features(study: Study, path: Path) -> None:
    """No trial may change what the shared featurization embeds (``PER_TRIAL_DATA_KEYS``)."""
    places = [(f"space.{k}", k) for k in study.space]
    for factor, levels in (study.ablation.factors if study.ablation else {}).items():
        places += [(f"ablation.factors.{factor}.{lvl}.{k}", k) for lvl, over in levels.items() for k in over]
    places += [(f"baselines.{name}.{k}", k) for name, over in study.baselines.items() for k in over]
    places += [(f"final.overrides.{k}", k) for k in study.final.overrides]
    for where, key in places:
        section = key.split(".", 1)[0]
        if section == "encoder" or (section == "data" and key not in PER_TRIAL_DATA_KEYS):
            raise UserError(
                f"{path}: {where}: every trial of a study trains on one shared featurization, so no "
                f"trial can change {key}; set it under trainer: (one study per setting)"
            )


def merge_trainer(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """A train config's keys under a study's ``trainer:`` section, nested sections merged key by key.

    An ``encoder`` that names another encoder than the base's does not inherit the base's
    ``encoder.options``: the options belong to the encoder they configure (``base: baseline.yaml``
    with ``trainer: {encoder: {name: hybrid}}`` is the hybrid with its own defaults)."""
    merged = _merge(base, over)
    enc, base_enc = over.get("encoder"), base.get("encoder")
    if not (isinstance(enc, dict) and isinstance(base_enc, dict)):
        return merged
    if enc.get("name", base_enc.get("name")) != base_enc.get("name"):
        merged["encoder"] = _merge({k: v for k, v in base_enc.items() if k != "options"}, enc)
    return merged


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise UserError(f"--name {short_repr(name)}: use 1-64 letters, digits, '_', '.', '-'")
    return name
