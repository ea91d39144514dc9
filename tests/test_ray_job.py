"""The README's cluster path: a study submitted with ``ray job submit --working-dir`` to a Ray head
started with ``ray start --head`` (the jobs CLI and the dashboard need ``ray[default]``, a dependency).

The head gets its own ports on 127.0.0.1 and its own temp dir (so no other Ray on this machine is
joined or disturbed), runs in its own process group, and is stopped by killing that group: a bare
``ray stop`` would stop every Ray of this user.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.test_study import study_file

BIN = Path(sys.executable).parent


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _group_alive(pgid: int) -> list[int]:
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # pgrp is the 5th field; skip zombies
            alive.append(int(stat.parent.name))
    return alive


def _stop_group(pgid: int) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.time() + 15
        while _group_alive(pgid) and time.time() < deadline:
            time.sleep(0.3)
        if not _group_alive(pgid):
            return


@pytest.fixture
def ray_head(tmp_path: Path):  # noqa: ANN201
    """A ``ray start --head`` on 127.0.0.1 with a dashboard (the jobs API); yields (dashboard URL, env)."""
    temp = Path(tempfile.mkdtemp(prefix="rj", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    gcs, dash, client, node, obj, agent, agent_grpc, renv, metrics = _free_ports(9)
    named = (gcs, dash, client, node, obj, agent, agent_grpc, renv, metrics)
    low = random.randrange(20000, 29000)  # worker ports: a range none of the named ports fall in
    while any(low <= p <= low + 400 for p in named):
        low = random.randrange(20000, 29000)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env |= {"RAY_TMPDIR": str(temp), "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "RAY_AIR_NEW_OUTPUT": "0"}
    # Ray >= 2.60 starts a head with token authentication; the jobs CLI sends the token (~/.ray/auth_token,
    # which `ray start` writes if missing) only when told the cluster uses it, as the README says.
    env["RAY_AUTH_MODE"] = "token"
    start = [
        str(BIN / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
        "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--include-dashboard", "true",
        "--ray-client-server-port", str(client), "--node-manager-port", str(node),
        "--object-manager-port", str(obj), "--dashboard-agent-listen-port", str(agent),
        "--dashboard-agent-grpc-port", str(agent_grpc), "--runtime-env-agent-port", str(renv),
        "--metrics-export-port", str(metrics), "--min-worker-port", str(low), "--max-worker-port", str(low + 400),
        "--temp-dir", str(temp), "--num-cpus", "2", "--disable-usage-stats",
    ]  # fmt: skip
    proc = subprocess.Popen(start, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    pgid = proc.pid
    try:
        out, _ = proc.communicate(timeout=180)
        assert proc.returncode == 0, out.decode()
        yield f"http://127.0.0.1:{dash}", env
    finally:
        _stop_group(pgid)
        assert not _group_alive(pgid), "the head's processes outlived it"
        shutil.rmtree(temp, ignore_errors=True)


def test_a_study_submitted_as_a_ray_job_runs_on_the_head(ray_head, tmp_path: Path, tiny_dir: Path) -> None:  # noqa: ANN001
    address, env = ray_head
    path = study_file(
        tmp_path,
        tiny_dir,
        "tiny-job",
        """
space:
  adversarial.eps: {type: float, low: 0.01, high: 1.0, log: true}
budget: {num_samples: 3}
seeds_per_trial: 1
final: {seeds: 1}
""",
    )
    out = tmp_path / "out"
    r = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", ".", "--",
         "abexrat", "study", "run", str(path), "--out", str(out), "--no-report"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert "succeeded" in r.stdout, r.stdout[-4000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["trials"] == 3 and s["trials_failed"] == 0
    # it ran on the head's cluster (2 CPUs), not on an embedded Ray of its own
    assert s["resources"]["cluster_cpus"] == 2
    assert 0 <= s["test"]["macro_f1"]["mean"] <= 1 and (out / "best" / "metrics.json").is_file()
    # the job ran the uploaded working directory's code: its log shows the study's own summary lines
    assert "tiny-job" in r.stdout and "3 trials" in r.stdout
