"""A config's features, from one call with two backends: in memory, or streamed to disk.

- **memory**: the dataset is read whole (:func:`abexrat.datasets.load_dataset`) and every text
  embedded through the embedding cache (:func:`abexrat.features.featurize`); with
  ``robustness.enabled``, val's and test's perturbed reports too.
- **streamed**: a data file too large for memory, or any with ``--stream``, is scanned and encoded
  by Ray Data actors into feature files that :class:`~abexrat.features.Features` memory-maps
  (:mod:`abexrat.stream_train`).

Which one runs follows :func:`abexrat.stream_train.wants_stream`. Both return the same
:class:`Made`, and everything after (training, scoring, the run folder, a study's trials) reads it
the same way: the backend is a storage choice, in the spirit of Optuna's in-memory and RDB storages.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from abexrat.config import TrainConfig
from abexrat.data import Dataset
from abexrat.encoders import Encoder


@dataclass
class Made:
    """What a backend made: the features, the encoder fitted for them, and the backend's own facts."""

    feats: Any  # abexrat.features.Features
    encoder: Encoder
    streamed: dict[str, Any] | None = None  # streamed: rows per split, the fit sample, the feature folder


def make_features(
    cfg: TrainConfig,
    progress: Any = None,
    stream: bool = False,
    untitled: bool | None = None,
    short: bool | None = None,
    dataset: Dataset | None = None,
    encoder: Encoder | None = None,
) -> Made:
    """The features ``cfg`` trains on. ``stream`` asks for the streamed backend whatever the file's
    size. The memory backend embeds untitled and first-sentence copies as ``untitled`` and ``short``
    say (default: as ``cfg.data`` says; a study searching them needs them either way), and takes the
    ``dataset`` and unfitted ``encoder`` a caller has already built. ``progress`` draws the bars."""
    from abexrat.stream_train import wants_stream

    if wants_stream(cfg, stream):
        return _streamed(cfg, progress)
    d = cfg.data
    copies = (d.untitled_copies if untitled is None else untitled, d.short_copies if short is None else short)
    return _in_memory(cfg, progress, copies, dataset, encoder)


def _in_memory(
    cfg: TrainConfig, progress: Any, copies: tuple[bool, bool], ds: Dataset | None, enc: Encoder | None
) -> Made:
    from abexrat.datasets import load_dataset
    from abexrat.embed import EmbeddingCache, progress_total
    from abexrat.features import build_encoder, featurize, n_to_embed

    ds = ds if ds is not None else load_dataset(cfg)
    enc = enc if enc is not None else build_encoder(cfg)
    untitled, short = copies
    advance = progress.task("encoding", progress_total(enc, n_to_embed(ds, untitled, short))) if progress else None
    cache = EmbeddingCache()
    feats = featurize(ds, enc, cache, advance, untitled=untitled, short=short)  # fits enc too
    if cfg.robustness.enabled:  # natural perturbations: encoded once, for every seed or trial
        from abexrat.perturb import dataset_vectors

        feats.perturbed = dataset_vectors(ds, enc, cfg.robustness, cache, progress)
    return Made(feats, enc)


def _streamed(cfg: TrainConfig, progress: Any) -> Made:
    """Joins the Ray a study runs on, or starts one for the encoding alone (training needs none)."""
    from abexrat.core.ray_session import connect
    from abexrat.stream import check_streamable
    from abexrat.stream_train import stream_features

    check_streamable(Path(cfg.data.dataset))  # before Ray starts
    started = connect(None)
    try:
        feats, enc, info = stream_features(cfg, progress)
    finally:
        if started:
            import ray

            ray.shutdown()
    return Made(feats, enc, streamed=info)
