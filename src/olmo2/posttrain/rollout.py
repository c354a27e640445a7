"""Rollouts for RLVR, shared by GRPO and PPO: sample ``group_size`` responses per prompt from the
(possibly sharded) policy, score them with the verifiers, and the response log-probs of a batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from olmo2.chat import decode_response
from olmo2.generate import GenerationConfig, generate
from olmo2.model.loss import IGNORE_INDEX, shift_labels
from olmo2.posttrain.common import StageRun
from olmo2.posttrain.data import RLPrompt, SFTExample, collate
from olmo2.posttrain.verifiers import verifiable_reward
from olmo2.train.distributed import full_parameters
from olmo2.train.runtime import autocast

__all__ = ["Rollout", "RolloutSampler", "rollout_metrics", "row_seed", "sequence_logps"]


@dataclass
class Rollout:
    """One rank's samples of a step: each prompt ``group_size`` times in a row, responses and scores."""

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

    def sums(self, device: torch.device) -> torch.Tensor:
        """[Σ score, Σ score², Σ correct, Σ finished, Σ response length, count], to add over ranks."""
        scores = self.scores.double()
        return torch.tensor(
            [
                float(scores.sum()),
                float(scores.square().sum()),
                float(sum(self.correct)),
                float(sum(self.finished)),
                float(sum(map(len, self.responses))),
                float(len(self.responses)),
            ],
            device=device,
        )


def rollout_metrics(sums: list[float]) -> dict:
    """The rollout's statistics over all ranks from the added ``Rollout.sums``."""
    total, squares, correct, finished, length, n = sums
    mean = total / n
    return {
        "reward_mean": mean,
        "reward_std": max(squares / n - mean * mean, 0.0) ** 0.5,
        "correct_frac": correct / n,
        "finished_frac": finished / n,
        "response_len": length / n,
    }


def row_seed(seed: int, step: int, row: int) -> int:
    """The sampling seed of rollout row ``row`` (its place in the step's global batch) at ``step``."""
    return (seed * 1_000_003 + step) * 1_000_033 + row


class RolloutSampler:
    """Samples and scores this rank's rollouts from the (possibly sharded) policy: ``group_size``
    responses per prompt, each row seeded by its place in the global batch, so one rank or many draw
    the same tokens for the same step."""

    def __init__(self, run: StageRun, model, prompts: list[RLPrompt]):
        self.run, self.cfg, self.model, self.prompts = run, run.cfg, model, prompts

    def __call__(self, prompt_idx: list[int], step: int) -> Rollout:
        cfg, env = self.cfg, self.run.env
        batch = [self.prompts[i] for i in prompt_idx for _ in range(cfg.group_size)]
        first_row = env.rank * len(batch)
        sample = GenerationConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature)
        with full_parameters(self.model) as policy:
            policy.eval()
            with autocast(env.device, self.run.dtype):
                responses = generate(
                    policy,
                    [p.prompt_ids for p in batch],
                    sample,
                    eos_token_id=self.run.tok.eos_token_id,
                    row_seeds=[row_seed(cfg.seed, step, first_row + i) for i in range(len(batch))],
                )
            policy.train()
        scores, finished, correct = [], [], []
        for p, r in zip(batch, responses, strict=True):
            text, done = decode_response(self.run.tok, r)
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


def sequence_logps(model, rows: list[SFTExample], run: StageRun) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs [B, T] of the response tokens of ``rows`` under softmax(logits / temperature), and
    their mask."""
    b = collate(rows)
    device = run.env.device
    with autocast(device, run.dtype):
        return model(
            b.input_ids.to(device),
            labels=shift_labels(b.labels).to(device),
            target_logps=True,
            temperature=run.cfg.temperature,
        )
