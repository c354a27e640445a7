"""``olmo2 soup``: average the weights of anneal ingredients into one model (spec §5, "souping").

OLMo 2 7B/13B/32B are uniform means of the final checkpoints of several stage-2 runs that differ
only in data order; nothing is trained after averaging. ``--weights`` gives a weighted mean
(normalised; positive). Inputs must share one architecture and have the same tensor names, shapes
and dtypes; anything else is refused with the checkpoint and the difference named.

Streaming: every input's safetensors files are opened lazily (``safe_open``, memory-mapped) and
each tensor is read from each input in turn, accumulated, cast back to its stored dtype and put in
the current output shard; a shard is written as soon as it is full. Peak memory is one output shard
(at most ``max_shard_bytes``, 5 GiB by default) plus, for the tensor being averaged, its accumulator
and one input's copy of it (plus a 64 MB temporary): for the 7B in bf16 that is 5 GiB + 2.5 GB for
the embedding matrix, against 14.6 GB for one whole model. Lower ``max_shard_bytes`` to lower the
peak. (The memory-mapped input files add only reclaimable page cache.)

Accumulation is fp32 for 16-bit tensors and fp64 for fp32 ones: sums of up to 2^16 (resp. 2^29)
inputs are then exact, so the uniform mean is correctly rounded and averaging copies of one
checkpoint returns it bit for bit. The output is a normal checkpoint: ``config.json`` (and
``generation_config.json``, tokenizer files) from the first input, plus ``soup.json`` recording the
inputs, their weights and the sha256 of their ``config.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from olmo2 import __version__
from olmo2.model.checkpoint import (
    DEFAULT_SHARD_BYTES,
    IGNORED_KEYS_SUFFIXES,
    INDEX_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    atomic_directory,
    check_state_dict,
    read_config,
    resolve_model_dir,
    weight_files,
    write_generation_config,
)
from olmo2.model.config import ModelConfig
from olmo2.model.convert import TOKENIZER_FILES
from olmo2.model.transformer import build_model

# ModelConfig fields that change what the weights mean; the others (token ids, max_seq_len,
# init_std) are taken from the first input.
ARCH_FIELDS = (
    "d_model",
    "n_layers",
    "n_heads",
    "n_kv_heads",
    "mlp_hidden",
    "vocab_size",
    "embedding_size",
    "rope_theta",
    "norm_eps",
)
# safetensors dtype names → torch dtypes that can be averaged, and the accumulator for each.
FLOAT_DTYPES = {"F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
ACCUMULATE = {torch.float64: torch.float64, torch.float32: torch.float64}  # default: fp32
CHUNK = 1 << 24  # elements added at a time (a 64 MB fp32 temporary at most)


@dataclass
class _Input:
    path: str  # as given
    model_dir: Path
    cfg: ModelConfig
    config_sha256: str
    tensors: dict[str, tuple[int, tuple[int, ...], str]] = field(
        default_factory=dict
    )  # file idx, shape, dtype
    handles: list = field(default_factory=list)


def parse_weights(text: str | Sequence[float] | None, n: int) -> list[float] | None:
    """``"1,2,1"`` (or a list) → floats; refuses a wrong count and non-positive or non-finite weights."""
    if text is None:
        return None
    try:
        weights = [float(w) for w in (text.split(",") if isinstance(text, str) else text)]
    except ValueError:
        raise ValueError(f"--weights: expected comma-separated numbers, got {text!r}") from None
    if len(weights) != n:
        raise ValueError(f"--weights: got {len(weights)} weight(s) for {n} checkpoint(s)")
    bad = [w for w in weights if not (math.isfinite(w) and w > 0)]
    if bad:
        raise ValueError(f"--weights: every weight must be a positive number, got {bad[0]}")
    return weights


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _open_input(path: str | Path, stack: contextlib.ExitStack) -> _Input:
    model_dir = resolve_model_dir(path)
    inp = _Input(str(path), model_dir, read_config(model_dir), _sha256(model_dir / "config.json"))
    for i, file in enumerate(weight_files(model_dir)):
        if file.suffix != ".safetensors":
            raise CheckpointError(
                f"{path}: {file.name} is not safetensors; import it first with `olmo2 convert from-hf`"
            )
        if not file.is_file():
            raise CheckpointError(f"{path}: {file.name} is listed in the index but missing")
        handle = stack.enter_context(safe_open(str(file), framework="pt"))
        inp.handles.append(handle)
        for name in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
            if not name.endswith(IGNORED_KEYS_SUFFIXES):
                info = handle.get_slice(name)
                inp.tensors[name] = (i, tuple(info.get_shape()), info.get_dtype())
    meta = {name: torch.empty(shape, device="meta") for name, (_, shape, _) in inp.tensors.items()}
    check_state_dict(meta, inp.cfg, str(path))  # names and shapes against its own config.json
    return inp


def _check_compatible(first: _Input, other: _Input) -> None:
    diffs = [
        f"{f} {getattr(other.cfg, f)} vs {getattr(first.cfg, f)}"
        for f in ARCH_FIELDS
        if getattr(other.cfg, f) != getattr(first.cfg, f)
    ]
    if diffs:
        raise CheckpointError(
            f"{other.path}: architecture differs from {first.path} ({'; '.join(diffs)}); "
            "only checkpoints of one architecture can be souped"
        )
    dtypes = [
        f"{name} {other.tensors[name][2]} vs {first.tensors[name][2]}"
        for name in first.tensors
        if other.tensors[name][2] != first.tensors[name][2]
    ]
    if dtypes:
        raise CheckpointError(
            f"{other.path}: {len(dtypes)} tensor dtype(s) differ from {first.path}: {'; '.join(dtypes[:3])}"
            f"{' ...' * (len(dtypes) > 3)}; cast first with `olmo2 convert to-hf --dtype`"
        )


def _plan_shards(first: _Input, names: list[str], max_bytes: int) -> list[list[str]]:
    shards: list[list[str]] = [[]]
    size = 0
    for name in names:
        _, shape, dtype = first.tensors[name]
        nbytes = math.prod(shape) * FLOAT_DTYPES[dtype].itemsize
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def _average(name: str, inputs: list[_Input], weights: list[float]) -> torch.Tensor:
    """Σ w_i·x_i / Σ w_i in the accumulator dtype, cast back to the stored dtype."""
    acc = None
    for inp, w in zip(inputs, weights, strict=True):
        file_idx = inp.tensors[name][0]
        x = inp.handles[file_idx].get_tensor(name)
        if acc is None:
            dtype = x.dtype
            acc = x.to(ACCUMULATE.get(dtype, torch.float32), copy=True)
            if w != 1.0:
                acc.mul_(w)
        else:  # in chunks: a mixed-dtype add_ would make a full-size fp32 copy of x first
            flat_acc, flat_x = acc.view(-1), x.view(-1)
            for start in range(0, flat_x.numel(), CHUNK):
                flat_acc[start : start + CHUNK].add_(flat_x[start : start + CHUNK], alpha=w)
        del x
    total = sum(weights)
    if total != 1.0:
        acc.div_(total)
    return acc.to(dtype)


def soup_checkpoints(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    weights: Sequence[float] | None = None,
    *,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> Path:
    """Average ``inputs`` (model dirs or training checkpoints ``step<N>/``) into the new ``out_dir``."""
    if not inputs:
        raise ValueError("soup: give at least one checkpoint")
    raw = [1.0] * len(inputs) if weights is None else parse_weights(list(weights), len(inputs))
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise CheckpointError(f"{out_dir}: already exists and is not empty; choose a new output directory")
    with contextlib.ExitStack() as stack:
        opened = [_open_input(path, stack) for path in inputs]
        first = opened[0]
        for other in opened[1:]:
            _check_compatible(first, other)
        not_float = sorted({d for _, _, d in first.tensors.values()} - set(FLOAT_DTYPES))
        if not_float:
            raise CheckpointError(f"{first.path}: cannot average tensors of dtype {', '.join(not_float)}")
        order = [k for k in build_model(first.cfg, "meta").state_dict() if k in first.tensors]
        shards = _plan_shards(first, order, max_shard_bytes)

        with atomic_directory(out_dir) as tmp:
            weight_map, total_size = {}, 0
            for i, names in enumerate(shards, 1):
                shard = {}
                for name in names:
                    shard[name] = _average(name, opened, raw) if len(opened) > 1 else _copy(name, first)
                    total_size += shard[name].numel() * shard[name].element_size()
                file = WEIGHTS_NAME if len(shards) == 1 else f"model-{i:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, str(tmp / file), metadata={"format": "pt"})
                weight_map.update(dict.fromkeys(names, file))
                del shard
            if len(shards) > 1:
                index = {"metadata": {"total_size": total_size}, "weight_map": weight_map}
                (tmp / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
            _copy_side_files(first, tmp)
            (tmp / "soup.json").write_text(json.dumps(_provenance(opened, raw, first), indent=2) + "\n")
    return out_dir


def write_soup(
    checkpoints: Sequence[str | Path],
    out: str | Path,
    *,
    weights: str | None = None,
    max_shard_gb: float = 5.0,
) -> str:
    """Uniform (or ``weights``, comma-separated) mean of model checkpoints with identical architecture,
    streamed tensor by tensor (fp32 accumulation, fp64 for fp32 weights) and cast back to the stored
    dtype. Writes a normal checkpoint plus soup.json (inputs, weights, sha256 of each config.json).

    Output shards hold at most ``max_shard_gb`` GiB; returns a line saying what was written."""
    parsed = parse_weights(weights, len(checkpoints))
    path = soup_checkpoints(checkpoints, out, parsed, max_shard_bytes=int(max_shard_gb * 1024**3))
    kind = "uniform" if parsed is None else f"weighted ({weights})"
    return f"wrote {path}: {kind} average of {len(checkpoints)} checkpoint(s); provenance in {path}/soup.json"


def _copy(name: str, inp: _Input) -> torch.Tensor:
    return inp.handles[inp.tensors[name][0]].get_tensor(name)


def _copy_side_files(first: _Input, tmp: Path) -> None:
    shutil.copyfile(first.model_dir / "config.json", tmp / "config.json")
    if (first.model_dir / "generation_config.json").is_file():
        shutil.copyfile(first.model_dir / "generation_config.json", tmp / "generation_config.json")
    else:
        write_generation_config(first.cfg, tmp)
    for name in TOKENIZER_FILES:
        if (first.model_dir / name).is_file():
            shutil.copyfile(first.model_dir / name, tmp / name)


def _provenance(opened: list[_Input], raw: list[float], first: _Input) -> dict:
    total = sum(raw)
    stored = sorted({d for _, _, d in first.tensors.values()})
    return {
        "method": "uniform mean" if len(set(raw)) == 1 else "weighted mean",
        "inputs": [
            {
                "path": inp.path,
                "model_dir": str(inp.model_dir.resolve()),
                "weight": w / total,
                "config_sha256": inp.config_sha256,
            }
            for inp, w in zip(opened, raw, strict=True)
        ],
        "weights": [w / total for w in raw],
        "accumulated_in": {
            d: str(ACCUMULATE.get(FLOAT_DTYPES[d], torch.float32)).removeprefix("torch.") for d in stored
        },
        "tensors": len(first.tensors),
        "parameters": sum(math.prod(shape) for _, shape, _ in first.tensors.values()),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "olmo2_version": __version__,
    }
