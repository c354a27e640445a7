"""PPO for ``olmo2 rlvr`` (``algorithm: ppo``): the 7B/13B RLVR algorithm (spec §6.4, Tab 18).

Each step (one rollout):

1. sample ``group_size`` responses per prompt with the KV-cache generator and score them with the
   verifiers (``rollout.RolloutSampler``, shared with GRPO);
2. without gradients: the rollout policy's token log-probs, the frozen reference's, and the value
   model's values V(s_t) (the value of the state before each response token);
3. per-token rewards −β·KL(π‖π_ref) plus the score on the last token (``ppo_token_rewards``; β 0.05
   and the sampled log-ratio ``k1`` by default, as open-instruct's PPO), GAE with γ 1, λ 0.95
   (``gae``), advantages whitened over the rollout (``whiten``);
4. ``ppo_epochs`` passes over the rollout in a fresh order, ``num_mini_batches`` optimizer steps per
   pass, each on the clipped policy loss plus ``vf_coef`` × the clipped value loss (``ppo_loss``). The
   policy and the value model have their own AdamW (``value_lr``, default ``lr``), schedule and
   gradient clipping, stepped together, as open-instruct's two DeepSpeed engines.

**The value model.** The policy's architecture without its LM head, with a scalar linear head on the
final-norm hidden states, initialised from the starting checkpoint, and the head from zeros (or
N(0, ``value_head_init_std``²)). Tülu 3 initialised the value model from a reward model trained on
on-policy preferences (spec §6.4); we have none, so at the first step the values are 0 and the
advantages are the (γλ-discounted) returns, whitened (a batch-mean baseline) until the head has learned.
The value model is in every mid-run checkpoint (so a resume is exact) but not in the final ``model/``:
the spec re-initialises it for every RLVR pass. Runs on the training engine like GRPO; the advantage
whitening and every mean it logs are over the whole rollout, on all ranks.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import nn

from olmo2.model.checkpoint import load_model
from olmo2.model.loss import shift_labels
from olmo2.model.transformer import Olmo2
from olmo2.posttrain.common import StageRun
from olmo2.posttrain.data import RLPrompt, collate
from olmo2.posttrain.losses import (
    gae,
    grpo_loss,
    kl_penalty,
    masked_mean,
    ppo_token_rewards,
    value_loss,
    whiten,
)
from olmo2.posttrain.rollout import Rollout, RolloutSampler, rollout_metrics, sequence_logps
from olmo2.train.distributed import all_reduce_sum
from olmo2.train.engine import Part, ScheduledOptimizer, SpikeGuard, TrainModule, apply_update, chunks
from olmo2.train.monitor import flops_per_token
from olmo2.train.runtime import autocast, build_parallel_model, sync_gradients

__all__ = ["PPOBatch", "PPOLossOutput", "PPOModule", "ValueModel", "ppo_advantages", "ppo_loss"]


class ValueModel(nn.Module):
    """V(s): a causal LM's backbone (its LM head dropped) and a linear head on its final hidden states."""

    def __init__(self, body: Olmo2, *, init_std: float = 0.0, seed: int = 0):
        super().__init__()
        body.lm_head = None  # vocab × d_model parameters the value model never uses
        self.body = body
        self.head = nn.Linear(body.config.d_model, 1, device=body.model.norm.weight.device)
        with torch.no_grad():
            self.head.bias.zero_()
            if init_std > 0:
                gen = torch.Generator().manual_seed(seed)
                w = torch.randn(self.head.weight.shape, generator=gen) * init_std
                self.head.weight.copy_(w)
            else:
                self.head.weight.zero_()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Values [B, T] (fp32): position t's value is that of the state after token t."""
        return self.head(self.body.hidden_states(input_ids)).squeeze(-1).float()


# ------------------------------------------------------------------------------ pure pieces


