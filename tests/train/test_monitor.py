"""The FLOPs behind the logged MFU: one rule for full pretraining rows and for SFT's ragged ones."""

import pytest

from olmo2.model.config import ModelConfig
from olmo2.train.monitor import flops_per_token, model_flops

CFG = ModelConfig(
    d_model=64, n_layers=2, n_heads=4, mlp_hidden=128, vocab_size=300, eos_token_id=0, pad_token_id=1
)


def test_model_flops_counts_each_term_once():
    d, L, f, V = 64, 2, 128, CFG.embedding_size
    body = L * (2 * d * d + 2 * d * d + 3 * d * f)  # q/o, k/v (no GQA), SwiGLU's three projections
    assert model_flops(CFG, [16]) == 6 * body * 16 + 6 * d * V * 16 + 12 * L * d * 16 * 16
    assert flops_per_token(CFG, 16) == pytest.approx(model_flops(CFG, [16]) / 16)


def test_ragged_rows_and_targets_only_cost_less_than_padded_full_rows():
    """SFT: examples of 5 and 11 tokens padded to 16, 7 targets. Counting them as two full rows with
    every position in the LM head (the old rule) overstated the MFU of the demo's SFT past 100%."""
    ragged = model_flops(CFG, [5, 11], lm_head_tokens=7)
    d, L, V = 64, 2, CFG.embedding_size
    assert model_flops(CFG, [5, 11]) - ragged == 6 * d * V * (16 - 7)
    assert model_flops(CFG, [16]) - model_flops(CFG, [5, 11]) == 12 * L * d * (16 * 16 - 5 * 5 - 11 * 11)
