"""GRPO for ``olmo2 rlvr`` (``algorithm: grpo``): the 1B/32B RLVR algorithm (spec §6.5).

Each step samples ``group_size`` responses per prompt (``rollout.RolloutSampler``, shared with PPO),
normalises their rewards within each prompt's group and takes one clipped-ratio policy-gradient step
with a k3 KL penalty to the frozen initial model. One update per rollout, so the ratio is 1 and the
clip never binds; it is kept for parity with the loss open-instruct uses.
"""

from __future__ import annotations

import torch

from olmo2.posttrain.common import StageRun
from olmo2.posttrain.data import RLPrompt
from olmo2.posttrain.losses import group_advantages, grpo_loss
from olmo2.posttrain.rollout import RolloutSampler, rollout_metrics, sequence_logps
from olmo2.train.distributed import all_reduce_sum
from olmo2.train.engine import (
    Part,
    ScheduledOptimizer,
    SpikeGuard,
    TrainModule,
    apply_update,
    chunks,
    global_count,
)
from olmo2.train.monitor import model_flops
from olmo2.train.runtime import sync_gradients

__all__ = ["GRPOModule"]


class GRPOModule(TrainModule):
    """One GRPO step: sample, score, normalise rewards within each prompt's group, then one clipped
    policy-gradient update with a KL penalty to the frozen reference, normalised over the global
    batch's response tokens (or sequences)."""

    console_keys = ("reward_mean", "kl")

    def __init__(self, run: StageRun, model, ref, prompts: list[RLPrompt], total_steps: int):
        cfg = run.cfg
        self.run, self.cfg, self.model, self.ref = run, cfg, model, ref
        self.sample = RolloutSampler(run, model, prompts)
        self.optim = ScheduledOptimizer(model, cfg.optim, cfg.schedule, total_steps)
        self.model_config = model.config
        self.peak_flops = run.peak_flops

    def parts(self) -> dict[str, Part]:
        return {"model": Part(self.model, self.optim.optimizer)}

    def train_step(self, batch: list[int], step: int, guard: SpikeGuard | None) -> dict:
        cfg, env = self.cfg, self.run.env
        lr = self.optim.set_lr(step)
        roll = self.sample(batch, step)
        adv = group_advantages(roll.scores, cfg.group_size)
        seqs = roll.sequences()
        n_resp = global_count(sum(len(r) for r in roll.responses), env.device).clamp(min=1.0)
        n_seqs = cfg.batch_size * cfg.group_size
        micro = chunks(range(len(seqs)), cfg.micro_batch_size)
        sums = torch.zeros(4, device=env.device)  # [loss, policy loss, kl, clipped tokens]
        for i, idx in enumerate(micro):
            with sync_gradients(self.model, i == len(micro) - 1):
                logps, mask = sequence_logps(self.model, [seqs[j] for j in idx], self.run)
                ref_logps = None
                if self.ref is not None:
                    with torch.no_grad():
                        ref_logps, _ = sequence_logps(self.ref, [seqs[j] for j in idx], self.run)
                res = grpo_loss(
                    logps,
                    adv[idx].to(env.device),
                    mask,
                    ref_logps=ref_logps,
                    beta=cfg.beta,
                    clip_eps=cfg.clip_eps,
                    kl_estimator=cfg.kl_estimator,
                    normalization=cfg.normalization,
                    num_tokens=n_resp if cfg.normalization == "token" else None,
                )
                # "token": already this micro-batch's share of the global token mean; "sequence": a
                # mean over its sequences, weighted by its share of the global batch's sequences.
                scale = 1.0 if cfg.normalization == "token" else len(idx) / n_seqs
                (res.loss * scale * env.world_size).backward()
            sums += torch.stack(
                [
                    res.loss.detach() * scale,
                    res.policy_loss * scale,
                    res.kl * scale,
                    res.clip_frac * mask.sum(),
                ]
            )
        lengths = [len(x) for x in seqs]  # prompts too: the throughput counts what the model processed
        trained = torch.tensor(
            [float(sum(lengths)), model_flops(self.model_config, lengths)], device=env.device
        )
        values = all_reduce_sum(torch.cat([sums, trained, roll.sums(env.device).float()]))  # one collective
        outcome = apply_update([self.optim.update_part], values, guard)
        loss, policy_loss, kl, clipped, n_tokens, flops, *rollout = outcome.values
        return {
            "loss": loss,
            **rollout_metrics(rollout),
            "policy_loss": policy_loss,
            "kl": kl,
            "clip_frac": clipped / float(n_resp),
            **outcome.record(),
            "lr": lr,
            "n_tokens": int(n_tokens),
            "model_flops": flops,
        }
