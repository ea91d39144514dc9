"""ABEX augmentation: config, plan, prompts, engines, filters, and the whole pipeline on Ray Data.

The LLM is a random-weight Qwen3 causal LM (hidden 32, 1 layer) with a word-level tokenizer
trained here and a chat template; its words are the tiny dataset's, so its "reports" are word
salad over the right vocabulary. The pipeline runs on a local Ray with 2 CPUs, a killed run is a
real SIGKILL of a CLI subprocess attached to the same Ray.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from abexrat.augment.cache import ChunkCache, GenStats, complete
from abexrat.augment.config import AugmentConfig, FilterConfig, load_augment_config
from abexrat.augment.engines import (
    ENGINES,
    SeededSampler,
    TransformersGenerator,
    VLLMEngine,
    sampling_params,
    vllm_generate_config,
    vllm_postprocess,
)
from abexrat.augment.filters import FILTERS, apply_filters, label_probabilities, normalize
from abexrat.augment.pipeline import PAUSE_ENV, clean_generation, run_augment
from abexrat.augment.plan import derive_seed, plan_sources, spec_key
from abexrat.augment.prompts import PROMPT_VERSION, abstraction_messages, expansion_messages, prompt_digest
from abexrat.core.errors import UserError
from tests.conftest import CLASS_WORDS, FILLER, REPO

OVER, VIOL = "OVEREXERTION AND BODILY REACTION", "VIOLENCE AND OTHER INJURIES BY PERSONS OR ANIMALS"
WORDS = sorted({w for ws in CLASS_WORDS.values() for w in ws.split()} | set(FILLER))
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }}<|im_end|>{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant {% endif %}"
)


def save_tiny_tokenizer(folder: Path) -> None:
    """Word-level tokenizer over the dataset's words, ChatML-like specials, a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(0)
    corpus = [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(60)]
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=specials))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        padding_side="left",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)


def make_tiny_lm(folder: Path, seed: int = 0) -> Path:
    """A random Qwen3ForCausalLM: hidden 32, 1 layer, 2 heads (1 kv head of 16)."""
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    save_tiny_tokenizer(folder)
    tok = PreTrainedTokenizerFast.from_pretrained(folder)
    torch.manual_seed(seed)
    Qwen3ForCausalLM(
        Qwen3Config(
            vocab_size=len(tok),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            intermediate_size=64,
            max_position_embeddings=512,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            bos_token_id=tok.bos_token_id,
        )
    ).save_pretrained(folder)
    return folder


