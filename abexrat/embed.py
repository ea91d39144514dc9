"""Embedding with a content-addressed cache: a rerun encodes nothing it has seen.

Layout under the cache root::

    embeddings/<encoder key>/<sha256 of file>.npz   shards: text digests (n, 16) uint8, vectors (n, d)
    encoders/<encoder key>/encoder.{json,safetensors} fitted state (tf-idf vocabulary, SVD)

A shard's file name is its own sha256, checked on read; a corrupt shard is dropped and
its texts are encoded again.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from abexrat.core.io import cache_dir, sha256_bytes, sha256_texts, write_bytes
from abexrat.encoders import Encoder, leaves, save_encoder
from abexrat.text import split_title

ENCODE_CHUNK = 2048


def text_digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()[:16]


@dataclass
class EmbedStats:
    """What one call cost: texts encoded vs found in the cache, and seconds spent encoding."""

    encoded: int = 0
    cached: int = 0
    encode_s: float = 0.0
    fit_s: float = 0.0
    per_encoder: dict[str, float] = field(default_factory=dict)


class EmbeddingCache:
    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root else cache_dir()

    def _dir(self, key: str) -> Path:
        return self.root / "embeddings" / key

    def lookup(self, key: str, digests: list[bytes]) -> dict[bytes, np.ndarray]:
        """Vectors of the wanted digests found in this key's shards."""
        wanted, found = set(digests), {}
        folder = self._dir(key)
        if not folder.is_dir():
            return found
        _drop_stale_temps(folder)
        for shard in sorted(folder.glob("*.npz")):
            data = shard.read_bytes()
            if sha256_bytes(data) != shard.stem:
                shard.unlink(missing_ok=True)  # corrupt or truncated: encode those texts again
                continue
            try:
                with np.load(io.BytesIO(data), allow_pickle=False) as z:
                    keys, vecs = z["digests"], z["vectors"]
                if keys.dtype != np.uint8 or keys.ndim != 2 or keys.shape[1] != 16 or len(vecs) != len(keys):
                    raise ValueError("not a shard")
            except (OSError, ValueError, KeyError):  # named right but not a shard of ours: never trusted
                shard.unlink(missing_ok=True)
                continue
            for k, v in zip(keys, vecs):
                b = k.tobytes()
                if b in wanted:
                    found[b] = v
        return found

    def add(self, key: str, digests: list[bytes], vectors: np.ndarray) -> None:
        buf = io.BytesIO()
        keys = np.frombuffer(b"".join(digests), np.uint8).reshape(len(digests), 16)
        np.savez(buf, digests=keys, vectors=vectors.astype(np.float32))
        data = buf.getvalue()
        write_bytes(self._dir(key) / f"{sha256_bytes(data)}.npz", data)

    def encoder_dir(self, key: str) -> Path:
        return self.root / "encoders" / key


STALE_TEMP_S = 3600.0


class NoCache(EmbeddingCache):
    """Keeps nothing: for streamed training, whose feature files are themselves the cache (a
    per-text cache would store every vector twice, and its lookups read every shard)."""

    def __init__(self) -> None:
        super().__init__(Path(os.devnull))

    def lookup(self, key: str, digests: list[bytes]) -> dict[bytes, np.ndarray]:
        return {}

    def add(self, key: str, digests: list[bytes], vectors: np.ndarray) -> None:
        return None


def _drop_stale_temps(folder: Path) -> None:
    """Temporary files a killed writer left behind more than an hour ago: ``.<name>.*.tmp`` (ours) and
    ``.tmp??????`` (safetensors writes through one of its own)."""
    now = time.time()
    for tmp in [*folder.glob(".*.tmp"), *folder.glob(".tmp??????")]:
        try:
            if now - tmp.stat().st_mtime > STALE_TEMP_S:
                tmp.unlink()
        except OSError:
            pass


