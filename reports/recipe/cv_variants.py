"""Cross-validate the default recipe under overrides: 5-fold over the train + val originals, test never read.

Each argument is one variant, a comma-separated list of ``--set``-style overrides ("" = the default);
variants with the same encoder and data settings share one featurization.

    ABEXRAT_DATA_DIR=../shared/data/osha .venv/bin/python reports/recipe/cv_variants.py --seeds 3 \\
        "" "loss.gamma=1.0" "model.dropout=0.35" "train.epochs=30"
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BASE = REPO / "studies" / "baseline.yaml"


def variant_config(spec: str, base: Path = DEFAULT_BASE) -> tuple[str, object, str]:
    """A variant's (name, train config, featurization key): the ``base`` recipe under the spec's
    comma-separated overrides; variants with the same key can share one featurization."""
    from abexrat.config import load_train_config

    # commas inside brackets belong to a list value: "encoder.options.weights=[1.0,1.5]"
    overrides = [s for s in re.split(r",(?![^\[]*\])", spec) if s]
    cfg = load_train_config(base, overrides)
    key = json.dumps([cfg.encoder.model_dump(), cfg.data.model_dump()], sort_keys=True, default=str)
    return spec or "default", cfg, key


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("variants", nargs="+", help='comma-separated overrides per variant; "" for the default')
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--base", type=Path, default=DEFAULT_BASE, help="the recipe varied")
    args = p.parse_args()

    from abexrat.core.io import write_json
    from abexrat.cv import cv_featurize, cv_train_and_score
    from abexrat.datasets import load_dataset
    from abexrat.embed import EmbeddingCache

    seeds = list(range(args.seeds))
    features: dict[str, object] = {}
    rows = []
    for spec in args.variants:
        t0 = time.perf_counter()
        name, cfg, key = variant_config(spec, args.base)
        if key not in features:
            features[key] = cv_featurize(load_dataset(cfg), cfg, 5, 0, ["train", "val"], EmbeddingCache())
        _, s = cv_train_and_score(features[key], cfg, seeds)
        m, w = s["macro_f1"], s["weighted_f1"]
        rows.append({"variant": name, "macro_f1": m, "weighted_f1": w, "seconds": time.perf_counter() - t0})
        print(f"{name:40s} CV macro-F1 {100 * m['mean']:.2f} ± {100 * m['std']:.2f}  weighted {100 * w['mean']:.2f}")
    if args.json:
        write_json(args.json, {"seeds": seeds, "rows": rows})


if __name__ == "__main__":
    main()
