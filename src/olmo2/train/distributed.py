"""Distribution on PyTorch's own engine: torchrun environment, FSDP2 / HSDP / DDP, AC and compile.

The model stays unaware of all this; the trainer calls ``parallelize`` once and then only uses
collectives through the helpers here, which are no-ops in a single process.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import FSDPModule

from olmo2.model.device import resolve_device


@dataclass
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_process_group: bool = False  # created by init_distributed, so train() tears it down

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def set_malloc_mmap_threshold(mib: int) -> bool:
    """Fix glibc's mmap threshold at ``mib`` MiB for this process; False where there is no glibc
    ``mallopt`` (macOS, musl builds that ignore it) or it refuses the value."""
    import ctypes

    M_MMAP_THRESHOLD = -3  # from glibc's malloc.h
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, mib * 1024 * 1024))


def launch_rank() -> int:
    """This process's rank as ``torchrun`` set it (0 without torchrun), before and after the process
    group exists: what decides which process writes a command's files."""
    return int(os.environ.get("RANK", "0"))


def init_distributed(device: str = "auto") -> DistEnv:
    """Join the process group that ``torchrun`` describes (NCCL on CUDA, Gloo on CPU), if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = launch_rank()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    created = world_size > 1 and not dist.is_initialized()
    if created:
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistEnv(rank, world_size, local_rank, dev, owns_process_group=created)


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def background_group() -> dist.ProcessGroup | None:
    """A separate Gloo group for collectives run by a background thread (asynchronous checkpoints),
    so they never interleave with the training loop's; None in a single process. Call on all ranks."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        return dist.new_group(backend="gloo")
    return None


def broadcast_object(obj, src: int = 0):
    if dist.is_initialized() and dist.get_world_size() > 1:
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]
    return obj


def all_gather_object(obj) -> list:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in a single process."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def resolve_parallel(parallel: str, world_size: int) -> str:
    if parallel == "auto":
        return "fsdp" if world_size > 1 else "none"
    if parallel != "none" and world_size == 1:
        return "none"  # a single process has nothing to shard or replicate
    return parallel


def parallelize(
    model: nn.Module,
    env: DistEnv,
    parallel: str,
    *,
    param_dtype: torch.dtype | None = None,
    hsdp_replicas: int | None = None,
    blocks: list[nn.Module] | None = None,
) -> nn.Module:
    """Shard (FSDP2 ``fully_shard`` per block, then the root) or replicate (DDP) the model;
    ``blocks`` default to ``model.model.layers``."""
    parallel = resolve_parallel(parallel, env.world_size)
    if parallel == "none":
        return model
    if parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [env.device.index] if env.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if parallel == "hsdp":
        # Default: one replica group per node (shard within a node, replicate across nodes); torchrun
        # says how many ranks run on this node.
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", env.world_size))
        replicas = hsdp_replicas or max(1, env.world_size // per_node)
        if env.world_size % replicas:
            raise ValueError(f"hsdp_replicas ({replicas}) does not divide the world size ({env.world_size})")
        mesh = init_device_mesh(
            env.device.type, (replicas, env.world_size // replicas), mesh_dim_names=("replicate", "shard")
        )
    else:
        mesh = init_device_mesh(env.device.type, (env.world_size,))
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for layer in model.model.layers if blocks is None else blocks:
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The ``Olmo2`` inside a DDP wrapper (FSDP2 shards in place and needs no unwrapping)."""
    return getattr(model, "module", model)


def all_gather_cat(value: torch.Tensor) -> torch.Tensor:
    """Every rank's ``value`` (same shape on all), concatenated along dim 0 in rank order."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        out = [torch.empty_like(value) for _ in range(dist.get_world_size())]
        dist.all_gather(out, value)
        return torch.cat(out)
    return value


@contextlib.contextmanager
def full_parameters(model: nn.Module) -> Iterator[nn.Module]:
    """The bare model with every parameter whole on this rank, so that the rank can run forward passes
    of its own (sampling rollouts: each rank stops when its rows are done, with no collective inside).

    FSDP2: one all-gather of every block and the root, kept until the context ends, then resharded;
    DDP: the wrapped module; otherwise the model itself. Call on all ranks together.
    """
    sharded = [m for m in model.modules() if isinstance(m, FSDPModule)]
    if not sharded:
        yield unwrap(model)
        return
    with torch.no_grad():  # FSDP sets up its root state on the first forward: make sure it has run
        model(torch.zeros(1, 1, dtype=torch.long, device=next(model.parameters()).device))
    blocks = [m for m in sharded if m is not model]
    for m in sharded:
        m.unshard()
    for m in blocks:
        m.set_reshard_after_forward(False, recurse=False)
    try:
        yield model
    finally:
        for m in blocks:
            m.set_reshard_after_forward(True, recurse=False)
        for m in sharded:
            m.reshard()
