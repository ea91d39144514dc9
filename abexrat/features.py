"""Features: every vector a trial needs, from a dataset and an encoder.

``featurize`` embeds a dataset held in memory; a dataset too large for memory is encoded by
:mod:`abexrat.stream_train` into feature files (:mod:`abexrat.feature_files`) that ``Features``
memory-maps instead (:func:`abexrat.feature_source.make_features` picks the backend). Training and
scoring read ``Features`` the same way either way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from abexrat.config import TrainConfig
from abexrat.data import Dataset, Split, select_synthetic
from abexrat.embed import EmbeddingCache, EmbedStats, embed_texts
from abexrat.encoders import Encoder, make_encoder
from abexrat.feature_files import open_split
from abexrat.text import first_sentence, split_title


@dataclass
class Features:
    """Every vector a trial needs. X_* are float32 (n, dim); y_* int64 (n,)."""

    classes: list[str]
    X_train: np.ndarray
    y_train: np.ndarray
    X_synth: np.ndarray
    y_synth: np.ndarray
    synth_sources: list[str]
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    encoder_key: str
    stats: EmbedStats
    # The titled training originals again, embedded without their title (``data.untitled_copies``).
    X_untitled: np.ndarray | None = None
    y_untitled: np.ndarray | None = None
    # Every training original again as its narrative's first sentence, untitled (``data.short_copies``).
    X_short: np.ndarray | None = None
    y_short: np.ndarray | None = None
    # Streamed features (``abexrat.stream_train``): the X_* are memory-mapped from this folder of
    # feature files, and pickling them (``ray.put``) sends the folder's name, not the arrays.
    memmap_dir: str | None = None
    # Val's and test's reports under each natural perturbation, encoded once (``abexrat.perturb``):
    # split -> perturbation -> (n, dim), plus "_changed" (the share of reports each one changed).
    perturbed: dict[str, dict[str, np.ndarray]] | None = None

    @property
    def is_memmapped(self) -> bool:
        return self.memmap_dir is not None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self.is_memmapped:
            state.update(X_train=None, X_val=None, X_test=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.memmap_dir is not None:
            (self.X_train, _), (self.X_val, _), (self.X_test, _) = (
                open_split(Path(self.memmap_dir), s) for s in ("train", "val", "test")
            )

    def training_set(
        self, ratio: float, seed: int, untitled: bool = False, short: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Originals plus, per class, the first ceil(ratio n) synthetic rows in a seeded order, plus
        (``untitled``) the titled originals without their title and (``short``) every original's
        first sentence. X (n, dim) float32, y (n,) int64 (the originals themselves, not a copy,
        when nothing is added)."""
        pool = Split([""] * len(self.y_synth), [""] * len(self.y_synth), self.y_synth, self.synth_sources)
        pick = select_synthetic(pool, len(self.classes), ratio, seed)
        copies = [
            (X, y)
            for on, X, y in ((untitled, self.X_untitled, self.y_untitled), (short, self.X_short, self.y_short))
            if on and X is not None
        ]
        if not len(pick) and not copies:
            return self.X_train, self.y_train
        Xs, ys = [self.X_train, self.X_synth[pick]], [self.y_train, self.y_synth[pick]]
        for X, y in copies:
            Xs.append(X)
            ys.append(y)
        return np.concatenate(Xs), np.concatenate(ys)

    def training_set_for(self, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`training_set` as ``cfg.data`` asks for it."""
        d = cfg.data
        return self.training_set(d.aug_ratio, d.aug_seed, d.untitled_copies, d.short_copies)


def build_encoder(cfg: TrainConfig) -> Encoder:
    enc = make_encoder(cfg.encoder.name, **cfg.encoder.options)
    enc.title_weight = cfg.encoder.title_weight
    enc.fit_synthetic = cfg.encoder.fit_synthetic
    return enc


def fit_texts(ds: Dataset, enc: Encoder) -> list[str]:
    """What a fitted encoder (tf-idf) learns from: the training originals, and with
    ``enc.fit_synthetic`` the synthetic pool too (never val or test)."""
    return ds.train.texts + (ds.synthetic.texts if enc.fit_synthetic else [])


def n_to_embed(ds: Dataset, untitled: bool = True, short: bool = True) -> int:
    """How many texts ``featurize`` embeds (for progress bars)."""
    titled = sum(1 for t in ds.train.texts if split_title(t)[0]) if untitled else 0
    return len(ds.train) * (1 + short) + len(ds.synthetic) + len(ds.val) + len(ds.test) + titled


def featurize(
    ds: Dataset,
    enc: Encoder,
    cache: EmbeddingCache | None = None,
    progress: Callable[[int], None] | None = None,
    untitled: bool = True,
    short: bool = True,
) -> Features:
    """Embed every split (the tf-idf part fits on training rows only, see ``fit_texts``), and (a
    study may search ``data.untitled_copies`` and ``data.short_copies``) with ``untitled`` the
    titled training originals once more without their title, with ``short`` every training
    original as its narrative's first sentence."""
    stats = EmbedStats()
    titled = [i for i, t in enumerate(ds.train.texts) if untitled and split_title(t)[0]]
    kept = ds.train.subset(titled)
    bare = Split(kept.ids, [split_title(t)[1] for t in kept.texts], kept.labels)
    cut = ds.train if short else ds.train.subset([])
    first = Split(cut.ids, [first_sentence(t) for t in cut.texts], cut.labels)
    parts = [ds.train, ds.synthetic, ds.val, ds.test, bare, first]
    texts = [t for p in parts for t in p.texts]
    X = embed_texts(enc, texts, fit_texts=fit_texts(ds, enc), cache=cache, stats=stats, progress=progress)
    cuts = np.cumsum([len(p) for p in parts])[:-1]
    Xtr, Xsy, Xva, Xte, Xun, Xsh = np.split(X, cuts)
    return Features(
        ds.classes,
        Xtr,
        ds.train.labels,
        Xsy,
        ds.synthetic.labels,
        ds.synthetic.source_ids,
        Xva,
        ds.val.labels,
        Xte,
        ds.test.labels,
        enc.key,
        stats,
        Xun,
        bare.labels,
        Xsh if short else None,
        first.labels if short else None,
    )
