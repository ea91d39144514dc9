"""The offline recipe on the real OSHA splits, as a user runs it (shortened to 4 epochs)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from tests.conftest import REPO


def test_baseline_trains_on_osha_and_a_rerun_encodes_nothing(osha_dir: Path, tmp_path: Path, cli) -> None:  # noqa: ANN001
    args = [
        "train",
        REPO / "studies" / "baseline_offline.yaml",
        "--seeds",
        "2",
        "--set",
        "train.epochs=4",
        "--data-dir",
        osha_dir,
    ]
    first = cli(*args, "--out", tmp_path / "a")
    assert first.code == 0, first.stderr
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())
    ratio = m["config"]["data"]["aug_ratio"]  # per class, ceil(r n) of the published rows
    untitled = 3576 if m["config"]["data"]["untitled_copies"] else 0  # every training original has a title
    assert m["train_size"] == 3576 + sum(math.ceil(ratio * n) for n in (955, 890, 740, 200)) + untitled
    # per encoder part: the 7,255 rows, the untitled copies, and (title view) the 4,470 originals' titles
    titles = 4470 if m["config"]["encoder"]["title_weight"] > 0 else 0
    assert m["timings"]["texts_encoded"] == 2 * (7255 + untitled + titles) - m["timings"]["texts_cached"]
    # four epochs already separate the three large classes well
    assert m["test"]["weighted_f1"]["mean"] > 0.8
    for c in ("FALLS,SLIPS,TRIPS", "CONTACT WITH OBJECTS AND EQUIPMENT"):
        assert m["test"]["per_class"][c]["f1"]["mean"] > 0.8
    second = cli(*args, "--out", tmp_path / "b")
    assert second.code == 0, second.stderr
    m2 = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert m2["timings"]["texts_encoded"] == 0
    assert m2["timings"]["encode_s"] == 0.0
    assert m2["test"]["macro_f1"] == m["test"]["macro_f1"]  # same seeds, same cached vectors: same result
