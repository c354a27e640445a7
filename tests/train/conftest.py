"""A tiny but real training setup: random token files, a mix, and a small model config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

VOCAB = 384


def write_token_files(root: Path, n_files: int = 3, tokens: int = 6000, seed: int = 0) -> list[Path]:
    """Raw uint32 token files with some structure (repeated phrases) so the loss can fall."""
    rng = np.random.default_rng(seed)
    phrases = [rng.integers(0, VOCAB - 2, size=rng.integers(3, 9)) for _ in range(40)]
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n_files):
        parts, n = [], 0
        while n < tokens:
            p = phrases[rng.integers(0, len(phrases))]
            parts.append(p)
            n += len(p)
        arr = np.concatenate(parts)[:tokens].astype("<u4")
        arr[rng.integers(0, tokens, size=tokens // 50)] = VOCAB - 2  # EOS-like separators
        path = root / f"part-{i:05d}.npy"
        arr.tofile(path)
        paths.append(path)
    return paths


def train_config(tmp_path: Path, **sections) -> dict:
    write_token_files(tmp_path / "data" / "train")
    write_token_files(tmp_path / "data" / "val", n_files=1, tokens=1200, seed=9)
    mix = {"name": "test", "sources": [{"name": "all", "paths": [str(tmp_path / "data/train/*.npy")]}]}
    (tmp_path / "mix.yaml").write_text(yaml.safe_dump(mix))
    cfg = {
        "model": {
            "d_model": 64,
            "n_layers": 2,
            "n_heads": 4,
            "n_kv_heads": 2,
            "mlp_hidden": 128,
            "vocab_size": VOCAB,
            "eos_token_id": VOCAB - 2,
            "pad_token_id": VOCAB - 1,
            "max_seq_len": 64,
        },
        "data": {
            "mix": str(tmp_path / "mix.yaml"),
            "seq_len": 32,
            "global_batch_size": 8,
            "micro_batch_size": 2,
            "seed": 7,
            "validation": [str(tmp_path / "data/val/*.npy")],
            "validation_max_instances": 16,
        },
        "optim": {"lr": 3e-3},
        "schedule": {"name": "cosine", "warmup_steps": 2},
        "trainer": {
            "save_folder": str(tmp_path / "run"),
            "max_steps": 8,
            "precision": "fp32",
            "device": "cpu",
        },
        "checkpoint": {"save_every": 4, "keep_last": 2},
    }
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


@pytest.fixture
def make_train_config(tmp_path):
    """``make_train_config(**section_overrides) -> path`` of a YAML training config in tmp_path."""

    def make(**sections) -> Path:
        path = tmp_path / "train.yaml"
        path.write_text(yaml.safe_dump(train_config(tmp_path, **sections)))
        return path

    return make
