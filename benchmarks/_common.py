"""Helpers shared by the benchmark scripts: the machine, its load, JSON output, memory readings."""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("ABEXRAT_DATA_DIR") or REPO.parent / "shared" / "data" / "osha")


def setup_env() -> None:
    """The OSHA files, W&B offline and silent: every benchmark runs without a network."""
    os.environ.setdefault("ABEXRAT_DATA_DIR", str(DATA_DIR))
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_DISABLE_GIT", "true")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def load_avg() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def machine() -> dict[str, Any]:
    """What the numbers were measured on, and how busy the machine was when this was called."""
    import torch

    try:
        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gb = None
    return {
        "cpu": cpu_model(),
        "cores": cores(),
        "memory_gb": round(mem_gb, 1) if mem_gb else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "load_avg_1_5_15": load_avg(),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
    }


def peak_rss_mb() -> float:
    """This process's peak resident set (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def clock_for(threads: int) -> Any:
    """The clock a benchmark times itself with: this process's CPU time at 1 thread (robust to other
    processes on the machine), wall time with more (CPU time would add the threads up)."""
    return time.process_time if threads == 1 else time.perf_counter


def write_json(path: str | Path | None, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=2, sort_keys=False, default=float)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + "\n")
    print(text if not path else f"wrote {path}", file=sys.stderr if path else sys.stdout)


def _status_kb(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()[:160]
    except OSError:
        return ""


def descendants(root: int) -> list[int]:
    """Every process below ``root`` (from /proc/*/stat: no psutil needed)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


class Poller:
    """Calls ``poll`` every ``every_s`` seconds on a daemon thread while the block runs, and once
    more at its end. Subclasses implement ``poll`` (and may skip the thread: ``start`` False)."""

    def __init__(self, every_s: float = 0.5) -> None:
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        """Whether to poll at all (checked on entering the block)."""
        return True

    def poll(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Poller:
        if self.start():
            self._thread = threading.Thread(target=self._run, name=type(self).__name__, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
            self.poll()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.poll()


class ProcessMemory(Poller):
    """Polls the resident memory of a process tree (the driver and every Ray process it started).

    Per process it keeps the peak of RSS (resident, shared object-store pages included) and of
    RssAnon (private: heap and tensors). Reading /proc is cheap (well under 1% of a core at a poll
    every 0.5 s); ``summary`` groups the processes by role, named from their command lines.
    """

    def __init__(self, root_pid: int | None = None, every_s: float = 0.5) -> None:
        super().__init__(every_s)
        self.root = root_pid or os.getpid()
        self.peak: dict[int, dict[str, Any]] = {}
        self.peak_total_rss_kb = 0

    def poll(self) -> None:
        total = 0
        for pid in [self.root, *descendants(self.root)]:
            rss = _status_kb(pid, "VmRSS:")
            if rss is None:
                continue
            anon = _status_kb(pid, "RssAnon:") or 0
            total += rss
            cur = self.peak.setdefault(pid, {"cmd": "", "names": set(), "rss_kb": 0, "anon_kb": 0})
            cmd = cmdline(pid)  # a Ray worker renames itself as it takes work (ray::IDLE -> ray::ImplicitFunc)
            if cmd:
                cur["cmd"] = cmd
                cur["names"].add(cmd.split(" ")[0])
            cur["rss_kb"] = max(cur["rss_kb"], rss)
            cur["anon_kb"] = max(cur["anon_kb"], anon)
        self.peak_total_rss_kb = max(self.peak_total_rss_kb, total)

    def summary(self, trial_markers: tuple[str, ...] = ("ray::ImplicitFunc", "ray::_Inner", "ray::run_trial")) -> dict:
        def role(cmd: str) -> str:
            if any(m in cmd for m in trial_markers):
                return "trial"
            if "ray::" in cmd or "default_worker.py" in cmd:
                return "ray_worker_other"
            if "raylet" in cmd or "gcs_server" in cmd or "dashboard" in cmd or "log_monitor" in cmd:
                return "ray_system"
            if "wandb" in cmd:
                return "wandb"
            return "other"

        roles: dict[str, dict[str, float]] = {}
        for pid, p in self.peak.items():
            r = "driver" if pid == self.root else role(" ".join([p["cmd"], *sorted(p["names"])]))
            cur = roles.setdefault(r, {"processes": 0, "peak_rss_mb": 0.0, "peak_private_mb": 0.0})
            cur["processes"] += 1
            cur["peak_rss_mb"] = round(max(cur["peak_rss_mb"], p["rss_kb"] / 1024), 1)
            cur["peak_private_mb"] = round(max(cur["peak_private_mb"], p["anon_kb"] / 1024), 1)
        top = sorted(self.peak.items(), key=lambda kv: -kv[1]["rss_kb"])[:12]
        return {
            "by_role": roles,
            "peak_total_rss_mb": round(self.peak_total_rss_kb / 1024, 1),
            "largest": [
                {
                    "role": "driver" if pid == self.root else role(" ".join([p["cmd"], *sorted(p["names"])])),
                    "cmd": p["cmd"][:80],
                    "peak_rss_mb": round(p["rss_kb"] / 1024, 1),
                    "peak_private_mb": round(p["anon_kb"] / 1024, 1),
                }
                for pid, p in top
            ],
        }


class Stopwatch:
    """Wall and CPU (this process) seconds of a block."""

    def __enter__(self) -> Stopwatch:
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wall = time.perf_counter() - self.t0
        self.cpu = time.process_time() - self.c0


def configs_digest(configs: list[dict[str, Any]]) -> str:
    """A digest of the set of configurations trained (values to 6 significant digits): two searches
    with the same digest trained the same configurations, in whatever order."""
    import hashlib
    import json
    import math

    def values(c: dict[str, Any]) -> dict[str, float]:  # a table's empty cells (NaN) are no parameter
        return {k: float(f"{float(v):.6g}") for k, v in sorted(c.items()) if v is not None and not math.isnan(float(v))}

    rows = sorted(json.dumps(values(c)) for c in configs)
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()[:16]
