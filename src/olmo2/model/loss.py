"""The pretraining loss (spec §3.2–3.3): summed cross-entropy plus z-loss, from the final hidden states.

With a 100,352-row vocabulary the logits dominate training memory: 4096 tokens give a 1.6 GB fp32
tensor, and the usual path (``lm_head`` then ``cross_entropy``) keeps several such tensors alive (the
logits, their log-softmax, the gradient). ``lm_loss`` never holds more than ``chunk_size`` rows of
logits: per chunk it computes the logits, their log-sum-exp and the loss, and, when a gradient will
be needed, the gradient of the logits right away, folded into the gradients of the hidden states and
of the LM-head weight. The logits are thus computed once, and the backward pass costs two matmuls, the
same as the unchunked path (recomputing them per chunk, as ``torch.utils.checkpoint`` would, adds a
third full LM-head matmul; see ``benchmarks/bench_train_step.py``).

Both terms are *sums* over target tokens, multiplied by ``1 / normalizer``. Pretraining divides by the
number of tokens in the global batch (§3.2), so the micro-batch losses of gradient accumulation add up
to the loss of the whole batch, gradients included. The softmax is always computed in fp32, also under
bf16 autocast (where the LM-head matmuls run in bf16, as they would in ``nn.Linear``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from olmo2.tokenizer import IGNORE_INDEX

DEFAULT_CHUNK_SIZE = 512


class LossOutput(NamedTuple):
    """``ce_loss`` and ``z_loss`` are kept apart so both can be logged; ``loss`` is what to minimise.

    ``n_tokens`` is the number of target tokens (labels other than the ignore index), a 0-dim int64
    tensor (not a Python int, so that it costs no device sync).
    """

    ce_loss: torch.Tensor
    z_loss: torch.Tensor
    n_tokens: torch.Tensor

    @property
    def loss(self) -> torch.Tensor:
        return self.ce_loss + self.z_loss


def shift_labels(input_ids: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Next-token labels aligned with ``input_ids``: position t predicts token t+1; the last position
    of each row has no target (``ignore_index``). Keeping the [B, T] shape lets the loss take the
    model's hidden states as they are, without slicing off the last position (a copy)."""
    pad = torch.full_like(input_ids[..., :1], ignore_index)
    return torch.cat((input_ids[..., 1:], pad), dim=-1)


def _scale(normalizer) -> float | torch.Tensor:
    if normalizer is None:
        return 1.0
    if isinstance(normalizer, torch.Tensor):
        return 1.0 / normalizer.to(torch.float32)
    return 1.0 / float(normalizer)


def lm_loss_from_logits(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    z_loss_multiplier: float = 1e-5,
    normalizer: float | torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> LossOutput:
    """The plain (reference) loss from full logits [..., V] and labels [...] aligned with them.

    ``ce_loss = Σ CE / normalizer`` and ``z_loss = c · Σ logsumexp(logits)² / normalizer`` over the
    tokens whose label is not ``ignore_index``; ``normalizer=None`` leaves the sums.
    """
    logits = logits.reshape(-1, logits.shape[-1]).float()
    labels = labels.reshape(-1)
    valid = labels != ignore_index
    ce = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="sum")
    lse = torch.logsumexp(logits, dim=-1)
    z = z_loss_multiplier * torch.where(valid, lse, 0.0).square().sum()
    scale = _scale(normalizer)
    return LossOutput(ce * scale, z * scale, valid.sum())


class _Buffers:
    """Chunk-sized scratch tensors, reused across chunks: allocating hundreds of MB afresh per chunk
    costs page faults that were measurable on CPU."""

    def __init__(self, rows: int, vocab: int, device, compute_dtype, acc_dtype):
        self.logits = torch.empty(rows, vocab, device=device, dtype=compute_dtype)
        self.probs = torch.empty(rows, vocab, device=device, dtype=acc_dtype)


