"""The GPU numbers of issue #23 in one JSON, on a machine with one GPU, in under 8 minutes.

Three measurements, each with the peak GPU memory it took:

- ``study``: single-seed trials (configurations) per hour of abexrat's study on one GPU: the
  quickstart's space, 20 epochs, ``seeds_per_trial: 1``, ``budget.configs_per_trial`` configurations
  trained as one batch per trial, each trial given ``--gpu-share`` of the GPU, a ``time_budget_s``
  search (``bench_study.run_ours``, in a child process: its own Ray). Target >= 2,000 per hour.
  Its GPU memory is polled from ``nvidia-smi`` (the trials run in Ray workers, not here): the
  device's peak used memory minus what was used before the study started.
- ``encode``: texts/s of abexrat's ``hf:`` encoder (``HFEncoder``, last-token pooling, bf16 on a
  GPU) with a **random-weight** model of Qwen3-Embedding-0.6B's shape (hidden 1024, 28 layers, 16
  query / 8 key-value heads of 128, SwiGLU 3072, 151,936 embedding rows) on the OSHA texts.
- ``generate``: generated tokens/s of the ``transformers`` augment engine
  (``TransformersGenerator.generate``) with a random-weight Qwen3-0.6B (the same shape: the 0.6B
  chat model and the 0.6B embedder share it) on the abstraction prompts; a random model seldom
  emits its end token, so nearly every request generates ``--new-tokens`` tokens.
  Their GPU memory is ``torch.cuda.max_memory_allocated`` (reset before each).

Nothing is downloaded: the models are built from a ``Qwen3Config`` with a BPE tokenizer trained
here on the reports (``augment_throughput.build_model``), saved in bf16 and loaded through the
same code paths a user's run takes. ``--tiny`` runs the same logic on CPU with toy shapes and a
small budget (the test suite's check of this script).

    benchmarks/gpu_check.sh out/gpu_check.json          # on the GPU machine
    python benchmarks/gpu_check.py --tiny --dataset DIR --json out/tiny.json   # the logic, on CPU
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import REPO, Poller, load_avg, machine, setup_env, write_json  # noqa: E402

# Qwen3-0.6B / Qwen3-Embedding-0.6B (their config.json): hidden 1024, 28 layers, 16 q heads,
# 8 kv heads, head_dim 128, intermediate 3072; Qwen3-0.6B's 151,936 embedding rows (the embedder
# has 151,669: the lookup's cost does not depend on it).
QWEN3_06B = {
    "hidden": 1024,
    "layers": 28,
    "heads": 16,
    "kv_heads": 8,
    "head_dim": 128,
    "intermediate": 3072,
    "model_vocab": 151936,
}
TINY_SHAPE = {
    "hidden": 64,
    "layers": 2,
    "heads": 4,
    "kv_heads": 2,
    "head_dim": 16,
    "intermediate": 128,
    "model_vocab": 2048,
}
# What each mode runs: texts to encode, encode batch, generation requests, new tokens, batch sizes,
# the study's search seconds, epochs and GPU share.
FULL = {
    "texts": 4000,
    "encode_batch": 128,
    "requests": 128,
    "new_tokens": 128,
    "gen_batches": [32, 128],
    "study_budget_s": 120.0,
    "epochs": 20,
    "gpu_share": 1 / 16,
    "configs_per_trial": 4,
}
TINY = {
    "texts": 24,
    "encode_batch": 8,
    "requests": 4,
    "new_tokens": 6,
    "gen_batches": [2],
    "study_budget_s": 0.0,  # 0: num_samples trials, no time budget (a CPU smoke run must finish its trials)
    "epochs": 1,
    "gpu_share": 0.0,
    "configs_per_trial": 2,
}


def gpu_memory_used_mb() -> float | None:
    """The device's used memory (all processes) from nvidia-smi; None without one."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "--id=0"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        return float(out.strip().splitlines()[0])
    except (subprocess.SubprocessError, OSError, ValueError, IndexError):
        return None


class GpuMemoryPoll(Poller):
    """Peak of the device's used memory over a block, above what was used when it began."""

    def __init__(self, every_s: float = 0.5) -> None:
        super().__init__(every_s)
        self.base: float | None = None
        self.peak: float | None = None

    def start(self) -> bool:
        self.base = gpu_memory_used_mb()
        return self.base is not None

    def poll(self) -> None:
        used = gpu_memory_used_mb()
        if used is not None:
            self.peak = used if self.peak is None else max(self.peak, used)

    @property
    def peak_mb(self) -> float | None:
        return None if self.base is None or self.peak is None else round(self.peak - self.base, 1)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _reset_peak() -> None:
    import torch

    if _cuda():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_mb() -> float | None:
    import torch

    if not _cuda():
        return None
    torch.cuda.synchronize()
    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


def _sync() -> None:
    import torch

    if _cuda():
        torch.cuda.synchronize()


