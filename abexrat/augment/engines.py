"""Generation engines: Ray Data stages that turn chat messages into ``generated_text``.

Every engine takes the same rows and gives the same rows back, so the pipeline never asks which
one runs::

    in:  messages         [{"role": str, "content": str}, ...]   (OpenAI chat format)
         sampling_params  {"temperature": float, "top_p": float, "max_tokens": int, "seed": int,
                          "repetition_penalty": float (only when not 1)}
         ...              any other columns named in ``keep`` travel through unchanged
    out: the ``keep`` columns + generated_text (str) + num_generated_tokens (int)

``sampling_params`` uses vLLM's ``SamplingParams`` names, so the vLLM engine passes it on as is.

- ``transformers``: an actor pool of :class:`TransformersGenerator` (``map_batches``) doing batched
  ``generate`` on CPU or GPU; causal chat LMs and encoder-decoder models (BART) alike.
- ``vllm``: ``ray.data.llm.vLLMEngineProcessorConfig`` + ``build_processor`` (the ``gpu`` extra);
  :func:`vllm_generate_config` builds its arguments and is testable without vLLM.

Registered in :data:`ENGINES` (name -> class), like the encoders.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from abexrat.core.errors import UserError

if TYPE_CHECKING:
    from ray.data import Dataset

    from abexrat.augment.config import StepConfig

OUTPUT_COLUMNS = ("generated_text", "num_generated_tokens")
ENGINES: dict[str, type[Engine]] = {}


def register_engine(name: str) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        cls.name = name
        ENGINES[name] = cls
        return cls

    return deco


def sampling_params(step: StepConfig, seed: int) -> dict[str, Any]:
    """One row's sampling parameters, named as vLLM's ``SamplingParams`` names them."""
    params = {
        "temperature": float(step.temperature),
        "top_p": float(step.top_p),
        "max_tokens": int(step.max_new_tokens),
        "seed": int(seed),
    }
    if step.repetition_penalty != 1.0:  # vLLM's default too: named only when it changes anything
        params["repetition_penalty"] = float(step.repetition_penalty)
    return params


def model_identity(model: str) -> str:
    """What decides a model's outputs: a hub id as it is, a local folder or a pinned copy that is
    not the hub's own files (a quantized GGUF) by a digest (resolving fetches the model if needed)."""
    from abexrat.hub import resolve_model

    try:
        return resolve_model(model).identity
    except UserError:
        if Path(model).expanduser().exists() or model.startswith(("/", ".", "~")):
            raise
        return model  # unreachable now: named as the hub names it; loading it says why it failed


def check_actor_fit(abstract: StepConfig, expand: StepConfig, cluster: dict[str, float]) -> None:
    """Both steps' ``transformers`` actor pools run at once (abstracts stream into expansions), so
    their reservations must fit the cluster together: if they cannot, Ray Data waits forever."""
    steps = [(n, s) for n, s in (("abstract", abstract), ("expand", expand)) if s.engine == "transformers"]
    for resource, key in (("CPU", "num_cpus"), ("GPU", "num_gpus")):
        need = sum(float(getattr(s, key)) * s.concurrency for _, s in steps)
        have = float(cluster.get(resource, 0.0))
        if need > have + 1e-9:
            parts = " + ".join(f"{n}.{key} {getattr(s, key):g} x concurrency {s.concurrency}" for n, s in steps)
            raise UserError(
                f"{parts} reserve {need:g} {resource}s at once, and this Ray cluster has {have:g}: "
                f"lower {key} or concurrency"
            )


class Engine:
    """Base class: ``apply`` adds the generation stage(s) to a Ray dataset."""

    name: ClassVar[str] = ""

    def __init__(self, step: StepConfig) -> None:
        self.step = step

    def apply(self, ds: Dataset, keep: list[str]) -> Dataset:
        raise NotImplementedError


# ---------------------------------------------------------------- transformers


