"""The trainer: focal loss, determinism per seed, seeds independent of each other, learning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from abexrat.config import TrainConfig
from abexrat.metrics import score
from abexrat.model import EnsembleMLP, focal_loss
from abexrat.train import fit, predict_proba


def _data(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    X = rng.normal(size=(n, 10)).astype(np.float32) + 4.0 * np.eye(4, 10, dtype=np.float32)[y]
    return X, y


CFG = TrainConfig.model_validate(
    {
        "model": {"hidden": [32], "dropout": 0.2},
        "train": {"epochs": 8, "batch_size": 32},
        "adversarial": {"method": "rat", "eps": 0.3, "p": 0.5},
    }
)


def test_focal_loss_matches_its_formula() -> None:
    logits = torch.randn(2, 5, 3)
    y = torch.randint(0, 3, (2, 5))
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, 3), y.reshape(-1), reduction="none").reshape(2, 5)
    assert torch.allclose(focal_loss(logits, y, gamma=0.0), ce, atol=1e-6)
    p = torch.softmax(logits, -1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
    alpha = torch.tensor([0.5, 1.0, 2.0])
    assert torch.allclose(focal_loss(logits, y, gamma=2.0, alpha=alpha), alpha[y] * (1 - p) ** 2 * ce, atol=1e-6)


def test_member_init_matches_nn_linear_bounds() -> None:
    m = EnsembleMLP(3, 100, [50], 7)
    m.reset([0, 1, 2])
    w0 = m.weights[0]
    assert (
        float(w0.detach().abs().max()) <= 0.1 and float(w0.detach().abs().max()) > 0.09
    )  # U(-1/sqrt(100), 1/sqrt(100))
    assert not torch.equal(w0[0], w0[1])


def test_same_seed_same_model() -> None:
    X, y = _data()
    a = fit(X, y, 4, CFG, seeds=[3])
    b = fit(X, y, 4, CFG, seeds=[3])
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(p, q)
    c = fit(X, y, 4, CFG, seeds=[4])
    assert not torch.equal(a.model.weights[0], c.model.weights[0])


def test_a_seed_trains_the_same_alone_or_batched_with_others() -> None:
    X, y = _data()
    alone = fit(X, y, 4, CFG, seeds=[5])
    batched = fit(X, y, 4, CFG, seeds=[2, 5, 9])
    for w_alone, w_batched in zip(alone.model.parameters(), batched.model.parameters()):
        assert torch.allclose(w_alone[0], w_batched[1], atol=1e-4)
    pa = predict_proba(alone.model, X)[0]
    pb = predict_proba(batched.model, X)[1]
    assert np.abs(pa - pb).max() < 1e-3


def test_an_ensemble_seed_averages_its_mlps_and_its_first_mlp_is_the_single_seed() -> None:
    X, y = _data()
    single = fit(X, y, 4, CFG, seeds=[2, 5])
    cfg = CFG.model_copy(deep=True)
    cfg.model.ensemble = 3
    ens = fit(X, y, 4, cfg, seeds=[2, 5])
    assert (ens.model.n_members, ens.model.n_seeds, ens.model.group) == (6, 2, 3)
    assert ens.seeds == [2, 5] and len(ens.history[-1]["train_loss"]) == 2
    for s in range(2):  # member 3 s is seed s's own MLP, trained exactly as without its partners
        for key, w in single.model.member_state(s).items():
            assert torch.equal(w, ens.model.member_state(3 * s)[key])
    # the seed's other MLPs differ from it, and its probabilities are the three MLPs' mean
    assert not torch.equal(ens.model.weights[0][0], ens.model.weights[0][1])
    members = EnsembleMLP.from_members([ens.model.member_state(m) for m in range(6)])
    per_member = predict_proba(members, X)  # (6, n, C)
    proba = predict_proba(ens.model, X)  # (2, n, C)
    assert proba.shape == (2, len(X), 4)
    assert np.allclose(proba, per_member.reshape(2, 3, len(X), 4).mean(1), atol=1e-6)
    # saved per seed as the three MLPs stacked, and loaded back as the same ensemble
    states = [ens.model.seed_state(s) for s in range(2)]
    assert states[0]["layers.0.weight"].shape == (3, 10, 32) and states[0]["layers.1.bias"].shape == (3, 4)
    back = EnsembleMLP.from_members(states)
    assert back.group == 3 and np.array_equal(predict_proba(back, X), proba)
    assert score(y, proba.argmax(-1), ["a", "b", "c", "d"])["macro_f1"]["mean"] > 0.9


def test_device_auto_is_the_cpu_without_cuda_and_trains_exactly_as_device_cpu() -> None:
    from abexrat.train import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    X, y = _data()
    cpu = CFG.model_copy(deep=True)
    cpu.train.device = "cpu"
    a, b = fit(X, y, 4, CFG, seeds=[1]), fit(X, y, 4, cpu, seeds=[1])
    if not torch.cuda.is_available():
        for p, q in zip(a.model.parameters(), b.model.parameters()):
            assert torch.equal(p, q)
    assert all(p.device.type == "cpu" for p in b.model.parameters())


def test_training_learns_a_separable_problem() -> None:
    X, y = _data()
    Xv, yv = _data(200, seed=1)
    res = fit(X, y, 4, CFG, seeds=[0, 1], val=(Xv, yv))
    s = score(yv, predict_proba(res.model, Xv).argmax(-1), ["a", "b", "c", "d"])
    assert s["macro_f1"]["mean"] > 0.85
    assert len(s["macro_f1"]["per_seed"]) == 2
    assert len(res.history) == 8 and len(res.history[-1]["val_macro_f1"]) == 2
    assert res.history[-1]["train_loss"][0] < res.history[0]["train_loss"][0]


def test_scores_match_hand_counts() -> None:
    y = np.array([0, 0, 1, 1, 2])
    preds = np.array([[0, 0, 1, 0, 2], [0, 1, 1, 1, 2]])
    s = score(y, preds, ["a", "b", "c"])
    assert s["accuracy"]["per_seed"] == [0.8, 0.8]
    # seed 0: F1 a = 2*(2/3*1)/(2/3+1) = 0.8, b = 2/3, c = 1
    assert abs(s["macro_f1"]["per_seed"][0] - (0.8 + 2 / 3 + 1) / 3) < 1e-9
    assert s["confusion"]["per_seed"][0] == [[2, 0, 0], [1, 1, 0], [0, 0, 1]]
    assert s["confusion"]["total"] == [[3, 1, 0], [1, 3, 0], [0, 0, 2]]
    assert s["per_class"]["c"]["f1"]["mean"] == 1.0 and s["per_class"]["a"]["support"] == 2
    assert abs(s["macro_f1"]["std"] - np.std(s["macro_f1"]["per_seed"], ddof=1)) < 1e-12


def test_blocks_and_memory_maps_train_exactly_like_one_array(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """A training set gathered block by block from a memory-mapped file (streamed training) takes
    the very same steps as one gathered whole from memory."""
    import abexrat.train
    from abexrat.train import block_rows

    X, y = _data()
    whole = fit(X, y, 4, CFG, seeds=[0, 1])
    X.tofile(tmp_path / "x.f32")
    mapped = np.memmap(tmp_path / "x.f32", np.float32, mode="c", shape=X.shape)
    per_row = 2 * (4 * 10 + 8 + 4 * 32)  # two members' inputs, labels and dropout masks
    monkeypatch.setattr(abexrat.train, "EPOCH_BUFFER_BYTES", 70 * per_row)
    assert block_rows(300, 2, [10, 32, 4], 32) == 64  # whole batches: 300 rows in 5 blocks
    blocked = fit(mapped, y, 4, CFG, seeds=[0, 1])
    assert blocked.scale == whole.scale
    for p, q in zip(whole.model.parameters(), blocked.model.parameters()):
        assert torch.equal(p, q)
    assert blocked.history == whole.history


def test_a_split_scores_the_same_whole_or_a_chunk_at_a_time_from_memory_or_disk(tmp_path) -> None:  # noqa: ANN001
    """Scoring is one path: chunks of a memory-mapped split add up to the scores of the split held
    whole, and the kept predictions are predict_proba's."""
    from abexrat.experiment import predict_split
    from abexrat.metrics import score_confusion

    X, y = _data(n=301, seed=1)
    model = fit(X, y, 4, CFG, seeds=[0, 1]).model
    whole = predict_proba(model, X).argmax(-1)  # (2, 301)
    conf, pred = predict_split(model, X, y, 4, keep=True)
    np.testing.assert_array_equal(pred, whole)
    assert score_confusion(conf, list("abcd")) == score(y, whole, list("abcd"))
    X.tofile(tmp_path / "x.f32")
    mapped = np.memmap(tmp_path / "x.f32", np.float32, mode="c", shape=X.shape)  # as feature files open
    conf_chunks, none = predict_split(model, mapped, y, 4, keep=False, chunk=64)  # 4 full chunks and 45 rows
    assert none is None
    np.testing.assert_array_equal(conf_chunks, conf)
    assert conf.sum() == 2 * 301 and np.trace(conf[0]) > 0.9 * 301


