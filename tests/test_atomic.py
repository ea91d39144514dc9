"""``kill -9`` at random moments of ``abexrat train``: every artifact left is the old one or the new one.

A first run completes (the "old" artifacts). Then runs writing to the same folder, with a cache
partly removed so that they write cache files too, are SIGKILLed: some after a random delay, some
the moment a temporary file appears (inside the write window). After each kill every file in the
run folder and in the cache must be whole; a last run completes, reads the cache, and rebuilds a
shard that was corrupted on purpose. ``KILLS`` holds the figures.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from abexrat.core.io import sha256_file
from tests.conftest import REPO

EXE = str(Path(sys.executable).parent / "abexrat")
# atomic_path's temporary names (.<name>.<random>.tmp) and safetensors' own (.tmp<6 random>, Rust's tempfile)
TEMP = re.compile(r"^\.(.+\.tmp|tmp\w{6})$")
N_KILLS = 8
KILLS: dict[str, Any] = {}
METRICS_KEYS = {"config", "seeds", "classes", "val", "test", "history", "timings"}


def _train(cfg: Path, out: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [EXE, "train", str(cfg), "--out", str(out)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _check_run_folder(out: Path, old: dict[str, str]) -> tuple[int, int, int]:
    """Every file is a whole artifact (temporary files aside). Returns (old, new, temp) counts."""
    from safetensors.numpy import load_file

    from abexrat.config import TrainConfig

    n_old = n_new = n_tmp = 0
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        rel = str(path.relative_to(out))
        if TEMP.match(path.name):
            n_tmp += 1
            continue
        if rel == "metrics.json":
            assert set(json.loads(path.read_text())) >= METRICS_KEYS, rel
        elif rel == "config.yaml":
            TrainConfig.model_validate(yaml.safe_load(path.read_text()))
        elif rel == "encoder/encoder.json":
            assert {"spec", "key", "dim"} <= set(json.loads(path.read_text()))
        elif rel == "README.md":  # the model card, whole: huggingface_hub parses its front matter
            from huggingface_hub import ModelCard

            assert ModelCard.load(path).data.eval_results, rel
        elif rel.endswith(".safetensors"):
            assert load_file(str(path)), rel
        elif re.fullmatch(r"models/seed-\d+/model\.json", rel):
            assert {"dims", "classes", "seed"} <= set(json.loads(path.read_text()))
        else:
            raise AssertionError(f"an unexpected file in the run folder: {rel}")
        if old.get(rel) == sha256_file(path):
            n_old += 1
        else:
            n_new += 1
    if (out / "metrics.json").is_file():  # a finished run stays loadable: no half of one with the other
        from abexrat.run_folder import load_run

        load_run(out)
    return n_old, n_new, n_tmp


def _check_cache(cache: Path) -> int:
    """Every embedding shard's sha256 is its name and it loads without pickle; fitted encoders load."""
    from safetensors.numpy import load_file

    shards = 0
    for shard in cache.glob("embeddings/*/*.npz"):
        assert sha256_file(shard) == shard.stem, shard
        with np.load(shard, allow_pickle=False) as z:
            assert z["digests"].shape[0] == z["vectors"].shape[0]
        shards += 1
    for folder in cache.glob("encoders/*"):
        for path in folder.iterdir():
            if TEMP.match(path.name):
                continue
            if path.name == "encoder.json":
                json.loads(path.read_text())
            elif path.name == "encoder.safetensors":
                load_file(str(path))
            else:
                raise AssertionError(f"an unexpected file in the encoder cache: {path}")
    return shards


def _entries(cache: Path) -> int:
    return sum(len(list(d.iterdir())) for d in cache.glob("*/*") if d.is_dir())


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def _kill_when_writing(proc: subprocess.Popen, out: Path, cache: Path, rng: random.Random, deadline: float) -> str:
    """SIGKILL 0-30 ms after the run starts writing: its first artifact replaced (config.yaml gets a
    new inode) or a new file in the cache (a temporary file or a shard); else at ``deadline``."""
    inode, entries = _inode(out / "config.yaml"), _entries(cache)
    while time.monotonic() < deadline and proc.poll() is None:
        if _inode(out / "config.yaml") != inode or _entries(cache) != entries:
            time.sleep(rng.uniform(0.0, 0.03))
            proc.send_signal(signal.SIGKILL)
            return "in a write"
        time.sleep(0.001)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        return "at the deadline"
    return "finished first"


