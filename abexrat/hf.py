"""``hf:<model id or local folder>``: a transformers ``AutoModel`` pooled into one vector per text.

- ``mean`` pooling: the attention-mask-weighted mean of the last hidden states (BERT-style encoders).
- ``last`` pooling: the hidden state of each text's last real token (decoder embedders such as
  Qwen3-Embedding), located from the attention mask so that left and right padding both work.

Vectors are float32 and L2-normalized. The key holds the model, pooling, truncation, instruction and
revision and, for a local folder, a digest of its files, so retrained weights never reuse old vectors.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from abexrat.encoders import Encoder, _l2
from abexrat.errors import UserError
from abexrat.io import sha256_file

POOLINGS = ("mean", "last")
# The files of a local model folder whose bytes decide its vectors.
FINGERPRINT_GLOBS = ("config.json", "tokenizer.json", "tokenizer_config.json", "*.safetensors", "*.bin")


def folder_fingerprint(folder: Path) -> str:
    """sha256 over the names and contents of ``folder``'s config, tokenizer and weight files."""
    h = hashlib.sha256()
    for path in sorted({p for g in FINGERPRINT_GLOBS for p in folder.glob(g) if p.is_file()}):
        h.update(f"{path.name}\0{sha256_file(path)}\n".encode())
    return h.hexdigest()


@dataclass
class HFEncoder(Encoder):
    """Pretrained transformers model; ``pooling=""`` picks "last" for Qwen models, else "mean".

    ``instruction`` is prepended to every text (Qwen3-Embedding's query prompt, for instance).
    """

    name: ClassVar[str] = "hf"
    model: str = ""
    pooling: str = ""
    max_length: int = 512
    batch_size: int = 32
    instruction: str = ""
    revision: str | None = None
    _model: Any = field(default=None, repr=False)
    _tokenizer: Any = field(default=None, repr=False)
    _config: Any = field(default=None, repr=False)
    _fingerprint: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.pooling not in ("", *POOLINGS):
            raise UserError(f"encoder.options.pooling: {self.pooling!r} is not one of {', '.join(POOLINGS)}")

    @property
    def resolved_pooling(self) -> str:
        return self.pooling or ("last" if "qwen" in self.model.lower() else "mean")

    def options(self) -> dict[str, Any]:
        opts = {
            "model": self.model,
            "pooling": self.resolved_pooling,
            "max_length": self.max_length,
            "instruction": self.instruction,
            "revision": self.revision,
        }
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

    def _loading(self, from_pretrained: Any, **kwargs: Any) -> Any:
        """``from_pretrained(model)``, with a missing folder or an unreachable hub as a UserError."""
        if self.model.startswith(("/", ".", "~")) and not Path(self.model).expanduser().is_dir():
            # transformers would call it a bad hub id: say what is really wrong.
            raise UserError(f"hf:{self.model}: no such model folder")
        try:
            return from_pretrained(self.model, revision=self.revision, **kwargs)
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
        # Longest first, so each batch holds texts of similar length and little padding.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                batch = tokenizer(
                    [self.instruction + texts[i] for i in rows],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(model.device)
                mask = batch["attention_mask"]  # (b, L)
                if tokenizer.padding_side == "left":
                    # Real tokens count positions from 0 whatever the padding before them.
                    batch["position_ids"] = (mask.cumsum(1) - 1).clamp(min=0)
                hidden = model(**batch).last_hidden_state.float()  # (b, L, dim)
                out[rows] = self.pool(hidden, mask).cpu().numpy()
        return _l2(out)

    def pool(self, hidden: Any, mask: Any) -> Any:
        """Hidden states (b, L, dim) and attention mask (b, L) -> (b, dim), not normalized."""
        import torch

        if self.resolved_pooling == "mean":
            weights = mask.unsqueeze(-1).to(hidden.dtype)  # (b, L, 1)
            return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        # The last 1 of each mask row: its index counted from the right end, mirrored.
        last = mask.shape[1] - 1 - mask.flip(1).argmax(1)  # (b,)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