def _chunk(h, w, targets, valid, g_ce, g_z, z_mult, bufs, grad_h, grad_w, first):
    """Loss terms of one chunk of rows and, if ``grad_h``/``grad_w`` are given, their gradients.

    The logits' gradient is ``diag(row)·P − diag(hit)·onehot(target)`` with P the softmax,
    ``row = g_ce + 2c·g_z·lse`` and ``hit = g_ce`` (both 0 on ignored rows). The row scaling is folded
    into the small operands (``P @ W`` scaled afterwards, ``Pᵀ @ (row·h)``) and the one-hot part is a
    gather/index_add, so the only passes over the [rows, V] tensor are the max and the softmax.
    Returns (Σ CE, Σ lse²) over the chunk's target rows.
    """
    r, acc = h.shape[0], bufs.probs.dtype
    logits = torch.mm(h, w.t(), out=bufs.logits[:r])
    target_logit = logits.gather(1, targets.unsqueeze(1)).squeeze(1).to(acc)
    top = logits.amax(dim=1)  # no argmax indices: amax is ~4x faster than max(dim) on CPU
    probs = torch.softmax(logits, dim=-1, dtype=acc, out=bufs.probs[:r])
    # log-sum-exp = max − log P(argmax), and P(argmax) = max P (softmax is monotone); P(argmax) ≥ 1/V,
    # so this neither underflows nor loses precision.
    lse = top.to(acc) - probs.amax(dim=1).log()
    zero = torch.zeros((), device=lse.device, dtype=acc)
    ce = torch.where(valid, lse - target_logit, zero).sum()
    z = torch.where(valid, lse, zero).square().sum()
    if grad_h is None and grad_w is None:
        return ce, z
    row = torch.where(valid, g_ce + (2.0 * z_mult) * g_z * lse, zero).unsqueeze(1)
    hit = torch.where(valid, g_ce * torch.ones_like(lse), zero).unsqueeze(1)
    p = probs if probs.dtype == h.dtype else bufs.logits[:r].copy_(probs)
    if grad_h is not None:
        grad_h.copy_(torch.mm(p, w).to(acc) * row - hit * w[targets].to(acc))
    if grad_w is not None:
        scaled_h = (h.to(acc) * row).to(h.dtype)
        if grad_w.dtype == h.dtype:
            grad_w.addmm_(p.t(), scaled_h, beta=0.0 if first else 1.0)
        elif first:
            grad_w.copy_(torch.mm(p.t(), scaled_h))
        else:
            grad_w.add_(torch.mm(p.t(), scaled_h))
        grad_w.index_add_(0, targets, -(hit * h.to(acc)))
    return ce, z


def _run(hidden, weight, labels, g_ce, g_z, z_mult, chunk_size, ignore_index, compute_dtype, need_h, need_w):
    """All chunks: (Σ CE, Σ lse², grad_h or None, grad_w or None); gradients for upstream g_ce, g_z."""
    with torch.autocast(hidden.device.type, enabled=False):
        h, w = hidden.to(compute_dtype), weight.to(compute_dtype)
        n, acc = h.shape[0], torch.promote_types(compute_dtype, torch.float32)
        valid_all = labels != ignore_index
        targets_all = torch.where(valid_all, labels, 0)
        bufs = _Buffers(min(chunk_size, max(n, 1)), w.shape[0], h.device, compute_dtype, acc)
        grad_h = torch.empty(h.shape, device=h.device, dtype=acc) if need_h else None
        grad_w = torch.zeros(w.shape, device=w.device, dtype=acc) if need_w else None
        ce = z = torch.zeros((), device=h.device, dtype=acc)
        for s in range(0, n, chunk_size):
            e = min(s + chunk_size, n)
            ce_c, z_c = _chunk(
                h[s:e],
                w,
                targets_all[s:e],
                valid_all[s:e],
                g_ce,
                g_z,
                z_mult,
                bufs,
                grad_h[s:e] if need_h else None,
                grad_w,
                first=s == 0,
            )
            ce, z = ce + ce_c, z + z_c
    return ce, z, grad_h, grad_w


