"""hf:<model> on tiny random-weight BERT and Qwen3 models built here, and the vllm:<model> config."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from abexrat.core.errors import UserError
from abexrat.embed import EmbeddingCache, EmbedStats, embed_texts
from abexrat.encoders import load_encoder, make_encoder, save_encoder

TEXTS = [
    "worker fell from ladder",
    "forklift truck struck the worker at the site on a roof and was burned",
    "fire",
    "ammonia fumes caught in press machine",
    "lifting strain back",
    "dog bite",
    "the worker was caught in the press and the machine struck the back of a worker on the roof",
]
SHORT, LONG = "dog bite", TEXTS[-1]
# The tokenizers learn their vocabulary from random sentences over the words of TEXTS.
WORDS = sorted({w for t in TEXTS for w in t.split()})
rng = random.Random(0)
CORPUS = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14))) for _ in range(40)]


def save_tokenizer(folder: Path, *, left: bool) -> None:
    """A word-level tokenizer trained on CORPUS: BERT-style [CLS] x [SEP], or x [SEP] padded on the left."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(CORPUS, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"]))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    template = "$A [SEP]" if left else "[CLS] $A [SEP]"
    tok.post_processor = processors.TemplateProcessing(single=template, special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        padding_side="left" if left else "right",
        model_input_names=["input_ids", "attention_mask"],
    )
    fast.save_pretrained(folder)


def save_model(folder: Path, kind: str, seed: int) -> None:
    """Random weights: BERT (hidden 32, 1 layer, 2 heads) or Qwen3 (the same, 1 kv head of 16)."""
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast, Qwen3Config, Qwen3Model

    vocab = len(PreTrainedTokenizerFast.from_pretrained(folder))
    torch.manual_seed(seed)
    if kind == "bert":
        model = BertModel(
            BertConfig(
                vocab_size=vocab,
                hidden_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=64,
                max_position_embeddings=64,
                pad_token_id=0,
            )
        )
    else:
        model = Qwen3Model(
            Qwen3Config(
                vocab_size=vocab,
                hidden_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                num_key_value_heads=1,
                head_dim=16,
                intermediate_size=64,
                max_position_embeddings=64,
                pad_token_id=0,
            )
        )
    model.save_pretrained(folder)


def make_tiny(folder: Path, kind: str, seed: int = 0) -> Path:
    save_tokenizer(folder, left=kind == "qwen")
    save_model(folder, kind, seed)
    return folder


@pytest.fixture(autouse=True)
def on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Float32 on the CPU even where a GPU or a bf16 CPU exists: the comparisons below hold to 1e-5, half
    precision does not (tests/test_real_models.py checks bf16 against fp32 on real weights)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {kind: make_tiny(root / f"tiny-{kind}", kind) for kind in ("bert", "qwen")}


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


@pytest.mark.parametrize("kind", ["bert", "qwen"])
def test_encode_is_unit_norm_deterministic_and_order_free(tiny_models: dict[str, Path], kind: str) -> None:
    enc = make_encoder(f"hf:{tiny_models[kind]}", batch_size=4)
    assert enc.resolved_pooling == {"bert": "mean", "qwen": "last"}[kind]  # "qwen" in the path picks last
    assert enc.dim == 32
    vecs = enc.encode(TEXTS)
    assert vecs.shape == (len(TEXTS), 32) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(enc.encode(TEXTS), vecs)
    assert np.abs(vecs[0] - vecs[1]).max() > 1e-2  # different texts, different vectors
    perm = [3, 6, 0, 5, 1, 4, 2]
    np.testing.assert_allclose(enc.encode([TEXTS[i] for i in perm]), vecs[perm], atol=1e-5)
    for batch_size in (1, 2, 64):
        other = make_encoder(f"hf:{tiny_models[kind]}", batch_size=batch_size)
        np.testing.assert_allclose(other.encode(TEXTS), vecs, atol=1e-5)
    assert enc.encode([]).shape == (0, 32)


