"""Frozen text encoders, a registry of them, and how a fitted one is saved.

Every encoder maps a list of n texts to a float32 array of shape (n, dim) and has a
``key``: its name, version, options and (when it is fitted) a digest of its fit corpus.
The key addresses the embedding cache, so a change to any of these re-encodes.

- ``wordllama``: 256-d static embeddings shipped inside the wordllama wheel.
- ``tfidf-svd``: tf-idf on word n-grams, then truncated SVD, fitted on training originals.
- ``combined``: any of these side by side (each part L2-normalized and weighted, then concatenated).
- ``hybrid``: wordllama beside tf-idf/SVD (the offline default's pair, tf-idf options as flat keys).
- ``hf:<model id or path>``: transformers AutoModel, mean or last-token pooling.
- ``vllm:<model>``: vLLM through ``ray.data.llm`` (the ``gpu`` extra); see ``abexrat.vllm``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from abexrat.core.errors import UserError
from abexrat.core.io import atomic_path, sha256_texts, write_json
from abexrat.encoder_base import Encoder, _l2

ENCODERS: dict[str, Callable[..., Encoder]] = {}


def register_encoder(name: str) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        ENCODERS[name] = cls
        return cls

    return deco


@register_encoder("wordllama")
@dataclass
class WordLlamaEncoder(Encoder):
    """Static token embeddings averaged over the text (WordLlama ``l2_supercat``)."""

    name: ClassVar[str] = "wordllama"
    dim_: int = 256
    _model: Any = field(default=None, repr=False)

    def options(self) -> dict[str, Any]:
        return {"dim": self.dim_}

    @property
    def dim(self) -> int:
        return self.dim_

    def _load(self) -> Any:
        if self._model is None:
            import wordllama
            from wordllama import WordLlama

            # Its own lookup of bundled weights is broken: point it at the package folder.
            pkg = Path(wordllama.__file__).parent
            self._model = WordLlama.load(
                cache_dir=pkg, disable_download=True, dim=256, trunc_dim=self.dim_ if self.dim_ != 256 else None
            )
        return self._model

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return _l2(np.asarray(self._load().embed(texts, norm=True, batch_size=256), np.float32))


@register_encoder("tfidf-svd")
@dataclass
class TfidfSvdEncoder(Encoder):
    """TF-IDF over ngram_min..ngram-grams (sublinear tf), reduced by truncated SVD, L2-normalized.

    ``analyzer``: ``word`` n-grams, or ``char_wb`` (character n-grams inside word boundaries: a
    word's stem and its forms share features, "bitten" with "bite", "seizures" with "seizure").
    """

    name: ClassVar[str] = "tfidf-svd"
    learns: ClassVar[bool] = True
    dim_: int = 384
    ngram: int = 2
    min_df: int = 2
    max_features: int = 20000
    analyzer: Literal["word", "char_wb"] = "word"
    ngram_min: int = 1
    fit_digest: str = ""
    _vectorizer: Any = field(default=None, repr=False)
    _components: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.analyzer not in ("word", "char_wb"):
            raise UserError(f"encoder.options: analyzer must be word or char_wb, got {self.analyzer!r}")
        if not 1 <= self.ngram_min <= self.ngram:
            raise UserError(f"encoder.options: need 1 <= ngram_min <= ngram, got {self.ngram_min} and {self.ngram}")

    def options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {
            "dim": self.dim_,
            "ngram": self.ngram,
            "min_df": self.min_df,
            "max_features": self.max_features,
            "fit": self.fit_digest,
        }
        # Named only when not word 1..ngram-grams, so the word encoder's keys (and caches) stay as they were.
        if (self.analyzer, self.ngram_min) != ("word", 1):
            opts.update(analyzer=self.analyzer, ngram_min=self.ngram_min)
        return opts

    @property
    def dim(self) -> int:
        return self.dim_

    def _vectorizer_for(self, vocabulary: dict[str, int] | None = None) -> Any:
        from sklearn.feature_extraction.text import TfidfVectorizer

        return TfidfVectorizer(
            analyzer=self.analyzer,
            ngram_range=(self.ngram_min, self.ngram),
            min_df=self.min_df,
            sublinear_tf=True,
            max_features=self.max_features,
            strip_accents="unicode",
            vocabulary=vocabulary,
            dtype=np.float32,
        )

    def fit(self, texts: list[str]) -> TfidfSvdEncoder:
        from sklearn.decomposition import TruncatedSVD

        vec = self._vectorizer_for()
        tf = vec.fit_transform(texts)
        k = min(self.dim_, tf.shape[1] - 1, tf.shape[0] - 1)
        if k < 1:
            raise UserError("tfidf-svd: too few training texts or terms to fit")
        svd = TruncatedSVD(n_components=k, random_state=0, algorithm="randomized", n_iter=5)
        svd.fit(tf)
        comps = np.zeros((self.dim_, tf.shape[1]), np.float32)
        comps[:k] = svd.components_
        self._vectorizer, self._components = vec, comps
        self.fit_digest = sha256_texts(texts)
        return self

    def encode(self, texts: list[str]) -> np.ndarray:
        if self._components is None:
            raise RuntimeError("tfidf-svd: encode before fit")
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        tf = self._vectorizer.transform(texts)
        return _l2(np.asarray(tf @ self._components.T, np.float32))

    def arrays(self) -> dict[str, np.ndarray]:
        vocab = sorted(self._vectorizer.vocabulary_, key=self._vectorizer.vocabulary_.get)
        # Terms travel as one UTF-8 blob with offsets: safetensors holds numeric arrays only.
        blob = "\n".join(vocab).encode()
        return {
            "idf": self._vectorizer.idf_.astype(np.float32),
            "components": self._components,
            "vocab_utf8": np.frombuffer(blob, np.uint8).copy(),
        }

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        terms = bytes(arrays["vocab_utf8"]).decode().split("\n")
        vec = self._vectorizer_for({t: i for i, t in enumerate(terms)})
        vec.idf_ = arrays["idf"]
        self._vectorizer, self._components = vec, arrays["components"]


class Concatenation(Encoder):
    """Several encoders side by side: each part's vectors L2-normalized and scaled by its weight,
    then concatenated and scaled to unit norm. Subclasses set ``parts`` and ``weights``."""

    weights: tuple[float, ...] = ()

    def options(self) -> dict[str, Any]:
        return {"weights": list(self.weights), "parts": [p.key for p in self.parts]}

    @property
    def dim(self) -> int:
        return sum(p.dim for p in self.parts)

    def combine(self, parts: list[np.ndarray]) -> np.ndarray:
        """One (n, d_k) array per part -> (n, sum d_k), unit rows."""
        out = np.concatenate([w * _l2(p) for w, p in zip(self.weights, parts)], axis=1)
        return _l2(out)


@register_encoder("combined")
@dataclass
class CombinedEncoder(Concatenation):
    """Any registered encoders side by side, chosen by configuration.

    ``encoders`` lists the parts in the ``encoder`` section's own form, ``{name, options, weight}``
    (weight 1 when left out); for example a transformer beside character tf-idf::

        encoder:
          name: combined
          options:
            encoders:
              - {name: "hf:sentence-transformers/all-MiniLM-L6-v2"}
              - {name: tfidf-svd, options: {analyzer: char_wb, ngram_min: 2, ngram: 5}, weight: 0.5}
    """

    name: ClassVar[str] = "combined"
    encoders: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.encoders:
            raise UserError("encoder.options.encoders: name at least one encoder")
        parts, weights = [], []
        for i, spec in enumerate(self.encoders):
            where = f"encoder.options.encoders[{i}]"
            unknown = set(spec) - {"name", "options", "weight"}
            if not isinstance(spec.get("name"), str) or unknown:
                raise UserError(f"{where}: expected {{name, options, weight}}, got keys {sorted(spec)}")
            part = make_encoder(spec["name"], **spec.get("options", {}))
            if part.parts:
                raise UserError(f"{where}: {spec['name']} combines encoders itself; list its parts instead")
            parts.append(part)
            weights.append(float(spec.get("weight", 1.0)))
        self.parts, self.weights = tuple(parts), tuple(weights)


@register_encoder("hybrid")
@dataclass
class HybridEncoder(Concatenation):
    """wordllama beside tf-idf/SVD: the offline default's pair, with the tf-idf options as flat keys.

    ``weights`` scale each part before the concatenation (the mix between the two).
    """

    name: ClassVar[str] = "hybrid"
    wordllama_dim: int = 256
    tfidf_dim: int = 384
    weights: tuple[float, ...] = (1.0, 1.0)
    tfidf_ngram: int = 2
    tfidf_min_df: int = 2
    tfidf_max_features: int = 20000
    tfidf_analyzer: Literal["word", "char_wb"] = "word"
    tfidf_ngram_min: int = 1

    def __post_init__(self) -> None:
        self.weights = tuple(float(w) for w in self.weights)
        if len(self.weights) != 2:
            raise UserError(f"encoder.options.weights: hybrid has 2 parts, got {len(self.weights)} weights")
        self.parts = (
            WordLlamaEncoder(dim_=self.wordllama_dim),
            TfidfSvdEncoder(
                dim_=self.tfidf_dim,
                ngram=self.tfidf_ngram,
                min_df=self.tfidf_min_df,
                max_features=self.tfidf_max_features,
                analyzer=self.tfidf_analyzer,
                ngram_min=self.tfidf_ngram_min,
            ),
        )


def encoder_class(spec: str) -> Callable[..., Encoder] | None:
    """What builds the encoder ``spec`` names: ``hf:<model>`` and ``vllm:<model>`` by prefix (imported
    only then: they bring torch or vLLM), else the registry's entry (None if unknown)."""
    if spec.startswith("hf:"):
        from abexrat.hf import HFEncoder

        return HFEncoder
    if spec.startswith("vllm:"):
        from abexrat.vllm import VLLMEncoder

        return VLLMEncoder
    return ENCODERS.get(spec)


def make_encoder(spec: str, **options: Any) -> Encoder:
    """A registered encoder's name (``"wordllama"``, ``"tfidf-svd"``, ``"combined"``, ``"hybrid"``),
    ``"hf:<model>"`` or ``"vllm:<model>"``, built with its options."""
    if spec.startswith(("hf:", "vllm:")):
        model = spec.split(":", 1)[1]
        return encoder_class(spec)(model=model, **options)
    if spec not in ENCODERS:
        raise UserError(
            f"encoder: unknown encoder {spec!r} (known: {', '.join(sorted(ENCODERS))}, hf:<model>, vllm:<model>)"
        )
    aliases = {"dim": "dim_"}
    try:
        return ENCODERS[spec](**{aliases.get(k, k): v for k, v in options.items()})
    except TypeError as e:
        raise UserError(f"encoder.options: {e}") from None


def encoder_spec(enc: Encoder) -> str:
    return f"{enc.name}:{enc.model}" if enc.name in ("hf", "vllm") else enc.name  # type: ignore[attr-defined]


def leaves(enc: Encoder) -> list[Encoder]:
    """The encoders that actually encode text (a combination's parts, or the encoder itself)."""
    return list(enc.parts) if enc.parts else [enc]


def save_encoder(enc: Encoder, folder: Path) -> None:
    """``encoder.json`` (spec + options) and ``encoder.safetensors`` (fitted arrays of each part)."""
    from safetensors.numpy import save_file

    arrays = {}
    for i, leaf in enumerate(leaves(enc)):
        arrays.update({f"{i}.{k}": v for k, v in leaf.arrays().items()})
    meta = {
        "spec": encoder_spec(enc),
        "key": enc.key,
        "dim": enc.dim,
        "options": {k: v for k, v in _init_options(enc).items()},
        "fit": [leaf.fit_digest for leaf in leaves(enc)],
        "title_weight": enc.title_weight,
    }
    with atomic_path(folder / "encoder.safetensors") as tmp:
        save_file(arrays, str(tmp))
    write_json(folder / "encoder.json", meta)


def load_encoder(folder: Path) -> Encoder:
    from safetensors.numpy import load_file

    meta_path = folder / "encoder.json"
    try:
        meta = json.loads(meta_path.read_text())
        arrays = load_file(str(folder / "encoder.safetensors"))
    except (OSError, ValueError) as e:
        raise UserError(f"{meta_path}: cannot load the run's encoder ({e})") from None
    enc = make_encoder(meta["spec"], **meta["options"])
    for i, (leaf, digest) in enumerate(zip(leaves(enc), meta["fit"])):
        mine = {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith(f"{i}.")}
        if mine:
            leaf.load_arrays(mine)
        if digest:
            leaf.fit_digest = digest
    if enc.key != meta["key"]:
        raise UserError(f"{meta_path}: encoder key mismatch (saved {meta['key']}, rebuilt {enc.key})")
    weight = meta.get("title_weight", 0.0)
    if not isinstance(weight, int | float) or isinstance(weight, bool) or not 0 <= weight <= 100:
        raise UserError(f"{meta_path}: title_weight must be a number in [0, 100], got {weight!r}")
    enc.title_weight = float(weight)
    return enc


def _init_options(enc: Encoder) -> dict[str, Any]:
    """The constructor arguments that rebuild ``enc`` (fitted state excluded)."""
    import dataclasses

    out = {}
    for f in dataclasses.fields(enc):  # type: ignore[arg-type]
        if f.name.startswith("_") or f.name in ("fit_digest", "model"):
            continue
        v = getattr(enc, f.name)
        out["dim" if f.name == "dim_" else f.name] = list(v) if isinstance(v, tuple) else v
    return out
