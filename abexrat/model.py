"""An MLP over frozen text vectors, with S seeds trained as one batched model, and focal loss.

S members with stacked weights of shape (S, d_in, d_out) run as one ``baddbmm`` per
layer. Each member is initialized from its own seed exactly as ``nn.Linear`` would be,
and draws its dropout masks from its own generator, so a seed's result does not depend
on which other seeds train beside it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class EnsembleMLP(nn.Module):
    """``forward(x)``: x of shape (S, B, d_in) -> logits of shape (S, B, n_classes)."""

    def __init__(self, n_members: int, d_in: int, hidden: list[int], n_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dims = [d_in, *hidden, n_classes]
        self.dropout = dropout
        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty(n_members, a, b)) for a, b in zip(self.dims[:-1], self.dims[1:])
        )
        self.biases = nn.ParameterList(nn.Parameter(torch.empty(n_members, 1, b)) for b in self.dims[1:])

    @property
    def n_members(self) -> int:
        return self.weights[0].shape[0]

    @torch.no_grad()
    def reset(self, seeds: list[int]) -> None:
        """Member s gets nn.Linear's default init (uniform +-1/sqrt(fan_in)) from ``seeds[s]``."""
        for s, seed in enumerate(seeds):
            gen = torch.Generator().manual_seed(seed)
            for w, b in zip(self.weights, self.biases):
                bound = 1.0 / math.sqrt(w.shape[1])
                w[s].uniform_(-bound, bound, generator=gen)
                b[s].uniform_(-bound, bound, generator=gen)

    def dropout_masks(
        self, rows: int, gens: list[torch.Generator], out: list[Tensor] | None = None
    ) -> list[Tensor] | None:
        """One scaled keep-mask per hidden layer, shape (S, rows, h), each member from its generator.

        The trainer draws a whole epoch's masks at once (rows = n) and slices them per batch: one
        ``uniform_`` call per member and layer instead of one per batch. ``out``: buffers of at
        least ``rows`` rows, overwritten in place (the masks are views of their first rows).
        """
        if not self.training or self.dropout <= 0:
            return None
        keep = 1.0 - self.dropout
        masks = []
        for i, h in enumerate(self.dims[1:-1]):
            u = out[i][:, :rows] if out is not None else torch.empty(len(gens), rows, h)
            for s, g in enumerate(gens):
                u[s].uniform_(generator=g)
            masks.append(u.lt_(keep).div_(keep))  # 1/keep where kept, else 0
        return masks

    def forward(self, x: Tensor, masks: list[Tensor] | None = None) -> Tensor:
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = torch.baddbmm(b, x, w)
            if i < last:
                x = x.relu_()  # in place: baddbmm's backward does not need its output
                if masks is not None:
                    x = x * masks[i]
        return x

    def member_state(self, s: int) -> dict[str, Tensor]:
        """Member s as plain tensors: ``layers.{i}.weight`` (d_in, d_out) and ``.bias`` (d_out,)."""
        out = {}
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            out[f"layers.{i}.weight"] = w[s].detach().clone().contiguous()
            out[f"layers.{i}.bias"] = b[s, 0].detach().clone().contiguous()
        return out

    @classmethod
    def from_members(cls, states: list[dict[str, Tensor]], dropout: float = 0.0) -> EnsembleMLP:
        n_layers = len(states[0]) // 2
        dims = [states[0]["layers.0.weight"].shape[0]] + [
            states[0][f"layers.{i}.weight"].shape[1] for i in range(n_layers)
        ]
        m = cls(len(states), dims[0], dims[1:-1], dims[-1], dropout)
        with torch.no_grad():
            for i in range(n_layers):
                m.weights[i].copy_(torch.stack([st[f"layers.{i}.weight"] for st in states]))
                m.biases[i].copy_(torch.stack([st[f"layers.{i}.bias"] for st in states]).unsqueeze(1))
        return m


def focal_loss(logits: Tensor, y: Tensor, gamma: float = 0.0, alpha: Tensor | None = None) -> Tensor:
    """Per-sample focal loss -alpha_y (1 - p_y)^gamma log p_y.

    logits (S, B, C), y (S, B) -> loss (S, B). gamma = 0 and alpha = None is cross-entropy.
    """
    logp = torch.log_softmax(logits, dim=-1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
    loss = -logp
    if gamma:
        loss = loss * (1.0 - logp.exp()).clamp_min(0.0).pow(gamma)
    if alpha is not None:
        loss = loss * alpha[y]
    return loss