def make_tiny_bart(folder: Path, seed: int = 0) -> Path:
    """A random BartForConditionalGeneration (d_model 32, 1 + 1 layers) on the same tokenizer."""
    from transformers import BartConfig, BartForConditionalGeneration, PreTrainedTokenizerFast

    save_tiny_tokenizer(folder)
    tok = PreTrainedTokenizerFast.from_pretrained(folder)
    torch.manual_seed(seed)
    BartForConditionalGeneration(
        BartConfig(
            vocab_size=len(tok),
            d_model=32,
            encoder_layers=1,
            decoder_layers=1,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            max_position_embeddings=512,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            decoder_start_token_id=tok.bos_token_id,
            forced_eos_token_id=None,
        )
    ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_lm(tmp_path_factory.mktemp("lm") / "tiny-qwen3")


@pytest.fixture(scope="module")
def generator(tiny_lm: Path) -> TransformersGenerator:
    return TransformersGenerator(str(tiny_lm), device="cpu")


def tiny_config(data_dir: Path, model: Path, **extra: object) -> dict:
    """2 sources each of the two smallest classes, k = 2 and 3: 10 rows in 4 one-source chunks."""
    raw = {
        "name": "tiny",
        "seed": 7,
        "data": {"dataset": str(data_dir)},
        "select": {"max_originals": 6, "max_sources_per_class": 2},
        "amount": {"per_source": {OVER: 2, VIOL: 3}},
        "abstract": {
            "model": str(model),
            "temperature": 1.0,
            "top_p": 0.9,
            "max_new_tokens": 10,
            "concurrency": 1,
            "batch_size": 2,
            "num_cpus": 0.4,
            "device": "cpu",
        },
        "expand": {
            "temperature": 1.0,
            "top_p": 0.95,
            "max_new_tokens": 16,
            "concurrency": 2,
            "batch_size": 2,
            "num_cpus": 0.4,
            "device": "cpu",
        },
        "filters": {"min_words": 4, "max_words": 40, "near_dup": 0.8, "label_check": True, "label_threshold": 0.05},
        "chunk_size": 1,
    }
    raw.update(extra)
    return raw


# ---------------------------------------------------------------- config and plan


def test_config_errors_name_the_key(tmp_path: Path, tiny_dir: Path) -> None:
    cases = {
        "expand: {temprature: 0.5}\n": r"bad\.yaml: expand\.temprature: unknown key",
        "abstract: {engine: sglang}\n": r"abstract\.engine: .*unknown engine 'sglang' \(known: transformers, vllm\)",
        "amount: {per_source: 5, target: 100}\n": r"amount: .*per_source or target, not both",
        "amount: {per_source: -1}\n": r"amount\.per_source: .*\[0, 100000\]",
        "expand: {top_p: 0}\n": r"expand\.top_p: .*greater than 0",
        "abstract: {engine: vllm}\nexpand: {style: seq2seq}\n": r"expand\.style: seq2seq needs engine transformers",
        "- a list\n": r"expected a mapping",
        "filters: {min_words: 50, max_words: 10}\n": r"bad\.yaml: filters: .*min_words is larger than max_words",
    }
    for text, pattern in cases.items():
        path = tmp_path / "bad.yaml"
        path.write_text(text)
        with pytest.raises(UserError, match=pattern):
            load_augment_config(path)
    with pytest.raises(UserError, match=r"--set expand\.temperature=hot.*|expand\.temperature"):
        load_augment_config(None, ["expand.temperature=hot"])
    # Defaults: the expander is the abstraction LLM, the classes are the paper's (<= 200 originals).
    cfg = load_augment_config(None, ["abstract.model=Qwen/Qwen3-8B", "abstract.engine=vllm"])
    assert (cfg.expand.model, cfg.expand.engine) == ("Qwen/Qwen3-8B", "vllm")
    assert (cfg.select.max_originals, cfg.amount.per_source) == (200, 5)
    assert cfg.abstract.chat_template_kwargs == {"enable_thinking": False}
    # The same LLM is run the same way (engine settings inherited), but samples with its own settings.
    sets = ["abstract.engine=vllm", "abstract.concurrency=4", "abstract.engine_kwargs={seed: 1}", "expand.batch_size=8"]
    cfg = load_augment_config(None, sets)
    assert (cfg.expand.concurrency, cfg.expand.engine_kwargs, cfg.expand.batch_size) == (4, {"seed": 1}, 8)
    assert (cfg.expand.temperature, cfg.abstract.temperature, cfg.abstract.batch_size) == (1.0, 0.7, 16)
    cfg.expand.engine_kwargs["x"] = 2
    assert cfg.abstract.engine_kwargs == {"seed": 1}  # a copy, not the same dict
    other = load_augment_config(None, ["abstract.concurrency=4", "expand.model=facebook/bart-base"])
    assert (other.expand.concurrency, other.expand.engine) == (1, "transformers")  # another model: its own settings

    from abexrat.augment.pipeline import load_source_dataset

    ds = load_source_dataset(AugmentConfig.model_validate({"data": {"dataset": str(tiny_dir)}}))
    for raw, pattern in [
        ({"select": {"classes": ["FALLS"]}}, r"x\.yaml: select\.classes: 'FALLS' is not a class of train"),
        ({"amount": {"target": {"FIRE": 3}}}, r"x\.yaml: amount\.target: 'FIRE' is not a class"),
        (
            {"select": {"classes": [OVER]}, "amount": {"per_source": {VIOL: 2}}},
            r"x\.yaml: amount\.per_source: no amount for class 'OVEREXERTION",
        ),
    ]:
        with pytest.raises(UserError, match=pattern):
            plan_sources(AugmentConfig.model_validate({"data": {"dataset": str(tiny_dir)}, **raw}), ds, "x.yaml")


def test_plan_by_threshold_multiplier_and_target(tiny_dir: Path) -> None:
    from abexrat.augment.pipeline import load_source_dataset

    base = {"data": {"dataset": str(tiny_dir)}}
    ds = load_source_dataset(AugmentConfig.model_validate(base))
    counts = dict(zip(ds.classes, np.bincount(ds.train.labels)))  # 40, 36, 24, 12, 10, 6, 5

    jobs = plan_sources(
        AugmentConfig.model_validate({**base, "select": {"max_originals": 12}, "amount": {"per_source": 4}}), ds
    )
    by_class = {c: [j for j in jobs if j.label == c] for c in ds.classes}
    assert [len(by_class[c]) for c in ds.classes] == [0, 0, 0, 12, 10, 6, 5]
    assert {j.k for j in jobs} == {4}
    for c in ds.classes[3:]:  # every training original of the class, in training order, with its own text
        rows = [i for i in range(len(ds.train)) if ds.classes[ds.train.labels[i]] == c]
        assert [j.source_id for j in by_class[c]] == [ds.train.ids[i] for i in rows]
        assert [j.text for j in by_class[c]] == [ds.train.texts[i] for i in rows]
    assert len({j.source_key for j in jobs}) == len(jobs)

    # Targets: class size after augmenting. 10 + 23 = 33 -> 23 over 10 sources: 3 get 3, 7 get 2.
    target = {"FIRES AND EXPLOSIONS": 33, OVER: 6, VIOL: 17}
    jobs = plan_sources(
        AugmentConfig.model_validate({**base, "select": {"classes": list(target)}, "amount": {"target": target}}), ds
    )
    fires = sorted(j.k for j in jobs if j.label == "FIRES AND EXPLOSIONS")
    assert fires == [2] * 7 + [3] * 3
    assert not [j for j in jobs if j.label == OVER]  # already 6 originals: nothing to add
    assert sorted(j.k for j in jobs if j.label == VIOL) == [2, 2, 2, 3, 3]  # 12 over 5
    for c, t in target.items():
        assert counts[c] + sum(j.k for j in jobs if j.label == c) == max(t, counts[c])

    # The sample seeds and keys are pure functions of what decides the rows.
    assert derive_seed(7, "12", 3) == derive_seed(7, "12", 3) != derive_seed(7, "12", 4)
    assert 0 <= derive_seed(0, "x", 0) < 2**31
    cfg = AugmentConfig.model_validate(base)
    assert spec_key(cfg) == spec_key(AugmentConfig.model_validate({**base, "abstract": {"concurrency": 8}}))
    assert spec_key(cfg) != spec_key(AugmentConfig.model_validate({**base, "seed": 1}))
    assert spec_key(cfg) != spec_key(AugmentConfig.model_validate({**base, "expand": {"temperature": 0.5}}))
    assert spec_key(cfg) != spec_key(AugmentConfig.model_validate({**base, "abstract": {"engine": "vllm"}}))


def test_prompts_are_versioned_chat_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    import abexrat.augment.prompts as prompts

    msgs = abstraction_messages("A worker fell 20 feet from a ladder and fractured his hip.", "FALLS,SLIPS,TRIPS")
    assert [m["role"] for m in msgs] == ["system", "user"]
    user = msgs[1]["content"]
    assert "A worker fell 20 feet from a ladder and fractured his hip." in user
    assert "Event type: FALLS,SLIPS,TRIPS" in user
    for part in ("what happened", "mechanism", "object", "injury", "at most 60 words"):
        assert part in user
    exp = expansion_messages("Fall from a ladder; hip fracture.", VIOL)
    assert [m["role"] for m in exp] == ["system", "user"]
    assert "Abstract: Fall from a ladder; hip fracture." in exp[1]["content"] and VIOL in exp[1]["content"]
    assert expansion_messages("Fall; hip fracture.", VIOL, "seq2seq") == [
        {"role": "user", "content": "Fall; hip fracture."}
    ]
    assert PROMPT_VERSION == "abex-v1"
    digest = prompt_digest()
    monkeypatch.setattr(prompts, "EXPAND_USER", prompts.EXPAND_USER + " ")
    assert prompt_digest() != digest  # an edit without a version bump still misses the cache


def test_clean_generation() -> None:
    assert clean_generation("<think>\nplan it\n</think>\n\nReport:  A worker   fell.\n") == "A worker fell."
    assert clean_generation('"Abstract: a fall from height."') == "a fall from height."
    assert clean_generation("<think>never closed") == ""
    assert clean_generation("") == ""


# ---------------------------------------------------------------- engines


def test_seeded_sampler_top_p_and_greedy() -> None:
    scores = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]] * 3))
    picks = {i: set() for i in range(3)}
    for seed in range(200):
        out = SeededSampler([1.0, 1.0, 0.0], [0.7, 1.0, 1.0], [seed, seed, seed])(None, scores)
        assert torch.isfinite(out).sum(1).tolist() == [1, 1, 1]  # one-hot: generate's greedy takes it
        for i in range(3):
            picks[i].add(int(out[i].argmax()))
    assert picks[0] == {0, 1}  # top-p 0.7 keeps 0.5 + 0.3
    assert picks[1] == {0, 1, 2, 3}
    assert picks[2] == {0}  # temperature 0: argmax
    a = SeededSampler([1.0], [1.0], [5])
    b = SeededSampler([1.0], [1.0], [5])
    seq_a = [int(a(None, scores[:1]).argmax()) for _ in range(20)]
    assert seq_a == [int(b(None, scores[:1]).argmax()) for _ in range(20)]
    # Empirical frequencies follow the distribution (400 draws, 5 sigma bounds).
    s = SeededSampler([1.0], [1.0], [11])
    draws = np.bincount([int(s(None, scores[:1]).argmax()) for _ in range(400)], minlength=4) / 400
    assert np.all(np.abs(draws - [0.5, 0.3, 0.15, 0.05]) < 5 * np.sqrt(0.25 / 400))


