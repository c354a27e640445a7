"""Small seeded random models for the evaluation tests (a module of its own: ``from conftest import``
picks whichever conftest was imported first when the whole suite is collected)."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

REAL_VOCAB = 100_352  # dolma2 padded embedding size


def olmo2_hf(vocab: int = 300, hidden: int = 32, layers: int = 2, seed: int = 0, eos: int | None = None):
    """A seeded random ``Olmo2ForCausalLM`` (eval mode, fp32) with non-trivial norm weights."""
    torch.manual_seed(seed)
    cfg = transformers.Olmo2Config(
        vocab_size=vocab,
        hidden_size=hidden,
        num_attention_heads=4,
        num_hidden_layers=layers,
        intermediate_size=2 * hidden,
        max_position_embeddings=4096,
        eos_token_id=eos if eos is not None else vocab - 2,
        pad_token_id=vocab - 1,
        initializer_range=0.2,
    )
    model = transformers.Olmo2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
    return model


def llama_hf(vocab: int = 300, seed: int = 0):
    """A seeded random Llama (a causal LM that is not OLMo 2: GQA, tied norms, no QK-norm)."""
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_hidden_layers=2,
        intermediate_size=64,
        max_position_embeddings=512,
        eos_token_id=vocab - 2,
        initializer_range=0.2,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


def naive_loglikelihood(hf, ctx: list[int], cont: list[int]) -> float:
    """Σ log p(cont | ctx), one unbatched transformers forward on ctx + cont[:-1]."""
    ids = torch.tensor([list(ctx) + list(cont[:-1])])
    with torch.no_grad():
        logits = hf(ids, logits_to_keep=len(cont)).logits[0].double()
    lp = logits.log_softmax(-1)
    return float(sum(lp[i, t] for i, t in enumerate(cont)))


def strip_timing(x):
    """Results without their ``seconds`` entries, for comparing two runs."""
    if isinstance(x, dict):
        return {k: strip_timing(v) for k, v in x.items() if k != "seconds"}
    return x
