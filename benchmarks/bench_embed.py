"""Embedding throughput (texts per second) of each encoder on the OSHA reports, cache bypassed.

- ``wordllama``: the 256-d static embeddings shipped in the wordllama wheel (the real model).
- ``tfidf-svd``: fit (tf-idf + randomized SVD on the training originals) and transform, timed apart.
- ``hybrid``: both, concatenated and normalized (the offline default): fit + encode.
- ``hf:<folder>``: transformers ``AutoModel`` with mean pooling on **toy models with random weights**
  built here (a word-level tokenizer trained on the reports): ``hf-tiny`` (BERT, hidden 32, 1 layer,
  like tests/test_hf_encoders.py) and ``hf-mini`` (BERT, hidden 256, 4 layers, 4 heads, 5M parameters
  with an 8,000-word vocabulary: the shape of google/bert_uncased_L-4_H-256_A-4). They measure the encoder code path
  (tokenize, batch by length, forward, pool) at two sizes, not a pretrained model's quality.

Every encoder embeds the same texts (all splits: originals, the synthetic pool, val, test, or the
first ``--limit``); texts/s = texts / seconds of ``encode`` (fits reported separately).

    .venv/bin/python benchmarks/bench_embed.py --json out/embed.json
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, machine, setup_env, write_json  # noqa: E402


def osha_texts() -> tuple[list[str], list[str]]:
    """(every text of every split, the training originals the tf-idf fits on)."""
    from abexrat.config import load_train_config
    from abexrat.datasets import load_dataset

    ds = load_dataset(load_train_config(REPO / "studies" / "baseline_offline.yaml"))
    texts = [t for part in (ds.train, ds.synthetic, ds.val, ds.test) for t in part.texts]
    return texts, list(ds.train.texts)


def build_bert(folder: Path, texts: list[str], hidden: int, layers: int, heads: int, vocab: int) -> int:
    """A word-level tokenizer trained on ``texts`` and a random-weight BertModel; returns its parameters."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        texts, trainers.WordLevelTrainer(vocab_size=vocab, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
    )
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        model_input_names=["input_ids", "attention_mask"],
    )
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    model = BertModel(
        BertConfig(
            vocab_size=len(fast),
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=4 * hidden,
            max_position_embeddings=512,
            pad_token_id=0,
        )
    )
    model.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def timed(fn: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def bench(texts: list[str], fit_texts: list[str], hf_texts: int, threads: int) -> list[dict[str, Any]]:
    import torch

    from abexrat.encoders import make_encoder

    torch.set_num_threads(threads)
    rows = []

    def row(name: str, n: int, seconds: float, **extra: Any) -> None:
        rows.append({"encoder": name, "texts": n, "seconds": round(seconds, 3), "texts_per_s": n / seconds, **extra})
        print(f"{name:12s} {n:6d} texts in {seconds:7.2f} s = {n / seconds:10,.0f} texts/s", file=sys.stderr)

    enc = make_encoder("wordllama")
    enc.encode(texts[:8])  # load the weights outside the timing
    _, s = timed(lambda: enc.encode(texts))
    row("wordllama", len(texts), s, toy=False, dim=enc.dim)

    make_encoder("tfidf-svd").fit(fit_texts[:300])  # imports (sklearn, scipy) outside the timing
    enc = make_encoder("tfidf-svd")
    _, fit_s = timed(lambda: enc.fit(fit_texts))
    _, s = timed(lambda: enc.encode(texts))
    row("tfidf-svd", len(texts), s, toy=False, dim=enc.dim, fit_s=round(fit_s, 3), fit_texts=len(fit_texts))
    rows[-1]["texts_per_s_with_fit"] = len(texts) / (s + fit_s)

    enc = make_encoder("hybrid")
    for leaf in enc.parts:
        if leaf.learns:
            _, fit_s = timed(lambda leaf=leaf: leaf.fit(fit_texts))
    _, s = timed(lambda: enc.combine([leaf.encode(texts) for leaf in enc.parts]))
    row("hybrid", len(texts), s, toy=False, dim=enc.dim, fit_s=round(fit_s, 3))
    rows[-1]["texts_per_s_with_fit"] = len(texts) / (s + fit_s)

    sub = texts[:hf_texts]
    with tempfile.TemporaryDirectory() as tmp:
        for name, (hidden, layers, heads) in {"hf-tiny": (32, 1, 2), "hf-mini": (256, 4, 4)}.items():
            folder = Path(tmp) / name
            params = build_bert(folder, fit_texts, hidden, layers, heads, vocab=8000)
            enc = make_encoder(f"hf:{folder}", max_length=256, batch_size=32)
            enc.encode(sub[:4])  # load outside the timing
            _, s = timed(lambda enc=enc: enc.encode(sub))
            row(name, len(sub), s, toy=True, dim=enc.dim, params=params, hidden=hidden, layers=layers, max_length=256)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit", type=int, default=0, help="embed only the first N texts (0: all)")
    p.add_argument("--hf-texts", type=int, default=1000, help="texts for the hf toy models")
    p.add_argument("--threads", type=int, default=0, help="torch threads for hf (0: every core)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    setup_env()
    texts, fit_texts = osha_texts()
    if args.limit:
        texts = texts[: args.limit]
    threads = args.threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
    rows = bench(texts, fit_texts, min(args.hf_texts, len(texts)), threads)
    write_json(
        args.json,
        {
            "machine": machine(),
            "threads": threads,
            "embedding_texts_per_s": {r["encoder"]: r["texts_per_s"] for r in rows},
            "encoders": rows,
        },
    )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
