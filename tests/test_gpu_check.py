"""benchmarks/gpu_check.sh's logic on CPU (``--cpu-smoke``: toy Qwen3 shapes, the tiny dataset, a
4-trial study): one JSON with every number the GPU run reports, each sane. Not a timing test."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))


def test_gpu_check_cpu_smoke_writes_sane_json(tmp_path: Path, tiny_dir: Path) -> None:
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHON": sys.executable, "WANDB_MODE": "offline", "RAY_ADDRESS": "local"}
    proc = subprocess.run(
        [str(REPO / "benchmarks" / "gpu_check.sh"), str(out), "--cpu-smoke", "--dataset", str(tiny_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["tiny"] is True
    head = res["headline"]
    assert set(head) == {
        "study_trials_per_hour",
        "study_peak_gpu_memory_mb",
        "encode_texts_per_s",
        "encode_peak_gpu_memory_mb",
        "generate_tokens_per_s",
        "generate_peak_gpu_memory_mb",
    }
    for key in ("study_trials_per_hour", "encode_texts_per_s", "generate_tokens_per_s"):
        assert isinstance(head[key], float) and math.isfinite(head[key]) and head[key] > 0, key
    # No GPU here: no memory number is made up.
    assert head["study_peak_gpu_memory_mb"] is None and head["encode_peak_gpu_memory_mb"] is None

    shape = res["model"]
    assert shape["architecture"] == "Qwen3ForCausalLM" and shape["layers"] == 2 and shape["params"] > 0

    enc = res["encode"]
    assert enc["texts"] == res["plan"]["texts"] and enc["tokens"] >= enc["texts"]
    assert enc["dim"] == shape["hidden"] and enc["vectors_finite_unit"] is True
    # seconds are written to the millisecond: on a fast tiny run that alone moves the ratio by ~2%
    lo, hi = enc["texts"] / (enc["seconds"] + 5e-4), enc["texts"] / max(enc["seconds"] - 5e-4, 1e-9)
    assert 0.999 * lo <= enc["texts_per_s"] <= 1.001 * hi

    gen = res["generate"]
    plan = res["plan"]
    for row in gen["by_batch_size"]:
        assert row["requests"] == plan["requests"]
        # every request generates at most new_tokens tokens, and at least one
        assert row["requests"] <= row["generated_tokens"] <= row["requests"] * plan["new_tokens"]
    assert gen["tokens_per_s"] == max(r["tokens_per_s"] for r in gen["by_batch_size"])

    study = res["study"]
    assert "error" not in study
    assert study["seeds_per_trial"] == 1 and study["configs_per_trial"] == plan["configs_per_trial"]
    assert study["trials"] >= 1 and study["trials_failed"] == 0
    assert math.isclose(study["trials_per_hour"], study["trials"] / study["search_wall_s"] * 3600, rel_tol=1e-6)
    assert 0.0 <= study["best_val_macro_f1"] <= 1.0
    assert res["targets"]["study_trials_per_hour"]["met"] is None  # a CPU smoke run is not the GPU target


def test_gpu_memory_poll_without_nvidia_smi(monkeypatch) -> None:  # noqa: ANN001
    import gpu_check

    monkeypatch.setattr(gpu_check.shutil, "which", lambda name: None)
    with gpu_check.GpuMemoryPoll(every_s=0.01) as mem:
        pass
    assert gpu_check.gpu_memory_used_mb() is None and mem.peak_mb is None


def test_gpu_memory_poll_peak_above_base(monkeypatch) -> None:  # noqa: ANN001
    import time

    import gpu_check

    values = [1000.0, 1500.0, 4000.0, 2500.0] + [2000.0] * 100_000
    taken = [0]

    def reading() -> float:
        taken[0] += 1
        return values[taken[0] - 1]

    monkeypatch.setattr(gpu_check, "gpu_memory_used_mb", reading)
    with gpu_check.GpuMemoryPoll(every_s=0.001) as mem:
        deadline = time.perf_counter() + 30  # a loaded machine may run the poll thread late
        while taken[0] < 5 and time.perf_counter() < deadline:
            time.sleep(0.01)
    assert taken[0] >= 5 and mem.base == 1000.0 and mem.peak_mb == 3000.0
