"""What the fault tests read back and check: each trial's attempts (Tune's ``result.json``), the Ray
actor behind a trial's process (Ray's own actor table), and the counts every fault test asserts.

A trial's attempt is a run of it in one worker process: Tune's driver appends every report to the
trial's ``result.json``, restarts included, and each report names the process (``pid``) it came
from. A trial that "ran again" has an unfinished attempt in one process followed by another.

``ABEXRAT_FAULT_KILLS=0`` makes the tests choose their victims but spare them: then they must fail
(this shows that their asserts depend on the kills, and is used only to demonstrate that).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from tests.wandb_files import read_runs

KILLS = os.environ.get("ABEXRAT_FAULT_KILLS", "1") != "0"


@dataclass
class Attempt:
    pid: int
    reports: list[dict[str, Any]] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        """It reached the trial's final report (only the final one carries ``val_accuracy``)."""
        return any("val_accuracy" in r for r in self.reports)

    @property
    def epoch(self) -> int:
        return int(self.reports[-1].get("epoch", 0))


def attempts(trial_dir: Path) -> list[Attempt]:
    """A trial's attempts in order: a new one starts when the reporting process changes, or when the
    epochs start over."""
    out: list[Attempt] = []
    path = trial_dir / "result.json"
    lines = path.read_text().splitlines() if path.is_file() else []
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line being written while the study runs
            continue
        last = out[-1] if out else None
        if last is None or rec["pid"] != last.pid or int(rec.get("epoch", 0)) <= last.epoch:
            out.append(Attempt(int(rec["pid"])))
        out[-1].reports.append(rec)
    return out


def trial_dirs(stage: Path) -> dict[str, Path]:
    """A Tune stage's trial folders by trial id (as its reports name it: a folder's name does not
    delimit it, ``run_trial_6e322_00000_0_arm=best``); a trial yet to report is left out."""
    found = {}
    for folder in stage.glob("run_trial_*"):
        path = folder / "result.json"
        first = path.read_text().split("\n", 1)[0] if path.is_file() else ""
        try:
            found[json.loads(first)["trial_id"]] = folder
        except (json.JSONDecodeError, KeyError):  # no report yet, or one being written
            continue
    return found


def running_trials(
    stage: Path, min_epoch: int = 1, max_epoch: int = 10**9, min_epochs_left: int = 0
) -> list[tuple[str, int, int]]:
    """(trial id, pid, epoch) of each trial now in the middle of training: its last attempt reported
    an epoch between ``min_epoch`` and ``max_epoch`` and not yet its final report, and has at least
    ``min_epochs_left`` epochs to go by its config's ``train.epochs`` (a kill that must land
    mid-attempt needs time to spare: a tiny trial trains an epoch in ~40 ms)."""
    found = []
    for trial_id, folder in trial_dirs(stage).items():
        runs = attempts(folder)
        if not runs or runs[-1].finished or not min_epoch <= runs[-1].epoch <= max_epoch:
            continue
        epochs = int(runs[-1].reports[-1].get("config", {}).get("train.epochs", 0))
        if not min_epochs_left or epochs - runs[-1].epoch >= min_epochs_left:
            found.append((trial_id, runs[-1].pid, runs[-1].epoch))
    return found


def live_actors() -> list[dict[str, Any]]:
    """Ray's actor table (from the GCS, no dashboard needed): the ALIVE actors, each with its
    ``Pid``, ``ActorClassName`` and ``Address.NodeID``. Empty while the driver is not connected."""
    import ray
    from ray._private import state

    if not ray.is_initialized():
        return []
    try:
        table = state.actors()
    except Exception:  # noqa: BLE001 - the cluster is changing under us; the caller polls again
        return []
    return [a for a in table.values() if a.get("State") == "ALIVE"]


def is_trial_actor(actor: dict[str, Any]) -> bool:
    """Whether an actor is a Tune trial's: a function trainable's ``ImplicitFunc`` (which Ray may
    name ``wrap_function.<locals>.ImplicitFunc``)."""
    return str(actor.get("ActorClassName")).endswith("ImplicitFunc")


def trial_actor(pid: int) -> dict[str, Any] | None:
    """The ALIVE Tune trial actor whose worker process is ``pid``, if any."""
    return next((a for a in live_actors() if a.get("Pid") == pid and is_trial_actor(a)), None)


