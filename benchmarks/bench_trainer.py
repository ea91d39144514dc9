"""The trainer's FLOP/s against a plain torch matmul benchmark of the same shapes.

The trainer (``abexrat.train.fit``: S seeds as one batched MLP, focal loss, the adversarial method,
a validation pass per epoch) trains on the OSHA features of the baseline recipe
(``studies/baseline_offline.yaml``, by default with ``data.aug_ratio=1``: its training rows with
their untitled copies, 9,937 x 1,024 inputs).

FLOPs are counted, not estimated: one extra run of the same fit (same seeds, so the same batches
and the same RAT coins) under a ``TorchDispatchMode`` records every matrix product torch executes
(mm / bmm / baddbmm / addmm, in place and out= forms included) with its shapes and strides, at
2·m·n·k per product and batch member. The analytic count (forward 2·m·n·k per layer; backward
the weight gradient plus the input gradient of every layer but the first, and the first layer's
input gradient only on steps where the method needs x-gradients) is reported beside it.

The floor replays that census: each distinct call (op, shapes, strides) runs alone in a tight
loop, and the floor time is the sum over calls of count x time per call. So

    trainer_flops_fraction = floor time / trainer time = trainer FLOP/s / floor FLOP/s

for exactly the products the trainer computes.

What no trainer of this recipe can avoid is reported beside it: the same products replayed once
in the order the trainer ran them, nothing between them (``products_in_order_s``), and the AdamW
update alone over parameters of the model's shapes, once per step (``update_s``). So

    trainer_flops_fraction_ceiling = floor time / (in-order products + updates)

is the most a trainer that computed nothing else (no casts, loss, dropout or row gather) would
reach. Trainer runs and the replays alternate
(``--repeats`` rounds) and the best of each is used; the median of the per-round ratios is
reported too. With 1 thread, time is this process's CPU time (robust to other processes on the
machine; on a quiet machine it equals wall time); with more threads, wall time.

    .venv/bin/python benchmarks/bench_trainer.py --json out/trainer.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, clock_for, machine, setup_env, write_json  # noqa: E402

MATMULS = {"mm", "bmm", "baddbmm", "baddbmm_", "addmm", "addmm_", "addbmm", "addbmm_", "matmul"}


def load_features(aug_ratio: float, synthetic: bool) -> tuple[Any, ...]:
    """(X, y, X_val, y_val, n_classes, cfg) for the baseline recipe."""
    import numpy as np

    from abexrat.config import load_train_config

    # one MLP per seed: S seeds are S members, as in a search trial
    cfg = load_train_config(
        REPO / "studies" / "baseline_offline.yaml", [f"data.aug_ratio={aug_ratio}", "model.ensemble=1"]
    )
    if synthetic:
        rng = np.random.default_rng(0)
        X = rng.normal(size=(6361, 640)).astype(np.float32)
        y = rng.integers(0, 7, 6361)
        return X, y, X[:447].copy(), y[:447].copy(), 7, cfg
    from abexrat.datasets import load_dataset
    from abexrat.embed import EmbeddingCache
    from abexrat.features import build_encoder, featurize

    feats = featurize(load_dataset(cfg), build_encoder(cfg), EmbeddingCache())
    X, y = feats.training_set_for(cfg)
    return X, y, feats.X_val, feats.y_val, len(feats.classes), cfg


def census(run: Any, ops: set[str] = MATMULS, flops: Any = None, order: list | None = None) -> tuple[Counter, int]:
    """Run ``run()`` recording every call of ``ops`` (the matmul family): {(op, operands' shapes/strides,
    scalars): count}, and the FLOPs of them all (``flops(key)``, by default ``flops_of``). ``order``,
    if given, receives every call's key in the order they ran."""
    flops = flops or flops_of
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    calls: Counter = Counter()

    def meta(a: Any) -> Any:
        if isinstance(a, torch.Tensor):
            return ("T", tuple(a.shape), tuple(a.stride()), str(a.dtype))
        if isinstance(a, list | tuple):
            return tuple(meta(x) for x in a)
        return a

    class Census(TorchDispatchMode):
        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            kwargs = kwargs or {}
            if func.overloadpacket.__name__ in ops:
                key = (func, meta(tuple(args)), tuple(sorted((k, meta(v)) for k, v in kwargs.items())))
                calls[key] += 1
                if order is not None:
                    order.append(key)
            return func(*args, **kwargs)

    with Census():
        run()
    return calls, sum(flops(k) * n for k, n in calls.items())


