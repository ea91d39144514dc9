"""One Ray Tune trial: a train config from the study + the trial's parameters, S seeds at once.

The features arrive through ``tune.with_parameters``: they sit in the object store once
and every trial on every node maps the same arrays, so no trial re-encodes anything.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np

from abexrat.choices import decode_params
from abexrat.features import Features
from abexrat.study.config import BATCHED
from abexrat.study.grouped import configurations
from abexrat.study.guard import TrialGuard, TrialLimitExceeded

SUMMARY_KEYS = ("macro_f1", "weighted_f1", "accuracy")
LIMIT_STATUS = {"time": "TIMEOUT", "memory": "OOM"}  # a trial's ``limit`` -> its status in trials.parquet
# A trial's last report says it is done: Tune closes the trial as it takes the report, so a node that
# dies before the function returns cannot make Tune run a trial whose scores it already has again.
FINAL = {"done": True}


def trial_overrides(params: dict[str, Any], arms: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A trial's dotted overrides: a grid arm's, then the searched values."""
    params = decode_params(params)
    out = dict(arms.get(params.pop("arm", ""), {}))
    out.update(params)
    return out


def run_trial(
    params: dict[str, Any],
    *,
    feats: Features,
    study: dict[str, Any],
    arms: dict[str, dict[str, Any]],
    seeds: list[int],
    with_test: bool,
    threads: int,
    limits: dict[str, Any] | None = None,
    cv: Any = None,
    best_sink: Any = None,
) -> None:
    """Train and report to Tune: per epoch ``val_macro_f1`` (mean over seeds), then the final scores.

    Search trials report validation only; ``with_test`` (final and baseline trials) adds test.
    With ``cv`` (:class:`abexrat.cv.CVFeatures`), search trials report the cross-validated scores
    as ``val_*`` (no per-epoch reports: folds train one after another), and final trials add them
    as ``cv_*`` beside the fixed split's.
    ``limits`` (``trial_time_s``, ``trial_memory_gb``): past one, the trial stops and reports
    ``limit`` = "time" | "memory" with the objective as NaN, so it is never chosen.
    ``best_sink`` (a :class:`BestModelSink` actor, final round only): the ``best`` arm sends it its
    models and metrics.json, through Ray's object store (no shared filesystem needed), before it
    reports.
    """
    import torch
    from ray import tune

    from abexrat.cv import cv_train_and_score
    from abexrat.experiment import train_and_score
    from abexrat.study.config import Study

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    st = Study.model_validate(study)
    arm = params.get("arm")
    group = configurations(params)  # several with budget.configs_per_trial, else the trial's own
    cfg = _trial_config(st, trial_overrides(group[0], arms), with_test)
    epochs = cfg.train.epochs
    limits = limits or {}
    memory_gb = limits.get("trial_memory_gb")
    guard = TrialGuard(limits.get("trial_time_s"), int(memory_gb * 2**30) if memory_gb else None)
    done = [0]  # epochs trained
    on_epoch = _epoch_reporter(st, guard, epochs, done)
    if len(group) > 1:
        try:
            with guard:
                _run_group(st, group, arms, feats, seeds, guard, t0, done, cfg.train.device)
        except TrialLimitExceeded:
            _report_limit(st, guard, done[0], t0)
        return

    try:
        with guard:
            if cv is not None and not with_test:  # a search trial scored on CV alone
                train_s, cv_scores = cv_train_and_score(cv, cfg, seeds, on_epoch=lambda e, r: guard.check())
                report = {"epoch": epochs, "train_s": train_s, "seeds": seeds, **_split_keys(cv_scores, "val")}
                report["selection"] = f"{st.cv.folds}-fold cv over {'+'.join(st.cv.splits)}"
                tune.report({**report, "trial_s": time.perf_counter() - t0, **FINAL})
                return
            result, scores = train_and_score(feats, cfg, seeds, on_epoch=on_epoch, with_test=with_test)
            if cv is not None:
                scores["cv"] = cv_train_and_score(cv, cfg, seeds, on_epoch=lambda e, r: guard.check())[1]
    except TrialLimitExceeded:
        _report_limit(st, guard, done[0], t0)
        return
    final = _final_report(result, scores, seeds, epochs, with_test)
    if best_sink is not None and arm == "best":
        _send_best(best_sink, st, cfg, feats, result, scores, t0)
    final["trial_s"] = time.perf_counter() - t0
    tune.report({**final, **FINAL})


