"""The embedded Ray a study starts: trial actors take the workers Ray prestarted, which have
already imported torch, ray.tune and the trial code (no fresh process, no imports on the search's clock)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from abexrat.core.ray_session import _starts_local_ray

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time
    from ray import tune
    from ray.tune.execution import class_cache
    from abexrat.core.ray_session import connect
    from abexrat.study.runner import TRIAL_MODULES

    def trial(config):
        time.sleep(1.0)  # both trials run at once, each in its own actor
        stat = open("/proc/self/stat").read().rsplit(")", 1)[1].split()
        tune.report({
            "started_ticks": float(stat[19]),  # field 22: start time in clock ticks since boot
            "pid": os.getpid(),
            "argv": " ".join(sys.orig_argv),  # the title Ray sets hides /proc/self/cmdline
            "pl_disable_fork": os.environ.get("PL_DISABLE_FORK", ""),
        })

    assert connect(None, preload=TRIAL_MODULES)
    time.sleep(1.0)  # a study loads and encodes its data here
    fit_ticks = float(open("/proc/uptime").read().split()[0]) * os.sysconf("SC_CLK_TCK")
    tuner = tune.Tuner(
        trial,
        param_space={"x": tune.grid_search([0, 1])},
        tune_config=tune.TuneConfig(max_concurrent_trials=2, reuse_actors=True),
        run_config=tune.RunConfig(storage_path=os.environ["OUT"], verbose=0),
    )
    rows = [dict(r.metrics) for r in tuner.fit()]
    print(json.dumps({"fit_ticks": fit_ticks, "env_vars": class_cache.DEFAULT_ENV_VARS, "rows": rows}))
    """
)


def run_script(script: str, env: dict[str, str]) -> dict:
    """Run ``script`` in a fresh Python (its own Ray, its own imports); the JSON of its last line."""
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_trials_run_in_prestarted_preloaded_workers(tmp_path) -> None:  # noqa: ANN001
    env = {**os.environ, "RAY_ADDRESS": "local", "OUT": str(tmp_path), "PYTHONWARNINGS": "ignore"}
    out = run_script(SCRIPT, env)
    rows = out["rows"]
    assert len(rows) == 2 and len({r["pid"] for r in rows}) == 2
    for r in rows:
        # started before the search began: a worker Ray prestarted, not one started for the actor
        assert r["started_ticks"] < out["fit_ticks"]
        assert "--worker-preload-modules=torch,ray.tune,abexrat.study.trial" in r["argv"]
        # Tune's variable still reaches the trial, through the workers' environment
        assert r["pl_disable_fork"] == "1"
    assert out["env_vars"] == {}


@pytest.mark.parametrize(
    "address,local",
    [("local", True), ("127.0.0.1:6379", False), ("ray://10.0.0.1:10001", False), ("not an address", False)],
)
def test_which_addresses_start_a_local_ray(address: str, local: bool) -> None:
    assert _starts_local_ray(address) is local


LAZY_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from ray import tune
    from abexrat.study.runner import TUNE_LAZY_MODULES, _import_in_background

    def trial(config):
        tune.report({"x": config["x"]})

    before = {m: m in sys.modules for m in TUNE_LAZY_MODULES}
    # a study always passes callbacks (progress, W&B): only then does Tune tag their kinds
    run_config = tune.RunConfig(storage_path=os.environ["OUT"], verbose=0, callbacks=[tune.Callback()])
    tune.Tuner(trial, param_space={"x": 1}, run_config=run_config).fit()
    by_tune = {m: m in sys.modules for m in TUNE_LAZY_MODULES}
    thread = _import_in_background(("json", "no_such_module_abexrat"))
    thread.join(timeout=30)
    print(json.dumps({"before": before, "by_tune": by_tune, "alive": thread.is_alive()}))
    """
)


def test_the_modules_imported_ahead_are_those_tune_imports_before_a_search(tmp_path) -> None:  # noqa: ANN001
    """``TUNE_LAZY_MODULES`` (imported in a thread while a study encodes its data) are modules that a
    Tune run imports in the driver otherwise; one that cannot be imported does not break the thread."""
    env = {**os.environ, "RAY_ADDRESS": "local", "OUT": str(tmp_path), "PYTHONWARNINGS": "ignore"}
    out = run_script(LAZY_SCRIPT, env)
    assert out["before"] == {"ray.air.integrations.wandb": False, "tensorboardX": False}
    assert out["by_tune"] == {"ray.air.integrations.wandb": True, "tensorboardX": True}
    assert out["alive"] is False


WANDB_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import wandb
    from abexrat.study.runner import WANDB_RUN_MODULES

    before = {m: m in sys.modules for m in WANDB_RUN_MODULES}
    run = wandb.init(mode="offline", dir=os.environ["OUT"], settings=wandb.Settings(silent=True, console="off"))
    run.finish()
    print(json.dumps({"before": before, "after": {m: m in sys.modules for m in WANDB_RUN_MODULES}}))
    """
)


def test_the_wandb_modules_imported_ahead_are_those_a_first_run_imports(tmp_path) -> None:  # noqa: ANN001
    """``WANDB_RUN_MODULES`` (imported beside ``TUNE_LAZY_MODULES`` when a study tracks) are modules
    that the first ``wandb.init`` of a process imports, and ``import wandb`` alone does not."""
    env = {**os.environ, "OUT": str(tmp_path), "PYTHONWARNINGS": "ignore", "WANDB_MODE": "offline"}
    out = run_script(WANDB_SCRIPT, env)
    assert out == {
        "before": {"wandb.sdk.launch.inputs.internal": False},
        "after": {"wandb.sdk.launch.inputs.internal": True},
    }


HALF_IMPORT_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from abexrat.study.runner import TUNE_LAZY_MODULES, _import_in_background

    assert "torch" not in sys.modules
    thread = _import_in_background(TUNE_LAZY_MODULES)
    # what scipy's and sklearn's array checks do: read sys.modules without the import lock
    probes, half_seen = 0, 0
    while thread.is_alive():
        mod = sys.modules.get("torch")
        probes += 1
        half_seen += mod is not None and not hasattr(mod, "Tensor")
        time.sleep(0.001)  # the import thread still gets the GIL
    print(json.dumps({"probes": probes, "half_seen": half_seen, "torch": hasattr(sys.modules.get("torch"), "Tensor")}))
    """
)


def test_the_main_thread_never_sees_torch_half_imported(tmp_path) -> None:  # noqa: ANN001
    """While the ahead imports run, the data is encoded in the main thread, where scipy reads
    ``sys.modules["torch"].Tensor`` without the import lock: torch, which tensorboardX imports, must
    never be seen there half-initialized (a study crashed with "partially initialized module 'torch'")."""
    out = run_script(HALF_IMPORT_SCRIPT, {**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out["probes"] > 0
    assert out["half_seen"] == 0
    assert out["torch"] is True
