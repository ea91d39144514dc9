"""Faults in the middle of a trial: a worker node killed with SIGKILL (a simulated multi-node Ray
cluster: head + 2 workers on this machine), and a trial's worker process killed with SIGKILL.

Each test picks its victim from Ray's own state (the actor whose process reports a trial that is
mid-training), kills it without a graceful shutdown, and then counts: that trial ran again and
finished, every trial id appears once in trials.parquet, no finished trial ran again, summary.json
lists the restart, and W&B (offline) holds one run per trial (see ``tests/faults.py``).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.faults import KILLS, check_recovered, hit_trials, live_actors, running_trials, trial_actor
from tests.test_study import study_file

N_TRIALS = 6
SEEN: list[Any] = []  # the running trials and live actors the killer last saw
# A trial trains for ~10 s (~50 ms an epoch), and a victim has at least EPOCHS_LEFT epochs (~5 s) to
# go as the driver last recorded it: on 2 loaded cores the driver writes a trial's reports 1-2 s
# after the worker made them, and a 60-epoch trial could finish before its first report was written.
EPOCHS = 200
EPOCHS_LEFT = 100
STUDY = f"""
space:
  adversarial.eps: {{type: float, low: 0.01, high: 1.0, log: true}}
budget: {{num_samples: {N_TRIALS}}}
seeds_per_trial: 1
final: {{seeds: 1}}
max_failures: 5
"""


def _study(tmp_path: Path, tiny_dir: Path, name: str) -> Path:
    path = study_file(tmp_path, tiny_dir, name, STUDY)  # W&B offline
    path.write_text(path.read_text().replace("epochs: 4,", f"epochs: {EPOCHS},"))
    return path


def _kill_a_running_trial(out: Path, kill: Callable[[dict[str, Any]], set[int]], killed: set[int]) -> None:
    """Wait for a search trial that is mid-training in a live Tune actor and hand that actor to
    ``kill``, which returns the pids of the processes it killed (none: it could not) into ``killed``.

    A trial's result.json lags its worker, which trains on while the driver takes its reports: one
    seen there with ``EPOCHS_LEFT`` epochs to go is still training (``hit_trials`` checks it was)."""
    deadline = time.time() + 300
    while time.time() < deadline:
        running = running_trials(out / "search", max_epoch=EPOCHS - EPOCHS_LEFT)
        for _trial_id, pid, _epoch in running:
            actor = trial_actor(pid)
            if actor is not None and (pids := kill(actor)):
                killed.update(pids)
                return
        if running:  # what the killer saw, should it find nothing to kill
            SEEN[:] = [running, [(a.get("Pid"), a.get("ActorClassName")) for a in live_actors()]]
        time.sleep(0.1)


def _hits(out: Path, killed: set[int]) -> dict[str, int]:
    """The trials a kill caught mid-attempt (read back from result.json, not from what the killer saw)."""
    assert killed, f"the killer found no trial running in a Tune actor (it last saw {SEEN})"
    victims = hit_trials(out, killed)
    assert victims, f"no kill hit a running trial (killed processes {sorted(killed)})"
    return victims


def test_study_survives_losing_a_worker_node(tmp_path: Path, tiny_dir: Path) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from abexrat.study.config import load_study
    from abexrat.study.runner import run_study

    ray.shutdown()
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    path = _study(tmp_path, tiny_dir, "tiny-cluster")
    out = tmp_path / "out"
    killed: set[int] = set()

    def kill_its_node(actor: dict[str, Any]) -> set[int]:
        node_id = actor["Address"]["NodeID"]
        node = next((w for w in workers if w.node_id == node_id), None)
        if node is None:  # the trial runs on the head node, which must live
            return set()
        on_node = {a["Pid"] for a in live_actors() if a["Address"]["NodeID"] == node_id}
        if KILLS:
            cluster.remove_node(node, allow_graceful=False)  # SIGKILL: the node and its trials die at once
        return on_node | {actor["Pid"]}

    killer = threading.Thread(target=_kill_a_running_trial, args=(out, kill_its_node, killed), daemon=True)
    killer.start()
    try:
        summary = run_study(load_study(path), out, address=cluster.address)
    finally:
        killer.join(timeout=5)
        ray.shutdown()
        cluster.shutdown()
        os.environ.pop("RAY_ADDRESS", None)  # joining the cluster exported it; later tests start their own Ray
    check_recovered(out, _hits(out, killed), N_TRIALS)
    assert summary["resources"]["cluster_cpus"] >= 2
    # the best model came back to the driver through the object store, whichever node trained it
    best = json.loads((out / "best" / "metrics.json").read_text())
    assert summary["best_run"] == "best" and best["seeds"] == summary["seeds"] == [0]
    assert best["test"]["macro_f1"]["per_seed"] == summary["test"]["macro_f1"]["per_seed"]


def test_study_survives_a_trial_process_killed_with_sigkill(tmp_path: Path, tiny_dir: Path) -> None:
    """Not a node: one trial's worker process dies (as with the kernel's OOM killer); Tune retries it."""
    import ray

    from abexrat.study.config import load_study
    from abexrat.study.runner import run_study

    ray.shutdown()
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    os.environ.pop("RAY_ADDRESS", None)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    path = _study(tmp_path, tiny_dir, "tiny-sigkill")
    out = tmp_path / "out"
    killed: set[int] = set()

    def kill_its_process(actor: dict[str, Any]) -> set[int]:
        if KILLS:
            os.kill(actor["Pid"], signal.SIGKILL)
        return {actor["Pid"]}

    killer = threading.Thread(target=_kill_a_running_trial, args=(out, kill_its_process, killed), daemon=True)
    killer.start()
    try:
        summary = run_study(load_study(path), out, report=False)
    finally:
        killer.join(timeout=5)
        ray.shutdown()
    victims = _hits(out, killed)
    table = check_recovered(out, victims, N_TRIALS)
    assert len(victims) == 1  # one process, one trial in it
    restart = next(r for r in summary["trial_restarts"] if r["trial_id"] in victims)
    assert restart["stage"] == "search" and restart["rows"] == list(victims) and restart["last_error"]
    assert int(table.loc[table["trial_id"].isin(list(victims)), "failed_attempts"].iloc[0]) == 1


def test_a_restart_record_names_the_last_failure(tmp_path: Path) -> None:
    """summary.json's ``last_error``: the first line of the last of the failures Tune appended to the
    trial's error.txt."""
    from types import SimpleNamespace

    from abexrat.study.restarts import failed_attempts, last_error

    error = tmp_path / "error.txt"
    error.write_text(
        "Failure # 1 (occurred at 2026-12-02_23-32-21)\nThe actor 4bf7 is unavailable: Socket closed\n"
        "Failure # 2 (occurred at 2026-12-02_23-33-02)\n\nThe actor died unexpectedly before finishing this task.\n"
        "\tclass_name: ImplicitFunc\n"
    )
    trial = SimpleNamespace(num_failures=2, error_file=str(error))
    assert failed_attempts(trial) == 2
    assert last_error(trial) == "The actor died unexpectedly before finishing this task."
    assert last_error(SimpleNamespace(error_file=None)) is None and failed_attempts(SimpleNamespace()) == 0
    assert last_error(SimpleNamespace(error_file=str(tmp_path / "gone.txt"))) is None
