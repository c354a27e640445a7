"""``olmo2 rlvr CONFIG``: RL with verifiable rewards (spec §6.4–6.5), by GRPO (default) or PPO.

Both algorithms share what happens before the loss: each step samples ``group_size`` responses per
prompt with the KV-cache generator (temperature 1) and scores them with the verifier (``reward`` if
correct, else 0; ``no_eos_penalty`` replaces the score of a response cut at ``max_new_tokens``).

GRPO (``algorithm: grpo``, the 1B/32B runs) normalises rewards within each group and takes one
clipped-ratio policy-gradient step with a k3 KL penalty to the frozen initial model. One update per
rollout, so the ratio is 1 and the clip never binds; it is kept for parity with the loss open-instruct
uses. PPO (``algorithm: ppo``, the 7B/13B runs, with a value model) lives in ``olmo2.posttrain.ppo``.

Settings whose spec value differs between the two (``lr``, ``schedule``, ``beta``, ``kl_estimator``,
``group_size``, ``no_eos_penalty``) default to the chosen algorithm's value (``ALGORITHM_DEFAULTS``);
anything set explicitly wins.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

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
from olmo2.posttrain.data import RLPrompt, SFTExample, collate, load_rl_prompts
from olmo2.posttrain.losses import group_advantages, grpo_loss
from olmo2.posttrain.verifiers import NO_EOS_PENALTY, VERIFIED_REWARD, verifiable_reward
from olmo2.train.loss import IGNORE_INDEX
from olmo2.train.monitor import log

__all__ = [
    "ALGORITHM_DEFAULTS",
    "RLVRConfig",
    "Rollout",
    "load_rlvr_config",
    "sample_rollout",
    "train_rlvr",
]


class _AlgorithmDefault:
    """Marks a field whose default depends on ``algorithm``; never seen after ``__post_init__``."""

    def __repr__(self) -> str:
        return "<algorithm default>"


_DEFAULT: Any = _AlgorithmDefault()

# Spec §6.5 (GRPO, 1B: LR 5e-7 constant, β 0.01 k3, 16 samples, no EOS penalty) and §6.4 / Tab 18
# (PPO, 7B: LR 4e-7 linear, β 0.05 on the sampled log-ratio (open-instruct's kl1), one sample per
# prompt as open-instruct's PPO script, −10 for a response without EOS).
ALGORITHM_DEFAULTS: dict[str, dict[str, Any]] = {
    "grpo": {
        "lr": 5e-7,
        "schedule": "constant",
        "beta": 0.01,
        "kl_estimator": "k3",
        "group_size": 16,
        "no_eos_penalty": None,
    },
    "ppo": {
        "lr": 4e-7,
        "schedule": "linear",
        "beta": 0.05,
        "kl_estimator": "k1",
        "group_size": 1,
        "no_eos_penalty": NO_EOS_PENALTY,
    },
}


@dataclass
class RLVRConfig(PostTrainConfig):
    """Fields marked ``_DEFAULT`` take ``ALGORITHM_DEFAULTS[algorithm]``; the PPO-only block is ignored
    by GRPO."""

    algorithm: Literal["grpo", "ppo"] = "grpo"
    out_dir: str = "runs/rlvr"
    lr: float = _DEFAULT
    schedule: Literal["linear", "constant"] = _DEFAULT
    warmup_ratio: float = 0.0
    steps: int = 100  # rollouts (GRPO: one optimizer step each; PPO: ppo_epochs × num_mini_batches)
    batch_size: int = 4  # unique prompts per step
    micro_batch_size: int = 16  # sequences per forward/backward
    group_size: int = _DEFAULT  # samples per prompt
    max_prompt_len: int = 2048
    max_new_tokens: int = 512
    temperature: float = 1.0
    beta: float = _DEFAULT  # KL coefficient (GRPO: in the loss; PPO: in the per-token reward)
    kl_estimator: Literal["k1", "k2", "k3"] = _DEFAULT  # also what `kl` in metrics.jsonl measures
    clip_eps: float = 0.2
    reward: float = VERIFIED_REWARD
    no_eos_penalty: float | None = _DEFAULT  # None: an unfinished answer is just scored
    normalization: Literal["token", "sequence"] = "token"  # GRPO loss; PPO always uses "token"
    # PPO only (spec §6.4, Tab 18)
    ppo_epochs: int = 4  # passes over each rollout batch
    num_mini_batches: int = 1  # optimizer steps per pass
    gamma: float = 1.0
    lam: float = 0.95  # GAE λ
    vf_coef: float = 0.1  # value-loss weight
    value_clip_eps: float = 0.2  # clip of the value update around the rollout's values
    value_lr: float | None = None  # None: lr
    whiten_advantages: bool = True
    value_head_init_std: float = 0.0  # the fresh value head: 0 = zeros (no reward model to start from)

    def __post_init__(self) -> None:
        for name, value in ALGORITHM_DEFAULTS[self.algorithm].items():
            if getattr(self, name) is _DEFAULT:
                setattr(self, name, value)
        self.epochs = max(self.epochs, 1)
        if self.batch_size < 1 or self.micro_batch_size < 1:
            raise ValueError("batch_size and micro_batch_size must be >= 1")
        self.micro_batch_size, saved = self.batch_size, self.micro_batch_size  # micro counts sequences
        super().__post_init__()
        self.micro_batch_size = saved
        if self.steps < 1 or self.temperature <= 0:
            raise ValueError("steps must be >= 1 and temperature > 0")
        if self.clip_eps <= 0:
            raise ValueError(f"clip_eps must be > 0, got {self.clip_eps}")
        if self.algorithm == "grpo" and self.group_size < 2:
            raise ValueError(f"group_size must be >= 2 (GRPO compares samples), got {self.group_size}")
        if self.algorithm == "ppo":
            self._check_ppo()

    def _check_ppo(self) -> None:
        n = self.batch_size * self.group_size
        checks = [
            ("group_size", self.group_size >= 1, "must be >= 1"),
            ("ppo_epochs", self.ppo_epochs >= 1, "must be >= 1"),
            ("num_mini_batches", 1 <= self.num_mini_batches <= n and n % self.num_mini_batches == 0,
             f"must divide the {n} sequences of a rollout (batch_size × group_size)"),
            ("gamma", 0.0 <= self.gamma <= 1.0, "must be in [0, 1]"),
            ("lam", 0.0 <= self.lam <= 1.0, "must be in [0, 1]"),
            ("vf_coef", self.vf_coef > 0, "must be > 0"),
            ("value_clip_eps", self.value_clip_eps > 0, "must be > 0"),
            ("value_lr", self.value_lr is None or self.value_lr > 0, "must be > 0 (or null for lr)"),
            ("value_head_init_std", self.value_head_init_std >= 0, "must be >= 0"),
            ("normalization", self.normalization == "token", "must be 'token' for PPO (GRPO-only choice)"),
        ]  # fmt: skip
        for key, ok, why in checks:
            if not ok:
                raise ValueError(f"{key} {why}, got {getattr(self, key)!r}")


def load_rlvr_config(path=None, overrides: list[str] | None = None) -> RLVRConfig:
    return load_config(RLVRConfig, path, overrides)


@dataclass
class Rollout:
    """One step's samples: each prompt ``group_size`` times in a row, the responses and their scores."""

    prompts: list[RLPrompt]
    responses: list[list[int]]
    scores: torch.Tensor  # [N] fp32
    finished: list[bool]
    correct: list[bool]

    @property
    def prompt_ids(self) -> list[list[int]]:
        return [p.prompt_ids for p in self.prompts]

    def sequences(self) -> list[SFTExample]:
        """Prompt + response rows whose labels are the response tokens only."""
        return [
            SFTExample(p + r, [IGNORE_INDEX] * len(p) + list(r))
            for p, r in zip(self.prompt_ids, self.responses, strict=True)
        ]

    def metrics(self) -> dict:
        return {
            "reward_mean": float(self.scores.mean()),
            "reward_std": float(self.scores.std(correction=0)),
            "correct_frac": sum(self.correct) / len(self.correct),
            "finished_frac": sum(self.finished) / len(self.finished),
            "response_len": sum(map(len, self.responses)) / len(self.responses),
        }


