"""The naive set-up that ``bench_study.py`` compares abexrat's study with.

What a first version of such a study typically looks like: Ray Tune + ``OptunaSearch`` + the stock
``WandbLoggerCallback`` (one logging actor per trial), ``reuse_actors=False`` (every trial starts a
fresh worker process), and a trainable that loads the dataset and its embeddings itself (from
abexrat's embedding cache, so nothing is re-encoded, but no object store), then trains its seeds one
after the other, each a plain ``nn.Sequential`` MLP with ``torch.optim.AdamW`` defaults.

The math is abexrat's: the same training set (``aug_ratio`` prefix of the synthetic pool), focal loss
with logit adjustment, AdamW, dropout, and RAT (per step, with probability p, the loss at
x + ε·g/||g|| with ε relative to the mean training norm). Only the engineering differs. The search
space, budget, seeds per trial, epochs and the seeded TPE sampler are the ones passed in.

    .venv/bin/python benchmarks/naive_study.py --trials 10 --epochs 4 --json out/naive.json
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, machine, setup_env, write_json  # noqa: E402


def naive_trainable(config: dict[str, Any], study: dict[str, Any], seeds: list[int]) -> None:
    """One trial, the naive way: load everything here, train the seeds one by one."""
    import numpy as np
    import torch
    from ray import tune
    from sklearn.metrics import f1_score
    from torch import nn

    from abexrat.datasets import load_dataset
    from abexrat.embed import EmbeddingCache
    from abexrat.features import build_encoder, featurize
    from abexrat.model import focal_loss
    from abexrat.study.config import Study

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    cfg = Study.model_validate(study).train_config(dict(config))
    ds = load_dataset(cfg)
    feats = featurize(ds, build_encoder(cfg), EmbeddingCache())  # from the cache: reads every shard
    X, y = feats.training_set_for(cfg)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y.astype(np.int64))
    Xv = torch.from_numpy(feats.X_val)
    n, d = X.shape
    C = len(feats.classes)
    scale = float(np.linalg.norm(X, axis=1).mean())
    eps, p = cfg.adversarial.eps * scale, cfg.adversarial.p
    gamma = cfg.loss.gamma if cfg.loss.name == "focal" else 0.0
    prior = np.bincount(y, minlength=C).astype(np.float64) + 1.0
    shift = torch.tensor(cfg.loss.logit_adjust * np.log(prior / prior.sum()), dtype=torch.float32)
    B = cfg.train.batch_size
    t_train = time.perf_counter()
    finals = []
    for s, seed in enumerate(seeds):
        torch.manual_seed(seed)
        layers: list[nn.Module] = []
        dims = [d, *cfg.model.hidden]
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU(), nn.Dropout(cfg.model.dropout)]
        model = nn.Sequential(*layers, nn.Linear(dims[-1], C))
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        for epoch in range(cfg.train.epochs):
            model.train()
            perm = torch.randperm(n)
            for start in range(0, n, B):
                idx = perm[start : start + B]
                xb, yb = Xt[idx], yt[idx]
                attack = cfg.adversarial.method == "rat" and float(torch.rand(())) < p
                if attack:
                    xb.requires_grad_(True)
                clean = focal_loss(model(xb) + shift, yb, gamma)
                loss = clean.mean()
                if attack:
                    (g,) = torch.autograd.grad(clean.sum(), xb, retain_graph=True)
                    r = eps * g / g.norm(dim=-1, keepdim=True).clamp_min(1e-12)
                    loss = loss + focal_loss(model(xb.detach() + r) + shift, yb, gamma).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                pred = model(Xv).argmax(-1).numpy()
            f1 = float(f1_score(feats.y_val, pred, average="macro", zero_division=0))
            tune.report({"seed": seed, "seed_index": s, "epoch": epoch + 1, "val_macro_f1": f1})
        finals.append(f1)
    train_s = time.perf_counter() - t_train
    tune.report(
        {
            "epoch": cfg.train.epochs,
            "val_macro_f1": float(np.mean(finals)),
            "val_macro_f1_per_seed": finals,
            "train_s": train_s,
            "trial_s": time.perf_counter() - t0,
        }
    )


def optuna_space(space: dict[str, Any]) -> dict[str, Any]:
    """The study's space as Optuna distributions (the searched keys are floats in the quickstart)."""
    import optuna

    out = {}
    for key, p in space.items():
        if p["type"] == "float":
            out[key] = optuna.distributions.FloatDistribution(p["low"], p["high"], log=p.get("log", False))
        elif p["type"] == "int":
            out[key] = optuna.distributions.IntDistribution(int(p["low"]), int(p["high"]), log=p.get("log", False))
        else:
            out[key] = optuna.distributions.CategoricalDistribution(p["choices"])
    return out


def run_naive(study: Any, out: Path, concurrent: int) -> dict[str, Any]:
    """Run the naive search for ``study`` (an abexrat Study: its space, budget, seeds, sampler seed)."""
    import optuna
    import ray
    from ray import tune
    from ray.air.integrations.wandb import WandbLoggerCallback
    from ray.tune.search.optuna import OptunaSearch

    from abexrat.study.samplers import make_sampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # The trial workers cannot import this script: ship the trainable by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[naive_trainable.__module__])
    seeds = list(range(study.seed, study.seed + study.seeds_per_trial))
    sampler = make_sampler(study.optuna.sampler, study.seed, study.budget.num_samples)
    searcher = OptunaSearch(
        space=optuna_space({k: p.model_dump() for k, p in study.space.items()}),
        metric=study.objective.metric,
        mode=study.objective.mode,
        sampler=sampler,
    )
    trainable = tune.with_resources(
        tune.with_parameters(naive_trainable, study=study.model_dump(mode="json"), seeds=seeds), {"cpu": 1}
    )
    wandb_cb = WandbLoggerCallback(project=study.tracking.project, group=study.name, mode="offline", dir=str(out))
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=study.objective.metric,
            mode=study.objective.mode,
            search_alg=searcher,
            num_samples=study.budget.num_samples,
            max_concurrent_trials=concurrent,
            reuse_actors=False,
        ),
        run_config=tune.RunConfig(name="search", storage_path=str(out.resolve()), callbacks=[wandb_cb], verbose=0),
    )
    t0 = time.perf_counter()
    results = tuner.fit()
    wall = time.perf_counter() - t0
    done = [r for r in results if not r.error and r.metrics and "train_s" in r.metrics]
    return {
        "search_wall_s": wall,
        "trials": len(done),
        "trials_failed": len(results) - len(done),
        "best_val_macro_f1": max((r.metrics["val_macro_f1"] for r in done), default=None),
        "sum_train_s": sum(r.metrics["train_s"] for r in done),
        "sum_trial_s": sum(r.metrics["trial_s"] for r in done),
        "wandb_runs": len(list(Path(out).rglob("offline-run-*"))),
        "_ray_up": ray.is_initialized(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="study folder (default: a temporary one)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    setup_env()
    import ray
    from bench_study import make_study  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "naive"
        study = make_study("bench-naive", args.trials, args.epochs, args.seeds, Path(tmp))
        ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        try:
            conc = int(ray.cluster_resources().get("CPU", 1))
            res = run_naive(study, out, conc)
        finally:
            ray.shutdown()
    res.pop("_ray_up", None)
    res["trials_per_hour"] = res["trials"] / res["search_wall_s"] * 3600
    write_json(args.json, {"machine": machine(), "repo": str(REPO), "naive": res})


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
