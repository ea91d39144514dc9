"""The cost of scoring robustness, as a share of the trial or run it belongs to.

Two shapes, both on the OSHA features of the baseline recipe (``studies/baseline_offline.yaml``):

- a **search trial** of ``studies/robustness.yaml``: one MLP per seed, 2 seeds, 12 epochs; robustness
  scored on val only (FGM and PGD-10 at 4 ε, the natural perturbations' vectors encoded once by the
  driver, so a trial only runs the model on them);
- an ``abexrat train`` **run** of the recipe: 3 MLPs per seed, 3 seeds, 20 epochs; robustness on
  val and test.

Each reports training time (``fit``, the clean val pass per epoch included), robustness time
(``abexrat.robustness.evaluate``) and the share robustness / (training + robustness). The natural
perturbations' encoding (once per study or run) is timed separately. CPU time of this process with
1 thread by default (robust to a busy machine); ``--threads N`` uses wall time.

    .venv/bin/python benchmarks/bench_robustness.py --json benchmarks/results/robustness.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, clock_for, machine, setup_env, write_json  # noqa: E402


def measure(overrides: list[str], splits: tuple[str, ...], threads: int) -> dict[str, Any]:
    import torch

    from abexrat.config import load_train_config
    from abexrat.datasets import load_dataset
    from abexrat.embed import EmbeddingCache
    from abexrat.features import build_encoder, featurize
    from abexrat.perturb import dataset_vectors
    from abexrat.robustness import evaluate
    from abexrat.train import fit

    torch.set_num_threads(threads)
    clock = clock_for(threads)
    cfg = load_train_config(REPO / "studies" / "baseline_offline.yaml", overrides)
    ds, enc, cache = load_dataset(cfg), build_encoder(cfg), EmbeddingCache()
    feats = featurize(ds, enc, cache)
    t = time.perf_counter()
    natural = dataset_vectors(ds, enc, cfg.robustness, cache)
    encode_s = time.perf_counter() - t
    X, y = feats.training_set_for(cfg)
    t = clock()
    result = fit(X, y, len(ds.classes), cfg, cfg.seed_list(), val=(feats.X_val, feats.y_val))
    train_s = clock() - t
    data = {"val": (feats.X_val, feats.y_val), "test": (feats.X_test, feats.y_test)}
    t = clock()
    block, _ = evaluate(
        result.model, {s: data[s] for s in splits}, len(ds.classes), result.scale, cfg.robustness, natural
    )
    robust_s = clock() - t
    return {
        "overrides": overrides,
        "splits": list(splits),
        "train_rows": int(len(y)),
        "train_s": round(train_s, 2),
        "robustness_s": round(robust_s, 2),
        "share": round(robust_s / (train_s + robust_s), 3),
        "natural_encode_s (wall, once per study or run)": round(encode_s, 2),
        "val_pgd_auc": round(block["val"]["pgd"]["auc"]["mean"], 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--epochs", type=int, help="override both shapes' epochs (a quick check of the script)")
    args = ap.parse_args()
    setup_env()
    shapes = {
        "search trial (robustness.yaml)": (["model.ensemble=1", "seeds=2", "train.epochs=12"], ("val",)),
        "train run (baseline.yaml, 3 seeds)": (["seeds=3"], ("val", "test")),
    }
    out: dict[str, Any] = {
        "machine": machine(),
        "threads": args.threads,
        "clock": "cpu" if args.threads == 1 else "wall",
    }
    for name, (overrides, splits) in shapes.items():
        extra = [f"train.epochs={args.epochs}"] if args.epochs else []
        out[name] = measure(overrides + extra, splits, args.threads)
        print(name, out[name], flush=True)
    write_json(args.json, out)


if __name__ == "__main__":
    main()
