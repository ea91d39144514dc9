"""What each adversarial method does to a batch, and what it does to training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from abexrat.adversarial import DPAAT, FGM, PGD, RAT, Batch, Gaussian, make_method
from abexrat.config import TrainConfig
from abexrat.model import EnsembleMLP, focal_loss
from abexrat.train import fit

S, B, D, C = 2, 16, 12, 4


def _batch(seed: int = 0) -> tuple[Batch, EnsembleMLP]:
    torch.manual_seed(seed)
    model = EnsembleMLP(S, D, [20], C, dropout=0.0)
    model.reset([1, 2])
    x = torch.randn(S, B, D).requires_grad_(True)
    y = torch.randint(0, C, (S, B))

    def loss_fn(z: torch.Tensor) -> torch.Tensor:
        return focal_loss(model(z), y)

    return Batch(loss_fn, x, loss_fn(x)), model


def _gens() -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in range(S)]


def test_fgm_perturbation_has_norm_eps_and_raises_the_loss() -> None:
    batch, _ = _batch()
    r = FGM(eps=0.5, gens=_gens()).perturbation(batch)
    assert torch.allclose(r.norm(dim=-1), torch.full((S, B), 0.5), atol=1e-5)
    clean = batch.loss_fn(batch.x.detach())
    attacked = batch.loss_fn(batch.x.detach() + r)
    assert (attacked > clean).float().mean() > 0.95  # a first-order step up the loss
    # ... and more than a random direction of the same norm does
    rand = Gaussian(eps=0.5, gens=_gens()).perturbation(batch)
    assert attacked.mean() > batch.loss_fn(batch.x.detach() + rand).mean()


def test_gaussian_noise_has_norm_eps_and_no_gradient_alignment() -> None:
    batch, _ = _batch()
    r = Gaussian(eps=0.7, gens=_gens()).perturbation(batch)
    assert torch.allclose(r.norm(dim=-1), torch.full((S, B), 0.7), atol=1e-5)
    g = batch.input_grad()
    cos = torch.nn.functional.cosine_similarity(r, g, dim=-1)
    assert cos.abs().mean() < 0.5
    again = Gaussian(eps=0.7, gens=_gens()).perturbation(batch)
    assert torch.equal(r, again)  # drawn from the members' own generators


def test_pgd_stays_inside_the_ball_and_beats_fgm() -> None:
    batch, _ = _batch()
    pgd = PGD(eps=0.5, gens=_gens(), steps=5, step_size=0.2)
    r = pgd.perturbation(batch)
    assert (r.norm(dim=-1) <= 0.5 + 1e-5).all()
    assert (r.norm(dim=-1) > 0.45).float().mean() > 0.9  # it pushes out to the boundary
    fgm_loss = batch.loss_at(FGM(eps=0.5, gens=_gens()).perturbation(batch))
    assert (batch.loss_at(r) >= fgm_loss - 1e-4).all()


def test_rat_coins_follow_p() -> None:
    rat = RAT(eps=0.1, gens=_gens(), p=0.3)
    draws = []
    for _ in range(2000):
        draws.append(rat.coins.clone() if rat.plan() else torch.zeros(S))
    draws = torch.stack(draws)
    assert abs(float(draws.mean()) - 0.3) < 0.03
    assert not RAT(eps=0.1, gens=_gens(), p=0.0).plan()


def test_dpaat_eps_stays_in_bounds_and_shrinks_for_hard_samples() -> None:
    batch, _ = _batch()
    m = DPAAT(eps=0.4, gens=_gens(), eps_min=0.1, eps_max=0.6, beta=2.0)
    r = m.perturbation(batch)
    eps = m.last_eps
    assert eps is not None and (eps >= 0.1 - 1e-6).all() and (eps <= 0.6 + 1e-6).all()
    assert torch.allclose(r.norm(dim=-1), eps, atol=1e-5)
    loss = batch.clean.detach()
    # Within each member, a higher clean loss means a smaller eps (monotone, before clipping).
    for s in range(S):
        order = torch.argsort(loss[s])
        assert (eps[s][order].diff() <= 1e-6).all()
    # The running statistics move with the loss: after low-loss batches, the same batch looks hard.
    m2 = DPAAT(eps=0.4, gens=_gens(), eps_max=0.8)
    for _ in range(30):
        m2.sample_eps(torch.full((S, B), 0.01))
    after_easy = m2.sample_eps(loss)
    assert after_easy.mean() < DPAAT(eps=0.4, gens=_gens(), eps_max=0.8).sample_eps(loss).mean()


def _toy(n: int = 120, d: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    X = rng.normal(size=(n, d)).astype(np.float32) + np.eye(3, d, dtype=np.float32)[y] * 2
    return X, y


def _cfg(**adv: object) -> TrainConfig:
    return TrainConfig.model_validate(
        {"model": {"hidden": [16], "dropout": 0.2}, "train": {"epochs": 3, "batch_size": 16}, "adversarial": adv}
    )


def _weights(method: str, **kw: object) -> list[torch.Tensor]:
    X, y = _toy()
    res = fit(X, y, 3, _cfg(method=method, **kw), seeds=[7])
    return [w.detach().clone() for w in res.model.parameters()]


def test_rat_with_p0_equals_none_exactly() -> None:
    for a, b in zip(_weights("none"), _weights("rat", p=0.0, eps=0.5)):
        assert torch.equal(a, b)


def test_rat_with_p1_equals_fgm_exactly() -> None:
    for a, b in zip(_weights("fgm", eps=0.5), _weights("rat", p=1.0, eps=0.5)):
        assert torch.equal(a, b)


def test_methods_change_training() -> None:
    base = _weights("none")
    for method in ("fgm", "pgd", "gaussian", "dpaat"):
        w = _weights(method, eps=0.5)
        assert not torch.equal(base[0], w[0]), method


def test_eps_is_relative_to_the_mean_training_norm() -> None:
    X, y = _toy()
    seen: list[float] = []
    for scale in (1.0, 10.0):
        fit(X * scale, y, 3, _cfg(method="fgm", eps=0.25), seeds=[0], method_hook=lambda m: seen.append(m.eps))
    mean_norm = float(np.linalg.norm(X, axis=1).mean())
    assert seen[0] == pytest.approx(0.25 * mean_norm, rel=1e-5)
    assert seen[1] == pytest.approx(10 * seen[0], rel=1e-5)


def test_registry_builds_each_method_with_its_parameters() -> None:
    m = make_method("pgd", 0.3, _gens(), steps=7, step_size=0.05, p=0.9)
    assert isinstance(m, PGD) and (m.eps, m.steps, m.step_size) == (0.3, 7, 0.05)
    assert (
        isinstance(make_method("rat", 0.3, _gens(), p=0.25), RAT) and make_method("rat", 0.3, _gens(), p=0.25).p == 0.25
    )
