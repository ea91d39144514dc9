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
    """Base class. Subclasses set ``name``/``version`` and implement ``encode`` (n texts -> (n, dim)
    float32); one that learns from training texts sets ``needs_fit`` and implements ``fit`` (which
    returns the encoder), ``fitted`` and ``set_fit_corpus``."""

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    needs_fit: ClassVar[bool] = False
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
    def fitted(self) -> bool:
        """Whether ``encode`` may run now: always, for an encoder that does not fit."""
        return not self.needs_fit

    def set_fit_corpus(self, texts: list[str]) -> None:
        """Name the corpus ``fit`` will learn from, so that ``key`` (the cache's address) is final
        before fitting: cached vectors are then found without fitting at all. A no-op for an
        encoder that does not fit."""

    def fit(self, texts: list[str]) -> Encoder:
        """Learn from training texts (a no-op for pretrained encoders); returns the encoder, as
        scikit-learn's ``fit`` does."""
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
