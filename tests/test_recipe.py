"""The recipe's data options on a real (tiny) dataset: untitled and short copies, fitting on synthetic rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from abexrat.config import TrainConfig
from abexrat.core.io import sha256_texts
from abexrat.datasets import load_dataset
from abexrat.embed import EmbeddingCache, embed_texts
from abexrat.features import build_encoder, featurize, fit_texts
from abexrat.text import first_sentence, split_title


def _cfg(tiny_config: Path, **encoder: object) -> TrainConfig:
    raw = yaml.safe_load(tiny_config.read_text())
    raw["encoder"].update(encoder)
    return TrainConfig.model_validate(raw)


def test_untitled_copies_are_the_titled_originals_without_their_title(tiny_config: Path, tmp_path: Path) -> None:
    cfg = _cfg(tiny_config, title_weight=1.0)
    ds = load_dataset(cfg)
    enc = build_encoder(cfg)
    feats = featurize(ds, enc, EmbeddingCache(tmp_path))
    titled = [i for i, t in enumerate(ds.train.texts) if split_title(t)[0]]
    assert len(titled) == 133  # every tiny training original has a title; val/test have none
    assert feats.X_untitled.shape == (133, enc.dim) and np.array_equal(feats.y_untitled, ds.train.labels[titled])
    bare = embed_texts(enc, [split_title(ds.train.texts[i])[1] for i in titled], cache=EmbeddingCache(tmp_path))
    assert np.allclose(feats.X_untitled, bare, atol=1e-6)
    assert not np.allclose(feats.X_train[titled], bare, atol=1e-3)  # the titled view differs
    X, y = feats.training_set(1.0, 0, untitled=True)
    X0, y0 = feats.training_set(1.0, 0)
    assert len(X) == len(X0) + 133 and np.array_equal(y[len(y0) :], feats.y_untitled)


def test_first_sentence_is_the_narratives_first_sentence_without_the_title() -> None:
    text = "Worker Falls From Ladder\nAt 9:30 a.m. on May 2 Employee No. 1 was on a ladder. He fell 10 ft. He died."
    assert first_sentence(text) == "At 9:30 a.m. on May 2 Employee No. 1 was on a ladder."
    assert first_sentence("One  sentence,   no title") == "One sentence, no title"
    assert first_sentence("Struck by a pipe (2 in.). Hospitalized.") == "Struck by a pipe (2 in.)."


def test_short_copies_are_every_originals_first_sentence(tiny_config: Path, tmp_path: Path) -> None:
    cfg = _cfg(tiny_config, title_weight=1.0)
    ds = load_dataset(cfg)
    enc = build_encoder(cfg)
    feats = featurize(ds, enc, EmbeddingCache(tmp_path))
    n = len(ds.train)
    assert feats.X_short.shape == (n, enc.dim) and np.array_equal(feats.y_short, ds.train.labels)
    short = embed_texts(enc, [first_sentence(t) for t in ds.train.texts], cache=EmbeddingCache(tmp_path))
    assert np.allclose(feats.X_short, short, atol=1e-6)
    X0, y0 = feats.training_set(1.0, 0)
    X, y = feats.training_set(1.0, 0, untitled=True, short=True)
    assert len(X) == len(X0) + 133 + n
    assert np.array_equal(X[len(X0) + 133 :], feats.X_short) and np.array_equal(y[len(y0) + 133 :], ds.train.labels)
    cfg.data.short_copies = True
    Xc, yc = feats.training_set_for(cfg)
    assert len(Xc) == len(X0) + n and np.array_equal(Xc[len(X0) :], feats.X_short)
    # a run that does not train on short copies does not embed them
    assert featurize(ds, enc, EmbeddingCache(tmp_path), short=False).X_short is None


def test_fit_synthetic_fits_tfidf_on_originals_and_the_pool(tiny_config: Path, tmp_path: Path) -> None:
    plain, both = _cfg(tiny_config), _cfg(tiny_config, fit_synthetic=True)
    ds = load_dataset(plain)
    assert fit_texts(ds, build_encoder(plain)) == ds.train.texts
    enc = build_encoder(both)
    assert fit_texts(ds, enc) == ds.train.texts + ds.synthetic.texts and len(ds.synthetic) == 99
    featurize(ds, enc, EmbeddingCache(tmp_path))
    tfidf = enc.parts[1]
    assert tfidf.fit_digest == sha256_texts(ds.train.texts + ds.synthetic.texts)
