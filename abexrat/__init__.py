"""abexrat: hyperparameter searches and ablation studies of ABEX-RAT.

The data flow, one module per stage: data -> augment -> embed -> train -> study -> report.

The Python API (nothing heavy is imported until it is used)::

    import abexrat

    run = abexrat.train("studies/baseline.yaml", out="runs/baseline", seeds=3)   # -> abexrat.Run
    run.predict(["Employee fell from a ladder"]); run.predict_proba(texts)      # labels; (n, classes)
    run.evaluate("labeled.jsonl"); run.metrics
    result = abexrat.study("studies/quickstart.yaml", out="runs/quickstart")    # -> abexrat.StudyResult
    result.trials; result.best; result.report("reports/quickstart"); result.optuna_study
    abexrat.load_run("runs/quickstart/best"); abexrat.load_study_result("runs/quickstart")
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> the module it lives in; ``train`` and ``study`` are callable modules (see abexrat._callable)
_API = {
    "train": None,
    "study": None,
    "load_run": "abexrat.api",
    "Run": "abexrat.api",
    "StudyResult": "abexrat.study_api",
    "load_study_result": "abexrat.study_api",
}
__all__ = ["Run", "StudyResult", "__version__", "load_run", "load_study_result", "study", "train"]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'abexrat' has no attribute {name!r}")
    where = _API[name]
    if where is None:  # the submodule itself, callable
        return importlib.import_module(f"abexrat.{name}")
    return getattr(importlib.import_module(where), name)