def test_transformers_engine_rows_depend_only_on_their_seed(generator: TransformersGenerator, tiny_lm: Path) -> None:
    from transformers import AutoModelForCausalLM

    msgs = [
        abstraction_messages(t, OVER)
        for t in ("lifting strain back", "the worker was carrying a load", "twisted back when lifting")
    ]
    params = [{"temperature": 1.0, "top_p": 0.9, "max_tokens": 12, "seed": s} for s in (1, 2, 3)]
    texts, counts = generator.generate(msgs, params)
    alone = [generator.generate([m], [p]) for m, p in zip(msgs, params)]
    assert texts == [a[0][0] for a in alone] and counts == [a[1][0] for a in alone]
    assert all(1 <= c <= 12 for c in counts)
    assert all(w in WORDS for t in texts for w in t.split())  # decoded from the tiny vocabulary
    reversed_texts, _ = generator.generate(msgs[::-1], params[::-1])
    assert reversed_texts == texts[::-1]
    other, _ = generator.generate(msgs, [{**p, "seed": p["seed"] + 100} for p in params])
    assert other != texts
    short, short_counts = generator.generate(msgs[:1], [{**params[0], "max_tokens": 3}])
    assert short_counts[0] <= 3 and texts[0].split()[: len(short[0].split())] == short[0].split()

    # Temperature 0 is the model's own greedy decoding.
    greedy, _ = generator.generate(msgs[:1], [{"temperature": 0.0, "top_p": 1.0, "max_tokens": 8, "seed": 9}])
    tok = generator.tokenizer
    prompt = tok.apply_chat_template(msgs[0], tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm).eval()
    ref = model.generate(**ids, do_sample=False, max_new_tokens=8, pad_token_id=tok.pad_token_id)
    new = ref[0, ids["input_ids"].shape[1] :].tolist()
    end = new.index(tok.eos_token_id) if tok.eos_token_id in new else None
    assert greedy[0] == tok.decode(new[:end], skip_special_tokens=True).strip()

    # The map_batches interface: numpy columns in, `keep` columns + generated_text out.
    batch = {
        "messages": np.array(msgs, dtype=object),
        "sampling_params": np.array(params, dtype=object),
        "source_id": np.array(["a", "b", "c"], dtype=object),
    }
    gen_keep = TransformersGenerator(str(tiny_lm), device="cpu", keep=["source_id"])
    out = gen_keep(batch)
    assert sorted(out) == ["generated_text", "num_generated_tokens", "source_id"]
    assert out["generated_text"].tolist() == texts and out["num_generated_tokens"].tolist() == counts


