import math

import pytest

from olmo2.config import ConfigError, from_dict
from olmo2.model.config import ModelConfig
from olmo2.model.transformer import build_model
from olmo2.train.optim import OptimConfig, build_optimizer
from olmo2.train.schedule import ScheduleConfig, lr_factor


def test_cosine_warmup_then_decay_to_alpha():
    cfg = ScheduleConfig(name="cosine", warmup_steps=10, t_max=110, alpha_f=0.1)
    assert lr_factor(cfg, 1, 200) == pytest.approx(0.1)
    assert lr_factor(cfg, 10, 200) == pytest.approx(1.0)
    assert lr_factor(cfg, 60, 200) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(cfg, 110, 200) == pytest.approx(0.1)
    assert lr_factor(cfg, 150, 200) == pytest.approx(0.1)  # flat after t_max


def test_spec_7b_anneal_start_lr():
    """Spec §5: the 7B cosine (3e-4, 2000 warmup, t_max 5T tokens) at 3.895T tokens gives ≈ 6.14e-5."""
    tokens_per_step = 1024 * 4096
    cfg = ScheduleConfig(name="cosine", warmup_steps=2000, t_max=round(5e12 / tokens_per_step), alpha_f=0.1)
    lr = 3e-4 * lr_factor(cfg, round(3.895e12 / tokens_per_step), 10**9)
    assert lr == pytest.approx(6.14e-5, rel=5e-3)


def test_linear_anneal_reaches_zero():
    cfg = ScheduleConfig(name="linear", warmup_steps=0, alpha_f=0.0)
    assert lr_factor(cfg, 0, 100) == 1.0
    assert lr_factor(cfg, 50, 100) == pytest.approx(0.5)
    assert lr_factor(cfg, 100, 100) == 0.0


def test_wsd():
    cfg = ScheduleConfig(name="wsd", warmup_steps=5, decay_steps=20, alpha_f=0.0)
    factors = [lr_factor(cfg, s, 100) for s in range(1, 101)]
    assert factors[4] == 1.0 and factors[79] == 1.0
    assert factors[89] == pytest.approx(0.5) and factors[99] == 0.0
    assert all(a >= b for a, b in zip(factors[5:], factors[6:], strict=False))


@pytest.mark.parametrize(
    "data, message",
    [
        ({"name": "cosine", "warmup_steps": 10, "t_max": 5}, "t_max \\(5\\) must exceed warmup_steps"),
        ({"name": "wsd"}, "needs decay_steps"),
        ({"name": "step"}, "'step' is not one of"),
        ({"alpha_f": 2}, "alpha_f must be in"),
    ],
)
def test_bad_schedules_are_refused(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(ScheduleConfig, data)


def test_adamw_groups_exclude_only_the_input_embedding():
    cfg = ModelConfig(
        d_model=32, n_layers=1, n_heads=2, mlp_hidden=64, vocab_size=64, eos_token_id=0, pad_token_id=1
    )
    model = build_model(cfg)
    opt = build_optimizer(model, OptimConfig(lr=1e-3))
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["embedding"]["weight_decay"] == 0.0
    assert [p.shape for p in groups["embedding"]["params"]] == [model.model.embed_tokens.weight.shape]
    decayed = {id(p) for p in groups["decayed"]["params"]}
    assert id(model.lm_head.weight) in decayed
    assert id(model.model.layers[0].self_attn.q_norm.weight) in decayed
    assert groups["decayed"]["weight_decay"] == 0.1
    assert opt.defaults["betas"] == (0.9, 0.95) and opt.defaults["eps"] == 1e-8
    assert math.isclose(
        sum(p.numel() for g in opt.param_groups for p in g["params"]),
        sum(p.numel() for p in model.parameters()),
    )
