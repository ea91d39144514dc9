"""Training an :class:`EnsembleMLP` with focal loss and an adversarial method, S seeds at once.

Each seed owns four random streams derived from it (init, shuffle, dropout, attack), so
seed s trains the same whether it trains alone or beside others. A step's loss and gradients
come from :mod:`abexrat.fused`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from abexrat.adversarial import Batch, make_method
from abexrat.config import TrainConfig
from abexrat.fused import StepInputs, mlp_focal_loss
from abexrat.metrics import macro_f1
from abexrat.model import EnsembleMLP
from abexrat.optim import adamw
from abexrat.precision import use_bf16

EpochCallback = Callable[[int, dict[str, list[float]]], None]


def derived_seed(seed: int, purpose: int) -> int:
    """An independent 63-bit seed for one of a seed's random number generators (``purpose``: which one)."""
    return int(np.random.SeedSequence([seed, purpose]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def member_seeds(seeds: list[int], ensemble: int) -> list[int]:
    """The seeds of every MLP trained for ``seeds`` with ``ensemble`` MLPs per seed, seed by seed:
    a seed's first MLP is seed itself (so ``ensemble: 1`` trains exactly the single-MLP seeds), the
    others get seeds derived from it."""
    return [m for s in seeds for m in [s, *(derived_seed(s, 100 + j) for j in range(1, ensemble))]]


def class_alpha(cfg: TrainConfig, y: np.ndarray, n_classes: int) -> torch.Tensor | None:
    """Per-class focal weights: none, 'balanced' (n / (C n_c), mean 1 over samples), or a list."""
    alpha = cfg.loss.alpha
    if alpha is None:
        return None
    if alpha == "balanced":
        counts = np.bincount(y, minlength=n_classes).astype(np.float64)
        w = len(y) / (n_classes * np.maximum(counts, 1.0))
        return torch.tensor(w, dtype=torch.float32)
    if len(alpha) != n_classes:
        from abexrat.core.errors import UserError

        raise UserError(f"loss.alpha: {len(alpha)} weights for {n_classes} classes")
    return torch.tensor(alpha, dtype=torch.float32)


def resolve_device(device: str) -> torch.device:
    """``train.device`` as a torch device: ``auto`` is the first CUDA GPU torch sees (in a Ray
    trial, the GPU Ray assigned through CUDA_VISIBLE_DEVICES), else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        index = int(device.split(":")[1]) if ":" in device else 0
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            from abexrat.core.errors import UserError

            raise UserError(f"train.device: {device} asked for, but torch sees {torch.cuda.device_count()} CUDA GPU(s)")
    return torch.device(device)


def release_free_memory() -> None:
    """Hand the heap memory freed so far back to the OS (glibc's ``malloc_trim``; elsewhere a no-op).

    A Ray Tune trial runs in a new thread, and glibc gives new threads their own malloc arena:
    without this, the tens of MB a fit frees stay in that arena, and a worker that runs trial
    after trial (``reuse_actors``) grows by about that much per trial."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@dataclass
class TrainResult:
    model: EnsembleMLP
    seeds: list[int]
    scale: float  # mean L2 norm of the training vectors: ε's unit
    precision: str = "fp32"  # the products' precision training used: "fp32" or "bf16"
    history: list[dict[str, Any]] = field(default_factory=list)
    train_s: float = 0.0


def fit(
    X: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    cfg: TrainConfig,
    seeds: list[int],
    val: tuple[np.ndarray, np.ndarray] | None = None,
    on_epoch: EpochCallback | None = None,
    method_hook: Callable[[Any], None] | None = None,
    variants: list[tuple[float, float]] | None = None,
) -> TrainResult:
    """Train one model per seed on X (n, d) float32 and y (n,) int64, all seeds batched.

    A seed's model is ``cfg.model.ensemble`` MLPs (see :func:`member_seeds`); the batched model
    stacks all S x ensemble of them. ``val`` = (X_val, y_val) adds ``val_macro_f1`` per seed to
    each epoch's record; ``on_epoch(epoch, record)`` sees each record (lists hold one value per seed).

    ``variants`` = [(eps, p), ...] (G of them, ε relative as ``adversarial.eps``) trains G
    configurations at once, ``cfg`` with each variant's ``adversarial.eps`` and ``adversarial.p``:
    the model then holds G x S seed models, variant by variant (``predict_proba`` gives (G S, n, C),
    records hold G S values), and variant j's seed s draws the same numbers as it would alone.
    """
    t0 = time.perf_counter()
    k = cfg.model.ensemble
    G = len(variants) if variants else 1
    members = member_seeds(seeds, k) * G
    S, (n, d) = len(members), X.shape
    device = resolve_device(cfg.train.device)
    Xt, yt = torch.from_numpy(np.ascontiguousarray(X, np.float32)), torch.from_numpy(y.astype(np.int64)).to(device)
    model = EnsembleMLP(S, d, cfg.model.hidden, n_classes, cfg.model.dropout, group=k)
    model.reset([derived_seed(s, 0) for s in members])  # on the CPU: the same initial weights on every device
    model.to(device)
    shuffles = [np.random.default_rng(derived_seed(s, 1)) for s in members]
    drop_gens = [np.random.Generator(np.random.SFC64(derived_seed(s, 2))) for s in members]  # the fastest raw bits
    adv_gens = [torch.Generator().manual_seed(derived_seed(s, 3)) for s in members]
    scale = mean_norm(X)
    method = adversary(cfg, adv_gens, scale, variants)
    if method_hook:
        method_hook(method)
    loss = LossTerms.of(cfg, y, n_classes, device)
    params = list(model.parameters())
    opt = adamw(params, cfg.train.lr, cfg.train.weight_decay)
    # bf16: the products run in bf16; the weights, optimizer state and loss stay fp32.
    bf16 = use_bf16(cfg.train.precision, device)
    result = TrainResult(model, list(seeds), scale, precision="bf16" if bf16 else "fp32")
    compute = torch.bfloat16 if bf16 else torch.float32
    source = Xt if isinstance(X, np.memmap) else Xt.to(device, compute)
    gather = EpochGather(model, source, yt, cfg.train.batch_size, compute, device)
    for epoch in range(cfg.train.epochs):
        model.train()
        perms = [torch.from_numpy(r.permutation(n)) for r in shuffles]
        loss_sum = torch.zeros(S, device=device)
        for xb, yb, masks in gather.batches(perms, drop_gens):
            loss_sum += _step(opt, params, method, compute, xb, yb, masks, loss)
        record: dict[str, Any] = {"epoch": epoch + 1, "train_loss": (loss_sum / n).view(-1, k).mean(1).tolist()}
        if val is not None:
            pred = predict_proba(model, val[0]).argmax(-1)
            record["val_macro_f1"] = [macro_f1(val[1], p, n_classes) for p in pred]
        result.history.append(record)
        if on_epoch:
            on_epoch(epoch + 1, record)
    del gather, source
    release_free_memory()
    model.eval()
    result.train_s = time.perf_counter() - t0
    return result


def adversary(
    cfg: TrainConfig, gens: list[torch.Generator], scale: float, variants: list[tuple[float, float]] | None
) -> Any:
    """The adversarial method of ``cfg`` for the members that ``gens`` seed, ε in units of
    ``scale``; with ``variants`` one ε and p per member, variant by variant."""
    a = cfg.adversarial
    eps: float | torch.Tensor = a.eps * scale
    p: float | list[float] = a.p
    if variants:
        per = len(gens) // len(variants)
        eps = torch.tensor([e * scale for e, _ in variants for _ in range(per)], dtype=torch.float32)
        p = [q for _, q in variants for _ in range(per)]
    return make_method(
        a.method,
        eps,
        gens,
        p=p,
        steps=a.steps,
        step_size=a.step_size * scale,
        eps_min=a.eps_min * scale,
        eps_max=a.eps_max * scale,
        beta=a.beta,
        momentum=a.momentum,
    )


@dataclass
class LossTerms:
    """What the focal loss needs beside the logits: ``gamma`` (0: cross-entropy), per-class
    ``alpha`` (C,) or None, and the logit adjustment ``shift`` (C,)."""

    gamma: float
    alpha: torch.Tensor | None
    shift: torch.Tensor

    @classmethod
    def of(cls, cfg: TrainConfig, y: np.ndarray, n_classes: int, device: torch.device) -> LossTerms:
        alpha = class_alpha(cfg, y, n_classes)
        # Logit adjustment: the loss sees logits + tau log(prior), so the raw logits used at inference
        # are pushed to favour rare classes (Menon et al., "Long-tail learning via logit adjustment").
        prior = np.bincount(y, minlength=n_classes).astype(np.float64) + 1.0
        shift = torch.tensor(cfg.loss.logit_adjust * np.log(prior / prior.sum()), dtype=torch.float32, device=device)
        gamma = cfg.loss.gamma if cfg.loss.name == "focal" else 0.0
        return cls(gamma, None if alpha is None else alpha.to(device), shift)


class EpochGather:
    """Each epoch's rows, gathered in each member's own order, batch by batch.

    The rows go into buffers sliced per step (views, no copies), with the dropout masks of those
    rows beside them. The buffers are batch-major, (batches, S, B, d): a step's rows are one
    contiguous (S, B, d) slab that the products read as is (a member-major slice is copied inside
    every matmul). They hold the products' dtype: a bf16 batch is half the traffic, and bf16
    activations times fp32 masks would promote to fp32 (an in-memory X is cast once). A training set
    larger than the buffer budget (a memory-mapped one: ``abexrat.stream_train``) is gathered block
    by block; blocks hold whole batches and the masks are drawn in order, so the steps are the same
    either way.

    On a GPU the whole in-memory X lives there, and the rows are gathered there. The dropout masks
    and the orders are drawn on the CPU (the same numbers on every device) and copied over once
    per block.
    """

    def __init__(
        self,
        model: EnsembleMLP,
        source: torch.Tensor,
        y: torch.Tensor,
        batch: int,
        compute: torch.dtype,
        device: torch.device,
    ) -> None:
        S, d = model.n_members, source.shape[1]
        self.model, self.source, self.y, self.batch, self.compute, self.device = (
            model,
            source,
            y,
            batch,
            compute,
            device,
        )
        self.n, self.d = source.shape[0], d
        self.rows = block_rows(self.n, S, model.dims, batch)
        n_batches = -(-self.rows // batch)
        self.X_blk = torch.empty(n_batches, S, batch, d, dtype=compute, device=device)
        self.y_blk = torch.empty(n_batches, S, batch, dtype=torch.int64, device=device)
        dims = model.dims[1:-1]
        self.masks_buf = [torch.empty(S, self.rows, h, dtype=compute) for h in dims] if model.dropout > 0 else None
        on_cpu = device.type == "cpu"
        self.masks_dev = (
            None if on_cpu or self.masks_buf is None else [torch.empty_like(m, device=device) for m in self.masks_buf]
        )

    def batches(
        self, perms: list[torch.Tensor], drop_gens: list[np.random.Generator]
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[torch.Tensor] | None]]:
        """(x (S, b, d), y (S, b), dropout masks [(S, b, h)] or None) for each step of one epoch."""
        B, d, n = self.batch, self.d, self.n
        for b0 in range(0, n, self.rows):
            m = min(self.rows, n - b0)
            mb = -(-m // B)
            # row ids (mb, S, B); a block's last batch is padded with row 0 and sliced off below
            ids = torch.stack([torch.nn.functional.pad(p[b0 : b0 + m], (0, mb * B - m)).view(mb, B) for p in perms], 1)
            flat = ids.view(-1)
            flat_dev = flat.to(self.device)
            if self.source.dtype == self.compute and self.source.device == self.device:
                torch.index_select(self.source, 0, flat_dev, out=self.X_blk[:mb].view(-1, d))
            else:  # a memory-mapped X: gathered on the CPU
                self.X_blk[:mb].view(-1, d).copy_(self.source[flat])
            torch.index_select(self.y, 0, flat_dev, out=self.y_blk[:mb].view(-1))
            masks_blk = self.model.dropout_masks(m, drop_gens, self.compute, out=self.masks_buf)
            if masks_blk is not None and self.masks_dev is not None:
                masks_blk = [dev[:, :m].copy_(mk, non_blocking=False) for dev, mk in zip(self.masks_dev, masks_blk)]
            for j in range(mb):
                step = slice(j * B, min((j + 1) * B, m))
                b = step.stop - step.start
                masks = None if masks_blk is None else [mk[:, step] for mk in masks_blk]
                yield self.X_blk[j, :, :b], self.y_blk[j, :, :b], masks


def _step(
    opt: Any,
    params: list[torch.Tensor],
    method: Any,
    dtype: torch.dtype,
    xb: torch.Tensor,
    yb: torch.Tensor,
    masks: list[torch.Tensor] | None,
    loss_terms: LossTerms,
) -> torch.Tensor:
    """One optimizer step on a batch xb (S, b, d), yb (S, b); returns each member's loss sum (S,).

    The products run in ``dtype`` on weights cast once per step. On an attacked step one backward
    pass gives the clean loss's weight gradients and the gradient w.r.t. x the attack needs; the
    attacked loss's weight gradients then add to them."""
    t = loss_terms
    inputs = StepInputs.cast(params, dtype, y=yb, masks=masks, shift=t.shift, gamma=t.gamma, alpha=t.alpha)

    def loss_fn(x: torch.Tensor) -> torch.Tensor:
        return mlp_focal_loss(x, inputs)

    def probe(x: torch.Tensor) -> torch.Tensor:
        return mlp_focal_loss(x, inputs.frozen())

    opt.zero_grad(set_to_none=True)
    if not method.plan():
        loss = loss_fn(xb).mean(-1)
        loss.sum().backward(inputs=inputs.params)
    else:
        x = xb.detach().requires_grad_(method.uses_grad)
        clean = loss_fn(x)
        wrt = [x, *inputs.params] if method.uses_grad else inputs.params
        grads = torch.autograd.grad(clean.mean(-1).sum(), wrt)
        batch = Batch(loss_fn, x, clean, grad=grads[0] if method.uses_grad else None, probe=probe)
        extra = method.extra_loss(batch)
        for p, g in zip(inputs.params, grads[-len(params) :]):
            p.grad = g
        extra.sum().backward(inputs=inputs.params)  # adds to the clean gradients
        loss = clean.detach().mean(-1) + extra.detach()
    inputs.grads_to(params)
    opt.step()
    return loss.detach() * xb.shape[1]


EPOCH_BUFFER_BYTES = 512 * 2**20  # the gathered rows and their dropout masks, all members


def block_rows(n: int, members: int, dims: list[int], batch: int) -> int:
    """Rows gathered at a time: all n when they fit ``EPOCH_BUFFER_BYTES``, else a multiple of the batch."""
    per_row = members * (4 * dims[0] + 8 + 4 * sum(dims[1:-1]))
    fit = EPOCH_BUFFER_BYTES // per_row
    return max(n, 1) if fit >= n else max(batch, fit // batch * batch)


def mean_norm(X: np.ndarray, chunk: int = 65536) -> float:
    """The mean L2 norm of X's rows, read a chunk at a time (X may be memory-mapped)."""
    if not len(X):
        return 1.0
    return float(np.concatenate([np.linalg.norm(X[i : i + chunk], axis=1) for i in range(0, len(X), chunk)]).mean())


@torch.no_grad()
def predict_proba(model: EnsembleMLP, X: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Class probabilities of every seed: X (n, d) -> (S, n, C); an ensemble seed's are its MLPs' mean."""
    was_training = model.training
    model.eval()
    S = model.n_members
    device = model.weights[0].device
    out = []
    Xt = torch.from_numpy(np.ascontiguousarray(X, np.float32))
    for start in range(0, len(Xt), chunk):
        xb = Xt[start : start + chunk].to(device).unsqueeze(0).expand(S, -1, -1)
        out.append(torch.softmax(model(xb), dim=-1).cpu())
    model.train(was_training)
    if not out:
        return np.zeros((model.n_seeds, 0, model.dims[-1]), np.float32)
    proba = torch.cat(out, dim=1)
    if model.group > 1:
        proba = proba.view(model.n_seeds, model.group, *proba.shape[1:]).mean(1)
    return proba.numpy()


# ``abexrat.train(config, **overrides)`` is the API's train (this module stays the training loop).
from abexrat._callable import make_callable  # noqa: E402

make_callable(__name__, "abexrat.api:train")
