"""An MLP over frozen text vectors, with S seeds trained as one batched model, and focal loss.

S members with stacked weights of shape (S, d_in, d_out) run as one ``baddbmm`` per
layer. Each member is initialized from its own seed exactly as ``nn.Linear`` would be,
and draws its dropout masks from its own generator, so a seed's result does not depend
on which other seeds train beside it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn


class EnsembleMLP(nn.Module):
    """``forward(x)``: x of shape (M, B, d_in) -> logits of shape (M, B, n_classes), M members.

    ``group`` consecutive members make one seed's model (``model.ensemble``: the seed's prediction
    averages their probabilities), so M = seeds x group.
    """

    def __init__(
        self, n_members: int, d_in: int, hidden: list[int], n_classes: int, dropout: float = 0.0, group: int = 1
    ) -> None:
        super().__init__()
        if n_members % group:
            raise ValueError(f"{n_members} members do not split into groups of {group}")
        self.dims = [d_in, *hidden, n_classes]
        self.dropout = dropout
        self.group = group
        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty(n_members, a, b)) for a, b in zip(self.dims[:-1], self.dims[1:])
        )
        self.biases = nn.ParameterList(nn.Parameter(torch.empty(n_members, 1, b)) for b in self.dims[1:])

    @property
    def n_members(self) -> int:
        return self.weights[0].shape[0]

    @property
    def n_seeds(self) -> int:
        return self.n_members // self.group

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
        self,
        rows: int,
        gens: list[np.random.Generator],
        dtype: torch.dtype = torch.float32,
        out: list[Tensor] | None = None,
    ) -> list[Tensor] | None:
        """One scaled keep-mask per hidden layer, shape (S, rows, h), each member from its generator.

        A unit is kept when a random 16-bit integer (a quarter of a raw 64-bit draw of the member's
        bit generator, SFC64 in the trainer) falls below ``round(keep * 65536)``, so the keep
        probability is exact to 1/65536; a kept unit's mask value is 1/keep in ``dtype``. The masks
        are written as bit patterns: about 4x faster than torch's ``uniform_`` (Mersenne Twister),
        ``lt_``, ``div_`` and a cast, which were ~8% of a bf16 step. The trainer draws a block of
        rows at once and slices them per batch. ``out``: buffers of ``dtype`` and at least ``rows``
        rows, overwritten in place (the masks are views).
        """
        if not self.training or self.dropout <= 0:
            return None
        keep = 1.0 - self.dropout
        threshold = np.uint16(min(round(keep * 65536), 65535))
        bits_type = {torch.float32: np.uint32, torch.bfloat16: np.uint16}[dtype]
        scale = torch.tensor(1.0 / keep, dtype=dtype).view(torch.int32 if dtype == torch.float32 else torch.int16)
        pattern = bits_type(int(scale) & np.iinfo(bits_type).max)  # 1/keep's bits in dtype
        masks = []
        for i, h in enumerate(self.dims[1:-1]):
            m = out[i][:, :rows] if out is not None else torch.empty(len(gens), rows, h, dtype=dtype)
            bits = m.view(torch.int32 if dtype == torch.float32 else torch.int16).numpy().view(bits_type)
            for s, g in enumerate(gens):
                words = g.bit_generator.random_raw(-(-rows * h // 4))  # 4 16-bit draws per 64-bit word
                kept = words.astype("<u8", copy=False).view("<u2")[: rows * h].reshape(rows, h) < threshold
                np.multiply(kept, pattern, out=bits[s], casting="unsafe")
            masks.append(m)
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
            out[f"layers.{i}.weight"] = w[s].detach().cpu().clone().contiguous()
            out[f"layers.{i}.bias"] = b[s, 0].detach().cpu().clone().contiguous()
        return out

    def seed_state(self, s: int) -> dict[str, Tensor]:
        """Seed s's model: :meth:`member_state` for a single MLP; for an ensemble (``group`` > 1) its
        members stacked, ``layers.{i}.weight`` (group, d_in, d_out) and ``.bias`` (group, d_out)."""
        if self.group == 1:
            return self.member_state(s)
        members = [self.member_state(s * self.group + j) for j in range(self.group)]
        return {k: torch.stack([m[k] for m in members]) for k in members[0]}

    @classmethod
    def from_members(cls, states: list[dict[str, Tensor]], dropout: float = 0.0) -> EnsembleMLP:
        """The model of the seeds whose :meth:`seed_state` ``states`` holds (all of one shape)."""
        n_layers = len(states[0]) // 2
        # a single MLP's tensors are one member's; an ensemble seed's are stacked along a first axis
        stacked = [st if st["layers.0.weight"].dim() == 3 else {k: v[None] for k, v in st.items()} for st in states]
        group = stacked[0]["layers.0.weight"].shape[0]
        dims = [stacked[0]["layers.0.weight"].shape[1]] + [
            stacked[0][f"layers.{i}.weight"].shape[2] for i in range(n_layers)
        ]
        m = cls(len(states) * group, dims[0], dims[1:-1], dims[-1], dropout, group=group)
        with torch.no_grad():
            for i in range(n_layers):
                m.weights[i].copy_(torch.cat([st[f"layers.{i}.weight"] for st in stacked]))
                m.biases[i].copy_(torch.cat([st[f"layers.{i}.bias"] for st in stacked]).unsqueeze(1))
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