def test_mean_pooling_is_the_masked_mean_of_the_last_hidden_state(tiny_models: dict[str, Path]) -> None:
    from transformers import AutoModel, AutoTokenizer

    folder = tiny_models["bert"]
    tok, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    batch = tok([TEXTS[1]], return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state[0].numpy()  # (L, 32), no padding: every token is real
    expected = unit(hidden.mean(0))
    got = make_encoder(f"hf:{folder}").encode([TEXTS[1]])[0]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.abs(got - unit(hidden[0])).max() > 1e-2  # not the [CLS] vector
    # Padded inside a batch with a longer text, the mean still covers only its own tokens.
    np.testing.assert_allclose(make_encoder(f"hf:{folder}").encode([LONG, TEXTS[1]])[1], expected, atol=1e-5)


@pytest.mark.parametrize(("kind", "side"), [("qwen", "left"), ("qwen", "right"), ("bert", "right")])
def test_last_token_pooling_finds_the_last_real_token(tiny_models: dict[str, Path], kind: str, side: str) -> None:
    from transformers import AutoModel, AutoTokenizer

    folder = tiny_models[kind]
    tok, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    with torch.inference_mode():
        hidden = model(**tok([SHORT], return_tensors="pt")).last_hidden_state[0].numpy()
    enc = make_encoder(f"hf:{folder}", pooling="last")
    enc._load()[1].padding_side = side
    alone = enc.encode([SHORT])[0]
    np.testing.assert_allclose(alone, unit(hidden[-1]), atol=1e-5)
    padded = tok([LONG, SHORT], padding=True, padding_side=side)["attention_mask"]
    assert sum(padded[1]) < len(padded[1])  # the short text really is padded in the pair
    in_batch = enc.encode([LONG, SHORT])
    np.testing.assert_allclose(in_batch[1], alone, atol=1e-4)
    assert np.abs(in_batch[0] - alone).max() > 1e-2


def test_instruction_is_a_prefix_of_every_text(tiny_models: dict[str, Path]) -> None:
    folder = tiny_models["qwen"]
    plain, instructed = make_encoder(f"hf:{folder}"), make_encoder(f"hf:{folder}", instruction="worker fell ")
    assert plain.key != instructed.key
    np.testing.assert_allclose(
        instructed.encode(TEXTS[:3]), plain.encode(["worker fell " + t for t in TEXTS[:3]]), atol=1e-5
    )


def test_embed_texts_caches_hf_vectors(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    enc, cache = make_encoder(f"hf:{tiny_models['bert']}"), EmbeddingCache(tmp_path)
    first_stats, second_stats = EmbedStats(), EmbedStats()
    first = embed_texts(enc, TEXTS, cache=cache, stats=first_stats)
    second = embed_texts(make_encoder(f"hf:{tiny_models['bert']}"), TEXTS, cache=cache, stats=second_stats)
    assert (first_stats.encoded, first_stats.cached) == (len(TEXTS), 0)
    assert (second_stats.encoded, second_stats.cached) == (0, len(TEXTS))
    np.testing.assert_array_equal(second, first)
    np.testing.assert_allclose(first, enc.encode(TEXTS), atol=1e-6)


def test_new_weights_at_the_same_path_get_a_new_key(tmp_path: Path) -> None:
    folder = make_tiny(tmp_path / "model", "bert", seed=1)
    before = make_encoder(f"hf:{folder}")
    key, vecs = before.key, before.encode(TEXTS[:2])
    save_model(folder, "bert", seed=2)
    after = make_encoder(f"hf:{folder}")
    assert after.key != key
    assert np.abs(after.encode(TEXTS[:2]) - vecs).max() > 1e-2
    assert before.key == key  # an instance hashes its files once
    save_model(folder, "bert", seed=1)
    assert make_encoder(f"hf:{folder}").key == key  # the key follows the bytes, not the file times


def test_save_and_load_encoder_round_trip(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    enc = make_encoder(f"hf:{tiny_models['qwen']}", max_length=16, batch_size=2, instruction="the ")
    save_encoder(enc, tmp_path)
    loaded = load_encoder(tmp_path)
    assert (loaded.model, loaded.max_length, loaded.batch_size, loaded.instruction) == (
        str(tiny_models["qwen"]),
        16,
        2,
        "the ",
    )
    assert loaded.key == enc.key
    np.testing.assert_array_equal(loaded.encode(TEXTS), enc.encode(TEXTS))


def test_bad_model_or_pooling_is_a_user_error(tmp_path: Path) -> None:
    missing = make_encoder(f"hf:{tmp_path / 'no-such-model'}")
    with pytest.raises(UserError, match="no-such-model"):
        missing.encode(["a text"])
    with pytest.raises(UserError, match="no-such-model"):
        _ = missing.dim
    with pytest.raises(UserError, match="no such model folder"):
        _ = make_encoder("hf:./no-such-model").dim
    with pytest.raises(UserError, match=r"encoder\.options\.pooling"):
        make_encoder(f"hf:{tmp_path}", pooling="cls")


def test_vllm_embed_config() -> None:
    from abexrat.vllm import vllm_embed_config

    cfg = vllm_embed_config("Qwen/Qwen3-Embedding-0.6B", concurrency=4, batch_size=128, tensor_parallel_size=2)
    assert cfg["task_type"] == "embed"
    assert cfg["model_source"] == "Qwen/Qwen3-Embedding-0.6B"
    assert (cfg["concurrency"], cfg["batch_size"]) == (4, 128)
    assert cfg["engine_kwargs"] == {"tensor_parallel_size": 2}
    assert (cfg["chat_template_stage"], cfg["tokenize_stage"], cfg["detokenize_stage"]) == (False, False, False)
    capped = vllm_embed_config("m", max_model_len=512, engine_kwargs={"tensor_parallel_size": 8, "seed": 3})
    assert capped["engine_kwargs"] == {"tensor_parallel_size": 1, "seed": 3, "max_model_len": 512}

    llm = pytest.importorskip("ray.data.llm")  # needs aiohttp, not vllm
    config = llm.vLLMEngineProcessorConfig(**cfg)
    assert (config.task_type, config.model_source, config.concurrency, config.batch_size) == (
        "embed",
        "Qwen/Qwen3-Embedding-0.6B",
        4,
        128,
    )
    assert config.engine_kwargs == {"tensor_parallel_size": 2, "task_type": "embed"}
    assert (config.chat_template_stage, config.tokenize_stage, config.detokenize_stage) == (False, False, False)
    assert callable(llm.build_processor)


def test_vllm_rows_in_and_out() -> None:
    from abexrat.vllm import _from_output, _to_request

    assert _to_request({"idx": 3, "text": "fell"}, None) == {"prompt": "fell"}
    assert _to_request({"idx": 3, "text": ""}, 64) == {
        "prompt": " ",
        "tokenization_kwargs": {"truncation": True, "max_length": 64},
    }
    out = _from_output({"idx": 3, "prompt": "fell", "embeddings": [0.5, 1.5]})
    assert out["idx"] == 3
    np.testing.assert_array_equal(out["embedding"], np.array([0.5, 1.5], np.float32))


def test_vllm_encoder_key_and_missing_gpu_extra() -> None:
    base = make_encoder("vllm:x")
    assert make_encoder("vllm:x", concurrency=4, batch_size=8, tensor_parallel_size=2).key == base.key
    assert make_encoder("vllm:x", max_model_len=256).key != base.key
    assert make_encoder("vllm:y").key != base.key
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed")
    with pytest.raises(UserError, match=r"vllm:x: needs the gpu extra: pip install 'abexrat\[gpu\]'"):
        base.encode(["a worker fell"])


def test_a_pickled_checkpoint_is_refused_not_loaded(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """Only safetensors weights load: a pytorch_model.bin (pickle) could run code when torch.load'ed."""
    import shutil

    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_models["bert"], folder)
    torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    assert (folder / "pytorch_model.bin").is_file() and not (folder / "model.safetensors").exists()
    with pytest.raises(UserError, match=f"hf:{folder}: cannot load the model"):
        make_encoder(f"hf:{folder}").encode(["a report"])
