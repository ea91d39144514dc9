"""The define-by-run Optuna search space.

It lives in an importable module, as a plain picklable class, because Ray Tune pickles
the searcher with the experiment state and a ``--resume`` must unpickle it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from abexrat.choices import encode_choice


@dataclass
class SearchSpace:
    """``params``: dotted key -> {"type", "low", "high", "log", "step", "choices"} (plain dicts)."""

    params: dict[str, dict[str, Any]]

    def __call__(self, trial: Any) -> None:
        for name, p in self.params.items():
            if p["type"] == "float":
                trial.suggest_float(name, p["low"], p["high"], log=p.get("log", False), step=p.get("step"))
            elif p["type"] == "int":
                trial.suggest_int(
                    name, int(p["low"]), int(p["high"]), log=p.get("log", False), step=int(p.get("step") or 1)
                )
            else:
                trial.suggest_categorical(name, [encode_choice(c) for c in p["choices"]])