def test_kill_9_at_random_moments_leaves_old_or_new_artifacts(tmp_path: Path, tiny_config: Path) -> None:
    t_start = time.perf_counter()
    rng = random.Random(20260521)
    cache, out = tmp_path / "cache", tmp_path / "run"
    env = {**os.environ, "ABEXRAT_CACHE_DIR": str(cache)}

    first = _train(tiny_config, out, env)  # the old artifacts (and a warm cache)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    old = {str(p.relative_to(out)): sha256_file(p) for p in out.rglob("*") if p.is_file()}
    _check_run_folder(out, old)
    t0 = time.perf_counter()
    again = _train(tiny_config, out, env)  # how long a warm run takes, to spread the kills over it
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    full_s = time.perf_counter() - t0

    kills, how, temps_left, old_files, new_files = 0, [], 0, 0, 0
    for i in range(N_KILLS):
        if rng.random() < 0.6:  # make the run write cache files too: drop the fitted tf-idf and its shards
            for part in ("encoders", "embeddings"):
                for folder in (cache / part).glob("tfidf-svd-*"):
                    shutil.rmtree(folder)
        proc = _train(tiny_config, out, env)
        if i % 2 == 0:  # anywhere: start-up, encoding, training, writing
            delay = rng.uniform(0.2, full_s * 0.75)
            try:
                proc.wait(timeout=delay)
                what = "finished first"
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                what = f"after {delay:.2f} s"
        else:  # inside the write window of the run folder or of the cache
            what = _kill_when_writing(proc, out, cache, rng, time.monotonic() + full_s * 3)
        proc.wait(timeout=60)
        if proc.returncode == -signal.SIGKILL:
            kills += 1
        how.append(what)
        n_old, n_new, n_tmp = _check_run_folder(out, old)
        old_files, new_files, temps_left = old_files + n_old, new_files + n_new, temps_left + n_tmp
        _check_cache(cache)

    # a corrupted shard is dropped and rebuilt; the rest of the cache is read. A complete run first:
    # the kills above may have left a leaf's cache empty (its folder dropped, its writer killed).
    warm = _train(tiny_config, out, env)
    _, err = warm.communicate(timeout=300)
    assert warm.returncode == 0, err
    shards = sorted(cache.glob("embeddings/wordllama-*/*.npz"))
    # one shard if one run wrote every text of this leaf, more if a killed run had written some first
    assert len(shards) >= 1
    for shard in shards:  # every wordllama shard corrupted: all its texts must be encoded again
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 0xFF
        shard.write_bytes(bytes(data))
    last = _train(tiny_config, out, env)
    _, err = last.communicate(timeout=300)
    assert last.returncode == 0, err
    _check_run_folder(out, old)
    assert _check_cache(cache) >= 2
    timings = json.loads((out / "metrics.json").read_text())["timings"]
    # the wordllama texts are encoded again; every tf-idf vector still comes from the cache
    assert timings["texts_encoded"] == timings["texts_cached"] > 0, timings

    KILLS.update(
        kills=kills,
        attempts=N_KILLS,
        how=how,
        temp_files_seen=temps_left,
        files_old=old_files,
        files_new=new_files,
        seconds=time.perf_counter() - t_start,
    )
    print(
        f"\nkill -9: {kills} of {N_KILLS} runs killed ({', '.join(how)}); every artifact old or new "
        f"({old_files} old, {new_files} new file checks, {temps_left} temp files ignored); "
        f"{KILLS['seconds']:.0f} s"
    )
    assert kills >= N_KILLS // 2  # a run may finish before its kill (a loaded machine); most must die
