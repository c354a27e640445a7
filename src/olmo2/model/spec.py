"""A model as a command names it: a preset, a checkpoint directory or a model YAML (``olmo2 model info
|init SIZE``, ``olmo2 flops --size SIZE``), and what ``olmo2 model`` does with it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from olmo2.config import load_config
from olmo2.model.checkpoint import parse_dtype, read_config, save_model
from olmo2.model.config import PRESETS, ModelConfig, preset
from olmo2.model.transformer import build_model, count_params

__all__ = ["init_model", "model_config", "model_info"]


def model_config(spec: str) -> ModelConfig:
    """The config of a preset name, a checkpoint directory or a YAML model config."""
    path = Path(spec)
    if spec.lower() in PRESETS:
        return preset(spec)
    if path.is_dir():
        return read_config(path)
    if path.suffix in (".yaml", ".yml"):
        return load_config(ModelConfig, path)
    return preset(spec)  # raises, listing the known sizes


def model_info(size: str, *, as_json: bool = False) -> str:
    """Parameter counts (computed on the meta device), head size and every config field, as aligned
    lines or JSON."""
    cfg = model_config(size)
    info = {**count_params(cfg), "head_dim": cfg.head_dim, **dataclasses.asdict(cfg)}
    if as_json:
        return json.dumps(info, indent=2)
    width = max(map(len, info))
    return "\n".join(
        f"{key:<{width}}  {value:,}" if key.endswith("_params") else f"{key:<{width}}  {value}"
        for key, value in info.items()
    )


def init_model(size: str, out: str | Path, *, seed: int = 0, dtype: str | None = None) -> str:
    """Write a model checkpoint with random weights drawn from ``seed`` (as pretraining initialises them)
    to ``out``.

    Returns a line saying what was written where."""
    model = build_model(model_config(size), seed=seed)
    path = save_model(model, out, dtype=parse_dtype(dtype))
    return f"wrote a randomly initialised {size} model (seed {seed}) to {path}"