class SeededSampler:
    """A logits processor that samples each row from its own seeded generator.

    ``generate`` then runs greedy over the one-hot scores this returns, so what a row gets depends
    on its own logits and seed only, not on the other rows of its batch or on the global RNG:
    the same report gets the same samples in any batch, on any actor.

    temperatures, top_ps, seeds: one per row (b,). Temperature 0 means argmax.
    """

    def __init__(self, temperatures: list[float], top_ps: list[float], seeds: list[int]) -> None:
        import torch

        self.temperatures = torch.tensor(temperatures, dtype=torch.float32)
        self.top_ps = torch.tensor(top_ps, dtype=torch.float32)
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        """scores (b, V) -> (b, V): 0 at each row's chosen token, -inf elsewhere."""
        import torch

        logits = scores.float()
        temps = self.temperatures.to(logits.device)
        greedy = temps <= 0
        probs = torch.softmax(logits / temps.clamp(min=1e-6).unsqueeze(1), dim=-1)
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # Top-p: keep the smallest prefix whose mass reaches p (the first token always stays).
        before = sorted_p.cumsum(-1) - sorted_p
        sorted_p = sorted_p * (before < self.top_ps.to(logits.device).unsqueeze(1))
        cdf = sorted_p.cumsum(-1)  # (b, V), non-decreasing, last = kept mass
        # One uniform per row from the row's own stream; drawn for greedy rows too so that
        # every row's stream advances the same way whatever its temperature.
        u = torch.stack([torch.rand((), generator=g) for g in self.generators]).to(logits.device)
        pos = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1)).clamp(max=cdf.shape[1] - 1)
        picked = order.gather(1, pos).squeeze(1)
        picked = torch.where(greedy, logits.argmax(-1), picked)
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(out.shape[0], device=out.device), picked] = 0.0
        return out


def _as_list(value: Any) -> Any:
    """Arrow-backed numpy batches hold nested lists as arrays: plain Python values for the tokenizer."""
    if isinstance(value, np.ndarray):
        return [_as_list(v) for v in value]
    if isinstance(value, dict):
        return {k: _as_list(v) for k, v in value.items()}
    return value


