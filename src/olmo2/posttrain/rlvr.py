"""``olmo2 rlvr CONFIG``: RL with verifiable rewards (spec §6.4–6.5), by GRPO (default) or PPO.

Both algorithms share what happens before the loss: each step samples ``group_size`` responses per
prompt with the KV-cache generator (temperature 1) and scores them with the verifier (``reward`` if
correct, else 0; ``no_eos_penalty`` replaces the score of a response cut at ``max_new_tokens``).

GRPO (``algorithm: grpo``, the 1B/32B runs; ``olmo2.posttrain.grpo``) normalises rewards within each
group and takes one policy-gradient step per rollout; PPO (``algorithm: ppo``, the 7B/13B runs, with a
value model; ``olmo2.posttrain.ppo``) takes several. This module holds what they share: the config,
the choice between them (``ALGORITHMS``) and the run around the step.

Settings whose spec value differs between the two (``optim.lr``, ``schedule.name``, ``beta``,
``kl_estimator``, ``group_size``, ``no_eos_penalty``) default to the chosen algorithm's value
(``ALGORITHM_DEFAULTS``); anything set explicitly wins. Both run on the training engine: every rank
samples rollouts for its share of the step's prompts from the sharded policy (each row seeded by its
place in the global batch, so the rollouts do not depend on the number of ranks), and a checkpoint
holds the data position; the sampling seeds are a function of the step.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Literal

from olmo2.posttrain.common import (
    PostTrainConfig,
    StageRun,
    StageRunConfig,
    fit_stage,
    load_policy,
    load_posttrain_config,
    plot_rewards,
    posttrain_schedule,
    stage_run,
    stage_run_config,
)
from olmo2.posttrain.data import load_rl_prompts
from olmo2.posttrain.grpo import GRPOModule
from olmo2.posttrain.ppo import PPOModule
from olmo2.posttrain.verifiers import NO_EOS_PENALTY, VERIFIED_REWARD
from olmo2.train.engine import TrainModule
from olmo2.train.schedule import ScheduleConfig

__all__ = ["ALGORITHM_DEFAULTS", "ALGORITHMS", "RLVRConfig", "load_rlvr_config", "train_rlvr"]

# Spec §6.5 (GRPO, 1B: LR 5e-7 constant, β 0.01 k3, 16 samples, no EOS penalty) and §6.4 / Tab 18
# (PPO, 7B: LR 4e-7 linear, β 0.05 on the sampled log-ratio (open-instruct's kl1), one sample per
# prompt as open-instruct's PPO script, −10 for a response without EOS). Keys with dots are sections'.
ALGORITHM_DEFAULTS: dict[str, dict[str, Any]] = {
    "grpo": {
        "optim.lr": 5e-7,
        "schedule.name": "constant",
        "beta": 0.01,
        "kl_estimator": "k3",
        "group_size": 16,
        "no_eos_penalty": None,
    },
    "ppo": {
        "optim.lr": 4e-7,
        "schedule.name": "linear",
        "beta": 0.05,
        "kl_estimator": "k1",
        "group_size": 1,
        "no_eos_penalty": NO_EOS_PENALTY,
    },
}


# The train module of each algorithm: ``(run, policy, reference or None, prompts, total_steps)``.
ALGORITHMS: dict[str, type[TrainModule]] = {"grpo": GRPOModule, "ppo": PPOModule}


@dataclass
class RLVRConfig(PostTrainConfig):
    """Settings whose spec value differs between GRPO and PPO take ``ALGORITHM_DEFAULTS[algorithm]``
    when the config does not set them (``load_rlvr_config``); the PPO-only block is ignored by GRPO."""

    algorithm: Literal["grpo", "ppo"] = "grpo"
    run: StageRunConfig = field(default_factory=stage_run_config("runs/rlvr"))
    schedule: ScheduleConfig = field(default_factory=lambda: posttrain_schedule(0.0, "constant"))
    steps: int = 100  # rollouts (GRPO: one optimizer step each; PPO: ppo_epochs × num_mini_batches)
    batch_size: int = 4  # unique prompts per step, over all ranks
    micro_batch_size: int = 16  # sequences per forward/backward
    group_size: int = 16  # samples per prompt
    max_prompt_len: int = 2048
    max_new_tokens: int = 512
    temperature: float = 1.0
    beta: float = 0.01  # KL coefficient (GRPO: in the loss; PPO: in the per-token reward)
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"  # also what `kl` in metrics.jsonl measures
    clip_eps: float = 0.2
    reward: float = VERIFIED_REWARD
    no_eos_penalty: float | None = None  # None: an unfinished answer is just scored
    normalization: Literal["token", "sequence"] = "token"  # GRPO loss; PPO always uses "token"
    # PPO only (spec §6.4, Tab 18)
    ppo_epochs: int = 4  # passes over each rollout batch
    num_mini_batches: int = 1  # optimizer steps per pass
    gamma: float = 1.0
    lam: float = 0.95  # GAE λ
    vf_coef: float = 0.1  # value-loss weight
    value_clip_eps: float = 0.2  # clip of the value update around the rollout's values
    value_lr: float | None = None  # None: optim.lr
    whiten_advantages: bool = True
    value_head_init_std: float = 0.0  # the fresh value head: 0 = zeros (no reward model to start from)

    def __post_init__(self) -> None:
        super().__post_init__()
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
            ("value_lr", self.value_lr is None or self.value_lr > 0, "must be > 0 (or null for optim.lr)"),
            ("value_head_init_std", self.value_head_init_std >= 0, "must be >= 0"),
            ("normalization", self.normalization == "token", "must be 'token' for PPO (GRPO-only choice)"),
        ]  # fmt: skip
        for key, ok, why in checks:
            if not ok:
                raise ValueError(f"{key} {why}, got {getattr(self, key)!r}")


def _algorithm_defaults(data: dict) -> None:
    """Fill the keys the config leaves unset with its algorithm's spec values."""
    algorithm = data.get("algorithm", "grpo")
    for dotted, value in ALGORITHM_DEFAULTS.get(algorithm, {}).items():
        node, *rest = dotted.split(".")
        if rest:
            section = data.setdefault(node, {})
            if isinstance(section, dict):
                section.setdefault(rest[0], value)
        else:
            data.setdefault(node, value)


