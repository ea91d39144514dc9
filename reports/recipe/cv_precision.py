"""Does training in bf16 (``train.precision``) cost the recipe anything? 5-fold CV, same seeds.

studies/baseline_offline.yaml with ``train.precision=fp32`` and with ``bf16``, each cross-validated with
abexrat's own CV (stratified 5-fold over the 4,023 train + val originals; test is never read) on the
same seeds; the paired differences of the per-seed out-of-fold macro-F1 and a Wilcoxon test.

    ABEXRAT_DATA_DIR=../shared/data/osha .venv/bin/python reports/recipe/cv_precision.py \\
        --json reports/recipe/precision.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--json", type=Path, required=True)
    args = p.parse_args()

    import numpy as np
    from scipy import stats

    from abexrat.config import load_train_config
    from abexrat.core.io import write_json
    from abexrat.cv import cv_featurize, cv_train_and_score
    from abexrat.datasets import load_dataset
    from abexrat.embed import EmbeddingCache

    seeds = list(range(args.seeds))
    res: dict = {"seeds": seeds}
    for precision in ("fp32", "bf16"):
        t0 = time.perf_counter()
        cfg = load_train_config(REPO / "studies" / "baseline_offline.yaml", [f"train.precision={precision}"])
        cvf = cv_featurize(load_dataset(cfg), cfg, 5, 0, ["train", "val"], EmbeddingCache())
        _, s = cv_train_and_score(cvf, cfg, seeds)
        res[precision] = {
            "macro_f1": s["macro_f1"],
            "weighted_f1": s["weighted_f1"],
            "seconds": time.perf_counter() - t0,
        }
    a, b = (np.asarray(res[k]["macro_f1"]["per_seed"]) for k in ("fp32", "bf16"))
    d = b - a
    res["bf16_minus_fp32"] = {
        "mean": float(d.mean()),
        "std": float(d.std(ddof=1)),
        "wilcoxon_p": float(stats.wilcoxon(b, a).pvalue),
    }
    write_json(args.json, res)
    print(res["bf16_minus_fp32"])


if __name__ == "__main__":
    main()
