"""The example notebook runs top to bottom (nbclient, a real kernel) on the tiny dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO


def test_the_quickstart_notebook_runs(tmp_path: Path, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    monkeypatch.setenv("ABEXRAT_EXAMPLE_DATASET", str(tiny_dir))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the kernel imports this checkout's abexrat
    nb = nbformat.read(REPO / "examples" / "quickstart.ipynb", as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()

    out = tmp_path / "runs" / "notebook"
    metrics = json.loads((out / "train" / "metrics.json").read_text())
    assert metrics["seeds"] == [0, 1] and metrics["config"]["adversarial"]["eps"] == 0.1
    assert (out / "train" / "README.md").is_file()
    summary = json.loads((out / "search" / "summary.json").read_text())
    assert summary["trials"] == 6
    table = pd.read_parquet(out / "search" / "trials.parquet")
    assert (table["stage"] == "search").sum() == 6
    outputs = {i: c.get("outputs", []) for i, c in enumerate(nb.cells) if c.cell_type == "code"}
    text = "\n".join(
        o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for cell in outputs.values() for o in cell
    )
    assert "(3, 7)" in text  # predict_proba's shape: 3 texts, 7 classes
    assert "6 Optuna trials" in text and "'trial_id'" in text
    assert any("image/png" in o.get("data", {}) for cell in outputs.values() for o in cell)  # the plot
    assert not any(o.get("output_type") == "error" for cell in outputs.values() for o in cell)