class _ChunkedLMLoss(torch.autograd.Function):
    """(hidden [N, d], weight [V, d], labels [N]) → (scale·Σ CE, scale·c·Σ lse²), chunk by chunk.

    The forward pass also computes the gradients for the usual backward (``loss = ce + z``, i.e. the
    same upstream gradient on both outputs), so the logits are made once. Any other combination (e.g.
    backpropagating the CE alone), or a second backward, recomputes the logits chunk by chunk: correct,
    one LM-head matmul slower.
    """

    @staticmethod
    def forward(ctx, hidden, weight, labels, scale, z_mult, chunk_size, ignore_index, compute_dtype):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        args = (z_mult, chunk_size, ignore_index, compute_dtype)
        ce, z, grad_h, grad_w = _run(hidden, weight, labels, scale, scale, *args, need_h, need_w)
        if need_h or need_w:
            ctx.save_for_backward(hidden, weight, labels)
            ctx.grads, ctx.scale, ctx.args = (grad_h, grad_w), scale, args
        return ce * scale, z * (z_mult * scale)

    @staticmethod
    def backward(ctx, g_ce, g_z):
        hidden, weight, labels = ctx.saved_tensors
        # Hand the precomputed gradients over once (so autograd may keep them as .grad without a copy);
        # a second backward through the same graph (retain_graph) recomputes.
        grads, ctx.grads = ctx.grads, None
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if grads is not None and (ctx.args[0] == 0 or torch.equal(g_ce, g_z)):
            grad_h, grad_w = grads
            if not (g_ce.device.type == "cpu" and g_ce.item() == 1.0):
                grad_h = grad_h.mul_(g_ce) if need_h else None
                grad_w = grad_w.mul_(g_ce) if need_w else None
        else:
            del grads
            g_ce, g_z = g_ce * ctx.scale, g_z * ctx.scale
            _, _, grad_h, grad_w = _run(hidden, weight, labels, g_ce, g_z, *ctx.args, need_h, need_w)
        grad_h = grad_h.to(hidden.dtype) if need_h else None
        grad_w = grad_w.to(weight.dtype) if need_w else None
        return grad_h, grad_w, None, None, None, None, None, None


def lm_loss(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    z_loss_multiplier: float = 1e-5,
    chunk_size: int | None = DEFAULT_CHUNK_SIZE,
    normalizer: float | torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> LossOutput:
    """CE and z-loss of ``logits = hidden @ lm_head_weight.T`` without materialising all the logits.

    ``hidden`` [..., d] are the final-norm hidden states, ``labels`` [...] the targets aligned with them
    (see ``shift_labels``). ``normalizer``: divide both sums by it (pretraining: the global batch's
    token count; ``None`` keeps the sums). ``chunk_size``: logits rows per chunk; ``None`` takes the
    plain path (full logits, then ``lm_loss_from_logits``), kept as the reference.

    The chunked path computes the weight and hidden-state gradients during the forward pass whenever
    they will be needed, and keeps them (an fp32 tensor the size of the LM head) until backward.
    """
    if chunk_size is None:
        return lm_loss_from_logits(
            F.linear(hidden, lm_head_weight),
            labels,
            z_loss_multiplier=z_loss_multiplier,
            normalizer=normalizer,
            ignore_index=ignore_index,
        )
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if hidden.shape[:-1] != labels.shape:
        raise ValueError(f"labels {tuple(labels.shape)} do not match hidden states {tuple(hidden.shape)}")
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        compute_dtype = torch.get_autocast_dtype(device_type)
    else:
        compute_dtype = torch.promote_types(hidden.dtype, lm_head_weight.dtype)
    flat_labels = labels.reshape(-1)
    ce, z = _ChunkedLMLoss.apply(
        hidden.reshape(-1, hidden.shape[-1]),
        lm_head_weight,
        flat_labels,
        _scale(normalizer),
        float(z_loss_multiplier),
        int(chunk_size),
        ignore_index,
        compute_dtype,
    )
    return LossOutput(ce, z, (flat_labels != ignore_index).sum())
