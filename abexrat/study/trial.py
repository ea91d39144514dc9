"""One Ray Tune trial: a train config from the study + the trial's parameters, S seeds at once.

The features arrive through ``tune.with_parameters``: they sit in the object store once
and every trial on every node maps the same arrays, so no trial re-encodes anything.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from abexrat.experiment import Features
from abexrat.study.space import decode_params

SUMMARY_KEYS = ("macro_f1", "weighted_f1", "accuracy")


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
) -> None:
    """Train and report to Tune: per epoch ``val_macro_f1`` (mean over seeds), then the final scores.

    Search trials report validation only; ``with_test`` (final and baseline trials) adds test.
    """
    import torch
    from ray import tune

    from abexrat.experiment import train_and_score
    from abexrat.study.config import Study

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    st = Study.model_validate(study)
    cfg = st.train_config(trial_overrides(params, arms))
    epochs = cfg.train.epochs

    def on_epoch(epoch: int, rec: dict[str, list[float]]) -> None:
        if epoch < epochs:  # the last epoch is reported below with the final scores
            tune.report(
                {
                    "epoch": epoch,
                    "val_macro_f1": float(np.mean(rec["val_macro_f1"])),
                    "train_loss": float(np.mean(rec["train_loss"])),
                }
            )

    result, scores = train_and_score(feats, cfg, seeds, on_epoch=on_epoch)
    last = result.history[-1]
    final: dict[str, Any] = {
        "epoch": epochs,
        "train_loss": float(np.mean(last["train_loss"])),
        "train_s": result.train_s,
        "seeds": seeds,
        "train_size": scores["train_size"],
    }
    for split in ("val", "test") if with_test else ("val",):
        for k in SUMMARY_KEYS:
            final[f"{split}_{k}"] = scores[split][k]["mean"]
            final[f"{split}_{k}_std"] = scores[split][k]["std"]
            final[f"{split}_{k}_per_seed"] = scores[split][k]["per_seed"]
        final[f"{split}_per_class_f1"] = {c: d["f1"]["mean"] for c, d in scores[split]["per_class"].items()}
        final[f"{split}_confusion"] = scores[split]["confusion"]["total"]
    if with_test:  # (S, n) predicted classes: bootstrap intervals and paired tests in reports
        final["val_pred"] = scores["val_pred"]
        final["test_pred"] = scores["test_pred"]
    final["trial_s"] = time.perf_counter() - t0
    tune.report(final)
