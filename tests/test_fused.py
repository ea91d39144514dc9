"""The trainer's hand-written MLP + focal loss backward, its dropout masks, and its merged step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from abexrat.adversarial import make_method
from abexrat.fused import StepInputs, mlp_focal_loss
from abexrat.model import EnsembleMLP, focal_loss
from abexrat.optim import adamw
from abexrat.train import LossTerms, _step


def _problem(hidden: list[int], dropout: float, dtype: torch.dtype = torch.float64, seed: int = 0):  # noqa: ANN202
    torch.manual_seed(seed)
    model = EnsembleMLP(2, 6, hidden, 5, dropout).to(dtype)
    model.reset([seed, seed + 1])
    x = torch.randn(2, 9, 6, dtype=dtype)
    y = torch.randint(0, 5, (2, 9))
    keep = 1.0 - dropout
    masks = [(torch.rand(2, 9, h) < keep).to(dtype) / keep for h in hidden] if dropout else None
    return model, x, y, masks, torch.randn(5, dtype=dtype)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("alpha", [None, [0.5, 1.0, 2.0, 1.5, 0.7]])
@pytest.mark.parametrize(("hidden", "dropout"), [([7], 0.0), ([7, 4], 0.3)])
def test_every_gradient_equals_autograds(
    gamma: float, alpha: list[float] | None, hidden: list[int], dropout: float
) -> None:
    """Loss, input gradient and every weight and bias gradient equal autograd's through the plain
    model and focal_loss (float64, so that only the formulas can differ), under any upstream weights."""
    model, x, y, masks, shift = _problem(hidden, dropout)
    a = None if alpha is None else torch.tensor(alpha, dtype=torch.float64)
    params = list(model.parameters())
    inputs = StepInputs.cast(params, torch.float64, y=y, masks=masks, shift=shift, gamma=gamma, alpha=a)
    upstream = torch.rand(2, 9, dtype=torch.float64)
    x1 = x.clone().requires_grad_(True)
    ours = mlp_focal_loss(x1, inputs)
    x2 = x.clone().requires_grad_(True)
    ref = focal_loss(model(x2, masks) + shift, y, gamma, a)
    assert torch.allclose(ours, ref, rtol=0, atol=1e-12)
    g1 = torch.autograd.grad((ours * upstream).sum(), [x1, *params])
    g2 = torch.autograd.grad((ref * upstream).sum(), [x2, *params])
    for name, u, v in zip(["x", *[n for n, _ in model.named_parameters()]], g1, g2):
        assert torch.allclose(u, v, rtol=1e-10, atol=1e-12), name


def test_bf16_products_stay_close_to_fp32_and_gradients_reach_the_fp32_weights() -> None:
    model, x, y, masks, shift = _problem([16], 0.2, torch.float32)
    params = list(model.parameters())
    fp32 = StepInputs.cast(params, torch.float32, y=y, masks=masks, shift=shift, gamma=2.0, alpha=None)
    bf16 = StepInputs.cast(
        params, torch.bfloat16, y=y, masks=[m.bfloat16() for m in masks], shift=shift, gamma=2.0, alpha=None
    )
    assert fp32.weights[0] is params[0]  # fp32 products use the parameters themselves
    assert bf16.weights[0].dtype == torch.bfloat16 and bf16.weights[0].is_leaf
    exact, rounded = mlp_focal_loss(x, fp32), mlp_focal_loss(x, bf16)
    assert rounded.dtype == torch.float32
    assert torch.allclose(exact, rounded, rtol=0.05, atol=0.02)
    rounded.sum().backward()
    bf16.grads_to(params)
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in params)
    # autocast rounds at the same points (bf16 products, fp32 loss): the same gradients
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = focal_loss(model(x, bf16.masks) + shift, y, 2.0, None)
    for p, r in zip(params, torch.autograd.grad(ref.sum(), params)):
        assert float((p.grad - r).norm() / r.norm()) < 0.01


def test_frozen_inputs_give_input_gradients_only() -> None:
    model, x, y, masks, shift = _problem([7], 0.0, torch.float32)
    params = list(model.parameters())
    inputs = StepInputs.cast(params, torch.float32, y=y, masks=masks, shift=shift, gamma=2.0, alpha=None)
    frozen = inputs.frozen()
    x = x.requires_grad_(True)
    (gx,) = torch.autograd.grad(mlp_focal_loss(x, frozen).sum(), x)
    (ref,) = torch.autograd.grad(mlp_focal_loss(x, inputs).sum(), x)
    assert torch.equal(gx, ref)
    assert all(not w.requires_grad for w in frozen.params)
    assert all(p.grad is None for p in params)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_masks_keep_at_the_rate_with_value_one_over_keep(dtype: torch.dtype) -> None:
    model = EnsembleMLP(2, 8, [300, 200], 3, dropout=0.3)
    gens = [np.random.Generator(np.random.SFC64(s)) for s in (0, 1)]
    masks = model.dropout_masks(4001, gens, dtype)
    assert [m.shape for m in masks] == [(2, 4001, 300), (2, 4001, 200)]
    for m in masks:
        assert m.dtype == dtype
        assert set(m.float().unique().tolist()) == {0.0, float(torch.tensor(1 / 0.7, dtype=dtype))}
        assert abs(float((m > 0).float().mean()) - 0.7) < 0.003  # 2.4M draws: std 0.0003
        assert 0.40 < float((m[0] != m[1]).float().mean()) < 0.44  # members independent: 2 * 0.7 * 0.3
    # A member's masks depend on its own generator only.
    again = model.dropout_masks(4001, [np.random.Generator(np.random.SFC64(s)) for s in (5, 1)], dtype)
    assert torch.equal(again[0][1], masks[0][1]) and not torch.equal(again[0][0], masks[0][0])


@pytest.mark.parametrize("method", ["fgm", "rat", "gaussian", "pgd", "dpaat", "none"])
def test_one_merged_step_equals_the_plain_autograd_step(method: str) -> None:
    """The trainer's step (one backward pass for the clean loss's weight and input gradients, the
    attack's added after) updates the weights exactly as summing the two losses and calling
    backward once does (float32, fixed seeds, to summation order)."""
    torch.manual_seed(0)
    x = torch.randn(2, 12, 6)
    y = torch.randint(0, 5, (2, 12))
    masks = [(torch.rand(2, 12, 7) < 0.8).float() / 0.8]
    shift = torch.zeros(5)

    def run(merged: bool) -> list[torch.Tensor]:
        model = EnsembleMLP(2, 6, [7], 5, 0.2)
        model.reset([0, 1])
        params = list(model.parameters())
        opt = adamw(params, 0.01, 0.01)
        gens = [torch.Generator().manual_seed(s) for s in (3, 4)]
        m = make_method(
            method, 0.5, gens, p=0.7, steps=2, step_size=0.0, eps_min=0.1, eps_max=1.0, beta=1.0, momentum=0.9
        )
        for _ in range(3):
            if merged:
                _step(opt, params, m, torch.float32, x, y, masks, LossTerms(2.0, None, shift))
                continue
            from abexrat.adversarial import Batch

            def loss_fn(z: torch.Tensor) -> torch.Tensor:
                return focal_loss(model(z, masks) + shift, y, 2.0, None)

            attack = m.plan()
            xb = x.detach().requires_grad_(attack and m.uses_grad)
            clean = loss_fn(xb)
            total = clean.mean(-1)
            if attack:
                total = total + m.extra_loss(Batch(loss_fn, xb, clean))
            opt.zero_grad(set_to_none=True)
            total.sum().backward(inputs=params)
            opt.step()
        return [p.detach().clone() for p in params]

    for a, b in zip(run(True), run(False)):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
