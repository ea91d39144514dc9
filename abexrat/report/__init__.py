"""Comparison reports of a study folder: ``abexrat report STUDY_DIR [--compare OTHER ...] --out DIR``.

``results`` reads the files, ``stats`` gives bootstrap intervals and paired tests, ``search``
rebuilds the Optuna study, ``tables`` and ``figures`` make the content, ``render`` writes it.
The paper's reference scores live in ``paper``.
"""

from typing import Any

__all__ = ["build_report", "report_files", "study_report"]


def __getattr__(name: str) -> Any:  # import matplotlib and jinja2 only when a report is written
    if name in __all__:
        from abexrat.report import render

        return getattr(render, name)
    raise AttributeError(name)
