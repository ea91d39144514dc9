"""Soak: ~200 tiny trials on a simulated 3-node cluster while worker nodes are killed at random.

Head + 2 workers (1 CPU each) on this machine. A background thread SIGKILLs a random worker node
every ``KILL_EVERY_S`` seconds (one holding a trial when there is one) and adds a fresh one. Every
trial must end, the results table must be complete, and no trial id may appear twice. ``SOAK``
holds the figures (printed).

Bounded: ``ABEXRAT_SOAK_TRIALS`` (default 200) and ``ABEXRAT_SOAK_KILL_EVERY_S`` (default 8: a fresh
node needs about that long on 2 cores before its first trial runs; killing faster only ever hits nodes
still starting up, so no trial would die).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests.test_study import study_file

N_TRIALS = int(os.environ.get("ABEXRAT_SOAK_TRIALS", "200"))
KILL_EVERY_S = float(os.environ.get("ABEXRAT_SOAK_KILL_EVERY_S", "8"))
BUDGET_S = 240.0
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

    from abexrat.study.runner import _fit

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
        results, _ = _fit(tuner, path, _dies_once, [])
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
    from ray._private import ray_constants
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
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
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
  train.epochs: {{type: categorical, choices: [5, 10]}}
budget: {{num_samples: {N_TRIALS}}}
seeds_per_trial: 1
final: {{seeds: 1}}
max_failures: 100
""",
    )
    path.write_text(path.read_text().replace("tracking: {mode: offline}", "tracking: {mode: disabled}"))
    out = tmp_path / "out"
    rng = random.Random(7)
    stop = threading.Event()
    kills: list[float] = []
    hits: list[bool] = []  # whether each kill found a node in the middle of a trial
    errors: list[str] = []

    def running_a_trial(node: Any) -> bool:
        """Whether one of the node's worker processes is inside a trial right now (Linux: Ray titles a
        worker process ``ray::ImplicitFunc.train`` while it runs a function trainable)."""
        try:
            raylet = node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
        except (AttributeError, KeyError, IndexError):
            return False
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
                if ppid == raylet and Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::ImplicitFunc.train"):
                    return True
            except (OSError, ValueError, IndexError):
                continue
        return False

    def pick() -> int:
        """A random worker node, among those running a trial when there are any (a node that is still
        starting up holds nothing to lose)."""
        busy = [i for i, w in enumerate(workers) if running_a_trial(w)]
        hits.append(bool(busy))
        return rng.choice(busy) if busy else rng.randrange(len(workers))

    def chaos() -> None:
        while not stop.wait(KILL_EVERY_S):
            try:
                victim = workers.pop(pick())
                cluster.remove_node(victim, allow_graceful=False)  # SIGKILL: the node and its trials die
                kills.append(time.perf_counter() - t_start)
                if not stop.is_set():
                    workers.append(cluster.add_node(num_cpus=1))
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

    table = pd.read_parquet(out / "trials.parquet")
    search = table[table["stage"] == "search"]
    n_ok = int(((search["status"] == "TERMINATED") & search["val_macro_f1"].notna()).sum())
    dirs = Counter(p.name.split("_")[2] for p in (out / "search").glob("run_trial_*") if p.is_dir())
    retried = _failures(out / "search") + _failures(out / "final")
    actors = {_first(p).get("pid") for p in (out / "search").glob("run_trial_*/result.json")}
    SOAK.update(
        trials=N_TRIALS,
        finished=n_ok,
        lost=N_TRIALS - n_ok,
        kills=len(kills),
        kills_mid_trial=sum(hits),
        kill_every_s=KILL_EVERY_S,
        trial_restarts=retried,
        actors=len(actors),
        wall_s=wall,
        total_s=time.perf_counter() - t_start,
    )
    print(
        f"\nsoak: {N_TRIALS} trials, {len(kills)} worker nodes killed (every {KILL_EVERY_S:g} s, "
        f"{sum(hits)} of them in the middle of a trial), "
        f"{retried} trial restarts after a kill, trials ran in {len(actors)} actor processes, "
        f"{N_TRIALS - n_ok} trials lost, study {wall:.0f} s ({SOAK['total_s']:.0f} s with the cluster's start)"
    )

    assert len(kills) >= 3, "the chaos thread barely ran"
    assert len(search) == N_TRIALS and search["trial_id"].is_unique
    assert n_ok == N_TRIALS, search["status"].value_counts()
    assert len(dirs) == N_TRIALS and max(dirs.values()) == 1  # one Tune folder per trial id, none twice
    s = json.loads((out / "summary.json").read_text())
    assert s["trials"] == N_TRIALS and s["trials_failed"] == 0 and summary["trials"] == N_TRIALS
    assert s["best_val_macro_f1"] == max(search["val_macro_f1"])
    assert len(s["test"]["macro_f1"]["per_seed"]) == 1
    assert wall < BUDGET_S, f"the soak took {wall:.0f} s"


def _failures(stage: Path) -> int:
    """Trial restarts Tune recorded (a trial's actor died with its node and the trial ran again)."""
    state = sorted(stage.glob("experiment_state-*.json"))[-1]
    return sum(json.loads(t[1])["num_failures"] for t in json.loads(state.read_text())["trial_data"])


def _first(result: Path) -> dict[str, Any]:
    line = next((x for x in result.read_text().splitlines() if x.strip()), "{}")
    return json.loads(line)
