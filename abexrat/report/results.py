"""A study folder's results files, read and checked: ``summary.json``, ``trials.parquet``, ``study.json``.

Anything a report needs that is missing or malformed is a :class:`UserError` naming the file.
``trials.parquet`` and ``study.json`` are optional: without them the search figures are skipped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from abexrat.core.errors import UserError

REQUIRED = ("study", "kind", "best_config", "seeds", "val", "test", "classes", "baselines", "trials", "wall_s")


@dataclass
class Results:
    folder: Path
    summary: dict[str, Any]
    study: dict[str, Any] | None  # study.json: the validated study (its space, objective, resources)
    trials: Any  # pandas.DataFrame from trials.parquet, or None

    @property
    def name(self) -> str:
        return str(self.summary["study"])

    @property
    def kind(self) -> str:
        return str(self.summary["kind"])

    @property
    def classes(self) -> list[str]:
        return list(self.summary["classes"])

    def labels(self, split: str) -> np.ndarray | None:
        """The split's true classes (n,), when the summary stores them (``test_labels``, ``val_labels``)."""
        v = self.summary.get(f"{split}_labels")
        return None if v is None else np.asarray(v, dtype=np.int64)

    def arms(self) -> dict[str, dict[str, Any]]:
        """Scored configurations: ``best`` (the summary's own scores), each baseline, then ablation arms."""
        s = self.summary
        out: dict[str, dict[str, Any]] = {
            "best": {
                "overrides": s["best_config"].get("overrides", {}),
                "val": s["val"],
                "test": s["test"],
                "val_pred": s.get("val_pred"),
                "test_pred": s.get("test_pred"),
            }
        }
        out.update({f"baseline:{k}": v for k, v in s["baselines"].items()})
        out.update({f"arm:{k}": v for k, v in (s.get("arms") or {}).items()})
        return out

    def preds(self, entry: dict[str, Any], split: str) -> np.ndarray | None:
        """An arm's (S, n) predictions on ``split``, or None when they or the labels are not stored."""
        p, y = entry.get(f"{split}_pred"), self.labels(split)
        if p is None or y is None:
            return None
        arr = np.asarray(p, dtype=np.int64)
        return arr if arr.ndim == 2 and arr.shape[1] == len(y) else None


def load(folder: str | Path, summary: dict[str, Any] | None = None) -> Results:
    """Read a study folder written by ``abexrat study run``.

    ``summary``: what ``summary.json`` is about to hold, for the runner, which writes the report
    before ``summary.json`` (the file that marks a finished study).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder (expected a study folder with summary.json)")
    path = folder / "summary.json"
    if summary is None:
        summary = _json(path, "not found: is this a study folder? `abexrat study run` writes it at the end")
    if not isinstance(summary, dict):
        raise UserError(f"{path}: not a study summary (expected a JSON object)")
    missing = [k for k in REQUIRED if k not in summary]
    if missing:
        raise UserError(f"{path}: not a study summary (missing {', '.join(repr(k) for k in missing)})")
    for split in ("val", "test"):
        if "macro_f1" not in summary[split] or "mean" not in summary[split]["macro_f1"]:
            raise UserError(f"{path}: {split}.macro_f1.mean is missing")
    study = _json(folder / "study.json", None) if (folder / "study.json").exists() else None
    return Results(folder, summary, study, _trials(folder / "trials.parquet"))


def _json(path: Path, missing: str | None) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: {missing}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None


def _trials(path: Path) -> Any:
    if not path.exists():
        return None
    import pandas as pd

    try:
        df = pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise UserError(f"{path}: cannot read the trial table ({str(e).splitlines()[0]})") from None
    if "stage" not in df.columns:
        raise UserError(f"{path}: not a trial table (no 'stage' column)")
    return df
