"""Generated tokens per second of the ``transformers`` augmentation engine on CPU.

The model is a random-weight Qwen3 (the real architecture: GQA, q/k norms, SwiGLU, tied
embeddings), scaled down so the whole benchmark runs in well under 2 minutes on 2 cores, with a
byte-level BPE tokenizer trained here on the OSHA training reports and a ChatML chat template.
The prompts are the real abstraction prompts of the minority-class reports. A random model almost
never emits its end token, so every request generates ``--new-tokens`` tokens: the number measures
the engine (batching, the seeded sampler, ``generate``), not text quality.

    .venv/bin/python benchmarks/augment_throughput.py --json out/augment_throughput.json

Two measurements:

- ``engine``: :class:`~abexrat.augment.engines.TransformersGenerator` in this process, per batch size.
- ``ray`` (``--ray-actors N``, 0 = off): the same rows through the Ray Data actor-pool stage with N
  actors (batch 8), wall time including the actors' start-up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_model(
    folder: Path,
    texts: list[str],
    *,
    vocab: int,
    hidden: int,
    layers: int,
    heads: int,
    kv_heads: int,
    intermediate: int,
    head_dim: int | None = None,
    model_vocab: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Train the tokenizer, build and save the random Qwen3ForCausalLM; returns its shape and size."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=vocab, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>", eos_token="<|im_end|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(
        Qwen3Config(
            # The model may have more embedding rows than the tokenizer uses (Qwen3 has 151,936):
            # what the LM head and the sampler cost per token depends on it.
            vocab_size=max(len(fast), model_vocab or 0),
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=head_dim or hidden // heads,
            intermediate_size=intermediate,
            max_position_embeddings=4096,
            tie_word_embeddings=True,
            pad_token_id=fast.pad_token_id,
            eos_token_id=fast.eos_token_id,
        )
    )
    model.save_pretrained(folder)
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "architecture": "Qwen3ForCausalLM",
        "vocab": max(len(fast), model_vocab or 0),
        "tokenizer_vocab": len(fast),
        "hidden": hidden,
        "layers": layers,
        "heads": heads,
        "head_dim": head_dim or hidden // heads,
        "kv_heads": kv_heads,
        "intermediate": intermediate,
        "params": n_params,
    }


def bench_engine(
    model: str, messages: list[Any], batch_sizes: list[int], new_tokens: int, threads: int
) -> list[dict[str, Any]]:
    """Tokens/s of TransformersGenerator.generate over all prompts, per batch size (after a warm-up batch)."""
    from abexrat.augment.engines import TransformersGenerator

    gen = TransformersGenerator(model, device="cpu", threads=threads)
    params = [{"temperature": 1.0, "top_p": 0.95, "max_tokens": new_tokens, "seed": i} for i in range(len(messages))]
    gen.generate(messages[:2], params[:2])  # warm-up: first-call allocations, lazy imports
    out = []
    for bs in batch_sizes:
        t0, tokens, prompt_tokens = time.perf_counter(), 0, 0
        for i in range(0, len(messages), bs):
            _, counts = gen.generate(messages[i : i + bs], params[i : i + bs])
            tokens += sum(counts)
        seconds = time.perf_counter() - t0
        for m in messages:
            prompt_tokens += len(gen.tokenizer(gen.prompts([m])[0], add_special_tokens=False)["input_ids"])
        out.append(
            {
                "batch_size": bs,
                "requests": len(messages),
                "prompt_tokens": prompt_tokens,
                "generated_tokens": tokens,
                "seconds": round(seconds, 3),
                "tokens_per_s": round(tokens / seconds, 1),
            }
        )
        print(f"engine  batch {bs:>3}: {tokens} tokens in {seconds:.2f} s = {tokens / seconds:,.1f} tokens/s")
    return out


def bench_ray(model: str, messages: list[Any], actors: int, batch_size: int, new_tokens: int) -> dict[str, Any]:
    """The same requests through the Ray Data actor-pool stage with ``actors`` CPU actors."""
    import ray

    from abexrat.augment.config import StepConfig
    from abexrat.augment.engines import TransformersEngine

    cpus = os.cpu_count() or 2
    ray.init(num_cpus=cpus, include_dashboard=False, logging_level="WARNING")
    ray.data.DataContext.get_current().enable_progress_bars = False
    step = StepConfig(
        model=model,
        concurrency=actors,
        batch_size=batch_size,
        num_cpus=max(1, cpus // actors),
        device="cpu",
        max_new_tokens=new_tokens,
        temperature=1.0,
        top_p=0.95,
    )

    def run(rows: list[dict[str, Any]]) -> tuple[float, int]:
        t0 = time.perf_counter()
        ds = ray.data.from_items(rows, override_num_blocks=max(actors, len(rows) // batch_size))
        got = TransformersEngine(step).apply(ds, keep=["i"]).take_all()
        return time.perf_counter() - t0, sum(int(r["num_generated_tokens"]) for r in got)

    rows = [
        {
            "i": i,
            "messages": m,
            "sampling_params": {"temperature": 1.0, "top_p": 0.95, "max_tokens": new_tokens, "seed": i},
        }
        for i, m in enumerate(messages)
    ]
    # Each run starts its own actor pool. A run of one row per actor shows what start-up alone
    # costs; it is reported beside the full run, not subtracted (the two start-ups differ).
    startup_s, _ = run(rows[:actors])
    seconds, tokens = run(rows)
    ray.shutdown()
    res = {
        "actors": actors,
        "cpus_per_actor": step.num_cpus,
        "batch_size": batch_size,
        "requests": len(rows),
        "generated_tokens": tokens,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(tokens / seconds, 1),
        "one_row_per_actor_s": round(startup_s, 3),
    }
    print(
        f"ray     {actors} actors: {tokens} tokens in {seconds:.2f} s = {tokens / seconds:,.1f} tokens/s, "
        f"actor start-up included (a one-row-per-actor run takes {startup_s:.1f} s)"
    )
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", help="OSHA files (else $ABEXRAT_DATA_DIR, else the cache)")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--requests", type=int, default=32, help="abstraction prompts to generate for")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--batch-sizes", default="8,16,32")
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=768)
    p.add_argument("--head-dim", type=int, default=None, help="default: hidden / heads")
    p.add_argument("--model-vocab", type=int, default=None, help="embedding rows, if more than the tokenizer's")
    # One thread: on a shared or busy machine 2+ OpenMP threads spin-wait on each other (runs 2-10x
    # slower and erratic); the engine's actors also run one thread per reserved CPU.
    p.add_argument("--threads", type=int, default=1, help="torch threads of the in-process engine")
    p.add_argument("--ray-actors", type=int, default=2, help="also run the Ray Data stage with N actors (0: skip)")
    args = p.parse_args()

    import torch

    from abexrat.augment.prompts import abstraction_messages
    from abexrat.osha import load_osha

    t_all = time.perf_counter()
    ds = load_osha(args.data_dir)
    minority = [i for i in range(len(ds.train)) if ds.classes[ds.train.labels[i]] in ds.classes[3:]]
    messages = [
        abstraction_messages(ds.train.texts[i], ds.classes[ds.train.labels[i]]) for i in minority[: args.requests]
    ]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "qwen3-scaled-down"
        t0 = time.perf_counter()
        shape = build_model(
            folder,
            ds.train.texts,
            vocab=args.vocab,
            hidden=args.hidden,
            layers=args.layers,
            heads=args.heads,
            kv_heads=args.kv_heads,
            intermediate=args.intermediate,
            head_dim=args.head_dim,
            model_vocab=args.model_vocab,
        )
        build_s = time.perf_counter() - t0
        print(f"model: {shape} (built in {build_s:.1f} s)")
        engine = bench_engine(
            str(folder), messages, [int(b) for b in args.batch_sizes.split(",")], args.new_tokens, args.threads
        )
        ray_res = bench_ray(str(folder), messages, args.ray_actors, 8, args.new_tokens) if args.ray_actors else None
    best = max(engine, key=lambda r: r["tokens_per_s"])
    result = {
        "benchmark": "augment_throughput",
        "device": "cpu",
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": args.threads,
        "model": shape,
        "new_tokens": args.new_tokens,
        "engine": engine,
        "ray": ray_res,
        "best_tokens_per_s": best["tokens_per_s"],
        "best_batch_size": best["batch_size"],
        # Decode costs about 2 FLOPs per parameter per token: what scales the number to other sizes.
        "approx_gflop_per_token": round(2 * shape["params"] / 1e9, 4),
        "total_s": round(time.perf_counter() - t_all, 1),
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"best: {best['tokens_per_s']:,.1f} generated tokens/s at batch {best['batch_size']} "
        f"(total {result['total_s']} s)"
    )


if __name__ == "__main__":
    main()
