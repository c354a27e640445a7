"""Model checkpoints: the project's format *is* a Hugging Face ``Olmo2ForCausalLM`` directory.

A model checkpoint is ``config.json`` + ``model.safetensors`` (or shards with
``model.safetensors.index.json``) + ``generation_config.json``, optionally with tokenizer files.
``transformers.AutoModelForCausalLM.from_pretrained`` loads it without conversion, and our parameter
names are HF's, so conversion in either direction is validate → (cast) → write, bit-exact for the
tensors. Training checkpoints keep such a directory under ``model/``; ``load_model`` accepts either.

Loading never executes code: safetensors, or ``torch.load(weights_only=True)`` for legacy ``.bin``.
Writes go to a temporary directory that is renamed into place, so a checkpoint is never half there.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from olmo2.model.config import ModelConfig
from olmo2.model.hub import HubError, hub_snapshot, is_hub_id
from olmo2.model.transformer import Olmo2, build_model

HF_ARCHITECTURE = "Olmo2ForCausalLM"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
DEFAULT_SHARD_BYTES = 5 * 1024**3
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Buffers some older exports carry; they are recomputed, never loaded.
IGNORED_KEYS_SUFFIXES = ("rotary_emb.inv_freq",)


class CheckpointError(ValueError):
    """A checkpoint directory is missing, of another architecture, or has missing/mismatched tensors."""


def parse_dtype(name: str | None) -> torch.dtype | None:
    """A dtype name (``float32``, ``bfloat16``, ``float16``) as a torch dtype; None keeps what is stored."""
    if name is None:
        return None
    if name not in DTYPES:
        raise CheckpointError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def config_to_hf(cfg: ModelConfig, dtype: torch.dtype = torch.float32) -> dict:
    """``ModelConfig`` as an HF ``Olmo2Config`` dict (``rope_theta`` written both ways for transformers 4 and 5).

    HF's ``vocab_size`` is the (padded) embedding size; the tokenizer's size rides along as
    ``tokenizer_vocab_size`` only when it differs, so HF-born configs round-trip unchanged. The dtype is
    written under both names, ``dtype`` and the older ``torch_dtype``, for readers of either age.
    """
    extra = {"tokenizer_vocab_size": cfg.vocab_size} if cfg.vocab_size != cfg.embedding_size else {}
    return extra | {
        "architectures": [HF_ARCHITECTURE],
        "model_type": "olmo2",
        "vocab_size": cfg.embedding_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.mlp_hidden,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_theta": cfg.rope_theta, "rope_type": "default"},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": False,
        "initializer_range": cfg.init_std,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id,
        "use_cache": True,
        "dtype": str(dtype).removeprefix("torch."),
        "torch_dtype": str(dtype).removeprefix("torch."),  # the name transformers < 4.56 reads
    }


def hf_model(cfg: ModelConfig, state_dict: dict[str, torch.Tensor] | None = None, **config_overrides):
    """transformers' ``Olmo2ForCausalLM`` of this shape (with these weights, if given): the peer in
    side-by-side checks and benchmarks. ``config_overrides`` go to ``Olmo2Config``."""
    from transformers import Olmo2Config, Olmo2ForCausalLM

    model = Olmo2ForCausalLM(Olmo2Config(**(config_to_hf(cfg) | config_overrides)))
    if state_dict is not None:
        model.load_state_dict(state_dict)
    return model


def config_from_hf(hf: dict, source: str = "config.json") -> ModelConfig:
    """Read an HF ``Olmo2Config`` dict, refusing other architectures and features OLMo 2 does not have."""
    model_type = hf.get("model_type")
    archs = hf.get("architectures") or []
    if model_type != "olmo2" or (archs and HF_ARCHITECTURE not in archs):
        found = model_type or "no model_type"
        raise CheckpointError(
            f"{source}: not an OLMo 2 model (model_type={found!r}, architectures={archs}); "
            f"expected model_type 'olmo2' / {HF_ARCHITECTURE}"
        )
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    problems = []
    if rope_type != "default":
        problems.append(f"rope type {rope_type!r} (only plain RoPE is supported)")
    if hf.get("attention_bias", False):
        problems.append("attention_bias=true (OLMo 2 has no biases)")
    if hf.get("tie_word_embeddings", False):
        problems.append("tie_word_embeddings=true (OLMo 2 embeddings are untied)")
    if hf.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={hf['hidden_act']!r} (OLMo 2 uses SwiGLU/silu)")
    if problems:
        raise CheckpointError(f"{source}: unsupported settings: {'; '.join(problems)}")
    try:
        hidden = hf["hidden_size"]
        heads = hf["num_attention_heads"]
        if "head_dim" in hf and hf["head_dim"] not in (None, hidden // heads):
            raise CheckpointError(f"{source}: head_dim {hf['head_dim']} != hidden_size/num_attention_heads")
        eos = hf.get("eos_token_id")
        return ModelConfig(
            d_model=hidden,
            n_layers=hf["num_hidden_layers"],
            n_heads=heads,
            n_kv_heads=hf.get("num_key_value_heads") or heads,
            mlp_hidden=hf["intermediate_size"],
            vocab_size=hf.get("tokenizer_vocab_size", hf["vocab_size"]),
            embedding_size=hf["vocab_size"],
            max_seq_len=hf.get("max_position_embeddings", 4096),
            rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10_000.0))),
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            init_std=float(hf.get("initializer_range", 0.02)),
            eos_token_id=eos[0] if isinstance(eos, list) else eos,
            pad_token_id=hf.get("pad_token_id"),
            bos_token_id=hf.get("bos_token_id"),
        )
    except KeyError as e:
        raise CheckpointError(f"{source}: missing key {e.args[0]!r}") from None
    except ValueError as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{source}: inconsistent dimensions: {e}") from None


def resolve_model_dir(name_or_path: str | Path, revision: str | None = None) -> Path:
    """The directory holding ``config.json`` of a model named by a local path (the path itself, or its
    ``model/``: training checkpoints) or, when no such path exists, by a Hugging Face Hub id
    ``org/name`` at ``revision`` (``olmo2.model.hub``: cache first). Every model load goes through here.
    """
    path = Path(name_or_path)
    if path.exists():
        if revision is not None:
            raise CheckpointError(f"{path} is a local path; a revision ({revision}) pins Hub ids only")
    elif is_hub_id(str(name_or_path)):
        try:
            path = hub_snapshot(str(name_or_path), revision)
        except HubError as e:
            raise CheckpointError(str(e)) from None
    else:
        raise CheckpointError(f"checkpoint not found: {path}")
    for candidate in (path, path / "model"):
        if (candidate / "config.json").is_file():
            return candidate
    raise CheckpointError(f"{path}: no config.json here or in {path / 'model'}; not a model checkpoint")


def read_config(path: str | Path) -> ModelConfig:
    model_dir = resolve_model_dir(path)
    source = model_dir / "config.json"
    try:
        hf = json.loads(source.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{source}: not valid JSON: {e}") from None
    return config_from_hf(hf, str(source))


def weight_files(model_dir: Path) -> list[Path]:
    if (model_dir / WEIGHTS_NAME).is_file():
        return [model_dir / WEIGHTS_NAME]
    for index_name in (INDEX_NAME, "pytorch_model.bin.index.json"):
        if (model_dir / index_name).is_file():
            try:
                index = json.loads((model_dir / index_name).read_text())
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise CheckpointError(f"{model_dir / index_name}: not valid JSON ({e})") from None
            return [model_dir / f for f in sorted(set(index["weight_map"].values()))]
    if (model_dir / "pytorch_model.bin").is_file():
        return [model_dir / "pytorch_model.bin"]
    raise CheckpointError(f"{model_dir}: no weights ({WEIGHTS_NAME}, {INDEX_NAME} or pytorch_model.bin)")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint, as stored (safetensors, or ``.bin`` with ``weights_only=True``)."""
    state: dict[str, torch.Tensor] = {}
    for file in weight_files(resolve_model_dir(path)):
        if not file.is_file():
            raise CheckpointError(f"{file}: listed in the index but missing")
        try:
            if file.suffix == ".safetensors":
                with safe_open(str(file), framework="pt") as f:
                    for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                        state[key] = f.get_tensor(key)
            else:
                state.update(torch.load(file, map_location="cpu", weights_only=True))
        except (SafetensorError, RuntimeError, pickle.UnpicklingError, EOFError) as e:
            raise CheckpointError(f"{file}: unreadable, truncated or corrupt ({e})") from None
    return {k: v for k, v in state.items() if not k.endswith(IGNORED_KEYS_SUFFIXES)}