class TransformersGenerator:
    """``map_batches`` actor: one model per actor, batched ``generate`` with a seeded sampler.

    Decoder-only chat models get the chat template (``chat_template_kwargs``, e.g. Qwen3's
    ``enable_thinking=False``) and left padding; encoder-decoder models (``is_encoder_decoder``,
    BART) get the last message's content as their input text.
    """

    def __init__(
        self,
        model: str,
        device: str = "auto",
        threads: int = 1,
        chat_template_kwargs: dict[str, Any] | None = None,
        max_input_tokens: int | None = None,
        keep: list[str] | None = None,
    ) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

        cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
        self.device = "cuda" if cuda else "cpu"
        if not cuda:
            # Actors share the node's cores: one thread each unless the actor reserved more.
            torch.set_num_threads(max(1, threads))
        dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if cuda else torch.float32
        from abexrat.hub import resolve_model

        # On this actor's node: the hub's cache, or the pinned copy (a GGUF file, read by transformers)
        files = resolve_model(model)
        where = {"pretrained_model_name_or_path": files.folder, **files.load_kwargs()}
        config = AutoConfig.from_pretrained(**where)
        self.seq2seq = bool(getattr(config, "is_encoder_decoder", False))
        self.tokenizer = AutoTokenizer.from_pretrained(**where)
        if self.tokenizer.pad_token is None:  # decoder tokenizers often have none; the mask hides it
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if not self.seq2seq:
            self.tokenizer.padding_side = "left"  # new tokens follow every prompt's last token directly
        cls = AutoModelForSeq2SeqLM if self.seq2seq else AutoModelForCausalLM
        # safetensors or GGUF only: a pickled .bin checkpoint would run code on load
        safe = {} if files.gguf_file else {"use_safetensors": True}
        self.model = cls.from_pretrained(**where, dtype=dtype, **safe).to(self.device).eval()
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.max_input_tokens = max_input_tokens
        self.keep = list(keep) if keep is not None else None
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}

    def prompts(self, messages: list[list[dict[str, str]]]) -> list[str]:
        if self.seq2seq:
            return [m[-1]["content"] for m in messages]
        return [
            self.tokenizer.apply_chat_template(
                m, tokenize=False, add_generation_prompt=True, **self.chat_template_kwargs
            )
            for m in messages
        ]

    def generate(
        self, messages: list[list[dict[str, str]]], params: list[dict[str, Any]]
    ) -> tuple[list[str], list[int]]:
        """n conversations and their sampling parameters -> n texts and n generated-token counts."""
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        batch = self.tokenizer(
            self.prompts(messages),
            padding=True,
            return_tensors="pt",
            add_special_tokens=self.seq2seq,
            truncation=self.max_input_tokens is not None,
            max_length=self.max_input_tokens,
        ).to(self.device)
        limits = [int(p["max_tokens"]) for p in params]
        sampler = SeededSampler(
            [float(p["temperature"]) for p in params],
            [float(p["top_p"]) for p in params],
            [int(p["seed"]) for p in params],
        )
        # Greedy over the sampler's one-hot scores; the model's own sampling defaults must not apply.
        gen = GenerationConfig(
            do_sample=False,
            # Applied to the logits before the sampler sees them; one step's rows share it.
            repetition_penalty=float(params[0].get("repetition_penalty", 1.0)),
            max_new_tokens=max(limits),
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=sorted(self.eos_ids) or None,
        )
        with torch.inference_mode():
            out = self.model.generate(**batch, generation_config=gen, logits_processor=LogitsProcessorList([sampler]))
        # Decoder-only output repeats the prompt; an encoder-decoder's starts with its start token.
        new = out[:, 1:] if self.seq2seq else out[:, batch["input_ids"].shape[1] :]
        texts, counts = [], []
        for row, limit in zip(new.tolist(), limits):
            row = row[:limit]
            end = next((i for i, t in enumerate(row) if t in self.eos_ids), None)
            counts.append(len(row) if end is None else end + 1)
            texts.append(self.tokenizer.decode(row[:end], skip_special_tokens=True).strip())
        return texts, counts

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A numpy batch of n rows -> the ``keep`` columns + generated_text (n,) + num_generated_tokens (n,)."""
        texts, counts = self.generate(_as_list(batch["messages"]), _as_list(batch["sampling_params"]))
        out = {k: v for k, v in batch.items() if self.keep is None or k in self.keep}
        out["generated_text"] = np.asarray(texts, dtype=object)
        out["num_generated_tokens"] = np.asarray(counts, dtype=np.int64)
        return out


@register_engine("transformers")
class TransformersEngine(Engine):
    """A fixed pool of ``concurrency`` :class:`TransformersGenerator` actors."""

    def apply(self, ds: Dataset, keep: list[str]) -> Dataset:
        from ray.data import ActorPoolStrategy

        s = self.step
        return ds.map_batches(
            TransformersGenerator,
            fn_constructor_kwargs={
                "model": s.model,
                "device": s.device,
                "threads": max(1, int(s.num_cpus)),
                "chat_template_kwargs": s.chat_template_kwargs,
                "max_input_tokens": s.max_model_len,
                "keep": keep,
            },
            # Ray 2.60 deprecates map_batches(concurrency=...): a fixed-size actor pool is a compute strategy.
            compute=ActorPoolStrategy(size=s.concurrency),
            batch_size=s.batch_size,
            batch_format="numpy",
            num_cpus=s.num_cpus,
            num_gpus=s.num_gpus or None,
        )


# ---------------------------------------------------------------- vLLM


def vllm_generate_config(step: StepConfig) -> dict[str, Any]:
    """Keyword arguments of ``ray.data.llm.vLLMEngineProcessorConfig`` for one generation step.

    ``concurrency`` vLLM engine replicas (data parallel), each on ``tensor_parallel_size`` GPUs;
    ``batch_size`` rows go to a replica at a time. The chat-template stage renders ``messages``
    with the step's ``chat_template_kwargs``; vLLM tokenizes and detokenizes inside the engine, so
    the separate tokenize and detokenize CPU stages are off.
    """
    engine = {**step.engine_kwargs, "tensor_parallel_size": step.tensor_parallel_size}
    if step.max_model_len is not None:
        engine["max_model_len"] = step.max_model_len
    out: dict[str, Any] = {
        "model_source": step.model,
        "task_type": "generate",
        "engine_kwargs": engine,
        "concurrency": step.concurrency,
        "batch_size": step.batch_size,
        "chat_template_stage": {"enabled": True, "chat_template_kwargs": dict(step.chat_template_kwargs)},
        "tokenize_stage": False,
        "detokenize_stage": False,
    }
    if step.accelerator_type:
        out["accelerator_type"] = step.accelerator_type
    return out


def vllm_postprocess(row: dict[str, Any], keep: list[str]) -> dict[str, Any]:
    """A processor's output row -> the shared schema (vLLM adds prompt, token ids, timings: dropped)."""
    out = {k: row[k] for k in keep}
    out["generated_text"] = str(row.get("generated_text") or "").strip()
    out["num_generated_tokens"] = int(row.get("num_generated_tokens") or 0)
    return out


@register_engine("vllm")
class VLLMEngine(Engine):
    """``ray.data.llm`` with vLLM: ``concurrency`` GPU engine replicas (``pip install 'abexrat[gpu]'``)."""

    def apply(self, ds: Dataset, keep: list[str]) -> Dataset:
        from functools import partial

        if importlib.util.find_spec("vllm") is None:
            raise UserError(f"vllm engine ({self.step.model}): needs the gpu extra: pip install 'abexrat[gpu]'")
        from ray.data.llm import build_processor, vLLMEngineProcessorConfig

        config = vLLMEngineProcessorConfig(**vllm_generate_config(self.step))
        # Rows already carry `messages` and `sampling_params` under vLLM's names: no preprocess.
        processor = build_processor(config, postprocess=partial(vllm_postprocess, keep=list(keep)))
        return processor(ds)
