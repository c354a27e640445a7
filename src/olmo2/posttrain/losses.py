"""Post-training losses: SFT, DPO / length-normalised DPO (spec §6.3), GRPO (§6.5) and PPO pieces (§6.4).

Conventions: ``labels`` follow Hugging Face (aligned with ``input_ids``, -100 = no loss; position t's
logits predict ``labels[t+1]``), so they come straight from ``data.collate``. Log-probabilities are
computed in fp32 whatever the logits' dtype. Every function takes tensors only, no model, so each is
checked against TRL 1.16 on identical inputs (tests/posttrain/test_losses_trl_parity.py).

Choices where the recipe and TRL differ (all selectable; defaults follow open-instruct, which trained
OLMo 2):

* SFT ``reduction="sum"`` (spec §6.2: summed over tokens); ``"mean"`` is HF/TRL's per-token mean.
* ``dpo_norm`` rewards are β·(mean logπ − mean logπ_ref), as open-instruct logs them; TRL's
  ``sigmoid_norm`` has the same loss but logs the unnormalised β·(Σ logπ − Σ logπ_ref).
* GRPO advantages use the population std and ε = 1e-8 (open-instruct ``grpo_fast``); TRL uses the sample
  std and ε = 1e-4 (``unbiased=True, eps=1e-4`` reproduces it).
* GRPO loss ``normalization="token"``: one mean over every response token of the batch (open-instruct's
  ``masked_mean``; TRL ``loss_type="bnpo"``). ``"sequence"`` averages per sequence first (TRL ``"grpo"``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from olmo2.model.loss import IGNORE_INDEX

__all__ = [
    "DPO_BETA",
    "DPO_NORM_BETA",
    "DPOOutput",
    "GRPOOutput",
    "dpo_loss",
    "gae",
    "group_advantages",
    "grpo_loss",
    "kl_penalty",
    "masked_mean",
    "ppo_token_rewards",
    "sequence_logprobs",
    "sft_loss",
    "token_logprobs",
    "value_loss",
    "whiten",
]

DPO_NORM_BETA = 5.0  # spec §6.3
DPO_BETA = 0.1  # standard DPO default (open-instruct, TRL)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` where ``mask``; 0 (not NaN) where nothing is selected."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


# -------------------------------------------------------------------------------- log-probs


def token_logprobs(
    logits: torch.Tensor, labels: torch.Tensor, *, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logps, mask)``, both [B, T-1]: log p(labels[:, t+1] | ≤ t) and where a label exists.

    ``logps`` is 0 where ``mask`` is False. ``temperature`` divides the logits first (as sampling did,
    which RL log-prob ratios must match).
    """
    logits = logits[:, :-1].float()
    if temperature != 1.0:
        logits = logits / temperature
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    picked = logits.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    logps = picked - torch.logsumexp(logits, dim=-1)
    return logps.masked_fill(~mask, 0.0), mask


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence: the summed log-prob of its labelled tokens [B] and their number [B] (int64)."""
    logps, mask = token_logprobs(logits, labels)
    return logps.sum(-1), mask.sum(-1)


# --------------------------------------------------------------------------------------- SFT


def sft_loss(
    logits: torch.Tensor, labels: torch.Tensor, *, reduction: str = "sum"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy on labelled (assistant) tokens: ``(loss, n_tokens)``.

    ``"sum"`` (the recipe) weights every token equally across a gradient-accumulated batch: add the
    micro-batch sums. ``"mean"`` divides by this micro-batch's tokens, as HF/TRL do. With large
    vocabularies prefer ``Olmo2.forward(input_ids, labels=shift_labels(labels)).ce_loss``: the same sum,
    chunked, without full logits.
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    logps, mask = token_logprobs(logits, labels)
    n = mask.sum()
    total = -logps.sum()
    return (total if reduction == "sum" else total / n.clamp(min=1)), n


# --------------------------------------------------------------------------------------- DPO


@dataclass
class DPOOutput:
    """``loss``: mean over pairs; the rest per pair [B] (``accuracy`` is a 0-dim fraction)."""

    loss: torch.Tensor
    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor

    @property
    def margins(self) -> torch.Tensor:
        return self.chosen_rewards - self.rejected_rewards

    @property
    def accuracy(self) -> torch.Tensor:
        return (self.chosen_rewards > self.rejected_rewards).float().mean()


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float | None = None,
    loss_type: str = "dpo_norm",
    chosen_ntokens: torch.Tensor | None = None,
    rejected_ntokens: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> DPOOutput:
    """Sigmoid DPO on summed response log-probs [B] (``sequence_logprobs``).

    ``loss_type="dpo"``: L = −log σ(β[(logπ_w − logπref_w) − (logπ_l − logπref_l)]), β default 0.1.
    ``loss_type="dpo_norm"`` (OLMo 2): the same on per-token means (each sum divided by its response's
    token count), β default 5. ``label_smoothing`` ε gives conservative DPO: (1−ε)·L(β) + ε·L(−β).
    """
    if loss_type not in ("dpo", "dpo_norm"):
        raise ValueError(f"loss_type must be 'dpo' or 'dpo_norm', got {loss_type!r}")
    if beta is None:
        beta = DPO_NORM_BETA if loss_type == "dpo_norm" else DPO_BETA
    chosen = policy_chosen_logps.float() - ref_chosen_logps.float()
    rejected = policy_rejected_logps.float() - ref_rejected_logps.float()
    if loss_type == "dpo_norm":
        if chosen_ntokens is None or rejected_ntokens is None:
            raise ValueError("dpo_norm needs chosen_ntokens and rejected_ntokens")
        chosen = chosen / chosen_ntokens.clamp(min=1)
        rejected = rejected / rejected_ntokens.clamp(min=1)
    logits = beta * (chosen - rejected)
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return DPOOutput(losses.mean(), losses, (beta * chosen).detach(), (beta * rejected).detach())


# -------------------------------------------------------------------------------------- GRPO


def group_advantages(
    rewards: torch.Tensor, group_size: int, *, scale: bool = True, eps: float = 1e-8, unbiased: bool = False
) -> torch.Tensor:
    """(r − mean_group) / (std_group + eps) for rewards [N] laid out group after group (N = P·G).

    A group whose samples all scored the same gets advantage 0: it carries no signal.
    """
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    groups = rewards.float().view(-1, group_size)
    adv = groups - groups.mean(-1, keepdim=True)
    if scale:
        adv = adv / (groups.std(-1, keepdim=True, correction=int(unbiased)) + eps)
    return adv.view(-1)


def kl_penalty(logps: torch.Tensor, ref_logps: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(π‖π_ref) from samples of π: ``k1`` = log r, ``k2`` = ½(log r)², ``k3`` =
    r⁻¹ − 1 + log r with r = π/π_ref (unbiased and ≥ 0; the 1B GRPO runs used it). open-instruct also
    clamps log r to ±40 first; TRL does not, nor do we (it only matters for a policy gone astray)."""
    log_ratio = logps - ref_logps
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.square()
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r} (k1, k2, k3)")