def sample_rollout(model, tok, cfg: RLVRConfig, prompts: list[RLPrompt], step: int) -> Rollout:
    """``group_size`` sampled responses per prompt (seeded by ``seed`` and ``step``), scored."""
    batch = [p for p in prompts for _ in range(cfg.group_size)]
    model.eval()
    sample = GenerationConfig(
        max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=cfg.seed * 100_003 + step
    )
    responses = generate(model, [p.prompt_ids for p in batch], sample, eos_token_id=tok.eos_token_id)
    model.train()
    scores, finished, correct = [], [], []
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
        scores.append(score)
        finished.append(done)
        correct.append(score == cfg.reward)
    return Rollout(batch, responses, torch.tensor(scores, dtype=torch.float32), finished, correct)


class RLRun:
    """What a GRPO and a PPO run share: the policy, the frozen reference, the prompts (drawn without
    replacement, reshuffled with ``seed`` each pass), and the final save, plot and summary."""

    def __init__(self, cfg: RLVRConfig):
        self.cfg = cfg
        self.model, self.tok, self.device = setup(cfg)
        self.out = Path(cfg.out_dir)
        self.prompts, report = load_rl_prompts(cfg.data, self.tok, max_prompt_length=cfg.max_prompt_len)
        write_json(self.out / "data_report.json", {"rl_prompts": str(report)})
        if not self.prompts:
            raise ValueError(f"no usable RLVR prompts in {cfg.data}: {report}")
        log(f"rlvr ({cfg.algorithm}): {len(self.prompts)} prompts ({report})")
        self.ref = copy.deepcopy(self.model).eval().requires_grad_(False) if cfg.beta else None
        self._gen = torch.Generator().manual_seed(cfg.seed)
        self._order: list[int] = []
        self.n_steps = min(cfg.steps, cfg.max_steps or cfg.steps)

    def rollout(self, step: int) -> Rollout:
        picked = []
        for _ in range(self.cfg.batch_size):
            if not self._order:
                self._order = torch.randperm(len(self.prompts), generator=self._gen).tolist()
            picked.append(self.prompts[self._order.pop()])
        return sample_rollout(self.model, self.tok, self.cfg, picked, step)

    def logps(self, model, ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast(self.cfg, self.device):
            return token_logps(model, ids, labels, temperature=self.cfg.temperature)

    def finish(self, records: list[dict]) -> dict:
        path = save_final(self.model, self.tok, self.out)
        try:
            from olmo2.posttrain.common import plot_rewards

            plot_rewards(self.out)
        except ImportError:  # matplotlib is optional
            pass
        k = max(1, len(records) // 4)
        summary = {
            "algorithm": self.cfg.algorithm,
            "steps": len(records),
            "reward_first_quarter": sum(r["reward_mean"] for r in records[:k]) / k,
            "reward_last_quarter": sum(r["reward_mean"] for r in records[-k:]) / k,
            "model": str(path),
            "prompts": len(self.prompts),
        }
        write_json(self.out / "summary.json", summary)
        return summary


def train_rlvr(cfg: RLVRConfig) -> dict:
    """Train; write ``metrics.jsonl`` (reward_mean, kl, ...), ``rewards.png``, ``summary.json`` and
    ``model/``."""
    if cfg.algorithm == "ppo":
        from olmo2.posttrain.ppo import train_ppo

        return train_ppo(cfg)
    return train_grpo(cfg)


def train_grpo(cfg: RLVRConfig) -> dict:
    run = RLRun(cfg)
    model, device = run.model, run.device

    def step_fn(_item, step: int) -> dict:
        roll = run.rollout(step)
        adv = group_advantages(roll.scores, cfg.group_size)
        seqs = roll.sequences()
        n_resp = sum(len(r) for r in roll.responses)
        totals = {"policy_loss": 0.0, "kl": 0.0, "clip_frac": 0.0}
        for idx in batched(list(range(len(seqs))), cfg.micro_batch_size):
            b = collate([seqs[i] for i in idx])
            ids, labels = b.input_ids.to(device), b.labels.to(device)
            logps, mask = run.logps(model, ids, labels)
            ref_logps = None
            if run.ref is not None:
                with torch.no_grad():
                    ref_logps, _ = run.logps(run.ref, ids, labels)
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
        return {**roll.metrics(), **totals}

    records = train_loop(cfg, model, [None] * run.n_steps, step_fn, out_dir=run.out)
    return run.finish(records)