def hit_trials(out: Path, killed_pids: set[int]) -> dict[str, int]:
    """Trials (id -> pid) that were in the middle of an attempt in a process that was killed: that
    attempt never reached its final report."""
    hit = {}
    for stage in ("search", "final"):
        for trial_id, folder in trial_dirs(out / stage).items():
            for a in attempts(folder):
                if a.pid in killed_pids and not a.finished:
                    hit[trial_id] = a.pid
    return hit


def check_recovered(out: Path, victims: dict[str, int], n_search: int) -> pd.DataFrame:
    """The study in ``out`` lost no trial and repeated no finished one, and each victim (trial id ->
    the pid its attempt died in) ran again and finished. Returns trials.parquet."""
    summary = json.loads((out / "summary.json").read_text())
    table = pd.read_parquet(out / "trials.parquet")
    search = table[table["stage"] != "final"]
    assert table["trial_id"].is_unique, table["trial_id"].value_counts().head()
    assert len(search) == n_search and summary["trials"] == n_search and summary["trials_failed"] == 0
    assert (search["status"] == "TERMINATED").all() and search["val_macro_f1"].notna().all()
    assert (table["failed_attempts"] >= 0).all()

    runs = {stage: {t: attempts(d) for t, d in trial_dirs(out / stage).items()} for stage in ("search", "final")}
    every = {t: a for stage in runs.values() for t, a in stage.items()}
    assert set(runs["search"]) == set(search["trial_id"]) and set(runs["final"]) == set(
        table.loc[table["stage"] == "final", "trial_id"]
    )
    # no finished trial ran again: one finished attempt per trial, and it is the last one
    for trial_id, tries in every.items():
        assert [a.finished for a in tries].count(True) == 1 and tries[-1].finished, (trial_id, tries)

    restarts = {r["trial_id"]: r for r in summary["trial_restarts"]}
    failed = dict(zip(table["trial_id"], table["failed_attempts"]))
    for trial_id, pid in victims.items():
        tries = every[trial_id]
        assert len(tries) >= 2, f"trial {trial_id} ran once: the kill of process {pid} did not stop it"
        died = [a for a in tries if a.pid == pid]
        assert died and not any(a.finished for a in died), (trial_id, pid, tries)
        assert tries[-1].pid != pid and tries[-1].finished
        assert trial_id in restarts, f"summary.json does not list trial {trial_id} as restarted"
        assert restarts[trial_id]["status"] == "TERMINATED" and restarts[trial_id]["failed_attempts"] >= 1
        assert failed[trial_id] == restarts[trial_id]["failed_attempts"]
    # every trial the study reports as restarted finished in the end (an attempt killed before its
    # first report leaves no trace in result.json, so that count can be the larger one)
    for trial_id, r in restarts.items():
        assert r["status"] == "TERMINATED" and every[trial_id][-1].finished, (r, every[trial_id])
    assert {t for t, tries in every.items() if len(tries) > 1} <= set(restarts)
    assert {t for t, n in failed.items() if n} == {row for r in restarts.values() for row in r["rows"]}
    check_one_wandb_run_per_trial(out, table, every)
    return table


def check_one_wandb_run_per_trial(out: Path, table: pd.DataFrame, every: dict[str, list[Attempt]]) -> None:
    """W&B (offline) holds one run per trials.parquet row plus the summary run, and a restarted
    trial's run logs the epochs of the attempt that finished."""
    runs = read_runs(out / "wandb")
    per_trial = Counter(r.config.get("trial_id") for r in runs if r.job_type != "summary")
    assert per_trial == Counter(table["trial_id"]), per_trial - Counter(table["trial_id"])
    assert [r.job_type for r in runs].count("summary") == 1
    by_id = {r.config["trial_id"]: r for r in runs if r.job_type != "summary"}
    for trial_id, tries in every.items():
        if len(tries) < 2:
            continue
        logged = [(h["epoch"], h["val_macro_f1"]) for h in by_id[trial_id].history if "val_macro_f1" in h]
        assert logged == [(r["epoch"], r["val_macro_f1"]) for r in tries[-1].reports], trial_id
