"""Soak: ~100 tiny trials on a simulated 3-node cluster while worker nodes are killed at random.

A head that runs no trial (the driver's node; it must live) + 2 workers with 1 CPU each, on this
machine. Every ``KILL_EVERY_S`` seconds a background thread waits for a worker node hosting the actor
of a running trial with at least ``EPOCHS_LEFT`` epochs to go (read from Ray's actor table and the
trial's reports; a node that hosts none is spared, since killing it could not show anything),
SIGKILLs one such node at random and adds a fresh one. Afterwards, by counting (``tests/faults.py``):
at least ``MIN_HITS`` trials were caught mid-attempt by a kill, each of them ran again and finished,
every trial finished exactly once, each has one row in trials.parquet and one W&B run (offline).
``SOAK`` holds the figures (printed); how long the soak takes is the machine's business, not an
assert.

Bounded: ``ABEXRAT_SOAK_TRIALS`` (default 100), ``ABEXRAT_SOAK_KILL_EVERY_S`` (default 4: the least
time between two kills) and ``ABEXRAT_SOAK_MIN_HITS`` (default 3).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests.faults import (
    KILLS,
    attempts,
    check_recovered,
    hit_trials,
    is_trial_actor,
    live_actors,
    running_trials,
    trial_dirs,
)
from tests.test_study import study_file

N_TRIALS = int(os.environ.get("ABEXRAT_SOAK_TRIALS", "100"))
KILL_EVERY_S = float(os.environ.get("ABEXRAT_SOAK_KILL_EVERY_S", "4"))
MIN_HITS = int(os.environ.get("ABEXRAT_SOAK_MIN_HITS", "3"))
# A tiny trial trains an epoch in ~40 ms: a kill lands mid-attempt only if the poll → SIGKILL delay
# (reading the reports and Ray's actor table, ~0.1-0.5 s) is shorter than what the trial has left, so
# victims are long trials with EPOCHS_LEFT epochs (~1.6 s on an idle core) still to go.
LONG_EPOCHS = 60
EPOCHS_LEFT = 40
SOAK: dict[str, Any] = {}


def _dies_once(config: dict[str, Any]) -> None:
    """A trainable whose worker process dies the first time each trial runs (as with its node)."""
    from ray import tune

    marker = Path(config["dir"]) / f"{config['i']}.started"
    if not marker.exists():
        marker.touch()
        os._exit(1)
    tune.report({"val_macro_f1": 1.0, "val_accuracy": 1.0})


def test_trials_lost_with_their_worker_are_run_again(tmp_path: Path) -> None:
    """Tune gives up on a trial whose actor dies while it is PENDING, whatever ``max_failures`` says
    (seen in the soak); here ``max_failures=0`` makes every first death final, and the runner's
    restore-and-resume round must still finish every trial, under its own trial id."""
    import ray
    from ray import tune

    from abexrat.study.reruns import fit_with_reruns

    ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
        path = tmp_path / "exp"
        tuner = tune.Tuner(
            _dies_once,
            param_space={"i": tune.grid_search([0, 1, 2]), "dir": str(tmp_path)},
            run_config=tune.RunConfig(
                name="exp", storage_path=str(tmp_path), verbose=0, failure_config=tune.FailureConfig(max_failures=0)
            ),
        )
        results, _ = fit_with_reruns(tuner, path, _dies_once, [])
        trials = results._experiment_analysis.trials
        assert [t.status for t in trials] == ["TERMINATED"] * 3
        assert len({t.trial_id for t in trials}) == 3 and all(r.metrics["val_accuracy"] == 1.0 for r in results)
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        ray.shutdown()


def test_soak_trials_survive_worker_nodes_killed_at_random(
    tmp_path: Path, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from abexrat.study.config import load_study
    from abexrat.study.runner import run_study

    # A new node registers a SIGTERM handler, which Python allows only in the main thread; the chaos
    # thread's nodes do without one (the cluster's shutdown stops them).
    real_signal = signal.signal

    def signal_from_any_thread(sig: int, handler: Any) -> Any:
        if threading.current_thread() is threading.main_thread():
            return real_signal(sig, handler)
        return signal.getsignal(sig)

    monkeypatch.setattr(signal, "signal", signal_from_any_thread)
    ray.shutdown()
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    t_start = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    path = study_file(
        tmp_path,
        tiny_dir,
        "soak",
        f"""
