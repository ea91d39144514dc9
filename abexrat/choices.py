"""How a search space's choices are written where only primitives fit: Optuna categoricals and
the ``param:`` columns of trials.parquet. The study writes them and the report reads them back."""

from __future__ import annotations

import json
from typing import Any

PRIMITIVE = (str, int, float, bool, type(None))


def encode_choice(v: Any) -> Any:
    """Optuna categoricals must be primitives: lists (e.g. hidden sizes) travel as JSON strings."""
    return v if isinstance(v, PRIMITIVE) else "json:" + json.dumps(v)


def decode_params(params: dict[str, Any]) -> dict[str, Any]:
    return {k: json.loads(v[5:]) if isinstance(v, str) and v.startswith("json:") else v for k, v in params.items()}