def load_texts(dataset: str | None) -> tuple[list[str], list[tuple[str, str]]]:
    """(every text of the dataset, (text, class) of minority-class training originals for prompts)."""
    from abexrat.config import load_train_config
    from abexrat.datasets import load_dataset

    overrides = [f"data.dataset={dataset}", "data.aug_pool=published"] if dataset else []
    ds = load_dataset(load_train_config(REPO / "studies" / "baseline_offline.yaml", overrides))
    texts = [t for part in (ds.train, ds.val, ds.test) for t in part.texts]
    minority = [
        (ds.train.texts[i], ds.classes[ds.train.labels[i]])
        for i in range(len(ds.train))
        if ds.classes[ds.train.labels[i]] in ds.classes[3:]
    ]
    return texts, minority


def bench_encode(folder: Path, texts: list[str], batch_size: int) -> dict[str, Any]:
    """texts/s of HFEncoder (last-token pooling) on ``texts``, after a warm-up batch."""
    from abexrat.hf import HFEncoder

    enc = HFEncoder(model=str(folder), pooling="last", batch_size=batch_size)
    enc.encode(texts[:batch_size])  # load, move to the device, first kernels: outside the timing
    _reset_peak()
    t0 = time.perf_counter()
    vecs = enc.encode(texts)
    _sync()
    seconds = time.perf_counter() - t0
    model, tokenizer = enc._load()  # noqa: SLF001
    tokens = sum(len(x) for x in tokenizer(texts, truncation=True, max_length=enc.token_limit())["input_ids"])
    return {
        "texts": len(texts),
        "tokens": tokens,
        "batch_size": batch_size,
        "seconds": round(seconds, 3),
        "texts_per_s": round(len(texts) / seconds, 1),
        "tokens_per_s": round(tokens / seconds, 1),
        "device": str(model.device),
        "dtype": str(model.dtype),
        "precision": enc.resolved_precision,
        "dim": int(vecs.shape[1]),
        "vectors_finite_unit": bool(abs(float((vecs**2).sum(1).mean()) - 1.0) < 1e-3),
        "peak_gpu_memory_mb": _peak_mb(),
    }


def bench_generate(
    folder: Path, sources: list[tuple[str, str]], batch_sizes: list[int], new_tokens: int
) -> dict[str, Any]:
    """Generated tokens/s of the transformers engine's generator, per batch size; the best is the headline."""
    from abexrat.augment.engines import TransformersGenerator
    from abexrat.augment.prompts import abstraction_messages

    messages = [abstraction_messages(text, label) for text, label in sources]
    params = [{"temperature": 1.0, "top_p": 0.95, "max_tokens": new_tokens, "seed": i} for i in range(len(messages))]
    gen = TransformersGenerator(str(folder), device="auto", threads=max(1, os.cpu_count() or 1))
    gen.generate(messages[:2], params[:2])  # warm-up
    rows = []
    for bs in batch_sizes:
        _reset_peak()
        t0, tokens = time.perf_counter(), 0
        for i in range(0, len(messages), bs):
            _, counts = gen.generate(messages[i : i + bs], params[i : i + bs])
            tokens += sum(counts)
        _sync()
        seconds = time.perf_counter() - t0
        rows.append(
            {
                "batch_size": bs,
                "requests": len(messages),
                "generated_tokens": tokens,
                "seconds": round(seconds, 3),
                "tokens_per_s": round(tokens / seconds, 1),
                "peak_gpu_memory_mb": _peak_mb(),
            }
        )
        print(f"generate batch {bs}: {tokens} tokens in {seconds:.2f} s", file=sys.stderr, flush=True)
    best = max(rows, key=lambda r: r["tokens_per_s"])
    return {
        "device": gen.device,
        "dtype": str(gen.model.dtype),
        "new_tokens": new_tokens,
        "tokens_per_s": best["tokens_per_s"],
        "best_batch_size": best["batch_size"],
        "peak_gpu_memory_mb": max((r["peak_gpu_memory_mb"] or 0.0 for r in rows), default=None) if _cuda() else None,
        "by_batch_size": rows,
    }


def study_child(args: argparse.Namespace) -> None:
    """In its own process (a fresh Ray): abexrat's study as bench_study runs it, single seed."""
    import bench_study

    os.environ["RAY_ADDRESS"] = "local"
    plan = TINY if args.tiny else FULL
    overrides: dict[str, Any] = {}
    if args.dataset:
        overrides["data"] = {"dataset": args.dataset, "aug_pool": "published"}
    if args.tiny:  # a small encoder and MLP: the tiny dataset has ~200 reports
        overrides["encoder"] = {"name": "hybrid", "options": {"tfidf_dim": 32, "tfidf_min_df": 1}}
        overrides["model"] = {"hidden": [32]}
    else:  # the offline recipe's encoder: a GPU machine may reach no model hub, and trials/hour is measured
        from abexrat.core.safe_yaml import load_yaml

        overrides["encoder"] = load_yaml(REPO / "studies" / "baseline_offline.yaml")["encoder"]
    budget_s = plan["study_budget_s"] or None
    with tempfile.TemporaryDirectory() as tmp:
        study = bench_study.make_study(
            "gpu-check",
            args.trials or (4 if args.tiny else 10_000),  # with a time budget, the budget ends the search
            plan["epochs"],
            1,
            Path(tmp),
            final_seeds=1,
            time_budget_s=budget_s,
            gpu_share=plan["gpu_share"],
            configs_per_trial=plan["configs_per_trial"],
            trainer_overrides=overrides,
        )
        with GpuMemoryPoll() as mem:
            res = bench_study.run_ours(study, Path(tmp) / "study")
    res.pop("search_profile_s", None)  # per-trial rows: thousands of lines on a GPU
    res["peak_gpu_memory_mb"] = mem.peak_mb
    res["peak_gpu_memory_source"] = "nvidia-smi, whole device, above the pre-study level" if mem.base else None
    res["time_budget_s"] = budget_s
    res["configs_per_trial"] = plan["configs_per_trial"]
    res["gpu_share"] = plan["gpu_share"]
    res["epochs"] = plan["epochs"]
    res["seeds_per_trial"] = 1
    write_json(args.json, res)


