"""Adversarial training on input vectors: a registry of methods.

All methods act on a batch x of shape (S, B, D) (S seed members, on any device; random draws
come from per-member CPU generators, so a seed draws the same on every device) and return an extra
per-member loss of shape (S,) added to the clean loss. Perturbation sizes are absolute
here; the trainer passes ``eps * mean ||x_train||`` so that one relative ε means the
same across encoders. Directions are per sample: r_i = ε g_i / ||g_i||_2.

ε (and rat's p) is one number for all members, or one per member (a tensor (S,), a list): several
configurations that differ only in ε and p train as one batched model (``fit(variants=...)``).

- ``none``: no extra term.
- ``fgm``: every batch, the loss at x + ε g/||g|| (g = d loss / d x).
- ``rat``: Random Adversarial Training: per batch and member, with probability p the fgm term.
- ``pgd``: ``steps`` steps of size ``step_size`` along g/||g||, each projected to the ε-ball.
- ``gaussian``: the loss at x + ε z/||z||, z ~ N(0, I): the control without gradients.
- ``dpaat``: fgm with a per-sample ε from running loss statistics (see :class:`DPAAT`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

LossFn = Callable[[Tensor], Tensor]  # x (S, B, D) -> per-sample loss (S, B)
METHODS: dict[str, type[Method]] = {}


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    def deco(cls: type[Method]) -> type[Method]:
        METHODS[name] = cls
        cls.name = name
        return cls

    return deco


def unit(g: Tensor, length: Tensor | float = 1.0) -> Tensor:
    """g scaled to norm ``length`` along the last axis (zero where g is zero): one pass over g."""
    return g * (length / g.norm(dim=-1, keepdim=True).clamp_min(1e-12))


def project(r: Tensor, eps: Tensor | float) -> Tensor:
    """r scaled back onto the ε-ball where ||r|| > ε."""
    norm = r.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return r * torch.clamp(eps / norm, max=1.0)


@dataclass
class Batch:
    """One step's inputs: ``x`` (S, B, D) tracks gradients when the method ``uses_grad``.

    ``grad``: the trainer's gradient of the batch's mean clean loss w.r.t. x, taken in the same
    backward pass as the weights' (methods use only its direction per sample). ``probe``: the
    loss with the weights held fixed, for gradients w.r.t. x alone (pgd's later steps).
    """

    loss_fn: LossFn
    x: Tensor
    clean: Tensor  # per-sample clean loss (S, B), attached to the graph
    grad: Tensor | None = None
    probe: LossFn | None = None

    def input_grad(self) -> Tensor:
        if self.grad is None:
            (g,) = torch.autograd.grad(self.clean.sum(), self.x, retain_graph=True)
            self.grad = g.detach()
        return self.grad

    def loss_at(self, r: Tensor) -> Tensor:
        """Mean loss per member at x + r: shape (S,)."""
        return self.loss_fn(self.x.detach() + r).mean(-1)


@dataclass
class Method:
    """Base: ``plan`` decides before the clean forward whether this step attacks."""

    eps: float | Tensor = 0.0  # absolute perturbation norm: one for all members, or (S,) one per member
    gens: list[torch.Generator] = field(default_factory=list)  # one per member
    name = ""
    uses_grad = True

    def size(self, like: Tensor) -> Tensor | float:
        """ε broadcastable against ``like`` (S, ...), in its dtype (a bf16 batch stays bf16)."""
        if isinstance(self.eps, Tensor):
            return self.eps.to(like.device, like.dtype).view(-1, *[1] * (like.dim() - 1))
        return self.eps

    def plan(self) -> bool:
        return True

    def extra_loss(self, batch: Batch) -> Tensor:
        raise NotImplementedError


@register_method("none")
@dataclass
class NoAdversary(Method):
    uses_grad = False

    def plan(self) -> bool:
        return False


@register_method("fgm")
@dataclass
class FGM(Method):
    def perturbation(self, batch: Batch) -> Tensor:
        g = batch.input_grad()
        return unit(g, self.size(g))

    def extra_loss(self, batch: Batch) -> Tensor:
        return batch.loss_at(self.perturbation(batch))


@register_method("rat")
@dataclass
class RAT(FGM):
    """Per step, member s attacks when its coin (Bernoulli(p), own generator) comes up."""

    p: float | list[float] = 0.5  # one for all members, or one per member
    coins: Tensor | None = None

    def plan(self) -> bool:
        ps = self.p if isinstance(self.p, list) else [self.p] * len(self.gens)
        if max(ps) <= 0.0:
            return False  # draw nothing: p = 0 is exactly ``none``
        self.coins = torch.stack([torch.bernoulli(torch.tensor(p), generator=g) for p, g in zip(ps, self.gens)])
        return bool(self.coins.any())

    def extra_loss(self, batch: Batch) -> Tensor:
        assert self.coins is not None
        return self.coins.to(batch.x.device) * super().extra_loss(batch)


@register_method("pgd")
@dataclass
class PGD(Method):
    steps: int = 3
    step_size: float = 0.0  # absolute; 0 means 2.5 ε / steps (Madry et al.)

    def perturbation(self, batch: Batch) -> Tensor:
        eps = self.size(batch.x)
        alpha = self.step_size or 2.5 * eps / self.steps
        r = torch.zeros_like(batch.x, dtype=torch.promote_types(batch.x.dtype, torch.float32))
        g = batch.input_grad()  # the first step's gradient is the clean one
        for k in range(self.steps):
            if k:
                r.requires_grad_(True)
                (g,) = torch.autograd.grad((batch.probe or batch.loss_fn)(batch.x.detach() + r).sum(), r)
                r = r.detach()
            r = project(r + unit(g, alpha), eps)
        return r

    def extra_loss(self, batch: Batch) -> Tensor:
        return batch.loss_at(self.perturbation(batch))


@register_method("gaussian")
@dataclass
class Gaussian(Method):
    uses_grad = False

    def perturbation(self, batch: Batch) -> Tensor:
        S, B, D = batch.x.shape
        # drawn on the CPU from each member's generator: the same noise whatever the device
        z = torch.stack([torch.randn(B, D, generator=g) for g in self.gens]).to(batch.x.device)
        return unit(z, self.size(z))

    def extra_loss(self, batch: Batch) -> Tensor:
        return batch.loss_at(self.perturbation(batch))


@register_method("dpaat")
@dataclass
class DPAAT(FGM):
    """Dynamic perturbation-adaptive adversarial training on input vectors.

    The rule, per member, with ℓ_i a sample's clean loss in this batch and μ, σ² the
    running mean and variance of per-sample clean losses (exponential moving averages
    with ``momentum``, started from the first batch, updated after each step)::

        z_i = (ℓ_i - μ) / (σ + 1e-8)
        ε_i = clip(ε · 2 · sigmoid(-β z_i), ε_min, ε_max)
        r_i = ε_i · g_i / ||g_i||

    A sample the model already fits (ℓ_i below the running mean) gets up to 2ε; a hard
    one (ℓ_i far above it) gets less, so the attack does not pile onto samples that are
    already misclassified. At the mean loss ε_i = ε.
    """

    eps_min: float = 0.0
    eps_max: float = 0.0  # 0 means 2 ε
    beta: float = 1.0
    momentum: float = 0.9
    mean: Tensor | None = None  # (S, 1)
    var: Tensor | None = None
    last_eps: Tensor | None = None  # (S, B), absolute, for inspection and logging

    def sample_eps(self, clean: Tensor) -> Tensor:
        loss = clean.detach()
        if self.mean is None:
            self.mean = loss.mean(-1, keepdim=True)
            self.var = loss.var(-1, keepdim=True, unbiased=False) if loss.shape[-1] > 1 else torch.zeros_like(self.mean)
        z = (loss - self.mean) / (self.var.sqrt() + 1e-8)
        base = self.size(loss)
        hi = self.eps_max or 2.0 * base
        eps = (base * 2.0 * torch.sigmoid(-self.beta * z)).clamp_min(self.eps_min).clamp_max(hi)
        m = self.momentum
        self.mean = m * self.mean + (1 - m) * loss.mean(-1, keepdim=True)
        self.var = (
            m * self.var + (1 - m) * loss.var(-1, keepdim=True, unbiased=False) if loss.shape[-1] > 1 else self.var
        )
        self.last_eps = eps
        return eps

    def perturbation(self, batch: Batch) -> Tensor:
        return unit(batch.input_grad(), self.sample_eps(batch.clean).unsqueeze(-1))


def make_method(name: str, eps: float | Tensor, gens: list[torch.Generator], **params: Any) -> Method:
    """A method by registry name with absolute ``eps`` and its own parameters (p, steps, ...)."""
    cls = METHODS[name]
    fields = set(cls.__dataclass_fields__)
    return cls(eps=eps, gens=gens, **{k: v for k, v in params.items() if k in fields})