def test_transformers_engine_runs_a_seq2seq_expander(tmp_path: Path) -> None:
    bart = TransformersGenerator(str(make_tiny_bart(tmp_path / "tiny-bart")), device="cpu")
    assert bart.seq2seq
    msgs = [expansion_messages(a, VIOL, "seq2seq") for a in ("dog bite worker", "assault robbery shot")]
    params = [{"temperature": 1.0, "top_p": 0.95, "max_tokens": 10, "seed": s} for s in (4, 5)]
    texts, counts = bart.generate(msgs, params)
    assert [bart.generate([m], [p])[0][0] for m, p in zip(msgs, params)] == texts
    assert all(1 <= c <= 10 for c in counts) and any(texts)
    assert all(w in WORDS for t in texts for w in t.split())
    assert bart.prompts(msgs) == ["dog bite worker", "assault robbery shot"]  # the bare abstract, no template


def test_vllm_engine_config_without_vllm() -> None:
    cfg = AugmentConfig.model_validate(
        {
            "abstract": {
                "engine": "vllm",
                "model": "Qwen/Qwen3-8B",
                "concurrency": 4,
                "batch_size": 64,
                "tensor_parallel_size": 2,
                "max_model_len": 4096,
                "accelerator_type": "H100",
                "engine_kwargs": {"gpu_memory_utilization": 0.9, "tensor_parallel_size": 8},
            },
        }
    )
    kw = vllm_generate_config(cfg.abstract)
    assert kw == {
        "model_source": "Qwen/Qwen3-8B",
        "task_type": "generate",
        "engine_kwargs": {"gpu_memory_utilization": 0.9, "tensor_parallel_size": 2, "max_model_len": 4096},
        "concurrency": 4,
        "batch_size": 64,
        "accelerator_type": "H100",
        "chat_template_stage": {"enabled": True, "chat_template_kwargs": {"enable_thinking": False}},
        "tokenize_stage": False,
        "detokenize_stage": False,
    }
    assert vllm_generate_config(cfg.expand)["model_source"] == "Qwen/Qwen3-8B"  # the same LLM expands
    assert "accelerator_type" not in vllm_generate_config(AugmentConfig().abstract)

    llm = pytest.importorskip("ray.data.llm")  # needs aiohttp, not vllm
    config = llm.vLLMEngineProcessorConfig(**kw)
    assert (config.model_source, config.task_type, config.concurrency, config.batch_size) == (
        "Qwen/Qwen3-8B",
        "generate",
        4,
        64,
    )
    assert config.engine_kwargs["tensor_parallel_size"] == 2 and config.engine_kwargs["task_type"] == "generate"
    assert config.get_concurrency() == {"min_size": 1, "max_size": 4}
    assert config.chat_template_stage == {"enabled": True, "chat_template_kwargs": {"enable_thinking": False}}
    assert (config.tokenize_stage, config.detokenize_stage) == (False, False)

    # The shared row schema: vLLM's extra columns are dropped, the kept ones travel through.
    row = {
        "source_id": "12",
        "k": 3,
        "generated_text": " A worker fell. ",
        "num_generated_tokens": 5,
        "prompt": "<|im_start|>...",
        "generated_tokens": [1, 2],
        "time_taken_llm": 0.1,
    }
    assert vllm_postprocess(row, ["source_id", "k"]) == {
        "source_id": "12",
        "k": 3,
        "generated_text": "A worker fell.",
        "num_generated_tokens": 5,
    }
    assert sampling_params(cfg.expand, 42) == {"temperature": 1.0, "top_p": 0.95, "max_tokens": 192, "seed": 42}
    assert set(ENGINES) == {"transformers", "vllm"}
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(UserError, match=r"needs the gpu extra: pip install 'abexrat\[gpu\]'"):
            VLLMEngine(cfg.abstract).apply(None, [])  # type: ignore[arg-type]


