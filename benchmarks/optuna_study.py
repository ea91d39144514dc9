"""The one-machine peer that ``bench_study.py`` compares abexrat's study with: plain Optuna in one
process, no Ray.

What a user with one machine could write instead of a study: load the data and encode it once
(abexrat's ``featurize``, from the embedding cache), then ``optuna.create_study(...).optimize(objective,
n_jobs=cores)``, each trial calling abexrat's own trainer (``train_and_score``: the same batched
seeds, fused step and bf16 products as a study's trial) with one torch thread, as a study's trial
has one CPU. Same space (Optuna distributions from the study's), seeds per trial, seeded TPE
sampler (the runner's settings) and epochs. No tracking (a study logs to W&B offline).

Budget: ``timeout_s`` (the same wall time as the other searches; Optuna starts no trial after it,
and a trial that ends after it is not counted) or ``trials``.
"""

from __future__ import annotations

import threading
import time
from typing import Any


def suggest(trial: Any, name: str, dist: Any) -> Any:
    """A value of ``dist`` (an Optuna distribution) through the trial's public ``suggest_*``."""
    import optuna

    if isinstance(dist, optuna.distributions.FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, log=dist.log)
    if isinstance(dist, optuna.distributions.IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, log=dist.log)
    return trial.suggest_categorical(name, dist.choices)


def run_optuna(study: Any, n_jobs: int, timeout_s: float | None = None, trials: int | None = None) -> dict[str, Any]:
    """Search ``study``'s space with ``study.optimize(n_jobs=...)``; trials/h over the search wall time."""
    import optuna
    import torch
    from _common import configs_digest
    from naive_study import optuna_space

    from abexrat.datasets import load_dataset
    from abexrat.embed import EmbeddingCache
    from abexrat.experiment import train_and_score
    from abexrat.features import build_encoder, featurize
    from abexrat.study.samplers import make_sampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # One intra-op thread: the n_jobs Python threads are the parallelism, as a study's trials are.
    torch.set_num_threads(1)
    t_setup = time.perf_counter()
    base = study.train_config({})
    feats = featurize(load_dataset(base), build_encoder(base), EmbeddingCache())
    setup_s = time.perf_counter() - t_setup
    seeds = list(range(study.seed, study.seed + study.seeds_per_trial))
    space = optuna_space({k: p.model_dump() for k, p in study.space.items()})
    sampler = make_sampler(study.optuna.sampler, study.seed, study.budget.num_samples)
    ostudy = optuna.create_study(direction="maximize" if study.objective.mode == "max" else "minimize", sampler=sampler)
    if study.optuna.sampler == "random":
        # optimize(n_jobs > 1) reseeds the sampler in every thread: the seeded draws are queued
        # first instead, the very configurations abexrat's search asks its seeded sampler for.
        draws = optuna.create_study(sampler=make_sampler("random", study.seed, 0))
        for _ in range(trials if trials is not None else 1000):
            ostudy.enqueue_trial(draws.ask(fixed_distributions=space).params)
    lock = threading.Lock()
    done: list[dict[str, Any]] = []
    t0 = time.perf_counter()

    def objective(trial: optuna.Trial) -> float:
        params = {k: suggest(trial, k, dist) for k, dist in space.items()}
        cfg = study.train_config(params)
        cfg.train.device = "cpu"
        cfg.robustness.enabled = False  # a search trial scores validation only
        result, scores = train_and_score(feats, cfg, seeds, with_test=False)
        value = float(scores["val"]["macro_f1"]["mean"])
        with lock:
            end_s, rows = time.perf_counter() - t0, scores["train_size"]
            done.append({"end_s": end_s, "train_s": result.train_s, "value": value, "rows": rows, "params": params})
        return value

    ostudy.optimize(objective, n_trials=trials, timeout=timeout_s, n_jobs=n_jobs, gc_after_trial=False)
    end = time.perf_counter() - t0
    wall = min(end, timeout_s) if timeout_s else end
    counted = [d for d in done if d["end_s"] <= wall] if timeout_s else done
    return {
        "n_jobs": n_jobs,
        "setup_s": setup_s,
        "search_wall_s": wall,
        "optimize_returned_s": end,
        "trials": len(counted),
        "trials_after_budget": len(done) - len(counted),
        "trials_per_hour": len(counted) / wall * 3600 if wall > 0 else None,
        "sum_train_s": sum(d["train_s"] for d in counted),
        "study_overhead_fraction": 1 - sum(d["train_s"] for d in counted) / (wall * n_jobs) if wall > 0 else None,
        "mean_train_rows": sum(d["rows"] for d in counted) / max(1, len(counted)),
        "configs_digest": configs_digest([d["params"] for d in counted]),
        "best_val_macro_f1": max((d["value"] for d in counted), default=None),
    }