def check_state_dict(state: dict[str, torch.Tensor], cfg: ModelConfig, source: str) -> None:
    """Refuse missing, unexpected or mis-shaped tensors, naming them."""
    expected = {k: tuple(v.shape) for k, v in build_model(cfg, "meta").state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k}: expected {expected[k]}, found {tuple(state[k].shape)}"
        for k in sorted(set(expected) & set(state))
        if tuple(state[k].shape) != expected[k]
    ]
    problems = []
    if missing:
        problems.append(
            f"{len(missing)} missing tensor(s): {', '.join(missing[:5])}{' ...' * (len(missing) > 5)}"
        )
    if unexpected:
        problems.append(
            f"{len(unexpected)} unexpected tensor(s): {', '.join(unexpected[:5])}{' ...' * (len(unexpected) > 5)}"
        )
    if wrong:
        problems.append(f"{len(wrong)} tensor(s) of the wrong shape: {'; '.join(wrong[:5])}")
    if problems:
        raise CheckpointError(f"{source}: weights do not match config.json: " + " | ".join(problems))


def load_model(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> Olmo2:
    """Load a model checkpoint (ours or any HF OLMo 2 directory), validating config and tensors."""
    model_dir = resolve_model_dir(path)
    cfg = read_config(model_dir)
    state = read_state_dict(model_dir)
    check_state_dict(state, cfg, str(model_dir))
    model = build_model(cfg, "meta")
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    model.rotary.build(cfg.max_seq_len, torch.device("cpu"))
    return model.to(device).eval()


def _shards(state: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    return shards


def write_generation_config(cfg: ModelConfig, out_dir: Path) -> None:
    gen = {
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id,
    }
    (out_dir / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")


@contextlib.contextmanager
def atomic_directory(out_dir: Path):
    """A temporary directory beside ``out_dir``, renamed to it on success and removed on any failure,
    so ``out_dir`` is either absent (or empty) or complete."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        yield tmp
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_state_dict(
    state: dict[str, torch.Tensor],
    cfg: ModelConfig,
    out_dir: str | Path,
    *,
    extra_files: dict[str, Path] | None = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> Path:
    """Write a checkpoint atomically (temp dir, then rename). ``extra_files``: name → file to copy in."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise CheckpointError(f"{out_dir}: already exists and is not empty; choose a new output directory")
    with atomic_directory(out_dir) as tmp:
        state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
        dtype = next(iter(state.values())).dtype
        (tmp / "config.json").write_text(json.dumps(config_to_hf(cfg, dtype), indent=2) + "\n")
        write_generation_config(cfg, tmp)
        shards = _shards(state, max_shard_bytes)
        if len(shards) == 1:
            save_file(shards[0], str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        else:
            weight_map = {}
            for i, shard in enumerate(shards, 1):
                name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, str(tmp / name), metadata={"format": "pt"})
                weight_map.update(dict.fromkeys(shard, name))
            total = sum(t.numel() * t.element_size() for t in state.values())
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (tmp / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        for name, src in (extra_files or {}).items():
            shutil.copyfile(src, tmp / name)
    return out_dir


def save_model(model: Olmo2, out_dir: str | Path, *, dtype: torch.dtype | None = None, **kwargs) -> Path:
    """Save ``model`` as an HF-loadable checkpoint (optionally cast to ``dtype``)."""
    state = model.state_dict()
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    return save_state_dict(state, model.config, out_dir, **kwargs)
