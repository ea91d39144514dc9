"""A run folder's README.md is a Hugging Face model card that huggingface_hub's own parser reads,
with the scores of metrics.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def check_card(folder: Path) -> tuple[object, dict]:
    """Load ``folder/README.md`` with ``huggingface_hub.ModelCard.load``; its model-index values
    must equal metrics.json's means. Returns the card and the metrics."""
    from huggingface_hub import ModelCard

    card = ModelCard.load(folder / "README.md")
    m = json.loads((folder / "metrics.json").read_text())
    got = {(r.dataset_split, r.metric_name): r.metric_value for r in card.data.eval_results}
    want = {
        (split, f"{split} {label}"): m[split][key]["mean"]
        for split in ("test", "val")
        for key, label in (("macro_f1", "macro-F1"), ("weighted_f1", "weighted-F1"), ("accuracy", "accuracy"))
    }
    assert got == pytest.approx(want)
    assert {r.metric_type for r in card.data.eval_results} == {"f1", "accuracy"}
    assert {r.task_type for r in card.data.eval_results} == {"text-classification"}
    assert card.data.license == "mit" and "abexrat" in card.data.tags
    assert card.data.model_name == m["config"]["name"]
    text = card.text
    for c, d in m["test"]["per_class"].items():  # the per-class table, one row per class
        assert f"| {c} | {100 * d['precision']['mean']:.2f} | {100 * d['recall']['mean']:.2f} | " in text
    t = m["test"]["macro_f1"]
    assert f"{100 * t['mean']:.2f} ± {100 * t['std']:.2f} [" in text  # mean ± std [bootstrap interval]
    for heading in ("## Scores", "## Intended use and limits", "## How it was chosen", "## Config"):
        assert heading in text
    return card, m


def test_train_writes_a_model_card_that_huggingface_hub_reads(tmp_path: Path, tiny_config: Path, cli) -> None:  # noqa: ANN001
    out = tmp_path / "run"
    r = cli("train", tiny_config, "--out", out, "--seeds", "2")
    assert r.code == 0, r.stderr
    card, m = check_card(out)
    assert "Trained as configured" in card.text
    assert f"eps: {m['config']['adversarial']['eps']}" in card.text  # the config, in full


def test_the_bootstrap_interval_holds_the_mean_and_narrows_with_more_reports() -> None:
    import numpy as np

    from abexrat.card import _interval
    from abexrat.metrics import scores

    rng = np.random.default_rng(0)
    small = [[[8, 2], [1, 9]], [[9, 1], [2, 8]]]  # two seeds' confusion matrices, 20 reports each
    big = (np.asarray(small) * 10).tolist()
    mean = float(scores(np.asarray(small))["macro_f1"].mean())
    lo, hi = _interval(small, "macro_f1", rng)
    blo, bhi = _interval(big, "macro_f1", rng)
    assert lo < mean < hi and blo < mean < bhi
    assert (bhi - blo) < 0.5 * (hi - lo)  # 10x the reports: about a third the width
