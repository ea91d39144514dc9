"""Transformer encoding on the OSHA texts: abexrat's ``hf:`` encoder against what a user would pick
instead, on the same machine, model and texts, in one run.

Peers (each in its own fresh process: a process's first pass pays for kernel set-up, as a study's
or a ``train``'s encoding does; the model loads and a warm-up on 4 other texts run before the clock):

- ``abexrat``: ``HFEncoder`` as a run uses it (``precision: auto``: bf16 weights where the CPU
  multiplies bf16 natively, else fp32).
- ``abexrat-fp32``: the same in fp32: **the reference vectors**.
- ``sentence-transformers``: ``SentenceTransformer(folder).encode(texts, batch_size=32,
  normalize_embeddings=True)``, its defaults (fp32).
- ``sentence-transformers-bf16``: the same with ``model_kwargs={"dtype": torch.bfloat16}``.
- ``onnxruntime``: the model exported here (``torch.onnx.export``, fp32, dynamic batch and length),
  ``InferenceSession`` with every graph optimization (fused attention, layer norm, GELU), texts
  tokenized once, sorted by length and batched by 32 like abexrat's, masked mean pooling in numpy.

Every vector is compared with the reference text by text (``min_cosine``, target >= 0.999).

``embed_flops_fraction``: as ``bench_trainer.py`` counts, one extra pass of abexrat's encoder under
a ``TorchDispatchMode`` records every matmul-family call (mm, bmm, addmm, and the fused CPU
attention ``_scaled_dot_product_flash_attention_for_cpu`` at 4·b·h·L·S·d) with its shapes and
strides; the floor replays each distinct call alone in a tight loop (warm kernels, data in cache),
and the fraction = floor time / encoding time (the ``abexrat`` peer's) = encoder FLOP/s / floor
FLOP/s for exactly the products it executes (padding tokens included: ``padding_fraction`` says
how many). With 1 thread, times are process CPU time (robust to other processes); otherwise wall.

    .venv/bin/python benchmarks/bench_transformer.py --texts 1000 --threads 0,1 --json out/transformer.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import clock_for, cores, load_avg, machine, setup_env, write_json  # noqa: E402

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
PEERS = ("abexrat", "abexrat-fp32", "sentence-transformers", "sentence-transformers-bf16", "onnxruntime")
REFERENCE = "abexrat-fp32"
BATCH = 32
# Under inference_mode the composite ops reach the dispatch mode whole (no decomposition into addmm):
# linear and scaled_dot_product_attention are the products there.
LINEAR = {"linear"}
ATTENTION = {
    "scaled_dot_product_attention",
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
}


def osha_sample(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """(n texts of every split in a seeded random order: all lengths represented, 4 others for warm-up)."""
    from bench_embed import osha_texts

    texts, _ = osha_texts()
    texts = list(dict.fromkeys(texts))  # distinct texts: a repeat would be no cost to an encoder that caches
    random.Random(seed).shuffle(texts)
    n = min(n, len(texts) - 4) if n else len(texts) - 4
    return texts[:n], texts[-4:]


def model_folder(model: str) -> Path:
    from abexrat.hub import resolve_model

    return Path(resolve_model(model).folder)


def export_onnx(folder: Path, path: Path) -> tuple[float, bool]:
    """The fp32 model as ONNX (last hidden state; dynamic batch and length), fused where ONNX Runtime's
    BERT optimizer applies; returns the seconds it took and whether the fusions were applied."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    t0 = time.perf_counter()
    model = AutoModel.from_pretrained(folder, dtype=torch.float32, use_safetensors=True).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    names = list(tok(["a", "b c"], padding=True, return_tensors="pt").keys())

    class Hidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: Any) -> Any:
            return self.model(**dict(zip(names, inputs))).last_hidden_state

    sample = tok(["a worker fell from a ladder", "struck"], padding=True, return_tensors="pt")
    torch.onnx.export(
        Hidden(),
        tuple(sample[k] for k in names),
        str(path),
        input_names=names,
        output_names=["last_hidden_state"],
        dynamic_axes={k: {0: "batch", 1: "tokens"} for k in [*names, "last_hidden_state"]},
        opset_version=17,
        dynamo=False,  # the TorchScript exporter: the dynamo one needs onnxscript
    )
    optimized = optimize_onnx(path, model.config)
    return time.perf_counter() - t0, optimized


