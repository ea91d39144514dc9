"""The offline encoders (wordllama, tfidf-svd, hybrid) and the content-addressed cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from abexrat.core.errors import UserError
from abexrat.embed import EmbeddingCache, EmbedStats, embed_texts, fit_encoder, progress_total
from abexrat.encoders import load_encoder, make_encoder, save_encoder

TEXTS = [
    "Employee falls from a ladder while painting the ceiling",
    "Worker fell from the roof of a house under construction",
    "Truck driver killed when the vehicle overturned on the highway",
    "Employee bitten by a dog while delivering mail",
    "Worker burned in a tank explosion during welding",
    "Employee strains back lifting heavy boxes",
]


def test_wordllama_is_256d_unit_norm_and_semantic() -> None:
    enc = make_encoder("wordllama")
    X = enc.encode(TEXTS)
    assert X.shape == (6, 256) and X.dtype == np.float32
    assert np.allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)
    sims = X @ X.T
    # the two falls are closer to each other than to the truck crash
    assert sims[0, 1] > sims[0, 2] and sims[0, 1] > sims[1, 2]


def test_tfidf_svd_fits_on_given_texts_and_round_trips(tmp_path: Path) -> None:
    enc = make_encoder("tfidf-svd", dim=4, min_df=1)
    enc.fit(TEXTS)
    X = enc.encode(TEXTS)
    assert X.shape == (6, 4) and np.allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)
    save_encoder(enc, tmp_path)
    back = load_encoder(tmp_path)
    assert back.key == enc.key
    assert np.allclose(
        back.encode(["a worker fell from a ladder"]), enc.encode(["a worker fell from a ladder"]), atol=1e-6
    )
    other = make_encoder("tfidf-svd", dim=4, min_df=1)
    other.fit(TEXTS[:5])
    assert other.key != enc.key  # the fit corpus is part of the address


def test_char_ngram_tfidf_shares_features_between_word_forms_and_round_trips(tmp_path: Path) -> None:
    enc = make_encoder("tfidf-svd", dim=4, min_df=1, analyzer="char_wb", ngram_min=2, ngram=4)
    enc.fit(TEXTS)
    terms = enc._vectorizer.vocabulary_  # noqa: SLF001
    assert " bi" in terms and "bitt" in terms and all(2 <= len(t) <= 4 for t in terms)  # inside word boundaries
    # "bite" never occurs in the fit corpus, yet shares n-grams with "bitten": word 1-grams see nothing.
    word = make_encoder("tfidf-svd", dim=4, min_df=1)
    word.fit(TEXTS)
    assert word._vectorizer.transform(["bite"]).nnz == 0  # noqa: SLF001
    assert enc._vectorizer.transform(["bite"]).nnz > 0  # noqa: SLF001
    assert enc.key != word.key and "analyzer" not in word.options() and enc.options()["analyzer"] == "char_wb"
    save_encoder(enc, tmp_path)
    back = load_encoder(tmp_path)
    assert back.key == enc.key
    assert np.array_equal(back.encode(["a dog bite"]), enc.encode(["a dog bite"]))
    with pytest.raises(UserError, match="ngram_min <= ngram"):
        make_encoder("tfidf-svd", analyzer="char_wb", ngram_min=5, ngram=3)


def test_hybrid_is_the_normalized_concatenation() -> None:
    enc = make_encoder("hybrid", tfidf_dim=4, tfidf_min_df=1)
    X = embed_texts(enc, TEXTS, fit_texts=TEXTS)
    assert X.shape == (6, 260) and np.allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)
    w, t = enc.parts[0].encode(TEXTS), enc.parts[1].encode(TEXTS)
    expected = np.concatenate([w, t], axis=1) / np.sqrt(2)
    assert np.allclose(X, expected, atol=1e-5)
    assert enc.dim == 260


def test_cache_second_run_encodes_nothing(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    first, second = EmbedStats(), EmbedStats()
    a = embed_texts(make_encoder("hybrid", tfidf_dim=4, tfidf_min_df=1), TEXTS, TEXTS, cache, first)
    b = embed_texts(make_encoder("hybrid", tfidf_dim=4, tfidf_min_df=1), TEXTS, TEXTS, cache, second)
    assert first.encoded == 12 and second.encoded == 0 and second.cached == 12
    assert np.array_equal(a, b)
    # new texts are encoded alone; the known ones come from the cache
    third = EmbedStats()
    embed_texts(make_encoder("hybrid", tfidf_dim=4, tfidf_min_df=1), [*TEXTS, "a new report"], TEXTS, cache, third)
    assert third.encoded == 2 and third.cached == 12
    # the progress bar counts every text of every part, encoded, cached or repeated: it ends full
    ticks: list[int] = []
    texts = [*TEXTS, "a new report", "another new one", "another new one"]
    enc = make_encoder("hybrid", tfidf_dim=4, tfidf_min_df=1)
    embed_texts(enc, texts, TEXTS, cache, progress=ticks.append)
    assert sum(ticks) == progress_total(enc, len(texts)) == 2 * len(texts) == 18


def test_the_encoder_contract_fit_returns_self_and_the_fitted_state_comes_back_from_the_cache(
    tmp_path: Path,
) -> None:
    tfidf = make_encoder("tfidf-svd", dim=4, min_df=1)
    assert tfidf.learns and tfidf.needs_fitting
    with pytest.raises(RuntimeError, match="encode before fit"):
        tfidf.encode(TEXTS)
    assert tfidf.fit(TEXTS) is tfidf and not tfidf.needs_fitting
    wordllama = make_encoder("wordllama")
    assert not wordllama.learns and not wordllama.needs_fitting and wordllama.fit(TEXTS) is wordllama

    cache = EmbeddingCache(tmp_path)
    first, second = EmbedStats(), EmbedStats()
    a = fit_encoder(make_encoder("tfidf-svd", dim=4, min_df=1), TEXTS, cache, first)
    b = fit_encoder(make_encoder("tfidf-svd", dim=4, min_df=1), TEXTS, cache, second)
    assert first.fit_s > 0 and second.fit_s == 0  # the second read the state the first stored
    assert a.key == b.key == tfidf.key
    assert np.array_equal(a.encode(TEXTS), b.encode(TEXTS)) and np.allclose(a.encode(TEXTS), tfidf.encode(TEXTS))
    with pytest.raises(ValueError, match="needs training texts"):
        fit_encoder(make_encoder("tfidf-svd", dim=4, min_df=1), None, cache)


def test_a_corrupt_cache_shard_is_dropped_and_rebuilt(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    enc = make_encoder("wordllama")
    a = embed_texts(enc, TEXTS, cache=cache)
    shard = next((tmp_path / "embeddings").rglob("*.npz"))
    shard.write_bytes(shard.read_bytes()[:-10])  # truncated, as by a crash mid-write
    stats = EmbedStats()
    b = embed_texts(enc, TEXTS, cache=cache, stats=stats)
    assert stats.encoded == 6 and np.allclose(a, b, atol=1e-6)
    # rewritten whole: the same content, so the same content-addressed name, and it verifies
    from abexrat.core.io import sha256_file

    assert shard.exists() and sha256_file(shard) == shard.stem


def test_unknown_encoder_is_a_user_error() -> None:
    with pytest.raises(UserError, match="unknown encoder 'bert'"):
        make_encoder("bert")
    with pytest.raises(UserError, match="encoder.options"):
        make_encoder("wordllama", colour="red")


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_title_weight_adds_the_title_vector_to_titled_texts_only(tmp_path: Path) -> None:
    titled = "Employee Bitten By Spider\nA crew was excavating a trench when the employee developed a rash"
    bare = "A crew was excavating a trench when the employee developed a rash"
    enc = make_encoder("wordllama")
    plain = embed_texts(enc, [titled, bare], cache=EmbeddingCache(tmp_path))
    enc.title_weight = 2.0
    stats = EmbedStats()
    X = embed_texts(enc, [titled, bare], cache=EmbeddingCache(tmp_path), stats=stats)
    title_vec = enc.encode(["Employee Bitten By Spider"])[0]
    assert np.allclose(X[0], _unit(_unit(plain[0]) + 2.0 * _unit(title_vec)), atol=1e-5)
    assert np.allclose(X[1], plain[1], atol=1e-6)  # no title line: unchanged
    assert stats.encoded == 1 and stats.cached == 2  # only the title was new to the cache
    # the weight travels with a saved run's encoder, so predict/evaluate embed the same way
    save_encoder(enc, tmp_path / "enc")
    back = load_encoder(tmp_path / "enc")
    assert back.title_weight == 2.0
    assert np.allclose(embed_texts(back, [titled], cache=EmbeddingCache(tmp_path)), X[:1], atol=1e-6)


@pytest.mark.parametrize(
    "override,message",
    [
        ("encoder.options.tfidf_analyzer=chars", "options.tfidf_analyzer: expected one of word, char_wb, got 'chars'"),
        ("encoder.options.tfidf_ngram_min=9", "need 1 <= ngram_min <= ngram, got 9 and 5"),
    ],
)
def test_bad_tfidf_analyzer_options_exit_2_naming_the_key(override: str, message: str, cli, tmp_path: Path) -> None:  # noqa: ANN001
    config = Path(__file__).resolve().parents[1] / "studies" / "baseline_offline.yaml"
    r = cli("train", config, "--set", override, "--out", tmp_path / "run")
    assert r.code == 2 and message in r.stderr
    assert not (tmp_path / "run").exists()