# ---------------------------------------------------------------- filters


def test_filters_each_remove_their_rows_once() -> None:
    originals = [
        "A worker fell from a ladder at the site and broke a leg badly today",
        "The forklift struck a driver near the loading dock during the night shift",
    ]
    texts = [
        "too short",  # 0 length
        "a worker FELL from a ladder, at the site and broke a leg badly today!",  # 1 exact dup of an original
        "the dog bit the employee on the arm while he was reading the meter outside",  # 2 kept
        "The dog bit the employee on the arm while he was reading the meter outside",  # 3 exact dup of row 2
        "the dog bit the employee on the arm while he was reading the meter outside today",  # 4 near dup of 2
        "a worker fell from a ladder at the site and broke a leg badly today at noon",  # 5 near dup of original 0
        "the forklift struck a driver near the loading dock during the night shift x y z w v u t s r q",  # 6 kept
    ]
    labels = np.array([0, 0, 1, 1, 1, 0, 1])
    cfg = FilterConfig(min_words=5, max_words=40, near_dup=0.7)
    res = apply_filters(texts, labels, originals, cfg)
    flagged = {name: np.flatnonzero(f).tolist() for name, f in res.flags.items()}
    assert flagged == {"length": [0], "exact_dup": [1, 3], "near_dup": [4, 5], "label": []}
    assert res.removed == {"length": 1, "exact_dup": 2, "near_dup": 2, "label": 0}
    assert res.kept.tolist() == [False, False, True, False, False, False, True]
    # Jaccard of 3-gram sets: row 4 adds a word to row 2's 15 (13 shingles, all shared, of 14).
    assert res.near_dup_sim[4] == pytest.approx(13 / 14)
    assert res.near_dup_sim[5] == pytest.approx(13 / 15)  # original 0: 15 words, 13 shingles, all in row 5's 15
    assert res.near_dup_sim[2] < 0.7 and np.isnan(res.near_dup_sim[0]) and np.isnan(res.label_prob).all()
    # Off switches.
    off = apply_filters(texts, labels, originals, FilterConfig(min_words=0, exact_dup=False, near_dup=None))
    assert off.removed == {"length": 0, "exact_dup": 0, "near_dup": 0, "label": 0} and off.kept.all()
    assert normalize("  A  Worker, fell! ") == "a worker fell"

    # Label consistency: a classifier of the originals; rows far from their class go.
    rng = random.Random(1)
    classes = list(CLASS_WORDS)
    train = [
        (" ".join(rng.choice(CLASS_WORDS[c].split()) for _ in range(10)), i)
        for i, c in enumerate(classes)
        for _ in range(8)
    ]
    train_texts, y = [t for t, _ in train], np.array([c for _, c in train])
    new = ["dog bite assault attacked dog bite robbery shot dog assault", "dog bite assault attacked dog bite robbery"]
    new_labels = np.array([6, 0])  # right class, wrong class
    res = apply_filters(
        new,
        new_labels,
        [],
        FilterConfig(min_words=1, near_dup=None, label_check=True, label_threshold=0.5),
        train_texts,
        y,
        len(classes),
    )
    probs = label_probabilities(train_texts, y, new, len(classes))
    np.testing.assert_allclose(res.label_prob, probs[[0, 1], [6, 0]], rtol=1e-6)
    assert res.label_prob[0] > 0.5 > res.label_prob[1]
    assert res.flags["label"].tolist() == [False, True] and res.removed["label"] == 1
    assert probs.shape == (2, 7) and np.allclose(probs.sum(1), 1.0, atol=1e-5)