@dataclass
class GRPOOutput:
    """``loss`` to minimise; ``policy_loss`` and ``kl`` (unweighted by β) reduced the same way, and the
    fraction of tokens whose ratio was clipped, for logging."""

    loss: torch.Tensor
    policy_loss: torch.Tensor
    kl: torch.Tensor
    clip_frac: torch.Tensor


def grpo_loss(
    logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    old_logps: torch.Tensor | None = None,
    ref_logps: torch.Tensor | None = None,
    beta: float = 0.01,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    kl_estimator: str = "k3",
    normalization: str = "token",
    num_tokens: float | torch.Tensor | None = None,
    kl_ratio_weight: bool = False,
) -> GRPOOutput:
    """Clipped-ratio policy loss plus β·KL, per token [B, T] then reduced (spec §6.5).

    ``advantages`` are per sequence [B] (``group_advantages``) or per token [B, T]. ``old_logps``
    default to ``logps.detach()`` (one update per rollout: ratio 1, gradient = the policy gradient).
    ``normalization``: ``"token"`` divides the masked sum by the number of response tokens, or by
    ``num_tokens`` when given (the whole batch's count, so gradient-accumulated micro-batches add up);
    ``"sequence"`` averages within each sequence, then over sequences. ``kl_ratio_weight`` multiplies the
    KL term by the ratio (DeepSeek-V3.2's unbiased KL gradient; TRL's default ``use_bias_correction_kl``);
    off by default, as in open-instruct's runs.
    """
    if normalization not in ("token", "sequence"):
        raise ValueError(f"normalization must be 'token' or 'sequence', got {normalization!r}")
    if beta and ref_logps is None:
        raise ValueError("a KL penalty (beta != 0) needs ref_logps")
    mask = mask.to(logps.dtype)
    adv = advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages
    old = logps.detach() if old_logps is None else old_logps
    ratio = torch.exp(logps - old)
    hi = clip_eps if clip_eps_high is None else clip_eps_high
    clipped = torch.clamp(ratio, 1 - clip_eps, 1 + hi)
    pg = -torch.min(ratio * adv, clipped * adv)
    kl = kl_penalty(logps, ref_logps, kl_estimator) if beta else torch.zeros_like(pg)
    if kl_ratio_weight:
        kl = kl * ratio
    clip_frac = masked_mean(((ratio * adv) > (clipped * adv)).to(pg.dtype), mask)

    def reduce(x: torch.Tensor) -> torch.Tensor:
        if normalization == "sequence":
            return masked_mean(x, mask, dim=-1).mean()
        return (x * mask).sum() / (mask.sum().clamp(min=1.0) if num_tokens is None else num_tokens)

    return GRPOOutput(reduce(pg + beta * kl), reduce(pg).detach(), reduce(kl).detach(), clip_frac.detach())


