"""PPO for `olmo2 rlvr` (algorithm: ppo): config defaults and validation, the loss path against a
hand-written per-token reference, the value model. The end-to-end reward test is in
test_sft_dpo_rlvr.py (it shares the SFT'd toy model with the GRPO one).

TRL 1.16 ships no PPO trainer nor PPO loss functions (no GAE, whitening or value loss anywhere in
`trl`, including `trl.experimental`), so there is no TRL parity test for PPO; the clipped policy
term is `grpo_loss`, whose TRL parity is tested in test_losses_trl_parity.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from olmo2.config import ConfigError, from_dict, to_dict
from olmo2.model.config import ModelConfig
from olmo2.model.transformer import build_model
from olmo2.posttrain.ppo import PPOBatch, ValueModel, ppo_advantages, ppo_loss
from olmo2.posttrain.rlvr import load_rlvr_config

REPO = Path(__file__).parents[2]
REQUIRED = ["model=m", "data=d.jsonl"]


def _spec(cfg) -> tuple:
    return (cfg.optim.lr, cfg.schedule.name, cfg.beta, cfg.kl_estimator, cfg.group_size, cfg.no_eos_penalty)


def test_algorithm_defaults_follow_the_spec_and_explicit_values_win():
    grpo = load_rlvr_config(None, REQUIRED)
    assert grpo.algorithm == "grpo"
    assert _spec(grpo) == (5e-7, "constant", 0.01, "k3", 16, None)  # unchanged GRPO defaults (§6.5)
    ppo = load_rlvr_config(None, [*REQUIRED, "algorithm=ppo"])
    assert _spec(ppo) == (4e-7, "linear", 0.05, "k1", 1, -10.0)  # §6.4 Tab 18 (7B)
    assert (ppo.ppo_epochs, ppo.num_mini_batches, ppo.gamma, ppo.lam) == (4, 1, 1.0, 0.95)
    assert (
        ppo.vf_coef,
        ppo.clip_eps,
        ppo.value_clip_eps,
        ppo.optim.grad_clip,
        ppo.schedule.warmup_ratio,
    ) == (
        0.1,
        0.2,
        0.2,
        1.0,
        0.0,
    )
    mine = load_rlvr_config(
        None, [*REQUIRED, "algorithm=ppo", "beta=0.1", "no_eos_penalty=null", "optim.lr=3e-7"]
    )
    assert (mine.beta, mine.no_eos_penalty, mine.optim.lr, mine.schedule.name) == (0.1, None, 3e-7, "linear")
    # config.yaml (to_dict after defaults are resolved) loads back to the same config
    assert from_dict(type(ppo), to_dict(ppo)) == ppo
    assert from_dict(type(grpo), to_dict(grpo)) == grpo
    demo = load_rlvr_config(REPO / "configs/posttrain/demo-rlvr-ppo.yaml")
    assert demo.algorithm == "ppo" and demo.run.folder == "runs/posttrain-demo/rlvr-ppo"


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["algorithm=ppg"], "algorithm"),
        (["algorithm=ppo", "ppo_epoch=2"], "unknown key ppo_epoch .did you mean ppo_epochs"),
        (["algorithm=ppo", "ppo_epochs=two"], "ppo_epochs"),
        (["algorithm=ppo", "ppo_epochs=0"], "ppo_epochs"),
        (["algorithm=ppo", "batch_size=4", "num_mini_batches=3"], "num_mini_batches"),
        (["algorithm=ppo", "num_mini_batches=0"], "num_mini_batches"),
        (["algorithm=ppo", "gamma=1.5"], "gamma"),
        (["algorithm=ppo", "lam=-0.1"], "lam"),
        (["algorithm=ppo", "vf_coef=0"], "vf_coef"),
        (["algorithm=ppo", "value_clip_eps=0"], "value_clip_eps"),
        (["algorithm=ppo", "value_lr=0"], "value_lr"),
        (["algorithm=ppo", "value_head_init_std=-1"], "value_head_init_std"),
        (["algorithm=ppo", "whiten_advantages=maybe"], "whiten_advantages"),
        (["algorithm=ppo", "normalization=sequence"], "normalization"),
        (["algorithm=ppo", "group_size=0"], "group_size"),
        (["algorithm=ppo", "kl_estimator=k4"], "kl_estimator"),
        (["algorithm=ppo", "clip_eps=0"], "clip_eps"),
        (["group_size=1"], "group_size"),  # GRPO still needs a group
    ],
)
def test_bad_ppo_config_is_rejected_naming_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key):
        load_rlvr_config(None, [*REQUIRED, *overrides])


def test_ppo_one_sample_per_prompt_is_allowed():
    cfg = load_rlvr_config(None, [*REQUIRED, "algorithm=ppo", "batch_size=4", "num_mini_batches=4"])
    assert cfg.group_size == 1 and cfg.num_mini_batches == 4


# ----------------------------------------------------------------------------- loss path


def _reference(
    scores, logps, ref, values, new_logps, new_values, mask, *, beta, gamma, lam, eps, eps_v, coef
):
    """PPO written token by token with Python loops, from the textbook definitions."""
    B, T = mask.shape
    spans = [[t for t in range(T) if mask[b, t]] for b in range(B)]
    adv = [[0.0] * T for _ in range(B)]
    ret = [[0.0] * T for _ in range(B)]
    for b, span in enumerate(spans):
        next_value, next_adv = 0.0, 0.0
        for i, t in reversed(list(enumerate(span))):
            r = -beta * (float(logps[b, t]) - float(ref[b, t]))
            if i == len(span) - 1:
                r += float(scores[b])
            delta = r + gamma * next_value - float(values[b, t])
            next_adv = delta + gamma * lam * next_adv
            adv[b][t], ret[b][t] = next_adv, next_adv + float(values[b, t])
            next_value = float(values[b, t])
    flat = [adv[b][t] for b, span in enumerate(spans) for t in span]
    mean = sum(flat) / len(flat)
    std = math.sqrt(sum((a - mean) ** 2 for a in flat) / len(flat) + 1e-8)
    pg, vf, clipped, vclipped, kl = [], [], 0, 0, []
    for b, span in enumerate(spans):
        for t in span:
            a = (adv[b][t] - mean) / std
            ratio = torch.exp(new_logps[b, t] - logps[b, t])
            unclipped_loss, clipped_loss = -a * ratio, -a * ratio.clamp(1 - eps, 1 + eps)
            pg.append(torch.maximum(unclipped_loss, clipped_loss))
            clipped += bool(clipped_loss > unclipped_loss)
            v, v_old = new_values[b, t], float(values[b, t])
            v_clip = v_old + (v - v_old).clamp(-eps_v, eps_v)
            e1, e2 = (v - ret[b][t]) ** 2, (v_clip - ret[b][t]) ** 2
            vf.append(0.5 * torch.maximum(e1, e2))
            vclipped += bool(e2 > e1)
            kl.append(0.5 * (new_logps[b, t].item() - logps[b, t].item()) ** 2)
    n = len(pg)
    policy, value = sum(pg) / n, sum(vf) / n
    return {
        "advantages": [[(adv[b][t] - mean) / std if mask[b, t] else 0.0 for t in range(T)] for b in range(B)],
        "returns": ret,
        "loss": policy + coef * value,
        "policy_loss": policy.item(),
        "value_loss": value.item(),
        "clipfrac": clipped / n,
        "vf_clipfrac": vclipped / n,
        "approx_kl": sum(kl) / n,
    }


@pytest.fixture
def rollout():
    """Fixed tensors: 3 rows with a prompt (mask 0), responses of different lengths, then padding."""
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(3, 9, dtype=torch.bool)
    mask[0, 2:8], mask[1, 4:6], mask[2, 1:9] = True, True, True
    logps = -torch.rand(3, 9, generator=g) * 3 * mask
    ref = (logps + 0.3 * torch.randn(3, 9, generator=g)) * mask
    values = torch.randn(3, 9, generator=g) * 2 * mask
    scores = torch.tensor([10.0, 0.0, -10.0])
    new_logps = (logps + 0.4 * torch.randn(3, 9, generator=g)) * mask  # some ratios past 1 ± 0.2
    new_values = (values + 0.5 * torch.randn(3, 9, generator=g)) * mask
    return scores, logps, ref, values, new_logps, new_values, mask


def test_ppo_loss_path_matches_hand_written_reference(rollout):
    scores, logps, ref, values, new_logps, new_values, mask = rollout
    hp = dict(beta=0.05, gamma=0.99, lam=0.95, eps=0.2, eps_v=0.2, coef=0.1)
    new_logps_ref = new_logps.clone().requires_grad_(True)
    new_values_ref = new_values.clone().requires_grad_(True)
    want = _reference(scores, logps, ref, values, new_logps_ref, new_values_ref, mask, **hp)
    want["loss"].backward()

    adv, returns, rewards = ppo_advantages(
        scores, logps, ref, values, mask, beta=hp["beta"], gamma=hp["gamma"], lam=hp["lam"]
    )
    torch.testing.assert_close(adv, torch.tensor(want["advantages"]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(returns * mask, torch.tensor(want["returns"]), atol=1e-5, rtol=1e-5)
    expected_total = scores.sum() - 0.05 * ((logps - ref) * mask).sum()
    assert rewards.sum().item() == pytest.approx(expected_total.item(), abs=1e-5)

    lp, v = new_logps.clone().requires_grad_(True), new_values.clone().requires_grad_(True)
    out = ppo_loss(lp, v, logps, values, adv, returns, mask, clip_eps=0.2, value_clip_eps=0.2, vf_coef=0.1)
    out.loss.backward()
    assert out.loss.item() == pytest.approx(want["loss"].item(), rel=1e-6, abs=1e-6)
    for name in ("policy_loss", "value_loss", "clipfrac", "vf_clipfrac", "approx_kl"):
        assert getattr(out, name).item() == pytest.approx(want[name], rel=1e-6, abs=1e-6), name
    assert 0 < out.clipfrac < 1 and 0 < out.vf_clipfrac < 1  # both clips bind somewhere
    torch.testing.assert_close(lp.grad, new_logps_ref.grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(v.grad, new_values_ref.grad, atol=1e-6, rtol=1e-5)

    # micro-batches with the mini-batch's token count add up to the whole batch, gradients included
    n = mask.sum().float()
    lp2, v2 = new_logps.clone().requires_grad_(True), new_values.clone().requires_grad_(True)
    parts = [
        ppo_loss(lp2[i], v2[i], logps[i], values[i], adv[i], returns[i], mask[i], num_tokens=n)
        for i in ([0, 2], [1])
    ]
    sum(p.loss for p in parts).backward()
    for name in ("loss", "policy_loss", "value_loss", "clipfrac", "vf_clipfrac", "approx_kl"):
        assert sum(getattr(p, name).item() for p in parts) == pytest.approx(
            getattr(out, name).item(), rel=1e-6, abs=1e-6
        )
    torch.testing.assert_close(lp2.grad, lp.grad, atol=1e-7, rtol=1e-5)
    torch.testing.assert_close(v2.grad, v.grad, atol=1e-7, rtol=1e-5)


def test_ppo_first_update_is_the_policy_gradient(rollout):
    """On the rollout's own log-probs (ratio 1) nothing is clipped and the policy gradient is −A/n."""
    scores, logps, ref, values, _, _, mask = rollout
    adv, returns, _ = ppo_advantages(scores, logps, ref, values, mask, beta=0.05)
    lp = logps.clone().requires_grad_(True)
    out = ppo_loss(lp, values, logps, values, adv, returns, mask)
    out.loss.backward()
    assert out.clipfrac == 0 and out.approx_kl == 0 and out.vf_clipfrac == 0
    torch.testing.assert_close(lp.grad, -adv * mask / mask.sum(), atol=1e-7, rtol=1e-6)
    unwhitened, _, _ = ppo_advantages(scores, logps, ref, values, mask, beta=0.05, whiten_advantages=False)
    assert not torch.allclose(unwhitened, adv)


