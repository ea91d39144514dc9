"""The Python API of studies: ``abexrat.study(path, **options) -> StudyResult``.

>>> result = abexrat.study("studies/quickstart.yaml", out="runs/quickstart")
>>> result.trials                  # pandas DataFrame: one row per trial (stage, trial_id, param:*, val_*)
>>> result.best                    # the final round's best model, an abexrat.Run (None if not kept)
>>> result.optuna_study            # optuna.Study, read from the search's Optuna storage
>>> result.report("reports/quickstart")
>>> abexrat.load_study_result("runs/quickstart")   # a finished study's folder, later
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def study(
    path: str | Path,
    *,
    out: str | Path | None = None,
    address: str | None = None,
    resume: bool = False,
    name: str | None = None,
    data_dir: str | Path | None = None,
    report: bool = True,
) -> StudyResult:
    """Run a search or an ablation on Ray Tune + Optuna, retrain the best with the final round's
    seeds and score it once on test.

    Parameters
    ----------
    path : str or Path
        A study YAML (``studies/quickstart.yaml``); see the README's *Studies*.
    out : str or Path, optional
        The study folder; default ``runs/<name>``.
    address : str, optional
        A Ray cluster to run on (else ``$RAY_ADDRESS``, else an embedded local Ray).
    resume : bool
        Continue an interrupted study in ``out`` (no finished trial runs again).
    name : str, optional
        The study's name instead of the file's (folder, W&B group, Optuna study).
    data_dir : str or Path, optional
        Where the OSHA files are.
    report : bool
        Also write ``out/report/`` (HTML + Markdown).

    Returns
    -------
    StudyResult
    """
    from abexrat.study.config import check_name, load_study
    from abexrat.study.runner import run_study

    spec = load_study(Path(path))
    if name:
        spec = spec.model_copy(update={"name": check_name(name)})
    folder = Path(out) if out is not None else Path("runs") / spec.name
    summary = run_study(
        spec, folder, address=address, resume=resume, data_dir=str(data_dir) if data_dir else None, report=report
    )
    return StudyResult(folder, summary)


def load_study_result(path: str | Path) -> StudyResult:
    """A finished study's folder (its ``summary.json``) as a :class:`StudyResult`."""
    from abexrat.study.summary import load_summary

    return StudyResult(Path(path), load_summary(Path(path)))


class StudyResult:
    """A finished study's results, read from its folder.

    Attributes
    ----------
    folder : Path
        The study folder (``summary.json``, ``trials.parquet``, ``best/``, ``search/``, ``final/``).
    summary : dict
        ``summary.json``: ``best_config`` (``eps``, ``p``, ``aug_ratio``, ``train_config``),
        ``best_val_macro_f1``, ``val`` and ``test`` as ``{"mean", "std", "per_seed"}`` per metric,
        ``baselines``, ``trials``, ``wall_s``, ``optuna`` (storage and study name), ...
    """

    def __init__(self, folder: str | Path, summary: dict[str, Any] | None = None) -> None:
        self.folder = Path(folder)
        self.summary = summary if summary is not None else json.loads((self.folder / "summary.json").read_text())

    def __repr__(self) -> str:
        t = self.summary.get("test", {}).get("macro_f1", {})
        score = f", test macro-F1 {100 * t['mean']:.2f}" if "mean" in t else ""
        return f"StudyResult({str(self.folder)!r}, {self.summary.get('trials')} trials{score})"

    @property
    def name(self) -> str:
        return str(self.summary["study"])

    @property
    def trials(self) -> Any:
        """Every trial, one row each (``pandas.DataFrame``): ``stage`` (search, ablation or final),
        ``trial_id``, ``status``, ``param:<key>`` per searched key, ``val_macro_f1`` and the other
        scores (``test_*`` only in the final round), ``train_s``, ``epoch``."""
        import pandas as pd

        return pd.read_parquet(self.folder / "trials.parquet")

    @property
    def best(self) -> Any:
        """The final round's best model as an :class:`abexrat.Run`, or None when the study kept
        none (``best.yaml`` then trains it: ``abexrat.train(result.folder / "best.yaml")``)."""
        from abexrat.api import load_run

        best = self.summary.get("best_run")
        return load_run(self.folder / best) if best else None

    @property
    def optuna_study(self) -> Any:
        """The search's ``optuna.Study``, loaded from its storage (``summary["optuna"]``): every
        trial with its params, value, intermediate values and user attributes (``trial_id``,
        ``seeds``, ``wandb_run``). None for an ablation."""
        from abexrat.study.storage import load

        where = self.summary.get("optuna")
        return load(where["storage"], where["study_name"]) if where else None

    def report(self, out: str | Path | None = None, compare: list[str | Path] | None = None) -> Path:
        """Write the study's report (``index.html``, ``report.md``, figures) into ``out`` (default
        ``<folder>/report``); ``compare``: other study folders to set beside it. Returns index.html."""
        from abexrat.report import build_report

        target = Path(out) if out is not None else self.folder / "report"
        return build_report(self.folder, target, [Path(c) for c in compare or []])