# ---------------------------------------------------------------- the pipeline on Ray Data


def _chunks(cache: Path) -> list[Path]:
    return sorted(cache.glob("augment/*/*.parquet"))


def test_pipeline_killed_then_resumed_then_cached(
    ray_address: str, tiny_lm: Path, tiny_dir: Path, tmp_path: Path, generator: TransformersGenerator, cli
) -> None:  # noqa: ANN001
    import yaml

    from abexrat.augment.pipeline import load_source_dataset
    from abexrat.pool import read_pool

    raw = tiny_config(tiny_dir, tiny_lm)
    cfg_path = tmp_path / "tiny-augment.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    cfg = load_augment_config(cfg_path)
    cache = tmp_path / "cache"

    # 1. A CLI run on the same Ray, SIGKILLed once its first chunk is on disk. The pause after each
    #    chunk write keeps the second one from landing before the kill.
    log = (tmp_path / "killed.log").open("w")
    env = {**os.environ, "RAY_ADDRESS": ray_address, PAUSE_ENV: "60", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "abexrat.cli",
            "augment",
            "run",
            str(cfg_path),
            "--out",
            str(tmp_path / "killed"),
            "--cache-dir",
            str(cache),
        ],
        env=env,
        stdout=log,
        stderr=log,
    )
    deadline = time.monotonic() + 120
    while not _chunks(cache) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    log.close()
    first = _chunks(cache)
    assert len(first) == 1, (tmp_path / "killed.log").read_text()[-3000:]
    assert proc.returncode == -9
    assert not (tmp_path / "killed" / "pool.json").exists()  # the pool is written only at the end
    first_bytes = first[0].read_bytes()

    # 2. Resume: only the 3 missing sources are generated; the killed run's chunk is reused as is.
    out = tmp_path / "pool"
    summary = run_augment(cfg, out, cache_root=cache, where=str(cfg_path))
    run = summary["run"]
    assert (run["sources"], run["sources_cached"], run["sources_generated"]) == (4, 1, 3)
    assert run["rows_cached"] + run["rows_generated"] == 10 and run["chunks_written"] == 3
    assert run["abstract_tokens"] > 0 and run["expand_tokens"] > 0
    chunks = _chunks(cache)
    assert len(chunks) == 4 and first[0] in chunks and first[0].read_bytes() == first_bytes

    # Schema, counts per class, provenance.
    pool = pq.read_table(out / "pool.parquet")
    rejected = pq.read_table(out / "rejected.parquet")
    for col in (
        "id",
        "source_id",
        "label",
        "abstract",
        "text",
        "engine",
        "model",
        "prompt_version",
        "seed",
        *(f"flag_{f}" for f in FILTERS),
    ):
        assert col in pool.column_names and col in rejected.column_names
    rows = pool.to_pylist() + rejected.to_pylist()
    ds = load_source_dataset(cfg)
    jobs = plan_sources(cfg, ds)
    assert [(j.label, j.k) for j in jobs] == [(OVER, 2), (OVER, 2), (VIOL, 3), (VIOL, 3)]
    by_source = {j.source_id: j for j in jobs}
    assert sorted(r["id"] for r in rows) == sorted(f"{j.source_id}-aug-{k}" for j in jobs for k in range(1, j.k + 1))
    train_label = {i: ds.classes[c] for i, c in zip(ds.train.ids, ds.train.labels)}
    for r in rows:
        j = by_source[r["source_id"]]
        assert r["label"] == j.label == train_label[r["source_id"]]
        assert r["id"] == f"{r['source_id']}-aug-{r['k']}" and r["seed"] == derive_seed(7, r["source_id"], r["k"])
        assert (r["engine"], r["model"], r["prompt_version"]) == ("transformers", str(tiny_lm), PROMPT_VERSION)
        assert (r["abstract_engine"], r["abstract_model"]) == ("transformers", str(tiny_lm))
        assert r["source_key"] == j.source_key and r["abstract"]
    assert len({r["abstract"] for r in rows if r["source_id"] == jobs[2].source_id}) == 1  # one abstract per source
    assert len({r["seed"] for r in rows}) == 10
    counts = summary["counts"]
    assert counts["generated"] == 10 and counts["sources"] == 4
    assert counts["per_class"] == {
        OVER: {"sources": 2, "generated": 4, "kept": sum(r["label"] == OVER for r in pool.to_pylist())},
        VIOL: {"sources": 2, "generated": 6, "kept": sum(r["label"] == VIOL for r in pool.to_pylist())},
    }
    assert counts["kept"] == pool.num_rows and counts["kept"] + sum(counts["removed"].values()) == 10
    # Each rejected row carries exactly the flag of the filter that removed it; kept rows none.
    for r in pool.to_pylist():
        assert not any(r[f"flag_{f}"] for f in FILTERS)
        assert len(r["text"].split()) >= 4 and r["label_prob"] >= 0.05
    for r in rejected.to_pylist():
        assert sum(r[f"flag_{f}"] for f in FILTERS) == 1
    assert counts["removed"] == {f: sum(r[f"flag_{f}"] for r in rejected.to_pylist()) for f in FILTERS}
    for r in rejected.to_pylist():
        if r["flag_length"]:
            assert not 4 <= len(r["text"].split()) <= 40

    # Every row, whichever run, chunk, actor or batch made it, is the engine's output for its seed:
    # one from the killed run's chunk, one from the resumed run's.
    killed_source = pq.read_table(first[0]).column("source_id").to_pylist()[0]
    from_killed = next(r for r in rows if r["source_id"] == killed_source)
    from_resumed = next(r for r in rows[::-1] if r["source_id"] != killed_source)
    for r in (from_killed, from_resumed):
        j = by_source[r["source_id"]]
        [abstract], _ = generator.generate(
            [abstraction_messages(j.text, j.label)], [sampling_params(cfg.abstract, derive_seed(7, j.source_id, 0))]
        )
        assert clean_generation(abstract) == r["abstract"]
        [text], _ = generator.generate(
            [expansion_messages(r["abstract"], j.label)], [sampling_params(cfg.expand, r["seed"])]
        )
        assert clean_generation(text) == r["text"]

    # Studies read it as a pool.
    split = read_pool(out, ds)
    assert split.ids == pool.column("id").to_pylist() and split.source_ids == pool.column("source_id").to_pylist()

    # 3. A rerun (through the CLI, into a new folder) generates nothing and writes the same pool.
    res = cli("augment", "run", cfg_path, "--out", tmp_path / "again", "--cache-dir", cache)
    assert res.code == 0, res.stderr
    assert "sources: 0 generated, 4 cached" in res.stderr
    assert pq.read_table(tmp_path / "again" / "pool.parquet").equals(pool)
    # pandas' equals, not arrow's: unchecked scores are NaN, and NaN == NaN here.
    assert pq.read_table(tmp_path / "again" / "rejected.parquet").to_pandas().equals(rejected.to_pandas())
    assert _chunks(cache) == chunks

    # A corrupt chunk is dropped on lookup, and only its source counts as missing again.
    chunks[-1].write_bytes(b"not parquet")
    stats = GenStats()
    found = ChunkCache(cache, spec_key(cfg)).load(stats)
    assert stats.chunks_dropped == 1 and not chunks[-1].exists()
    assert sum(not complete(found.get(j.source_key), j) for j in jobs) == 1
    assert all(complete(found.get(j.source_key), j) or j.source_key not in found for j in jobs)


