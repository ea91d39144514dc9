"""Filters over generated reports: length bounds, exact and near duplicates, label consistency.

They run in this order, each over the rows the previous ones kept, so every removed row is
charged to exactly one filter and the counts add up:

1. ``length``: fewer than ``min_words`` or more than ``max_words`` words (an empty text has 0).
2. ``exact_dup``: the same text, up to case, punctuation and spacing, as an original report
   or as an earlier kept row.
3. ``near_dup``: Jaccard similarity of word 3-gram sets >= ``near_dup`` with an original or an
   earlier kept row.
4. ``label``: a tf-idf + logistic-regression classifier trained on the training originals gives
   the row's intended class a probability below ``label_threshold`` (only with ``label_check``).

"Earlier" is the order the rows come in, which the pipeline fixes (class, source, sample k), so
a rerun keeps the same rows. The originals include val and test: a synthetic copy of a test
report would leak it into training.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from abexrat.augment.config import FilterConfig

FILTERS = ("length", "exact_dup", "near_dup", "label")
_NON_WORD = re.compile(r"[^\w]+")
NGRAM = 3
_BLOCK = 2048  # rows of the similarity matrix held at once: bounds memory on large pools


def normalize(text: str) -> str:
    """Lower case, punctuation to spaces, spaces collapsed: what "the same text" means here."""
    return " ".join(_NON_WORD.sub(" ", text.lower()).split())


def shingles(text: str, n: int = NGRAM) -> list[str]:
    """The word n-grams of a normalized text (a text shorter than n is its own single shingle)."""
    words = normalize(text).split()
    if len(words) < n:
        return [" ".join(words)] if words else []
    return [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]


@dataclass
class FilterResult:
    """Per row (n,): which filter removed it (at most one flag is true), and the scores behind them."""

    flags: dict[str, np.ndarray]  # name -> bool (n,)
    near_dup_sim: np.ndarray  # float32 (n,): the largest Jaccard with an original or earlier kept row; nan if unchecked
    label_prob: np.ndarray  # float32 (n,): the classifier's probability of the intended class; nan if unchecked
    removed: dict[str, int] = field(default_factory=dict)

    @property
    def kept(self) -> np.ndarray:
        return ~np.any(np.stack(list(self.flags.values())), axis=0) if self.flags else np.zeros(0, bool)


def label_probabilities(
    train_texts: list[str], train_labels: np.ndarray, texts: list[str], n_classes: int
) -> np.ndarray:
    """(n, n_classes) class probabilities of ``texts`` from tf-idf + logistic regression on the originals."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    X = vec.fit_transform(train_texts)
    # Balanced weights: the classes we augment are the small ones the classifier would under-call.
    clf = LogisticRegression(max_iter=2000, class_weight="balanced", C=4.0).fit(X, train_labels)
    out = np.zeros((len(texts), n_classes), np.float32)
    if texts:
        out[:, clf.classes_] = clf.predict_proba(vec.transform(texts))
    return out


def _near_dups(
    texts: list[str], alive: np.ndarray, originals: list[str], threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy in row order: (removed (n,) bool, max similarity (n,) float32) over the alive rows."""
    from sklearn.feature_extraction.text import CountVectorizer

    n = len(texts)
    removed, best = np.zeros(n, bool), np.full(n, np.nan, np.float32)
    idx = np.flatnonzero(alive)
    if not len(idx):
        return removed, best
    vec = CountVectorizer(analyzer=shingles, binary=True)
    X_all = vec.fit_transform([texts[i] for i in idx] + list(originals)).tocsr().astype(np.float32)
    X, R = X_all[: len(idx)], X_all[len(idx) :]
    size_x = np.asarray(X.sum(1)).ravel()
    size_r = np.asarray(R.sum(1)).ravel()
    kept_local = np.zeros(len(idx), bool)
    for start in range(0, len(idx), _BLOCK):
        stop = min(start + _BLOCK, len(idx))
        block = X[start:stop]
        # Jaccard = |A & B| / (|A| + |B| - |A & B|), from the binary shingle matrices.
        inter_r = (block @ R.T).toarray() if R.shape[0] else np.zeros((stop - start, 0), np.float32)
        jac_r = inter_r / np.maximum(size_x[start:stop, None] + size_r[None, :] - inter_r, 1.0)
        inter_x = (block @ X[:stop].T).toarray()  # against every earlier row, kept or not (masked below)
        jac_x = inter_x / np.maximum(size_x[start:stop, None] + size_x[None, :stop] - inter_x, 1.0)
        for j in range(stop - start):
            i = start + j
            earlier = jac_x[j, :i][kept_local[:i]]
            sim = max(jac_r[j].max(initial=0.0), earlier.max(initial=0.0))
            best[idx[i]] = sim
            if sim >= threshold:
                removed[idx[i]] = True
            else:
                kept_local[i] = True
    return removed, best


def apply_filters(
    texts: list[str],
    labels: np.ndarray,
    originals: list[str],
    cfg: FilterConfig,
    train_texts: list[str] | None = None,
    train_labels: np.ndarray | None = None,
    n_classes: int = 0,
) -> FilterResult:
    """Flag the generated ``texts`` (n,) with intended ``labels`` (n,) int class indices.

    ``originals``: every original report's text (the near/exact-duplicate reference);
    ``train_texts``/``train_labels``: the training originals the label check learns from.
    """
    n = len(texts)
    flags = {name: np.zeros(n, bool) for name in FILTERS}
    alive = np.ones(n, bool)

    words = np.array([len(t.split()) for t in texts], dtype=np.int64)
    flags["length"] = (words < cfg.min_words) | (words > cfg.max_words)
    alive &= ~flags["length"]

    if cfg.exact_dup:
        seen = {normalize(t) for t in originals}
        for i in np.flatnonzero(alive):
            key = normalize(texts[i])
            if key in seen:
                flags["exact_dup"][i] = True
            seen.add(key)
        alive &= ~flags["exact_dup"]

    near_sim = np.full(n, np.nan, np.float32)
    if cfg.near_dup is not None:
        flags["near_dup"], near_sim = _near_dups(texts, alive, originals, cfg.near_dup)
        alive &= ~flags["near_dup"]

    label_prob = np.full(n, np.nan, np.float32)
    if cfg.label_check and alive.any():
        if train_texts is None or train_labels is None:
            raise ValueError("label_check needs the training originals")
        idx = np.flatnonzero(alive)
        probs = label_probabilities(train_texts, train_labels, [texts[i] for i in idx], n_classes)
        label_prob[idx] = probs[np.arange(len(idx)), labels[idx]]
        flags["label"][idx] = label_prob[idx] < cfg.label_threshold
        alive &= ~flags["label"]

    removed = {name: int(f.sum()) for name, f in flags.items()}
    return FilterResult(flags, near_sim, label_prob, removed)
