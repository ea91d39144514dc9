"""A trial's watchdog: its wall time and private memory, checked from a daemon thread.

Past a limit the trial stops at its next epoch, or at once for memory (an asynchronous exception
in the training thread), and reports ``limit`` so that it is never chosen (``abexrat.study.trial``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any


class TrialLimitExceeded(Exception):
    """A trial went past its time or memory limit (``TrialGuard.reason`` says which)."""


class _AsyncLimit(TrialLimitExceeded):
    """Raised inside the training thread by the watchdog when the trial did not stop by itself."""


def private_memory() -> int | None:
    """Bytes of this process's own resident memory: RssAnon on Linux (heap and tensors; the object
    store's shared pages are not counted), else psutil's RSS, else None (no memory limit then)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil  # type: ignore[import-untyped]

        return int(psutil.Process().memory_info().rss)
    except Exception:
        return None


def _landing() -> None:
    """A Python-level call: a pending asynchronous exception is raised here at the latest."""


class TrialGuard:
    """Watches one trial's wall time and private memory from a daemon thread.

    Past a limit it records ``reason`` = (kind, detail); the trial notices at its next epoch
    (``check``). Memory is not waited for: the watchdog raises :class:`_AsyncLimit` inside the
    training thread at once (between two Python bytecodes, never while Ray's ``report`` runs, see
    ``quiet``). A trial still running ``kill_after_s`` after that (stuck in one native call) is
    SIGKILLed; Tune then counts a failure, retried at most ``max_failures`` times.
    """

    def __init__(
        self,
        time_s: float | None,
        memory_bytes: int | None,
        poll_s: float = 0.2,
        grace_s: float = 5.0,
        kill_after_s: float | None = 30.0,
        measure: Any = private_memory,
    ) -> None:
        self.time_s, self.memory_bytes = time_s, memory_bytes
        self.poll_s, self.grace_s, self.kill_after_s, self.measure = poll_s, grace_s, kill_after_s, measure
        self.reason: tuple[str, str] | None = None
        self.peak_bytes = 0
        self._target = threading.get_ident()
        self._lock = threading.Lock()
        self._armed = True
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = time.monotonic()

    def __enter__(self) -> TrialGuard:
        self._t0 = time.monotonic()
        self._target = threading.get_ident()
        if self.time_s is not None or self.memory_bytes is not None:
            self._thread = threading.Thread(target=self._watch, name="trial-guard", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        with self._lock:  # no interrupt is scheduled after this
            self._done.set()
        if self._thread is not None:
            self._thread.join()
        _landing()  # one scheduled just before lands here, inside the block, never after it

    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    def check(self) -> None:
        """Raise :class:`TrialLimitExceeded` if a limit was passed (called between epochs)."""
        if self.reason is not None:
            raise TrialLimitExceeded(self.reason[1])

    @contextlib.contextmanager
    def quiet(self) -> Iterator[None]:
        """No asynchronous exception inside this block (Ray's ``report`` must not be cut in half)."""
        with self._lock:
            self._armed = False
        _landing()  # one scheduled just before lands here, outside Ray's code
        try:
            yield
        finally:
            with self._lock:
                self._armed = True

    def _breach(self) -> tuple[str, str] | None:
        if self.memory_bytes is not None and (used := self.measure()) is not None:
            self.peak_bytes = max(self.peak_bytes, used)
            if used > self.memory_bytes:
                return "memory", f"memory {used / 2**30:.2f} GB > limit {self.memory_bytes / 2**30:.2f} GB"
        if self.time_s is not None and self.elapsed() > self.time_s:
            return "time", f"time {self.elapsed():.1f} s > limit {self.time_s:g} s"
        return None

    def _interrupt(self) -> bool:
        with self._lock:
            if not self._armed or self._done.is_set():
                return False
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._target), ctypes.py_object(_AsyncLimit))
            return True

    def _watch(self) -> None:
        since: float | None = None
        interrupted = False
        while not self._done.wait(self.poll_s):
            if self.reason is None:
                self.reason = self._breach()
                if self.reason is None:
                    continue
                since = time.monotonic()
            waited = time.monotonic() - (since or 0.0)
            if not interrupted and (self.reason[0] == "memory" or waited >= self.grace_s):
                interrupted = self._interrupt()
            elif interrupted and self.kill_after_s is not None and waited >= self.grace_s + self.kill_after_s:
                os.kill(os.getpid(), signal.SIGKILL)  # stuck in native code: Tune sees a failed trial
