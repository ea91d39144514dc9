"""Which trials ran again, and why: the record a user (or a test) reads to see what faults cost.

A trial whose worker process or node dies (or that raised, while ``max_failures`` allowed another
try) is run again under its own trial id, by Tune itself or by the runner's retry round. Tune counts
each failed attempt in the trial's ``num_failures`` and appends the error to its ``error.txt``; both
survive the runner's restore rounds, so they are the count read here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from abexrat.study.grouped import configuration_ids

MAX_ERROR_CHARS = 300


def failed_attempts(trial: Any) -> int:
    """How many times a Tune trial's run died or failed (0 for a trial that ran once)."""
    return int(getattr(trial, "num_failures", 0) or 0)


def last_error(trial: Any) -> str | None:
    """The first line of the trial's last recorded failure (Tune's ``error.txt``), if any."""
    path = getattr(trial, "error_file", None)
    if not path:
        return None
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return None
    # error.txt holds "Failure # N (occurred at DATE)" followed by the error, once per failure
    blocks = text.split("Failure # ")
    lines = blocks[-1].splitlines()[1:] if len(blocks) > 1 else text.splitlines()
    first = next((x.strip() for x in lines if x.strip()), "")
    return first[:MAX_ERROR_CHARS] or None


def restarted_trials(results: Any, stage: str) -> list[dict[str, Any]]:
    """One entry per trial of a stage with at least one failed attempt: its Tune trial id, the
    ``trials.parquet`` row ids it covers, how many attempts failed, its final status and last error."""
    trials = results._experiment_analysis.trials  # noqa: SLF001
    return [
        {
            "stage": stage,
            "trial_id": t.trial_id,
            "rows": configuration_ids(t.trial_id, t.config),
            "failed_attempts": failed_attempts(t),
            "status": t.status,
            "last_error": last_error(t),
        }
        for t in trials
        if failed_attempts(t) > 0
    ]
