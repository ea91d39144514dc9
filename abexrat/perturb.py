"""Natural perturbations of report texts, seeded, and their vectors under a run's own encoder.

Each perturbation maps a report to a report a user might send instead:

- ``title_removed``: the narrative without its title line;
- ``first_sentence``: the narrative's first sentence only (no title);
- ``char_noise``: typos: each character, at ``rate``, deleted, swapped with the next one, or
  replaced by a random lower-case letter (one of the three, equally likely);
- ``word_dropout``: each word dropped at ``rate`` (a report keeps at least one word).

The noisy ones draw from a generator seeded by (seed, perturbation, report index), so a report is
perturbed the same way whatever else is perturbed beside it; the title and the narrative are
perturbed separately, and the title line stays a title line.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from abexrat.text import TITLE_SEP, first_sentence, split_title

if TYPE_CHECKING:
    from abexrat.config import RobustnessConfig
    from abexrat.data import Dataset
    from abexrat.embed import EmbeddingCache
    from abexrat.encoders import Encoder

PERTURBATIONS = ("title_removed", "first_sentence", "char_noise", "word_dropout")
_LETTERS = np.array(list(string.ascii_lowercase))


def _rng(seed: int, name: str, i: int) -> np.random.Generator:
    return np.random.default_rng([seed, PERTURBATIONS.index(name), i])


def char_noise(text: str, rate: float, rng: np.random.Generator) -> str:
    """``text`` with deletions, swaps with the next character, and substitutions, each character at ``rate``."""
    chars = list(text)
    hits = np.flatnonzero(rng.random(len(chars)) < rate)
    ops = rng.integers(0, 3, len(hits))
    subs = _LETTERS[rng.integers(0, len(_LETTERS), len(hits))]
    deleted = np.zeros(len(chars), bool)
    for k, (i, op) in enumerate(zip(hits, ops)):
        if op == 0:
            deleted[i] = True
        elif op == 1 and i + 1 < len(chars):
            chars[i], chars[i + 1] = chars[i + 1], chars[i]
        elif op == 2:
            chars[i] = str(subs[k])
    return "".join(c for c, gone in zip(chars, deleted) if not gone)


def word_dropout(text: str, rate: float, rng: np.random.Generator) -> str:
    """``text`` without each word at ``rate``; a text keeps at least one of its words."""
    words = text.split()
    if not words:
        return text
    keep = rng.random(len(words)) >= rate
    if not keep.any():
        keep[int(rng.integers(0, len(words)))] = True
    return " ".join(w for w, k in zip(words, keep) if k)


def _per_part(text: str, fn: Callable[[str], str]) -> str:
    title, rest = split_title(text)
    return f"{fn(title)}{TITLE_SEP}{fn(rest)}" if title else fn(rest)


def perturb(texts: list[str], name: str, rate: float = 0.0, seed: int = 0) -> list[str]:
    """``texts`` under the perturbation ``name`` (one of :data:`PERTURBATIONS`) at ``rate``, seeded."""
    if name == "title_removed":
        return [split_title(t)[1] for t in texts]
    if name == "first_sentence":
        return [first_sentence(t) or split_title(t)[1] for t in texts]
    noise = {"char_noise": char_noise, "word_dropout": word_dropout}.get(name)
    if noise is None:
        raise ValueError(f"unknown perturbation {name!r} (known: {', '.join(PERTURBATIONS)})")
    out = []
    for i, t in enumerate(texts):
        rng = _rng(seed, name, i)
        out.append(_per_part(t, lambda part, rng=rng: noise(part, rate, rng)))  # type: ignore[misc]
    return out


def rates(cfg: RobustnessConfig) -> dict[str, float]:
    return {"title_removed": 0.0, "first_sentence": 0.0, "char_noise": cfg.char_noise, "word_dropout": cfg.word_dropout}


def perturbed_texts(texts: list[str], cfg: RobustnessConfig) -> dict[str, list[str]]:
    """Every perturbation of ``texts`` under the robustness config's rates and seed."""
    return {name: perturb(texts, name, rate, cfg.seed) for name, rate in rates(cfg).items()}


def perturbed_vectors(
    texts: dict[str, list[str]],
    enc: Encoder,
    cfg: RobustnessConfig,
    fit_texts: list[str] | None = None,
    cache: EmbeddingCache | None = None,
    progress: Any = None,
) -> dict[str, dict[str, np.ndarray]]:
    """Per split (``texts``: split -> its reports), per perturbation, the perturbed reports' vectors,
    (n, dim) float32, encoded in one call (cached as any text); plus per split under ``"_changed"``
    the share of reports each perturbation changed (as a 1-d array in :data:`PERTURBATIONS` order).
    ``progress`` (a console ``Progress``) draws the encoding bar."""
    from abexrat.embed import embed_texts, progress_total

    if not cfg.enabled or not cfg.natural:
        return {}
    parts: list[tuple[str, str, list[str], list[str]]] = []
    for split, originals in texts.items():
        for name, changed in perturbed_texts(originals, cfg).items():
            parts.append((split, name, originals, changed))
    flat = [t for _, _, _, changed in parts for t in changed]
    bar = progress.task("encoding perturbed reports", progress_total(enc, len(flat))) if progress and flat else None
    X = embed_texts(enc, flat, fit_texts=fit_texts, cache=cache, progress=bar) if flat else np.zeros((0, 0), np.float32)
    out: dict[str, dict[str, np.ndarray]] = {split: {} for split in texts}
    start = 0
    for split, name, originals, changed in parts:
        out[split][name] = X[start : start + len(changed)]
        start += len(changed)
        share = np.mean([a != b for a, b in zip(originals, changed)]) if originals else 0.0
        out[split].setdefault("_changed", np.zeros(len(PERTURBATIONS), np.float32))[PERTURBATIONS.index(name)] = share
    return out


def dataset_vectors(
    ds: Dataset, enc: Encoder, cfg: RobustnessConfig, cache: EmbeddingCache | None = None, progress: Any = None
) -> dict[str, dict[str, np.ndarray]]:
    """:func:`perturbed_vectors` of a dataset's val and test reports (the encoder fitted as for training)."""
    from abexrat.features import fit_texts

    texts = {"val": ds.val.texts, "test": ds.test.texts}
    return perturbed_vectors(texts, enc, cfg, fit_texts(ds, enc), cache, progress)
