import pytest
import torch
import torch.nn.functional as F

from olmo2.config import ConfigError, from_dict
from olmo2.model.config import PRESETS, ModelConfig, preset
from olmo2.model.transformer import MLP, build_model, count_params

# Spec §1.6, computed from the published shapes.
SPEC_TOTAL = {"1b": 1_484_916_736, "7b": 7_298_617_344, "13b": 13_716_198_400, "32b": 32_234_279_936}
SPEC_NON_EMBEDDING = {"1b": 1.074e9, "7b": 6.477e9, "13b": 12.689e9, "32b": 31.207e9}


@pytest.mark.parametrize("size", list(SPEC_TOTAL))
def test_param_counts_match_spec(size):
    counts = count_params(preset(size))
    assert counts["total_params"] == SPEC_TOTAL[size]
    assert counts["non_embedding_params"] == pytest.approx(SPEC_NON_EMBEDDING[size], rel=1e-3)
    assert counts["total_params"] == counts["non_embedding_params"] + counts["embedding_params"]


def test_presets_have_spec_shapes():
    assert {s: PRESETS[s].head_dim for s in SPEC_TOTAL} == {s: 128 for s in SPEC_TOTAL}
    assert PRESETS["32b"].n_kv_heads == 8 and PRESETS["7b"].n_kv_heads == 32
    cfg = PRESETS["7b"]
    assert (cfg.vocab_size, cfg.embedding_size, cfg.rope_theta, cfg.norm_eps) == (100278, 100352, 5e5, 1e-6)


def test_meta_model_allocates_nothing():
    model = build_model(preset("32b"), "meta")
    assert all(p.device.type == "meta" for p in model.parameters())


def test_meta_model_draws_no_random_init(monkeypatch):
    """``normal_`` on meta costs seconds of lazy torch imports (every ``load_model`` builds on meta)."""
    calls = []
    monkeypatch.setattr(torch.nn.init, "normal_", lambda tensor, *args, **kwargs: calls.append(tensor.device))
    build_model(preset("tiny"), "meta")
    assert calls == []
    build_model(ModelConfig(d_model=64, n_layers=1, n_heads=4, mlp_hidden=128), seed=0)
    assert calls == [torch.device("cpu")]  # the embedding's default init: the global RNG advances as before


def test_unknown_size_lists_known_ones():
    with pytest.raises(ValueError, match="unknown model size 'huge'.*1b, 7b, 13b, 32b"):
        preset("huge")


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(d_model=100, n_heads=3), "d_model \\(100\\) is not divisible by n_heads \\(3\\)"),
        (dict(n_heads=4, n_kv_heads=3), "n_kv_heads \\(3\\) does not divide n_heads \\(4\\)"),
        (dict(n_layers=0), "n_layers must be positive"),
        (dict(d_model=60, n_heads=4), "head_dim .* must be even"),
        (dict(vocab_size=1000, embedding_size=999), "embedding_size \\(999\\) is smaller"),
        (dict(vocab_size=1000, eos_token_id=1000), "eos_token_id \\(1000\\) is outside the vocabulary"),
    ],
)
def test_inconsistent_dimensions_are_refused(changes, message):
    base = dict(d_model=64, n_layers=2, n_heads=4, mlp_hidden=128, eos_token_id=None, pad_token_id=None)
    with pytest.raises(ValueError, match=message):
        ModelConfig(**{**base, **changes})


def test_config_from_dict_names_the_key():
    with pytest.raises(ConfigError, match="d_model: expected an integer, got 'big'"):
        from_dict(ModelConfig, {"d_model": "big", "n_layers": 2, "n_heads": 4, "mlp_hidden": 8})
    with pytest.raises(ConfigError, match="unknown key n_layer \\(did you mean n_layers"):
        from_dict(ModelConfig, {"d_model": 64, "n_layer": 2, "n_heads": 4, "mlp_hidden": 8})


def test_init_is_truncated_normal_and_norms_are_one():
    cfg = ModelConfig(
        d_model=128,
        n_layers=2,
        n_heads=2,
        mlp_hidden=256,
        vocab_size=4096,
        eos_token_id=4094,
        pad_token_id=4095,
    )
    model = build_model(cfg, seed=1)
    for name, p in model.named_parameters():
        if "norm" in name:
            assert torch.all(p == 1), name
        else:
            assert p.abs().max() <= 0.06 + 1e-7, name
            # std of a N(0, 0.02) truncated at ±3σ is 0.02 * 0.9866
            assert p.std().item() == pytest.approx(0.02 * 0.9866, rel=0.05), name
    again = build_model(cfg, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters(), strict=True))


def test_causal_and_no_bias():
    cfg = ModelConfig(
        d_model=64, n_layers=2, n_heads=4, mlp_hidden=128, vocab_size=300, eos_token_id=298, pad_token_id=299
    )
    model = build_model(cfg, seed=0).eval()
    assert not any(n.endswith("bias") for n, _ in model.named_parameters())
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    x = torch.randint(0, 300, (2, 16))
    y = x.clone()
    y[:, 10:] = torch.randint(0, 300, (2, 6))
    with torch.no_grad():
        a, b = model(x), model(y)
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_rope_tables_stay_fp32_when_model_is_cast():
    cfg = ModelConfig(
        d_model=64, n_layers=1, n_heads=2, mlp_hidden=64, vocab_size=128, eos_token_id=126, pad_token_id=127
    )
    model = build_model(cfg).to(torch.bfloat16)
    x = torch.randint(0, 128, (1, 8))
    assert model(x).dtype == torch.bfloat16
    assert model.rotary.cos.dtype == torch.float32


def test_qk_norm_spans_full_projection():
    model = build_model(preset("32b"), "meta")
    attn = model.model.layers[0].self_attn
    assert attn.q_norm.weight.shape == (40 * 128,) and attn.k_norm.weight.shape == (8 * 128,)


def test_mlp_keeps_two_hidden_sized_activations_for_backward():
    """gate and up only; silu(gate) and the product are recomputed (they are the step's largest)."""
    cfg = ModelConfig(d_model=16, n_layers=1, n_heads=2, mlp_hidden=48)
    mlp = MLP(cfg)
    x = torch.randn(2, 5, 16, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
        out = mlp(x)
    assert sum(shape == (2, 5, 48) for shape in saved) == 2, saved
    reference = mlp.down_proj(F.silu(mlp.gate_proj(x)) * mlp.up_proj(x))
    torch.testing.assert_close(out, reference, rtol=0, atol=0)
    grads = torch.autograd.grad(out.square().sum(), [x, *mlp.parameters()])
    ref_grads = torch.autograd.grad(reference.square().sum(), [x, *mlp.parameters()])
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b)
