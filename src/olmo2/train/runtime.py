"""How a stage's model runs, the same for every stage: precision, autocast, activation checkpointing,
per-block compile and the FSDP2/HSDP/DDP wrapping, and gradient sync across micro-batches."""

from __future__ import annotations

import contextlib
import functools

import torch
from torch import nn

from olmo2.train.distributed import DistEnv, parallelize
from olmo2.train.monitor import measure_peak_flops


@functools.cache
def choose_precision(requested: str, device: torch.device) -> tuple[torch.dtype, float]:
    """(compute dtype, its measured matmul peak). ``auto``: bf16 where it is clearly faster than fp32.

    Measured once per process and device (about a second of matmuls on a CPU): a process that runs
    several stages (a recipe, a test session) reuses the first answer."""
    if requested == "fp32":
        return torch.float32, measure_peak_flops(device, torch.float32)
    if requested == "bf16":
        return torch.bfloat16, measure_peak_flops(device, torch.bfloat16)
    fp32 = measure_peak_flops(device, torch.float32)
    if device.type == "cuda":
        return torch.bfloat16, measure_peak_flops(device, torch.bfloat16)
    # A small probe first: without bf16 matrix units (AVX2-only CPUs) a 1024^2 bf16 matmul takes
    # seconds, and measuring it properly would cost half a minute at every start.
    if measure_peak_flops(device, torch.bfloat16, size=256, repeats=1) < fp32:
        return torch.float32, fp32
    bf16 = measure_peak_flops(device, torch.bfloat16, size=1024, repeats=2)
    return (torch.bfloat16, bf16) if bf16 > 1.5 * fp32 else (torch.float32, fp32)


def autocast(device: torch.device, dtype: torch.dtype):
    """Autocast to ``dtype`` (weights stay fp32), or nothing for fp32."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


def build_parallel_model(
    model: nn.Module,
    *,
    env: DistEnv,
    dtype: torch.dtype,
    parallel: str,
    hsdp_replicas: int | None = None,
    activation_checkpointing: bool = False,
    compile: bool = False,
    backbone: nn.Module | None = None,
) -> nn.Module:
    """``model`` made ready to train: activation checkpointing, per-block ``torch.compile``, then
    sharded or replicated over the ranks (bf16 parameters inside FSDP on CUDA). ``backbone`` is the
    ``Olmo2`` whose blocks these apply to, when ``model`` wraps one (PPO's value model)."""
    backbone = model if backbone is None else backbone
    backbone.activation_checkpointing = activation_checkpointing
    blocks = list(backbone.model.layers)
    if compile:
        for layer in blocks:
            layer.compile()
    fsdp_dtype = dtype if env.device.type == "cuda" and dtype != torch.float32 else None
    model = parallelize(
        model, env, parallel, param_dtype=fsdp_dtype, hsdp_replicas=hsdp_replicas, blocks=blocks
    )
    return model.train()


def sync_gradients(model: nn.Module, sync: bool):
    """A context in which backward all-reduces gradients only if ``sync`` (DDP / FSDP2): all but the
    last micro-batch of a step skip it."""
    if hasattr(model, "no_sync") and not sync:
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()