def optimize_onnx(path: Path, config: Any) -> bool:
    """ONNX Runtime's transformer fusions (attention, skip layer norm, bias GELU: what optimum's
    ``ORTOptimizer`` applies), in place; False (the plain export kept) where they do not apply."""
    try:
        from onnxruntime.transformers.optimizer import optimize_model

        opt = optimize_model(
            str(path),
            model_type="bert",
            num_heads=int(config.num_attention_heads),
            hidden_size=int(config.hidden_size),
        )
        opt.save_model_to_file(str(path))
        return True
    except Exception as e:  # noqa: BLE001 - any failure: the unfused export is still a valid peer
        print(f"onnxruntime fusions not applied: {e}", file=sys.stderr)
        return False


# ---------------------------------------------------------------- one peer, in its own process


def _encoder(peer: str, model: str, folder: Path, onnx_path: Path | None, threads: int) -> tuple[Any, dict[str, Any]]:
    """An ``encode(texts) -> (n, dim) unit float32`` for the peer, and what it runs as."""
    import numpy as np
    import torch

    if peer in ("abexrat", "abexrat-fp32"):
        from abexrat.hf import HFEncoder

        enc = HFEncoder(model=model, precision="fp32" if peer == "abexrat-fp32" else "auto", batch_size=BATCH)
        return enc.encode, {"precision": enc.resolved_precision}
    if peer.startswith("sentence-transformers"):
        from sentence_transformers import SentenceTransformer

        kwargs = {"model_kwargs": {"dtype": torch.bfloat16}} if peer.endswith("bf16") else {}
        st = SentenceTransformer(str(folder), device="cpu", **kwargs)

        def encode(texts: list[str]) -> Any:
            v = st.encode(texts, batch_size=BATCH, normalize_embeddings=True, convert_to_numpy=True)
            v = np.asarray(v, dtype=np.float32)
            # normalized again in fp32: in bf16 the norms are off by up to 3e-3, which is not the direction's error
            return v / np.linalg.norm(v, axis=1, keepdims=True)

        return encode, {"precision": "bf16" if peer.endswith("bf16") else "fp32"}
    if peer == "onnxruntime":
        import onnxruntime as ort
        from transformers import AutoTokenizer

        from abexrat.hf import HFEncoder

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        tok = AutoTokenizer.from_pretrained(folder)
        limit = HFEncoder(model=model).token_limit()
        names = [i.name for i in sess.get_inputs()]

        def encode(texts: list[str]) -> Any:
            ids = tok(texts, truncation=True, max_length=limit)["input_ids"]
            order = sorted(range(len(texts)), key=lambda i: -len(ids[i]))
            rows_out: list[tuple[list[int], Any]] = []
            for start in range(0, len(order), BATCH):
                rows = order[start : start + BATCH]
                batch = tok.pad({"input_ids": [ids[i] for i in rows]}, return_tensors="np")
                feed = {k: batch[k] if k in batch else np.zeros_like(batch["input_ids"]) for k in names}
                hidden = sess.run(None, {k: v.astype(np.int64) for k, v in feed.items()})[0]
                mask = batch["attention_mask"][..., None].astype(np.float32)
                rows_out.append((rows, (hidden * mask).sum(1) / mask.sum(1).clip(min=1.0)))
            dim = rows_out[0][1].shape[1]
            out = np.zeros((len(texts), dim), np.float32)
            for rows, v in rows_out:
                out[rows] = v
            return out / np.linalg.norm(out, axis=1, keepdims=True)

        return encode, {"precision": "fp32", "onnxruntime": ort.__version__}
    raise ValueError(peer)


def peer_child(args: argparse.Namespace) -> None:
    """Load, warm up, encode the texts once; vectors to ``--out``.npy, timings to ``--json``."""
    import numpy as np
    import torch

    torch.set_num_threads(args.child_threads)
    texts = json.loads(Path(args.texts_file).read_text())
    folder = model_folder(args.model)
    t0 = time.perf_counter()
    encode, info = _encoder(args.peer, args.model, folder, Path(args.onnx) if args.onnx else None, args.child_threads)
    encode(texts["warmup"])
    load_s = time.perf_counter() - t0
    clock = clock_for(args.child_threads)
    c0 = clock()
    vecs = encode(texts["texts"])
    seconds = clock() - c0
    np.save(args.out, np.asarray(vecs, dtype=np.float32))
    write_json(
        args.json,
        {
            "peer": args.peer,
            "threads": args.child_threads,
            "clock": "process CPU time" if args.child_threads == 1 else "wall time",
            "texts": len(texts["texts"]),
            "seconds": seconds,
            "texts_per_s": len(texts["texts"]) / seconds,
            "load_and_warmup_s": round(load_s, 2),
            **info,
        },
    )


