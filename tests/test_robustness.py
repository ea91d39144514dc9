"""Robustness scoring: attacks on the input vectors, natural text perturbations, and the block
that ``abexrat train`` and ``abexrat evaluate --robustness`` write and print."""

from __future__ import annotations

import difflib
import json
from pathlib import Path

import numpy as np
import pytest

from abexrat.config import RobustnessConfig, TrainConfig
from abexrat.perturb import PERTURBATIONS, perturb, perturbed_texts
from abexrat.robustness import area, evaluate
from abexrat.text import TITLE_SEP, first_sentence, split_title
from abexrat.train import fit


def _fragile_task(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two classes, each told apart by two kinds of features: 10 robust ones (mean ±1, noise 1.5:
    each weak, together strong) and 10 fragile ones (mean ±0.1, noise 0.02: alone nearly perfect, but
    a small push flips them). A model trained clean leans on the fragile features, and an attack of
    a few percent of the vectors' norm breaks it; adversarial training teaches it the robust ones."""
    y = rng.integers(0, 2, n)
    s = (2 * y - 1)[:, None]
    X = np.concatenate([s * 1.0 + rng.normal(size=(n, 10)) * 1.5, s * 0.1 + rng.normal(size=(n, 10)) * 0.02], 1)
    return X.astype(np.float32), y


def _trained(method: str, X: np.ndarray, y: np.ndarray) -> tuple[object, TrainConfig]:
    cfg = TrainConfig.model_validate(
        {
            "model": {"hidden": [32], "dropout": 0.0},
            "train": {"epochs": 20, "batch_size": 64, "lr": 0.01, "precision": "fp32"},
            "adversarial": {"method": method, "eps": 0.1, "steps": 3},
            "loss": {"name": "ce"},
            "robustness": {"eps": [0.05, 0.1, 0.2], "natural": False},
        }
    )
    return fit(X, y, 2, cfg, [0, 1]), cfg


def test_an_attack_hurts_a_model_trained_clean_more_than_one_trained_adversarially() -> None:
    rng = np.random.default_rng(0)
    X, y = _fragile_task(800, rng)
    Xv, yv = _fragile_task(400, rng)
    blocks = {}
    for method in ("none", "pgd"):
        result, cfg = _trained(method, X, y)
        blocks[method], preds = evaluate(result.model, {"val": (Xv, yv)}, 2, result.scale, cfg.robustness)
        assert np.asarray(preds["val"]["pgd"]).shape == (3, 2, len(yv))  # (ε, seeds, reports)
    clean = {m: b["val"]["clean"]["macro_f1"]["mean"] for m, b in blocks.items()}
    worst = {m: b["val"]["pgd"]["macro_f1"][-1]["mean"] for m, b in blocks.items()}  # ε = 0.2
    assert clean["none"] > 0.95 and clean["pgd"] > 0.95  # both fit the clean task
    assert clean["none"] - worst["none"] > 0.2  # the clean model breaks ...
    assert clean["none"] - worst["none"] > 2 * (clean["pgd"] - worst["pgd"])  # ... far more than the trained one
    assert blocks["pgd"]["val"]["pgd"]["auc"]["mean"] > blocks["none"]["val"]["pgd"]["auc"]["mean"]
    for m, b in blocks.items():  # a stronger attack never helps; pgd is at least as strong as fgm on average
        pgd = [v["mean"] for v in b["val"]["pgd"]["macro_f1"]]
        fgm = [v["mean"] for v in b["val"]["fgm"]["macro_f1"]]
        assert pgd == sorted(pgd, reverse=True) and pgd[-1] <= fgm[-1] + 0.01, (m, pgd, fgm)


def test_area_is_the_mean_score_over_the_attack_budget() -> None:
    eps = [0.05, 0.1, 0.2]
    flat = area(eps, np.array([0.8]), np.array([[0.8], [0.8], [0.8]]))
    assert flat == pytest.approx([0.8])
    # trapezoids: 0.05 (1 + .8)/2 + .05 (.8 + .6)/2 + .1 (.6 + .2)/2 = .045 + .035 + .04 = .12, / 0.2
    assert area(eps, np.array([1.0]), np.array([[0.8], [0.6], [0.2]])) == pytest.approx([0.6])


def test_perturbations_are_reproducible_under_their_seed() -> None:
    texts = [
        f"Worker Falls From Ladder{TITLE_SEP}Employee #1 was on a ladder at 10 a.m. He fell. He was hospitalized.",
        "An employee was struck by a forklift while walking in the warehouse aisle near the dock.",
    ] * 20
    for name, rate in (("char_noise", 0.05), ("word_dropout", 0.1)):
        a, b = perturb(texts, name, rate, seed=1), perturb(texts, name, rate, seed=1)
        assert a == b  # the same seed, the same texts
        assert perturb(texts, name, rate, seed=2) != a  # another seed, other texts
        assert perturb(texts[:1], name, rate, seed=1) == a[:1]  # a report's perturbation does not depend on the others
        assert sum(x != t for x, t in zip(a, texts)) >= 30  # most reports changed at these rates
        assert all(split_title(x)[0] for x, t in zip(a, texts) if split_title(t)[0])  # the title line stays one
        assert perturb(texts, name, 0.0, seed=1) == texts  # rate 0 changes nothing
    noisy = perturb(texts, "char_noise", 0.05, seed=1)
    similar = np.mean([difflib.SequenceMatcher(None, x, t).ratio() for x, t in zip(noisy, texts)])
    assert 0.9 < similar < 0.99  # about 5% of the characters edited
    dropped = perturb(texts, "word_dropout", 0.1, seed=1)
    kept = sum(len(x.split()) for x in dropped) / sum(len(t.split()) for t in texts)
    assert 0.85 < kept < 0.95
    assert perturb(texts[:1], "title_removed")[0] == split_title(texts[0])[1]
    assert perturb(texts[:1], "first_sentence")[0] == first_sentence(texts[0]) != split_title(texts[0])[1]
    assert perturb(texts[1:2], "title_removed") == texts[1:2]  # nothing to remove
    assert set(perturbed_texts(texts, RobustnessConfig())) == set(PERTURBATIONS)
    with pytest.raises(ValueError, match="unknown perturbation"):
        perturb(texts, "shouting")


def test_train_writes_and_prints_the_robustness_block_and_evaluate_scores_it(
    tiny_config: Path,
    tiny_dir: Path,
    tmp_path: Path,
    cli,  # noqa: ANN001
) -> None:
    run = tmp_path / "run"
    r = cli("train", tiny_config, "--set", "model.ensemble=2", "--out", run)
    assert r.code == 0, r.stderr
    m = json.loads((run / "metrics.json").read_text())
    block = m["robustness"]
    assert block["eps"] == [0.025, 0.05, 0.1, 0.2] and block["pgd_steps"] == 10 and block["scale"] > 0
    for split in ("val", "test"):
        b = block[split]
        assert b["clean"]["macro_f1"]["mean"] == pytest.approx(m[split]["macro_f1"]["mean"])
        for attack in ("fgm", "pgd"):
            assert len(b[attack]["macro_f1"]) == 4 and len(b[attack]["accuracy"]) == 4
            assert all(len(v["per_seed"]) == len(m["seeds"]) for v in b[attack]["macro_f1"])
            assert 0 <= b[attack]["auc"]["mean"] <= 1
        assert set(b["natural"]) == set(PERTURBATIONS)
        assert all(0 <= v["changed"] <= 1 for v in b["natural"].values())
        assert b["natural"]["char_noise"]["changed"] > 0.8  # nearly every report gets a typo at 5%
    assert "pgd (10 steps)" in r.stdout and "natural perturbations on test" in r.stdout
    e = cli("evaluate", run, tiny_dir / "test.json", "--robustness", "--json", tmp_path / "eval.json")
    assert e.code == 0, e.stderr
    ev = json.loads((tmp_path / "eval.json").read_text())["robustness"]["data"]
    # the same reports, the same models, the same seeded perturbations: the same numbers as train's test block
    for attack in ("fgm", "pgd"):
        assert ev[attack]["auc"]["per_seed"] == pytest.approx(block["test"][attack]["auc"]["per_seed"])
    for name in PERTURBATIONS:
        assert ev["natural"][name]["macro_f1"]["mean"] == pytest.approx(
            block["test"]["natural"][name]["macro_f1"]["mean"]
        )
    assert "natural perturbations on data" in e.stdout
    off = cli("train", tiny_config, "--set", "robustness.enabled=false", "--out", tmp_path / "off")
    assert off.code == 0 and "robustness" not in json.loads((tmp_path / "off" / "metrics.json").read_text())
