"""A linear reference on the same folds: a linear SVM over the full sparse character tf-idf.

It asks whether the recipe's 768-d SVD (or its MLP) throws away what a plain sparse model keeps.
The 5 folds over the train + val originals are the ones ``cv_variants.py`` uses; each fold's
tf-idf fits on its training originals and their synthetic rows (test never read).

    ABEXRAT_DATA_DIR=../shared/data/osha .venv/bin/python reports/recipe/cv_linear.py \\
        --json reports/recipe/linear.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--C", type=float, nargs="+", default=[0.3, 1.0, 3.0])
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()

    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.metrics import f1_score
    from sklearn.svm import LinearSVC

    from abexrat.config import load_train_config
    from abexrat.core.io import write_json
    from abexrat.cv import cv_datasets
    from abexrat.datasets import load_dataset

    cfg = load_train_config(REPO / "studies" / "baseline_offline.yaml", [])
    datasets, y, held = cv_datasets(load_dataset(cfg), 5, 0, ["train", "val"])
    fitted = []
    for fold in datasets:
        texts = list(fold.train.texts) + list(fold.synthetic.texts)
        labels = np.concatenate([fold.train.labels, fold.synthetic.labels])
        tfidf = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=2, sublinear_tf=True)
        fitted.append((tfidf.fit_transform(texts), labels, tfidf.transform(fold.val.texts)))
    rows = []
    for balanced in (False, True):
        for C in args.C:
            t0 = time.perf_counter()
            oof = np.zeros(len(y), np.int64)
            for (X, labels, X_held), idx in zip(fitted, held):
                svm = LinearSVC(C=C, class_weight="balanced" if balanced else None)
                oof[idx] = svm.fit(X, labels).predict(X_held)
            m, w = f1_score(y, oof, average="macro"), f1_score(y, oof, average="weighted")
            rows.append(
                {"C": C, "balanced": balanced, "macro_f1": m, "weighted_f1": w, "seconds": time.perf_counter() - t0}
            )
            print(f"linear SVM C={C} balanced={balanced}: CV macro-F1 {100 * m:.2f} weighted {100 * w:.2f}", flush=True)
    if args.json:
        write_json(args.json, {"features": "tf-idf char_wb 2-5, min_df 2, sublinear", "rows": rows})


if __name__ == "__main__":
    main()