# --------------------------------------------------------------------------------------- PPO


def ppo_token_rewards(
    scores: torch.Tensor,
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    mask: torch.Tensor,
    *,
    kl_coef: float,
    estimator: str = "k1",
) -> torch.Tensor:
    """PPO per-token rewards [B, T]: −β·KL on every response token, plus the sequence's verifiable
    score [B] on its last one (open-instruct's PPO reward shaping). The KL is ``kl_penalty`` with
    ``estimator``; the default ``k1`` is the sampled log-ratio logπ − logπ_ref (open-instruct's
    ``kl1``, what its PPO runs used)."""
    rewards = -kl_coef * kl_penalty(logps, ref_logps, estimator) * mask
    last = (mask.long().cumsum(-1).argmax(-1, keepdim=True)).clamp(min=0)
    return rewards.scatter_add(-1, last, scores.to(rewards.dtype).unsqueeze(-1) * mask.any(-1, keepdim=True))


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over right-padded [B, T] responses: ``(advantages, returns)``.

    δ_t = r_t + γ·V_{t+1} − V_t, A_t = δ_t + γλ·A_{t+1}, with V and A beyond the last token 0.
    """
    mask = mask.to(values.dtype)
    values, rewards = values * mask, rewards * mask
    adv = torch.zeros_like(values)
    next_adv = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        next_value = values[:, t + 1] if t + 1 < values.shape[1] else torch.zeros_like(next_adv)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = (delta + gamma * lam * next_adv) * mask[:, t]
        adv[:, t] = next_adv
    return adv, (adv + values) * mask


def whiten(
    x: torch.Tensor, mask: torch.Tensor, *, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """Normalise ``x`` to zero mean, unit variance over the masked entries (PPO advantage whitening)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean).square(), mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    return (out if shift_mean else out + mean) * mask.to(x.dtype)


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_eps: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss ½·mean(max((V − R)², (clip(V, V_old ± ε) − R)²)) and the clipped fraction."""
    clipped = old_values + (values - old_values).clamp(-clip_eps, clip_eps)
    a, b = (values - returns).square(), (clipped - returns).square()
    return 0.5 * masked_mean(torch.max(a, b), mask), masked_mean((b > a).to(values.dtype), mask)
