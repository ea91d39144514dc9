"""``vllm:<model>``: embeddings from vLLM through Ray Data LLM (``pip install 'abexrat[gpu]'``).

Ray 2.60's ``ray.data.llm`` runs a ``vLLMEngineProcessorConfig`` with ``task_type="embed"`` as a
Ray Data pipeline: each row brings its text as ``prompt`` and leaves with ``embeddings`` (a 1-d
array). The chat-template, tokenize and detokenize stages are switched off: the texts are used as
they are, vLLM tokenizes them itself (so that ``tokenization_kwargs`` can truncate them), and there
are no generated tokens to detokenize.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar

import numpy as np

from abexrat.core.errors import UserError
from abexrat.encoder_base import Encoder, _l2


def vllm_embed_config(
    model: str,
    *,
    concurrency: int = 1,
    batch_size: int = 64,
    tensor_parallel_size: int = 1,
    max_model_len: int | None = None,
    engine_kwargs: dict | None = None,
) -> dict:
    """Keyword arguments of ``ray.data.llm.vLLMEngineProcessorConfig`` for an embedding job.

    ``concurrency`` is the number of vLLM engine replicas (data parallel), each spread over
    ``tensor_parallel_size`` GPUs; ``batch_size`` rows go to an engine at a time.
    """
    # The named arguments win over the same keys in ``engine_kwargs``.
    engine = {**(engine_kwargs or {}), "tensor_parallel_size": tensor_parallel_size}
    if max_model_len is not None:
        engine["max_model_len"] = max_model_len
    return {
        "model_source": model,
        "task_type": "embed",
        "engine_kwargs": engine,
        "concurrency": concurrency,
        "batch_size": batch_size,
        "chat_template_stage": False,
        "tokenize_stage": False,
        "detokenize_stage": False,
    }


def _gpu_extra_error(model: str) -> UserError:
    return UserError(f"vllm:{model}: needs the gpu extra: pip install 'abexrat[gpu]'")


def _to_request(row: dict[str, Any], max_length: int | None) -> dict[str, Any]:
    # vLLM refuses an empty prompt: a blank stands in for an empty text.
    out: dict[str, Any] = {"prompt": row["text"] or " "}
    if max_length is not None:
        out["tokenization_kwargs"] = {"truncation": True, "max_length": max_length}
    return out


def _from_output(row: dict[str, Any]) -> dict[str, Any]:
    # Input columns travel through every stage, so the row index comes back with its vector.
    return {"idx": row["idx"], "embedding": np.asarray(row["embeddings"], np.float32)}


def build_embed_processor(model: str, **options: Any) -> Any:
    """A Ray Data LLM processor: rows ``{"idx", "text"}`` -> rows ``{"idx", "embedding"}``;
    ``options``: :func:`vllm_embed_config`'s."""
    try:
        from ray.data.llm import build_processor, vLLMEngineProcessorConfig
    except ImportError:
        raise _gpu_extra_error(model) from None
    config = vLLMEngineProcessorConfig(**vllm_embed_config(model, **options))
    max_length = options.get("max_model_len")
    return build_processor(config, preprocess=partial(_to_request, max_length=max_length), postprocess=_from_output)


@dataclass
class VLLMEncoder(Encoder):
    """vLLM embeddings on GPUs; ``max_model_len`` truncates the texts (and so is part of the key)."""

    name: ClassVar[str] = "vllm"
    model: str = ""
    concurrency: int = 1
    batch_size: int = 64
    tensor_parallel_size: int = 1
    max_model_len: int | None = None
    _dim: int | None = field(default=None, repr=False)

    def options(self) -> dict[str, Any]:
        # Replicas, batch size and tensor parallelism change the speed, not the vectors.
        return {"model": self.model, "max_model_len": self.max_model_len}

    @property
    def dim(self) -> int:
        if self._dim is None:
            from transformers import AutoConfig

            try:
                self._dim = int(AutoConfig.from_pretrained(self.model).hidden_size)
            except (OSError, ValueError) as e:
                reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                raise UserError(f"vllm:{self.model}: cannot read the model config ({reason})") from None
        return self._dim

    def encode(self, texts: list[str]) -> np.ndarray:
        """n texts -> (n, dim) float32, unit rows, in input order."""
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        if importlib.util.find_spec("vllm") is None:
            raise _gpu_extra_error(self.model)
        import ray

        processor = build_embed_processor(
            self.model,
            concurrency=self.concurrency,
            batch_size=self.batch_size,
            tensor_parallel_size=self.tensor_parallel_size,
            max_model_len=self.max_model_len,
        )
        rows = processor(ray.data.from_items([{"idx": i, "text": t} for i, t in enumerate(texts)])).take_all()
        # Ray Data does not keep row order: put each vector back at its index.
        rows.sort(key=lambda r: r["idx"])
        out = np.stack([np.asarray(r["embedding"], np.float32) for r in rows])
        self._dim = out.shape[1]
        return _l2(out)
