"""Trials lost with their node, run again.

Tune retries a trial only while it is RUNNING; one whose actor or node dies at another moment
ends in ERROR at once. Those are not the trial's fault, so the stage is restored and they run
again under their own ids.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from abexrat.study.progress import close_callbacks
from abexrat.study.tracking import WandbTrials

RETRY_ROUNDS = 3


def _lost_with_their_node(results: Any) -> int:
    """Trials Tune ended in ERROR because their actor or node died, not because the trial raised.

    Tune retries such a trial ``max_failures`` times only while it is RUNNING: one whose reused actor
    dies while it is still PENDING (being reset for it) is marked ERROR at once. None count after an
    interrupt (trials left unfinished): continuing those is ``--resume``'s business.
    """
    from ray.exceptions import NodeDiedError, ObjectLostError, RayActorError, WorkerCrashedError

    trials = results._experiment_analysis.trials  # noqa: SLF001
    if any(t.status not in ("TERMINATED", "ERROR") for t in trials):
        return 0
    system = (RayActorError, WorkerCrashedError, NodeDiedError, ObjectLostError)
    return sum(1 for r in results if r.error is not None and isinstance(r.error, system))


def fit_with_reruns(
    tuner: Any, path: Path, trainable: Any, callbacks: list[Any], **restore: Any
) -> tuple[Any, list[Any]]:
    """``tuner.fit()``; trials lost with a dead node are run again (same trial ids) by restoring the
    experiment with ``resume_errored``, at most ``RETRY_ROUNDS`` times."""
    from ray import tune

    results = tuner.fit()
    for round_ in range(1, RETRY_ROUNDS + 1):
        lost = _lost_with_their_node(results)
        if not lost:
            break
        print(f"{path.name}: {lost} trial(s) lost with their node; running them again ({round_}/{RETRY_ROUNDS})")
        close_callbacks(callbacks)
        tuner = tune.Tuner.restore(
            str(path.resolve()), trainable=trainable, resume_unfinished=True, resume_errored=True, **restore
        )
        restored = list(tuner._local_tuner._run_config.callbacks or [])  # noqa: SLF001
        for old, new in zip(callbacks, restored):
            if isinstance(old, WandbTrials) and isinstance(new, WandbTrials):
                new.runs, new.busy_s = list(old.runs), old.busy_s  # the live counts, not the pickled ones
        callbacks = restored
        results = tuner.fit()
    return results, callbacks
