"""95% bootstrap intervals of trained runs on a labeled file, and the paired test between two runs.

    .venv/bin/python reports/recipe/intervals.py runs/b5 runs/paper5 ../shared/data/osha/test.json

Reports are resampled with replacement within each class (2000 times, one draw for all seeds) and
the metric is averaged over seeds; the paired test swaps the two runs' predictions per report and
seed (``abexrat.report.stats``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def predictions(run_dir: Path, data: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from abexrat.api import read_labeled
    from abexrat.embed import embed_texts
    from abexrat.run_folder import load_run
    from abexrat.train import predict_proba

    run = load_run(run_dir)
    texts, y = read_labeled(data, None, "gold", run.classes)
    return np.asarray(y), predict_proba(run.model, embed_texts(run.encoder, texts)).argmax(-1), run.classes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path)
    p.add_argument("other", type=Path)
    p.add_argument("data", type=Path)
    args = p.parse_args()
    from abexrat.report.stats import confidence, paired

    y, a, classes = predictions(args.run, args.data)
    y2, b, _ = predictions(args.other, args.data)
    assert np.array_equal(y, y2)
    out = {}
    for name, preds in ((str(args.run), a), (str(args.other), b)):
        ci = confidence(y, preds, len(classes))
        out[name] = {m: [round(100 * v, 2) for v in (c.mean, c.low, c.high)] for m, c in ci.items()}
    for m in ("macro_f1", "weighted_f1"):
        d = paired(y, a, b, len(classes), metric=m)
        out[f"delta {m}"] = {
            "delta": round(100 * d.delta, 2),
            "ci": [round(100 * d.low, 2), round(100 * d.high, 2)],
            "p": d.p,
        }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
