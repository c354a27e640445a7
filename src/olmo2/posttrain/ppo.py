"""PPO for ``olmo2 rlvr`` (``algorithm: ppo``): the 7B/13B RLVR algorithm (spec §6.4, Tab 18).

Each step (one rollout):

1. sample ``group_size`` responses per prompt with the KV-cache generator and score them with the
   verifiers (``rlvr.sample_rollout``, shared with GRPO);
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
The value model is not saved: the spec re-initialises it for every RLVR pass.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import nn

from olmo2.model.transformer import Olmo2
from olmo2.posttrain.common import StepOptimizer, autocast, batched, run_steps
from olmo2.posttrain.data import collate
from olmo2.posttrain.losses import (
    gae,
    grpo_loss,
    kl_penalty,
    masked_mean,
    ppo_token_rewards,
    value_loss,
    whiten,
)
from olmo2.posttrain.rlvr import RLRun, RLVRConfig, Rollout

__all__ = ["PPOBatch", "PPOLossOutput", "ValueModel", "ppo_advantages", "ppo_loss", "train_ppo"]


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
    token t+1 (``common.token_logps``' layout; ``mask``: response tokens), and values at t are those of
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


class PPORun(RLRun):
    """A PPO run: ``RLRun`` (policy, reference, prompts, final save) plus the value model and the two
    optimizers."""

    def __init__(self, cfg: RLVRConfig):
        super().__init__(cfg)
        from olmo2.model.checkpoint import load_model

        body = load_model(cfg.model, device=self.device, dtype=torch.float32)
        self.value_model = ValueModel(body, init_std=cfg.value_head_init_std, seed=cfg.seed).train()
        self.updates = cfg.ppo_epochs * cfg.num_mini_batches  # optimizer steps per rollout
        total = self.n_steps * self.updates
        self.policy_opt = StepOptimizer(cfg, self.model, total)
        self.value_opt = StepOptimizer(cfg, self.value_model, total, lr=cfg.value_lr or cfg.lr)
        self._shuffle = torch.Generator().manual_seed(cfg.seed + 1)

    def values(self, ids: torch.Tensor) -> torch.Tensor:
        with autocast(self.cfg, self.device):
            return self.value_model(ids)

    @torch.no_grad()
    def score(self, roll: Rollout) -> tuple[PPOBatch, dict]:
        """Rollout log-probs, reference log-probs and values (micro-batched, no gradients), then the
        advantages and returns; with the rollout's KL and value statistics."""
        cfg, device = self.cfg, self.device
        seqs = roll.sequences()
        b = collate(seqs)
        ids, labels = b.input_ids.to(device), b.labels.to(device)
        lengths = torch.tensor([len(x) for x in seqs])
        logps, ref, values = (torch.zeros(ids.shape, device=device) for _ in range(3))
        mask = torch.zeros_like(logps, dtype=torch.bool)
        self.model.eval()
        self.value_model.eval()
        for idx in batched(list(range(len(seqs))), cfg.micro_batch_size):
            w = int(lengths[idx].max())
            part_ids, part_labels = ids[idx, :w], labels[idx, :w]
            logps[idx, :w], mask[idx, :w] = self.logps(self.model, part_ids, part_labels)
            if self.ref is not None:
                ref[idx, :w] = self.logps(self.ref, part_ids, part_labels)[0]
            values[idx, :w] = self.values(part_ids) * mask[idx, :w]
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
            whiten_advantages=cfg.whiten_advantages,
        )
        stats = {
            "kl": float(masked_mean(kl_penalty(logps, ref, cfg.kl_estimator), mask)),
            "non_score_reward": float((rewards.sum(-1) - scores).mean()),
            "value_mean": float(masked_mean(values, mask)),
            "return_mean": float(masked_mean(returns, mask)),
        }
        return PPOBatch(ids, labels, mask, logps, values, adv, returns, lengths), stats

    def update(self, batch: PPOBatch, step: int) -> dict:
        """``ppo_epochs`` × ``num_mini_batches`` optimizer steps on ``batch``; the mean statistics."""
        cfg = self.cfg
        logged = ("policy_loss", "value_loss", "clipfrac", "vf_clipfrac", "approx_kl")
        sums = dict.fromkeys((*logged, "grad_norm", "value_grad_norm"), 0.0)
        lrs = []
        k = (step - 1) * self.updates
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(batch.input_ids.shape[0], generator=self._shuffle)
            for mini in order.chunk(cfg.num_mini_batches):
                k += 1
                lrs.append(self.policy_opt.begin(k))
                self.value_opt.begin(k)
                n_tokens = batch.mask[mini].sum().clamp(min=1).float()
                for idx in batched(mini.tolist(), cfg.micro_batch_size):
                    part = batch.rows(idx)
                    logps, _ = self.logps(self.model, part.input_ids, part.labels)
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
                    out.loss.backward()
                    for name in logged:
                        sums[name] += float(getattr(out, name))
                sums["grad_norm"] += self.policy_opt.step()
                sums["value_grad_norm"] += self.value_opt.step()
        return {**{name: v / self.updates for name, v in sums.items()}, "lr": lrs[0]}


def train_ppo(cfg: RLVRConfig) -> dict:
    """PPO RLVR; writes what GRPO writes (``metrics.jsonl`` with the rollout's ``reward_mean``, ``kl``,
    ... plus ``value_loss``, ``vf_clipfrac``, ``clipfrac``, ``approx_kl``; ``rewards.png``; ``model/``)."""
    if cfg.algorithm != "ppo":
        raise ValueError(f"train_ppo needs algorithm: ppo, got {cfg.algorithm!r}")
    run = PPORun(cfg)

    def step_fn(_item, step: int) -> dict:
        roll = run.rollout(step)
        batch, stats = run.score(roll)
        return {**roll.metrics(), **stats, **run.update(batch, step)}

    records = run_steps(cfg, [None] * run.n_steps, step_fn, out_dir=run.out)
    return run.finish(records)