def _epoch_reporter(st: Any, guard: TrialGuard, epochs: int, done: list[int]) -> Any:
    """The trainer's per-epoch callback: checks the trial's limits, counts the epochs in ``done[0]``
    and reports each but the last (reported with the final scores) to Tune."""
    from ray import tune

    def on_epoch(epoch: int, rec: dict[str, list[float]]) -> None:
        done[0] = epoch
        guard.check()
        if epoch < epochs:
            report = {
                "epoch": epoch,
                "val_macro_f1": float(np.mean(rec["val_macro_f1"])),
                "train_loss": float(np.mean(rec["train_loss"])),
            }
            # Tune wants every objective in every result; robustness is scored once, after the last epoch
            report.update({m: math.nan for m in st.objective.metrics if m not in report})
            with guard.quiet():
                tune.report(report)

    return on_epoch


def _trial_config(st: Any, overrides: dict[str, Any], with_test: bool) -> Any:
    """The trial's training config: its overrides on the study's base, on the trial's own device."""
    import torch

    from abexrat.study.config import ROBUST_METRICS

    cfg = st.train_config(overrides)
    if cfg.train.device == "auto":
        # a trial trains where its resources say: on its GPU share, else on its CPUs (Ray does not
        # always hide a node's GPUs from trials that asked for none)
        cfg.train.device = "cuda" if st.resources.gpu > 0 and torch.cuda.is_available() else "cpu"
    if not with_test and not set(st.objective.metrics) & set(ROBUST_METRICS):
        cfg.robustness.enabled = False  # a search trial scores robustness only when the objective asks for it
    return cfg


def _final_report(
    result: Any, scores: dict[str, Any], seeds: list[int], epochs: int, with_test: bool
) -> dict[str, Any]:
    """A trained trial's last report: the last epoch's loss and every split's scores."""
    last = result.history[-1]
    final: dict[str, Any] = {
        "epoch": epochs,
        "train_loss": float(np.mean(last["train_loss"])),
        "train_s": result.train_s,
        "seeds": seeds,
        "train_size": scores["train_size"],
    }
    for split in ("val", "test") if with_test else ("val",):
        final.update(_split_keys(scores[split], split))
        final.update(robust_keys(scores, split))
    if "cv" in scores:
        final.update(_split_keys(scores["cv"], "cv"))
    if with_test and "val_pred" in scores:  # (S, n) classes: bootstrap intervals, paired tests in reports
        final["val_pred"] = scores["val_pred"]
        final["test_pred"] = scores["test_pred"]
    if "robustness" in scores:
        final["robust_s"] = scores["robustness"]["time_s"]
    if with_test and "robustness" in scores:  # the report's robustness section (curves, bands, natural table)
        final["robustness"] = scores["robustness"]
        final["robustness_pred"] = {"test": scores.get("robustness_pred", {}).get("test")}
    return final


def _send_best(
    best_sink: Any, st: Any, cfg: Any, feats: Features, result: Any, scores: dict[str, Any], t0: float
) -> None:
    """The best arm's models and metrics.json to the driver's sink, through Ray's object store."""
    import ray

    from abexrat.run_folder import model_files, run_metrics

    metrics = run_metrics(cfg, feats, result, scores, scores["train_size"], t0, study=st.name)
    try:
        ray.get(best_sink.put.remote(model_files(result, feats.classes, feats.encoder_key), metrics))
    except ray.exceptions.RayError as e:  # the model is a by-product: the scores must still arrive
        logging.getLogger(__name__).warning("the best model did not reach the driver (%s)", type(e).__name__)


class BestModelSink:
    """A Ray actor of the driver's (``ray.remote(num_cpus=0)(BestModelSink)``) that holds the final
    round's best model until the driver writes it as ``STUDY_DIR/best``."""

    def __init__(self) -> None:
        self.model: tuple[dict[str, bytes], dict[str, Any]] | None = None

    def put(self, files: dict[str, bytes], metrics: dict[str, Any]) -> None:
        self.model = (files, metrics)

    def take(self) -> tuple[dict[str, bytes], dict[str, Any]] | None:
        return self.model