def test_precision_bf16_trains_with_bf16_products_and_still_learns() -> None:
    from abexrat.train import use_bf16

    assert use_bf16("bf16") and not use_bf16("fp32")
    X, y = _data()
    Xv, yv = _data(200, seed=1)
    runs = {}
    for precision in ("fp32", "bf16"):
        cfg = CFG.model_copy(update={"train": CFG.train.model_copy(update={"precision": precision})})
        runs[precision] = fit(X, y, 4, cfg, seeds=[0])
        assert runs[precision].precision == precision
        s = score(yv, predict_proba(runs[precision].model, Xv).argmax(-1), ["a", "b", "c", "d"])
        assert s["macro_f1"]["mean"] > 0.85
    # The same seed and steps, rounded differently: close, not equal.
    w32, w16 = runs["fp32"].model.weights[0].detach(), runs["bf16"].model.weights[0].detach()
    assert not torch.equal(w32, w16) and float((w32 - w16).abs().max()) < 0.05


def test_scores_equal_sklearns() -> None:
    """abexrat.metrics counts confusion matrices itself; every number is sklearn.metrics' own."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    rng = np.random.default_rng(0)
    classes = list("abcdef")
    for _ in range(20):
        n = int(rng.integers(1, 60))
        y = rng.integers(0, 4, n)  # classes e, f never true; f never predicted either
        preds = rng.integers(0, 5, (3, n))
        preds[:, : n // 3] = y[: n // 3]
        s = score(y, preds, classes)
        for k, p in enumerate(preds):
            present = sorted(set(y) | set(p))
            assert s["macro_f1"]["per_seed"][k] == pytest.approx(
                f1_score(y, p, labels=present, average="macro", zero_division=0), abs=1e-12
            )
            assert s["weighted_f1"]["per_seed"][k] == pytest.approx(
                f1_score(y, p, labels=range(6), average="weighted", zero_division=0), abs=1e-12
            )
            assert s["accuracy"]["per_seed"][k] == pytest.approx(accuracy_score(y, p), abs=1e-12)
            pr, rc, f, sup = precision_recall_fscore_support(y, p, labels=range(6), zero_division=0)
            for c, name in enumerate(classes):
                got = s["per_class"][name]
                assert [got[m]["per_seed"][k] for m in ("precision", "recall", "f1")] == pytest.approx(
                    [pr[c], rc[c], f[c]], abs=1e-12
                )
                assert got["support"] == sup[c]
            assert s["confusion"]["per_seed"][k] == confusion_matrix(y, p, labels=range(6)).tolist()


def test_fused_adamw_updates_exactly_like_torch_optims() -> None:
    from abexrat.optim import FusedAdamW

    gen = torch.Generator().manual_seed(0)
    shapes = [(3, 10, 32), (3, 32, 4), (3, 1, 32), (3, 1, 4)]
    ours = [torch.randn(s, generator=gen).requires_grad_() for s in shapes]
    ref = [p.detach().clone().requires_grad_() for p in ours]
    opt, ref_opt = (
        FusedAdamW(ours, lr=3e-3, weight_decay=0.01),
        torch.optim.AdamW(ref, lr=3e-3, weight_decay=0.01, fused=True),
    )
    for step in range(6):
        grads = [torch.randn(s, generator=gen) for s in shapes]
        for i, (p, q, g) in enumerate(zip(ours, ref, grads)):
            keep = not (step == 2 and i == 1)  # a parameter without a gradient on one step is left alone
            p.grad, q.grad = (g.clone(), g.clone()) if keep else (None, None)
        opt.step()
        ref_opt.step()
        for p, q in zip(ours, ref):
            assert torch.equal(p, q)
    assert [float(s) for s in opt.steps] == [6.0, 5.0, 6.0, 6.0]
    opt.zero_grad()
    assert all(p.grad is None for p in ours)


@pytest.mark.parametrize("method", ["rat", "fgm", "pgd", "gaussian", "dpaat"])
def test_variants_train_several_eps_p_configurations_at_once_each_as_alone(method: str) -> None:
    X, y = _data()
    variants = [(0.05, 0.0), (0.3, 1.0), (0.6, 0.5)]
    cfg = CFG.model_copy(deep=True)
    cfg.adversarial.method = method
    cfg.model.ensemble = 2
    cfg.train.precision = "fp32"  # bf16 would round a per-member ε tensor where it rounds a scalar ε after dividing
    group = fit(X, y, 4, cfg, seeds=[2, 5], variants=variants)
    assert (group.model.n_seeds, group.model.n_members) == (6, 12) and len(group.history[-1]["train_loss"]) == 6
    proba = predict_proba(group.model, X)  # (G S, n, C), variant by variant
    for j, (eps, p) in enumerate(variants):
        one = cfg.model_copy(deep=True)
        one.adversarial.eps, one.adversarial.p = eps, p
        alone = fit(X, y, 4, one, seeds=[2, 5])
        for m in range(4):  # variant j's members are 4 j .. 4 j + 3
            for key, w in alone.model.member_state(m).items():
                assert torch.allclose(w, group.model.member_state(4 * j + m)[key], atol=1e-5), (j, m, key)
        assert np.abs(predict_proba(alone.model, X) - proba[2 * j : 2 * j + 2]).max() < 1e-4
        assert np.allclose(alone.history[-1]["train_loss"], group.history[-1]["train_loss"][2 * j : 2 * j + 2])
    # the variants did train differently: ε and p reached the members
    assert not torch.allclose(
        group.model.member_state(0)["layers.0.weight"], group.model.member_state(4)["layers.0.weight"]
    )
