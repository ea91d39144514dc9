"""The Python API as a notebook uses it: train -> Run, predict / predict_proba / evaluate, the same
numbers as the command line; importing abexrat stays cheap."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO


def test_importing_abexrat_imports_nothing_heavy() -> None:
    code = (
        "import sys, abexrat; heavy = ('torch', 'ray', 'pandas', 'numpy', 'optuna', 'huggingface_hub'); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, tiny_config: Path):  # noqa: ANN201
    import abexrat

    return abexrat.train(tiny_config, out=tmp_path_factory.mktemp("api") / "run", seeds=2, adversarial__eps=0.2)


def test_train_returns_a_run_with_its_metrics_and_overrides(run) -> None:  # noqa: ANN001
    import abexrat

    assert isinstance(run, abexrat.Run)
    on_disk = json.loads((run.folder / "metrics.json").read_text())
    assert run.metrics == on_disk and run.seeds == [0, 1]
    assert run.config["adversarial"]["eps"] == 0.2  # adversarial__eps reached the config
    assert run.classes == on_disk["classes"] and len(run.classes) == 7
    # the module abexrat.train is still the training loop
    from abexrat.train import fit

    assert callable(fit) and abexrat.train.fit is fit


def test_predict_and_predict_proba_agree_with_the_cli(run, tiny_dir: Path, tmp_path: Path, cli) -> None:  # noqa: ANN001
    rows = json.loads((tiny_dir / "test.json").read_text())[:5]
    from abexrat.text import compose_text

    texts = [compose_text(r["title"], r["summary"]) for r in rows]
    proba = run.predict_proba(texts)
    assert proba.shape == (5, 7) and np.allclose(proba.sum(1), 1, atol=1e-5)
    labels = run.predict(texts)
    assert labels == [run.classes[i] for i in proba.argmax(1)]
    (tmp_path / "in.json").write_text(json.dumps(rows))
    r = cli("predict", run.folder, tmp_path / "in.json", "--jsonl")
    assert r.code == 0, r.stderr
    printed = [json.loads(line) for line in r.stdout.splitlines()]
    assert [p["label"] for p in printed] == labels
    for p, row in zip(printed, proba):
        assert [p["probabilities"][c] for c in run.classes] == pytest.approx(row.round(4).tolist(), abs=1e-4)


def test_evaluate_a_file_or_rows_gives_what_the_cli_writes(run, tiny_dir: Path, tmp_path: Path, cli) -> None:  # noqa: ANN001
    r = cli("evaluate", run.folder, tiny_dir / "test.json", "--json", tmp_path / "e.json")
    assert r.code == 0, r.stderr
    written = json.loads((tmp_path / "e.json").read_text())
    assert run.evaluate(tiny_dir / "test.json") == written
    assert written["macro_f1"] == pytest.approx(run.metrics["test"]["macro_f1"]["mean"])
    rows = json.loads((tiny_dir / "test.json").read_text())
    from_rows = run.evaluate(rows)
    assert from_rows["data"] == "<rows>" and from_rows["macro_f1"] == written["macro_f1"]
    assert from_rows["per_class"] == written["per_class"]


def test_bad_input_is_one_user_error(tmp_path: Path, run) -> None:  # noqa: ANN001
    import abexrat
    from abexrat.core.errors import UserError

    with pytest.raises(UserError, match="metrics.json: not found"):
        abexrat.load_run(tmp_path)
    with pytest.raises(UserError, match="row 0"):
        run.evaluate([{"title": "", "summary": "a dog bit a worker", "gold": "NOT A CLASS"}])
    with pytest.raises(UserError, match="adversarial.eps"):
        abexrat.train({"name": "x"}, out=tmp_path / "x", adversarial__eps=-1)
    assert not (tmp_path / "x").exists()