def _report_limit(st: Any, guard: TrialGuard, done: int, t0: float) -> None:
    from ray import tune

    kind, detail = guard.reason or ("time", "limit")
    tune.report(
        {
            "epoch": done,
            **{m: math.nan for m in st.objective.metrics},  # Tune needs the metric in every result; NaN is never best
            "limit": kind,
            "limit_detail": detail,
            "trial_s": time.perf_counter() - t0,
            "peak_memory_gb": guard.peak_bytes / 2**30,
            **FINAL,
        }
    )


def _run_group(
    st: Any,
    group: list[dict[str, Any]],
    arms: dict[str, dict[str, Any]],
    feats: Features,
    seeds: list[int],
    guard: TrialGuard,
    t0: float,
    done: list[int],
    device: str,
) -> None:
    """Several configurations that differ only in ε and p (``budget.configs_per_trial``), trained
    as one batched model; each report holds every configuration's scores under ``configs`` and the
    best one's at the top level (see :mod:`abexrat.study.grouped`)."""
    from ray import tune

    from abexrat.experiment import train_and_score_variants

    cfgs = [st.train_config(trial_overrides(p, arms)) for p in group]
    for c in cfgs:
        c.train.device = device
    shared = _without_batched(cfgs[0])
    for j, c in enumerate(cfgs[1:], 1):
        if _without_batched(c) != shared:
            raise ValueError(f"configuration {j} of this trial differs from the first in more than ε and p")
    variants = [(c.adversarial.eps, c.adversarial.p) for c in cfgs]
    cfg, G, S, epochs = cfgs[0], len(cfgs), len(seeds), cfgs[0].train.epochs
    pick = max if st.objective.mode == "max" else min

    def per_variant(values: list[float]) -> list[float]:
        return [float(np.mean(values[j * S : (j + 1) * S])) for j in range(G)]

    def on_epoch(epoch: int, rec: dict[str, list[float]]) -> None:
        done[0] = epoch
        guard.check()
        if epoch < epochs:
            f1, loss = per_variant(rec["val_macro_f1"]), per_variant(rec["train_loss"])
            parts = [{"val_macro_f1": f, "train_loss": lo} for f, lo in zip(f1, loss)]
            report = {"epoch": epoch, "val_macro_f1": pick(f1), "train_loss": float(np.mean(loss)), "configs": parts}
            with guard.quiet():
                tune.report(report)

    result, scores = train_and_score_variants(feats, cfg, seeds, variants, on_epoch=on_epoch)
    losses = per_variant(result.history[-1]["train_loss"])
    parts = [{"train_loss": lo, **_split_keys(s["val"], "val")} for lo, s in zip(losses, scores)]
    best = pick(range(G), key=lambda j: parts[j][st.objective.metric])
    final = {"epoch": epochs, "train_s": result.train_s, "seeds": seeds, "train_size": scores[0]["train_size"]}
    final.update(parts[best], configs=parts, config_best=best, trial_s=time.perf_counter() - t0)
    tune.report({**final, **FINAL})


def _without_batched(cfg: Any) -> dict[str, Any]:
    """A train config without the keys the configurations of one batch may differ in."""
    d = cfg.model_dump(mode="json")
    for key in BATCHED:
        section, name = key.split(".")
        d[section].pop(name)
    return d


def robust_keys(scores: dict[str, Any], split: str) -> dict[str, float]:
    """The robustness numbers of ``split`` a study may optimize (``val_robust_macro_f1``, ...), if scored."""
    if "robustness" not in scores:
        return {}
    from abexrat.robustness import flat_keys

    return flat_keys(scores["robustness"], split)


def _split_keys(scores: dict[str, Any], split: str) -> dict[str, Any]:
    """``score``'s output as flat Tune keys: ``{split}_macro_f1``, ``..._std``, ``..._per_seed``, ..."""
    out: dict[str, Any] = {}
    for k in SUMMARY_KEYS:
        out[f"{split}_{k}"] = scores[k]["mean"]
        out[f"{split}_{k}_std"] = scores[k]["std"]
        out[f"{split}_{k}_per_seed"] = scores[k]["per_seed"]
    out[f"{split}_per_class_f1"] = {c: d["f1"]["mean"] for c, d in scores["per_class"].items()}
    out[f"{split}_confusion"] = scores["confusion"]["total"]
    return out