def run_study(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    out = folder / "study.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--study-child", "--json", str(out)]
    cmd += ["--tiny"] if args.tiny else []
    cmd += ["--dataset", args.dataset] if args.dataset else []
    cmd += ["--trials", str(args.trials)] if args.trials else []
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=False)
    if proc.returncode != 0 or not out.is_file():
        return {"error": f"study child exited {proc.returncode}", "seconds": round(time.perf_counter() - t0, 1)}
    res = json.loads(out.read_text())
    res["seconds"] = round(time.perf_counter() - t0, 1)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", "--cpu-smoke", action="store_true", help="toy shapes and budgets: the logic on CPU")
    p.add_argument("--dataset", default=None, help="a folder dataset instead of OSHA (the tests' tiny one)")
    p.add_argument("--trials", type=int, default=0, help="study num_samples (0: the mode's default)")
    p.add_argument("--only", default="encode,generate,study", help="parts to run, comma-separated")
    p.add_argument("--study-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    setup_env()
    if args.study_child:
        study_child(args)
        return
    from augment_throughput import build_model

    plan, shape = (TINY, TINY_SHAPE) if args.tiny else (FULL, QWEN3_06B)
    only = set(args.only.split(","))
    t_all = time.perf_counter()
    res: dict[str, Any] = {"tiny": args.tiny, "machine": machine(), "load_avg_before": load_avg(), "plan": plan}
    texts, sources = load_texts(args.dataset)
    texts = (texts * (1 + plan["texts"] // max(1, len(texts))))[: plan["texts"]]
    sources = (sources * (1 + plan["requests"] // max(1, len(sources))))[: plan["requests"]]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "qwen3-0.6b-shape"
        if only & {"encode", "generate"}:
            import torch

            t0 = time.perf_counter()
            # bf16 on disk: half the bytes to write and read; a GPU computes in bf16 anyway.
            torch.set_default_dtype(torch.bfloat16 if not args.tiny else torch.float32)
            try:
                res["model"] = build_model(folder, [t for t, _ in sources] + texts[:2000], vocab=8192, **shape)
            finally:
                torch.set_default_dtype(torch.float32)
            res["model"]["build_s"] = round(time.perf_counter() - t0, 1)
            print(f"model: {res['model']}", file=sys.stderr, flush=True)
        if "encode" in only:
            res["encode"] = bench_encode(folder, texts, plan["encode_batch"])
            print(f"encode: {res['encode']['texts_per_s']} texts/s", file=sys.stderr, flush=True)
            finish(res, args, t_all)
        if "generate" in only:
            res["generate"] = bench_generate(folder, sources, plan["gen_batches"], plan["new_tokens"])
            finish(res, args, t_all)
        # The in-process models go before the study's trials want the GPU.
        import gc

        gc.collect()
        _reset_peak()
        if "study" in only:
            res["study"] = run_study(args, Path(tmp))
    finish(res, args, t_all)
    if "error" in res.get("study", {}):
        sys.exit(1)


def finish(res: dict[str, Any], args: argparse.Namespace, t_all: float) -> None:
    """The headline and targets from what has run so far, written out: called after every part, so
    a run stopped by gpu_check.sh's time limit still leaves the parts it finished."""
    study, enc, gen = res.get("study", {}), res.get("encode", {}), res.get("generate", {})
    res["headline"] = {
        "study_trials_per_hour": study.get("trials_per_hour"),
        "study_peak_gpu_memory_mb": study.get("peak_gpu_memory_mb"),
        "encode_texts_per_s": enc.get("texts_per_s"),
        "encode_peak_gpu_memory_mb": enc.get("peak_gpu_memory_mb"),
        "generate_tokens_per_s": gen.get("tokens_per_s"),
        "generate_peak_gpu_memory_mb": gen.get("peak_gpu_memory_mb"),
    }
    tph = study.get("trials_per_hour")
    res["targets"] = {
        "study_trials_per_hour": {
            "value": tph,
            "target": ">= 2000",
            "met": None if tph is None or args.tiny else tph >= 2000,
        }
    }
    res["load_avg_after"] = load_avg()
    res["seconds"] = round(time.perf_counter() - t_all, 1)
    write_json(args.json, res)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
