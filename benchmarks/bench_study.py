"""What a study costs beyond its training, and how it compares with a naive Ray Tune set-up.

abexrat's study runs through ``abexrat.study.runner.run_study`` exactly as ``abexrat study run`` does
(tracking on: W&B offline), on a study built from ``studies/quickstart.yaml``'s search space with a
smaller budget. From its search stage:

- ``study_overhead_fraction`` = 1 - (sum of the trials' in-trial training time ``train_s``) /
  (search wall time x concurrent trials). The search wall runs from the start of the search stage
  (Tuner set-up, the trial workers' start-up) to the end of the W&B writes of its trials.
- trials per hour = trials / search wall time, and the best validation macro-F1.
- peak memory: the driver (``ru_maxrss``), each trial worker, every process of the study together
  (polled from /proc every 0.5 s); whether the trials' feature arrays are zero-copy views of the
  object store.

The naive set-up (``naive_study.py``: stock ``WandbLoggerCallback``, ``reuse_actors=False``, data
loaded in every trial, seeds trained one after the other) runs the same space, seeds and sampler on
the same machine in the same process run; ``speedup_vs_naive`` is the ratio of trials per hour.

A second peer, ``optuna_study.py`` (``--optuna on``, the default): what a user with one machine
could run instead, plain Optuna in one process, ``study.optimize(objective, n_jobs=cores)``, each
trial calling abexrat's own trainer on features encoded once; same space, seeds, seeded TPE sampler
and epochs, and the same wall time (or ``--trials``). ``speedup_vs_optuna`` is abexrat's trials per
hour over its; ``best_val_macro_f1`` holds all three bests.

The budget is the same for all (``--budget``):

- ``time`` (default): the naive set-up runs ``--trials`` trials first; abexrat's search then gets
  the naive search's wall time as its ``time_budget_s`` (and room for more trials). Both searches
  spend the same time, and the best validation macro-F1 each reached in it is compared: what a
  faster search buys.
- ``trials``: both run ``--trials`` trials (abexrat first). The best validation macro-F1 of two
  searches of the same size on a 447-report validation split differs by chance alone.

    .venv/bin/python benchmarks/bench_study.py --trials 10 --epochs 4 --json out/study.json

On a GPU machine, ``--gpu-share F`` gives each of abexrat's trials F of a GPU (Ray places 1/F trials
per GPU, each training there: ``train.device`` auto). #6's GPU target, single-seed trials per hour on
the OSHA embeddings (the quickstart's space and 20 epochs):

    .venv/bin/python benchmarks/bench_study.py --which ours --budget trials --trials 400 --seeds 1 \
        --epochs 20 --gpu-share 0.0625 --json out/study-gpu.json
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
from _common import (  # noqa: E402
    REPO,
    ProcessMemory,
    configs_digest,
    load_avg,
    machine,
    peak_rss_mb,
    setup_env,
    write_json,
)


def make_study(
    name: str,
    trials: int,
    epochs: int,
    seeds: int,
    folder: Path,
    final_seeds: int = 2,
    time_budget_s: float | None = None,
    gpu_share: float = 0.0,
    configs_per_trial: int = 1,
    trainer_overrides: dict[str, Any] | None = None,
    sampler: str = "tpe",
) -> Any:
    """A study file like quickstart.yaml (same base, space, objective, resources, tracking on) with a
    smaller budget; written to ``folder`` and read back with ``load_study`` as the CLI would.
    ``trainer_overrides`` are merged into its ``trainer:`` section (a tiny dataset for the tests)."""
    import yaml

    from abexrat.core.safe_yaml import load_yaml
    from abexrat.study.config import load_study, merge_trainer

    quick = load_yaml(REPO / "studies" / "quickstart.yaml")
    raw = {
        "name": name,
        "kind": "search",
        "seed": quick.get("seed", 0),
        "base": str(REPO / "studies" / quick["base"]),
        "trainer": merge_trainer({**quick.get("trainer", {}), "train": {"epochs": epochs}}, trainer_overrides or {}),
        "space": quick["space"],
        "objective": quick.get("objective", {}),
        "budget": {
            "num_samples": trials,
            "configs_per_trial": configs_per_trial,
            **({"time_budget_s": time_budget_s} if time_budget_s else {}),
        },
        "seeds_per_trial": seeds,
        "resources": {**quick.get("resources", {"cpu": 1}), "gpu": gpu_share},
        "final": {"seeds": final_seeds},
        "baselines": {},
        "tracking": {"wandb": True, "project": "abexrat-bench", "mode": "offline"},
        "optuna": {"sampler": sampler},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_study(path)


class _Timeline:
    """Wraps the runner's stages to time them (run_study itself is not changed)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, float, float]] = []

    def wrap(self, module: Any, name: str) -> None:
        fn = getattr(module, name)

        def timed(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.events.append((name, t0, time.perf_counter()))

        setattr(module, name, timed)

    def first(self, name: str) -> tuple[float, float]:
        return next((t0, t1) for n, t0, t1 in self.events if n == name)


def _trial_clock() -> Any:
    """A Tune callback noting, in the driver, when each trial starts, reports and ends."""
    from ray.tune import Callback

    class TrialClock(Callback):
        def __init__(self) -> None:
            self.events: list[tuple[str, str, float]] = []

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.events.append(("start", trial.trial_id, time.perf_counter()))

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            self.events.append(("result", trial.trial_id, time.perf_counter()))

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.events.append(("complete", trial.trial_id, time.perf_counter()))

    return TrialClock()


def busy_profile(clock: Any, t0: float, t1: float, slots: int, df: Any) -> dict[str, Any]:
    """Where the search stage's slot-seconds went: training, the rest of the trial function, the
    time between Tune starting a trial and its function running (worker start-up, imports, the
    features' ray.get), slots idle before the first trial, between trials and in the tail."""
    starts = {tid: t for ev, tid, t in clock.events if ev == "start"}
    ends = {tid: t for ev, tid, t in clock.events if ev == "complete"}
    firsts: dict[str, float] = {}
    for ev, tid, t in clock.events:
        if ev == "result" and tid not in firsts:
            firsts[tid] = t
    rows: dict[str, dict[str, float]] = {}
    for _, r in df.iterrows():  # a grouped trial's rows (``<id>-c<j>``) hold shares of its times
        tid = str(r["trial_id"]).rsplit("-c", 1)[0]
        row = rows.setdefault(tid, {"trial_s": 0.0, "train_s": 0.0})
        row["trial_s"] += float(r["trial_s"])
        row["train_s"] += float(r["train_s"])
    occupied = sum(ends[t] - starts[t] for t in starts if t in ends)
    in_fn = sum(float(rows[t]["trial_s"]) for t in starts if t in rows and t in ends)
    train = sum(float(rows[t]["train_s"]) for t in starts if t in rows and t in ends)
    total = (t1 - t0) * slots
    first = min(starts.values()) - t0 if starts else None
    return {
        "slot_seconds": total,
        "training": train,
        "trial_fn_outside_training": in_fn - train,
        "tune_in_trial_outside_fn": occupied - in_fn,
        "slots_idle": total - occupied,
        "first_trial_start_s": first,
        "last_trial_end_to_stage_end_s": t1 - max(ends.values()) if ends else None,
        "per_trial": [
            {
                "trial_id": t,
                "start_s": round(starts[t] - t0, 3),
                "first_result_s": round(firsts.get(t, float("nan")) - t0, 3),
                "end_s": round(ends.get(t, float("nan")) - t0, 3),
                "trial_s": round(float(rows[t]["trial_s"]), 3) if t in rows else None,
                "train_s": round(float(rows[t]["train_s"]), 3) if t in rows else None,
            }
            for t in sorted(starts, key=starts.get)
        ],
    }


def _zero_copy_check(ref: Any) -> dict[str, Any]:
    """In a Ray worker: are the features read from the object store views of shared memory?"""
    import ray

    @ray.remote(num_cpus=0)
    def probe(feats: Any) -> dict[str, Any]:
        x = feats.X_train
        return {"writeable": bool(x.flags.writeable), "owns_data": bool(x.flags.owndata), "mb": x.nbytes / 2**20}

    return ray.get(probe.remote(ref))


def run_ours(study: Any, out: Path) -> dict[str, Any]:
    import pandas as pd
    import ray

    import abexrat.study.runner as runner
    import abexrat.study.stages as stages

    timeline = _Timeline()
    for name in ("run_search", "run_final", "close_callbacks"):
        if hasattr(runner, name):
            timeline.wrap(runner, name)
    clock = _trial_clock()
    real_callbacks = stages.stage_callbacks

    def callbacks(total: int, label: str, st: Any, job: str, *a: Any, **k: Any) -> list[Any]:
        return [*real_callbacks(total, label, st, job, *a, **k), *([clock] if job != "final" else [])]

    stages.stage_callbacks = callbacks
    # run_study puts the features into the object store: keep the ref to check how trials see them.
    refs: list[Any] = []
    real_put = ray.put

    def put(value: Any, *a: Any, **k: Any) -> Any:
        ref = real_put(value, *a, **k)
        refs.append(ref)
        return ref

    t0 = time.perf_counter()
    # As run_study would (it then leaves this Ray up for the checks below).
    runner.connect(None, preload=runner.TRIAL_MODULES)
    ray_init_s = time.perf_counter() - t0
    concurrent = stages.max_concurrent(study)
    ray.put = put
    try:
        with ProcessMemory() as mem:
            t1 = time.perf_counter()
            summary = runner.run_study(study, out, report=False)
            study_s = time.perf_counter() - t1
        zero_copy = _zero_copy_check(refs[0]) if refs else None
    finally:
        ray.put = real_put
        stages.stage_callbacks = real_callbacks
        ray.shutdown()
    s0, s1 = timeline.first("run_search")
    close_after = [t1_ for n, t0_, t1_ in timeline.events if n == "close_callbacks" and t0_ >= s1]
    search_end = close_after[0] if close_after else s1  # the W&B writes of the search trials drained
    search_wall = search_end - s0
    df = pd.read_parquet(out / "trials.parquet")
    search = df[df["stage"] == "search"]
    # A trial the time budget cut off mid-training never reported its final result: its time counts as overhead.
    ok = search[(search["status"] == "TERMINATED") & search["train_s"].notna()]
    train_s = float(ok["train_s"].astype(float).sum())
    trial_s = float(ok["trial_s"].astype(float).sum())
    f0, f1 = timeline.first("run_final")
    return {
        "concurrent_trials": concurrent,
        "trials": len(ok),
        "trials_failed": int((search["status"] == "ERROR").sum()),
        "trials_cut_by_budget": int((search["status"] == "BUDGET").sum()),
        "search_wall_s": search_wall,
        "search_tune_s": s1 - s0,
        "search_wandb_drain_s": search_end - s1,
        "sum_train_s": train_s,
        "sum_trial_s": trial_s,
        "study_overhead_fraction": 1 - train_s / (search_wall * concurrent),
        "tune_overhead_fraction": 1 - trial_s / (search_wall * concurrent),
        "trials_per_hour": len(ok) / search_wall * 3600,
        # what the sampler chose to train: a search that samples larger aug_ratio trains longer trials
        "mean_train_rows": float(ok["train_size"].astype(float).mean()),
        "configs_digest": configs_digest(
            ok[[c for c in ok.columns if c.startswith("param:")]].rename(columns=lambda c: c[6:]).to_dict("records")
        ),
        "best_val_macro_f1": float(ok["val_macro_f1"].astype(float).max()),
        "final_stage_s": f1 - f0,
        "ray_init_s": ray_init_s,
        "study_wall_s": study_s,
        "encode_s": summary.get("encode_s"),
        "wandb": {k: summary.get("tracking", {}).get(k) for k in ("mode", "runs", "busy_s", "driver_wait_s")},
        "search_profile_s": busy_profile(clock, s0, search_end, concurrent, ok),
        "memory": {**mem.summary(), "driver_peak_rss_mb": round(peak_rss_mb(), 1)},
        "features_zero_copy": zero_copy,
    }


def _naive(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    import ray
    from naive_study import run_naive

    import abexrat.study.runner as runner
    import abexrat.study.stages as stages

    study = make_study("bench-naive", args.trials, args.epochs, args.seeds, root, sampler=args.sampler)
    runner.connect(None)  # the naive set-up: a plain ray.init
    try:
        conc = stages.max_concurrent(study)
        n = run_naive(study, root / "naive", conc)
    finally:
        ray.shutdown()
    n.pop("_ray_up", None)
    n["trials_per_hour"] = n["trials"] / n["search_wall_s"] * 3600
    n["study_overhead_fraction"] = 1 - n["sum_train_s"] / (n["search_wall_s"] * conc)
    n["load_avg_after"] = load_avg()
    return n


def _optuna(args: argparse.Namespace, root: Path, budget_s: float | None) -> dict[str, Any]:
    """The one-process peer (``optuna_study.py``): ``study.optimize(n_jobs=cores)``, same space, seeds,
    sampler and epochs; the same wall time as the others (``budget_s``), else ``--trials`` trials."""
    from _common import cores
    from optuna_study import run_optuna

    study = make_study("bench-optuna", args.trials, args.epochs, args.seeds, root, sampler=args.sampler)
    # as many at once as abexrat's study runs on this machine (a CPU per trial), without Ray
    n_jobs = max(1, min(int(cores() // study.resources.cpu), study.budget.max_concurrent or cores()))
    res = run_optuna(study, n_jobs, timeout_s=budget_s, trials=None if budget_s else args.trials)
    res["load_avg_after"] = load_avg()
    return res


def main() -> None:
    from abexrat.study.samplers import SAMPLERS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=10, help="search trials (configurations, num_samples)")
    p.add_argument(
        "--budget",
        choices=["time", "trials"],
        default="time",
        help="equal for both: the naive search's wall time (default), or --trials trials",
    )
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--seeds", type=int, default=2, help="seeds per trial")
    p.add_argument("--which", choices=["both", "ours", "naive"], default="both")
    p.add_argument(
        "--gpu-share",
        type=float,
        default=0.0,
        help="abexrat's trials each get this share of a GPU and train on it (0.0625: 16 trials per GPU)",
    )
    p.add_argument(
        "--configs-per-trial",
        type=int,
        default=1,
        help="abexrat's trials each train this many configurations (differing in ε and p) as one batch",
    )
    p.add_argument(
        "--optuna",
        choices=["on", "off"],
        default="on",
        help="also run plain Optuna in one process (study.optimize(n_jobs=cores)) with the same budget",
    )
    p.add_argument(
        "--sampler",
        choices=list(SAMPLERS),
        default="tpe",
        help="every search's Optuna sampler; random with --budget trials trains the same configurations in all",
    )
    p.add_argument("--keep", type=Path, default=None, help="keep the study folders here")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    setup_env()
    # Always a fresh local Ray: without an address, ray.init() joins any cluster `ray start`ed on
    # this machine (another job's), which would measure that cluster instead.
    os.environ["RAY_ADDRESS"] = "local"
    res: dict[str, Any] = {
        "config": {
            "trials": args.trials,
            "epochs": args.epochs,
            "seeds_per_trial": args.seeds,
            "budget": args.budget,
            "gpu_share": args.gpu_share,
            "configs_per_trial": args.configs_per_trial,
            "sampler": args.sampler,
        },
        "machine": machine(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        by_time = args.budget == "time" and args.which == "both"
        if by_time:
            res["naive"] = _naive(args, root)
        if args.which in ("both", "ours"):
            from ray.tune.execution import class_cache

            stock_env = dict(class_cache.DEFAULT_ENV_VARS)
            # Same wall time as the naive search, and room for the trials it affords in it.
            budget_s = res["naive"]["search_wall_s"] if by_time else None
            trials = args.trials * 20 if by_time else args.trials
            study = make_study(
                "bench-abexrat",
                trials,
                args.epochs,
                args.seeds,
                root,
                time_budget_s=budget_s,
                gpu_share=args.gpu_share,
                configs_per_trial=args.configs_per_trial,
                sampler=args.sampler,
            )
            res["abexrat"] = run_ours(study, root / "abexrat")
            # The naive set-up may run next in this process: give it Tune's stock trial actors back.
            class_cache.DEFAULT_ENV_VARS.update(stock_env)
            res["load_avg_after_abexrat"] = load_avg()
        if args.which in ("both", "naive") and not by_time:
            res["naive"] = _naive(args, root)
        if args.optuna == "on" and args.which != "naive":
            res["optuna"] = _optuna(args, root, res["naive"]["search_wall_s"] if by_time else None)
    f1: dict[str, Any] = {}
    if "abexrat" in res and "naive" in res:
        a, n = res["abexrat"], res["naive"]
        res["speedup_vs_naive"] = a["trials_per_hour"] / n["trials_per_hour"]
        f1 = {"abexrat": a["best_val_macro_f1"], "naive": n["best_val_macro_f1"]}
    if "abexrat" in res and res.get("optuna", {}).get("trials_per_hour"):
        a, o = res["abexrat"], res["optuna"]
        res["speedup_vs_optuna"] = a["trials_per_hour"] / o["trials_per_hour"]
        # the same ratio in training rows per hour: insensitive to which aug_ratio each sampler drew
        a_rows, o_rows = a.get("mean_train_rows"), o.get("mean_train_rows")
        if a_rows and o_rows:
            res["rows_speedup_vs_optuna"] = a["trials_per_hour"] * a_rows / (o["trials_per_hour"] * o_rows)
        f1 = {"abexrat": a["best_val_macro_f1"], **f1, "optuna": o["best_val_macro_f1"]}
    if f1:
        res["best_val_macro_f1"] = f1
    write_json(args.json, res)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
