"""The trainer's inner loop: an :class:`EnsembleMLP`'s per-sample focal loss with a hand-written backward.

Autograd and autocast on the same computation spend about a third of a bf16 step outside the
matrix products: a dozen small ops for the focal loss and their backward, a cast per operand and
per gradient, and relu and dropout as separate steps. Here one :class:`torch.autograd.Function`
does the forward in the products' dtype, keeps what the backward needs, and returns the gradients
in closed form:

- focal loss ℓ = -α_y (1 - q)^γ log q, with q = softmax(z)_y, has dℓ/dz = c (onehot_y - p), where
  c = α_y (γ (1 - q)^(γ-1) q log q - (1 - q)^γ) (γ = 0: cross-entropy, c = -α_y);
- a hidden layer's output a = relu(z) · mask passes gradient where a > 0, times the mask;
- weight and bias gradients come back in the products' dtype: in bf16 both backward passes of an
  attacked step add into one bf16 gradient, cast once to the fp32 that AdamW updates.

The adversarial methods still see a plain differentiable ``loss_fn(x)``; a test checks every
gradient against autograd's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor


@dataclass
class StepInputs:
    """What one step's losses share: labels (S, B), dropout masks (S, B, h) per hidden layer (in
    the products' dtype), the logit shift (C,), focal γ, per-class α (C,), and the weights
    ``weights[i]`` (S, d_i, d_i+1) and biases ``biases[i]`` (S, 1, d_i+1) the products use.

    In fp32 these are the model's parameters. In bf16 they are copies cast once per step, leaves
    of their own: both of an attacked step's backward passes add into their bf16 ``.grad``, which
    is cast to fp32 once (:meth:`grads_to`), as autocast would do, but without a cast per use.
    """

    y: Tensor
    masks: list[Tensor] | None
    shift: Tensor
    gamma: float
    alpha: Tensor | None
    weights: list[Tensor]
    biases: list[Tensor]

    @classmethod
    def cast(cls, params: list[Tensor], dtype: torch.dtype, **kw: object) -> StepInputs:
        """From the model's parameters, weights first then biases (``EnsembleMLP.parameters()``)."""
        if params[0].dtype != dtype:
            params = [p.detach().to(dtype).requires_grad_(p.requires_grad) for p in params]
        half = len(params) // 2
        return cls(weights=params[:half], biases=params[half:], **kw)  # type: ignore[arg-type]

    @property
    def params(self) -> list[Tensor]:
        return [*self.weights, *self.biases]

    def frozen(self) -> StepInputs:
        """The same step with the weights held fixed: gradients w.r.t. x alone cost no weight gradients."""
        return replace(self, weights=[w.detach() for w in self.weights], biases=[b.detach() for b in self.biases])

    def grads_to(self, params: list[Tensor]) -> None:
        """Hand the gradients to the model's ``params`` (cast to their dtype; none when they are the same)."""
        for p, c in zip(params, self.params):
            if c is not p:
                p.grad = None if c.grad is None else c.grad.to(p.dtype)


class MLPFocalLoss(torch.autograd.Function):
    """``apply(x, inputs, *inputs.params)``: x (S, B, d) -> per-sample loss (S, B), fp32 or wider.

    The gradients go to ``inputs.params`` (passed again so that autograd sees them), in their
    dtype; one that does not require grad gets none and costs none.
    """

    @staticmethod
    def forward(ctx, x: Tensor, inputs: StepInputs, *params: Tensor) -> Tensor:  # type: ignore[override]
        W, Bs, masks = inputs.weights, inputs.biases, inputs.masks
        h = x.to(W[0].dtype)
        acts = [h]  # each layer's input: x, then every hidden layer's output after dropout
        last = len(W) - 1
        for i, (w, b) in enumerate(zip(W, Bs)):
            h = torch.baddbmm(b, h, w)
            if i < last:
                h = h.relu_()
                if masks is not None:
                    h = h.mul_(masks[i])
                acts.append(h)
        # log-softmax by hand: aten's over a last axis of 7 classes is ~3x slower, and p comes free
        z = h.to(torch.promote_types(h.dtype, torch.float32)) + inputs.shift  # (S, B, C)
        z -= z.amax(-1, keepdim=True)
        p = z.exp()
        total = p.sum(-1, keepdim=True)
        p /= total
        logp = z.sub_(total.log_())
        y = inputs.y.unsqueeze(-1)
        logq = logp.gather(-1, y).squeeze(-1)  # (S, B)
        loss = -logq
        focal = None
        if inputs.gamma:
            q = p.gather(-1, y).squeeze(-1)
            rest = (1.0 - q).clamp_min(0.0)
            focal = (q, rest, rest.pow(inputs.gamma))
            loss = loss * focal[2]
        alpha_y = None if inputs.alpha is None else inputs.alpha[inputs.y]
        if alpha_y is not None:
            loss = loss * alpha_y
        ctx.inputs, ctx.acts, ctx.p, ctx.logq, ctx.focal, ctx.alpha_y = inputs, acts, p, logq, focal, alpha_y
        ctx.x_dtype = x.dtype
        return loss

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        inputs: StepInputs = ctx.inputs
        W, masks, acts = inputs.weights, inputs.masks, ctx.acts
        L = len(W)
        need_x, need = ctx.needs_input_grad[0], ctx.needs_input_grad[2:]
        # dℓ/dz = c (onehot - p), c as in the module docstring, times the incoming gradient
        if ctx.focal is None:
            c = -torch.ones_like(ctx.logq)
        else:
            q, rest, rest_g = ctx.focal
            g = inputs.gamma
            # (1 - q)^(γ-1) q log q: 0 where q = 1 (log q = 0), also for γ < 1 where the power diverges
            slope = torch.where(rest > 0, rest_g / rest.clamp_min(1e-30), 0.0) * q * ctx.logq
            c = g * slope - rest_g
        if ctx.alpha_y is not None:
            c = c * ctx.alpha_y
        c = c * grad
        dz = ctx.p * -c.unsqueeze(-1)
        dz.scatter_add_(-1, inputs.y.unsqueeze(-1), c.unsqueeze(-1))
        dz = dz.to(W[0].dtype)
        grad_w: list[Tensor | None] = [None] * L
        grad_b: list[Tensor | None] = [None] * L
        grad_x = None
        for i in range(L - 1, -1, -1):
            if need[i]:
                grad_w[i] = torch.bmm(acts[i].transpose(1, 2), dz)
            if need[L + i]:
                grad_b[i] = dz.sum(1, keepdim=True)
            if i == 0 and not need_x:
                break
            da = torch.bmm(dz, W[i].transpose(1, 2))
            if i == 0:
                grad_x = da.to(ctx.x_dtype)
                break
            dz = torch.ops.aten.threshold_backward(da, acts[i], 0)  # relu and dropped units: where the output is 0
            if masks is not None:
                dz = dz.mul_(masks[i - 1])
        return (grad_x, None, *grad_w, *grad_b)


def mlp_focal_loss(x: Tensor, inputs: StepInputs) -> Tensor:
    """Per-sample focal loss (S, B) of the MLP whose weights and biases ``inputs`` holds."""
    return MLPFocalLoss.apply(x, inputs, *inputs.params)
