"""Shared test helpers: seeded random Hugging Face OLMo 2 models of odd shapes."""

from __future__ import annotations

import os

# Tests use tiny models: one thread each avoids OpenMP spin-waiting, which makes small ops 100x
# slower when the machine's two cores are busy. Subprocesses (torchrun, CLI runs) inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# (name, HF Olmo2Config kwargs): MHA, GQA, and odd sizes (head_dim 16, vocab not a multiple of 128).
HF_SHAPES = {
    "mha": dict(
        vocab_size=512, hidden_size=64, num_attention_heads=4, num_hidden_layers=2, intermediate_size=128
    ),
    "gqa": dict(
        vocab_size=1000,
        hidden_size=96,
        num_attention_heads=6,
        num_key_value_heads=2,
        num_hidden_layers=3,
        intermediate_size=200,
    ),
    "odd": dict(
        vocab_size=777,
        hidden_size=48,
        num_attention_heads=3,
        num_key_value_heads=1,
        num_hidden_layers=5,
        intermediate_size=99,
    ),
}


def random_hf_model(shape: str = "gqa", seed: int = 0):
    """A seeded random ``Olmo2ForCausalLM`` with non-trivial norm weights, in eval mode (fp32)."""
    from transformers import Olmo2Config, Olmo2ForCausalLM

    torch.manual_seed(seed)
    kwargs = dict(HF_SHAPES[shape])
    vocab = kwargs["vocab_size"]
    config = Olmo2Config(
        **kwargs,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_theta": 500000.0, "rope_type": "default"},
        max_position_embeddings=512,
        eos_token_id=vocab - 2,
        pad_token_id=vocab - 1,
        initializer_range=0.05,
    )
    model = Olmo2ForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
    return model


@pytest.fixture(params=list(HF_SHAPES))
def hf_shape(request) -> str:
    return request.param


@pytest.fixture
def make_hf_model():
    """Factory fixture: ``make_hf_model(shape, seed)`` → a random ``Olmo2ForCausalLM``."""
    pytest.importorskip("transformers")
    return random_hf_model


# --- a tiny but real training setup: random token files, a mix, a small model ----------------

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
        "run": {"folder": str(tmp_path / "run"), "max_steps": 8},
        "runtime": {"precision": "fp32", "device": "cpu"},
        "checkpoint": {"save_every": 4, "keep_last": 2},
    }
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


@pytest.fixture
def write_tokens():
    """``write_token_files`` for test modules: a module cannot import it from this conftest reliably
    (``tests/eval/conftest.py`` shadows the name ``conftest`` once collected)."""
    return write_token_files


@pytest.fixture
def train_config_dict(tmp_path):
    """``train_config_dict(**section_overrides) -> dict``: a training config over token files in tmp_path."""
    return lambda **sections: train_config(tmp_path, **sections)


@pytest.fixture
def make_train_config(tmp_path):
    """``make_train_config(**section_overrides) -> path`` of a YAML training config in tmp_path."""

    def make(**sections) -> Path:
        path = tmp_path / "train.yaml"
        path.write_text(yaml.safe_dump(train_config(tmp_path, **sections)))
        return path

    return make


def torchrun_launcher(nproc: int) -> list[str]:
    """``python -m torch.distributed.run`` for ``nproc`` local processes on a free 127.0.0.1 port."""
    import socket
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        f"--master_port={port}",
    ]


@pytest.fixture(scope="session")
def torchrun():
    """``torchrun(nproc) -> argv prefix``: launch the rest of a command under torchrun (Gloo on CPU)."""
    return torchrun_launcher
