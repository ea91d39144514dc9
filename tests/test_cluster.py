"""A study on a simulated multi-node Ray cluster (head + 2 workers on this machine) that loses a node."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pandas as pd

from tests.test_study import study_file


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
    path = study_file(
        tmp_path,
        tiny_dir,
        "tiny-cluster",
        """
space:
  adversarial.eps: {type: float, low: 0.01, high: 1.0, log: true}
budget: {num_samples: 9}
seeds_per_trial: 1
final: {seeds: 1}
max_failures: 5
""",
    )
    path.write_text(path.read_text().replace("epochs: 4,", "epochs: 60,"))
    out = tmp_path / "out"
    removed: list[float] = []

    def kill_a_worker() -> None:
        deadline = time.time() + 300
        while time.time() < deadline:
            done = [p for p in (out / "search").glob("run_trial_*/result.json") if "val_accuracy" in p.read_text()]
            if len(done) >= 2:
                cluster.remove_node(workers[0])  # the node and every trial running on it die
                removed.append(time.time())
                return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_a_worker, daemon=True)
    killer.start()
    try:
        summary = run_study(load_study(path), out, address=cluster.address)
    finally:
        killer.join(timeout=5)
        ray.shutdown()
        cluster.shutdown()
        os.environ.pop("RAY_ADDRESS", None)  # joining the cluster exported it; later tests start their own Ray
    assert removed, "the worker node was never removed"
    assert summary["trials"] == 9 and summary["trials_failed"] == 0
    table = pd.read_parquet(out / "trials.parquet")
    search = table[table["stage"] == "search"]
    assert len(search) == 9 and search["trial_id"].is_unique and search["val_macro_f1"].notna().all()
    assert json.loads((out / "summary.json").read_text())["resources"]["cluster_cpus"] >= 2
    # the best model came back to the driver through the object store, whichever node trained it
    best = json.loads((out / "best" / "metrics.json").read_text())
    assert summary["best_run"] == "best" and best["seeds"] == summary["seeds"] == [0]
    assert best["test"]["macro_f1"]["per_seed"] == summary["test"]["macro_f1"]["per_seed"]