def fit_encoder(
    enc: Encoder, fit_texts: list[str] | None, cache: EmbeddingCache | None = None, stats: EmbedStats | None = None
) -> Encoder:
    """``enc`` with each learning part fitted on ``fit_texts``: its state read back from the cache
    when this corpus was fitted before, else fitted and stored there. Fitted parts stay as they are."""
    cache = cache or EmbeddingCache()
    for leaf in leaves(enc):
        if not leaf.needs_fitting:
            continue
        if fit_texts is None:
            raise ValueError(f"{leaf.name}: needs training texts to fit on")
        leaf.fit_digest = sha256_texts(fit_texts)  # the key the fitted state is stored under
        folder = cache.encoder_dir(leaf.key)
        if folder.is_dir():
            _drop_stale_temps(folder)
        if (folder / "encoder.json").is_file():
            try:
                leaf.load_arrays(_load_arrays(folder))
                continue
            except Exception:
                pass  # a broken state file: fit again below
        t0 = time.perf_counter()
        try:
            leaf.fit(fit_texts)
        except BaseException:
            leaf.fit_digest = ""  # not fitted after all: the digest above only named the cache folder
            raise
        if stats:
            stats.fit_s += time.perf_counter() - t0
        save_encoder(leaf, folder)
    return enc


def _load_arrays(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return {k.split(".", 1)[1]: v for k, v in load_file(str(folder / "encoder.safetensors")).items()}


def progress_total(enc: Encoder, n_texts: int) -> int:
    """What :func:`embed_texts` reports to its ``progress`` for ``n_texts`` texts: each text once per
    encoder part."""
    return n_texts * len(leaves(enc))


def embed_texts(
    enc: Encoder,
    texts: list[str],
    fit_texts: list[str] | None = None,
    cache: EmbeddingCache | None = None,
    stats: EmbedStats | None = None,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Embed ``texts`` into an array of shape (n, enc.dim), encoding only what the cache lacks.

    ``fit_texts`` are the training originals for encoders that fit (tf-idf); ``progress``
    is called with counts of texts done (encoded, found in the cache, or repeats) that add up to
    :func:`progress_total`.

    With ``enc.title_weight`` w > 0, a text with a title line (see ``abexrat.text.compose_text``)
    becomes l2(l2(v(text)) + w l2(v(title))): the title counts as much as the whole narrative
    however long that is. Texts without a title (a bare narrative, a synthetic row) keep l2(v(text)).
    """
    cache = cache or EmbeddingCache()
    stats = stats if stats is not None else EmbedStats()
    X = _embed_plain(enc, texts, fit_texts, cache, stats, progress)
    if enc.title_weight <= 0:
        return X
    X = _unit(X)
    titled = [i for i, t in enumerate(texts) if split_title(t)[0]]
    if titled:
        T = _embed_plain(enc, [split_title(texts[i])[0] for i in titled], fit_texts, cache, stats, None)
        X[titled] = _unit(X[titled] + enc.title_weight * _unit(T))
    return X


def _unit(X: np.ndarray) -> np.ndarray:
    return (X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _embed_plain(
    enc: Encoder,
    texts: list[str],
    fit_texts: list[str] | None,
    cache: EmbeddingCache,
    stats: EmbedStats,
    progress: Callable[[int], None] | None,
) -> np.ndarray:
    fit_encoder(enc, fit_texts, cache, stats)
    digests = [text_digest(t) for t in texts]
    outs = []
    for leaf in leaves(enc):
        found = cache.lookup(leaf.key, digests)
        missing = sorted({d: i for i, d in enumerate(digests) if d not in found}.values())
        stats.cached += len(texts) - len(missing)
        if progress and len(texts) > len(missing):  # found in the cache, or a repeat of another text
            progress(len(texts) - len(missing))
        if missing:
            t0 = time.perf_counter()
            for start in range(0, len(missing), ENCODE_CHUNK):
                chunk = missing[start : start + ENCODE_CHUNK]
                vecs = leaf.encode([texts[i] for i in chunk])
                cache.add(leaf.key, [digests[i] for i in chunk], vecs)
                found.update({digests[i]: v for i, v in zip(chunk, vecs)})
                if progress:
                    progress(len(chunk))
            dt = time.perf_counter() - t0
            stats.encode_s += dt
            stats.per_encoder[leaf.key] = stats.per_encoder.get(leaf.key, 0.0) + dt
            stats.encoded += len(missing)
        outs.append(np.stack([found[d] for d in digests]) if texts else np.zeros((0, leaf.dim), np.float32))
    return enc.combine(outs) if enc.parts else outs[0]
