"""How a stage's model runs, the same for every stage: precision, autocast, activation checkpointing,
per-block compile and the FSDP2/HSDP/DDP wrapping, and gradient sync across micro-batches."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import tempfile
from pathlib import Path

import torch
from torch import nn

from olmo2.assets import cache_dir
from olmo2.train.distributed import DistEnv, parallelize
from olmo2.train.monitor import log, measure_peak_flops

PRECISION_CACHE = "precision.json"  # in the cache directory: {machine key: measured peaks and choice}


def _cpuinfo(field: str) -> str | None:
    """The first ``field`` of /proc/cpuinfo (Linux), or None."""
    path = Path("/proc/cpuinfo")
    for line in path.read_text().splitlines() if path.is_file() else []:
        if line.startswith(field) and ":" in line:
            return line.split(":", 1)[1].strip()
    return None


# /proc/cpuinfo flags that decide bf16 and fp32 matmul speed, fastest first
_MATRIX_FLAGS = (
    ("amx_bf16", "AMX-BF16"),
    ("avx512_bf16", "AVX512-BF16"),
    ("avx512f", "AVX-512"),
    ("avx2", "AVX2"),
)


def cpu_description() -> str:
    """The CPU model and which bf16/fp32 matrix extensions it has (AMX, AVX-512 BF16, AVX-512, AVX2):
    what every benchmark prints, since the machines this runs on differ."""
    model = _cpuinfo("model name") or platform.processor() or platform.machine()
    flags = set((_cpuinfo("flags") or "").split())
    kinds = [name for flag, name in _MATRIX_FLAGS if flag in flags]
    return f"{model} [{', '.join(kinds) or 'none of AMX, AVX-512, AVX2'}]"


def _machine_key(device: torch.device) -> str:
    """What the measurement depends on: the CPU (or GPU) model, torch's version and its thread count."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = _cpuinfo("model name") or platform.processor() or platform.machine()
    return f"{device.type}: {name} | torch {torch.__version__} | {torch.get_num_threads()} threads"


def _read_precision_cache(path: Path) -> dict:
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):  # absent or damaged: measure again
        return {}
    return cached if isinstance(cached, dict) else {}


def _write_precision_cache(path: Path, key: str, entry: dict) -> None:
    """Add ``entry`` under ``key``, atomically (parallel processes may write at once; the last wins)."""
    with contextlib.suppress(OSError):  # a read-only cache only costs a measurement per process
        path.parent.mkdir(parents=True, exist_ok=True)
        cached = _read_precision_cache(path)
        cached[key] = entry
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(cached, f, indent=2)
        os.replace(tmp, path)


def _choose_auto(device: torch.device, peak) -> torch.dtype:
    """bf16 where its matmuls are clearly faster than fp32's (matrix units: AMX, tensor cores)."""
    if device.type == "cuda":
        return torch.bfloat16
    # A small probe first: without bf16 matrix units (AVX2-only CPUs) a 1024^2 bf16 matmul takes
    # seconds, and bf16 is then several times slower than fp32 even at 256^2.
    if measure_peak_flops(device, torch.bfloat16, size=256, repeats=1) < peak(torch.float32):
        return torch.float32
    return torch.bfloat16 if peak(torch.bfloat16) > 1.5 * peak(torch.float32) else torch.float32


@functools.cache
def choose_precision(requested: str, device: torch.device) -> tuple[torch.dtype, float]:
    """(compute dtype, its measured matmul peak). ``auto``: bf16 where it is clearly faster than fp32.

    Measured once per machine: the peaks and the ``auto`` choice are kept in ``precision.json`` in
    the cache directory under the CPU/GPU model, torch version and thread count, so every process on
    a machine decides alike (a fresh measurement on a busy machine could tip the other way) and
    starts without a second of matmuls. Delete the file to measure again."""
    path = cache_dir() / PRECISION_CACHE
    key = _machine_key(device)
    entry = dict(_read_precision_cache(path).get(key, {}))
    known = dict(entry)

    def peak(dtype: torch.dtype) -> float:
        name = str(dtype).removeprefix("torch.")
        if name not in entry:
            entry[name] = measure_peak_flops(device, dtype, size=1024 if dtype == torch.bfloat16 else 2048)
        return entry[name]

    if requested == "fp32":
        dtype = torch.float32
    elif requested == "bf16":
        dtype = torch.bfloat16
    elif "auto" in entry:
        dtype = getattr(torch, entry["auto"])
    else:
        dtype = _choose_auto(device, peak)
        entry["auto"] = str(dtype).removeprefix("torch.")
        log(f"precision auto: {entry['auto']} on {key} (measured; kept in {path})")
    result = dtype, peak(dtype)
    if entry != known:
        _write_precision_cache(path, key, entry)
    return result


def raise_measured_peak(device: torch.device, peak: float, achieved: float) -> float:
    """``achieved`` model FLOP/s in a training step proves the cached matmul peak ``peak`` was measured
    low (on a busy machine, or at a shape slower than the model's): keep ``achieved`` as the peak, in
    this machine's cache entry too, so that MFU stays a fraction. Returns the new peak."""
    path = cache_dir() / PRECISION_CACHE
    key = _machine_key(device)
    entry = dict(_read_precision_cache(path).get(key, {}))
    raised = [name for name, value in entry.items() if value == peak]
    for name in raised:
        entry[name] = achieved
    if raised:
        _write_precision_cache(path, key, entry)
    if key not in _PEAK_RAISE_LOGGED:
        _PEAK_RAISE_LOGGED.add(key)
        log(
            f"the measured matmul peak ({peak / 1e9:.1f} GFLOP/s{', kept in ' + str(path) if raised else ''}) "
            f"was low: a step did {achieved / 1e9:.1f}; it is the peak now (MFU stays <= 100%)"
        )
    return achieved


_PEAK_RAISE_LOGGED: set[str] = set()  # one line per process and machine key


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
