"""The encoder contract every encoder implements (the registered ones in :mod:`abexrat.encoders`,
``hf:`` in :mod:`abexrat.hf`, ``vllm:`` in :mod:`abexrat.vllm`).

It lives apart from the registry so that an encoder module can subclass it while the registry
imports that module to dispatch on a name's ``hf:``/``vllm:`` prefix.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import numpy as np

from abexrat.core.io import sha256_bytes


def _l2(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(n, 1e-12)).astype(np.float32)


class Encoder:
    """Base class, in scikit-learn's spirit: ``fit(texts)`` learns from training texts and returns
    the encoder (a no-op for a pretrained one); ``encode(texts)`` maps n texts to (n, dim) float32.

    Subclasses set ``name``/``version`` and implement ``encode``. One that learns sets ``learns`` and
    implements ``fit``, which records ``fit_digest``, the digest of the texts it learned from: it is
    part of ``key``, so cached vectors are found by the corpus they came from
    (:func:`abexrat.embed.fit_encoder` reads a corpus's fitted state back from the cache).
    """

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    learns: ClassVar[bool] = False
    # Digest of the texts a learning encoder was fitted on; "" until it is (and for pretrained ones).
    fit_digest: str = ""
    parts: tuple[Encoder, ...] = ()
    # A titled report's vector is l2(l2(v(text)) + title_weight * l2(v(title))) (``embed_texts``).
    # Set after construction (``encoder.title_weight``), not an option: it does not change the
    # vector of any one text, so per-text caches stay valid whatever the weight.
    title_weight: float = 0.0
    # Fit (tf-idf) on the synthetic pool's texts too, not only the training originals: the rare
    # classes' vocabulary then gets directions of its own in the SVD (``encoder.fit_synthetic``).
    fit_synthetic: bool = False

    def options(self) -> dict[str, Any]:
        return {}

    @property
    def dim(self) -> int:
        raise NotImplementedError

    @property
    def key(self) -> str:
        opts = json.dumps(self.options(), sort_keys=True)
        return f"{self.name}-v{self.version}-{sha256_bytes(opts.encode())[:12]}"

    @property
    def needs_fitting(self) -> bool:
        """Whether ``encode`` must wait for ``fit``: a learning encoder not fitted yet."""
        return self.learns and not self.fit_digest

    def fit(self, texts: list[str]) -> Encoder:
        """Learn from training texts (a no-op for pretrained encoders); returns the encoder."""
        return self

    def encode(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError

    def combine(self, parts: list[np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    # Saved as ``encoder.json`` (name + options) and ``encoder.safetensors`` (fitted arrays).
    def arrays(self) -> dict[str, np.ndarray]:
        return {}

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        pass