space:
  adversarial.eps: {{type: float, low: 0.01, high: 1.0, log: true}}
  adversarial.p: {{type: float, low: 0.0, high: 1.0}}
  train.epochs: {{type: categorical, choices: [5, {LONG_EPOCHS}]}}
budget: {{num_samples: {N_TRIALS}}}
seeds_per_trial: 1
final: {{seeds: 1}}
max_failures: 100
""",
    )  # W&B offline
    out = tmp_path / "out"
    rng = random.Random(7)
    stop = threading.Event()
    kills: list[float] = []
    waits = 0  # polls that found no worker node hosting a running trial
    killed: set[int] = set()  # the pids of the actors on the killed nodes
    errors: list[str] = []

    def busy_workers() -> list[int]:
        """The worker nodes hosting the actor of a trial that is running now."""
        running = running_trials(out / "search", min_epochs_left=EPOCHS_LEFT)
        pids = {pid for _, pid, _ in running}
        nodes = {a["Address"]["NodeID"] for a in live_actors() if a["Pid"] in pids and is_trial_actor(a)}
        return [i for i, w in enumerate(workers) if w.node_id in nodes] if pids else []

    def chaos() -> None:
        nonlocal waits
        while not stop.wait(KILL_EVERY_S):
            try:
                busy = busy_workers()
                while not busy and not stop.wait(0.2):  # until a trial runs on a worker node
                    waits += 1
                    busy = busy_workers()
                if not busy:
                    continue
                victim = workers.pop(rng.choice(busy))
                on_node = {a["Pid"] for a in live_actors() if a["Address"]["NodeID"] == victim.node_id}
                if KILLS:
                    cluster.remove_node(victim, allow_graceful=False)  # SIGKILL: the node and its trials die
                killed.update(on_node)
                kills.append(time.perf_counter() - t_start)
                if not stop.is_set():
                    workers.append(cluster.add_node(num_cpus=1) if KILLS else victim)
            except Exception as e:  # noqa: BLE001 - a failed kill must not hang the soak; the test reports it
                errors.append(repr(e))

    killer = threading.Thread(target=chaos, name="chaos", daemon=True)
    t0 = time.perf_counter()
    killer.start()
    try:
        summary = run_study(load_study(path), out, address=cluster.address, report=False)
        wall = time.perf_counter() - t0
    finally:
        stop.set()
        killer.join(timeout=60)
        ray.shutdown()
        cluster.shutdown()
    assert not errors, errors

    hits = hit_trials(out, killed)
    actors = {a.pid for d in trial_dirs(out / "search").values() for a in attempts(d)}
    SOAK.update(
        trials=N_TRIALS,
        kills=len(kills),
        polls_without_a_busy_node=waits,
        kill_every_s=KILL_EVERY_S,
        trials_hit=len(hits),
        trial_restarts=len(summary["trial_restarts"]),
        failed_attempts=sum(r["failed_attempts"] for r in summary["trial_restarts"]),
        actors=len(actors),
        wall_s=wall,
        total_s=time.perf_counter() - t_start,
        wandb_busy_s=summary["tracking"]["busy_s"],
    )
    print(
        f"\nsoak: {N_TRIALS} trials, {len(kills)} worker nodes hosting a running trial killed (at most "
        f"every {KILL_EVERY_S:g} s; {waits} polls found none), {len(hits)} trials caught mid-attempt, "
        f"{SOAK['trial_restarts']} trials run again ({SOAK['failed_attempts']} failed attempts), "
        f"trials ran in {len(actors)} actor processes, study {wall:.0f} s "
        f"({SOAK['total_s']:.0f} s with the cluster's start, W&B thread busy {SOAK['wandb_busy_s']:.0f} s)"
    )

    assert len(hits) >= MIN_HITS, f"only {len(hits)} trial(s) caught mid-attempt by {len(kills)} kills"
    check_recovered(out, hits, N_TRIALS)  # each ran again and finished; one row and one W&B run per trial
    s = json.loads((out / "summary.json").read_text())
    search = pd.read_parquet(out / "trials.parquet").query("stage == 'search'")
    assert s["best_val_macro_f1"] == max(search["val_macro_f1"])
    assert len(s["test"]["macro_f1"]["per_seed"]) == 1