def run_peer(peer: str, threads: int, args: argparse.Namespace, tmp: Path, texts_file: Path) -> dict[str, Any]:
    out, js = tmp / f"{peer}-{threads}.npy", tmp / f"{peer}-{threads}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--peer-child", peer, "--child-threads", str(threads)]
    cmd += ["--model", args.model, "--texts-file", str(texts_file), "--out", str(out), "--json", str(js)]
    cmd += ["--onnx", str(tmp / "model.onnx")] if peer == "onnxruntime" else []
    before = load_avg()
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if proc.returncode != 0 or not js.is_file():
        return {"peer": peer, "threads": threads, "error": proc.stderr.strip().splitlines()[-1:] or ["failed"]}
    res = json.loads(js.read_text())
    res["load_avg_before"] = before
    res["vectors"] = str(out)
    return res


# ---------------------------------------------------------------- FLOPs and the floor


def _tensors(key: Any) -> list[tuple]:
    return [a for a in key[1] if isinstance(a, tuple) and a and a[0] == "T"]


def operands(key: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The product's two operands: (query, key) for attention, else as bench_trainer reads them."""
    from bench_trainer import _operands

    if key[0].overloadpacket.__name__ in ATTENTION | LINEAR:
        t = _tensors(key)
        return t[0][1], t[1][1]  # (query, key) or (input, weight)
    return _operands(key)


def flops(key: Any) -> int:
    """bench_trainer's 2·m·k·n per product; attention: QKᵀ and PV, 4·b·h·L·S·d."""
    from bench_trainer import flops_of

    if key[0].overloadpacket.__name__ in LINEAR:
        x, w = operands(key)  # (..., k) and (n, k)
        rows = 1
        for d in x[:-1]:
            rows *= d
        return 2 * rows * w[1] * w[0]
    if key[0].overloadpacket.__name__ in ATTENTION:
        q, k = operands(key)
        *bh, L, d = q
        S = k[-2]
        n = 1
        for x in bh:
            n *= x
        return 4 * n * L * S * d
    return flops_of(key)


def floor(model: str, texts: list[str], threads: int, encode_s: float) -> dict[str, Any]:
    """Census of abexrat's encoder on ``texts`` and a replay of every distinct product."""
    import torch
    from bench_trainer import MATMULS, census, replay_time

    from abexrat.hf import HFEncoder

    torch.set_num_threads(threads)
    enc = HFEncoder(model=model, batch_size=BATCH)
    enc.encode(texts[:4])
    calls, total = census(lambda: enc.encode(texts), ops=MATMULS | LINEAR | ATTENTION, flops=flops)
    floor_s, rows = replay_time(calls, threads, flops=flops, operands=operands)
    _, tok = enc._load()  # noqa: SLF001
    ids = tok(texts, truncation=True, max_length=enc.token_limit())["input_ids"]
    lengths = sorted((len(x) for x in ids), reverse=True)
    mult = enc._pad_multiple(enc._load()[0]) or 1  # noqa: SLF001
    padded = sum(-(-lengths[i] // mult) * mult * len(lengths[i : i + BATCH]) for i in range(0, len(lengths), BATCH))
    attention = sum(flops(k) * n for k, n in calls.items() if k[0].overloadpacket.__name__ in ATTENTION)
    return {
        "threads": threads,
        "clock": "process CPU time" if threads == 1 else "wall time",
        "flops_counted": total,
        "attention_flops": attention,
        "distinct_calls": len(calls),
        "calls": sum(calls.values()),
        "tokens": sum(lengths),
        "padding_fraction": 1 - sum(lengths) / padded,
        "floor_s": floor_s,
        "floor_gflops": total / floor_s / 1e9,
        "encoder_gflops": total / encode_s / 1e9,
        "embed_flops_fraction": floor_s / encode_s,
        "floor_calls": rows[:8],
    }


# ---------------------------------------------------------------- the run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL, help="a hub id or folder, as hf:<model> takes it")
    p.add_argument("--texts", type=int, default=1000, help="distinct OSHA texts to encode (0: all)")
    p.add_argument("--threads", default="0,1", help="torch threads, comma-separated (0: every core; first: headline)")
    p.add_argument("--peers", default=",".join(PEERS))
    p.add_argument("--no-floor", action="store_true", help="skip the census and the floor replay")
    p.add_argument("--json", default=None)
    # a peer's own process
    p.add_argument("--peer-child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--texts-file", default=None, help=argparse.SUPPRESS)
    p.add_argument("--onnx", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    setup_env()
    if args.peer_child:
        args.peer = args.peer_child
        peer_child(args)
        return
    import numpy as np

    t_all = time.perf_counter()
    peers = [x for x in args.peers.split(",") if x]
    if REFERENCE not in peers:
        peers.append(REFERENCE)
    threads_list = [int(t) or cores() for t in args.threads.split(",")]
    texts, warmup = osha_sample(args.texts)
    folder = model_folder(args.model)
    res: dict[str, Any] = {"model": args.model, "texts": len(texts), "batch_size": BATCH, "machine": machine()}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        texts_file = tmp / "texts.json"
        texts_file.write_text(json.dumps({"texts": texts, "warmup": warmup}))
        if "onnxruntime" in peers:
            export_s, res["onnx_fused"] = export_onnx(folder, tmp / "model.onnx")
            res["onnx_export_s"] = round(export_s, 1)
        runs: list[dict[str, Any]] = []
        for threads in threads_list:
            for peer in peers:
                r = run_peer(peer, threads, args, tmp, texts_file)
                runs.append(r)
                msg = r.get("error") or f"{r['texts_per_s']:8.1f} texts/s"
                print(f"{peer:28s} threads={threads}: {msg}", file=sys.stderr, flush=True)
            done = [r for r in runs if r["threads"] == threads and "error" not in r]
            ref = next((r for r in done if r["peer"] == REFERENCE), None)
            if ref is not None:
                R = np.load(ref["vectors"])
                for r in runs:
                    if r["threads"] == threads and "vectors" in r:
                        cos = (np.load(r["vectors"]) * R).sum(1)
                        r["min_cosine"] = float(cos.min())
                        r["vectors_match"] = bool(cos.min() >= 0.999)
        for r in runs:
            r.pop("vectors", None)
    res["runs"] = runs
    head_threads = threads_list[0]

    def tps(peer: str, threads: int) -> float | None:
        r = next((r for r in runs if r["peer"] == peer and r["threads"] == threads and "error" not in r), None)
        return r["texts_per_s"] if r else None

    res["threads"] = head_threads
    res["embed_texts_per_s"] = {peer: tps(peer, head_threads) for peer in peers}
    res["embed_texts_per_s_by_threads"] = {str(t): {peer: tps(peer, t) for peer in peers} for t in threads_list}
    ours = tps("abexrat", head_threads)

    def ratio(peer: str, threads: int) -> float | None:
        other = tps(peer, threads)
        mine = tps("abexrat", threads)
        return mine / other if mine and other else None

    res["speedup_vs_sentence_transformers"] = ratio("sentence-transformers", head_threads)
    res["speedup_vs_sentence_transformers_bf16"] = ratio("sentence-transformers-bf16", head_threads)
    res["speedup_vs_onnxruntime"] = ratio("onnxruntime", head_threads)
    res["speedups_by_threads"] = {str(t): {p: ratio(p, t) for p in peers if p != "abexrat"} for t in threads_list}
    res["min_cosine"] = {r["peer"]: r.get("min_cosine") for r in runs if r["threads"] == head_threads}
    if not args.no_floor and ours:
        floors = []
        for t in threads_list:
            mine = next(r for r in runs if r["peer"] == "abexrat" and r["threads"] == t)
            if "error" not in mine:
                floors.append(floor(args.model, texts, t, mine["seconds"]))
                print(
                    f"floor threads={t}: {floors[-1]['floor_gflops']:.1f} GFLOP/s, encoder "
                    f"{floors[-1]['encoder_gflops']:.1f}: fraction {floors[-1]['embed_flops_fraction']:.2f}",
                    file=sys.stderr,
                    flush=True,
                )
        res["floors"] = floors
        res["embed_flops_fraction"] = floors[0]["embed_flops_fraction"] if floors else None
    res["load_avg_after"] = load_avg()
    res["seconds"] = round(time.perf_counter() - t_all, 1)
    write_json(args.json, res)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
