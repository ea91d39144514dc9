"""A search's Optuna study in a real Optuna storage, so Optuna's own tools read it.

By default the study lives in ``<study folder>/optuna.journal`` (Optuna's journal file storage);
a study file may name another (``optuna: {storage: sqlite:///studies.db}``, any RDB URL, or a
journal file path). ``optuna-dashboard <storage>`` shows the search while it runs, and afterwards
``optuna.load_study(study_name=..., storage=...)`` returns every trial with its parameters, values
and user attributes: ``trial_id`` (the row of ``trials.parquet``), ``seeds`` and ``wandb_run``
(the W&B run's name, in the study's W&B group).

Ray Tune's ``OptunaSearch`` keeps a pickle of its state (the Optuna study object included) with
the experiment; a journal or RDB storage pickles as its location, so a ``--resume`` continues the
same stored study.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from ray.tune.result import TRAINING_ITERATION
from ray.tune.search.optuna import OptunaSearch

from abexrat.core.errors import UserError

JOURNAL = "optuna.journal"  # the default storage's file name in the study folder


def storage_url(settings: Any, out: Path) -> str:
    """The storage a study uses, as ``optuna-dashboard`` takes it: an RDB URL or a journal file path."""
    if settings.storage:
        return settings.storage
    return str((out / JOURNAL).resolve())


def public_url(url: str) -> str:
    """``url`` with any password replaced by ``***``: what study.json and summary.json record."""
    if "://" not in url:
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy parses: opening it fails with a clear error anyway
        return url


def open_storage(url: str) -> Any:
    """An Optuna storage for ``url`` (an RDB URL, else a journal file path); a bad one is a UserError."""
    import optuna
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    try:
        if "://" in url:
            return RDBStorage(url)
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(url))
    except (ImportError, ModuleNotFoundError) as e:  # a database driver that is not installed
        raise UserError(f"optuna.storage: {url}: {e}") from None
    except (OSError, ValueError, optuna.exceptions.StorageInternalError) as e:
        raise UserError(f"optuna.storage: {url}: cannot open it ({str(e).splitlines()[0]})") from None
    except Exception as e:  # SQLAlchemy's errors (bad URL, unreachable server) share no base class here
        raise UserError(
            f"optuna.storage: {url}: cannot open it ({type(e).__name__}: {str(e).splitlines()[0]})"
        ) from None


def check_new_study(storage: Any, name: str, url: str) -> None:
    """A study that does not resume must not add its trials to an older one of the same name."""
    import optuna

    if any(s.study_name == name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)):
        raise UserError(
            f"optuna.storage: {url} already holds an Optuna study named {name!r}; pass --resume to continue "
            "it, or set optuna.study_name (or --name) to start another"
        )


def optuna_study_name(study: Any) -> str:
    """The Optuna study's name: ``optuna.study_name``, else the study's own."""
    return study.optuna.study_name or study.name


def search_storage(study: Any, out: Path, search_dir: Path, resume: bool) -> Any:
    """The search's Optuna storage. A search that starts anew (nothing in ``search_dir`` to resume)
    starts a new Optuna study: a default journal left by a start that never reached its first trial
    goes; a named storage that already holds the study is an error (``--resume`` continues it)."""
    from ray import tune

    restoring = resume and tune.Tuner.can_restore(str(search_dir.resolve()))
    url = storage_url(study.optuna, out)
    if not restoring and not study.optuna.storage:
        for stale in (out / JOURNAL, out / f"{JOURNAL}.lock"):
            stale.unlink(missing_ok=True)
    storage = open_storage(url)
    if not restoring and study.optuna.storage:
        check_new_study(storage, optuna_study_name(study), url)
    return storage


def public_settings(dumped: dict[str, Any]) -> dict[str, Any]:
    """A study's settings as study.json keeps them: no database password."""
    if (dumped.get("optuna") or {}).get("storage"):
        dumped["optuna"]["storage"] = public_url(dumped["optuna"]["storage"])
    return dumped


class TrackedOptunaSearch(OptunaSearch):
    """Ray's ``OptunaSearch`` whose Optuna trials carry where their results are: the Tune trial id
    (``trials.parquet``'s ``trial_id``), the seeds it trains and its W&B run's name.

    ``seeds``: the seeds of every trial; ``wandb_run``: the run name with ``{trial_id}`` in it, or
    None when W&B is off.
    """

    def __init__(self, *args: Any, seeds: list[int], wandb_run: str | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seeds, self.wandb_run = seeds, wandb_run

    def suggest(self, trial_id: str) -> dict | None:
        new = trial_id not in self._ot_trials
        params = super().suggest(trial_id)
        if new and trial_id in self._ot_trials:
            ot_trial = self._ot_trials[trial_id]
            ot_trial.set_user_attr("trial_id", trial_id)
            ot_trial.set_user_attr("seeds", list(self.seeds))
            if self.wandb_run:
                ot_trial.set_user_attr("wandb_run", self.wandb_run.format(trial_id=trial_id))
        return params

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        # A trial's last epoch comes in the report that ends it (``done``), which Tune hands only to
        # on_trial_complete: record it as the last step too, so the trial has one value per epoch.
        if (
            result
            and not error
            and not isinstance(self.metric, list)
            and self.metric in result
            and TRAINING_ITERATION in result
            and trial_id in self._ot_trials
            and trial_id not in self._completed_trials
        ):
            self.on_trial_result(trial_id, result)
        super().on_trial_complete(trial_id, result, error)

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        self._fail_orphans()

    def _fail_orphans(self) -> None:
        """Trials asked for after the searcher's last checkpoint were never trained (Tune asks again
        on resume): mark them failed so none stays RUNNING in the storage."""
        import optuna
        from optuna.trial import TrialState

        if self._ot_study is None:
            return
        known = {t._trial_id for t in self._ot_trials.values()}  # noqa: SLF001
        storage = self._ot_study._storage  # noqa: SLF001
        for t in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t._trial_id not in known:  # noqa: SLF001
                with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                    storage.set_trial_state_values(t._trial_id, TrialState.FAIL)  # noqa: SLF001


def load(url: str, name: str) -> Any:
    """``optuna.load_study`` of a finished search's storage."""
    import optuna

    if ":***@" in url:
        raise UserError(
            f"optuna.storage: {url}: the password is not recorded; "
            f"optuna.load_study(study_name={name!r}, storage=<the URL with it>) loads the study"
        )
    return optuna.load_study(study_name=name, storage=open_storage(url))
