"""The shipped stage-1 / stage-2 configs load, validate, and carry the spec's numbers (§3.1, §5)."""

from pathlib import Path

import pytest

from olmo2.data.mix import load_mix_config
from olmo2.model.transformer import build_model, count_params
from olmo2.train.config import load_train_config
from olmo2.train.schedule import lr_factor

CONFIGS = Path(__file__).parents[2] / "configs" / "train"
# size: (peak lr, warmup steps, global batch, stage-1 steps, data seed)
STAGE1 = {
    "1b": (4e-4, 4000, 512, 1_907_359, 6198),
    "7b": (3e-4, 2000, 1024, 928_646, 6198),
    "13b": (9e-4, 1000, 2048, 596_057, 6198),
    "32b": (6e-4, 2000, 2048, 721_901, 34521),
}


@pytest.mark.parametrize("size", list(STAGE1))
def test_stage1_config_matches_spec(size, monkeypatch):
    monkeypatch.chdir(CONFIGS.parents[1])
    cfg = load_train_config(CONFIGS / f"olmo2-{size}-stage1.yaml")
    lr, warmup, batch, steps, seed = STAGE1[size]
    assert (cfg.optim.lr, cfg.schedule.warmup_steps, cfg.data.global_batch_size) == (lr, warmup, batch)
    assert (cfg.run.max_steps, cfg.data.seed, cfg.data.seq_len) == (steps, seed, 4096)
    assert cfg.optim.betas == (0.9, 0.95) and cfg.optim.eps == 1e-8 and cfg.optim.weight_decay == 0.1
    assert cfg.schedule.name == "cosine" and cfg.schedule.alpha_f == 0.1
    assert build_model(cfg.model, "meta").config == cfg.model
    assert load_mix_config(cfg.data.mix).name == "olmo2-mix-1124"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("olmo2-*-stage2-*.yaml")), ids=lambda p: p.stem)
def test_stage2_config_starts_where_stage1_ends(path, monkeypatch):
    monkeypatch.chdir(CONFIGS.parents[1])
    cfg = load_train_config(path)
    size = path.stem.split("-")[1]
    stage1 = load_train_config(CONFIGS / f"olmo2-{size}-stage1.yaml")
    assert cfg.model == stage1.model and cfg.data.global_batch_size == stage1.data.global_batch_size
    assert cfg.schedule.name == "linear" and cfg.schedule.warmup_steps == 0 and cfg.schedule.alpha_f == 0
    assert cfg.init.checkpoint.endswith(f"step{stage1.run.max_steps}") and cfg.init.load_optimizer
    # The anneal's starting LR is the stage-1 schedule's value at the hand-off (spec §5).
    handoff = stage1.optim.lr * lr_factor(stage1.schedule, stage1.run.max_steps, stage1.run.max_steps)
    assert cfg.optim.lr == pytest.approx(handoff, rel=0.02)
    # Tokens: steps x batch x 4096 ≈ the mix's budget (the paper adds ~10 steps).
    budget = load_mix_config(cfg.data.mix).total_tokens
    assert cfg.run.max_steps * cfg.data.global_batch_size * 4096 == pytest.approx(budget, rel=0.01)


def test_model_sizes_fit_their_names():
    for size in STAGE1:
        cfg = load_train_config(CONFIGS / f"olmo2-{size}-stage1.yaml")
        total = count_params(cfg.model)["total_params"]
        assert total == pytest.approx(float(size[:-1]) * 1e9, rel=0.5)
