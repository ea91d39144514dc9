"""Per-trial limits: a trial past its time or memory limit is stopped and marked, and the study goes on."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from abexrat.core.errors import UserError
from abexrat.study.guard import TrialGuard, TrialLimitExceeded, private_memory
from tests.test_study import study_file

# ---------------------------------------------------------------- the guard alone (no Ray)


def test_memory_limit_interrupts_a_loop_that_never_checks() -> None:
    """The watchdog raises inside the training thread: the loop below never calls ``check``."""
    base = private_memory()
    assert base is not None, "this platform exposes no process memory reading"
    limit = base + (64 << 20)
    hold = []
    t0 = time.perf_counter()
    with pytest.raises(TrialLimitExceeded), TrialGuard(None, limit, poll_s=0.05, kill_after_s=None) as guard:
        for _ in range(256):  # 8 MB a step, at most 2 GB: the guard must stop it long before
            hold.append(np.ones(1 << 20))
            time.sleep(0.01)
    grown = sum(a.nbytes for a in hold)
    del hold
    assert guard.reason is not None and guard.reason[0] == "memory"
    assert grown < (1 << 30), f"stopped only after {grown >> 20} MB"
    assert guard.peak_bytes > limit and time.perf_counter() - t0 < 30


def test_time_limit_is_noticed_between_epochs_and_forced_within_one() -> None:
    # cooperative: the trial calls check() between epochs
    with pytest.raises(TrialLimitExceeded), TrialGuard(0.3, None, poll_s=0.05, kill_after_s=None) as guard:
        for _ in range(200):
            time.sleep(0.05)
            guard.check()
    assert guard.reason is not None and guard.reason[0] == "time"
    # forced: an "epoch" that never returns is interrupted after the grace period
    t0 = time.perf_counter()
    with pytest.raises(TrialLimitExceeded), TrialGuard(0.2, None, poll_s=0.05, grace_s=0.3, kill_after_s=None):
        while time.perf_counter() - t0 < 20:
            sum(range(1000))
    # interrupted: the loop's own end is 20 s away (the margin is for loaded machines; it takes ~0.5 s)
    assert time.perf_counter() - t0 < 15


def test_no_interrupt_while_reporting() -> None:
    """Inside ``quiet`` (around Ray's report) the watchdog waits; the exception lands right after."""
    guard = TrialGuard(0.1, None, poll_s=0.02, grace_s=0.0, kill_after_s=None)
    inside_done = False
    with pytest.raises(TrialLimitExceeded), guard:
        with guard.quiet():
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < 0.6:  # well past the limit and the grace
                sum(range(1000))
            inside_done = True
        for _ in range(1000):
            time.sleep(0.01)
    assert inside_done


@pytest.mark.parametrize(
    "limits, message",
    [
        ("{trial_time_s: 0}", "limits.trial_time_s: Input should be greater than 0"),
        ("{trial_memory_gb: .inf}", "limits.trial_memory_gb: Input should be a finite number"),
        ("{trial_time_s: fast}", "limits.trial_time_s: Input should be a valid number"),
        ("{trial_seconds: 3}", "limits.trial_seconds: unknown key"),
    ],
)
def test_bad_limits_name_the_key(limits: str, message: str, tmp_path: Path, tiny_dir: Path) -> None:
    from abexrat.study.config import load_study

    path = study_file(
        tmp_path, tiny_dir, "lim", f"space: {{adversarial.p: {{type: float, low: 0, high: 1}}}}\nlimits: {limits}"
    )
    with pytest.raises(UserError, match="lim.yaml: ") as e:
        load_study(path)
    assert message in str(e.value)


# ---------------------------------------------------------------- studies on Ray


@pytest.fixture(scope="module")
def local_ray():  # noqa: ANN201
    import ray

    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_slow_trials_are_stopped_and_marked_and_the_study_goes_on(
    local_ray,  # noqa: ANN001
    tmp_path: Path,
    tiny_dir: Path,
) -> None:
    from abexrat.study.config import load_study
    from abexrat.study.runner import run_study

    path = study_file(tmp_path, tiny_dir, "tiny-limits", _BODY)
    path.write_text(path.read_text().replace("tracking: {mode: offline}", "tracking: {mode: disabled}"))
    out = tmp_path / "out"
    t0 = time.perf_counter()
    summary = run_study(load_study(path), out, report=False)
    wall = time.perf_counter() - t0
    table = pd.read_parquet(out / "trials.parquet")
    search = table[table["stage"] == "search"]
    assert len(search) == 6 and search["trial_id"].is_unique
    slow = search[search["param:train.epochs"] == 5000]
    fast = search[search["param:train.epochs"] == 2]
    assert len(slow) >= 1 and len(fast) >= 1, search[["param:train.epochs", "status"]]
    assert (slow["status"] == "TIMEOUT").all() and slow["val_macro_f1"].isna().all()
    assert (fast["status"] == "TERMINATED").all() and fast["val_macro_f1"].notna().all()
    # each slow trial stopped at its 3 s limit (one epoch is milliseconds), far from 5000 epochs; the
    # 20 s over the limit are a margin for loaded machines, not a speed claim
    assert (slow["trial_s"] < 3 + 20).all() and (slow["epoch"] < 5000).all()
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["trials"] == 6 and on_disk["trials_failed"] == 0
    assert on_disk["trials_stopped"] == {"TIMEOUT": len(slow), "OOM": 0, "BUDGET": 0}
    assert on_disk["limits"]["trial_time_s"] == 3
    # the best comes from a trial that finished, never from a stopped trial's partial score
    assert summary["best_config"]["train_config"]["train"]["epochs"] == 2
    assert summary["best_val_macro_f1"] == pytest.approx(fast["val_macro_f1"].max())
    assert not math.isnan(summary["test"]["macro_f1"]["mean"])
    print(f"\nlimits study: {len(slow)} trial(s) stopped at the time limit, {len(fast)} finished, {wall:.1f} s")


_BODY = """
seed: 3
space:
  train.epochs: {type: categorical, choices: [2, 5000]}
  adversarial.eps: {type: float, low: 0.01, high: 1.0, log: true}
budget: {num_samples: 6}
seeds_per_trial: 1
final: {seeds: 1}
limits: {trial_time_s: 3}
"""


def test_trials_over_their_memory_limit_are_marked_oom(local_ray, tmp_path: Path, tiny_dir: Path) -> None:  # noqa: ANN001
    """A limit below any trial's footprint: every trial stops as OOM, none is retried, and the study
    ends with one clear line instead of running on."""
    from abexrat.study.config import load_study
    from abexrat.study.runner import run_study

    path = study_file(
        tmp_path,
        tiny_dir,
        "tiny-oom",
        """
space:
  adversarial.eps: {type: float, low: 0.01, high: 1.0, log: true}
budget: {num_samples: 2}
seeds_per_trial: 1
final: {seeds: 1}
limits: {trial_memory_gb: 0.01}
""",
    )
    path.write_text(
        path.read_text()
        .replace("tracking: {mode: offline}", "tracking: {mode: disabled}")
        .replace("epochs: 4,", "epochs: 400,")
    )
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"no trial finished \(2 stopped by limits\)"):
        run_study(load_study(path), out, report=False)
    results = [
        json.loads(x)
        for p in (out / "search").glob("run_trial_*/result.json")
        for x in p.read_text().splitlines()
        if x.strip()
    ]
    last = {}
    for r in results:
        last[r["trial_id"]] = r
    assert len(last) == 2 and all(r.get("limit") == "memory" for r in last.values())
    assert not (out / "summary.json").exists()


def test_a_dataset_too_large_for_memory_that_cannot_stream_is_refused_in_one_line(
    tmp_path: Path,
    tiny_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    cli,  # noqa: ANN001
) -> None:
    """A JSON list is one document: too large to read whole, it cannot stream either (a .jsonl, .csv or
    .parquet file streams: tests/test_stream_train.py), so it ends in one line before loading."""
    import abexrat.data

    big = tmp_path / "big.json"
    big.write_text((tiny_dir / "train.json").read_text())
    monkeypatch.setattr(abexrat.data, "available_memory", lambda: big.stat().st_size)  # 4x the file is needed
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f'data: {{dataset: "{big}"}}\n')
    r = cli("train", cfg, "--out", tmp_path / "out")
    msg = " ".join(r.stderr.split())
    assert r.code == 2 and "needs about" in msg and "GB available" in msg and "abexrat streams it" in msg
    assert str(big) in msg and not (tmp_path / "out").exists() and "scanning" not in msg
