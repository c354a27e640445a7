"""``olmo2 rlvr CONFIG``: RL with verifiable rewards by GRPO (spec §6.4–6.5).

Each step samples ``group_size`` responses per prompt with the KV-cache generator (temperature 1),
scores them with the verifier (``reward`` if correct, else 0; optionally ``no_eos_penalty`` for a
response cut at ``max_new_tokens``), normalises rewards within each group, and takes one clipped-ratio
policy-gradient step with a k3 KL penalty to the frozen initial model. One update per rollout, so the
ratio is 1 and the clip never binds; it is kept for parity with the loss open-instruct uses. PPO (the
7B/13B recipe, with a value model) is not implemented here.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from olmo2.config import load_config
from olmo2.generate import GenerationConfig, generate
from olmo2.posttrain.chat import decode_response
from olmo2.posttrain.common import (
    PostTrainConfig,
    autocast,
    batched,
    save_final,
    setup,
    token_logps,
    train_loop,
    write_json,
)
from olmo2.posttrain.data import SFTExample, collate, load_rl_prompts
from olmo2.posttrain.losses import group_advantages, grpo_loss
from olmo2.posttrain.verifiers import VERIFIED_REWARD, verifiable_reward
from olmo2.train.loss import IGNORE_INDEX
from olmo2.train.monitor import log

__all__ = ["RLVRConfig", "load_rlvr_config", "train_rlvr"]


@dataclass
class RLVRConfig(PostTrainConfig):
    """Defaults follow the 1B/32B GRPO runs (spec §6.5): LR 5e-7 constant, β 0.01 (k3), 16 samples."""

    out_dir: str = "runs/rlvr"
    lr: float = 5e-7
    schedule: Literal["linear", "constant"] = "constant"
    warmup_ratio: float = 0.0
    steps: int = 100  # optimizer steps (one rollout each)
    batch_size: int = 4  # unique prompts per step
    micro_batch_size: int = 16  # sequences per forward/backward
    group_size: int = 16
    max_prompt_len: int = 2048
    max_new_tokens: int = 512
    temperature: float = 1.0
    beta: float = 0.01
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    clip_eps: float = 0.2
    reward: float = VERIFIED_REWARD
    no_eos_penalty: float | None = None  # e.g. -10 (spec §6.4); None: unfinished answers just score 0
    normalization: Literal["token", "sequence"] = "token"

    def __post_init__(self) -> None:
        self.epochs = max(self.epochs, 1)
        if self.batch_size < 1 or self.micro_batch_size < 1:
            raise ValueError("batch_size and micro_batch_size must be >= 1")
        self.micro_batch_size, saved = self.batch_size, self.micro_batch_size  # micro counts sequences
        super().__post_init__()
        self.micro_batch_size = saved
        if self.group_size < 2:
            raise ValueError(f"group_size must be >= 2 (GRPO compares samples), got {self.group_size}")
        if self.steps < 1 or self.temperature <= 0:
            raise ValueError("steps must be >= 1 and temperature > 0")


def load_rlvr_config(path=None, overrides: list[str] | None = None) -> RLVRConfig:
    return load_config(RLVRConfig, path, overrides)


def _sequences(prompts: list[list[int]], responses: list[list[int]]) -> list[SFTExample]:
    """Prompt + response rows whose labels are the response tokens only."""
    return [
        SFTExample(p + r, [IGNORE_INDEX] * len(p) + list(r)) for p, r in zip(prompts, responses, strict=True)
    ]


def train_rlvr(cfg: RLVRConfig) -> dict:
    """Train; write ``metrics.jsonl`` (reward_mean, kl, ...), ``rewards.png`` and ``model/``."""
    model, tok, device = setup(cfg)
    out = Path(cfg.out_dir)
    prompts, report = load_rl_prompts(cfg.data, tok, max_prompt_length=cfg.max_prompt_len)
    write_json(out / "data_report.json", {"rl_prompts": str(report)})
    if not prompts:
        raise ValueError(f"no usable RLVR prompts in {cfg.data}: {report}")
    log(f"rlvr: {len(prompts)} prompts ({report})")
    ref = None
    if cfg.beta:
        ref = copy.deepcopy(model).eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(cfg.seed)
    order: list[int] = []

    def next_prompts() -> list:
        nonlocal order
        picked = []
        for _ in range(cfg.batch_size):
            if not order:
                order = torch.randperm(len(prompts), generator=gen).tolist()
            picked.append(prompts[order.pop()])
        return picked

    def step_fn(_item, step: int) -> dict:
        batch = [p for p in next_prompts() for _ in range(cfg.group_size)]
        prompt_ids = [p.prompt_ids for p in batch]
        model.eval()
        sample = GenerationConfig(
            max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=cfg.seed * 100_003 + step
        )
        responses = generate(model, prompt_ids, sample, eos_token_id=tok.eos_token_id)
        model.train()
        rewards, finished, correct = [], [], []
        for p, r in zip(batch, responses, strict=True):
            text, done = decode_response(tok, r)
            score = verifiable_reward(
                p.verifier,
                text,
                p.ground_truth,
                finished=done,
                reward=cfg.reward,
                no_eos_penalty=cfg.no_eos_penalty,
            )
            rewards.append(score)
            finished.append(done)
            correct.append(score == cfg.reward)
        rewards_t = torch.tensor(rewards)
        adv = group_advantages(rewards_t, cfg.group_size)
        seqs = _sequences(prompt_ids, responses)
        n_resp = sum(len(r) for r in responses)
        totals = {"policy_loss": 0.0, "kl": 0.0, "clip_frac": 0.0}
        for idx in batched(list(range(len(seqs))), cfg.micro_batch_size):
            b = collate([seqs[i] for i in idx])
            ids, labels = b.input_ids.to(device), b.labels.to(device)
            with autocast(cfg, device):
                logps, mask = token_logps(model, ids, labels, temperature=cfg.temperature)
                ref_logps = None
                if ref is not None:
                    with torch.no_grad():
                        ref_logps, _ = token_logps(ref, ids, labels, temperature=cfg.temperature)
            n_mb = int(mask.sum())
            res = grpo_loss(
                logps,
                adv[idx].to(device),
                mask,
                ref_logps=ref_logps,
                beta=cfg.beta,
                clip_eps=cfg.clip_eps,
                kl_estimator=cfg.kl_estimator,
                normalization=cfg.normalization,
                num_tokens=max(n_resp, 1) if cfg.normalization == "token" else None,
            )
            scale = 1.0 if cfg.normalization == "token" else len(idx) / len(seqs)
            (res.loss * scale).backward()
            totals["policy_loss"] += float(res.policy_loss) * scale  # parts of the step's mean
            totals["kl"] += float(res.kl) * scale
            totals["clip_frac"] += float(res.clip_frac) * n_mb / max(n_resp, 1)
        return {
            "reward_mean": float(rewards_t.mean()),
            "reward_std": float(rewards_t.std(correction=0)),
            "correct_frac": sum(correct) / len(correct),
            "finished_frac": sum(finished) / len(finished),
            "response_len": n_resp / len(responses),
            **totals,
        }

    records = train_loop(
        cfg, model, [None] * min(cfg.steps, cfg.max_steps or cfg.steps), step_fn, out_dir=out
    )
    path = save_final(model, tok, out)
    try:
        from olmo2.posttrain.common import plot_rewards

        plot_rewards(out)
    except ImportError:  # matplotlib is optional
        pass
    k = max(1, len(records) // 4)
    summary = {
        "steps": len(records),
        "reward_first_quarter": sum(r["reward_mean"] for r in records[:k]) / k,
        "reward_last_quarter": sum(r["reward_mean"] for r in records[-k:]) / k,
        "model": str(path),
        "prompts": len(prompts),
    }
    write_json(out / "summary.json", summary)
    return summary