def test_augment_cli_bad_input_is_one_line(tmp_path: Path, tiny_dir: Path, cli) -> None:  # noqa: ANN001
    bad = tmp_path / "bad.yaml"
    bad.write_text("filters: {near_dup: 1.5}\n")
    res = cli("augment", "run", bad, "--out", tmp_path / "p")
    assert res.code == 2 and res.stderr.strip().count("\n") == 0
    assert "bad.yaml: filters.near_dup: Input should be less than or equal to 1" in res.stderr
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"data: {{dataset: '{tiny_dir}'}}\nselect: {{classes: [NOPE]}}\n")
    res = cli("augment", "run", cfg, "--out", tmp_path / "p")
    assert res.code == 2 and "cfg.yaml: select.classes: 'NOPE' is not a class of train" in res.stderr
    assert not (tmp_path / "p").exists()


def test_actor_pools_that_cannot_run_together_are_refused_naming_the_keys() -> None:
    from abexrat.augment.engines import check_actor_fit

    cfg = load_augment_config(None, ["abstract.num_cpus=2"])  # expand inherits 2: 4 CPUs at once
    with pytest.raises(UserError) as e:
        check_actor_fit(cfg.abstract, cfg.expand, {"CPU": 2.0})
    assert str(e.value) == (
        "abstract.num_cpus 2 x concurrency 1 + expand.num_cpus 2 x concurrency 1 reserve 4 CPUs at once, "
        "and this Ray cluster has 2: lower num_cpus or concurrency"
    )
    check_actor_fit(cfg.abstract, cfg.expand, {"CPU": 4.0})  # fits: no error
    one = load_augment_config(None, ["abstract.num_cpus=1"])
    check_actor_fit(one.abstract, one.expand, {"CPU": 2.0})