def ppo_advantages(
    scores: torch.Tensor,
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    *,
    beta: float,
    kl_estimator: str = "k1",
    gamma: float = 1.0,
    lam: float = 0.95,
    whiten_advantages: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(advantages, returns, token_rewards)``, each [B, T], from a rollout's scores [B] and the rollout
    policy's, the reference's and the value model's per-token tensors [B, T] (0 outside ``mask``).
    Returns are GAE advantages plus values, before whitening (the value targets)."""
    rewards = ppo_token_rewards(scores, logps, ref_logps, mask, kl_coef=beta, estimator=kl_estimator)
    adv, returns = gae(rewards, values, mask, gamma=gamma, lam=lam)
    if whiten_advantages:
        adv = whiten(adv, mask)
    return adv, returns, rewards


@dataclass
class PPOLossOutput:
    """``loss`` to backpropagate (policy + ``vf_coef`` × value); the rest detached, for logging. Every
    field is this micro-batch's share of the mini-batch mean (its tokens / ``num_tokens``), so the
    fields of a mini-batch's micro-batches add up to the mini-batch's values."""

    loss: torch.Tensor
    policy_loss: torch.Tensor
    value_loss: torch.Tensor
    clipfrac: torch.Tensor
    vf_clipfrac: torch.Tensor
    approx_kl: torch.Tensor


def ppo_loss(
    logps: torch.Tensor,
    values: torch.Tensor,
    old_logps: torch.Tensor,
    old_values: torch.Tensor,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_eps: float = 0.2,
    value_clip_eps: float = 0.2,
    vf_coef: float = 0.1,
    num_tokens: float | torch.Tensor | None = None,
) -> PPOLossOutput:
    """Clipped policy loss −min(ρA, clip(ρ, 1±ε)A) and clipped value loss ½·max((V − R)²,
    (clip(V, V_old ± ε_v) − R)²), each a mean over response tokens; ``num_tokens`` is the count of the
    whole mini-batch when it is split into micro-batches (default: this batch's). ``approx_kl`` is
    ½·mean((logπ − logπ_old)²), as open-instruct logs it."""
    n = mask.sum().to(logps.dtype)
    share = n / num_tokens if num_tokens is not None else torch.ones_like(n)
    policy = grpo_loss(
        logps, advantages, mask, old_logps=old_logps, beta=0.0, clip_eps=clip_eps, num_tokens=num_tokens
    )
    vf, vf_clipfrac = value_loss(values, old_values, returns, mask, clip_eps=value_clip_eps)
    approx_kl = 0.5 * masked_mean((logps.detach() - old_logps).square(), mask)
    return PPOLossOutput(
        policy.loss + vf_coef * vf * share,
        policy.policy_loss,
        (vf * share).detach(),
        policy.clip_frac * share,
        vf_clipfrac.detach() * share,
        approx_kl * share,
    )


@dataclass
class PPOBatch:
    """A scored rollout laid out for the updates, all [N, T]: per-token tensors at position t are about
    token t+1 (``Olmo2.forward(target_logps=True)``'s layout; ``mask``: response tokens), and values at t are those of
    the state after token t, i.e. before token t+1."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    mask: torch.Tensor
    old_logps: torch.Tensor
    old_values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    lengths: torch.Tensor  # [N] tokens per row (prompt + response), on the CPU

    def rows(self, idx: list[int]) -> PPOBatch:
        """The rows ``idx``, cut to the longest of them."""
        width = int(self.lengths[idx].max())
        cut = (getattr(self, f.name)[idx, :width] for f in fields(self) if f.name != "lengths")
        return PPOBatch(*cut, lengths=self.lengths[idx])


# ------------------------------------------------------------------------------ training


def global_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``losses.whiten`` with the mean and variance over every rank's masked entries."""
    m = mask.to(x.dtype)
    total = all_reduce_sum(torch.stack([(x * m).sum(), m.sum()]))
    mean = total[0] / total[1].clamp(min=1.0)
    var = all_reduce_sum(((x - mean).square() * m).sum()) / total[1].clamp(min=1.0)
    return (x - mean) * torch.rsqrt(var + eps) * m


class PPOModule(TrainModule):
    """One PPO step: a rollout, its scoring (log-probs, reference, values, advantages), then
    ``ppo_epochs`` × ``num_mini_batches`` updates of the policy and the value model together."""

    console_keys = ("reward_mean", "kl", "value_loss")

    def __init__(self, run: StageRun, model, ref, prompts: list[RLPrompt], total_steps: int):
        cfg, env = run.cfg, run.env
        rows = cfg.batch_size // env.world_size * cfg.group_size
        if rows % cfg.num_mini_batches:
            raise ValueError(
                f"num_mini_batches ({cfg.num_mini_batches}) must divide each rank's {rows} rollout rows "
                f"(batch_size × group_size / {env.world_size} ranks)"
            )
        self.run, self.cfg, self.model, self.ref = run, cfg, model, ref
        self.sample = RolloutSampler(run, model, prompts)
        body = load_model(run.model_dir, device=env.device, dtype=torch.float32)
        value_model = ValueModel(body, init_std=cfg.value_head_init_std, seed=cfg.seed)
        self.value_model = build_parallel_model(
            value_model,
            env=env,
            dtype=run.dtype,
            parallel=cfg.parallel.strategy,
            hsdp_replicas=cfg.parallel.hsdp_replicas,
            activation_checkpointing=cfg.parallel.activation_checkpointing,
            compile=cfg.runtime.compile,
            backbone=body,
        )
        self.updates = cfg.ppo_epochs * cfg.num_mini_batches  # optimizer steps per rollout
        total = total_steps * self.updates
        self.policy_opt = ScheduledOptimizer(model, cfg.optim, cfg.schedule, total)
        value_optim = replace(cfg.optim, lr=cfg.value_lr or cfg.optim.lr)
        self.value_opt = ScheduledOptimizer(self.value_model, value_optim, cfg.schedule, total)
        self.flops_per_token = flops_per_token(model.config, cfg.max_prompt_len + cfg.max_new_tokens)
        self.peak_flops = run.peak_flops

    def parts(self) -> dict[str, Part]:
        return {
            "model": Part(self.model, self.policy_opt.optimizer),
            "value": Part(self.value_model, self.value_opt.optimizer),
        }

    def values(self, ids: torch.Tensor) -> torch.Tensor:
        with autocast(self.run.env.device, self.run.dtype):
            return self.value_model(ids)

    @torch.no_grad()
    def score(self, roll: Rollout) -> tuple[PPOBatch, torch.Tensor]:
        """Rollout log-probs, reference log-probs and values (micro-batched, no gradients), then the
        advantages and returns; with this rank's sums for the logged statistics."""
        cfg, device = self.cfg, self.run.env.device
        seqs = roll.sequences()
        b = collate(seqs)
        ids, labels = b.input_ids.to(device), b.labels.to(device)
        lengths = torch.tensor([len(x) for x in seqs])
        logps, ref, values = (torch.zeros(ids.shape, device=device) for _ in range(3))
        mask = torch.zeros_like(logps, dtype=torch.bool)
        self.model.eval()
        self.value_model.eval()
        for idx in chunks(range(len(seqs)), cfg.micro_batch_size):
            w = int(lengths[idx].max())
            rows = [seqs[i] for i in idx]
            logps[idx, :w], mask[idx, :w] = sequence_logps(self.model, rows, self.run)
            if self.ref is not None:
                ref[idx, :w] = sequence_logps(self.ref, rows, self.run)[0]
            values[idx, :w] = self.values(ids[idx, :w]) * mask[idx, :w]
        self.model.train()
        self.value_model.train()
        if self.ref is None:  # beta 0: no KL term
            ref = logps
        scores = roll.scores.to(device)
        adv, returns, rewards = ppo_advantages(
            scores,
            logps,
            ref,
            values,
            mask,
            beta=cfg.beta,
            kl_estimator=cfg.kl_estimator,
            gamma=cfg.gamma,
            lam=cfg.lam,
            whiten_advantages=False,
        )
        if cfg.whiten_advantages:
            adv = global_whiten(adv, mask)
        m = mask.float()
        sums = torch.stack(
            [
                (kl_penalty(logps, ref, cfg.kl_estimator) * m).sum(),
                m.sum(),
                (rewards.sum(-1) - scores).sum(),
                (values * m).sum(),
                (returns * m).sum(),
            ]
        )
        return PPOBatch(ids, labels, mask, logps, values, adv, returns, lengths), sums

    def train_step(self, batch: list[int], step: int, guard: SpikeGuard | None) -> dict:
        env = self.run.env
        roll = self.sample(batch, step)
        ppo_batch, score_sums = self.score(roll)
        kl, n_tokens, non_score, value_sum, return_sum, *rollout = all_reduce_sum(
            torch.cat([score_sums, roll.sums(env.device).float()])
        ).tolist()
        n_rows = rollout[-1]
        record = {
            **rollout_metrics(rollout),
            "kl": kl / max(n_tokens, 1.0),
            "non_score_reward": non_score / n_rows,
            "value_mean": value_sum / max(n_tokens, 1.0),
            "return_mean": return_sum / max(n_tokens, 1.0),
        }
        trained = all_reduce_sum(ppo_batch.lengths.sum().float().to(env.device))  # prompts too
        return {**record, **self.update(ppo_batch, step, guard), "n_tokens": int(trained)}

    def update(self, batch: PPOBatch, step: int, guard: SpikeGuard | None) -> dict:
        """``ppo_epochs`` × ``num_mini_batches`` optimizer steps on ``batch``; the mean statistics."""
        cfg, env = self.cfg, self.run.env
        logged = ("policy_loss", "value_loss", "clipfrac", "vf_clipfrac", "approx_kl")
        sums = dict.fromkeys((*logged, "grad_norm", "value_grad_norm"), 0.0)
        lrs, skip_reason = [], None
        k = (step - 1) * self.updates
        n_rows = batch.input_ids.shape[0]
        for epoch in range(cfg.ppo_epochs):
            shuffle = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 101 + epoch)
            order = torch.randperm(n_rows, generator=shuffle)
            for mini in order.chunk(cfg.num_mini_batches):
                k += 1
                lrs.append(self.policy_opt.set_lr(k))
                self.value_opt.set_lr(k)
                n_tokens = all_reduce_sum(batch.mask[mini].sum().float()).clamp(min=1.0)
                micro = chunks(mini.tolist(), cfg.micro_batch_size)
                totals = torch.zeros(len(logged), device=env.device)
                for i, idx in enumerate(micro):
                    part = batch.rows(idx)
                    last = i == len(micro) - 1
                    with sync_gradients(self.model, last), sync_gradients(self.value_model, last):
                        logps, _ = self._logps(part)
                        out = ppo_loss(
                            logps,
                            self.values(part.input_ids),
                            part.old_logps,
                            part.old_values,
                            part.advantages,
                            part.returns,
                            part.mask,
                            clip_eps=cfg.clip_eps,
                            value_clip_eps=cfg.value_clip_eps,
                            vf_coef=cfg.vf_coef,
                            num_tokens=n_tokens,
                        )
                        (out.loss * env.world_size).backward()
                    totals += torch.stack([getattr(out, name).detach() for name in logged])
                totals = all_reduce_sum(totals)
                outcome = apply_update(
                    [self.policy_opt.update_part, self.value_opt.update_part],
                    torch.cat([(totals[0] + cfg.vf_coef * totals[1]).reshape(1), totals]),
                    guard,
                )
                skip_reason = skip_reason or outcome.skip_reason
                for name, value in zip(logged, outcome.values[1:], strict=True):
                    sums[name] += value
                sums["grad_norm"] += outcome.grad_norms[0]
                sums["value_grad_norm"] += outcome.grad_norms[1]
        record = {**{name: v / self.updates for name, v in sums.items()}, "lr": lrs[0]}
        record["loss"] = record["policy_loss"] + cfg.vf_coef * record["value_loss"]
        record["skipped"] = skip_reason is not None
        if skip_reason:
            record["skip_reason"] = skip_reason
        return record

    def _logps(self, part: PPOBatch) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast(self.run.env.device, self.run.dtype):
            return self.model(
                part.input_ids,
                labels=shift_labels(part.labels),
                target_logps=True,
                temperature=self.cfg.temperature,
            )
