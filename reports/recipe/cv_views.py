"""Cross-validate the default recipe under overrides, scoring each held-out report in four styles.

Like ``cv_variants.py`` (5 folds over the train + val originals, synthetic rows only from training
folds, test never read), but every fold's held-out reports are also predicted as other OSHA sources
write them: without their title (``untitled``), as the narrative's first sentence alone (``short``),
and as the title alone (``title_only``). This chooses a recipe that holds up on such reports
without looking at the test split's variants.

    ABEXRAT_DATA_DIR=../shared/data/osha .venv/bin/python reports/recipe/cv_views.py --seeds 3 \\
        "" "data.short_copies=true" --json reports/recipe/views.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
VIEWS = ("full", "untitled", "short", "title_only")


def view_texts(texts: list[str], view: str) -> list[str]:
    from abexrat.data import first_sentence, split_title

    if view == "untitled":
        return [split_title(t)[1] for t in texts]
    if view == "short":
        return [first_sentence(t) for t in texts]
    if view == "title_only":
        return [split_title(t)[0] or t for t in texts]
    return texts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("variants", nargs="+", help='comma-separated overrides per variant; "" for the default')
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()

    from cv_variants import variant_config  # this folder is on sys.path when a script here runs

    from abexrat.cv import cv_datasets
    from abexrat.embed import EmbeddingCache, embed_texts
    from abexrat.experiment import build_encoder, featurize, fit_texts, load_dataset
    from abexrat.io import write_json
    from abexrat.metrics import score
    from abexrat.train import fit, predict_proba

    seeds = list(range(args.seeds))
    cache = EmbeddingCache()
    prepared: dict[str, tuple] = {}
    rows = []
    for spec in args.variants:
        t0 = time.perf_counter()
        name, cfg, key = variant_config(spec)
        if key not in prepared:
            datasets, y, held = cv_datasets(load_dataset(cfg), args.folds, 0, ["train", "val"])
            folds = []
            for fold in datasets:
                feats = featurize(fold, build_encoder(cfg), cache)
                enc = build_encoder(cfg)
                views = {v: embed_texts(enc, view_texts(fold.val.texts, v), fit_texts(fold, enc), cache) for v in VIEWS}
                folds.append((feats, views))
            prepared[key] = (folds, y, held, datasets[0].classes)
        folds, y, held, classes = prepared[key]
        oof = {v: np.zeros((len(seeds), len(y)), np.int64) for v in VIEWS}
        for (feats, views), idx in zip(folds, held):
            X, yt = feats.training_set_for(cfg)
            model = fit(X, yt, len(classes), cfg, seeds).model
            for v in VIEWS:
                oof[v][:, idx] = predict_proba(model, views[v]).argmax(-1)
        row: dict[str, object] = {"variant": name, "seconds": time.perf_counter() - t0}
        line = [f"{name:32s}"]
        for v in VIEWS:
            s = score(y, oof[v], classes)
            row[v] = {"macro_f1": s["macro_f1"], "weighted_f1": s["weighted_f1"]}
            m, w = s["macro_f1"], s["weighted_f1"]
            line.append(f"{v} {100 * m['mean']:.2f}±{100 * m['std']:.2f}/{100 * w['mean']:.2f}")
        rows.append(row)
        print("  ".join(line), flush=True)
    if args.json:
        write_json(args.json, {"seeds": seeds, "folds": args.folds, "views": list(VIEWS), "rows": rows})


if __name__ == "__main__":
    main()