def _operands(key: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The two matrix operands' shapes of a recorded call."""
    func, args, kwargs = key
    name = func.overloadpacket.__name__
    tensors = [a for a in args if isinstance(a, tuple) and a and a[0] == "T"]
    if name in ("mm", "bmm", "matmul"):
        return tensors[0][1], tensors[1][1]
    return tensors[1][1], tensors[2][1]  # (add)(b)mm: self, then the two factors


def flops_of(key: Any) -> int:
    """2·m·k·n per product (times the batch for 3-d operands)."""
    a, b = _operands(key)
    batch = a[0] if len(a) == 3 else 1
    return 2 * batch * a[-2] * a[-1] * b[-1]


def replay_time(
    calls: Counter, threads: int, min_s: float = 0.02, flops: Any = None, operands: Any = None
) -> tuple[float, list[dict[str, Any]]]:
    """Floor: each distinct call alone in a tight loop; returns (sum of count x seconds per call, rows)."""

    flops, operands = flops or flops_of, operands or _operands
    clock = clock_for(threads)
    total, rows = 0.0, []
    for key, count in calls.items():
        func, real_args, real_kwargs = operands_of(key)
        func(*real_args, **real_kwargs)  # warm
        n, spent = 1, 0.0
        while True:  # grow the loop until it runs long enough to time
            t0 = clock()
            for _ in range(n):
                func(*real_args, **real_kwargs)
            spent = clock() - t0
            if spent >= min_s:
                break
            n *= 4
        per_call = spent / n
        total += per_call * count
        rows.append(
            {
                "op": str(func),
                "operands": [list(s) for s in operands(key)],
                "calls": count,
                "us_per_call": round(per_call * 1e6, 2),
                "gflops": round(flops(key) / per_call / 1e9, 1),
            }
        )
    rows.sort(key=lambda r: -r["calls"] * r["us_per_call"])
    return total, rows


def operands_of(key: Any) -> tuple[Any, list[Any], dict[str, Any]]:
    """(op, args, kwargs) of a recorded call, its tensors random ones of the recorded shapes,
    strides and dtypes."""
    import torch

    func, args, kwargs = key

    def build(a: Any) -> Any:
        if isinstance(a, tuple) and a and a[0] == "T":
            _, shape, stride, dtype = a
            size = 1 + sum((n - 1) * st for n, st in zip(shape, stride)) if all(shape) else 0
            flat = torch.empty(size, dtype=getattr(torch, dtype.split(".")[-1]))
            # a boolean attention mask all True: every position attended, as real rows mostly are
            flat = flat.normal_() if flat.is_floating_point() else flat.fill_(flat.dtype == torch.bool)
            return flat.as_strided(shape, stride)  # the same layout, broadcast (0) strides included
        if isinstance(a, tuple):
            return tuple(build(x) for x in a)
        return a

    return func, [build(a) for a in args], {k: build(v) for k, v in kwargs}


def in_order_time(order: list[Any], threads: int) -> float:
    """The recorded products replayed once in the order the trainer ran them, nothing between them
    (operands built once per distinct call): what the products cost in sequence, as opposed to
    each alone in a tight loop (the floor)."""
    clock = clock_for(threads)
    built = {key: operands_of(key) for key in dict.fromkeys(order)}
    for func, args, kwargs in built.values():
        func(*args, **kwargs)  # warm
    t0 = clock()
    for key in order:
        func, args, kwargs = built[key]
        func(*args, **kwargs)
    return clock() - t0


def update_time(dims: list[int], S: int, steps: int, lr: float, weight_decay: float, threads: int) -> float:
    """``steps`` of the trainer's AdamW update (``abexrat.optim.adamw``) alone, over parameters of the
    batched model's shapes (S members, layer sizes ``dims``), fp32 as the trainer keeps them."""
    import torch

    from abexrat.model import EnsembleMLP
    from abexrat.optim import adamw

    params = list(EnsembleMLP(S, dims[0], dims[1:-1], dims[-1], 0.0).parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    opt = adamw(params, lr, weight_decay)
    opt.step()  # warm
    clock = clock_for(threads)
    t0 = clock()
    for _ in range(steps):
        opt.step()
    return clock() - t0


def analytic_flops(dims: list[int], S: int, steps: list[tuple[int, int]], method: str, epochs: int, n_val: int) -> Any:
    """The count from the layer shapes: per member and step of b rows, forward 2·b·a·c per layer;
    backward the weight gradients (the same again) and the input gradients of every layer but the
    first; on an attacked step, for every member (RAT's coins weight the terms, the products run
    for all), the first layer's input gradient too (methods that take x-gradients: the same
    backward pass gives it) and a second pass (forward + backward) at x + r. ``steps``: (rows,
    attacking members) of every step, in order."""
    x_grad = {"none": False, "rat": True, "fgm": True, "dpaat": True, "gaussian": False}
    if method not in x_grad:
        return None  # pgd and others: more passes than this simple count knows

    def fwd(rows: int, layers: range) -> int:  # one member
        return sum(2 * rows * dims[i] * dims[i + 1] for i in layers)

    L = len(dims) - 1
    every, deep = range(L), range(1, L)

    def one_pass(b: int) -> int:  # forward, weight gradients, input gradients of the deeper layers
        return 2 * fwd(b, every) + fwd(b, deep)

    clean = sum(S * one_pass(b) for b, _ in steps)
    attack = sum(k * (one_pass(b) + (fwd(b, range(1)) if x_grad[method] else 0)) for b, k in steps)
    val = epochs * S * fwd(n_val, every)
    return {"clean": clean, "attack": attack, "validation": val, "total": clean + attack + val}


def bench(
    method: str, S: int, threads: int, epochs: int, repeats: int, data: tuple[Any, ...], precision: str = "auto"
) -> dict[str, Any]:
    import torch

    from abexrat.config import TrainConfig
    from abexrat.train import fit, use_bf16

    X, y, Xv, yv, C, base = data
    cfg = TrainConfig.model_validate(
        {
            **base.model_dump(),
            "train": {**base.train.model_dump(), "epochs": epochs, "precision": precision},
            "adversarial": {**base.adversarial.model_dump(), "method": method},
        }
    )
    torch.set_num_threads(threads)
    seeds = list(range(S))
    hits: list[int] = []  # per step: members that attack (0: no attack)

    def count_attacks(m: Any) -> None:
        plan = m.plan

        def counted() -> bool:
            hit = plan()
            hits.append(S if hit else 0)
            return hit

        m.plan = counted

    def run() -> float:
        clock = clock_for(threads)
        t0 = clock()
        fit(X, y, C, cfg, seeds, val=(Xv, yv))
        return clock() - t0

    order: list[Any] = []
    calls, flops = census(lambda: fit(X, y, C, cfg, seeds, val=(Xv, yv), method_hook=count_attacks), order=order)
    run()  # warm-up: first-call allocations, MKL and thread-pool start-up
    dims = [X.shape[1], *cfg.model.hidden, C]
    B, n = cfg.train.batch_size, len(X)
    steps = [(min(B, n - start), hit) for (start, hit) in zip([s for _ in range(epochs) for s in range(0, n, B)], hits)]
    trainer, floor, rows, in_order, update = [], [], [], [], []
    for _ in range(repeats):
        trainer.append(run())
        f, rows = replay_time(calls, threads)
        floor.append(f)
        in_order.append(in_order_time(order, threads))
        update.append(update_time(dims, S, len(steps), cfg.train.lr, cfg.train.weight_decay, threads))
    best_t, best_f = min(trainer), min(floor)
    # the most any trainer reaches that runs these products in this order and this update, nothing else
    ceiling = best_f / (min(in_order) + min(update))
    return {
        "method": method,
        "precision": "bf16" if use_bf16(precision) else "fp32",
        "seeds": S,
        "threads": threads,
        "epochs": epochs,
        "batch_size": cfg.train.batch_size,
        "inputs": list(X.shape),
        "dims": dims,
        "clock": "process CPU time" if threads == 1 else "wall time",
        "steps": len(steps),
        "attack_steps": sum(k > 0 for _, k in steps),
        "attacking_member_steps": sum(k for _, k in steps),
        "flops_counted": flops,
        "flops_analytic": analytic_flops(dims, S, steps, method, epochs, len(Xv)),
        "trainer_s": trainer,
        "floor_s": floor,
        "trainer_gflops": flops / best_t / 1e9,
        "floor_gflops": flops / best_f / 1e9,
        "trainer_flops_fraction": best_f / best_t,
        "fraction_median_of_rounds": statistics.median(f / t for f, t in zip(floor, trainer)),
        "products_in_order_s": in_order,
        "update_s": update,
        "trainer_flops_fraction_ceiling": ceiling,
        "ceiling_median_of_rounds": statistics.median(f / (o + u) for f, o, u in zip(floor, in_order, update)),
        "s_per_epoch": best_t / epochs,
        "floor_calls": rows[:8],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="rat,none", help="adversarial methods, comma-separated (first: headline)")
    p.add_argument("--threads", default="1,2", help="torch threads, comma-separated (first: headline)")
    p.add_argument(
        "--precisions", default="auto,fp32", help="train.precision values, comma-separated (first: headline)"
    )
    p.add_argument("--seeds", type=int, default=3, help="S: seeds trained as one batched model")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3, help="alternating trainer / floor rounds")
    p.add_argument("--aug-ratio", type=float, default=1.0, help="data.aug_ratio (1: all 6,361 training rows)")
    p.add_argument("--synthetic", action="store_true", help="random inputs of the same shape (no OSHA files)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    setup_env()
    data = load_features(args.aug_ratio, args.synthetic)
    runs = []
    for threads in [int(t) for t in args.threads.split(",")]:
        for precision in args.precisions.split(","):
            for method in args.methods.split(","):
                r = bench(method, args.seeds, threads, args.epochs, args.repeats, data, precision)
                runs.append(r)
                print(
                    f"{method:5s} {r['precision']} S={r['seeds']} threads={threads}: {r['s_per_epoch']:.3f} s/epoch, "
                    f"{r['trainer_gflops']:.1f} GFLOP/s vs floor {r['floor_gflops']:.1f} "
                    f"-> {r['trainer_flops_fraction']:.2f} (ceiling {r['trainer_flops_fraction_ceiling']:.2f})",
                    file=sys.stderr,
                )
    head = runs[0]
    fp32 = next((r for r in runs if r["precision"] == "fp32" and r["method"] == head["method"]), None)
    write_json(
        args.json,
        {
            "machine": machine(),
            "trainer_flops_fraction": head["trainer_flops_fraction"],
            "trainer_flops_fraction_ceiling": head["trainer_flops_fraction_ceiling"],
            "trainer_gflops": head["trainer_gflops"],
            "floor_gflops": head["floor_gflops"],
            # the same method in fp32 products, against the fp32 floor (the headline's is bf16 where auto chose it)
            "trainer_flops_fraction_fp32": fp32["trainer_flops_fraction"] if fp32 else None,
            "trainer_gflops_fp32": fp32["trainer_gflops"] if fp32 else None,
            "headline": {k: head[k] for k in ("method", "precision", "seeds", "threads", "inputs", "clock")},
            "runs": runs,
        },
    )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