def load_rlvr_config(path=None, overrides: list[str] | None = None) -> RLVRConfig:
    return load_posttrain_config(RLVRConfig, path, overrides, defaults=_algorithm_defaults)


def finish_rlvr(run: StageRun, records: list[dict], n_prompts: int) -> dict:
    """The reward plot and the summary of an RLVR run, GRPO or PPO."""
    if run.env.is_main:
        with contextlib.suppress(ImportError):  # matplotlib is optional
            plot_rewards(run.out)
    k = max(1, len(records) // 4)
    summary = {
        "algorithm": run.cfg.algorithm,
        "steps": len(records),
        "reward_first_quarter": sum(r["reward_mean"] for r in records[:k]) / k,
        "reward_last_quarter": sum(r["reward_mean"] for r in records[-k:]) / k,
        "model": str(run.out / "model"),
        "prompts": n_prompts,
    }
    run.write_json("summary.json", summary)
    return summary


def train_rlvr(cfg: RLVRConfig) -> dict:
    """RL with verifiable rewards, GRPO or PPO with a value model (spec §6.4-6.5), on the training engine,
    resumed from ``out_dir``'s latest checkpoint if it has one: writes metrics.jsonl (reward_mean, kl,
    ...), checkpoints, rewards.png, summary.json and model/.

    Returns the run's summary."""
    with stage_run(cfg) as run:
        prompts = run.load_records(load_rl_prompts, "rl_prompts", max_prompt_length=cfg.max_prompt_len)
        data = run.batches(len(prompts), "RLVR prompts")
        total = min(cfg.steps, cfg.run.max_steps or cfg.steps)
        model = load_policy(run)
        ref = load_policy(run, frozen=True) if cfg.beta else None
        module = ALGORITHMS[cfg.algorithm](run, model, ref, prompts, total)
        return finish_rlvr(run, fit_stage(run, module, data, total), len(prompts))
