"""Cross-validate the default recipe under overrides, scoring each held-out report in four styles.

Like ``cv_variants.py`` (5 folds over the train + val originals, synthetic rows only from training
folds, test never read), but every fold's held-out reports are also predicted as other OSHA sources
write them: without their title (``untitled``), as the narrative's first sentence alone (``short``),
and as the title alone (``title_only``). This chooses a recipe that holds up on such reports
without looking at the test split's variants. With ``--average``, it also scores test-time view
averaging: each full report predicted as the mean of its views' probabilities.

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
# (name, weight per view) of the averages that --average scores: the full view plus w x the others
AVERAGES = [
    (f"full + {w} x {'+'.join(others)}", {"full": 1.0, **{o: w for o in others}})
    for others in (("title_only",), ("untitled",), ("title_only", "untitled"))
    for w in (0.25, 0.5, 1.0)
]


def view_texts(texts: list[str], view: str) -> list[str]:
    from abexrat.text import first_sentence, split_title

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
    p.add_argument("--average", action="store_true", help="also score test-time averages of the views")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--base", type=Path, default=None, help="the recipe varied (default: studies/baseline.yaml)")
    args = p.parse_args()

    from cv_variants import DEFAULT_BASE, variant_config  # this folder is on sys.path when a script here runs

    from abexrat.core.io import write_json
    from abexrat.cv import cv_datasets
    from abexrat.datasets import load_dataset
    from abexrat.embed import EmbeddingCache, embed_texts
    from abexrat.features import build_encoder, featurize, fit_texts
    from abexrat.metrics import score
    from abexrat.train import fit, predict_proba

    seeds = list(range(args.seeds))
    cache = EmbeddingCache()
    prepared: dict[str, tuple] = {}
    rows = []
    for spec in args.variants:
        t0 = time.perf_counter()
        name, cfg, key = variant_config(spec, args.base or DEFAULT_BASE)
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
        proba = {v: np.zeros((len(seeds), len(y), len(classes))) for v in VIEWS}
        for (feats, views), idx in zip(folds, held):
            X, yt = feats.training_set_for(cfg)
            model = fit(X, yt, len(classes), cfg, seeds).model
            for v in VIEWS:
                proba[v][:, idx] = predict_proba(model, views[v])
        row: dict[str, object] = {"variant": name, "seconds": time.perf_counter() - t0}
        line = [f"{name:32s}"]
        scored = dict(proba)
        if args.average:
            for average, weights in AVERAGES:
                scored[average] = sum(weight * proba[v] for v, weight in weights.items())
        for v, p_view in scored.items():
            s = score(y, p_view.argmax(-1), classes)
            row[v] = {"macro_f1": s["macro_f1"], "weighted_f1": s["weighted_f1"]}
            m, w = s["macro_f1"], s["weighted_f1"]
            line.append(f"{v} {100 * m['mean']:.2f}±{100 * m['std']:.2f}/{100 * w['mean']:.2f}")
        rows.append(row)
        print("\n  ".join(line), flush=True)
    if args.json:
        write_json(args.json, {"seeds": seeds, "folds": args.folds, "views": list(VIEWS), "rows": rows})


if __name__ == "__main__":
    main()