def test_ppo_batch_rows_cut_to_the_longest_row():
    ids = torch.arange(24).view(3, 8)
    per_token = [torch.rand(3, 8) for _ in range(4)]  # old_logps, old_values, advantages, returns
    batch = PPOBatch(
        ids, ids.clone(), torch.ones(3, 8, dtype=torch.bool), *per_token, lengths=torch.tensor([8, 3, 5])
    )
    part = batch.rows([1, 2])
    assert part.input_ids.shape == part.old_values.shape == (2, 5)
    assert part.lengths.tolist() == [3, 5]
    torch.testing.assert_close(part.returns, per_token[-1][[1, 2], :5])


def test_value_model_starts_from_the_policy_with_a_fresh_head():
    cfg = ModelConfig(
        d_model=32, n_layers=1, n_heads=2, mlp_hidden=64, vocab_size=100, eos_token_id=None, pad_token_id=None
    )
    policy = build_model(cfg, seed=0)
    body = build_model(cfg, seed=0)
    vm = ValueModel(body)
    names = {n for n, _ in vm.named_parameters()}
    assert not any("lm_head" in n for n in names) and {"head.weight", "head.bias"} <= names
    ids = torch.randint(0, 100, (2, 5))
    assert vm(ids).shape == (2, 5) and vm(ids).abs().max() == 0  # zero head: V = 0 at the start
    torch.testing.assert_close(vm.body.hidden_states(ids), policy.hidden_states(ids))
    small = ValueModel(build_model(cfg, seed=0), init_std=0.01, seed=3)
    again = ValueModel(build_model(cfg, seed=0), init_std=0.01, seed=3)
    assert 0 < small(ids).abs().max() < 1
    torch.testing.assert_close(small(ids), again(ids))
