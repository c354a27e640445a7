"""Shared test helpers: seeded random Hugging Face OLMo 2 models of odd shapes."""

from __future__ import annotations

import os

# Tests use tiny models: one thread each avoids OpenMP spin-waiting, which makes small ops 100x
# slower when the machine's two cores are busy. Subprocesses (torchrun, CLI runs) inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

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
