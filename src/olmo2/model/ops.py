"""The numerics under ``transformer.py``: RMSNorm, RoPE and the SwiGLU down-projection, each with a
hand-written backward pass.

Each op computes what its docstring's formula says, in the same fp32 arithmetic as the plain PyTorch
expression; the hand-written backward only saves fewer tensors or makes fewer passes over them than
autograd would. Without a gradient to compute (generation, evaluation) each takes the plain path.
``tests/model/test_ops.py`` gradchecks each backward in float64; the Hugging Face parity tests check
the model built from them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _fp32(t: torch.Tensor) -> torch.Tensor:
    """``t`` in fp32, or wider if it already is (fp64 keeps gradcheck meaningful)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``x / sqrt(mean(x²) + eps) · weight`` over the last dimension, in fp32 (as HF does), cast back
    to ``x``'s dtype."""
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return _RMSNormFunction.apply(x, weight, eps)
    return F.rms_norm(x.float(), (x.shape[-1],), weight.float(), eps).to(x.dtype)


class _RMSNormFunction(torch.autograd.Function):
    """RMSNorm with a hand-written backward: on CPU, autograd through ``F.rms_norm``'s decomposition
    makes about twice as many passes over the activations. Same fp32 arithmetic as the plain path."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        xf = _fp32(x)
        rstd = torch.rsqrt(xf.square().mean(-1, keepdim=True).add_(eps))
        ctx.save_for_backward(x, weight, rstd)
        return (xf * rstd).mul_(_fp32(weight)).to(x.dtype)

    @staticmethod
    def backward(ctx, dy):
        x, weight, rstd = ctx.saved_tensors
        x_hat, dyf = _fp32(x) * rstd, _fp32(dy)
        dw = (dyf * x_hat).sum(dim=tuple(range(dy.dim() - 1))) if ctx.needs_input_grad[1] else None
        g = dyf * _fp32(weight)
        # d/dx of x·rstd·w: rstd · (g − x̂ · mean(g · x̂))
        dx = g.sub_(x_hat.mul_((g * x_hat).mean(-1, keepdim=True))).mul_(rstd)
        return dx.to(x.dtype), (dw.to(weight.dtype) if dw is not None else None), None


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x·cos + rotate_half(x)·sin`` in fp32, with ``rotate_half(x) = cat(−x2, x1)``."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _RotaryFunction.apply(x, cos, sin)
    return _rotate(x, cos, sin, transpose=False)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, transpose: bool) -> torch.Tensor:
    """The rotation (or, ``transpose``, its transpose, for the backward) in two passes, without the
    negated copy and the concatenation of the textbook form."""
    xf = _fp32(x)
    half = x.shape[-1] // 2
    x1, x2 = xf[..., :half], xf[..., half:]
    sign = -1.0 if transpose else 1.0
    out = xf * cos
    out[..., :half].addcmul_(x2, sin[..., half:] if transpose else sin[..., :half], value=-sign)
    out[..., half:].addcmul_(x1, sin[..., :half] if transpose else sin[..., half:], value=sign)
    return out.to(x.dtype)


class _RotaryFunction(torch.autograd.Function):
    """RoPE is linear in x: the backward is the transposed rotation, and nothing but cos/sin is saved."""

    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        return _rotate(x, cos, sin, transpose=False)

    @staticmethod
    def backward(ctx, dy):
        cos, sin = ctx.saved_tensors
        return _rotate(dy, cos, sin, transpose=True), None, None


def swiglu_down(gate: torch.Tensor, up: torch.Tensor, down_weight: torch.Tensor) -> torch.Tensor:
    """``(silu(gate) · up) @ down_weightᵀ``: the SwiGLU MLP after its two input projections."""
    if torch.is_grad_enabled():
        return _SwiGLUDownFunction.apply(gate, up, down_weight)
    return F.linear(F.silu(gate) * up, down_weight)


class _SwiGLUDownFunction(torch.autograd.Function):
    """``down(silu(gate) · up)`` keeping only ``gate`` and ``up`` for the backward: autograd would also
    keep ``silu(gate)`` and the product, two more [tokens, mlp_hidden] tensors per layer (the largest
    activations of the step). The backward recomputes them, two elementwise passes."""

    @staticmethod
    def forward(ctx, gate, up, weight):
        ctx.save_for_backward(gate, up, weight)
        return F.linear(F.silu(gate) * up, weight)  # under autocast: the same casts as nn.Linear

    @staticmethod
    def backward(ctx, dy):
        gate, up, weight = ctx.saved_tensors
        sig = torch.sigmoid(gate)
        act = gate * sig  # silu(gate)
        d_weight = None
        if ctx.needs_input_grad[2]:
            prod = (act * up).to(dy.dtype).reshape(-1, up.shape[-1])
            d_weight = (dy.reshape(-1, dy.shape[-1]).t() @ prod).to(weight.dtype)
            del prod
        d_prod = dy @ weight.to(dy.dtype)
        d_up = act.mul_(d_prod).to(up.dtype)
        # silu'(g) = σ(g)·(1 + g·(1 − σ(g)))
        d_gate = (1 - sig).mul_(gate).add_(1).mul_(sig).mul_(up).mul_(d_prod).to(gate.dtype)
        return d_gate, d_up, d_weight
