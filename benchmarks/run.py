"""All the benchmarks, one JSON: study overhead, speedup over a naive set-up, trainer FLOP/s, embedding
throughput, peak memory. Each benchmark runs in its own process (clean memory peaks, one Ray at a time).

    .venv/bin/python benchmarks/run.py --quick --json out/bench.json     # 10-25 minutes on 2 cores
    .venv/bin/python benchmarks/run.py --json out/bench.json             # the quickstart's full budget

Headline keys (the issue's targets in ``targets``):

- ``study_overhead_fraction``: 1 - sum of in-trial training time / (search wall time x concurrent
  trials), abexrat's study with W&B tracking on (offline). Target <= 0.10.
- ``speedup_vs_naive``: trials per hour of abexrat's study / those of the naive set-up, same space,
  seeds and machine, in this run, and the same budget: the naive search's wall time (abexrat's search
  gets it as ``time_budget_s``); ``best_val_macro_f1`` each reached in that time. Target >= 3, F1 not lower.
- ``trainer_flops_fraction``: the trainer's FLOP/s / a tight-loop replay of the same matmuls, at the
  recipe's ``train.precision`` (``trainer_precision``: bf16 where ``auto`` chose it). Target >= 0.70.
  ``trainer_flops_fraction_fp32``: the same with fp32 products, against the fp32 replay.
  ``trainer_flops_fraction_ceiling``: the most a trainer that ran only those products (in the
  trainer's order) and its AdamW updates would reach against the same replay.
- ``embedding_texts_per_s``: per encoder (hf-* are toy random-weight models).
- ``embed_texts_per_s``: the transformer encoder (``embed_model``, all-MiniLM-L6-v2) through abexrat
  (``abexrat``, ``abexrat-fp32``) and what a user would pick instead (``sentence-transformers``,
  ``sentence-transformers-bf16``, ``onnxruntime``), each in its own process in this run, then the
  other encoders. ``speedup_vs_sentence_transformers`` (target >= 1.5) and
  ``speedup_vs_onnxruntime`` (>= 1): abexrat's texts/s over theirs. ``embed_flops_fraction``: the
  encoder's FLOP/s / a replay of its products (target >= 0.50). ``embed_min_cosine``: every
  peer's vectors against the fp32 reference, text by text (>= 0.999).
- ``speedup_vs_optuna``: abexrat's trials per hour / plain Optuna's in one process
  (``study.optimize(n_jobs=cores)``), same space, seeds, sampler and wall time (target >= 1, F1 not lower).
- ``peak_rss_mb``: the study's driver, a trial worker, and all its processes together. Target <= 4096.

The machine's load average is recorded before and after each benchmark: numbers taken while other
jobs run are slower and noisier (see ``load_avg``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import load_avg, machine, setup_env, write_json  # noqa: E402

QUICK = {
    "trainer": ["--methods", "rat,none", "--threads", "1", "--epochs", "3", "--repeats", "2"],
    "embed": ["--hf-texts", "500"],
    "transformer": ["--texts", "300", "--threads", "0"],
    "study": ["--trials", "16", "--epochs", "8", "--seeds", "2"],
}
FULL = {
    "trainer": ["--methods", "rat,none", "--threads", "1,2", "--epochs", "4", "--repeats", "4"],
    "embed": ["--hf-texts", "2000"],
    "transformer": ["--texts", "2000", "--threads", "0,1"],
    "study": ["--trials", "20", "--epochs", "20", "--seeds", "2"],
}


def run_one(name: str, args: list[str], folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    out = folder / f"{name}.json"
    cmd = [sys.executable, str(HERE / f"bench_{name}.py"), *args, "--json", str(out)]
    print(f"== {name}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    before, t0 = load_avg(), time.perf_counter()
    proc = subprocess.run(cmd, check=False)
    info = {
        "command": " ".join(
            ["python", *[str(Path(c).relative_to(HERE.parent)) if c.startswith(str(HERE)) else c for c in cmd[1:-2]]]
        ),
        "seconds": round(time.perf_counter() - t0, 1),
        "load_avg_before": before,
        "load_avg_after": load_avg(),
        "returncode": proc.returncode,
    }
    if proc.returncode != 0 or not out.is_file():
        return {}, info
    return json.loads(out.read_text()), info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--quick",
        action="store_true",
        help="a smaller budget: 10-25 minutes on 2 cores (the naive search's 16 trials set the study's wall time)",
    )
    p.add_argument("--only", default="trainer,embed,transformer,study", help="benchmarks to run, comma-separated")
    p.add_argument("--json", default=None, help="write the results here (else print them)")
    args = p.parse_args()
    setup_env()
    plan = QUICK if args.quick else FULL
    t0 = time.perf_counter()
    res: dict[str, Any] = {}
    runs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only.split(","):
            res[name], runs[name] = run_one(name, plan[name], Path(tmp))
    trainer, embed, study = res.get("trainer", {}), res.get("embed", {}), res.get("study", {})
    tf = res.get("transformer", {})
    ours, naive, plain = study.get("abexrat", {}), study.get("naive", {}), study.get("optuna", {})
    mem = ours.get("memory", {})
    by_role = mem.get("by_role", {})
    out: dict[str, Any] = {
        "quick": args.quick,
        "study_overhead_fraction": ours.get("study_overhead_fraction"),
        "speedup_vs_naive": study.get("speedup_vs_naive"),
        "speedup_vs_optuna": study.get("speedup_vs_optuna"),
        "best_val_macro_f1": study.get("best_val_macro_f1"),
        "trials_per_hour": {
            "abexrat": ours.get("trials_per_hour"),
            "naive": naive.get("trials_per_hour"),
            "optuna": plain.get("trials_per_hour"),
        },
        "trainer_flops_fraction": trainer.get("trainer_flops_fraction"),
        "trainer_flops_fraction_ceiling": trainer.get("trainer_flops_fraction_ceiling"),
        "trainer_gflops": trainer.get("trainer_gflops"),
        "floor_gflops": trainer.get("floor_gflops"),
        "trainer_precision": trainer.get("headline", {}).get("precision"),
        "trainer_flops_fraction_fp32": trainer.get("trainer_flops_fraction_fp32"),
        "trainer_gflops_fp32": trainer.get("trainer_gflops_fp32"),
        "embedding_texts_per_s": embed.get("embedding_texts_per_s"),
        # the transformer (tf["model"]) through abexrat and its peers, then the other encoders
        "embed_texts_per_s": {**(tf.get("embed_texts_per_s") or {}), **(embed.get("embedding_texts_per_s") or {})},
        "embed_model": tf.get("model"),
        "embed_threads": tf.get("threads"),
        "speedup_vs_sentence_transformers": tf.get("speedup_vs_sentence_transformers"),
        "speedup_vs_onnxruntime": tf.get("speedup_vs_onnxruntime"),
        "embed_flops_fraction": tf.get("embed_flops_fraction"),
        "embed_min_cosine": tf.get("min_cosine"),
        "peak_rss_mb": {
            "driver": mem.get("driver_peak_rss_mb"),
            "trial": by_role.get("trial", {}).get("peak_rss_mb"),
            "trial_private": by_role.get("trial", {}).get("peak_private_mb"),
            "study_total": mem.get("peak_total_rss_mb"),
        },
        "features_zero_copy": ours.get("features_zero_copy"),
    }
    cosines = [v for v in (tf.get("min_cosine") or {}).values() if v is not None]
    checks = {
        "study_overhead_fraction": (out["study_overhead_fraction"], "<=", 0.10),
        "speedup_vs_naive": (out["speedup_vs_naive"], ">=", 3.0),
        "trainer_flops_fraction": (out["trainer_flops_fraction"], ">=", 0.70),
        "speedup_vs_optuna": (out["speedup_vs_optuna"], ">=", 1.0),
        "speedup_vs_sentence_transformers": (out["speedup_vs_sentence_transformers"], ">=", 1.5),
        "speedup_vs_onnxruntime": (out["speedup_vs_onnxruntime"], ">=", 1.0),
        "embed_flops_fraction": (out["embed_flops_fraction"], ">=", 0.50),
        "embed_min_cosine": (min(cosines, default=None), ">=", 0.999),
        "peak_rss_mb.study_total": (out["peak_rss_mb"]["study_total"], "<=", 4096),
    }
    f1 = out["best_val_macro_f1"] or {}
    out["targets"] = {
        k: {"value": v, "target": f"{op} {t}", "met": None if v is None else (v <= t if op == "<=" else v >= t)}
        for k, (v, op, t) in checks.items()
    }
    for peer in ("naive", "optuna"):
        if f1.get("abexrat") is not None and f1.get(peer) is not None:
            out["targets"][f"best_val_macro_f1_not_lower_than_{peer}"] = {
                "value": {"abexrat": f1["abexrat"], peer: f1[peer]},
                "target": f"abexrat >= {peer}",
                "met": f1["abexrat"] >= f1[peer],
            }
    out["machine"] = machine()
    out["benchmarks"] = runs
    out["seconds"] = round(time.perf_counter() - t0, 1)
    out["details"] = res
    write_json(args.json, out)
    failed = [k for k, r in runs.items() if r["returncode"] != 0]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
