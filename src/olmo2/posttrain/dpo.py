"""``olmo2 dpo CONFIG``: preference tuning, length-normalised DPO with β = 5 by default (spec §6.3).

The reference policy is the initial model, frozen; its log-probs of every chosen and rejected response
are computed once before training (the policy *is* the reference then, so no second copy is kept; the
ranks split the pairs) and cached in memory and in ``OUT_DIR/reference_logps.pt``. A rerun with the
same model, data and length reuses that file instead of recomputing, and so does a resumed run.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from olmo2.model.loss import shift_labels
from olmo2.posttrain.common import (
    PostTrainConfig,
    StageRun,
    StageRunConfig,
    fit_stage,
    load_policy,
    load_posttrain_config,
    posttrain_optim,
    posttrain_schedule,
    stage_run,
    stage_run_config,
)
from olmo2.posttrain.data import PreferenceExample, collate, load_preferences
from olmo2.posttrain.losses import dpo_loss
from olmo2.train.distributed import all_gather_cat, all_reduce_sum, broadcast_object
from olmo2.train.engine import Part, ScheduledOptimizer, SpikeGuard, TrainModule, apply_update, chunks
from olmo2.train.monitor import model_flops
from olmo2.train.optim import OptimConfig
from olmo2.train.runtime import autocast, sync_gradients
from olmo2.train.schedule import ScheduleConfig

__all__ = ["DPOConfig", "DPOModule", "load_dpo_config", "train_dpo"]


@dataclass
class DPOConfig(PostTrainConfig):
    """Defaults follow spec §6.3: 1 epoch, 2048 tokens, batch 128, linear LR, 10% warmup, the 7B's LR."""

    run: StageRunConfig = field(default_factory=stage_run_config("runs/dpo"))
    optim: OptimConfig = field(default_factory=lambda: posttrain_optim(1e-6))
    schedule: ScheduleConfig = field(default_factory=lambda: posttrain_schedule(0.1))
    max_seq_len: int = 2048
    batch_size: int = 128
    micro_batch_size: int = 2  # pairs per forward (each pair is two sequences)
    loss_type: Literal["dpo_norm", "dpo"] = "dpo_norm"
    beta: float | None = None  # None: 5 for dpo_norm, 0.1 for dpo
    label_smoothing: float = 0.0
    train_on: Literal["all", "last"] = "all"


def load_dpo_config(path=None, overrides: list[str] | None = None) -> DPOConfig:
    return load_posttrain_config(DPOConfig, path, overrides)


def _pair_logps(model, pairs: list[PreferenceExample], run: StageRun) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response log-probs [2, b] (chosen row, rejected row) and response token counts [2, b]."""
    b = collate([p.chosen for p in pairs] + [p.rejected for p in pairs])
    device = run.env.device
    with autocast(device, run.dtype):
        logps, mask = model(
            b.input_ids.to(device), labels=shift_labels(b.labels).to(device), target_logps=True
        )
    return logps.sum(-1).view(2, -1), mask.sum(-1).view(2, -1)


@torch.no_grad()
def reference_logps(model, pairs: list[PreferenceExample], run: StageRun) -> dict[str, torch.Tensor]:
    """The frozen model's summed log-probs of each pair's responses, in data order (on CPU); the
    pairs are split over the ranks (equal shares, the last padded) and the results gathered."""
    env = run.env
    per_rank = math.ceil(len(pairs) / env.world_size)
    mine = [min(i, len(pairs) - 1) for i in range(env.rank * per_rank, (env.rank + 1) * per_rank)]
    was_training = model.training
    model.eval()
    parts = [
        _pair_logps(model, [pairs[i] for i in mb], run)[0].float()
        for mb in chunks(mine, run.cfg.micro_batch_size)
    ]
    model.train(was_training)
    both = all_gather_cat(torch.cat(parts, dim=1).T.contiguous())[: len(pairs)].cpu()  # [pairs, 2]
    return {"chosen": both[:, 0].contiguous(), "rejected": both[:, 1].contiguous()}


def _cache_key(model_dir: Path, pairs: list[PreferenceExample]) -> str:
    """Changes whenever the reference model's weights file set, the data or the tokenisation do."""
    h = hashlib.sha256()
    for f in sorted(model_dir.glob("*.safetensors")) + sorted(model_dir.glob("*.bin")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    for p in pairs:
        h.update(str((p.chosen.input_ids, p.chosen.labels, p.rejected.input_ids, p.rejected.labels)).encode())
    return h.hexdigest()


def cached_reference_logps(model, pairs, run: StageRun) -> tuple[dict[str, torch.Tensor], bool]:
    """``(ref, loaded)``: from ``OUT_DIR/reference_logps.pt`` when its key matches, else computed (by
    ``model``, which must still hold the reference weights) and saved. A resumed run always finds the
    file its first start wrote, so the reference stays the initial model."""
    path = run.out / "reference_logps.pt"
    key = _cache_key(run.model_dir, pairs)
    saved = None
    if run.env.is_main and path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        saved = saved if saved.get("key") == key else None
    saved = broadcast_object(saved)
    if saved is not None:
        run.log(f"dpo: reusing reference log-probs from {path}")
        return {"chosen": saved["chosen"], "rejected": saved["rejected"]}, True
    ref = reference_logps(model, pairs, run)
    if run.env.is_main:
        tmp = path.with_suffix(".pt.tmp")
        torch.save({"key": key, **ref}, tmp)
        tmp.replace(path)
    return ref, False


class DPOModule(TrainModule):
    """One DPO step against cached reference log-probs: the loss is the mean over the global batch's
    pairs (each rank backpropagates its pairs' share)."""

    console_keys = ("margin", "accuracy")

    def __init__(self, run: StageRun, model, pairs: list[PreferenceExample], total_steps: int):
        cfg = run.cfg
        self.run, self.cfg, self.model, self.pairs = run, cfg, model, pairs
        # The optimizer takes the parameters before any forward: FSDP2 leaves the root's parameters
        # gathered after a forward without backward, and AdamW must hold the sharded ones.
        self.optim = ScheduledOptimizer(model, cfg.optim, cfg.schedule, total_steps)
        self.model_config = model.config
        self.peak_flops = run.peak_flops
        self.ref, self.reference_loaded = cached_reference_logps(model, pairs, run)  # model = reference now

    def parts(self) -> dict[str, Part]:
        return {"model": Part(self.model, self.optim.optimizer)}

    def train_step(self, batch: list[int], step: int, guard: SpikeGuard | None) -> dict:
        cfg, env = self.cfg, self.run.env
        lr = self.optim.set_lr(step)
        micro = chunks(batch, cfg.micro_batch_size)
        # [loss, margin, accuracy, chosen log-p, rejected log-p] summed over pairs, then the tokens
        # run forward and backward (prompts included: the throughput counts what the model processed)
        # and their model FLOPs
        sums = torch.zeros(7, device=env.device)
        for i, mb in enumerate(micro):
            with sync_gradients(self.model, i == len(micro) - 1):
                s, n = _pair_logps(self.model, [self.pairs[j] for j in mb], self.run)
                idx = torch.tensor(mb)
                res = dpo_loss(
                    s[0],
                    s[1],
                    self.ref["chosen"][idx].to(env.device),
                    self.ref["rejected"][idx].to(env.device),
                    beta=cfg.beta,
                    loss_type=cfg.loss_type,
                    chosen_ntokens=n[0],
                    rejected_ntokens=n[1],
                    label_smoothing=cfg.label_smoothing,
                )
                (res.losses.sum() / cfg.batch_size * env.world_size).backward()
            s = s.detach()
            lengths = [len(seq) for p in (self.pairs[j] for j in mb) for seq in (p.chosen, p.rejected)]
            sums += torch.stack(
                [
                    res.losses.detach().sum(),
                    res.margins.sum(),
                    (res.margins > 0).float().sum(),
                    s[0].sum(),
                    s[1].sum(),
                    torch.tensor(float(sum(lengths)), device=env.device),
                    torch.tensor(model_flops(self.model_config, lengths), device=env.device),
                ]
            )
        sums = all_reduce_sum(sums)
        outcome = apply_update(
            [self.optim.update_part], torch.cat([sums[:5] / cfg.batch_size, sums[5:]]), guard
        )
        loss, margin, accuracy, chosen, rejected, n_tokens, flops = outcome.values
        return {
            "loss": loss,
            "margin": margin,
            "accuracy": accuracy,
            "chosen_logps": chosen,
            "rejected_logps": rejected,
            **outcome.record(),
            "lr": lr,
            "n_tokens": int(n_tokens),
            "model_flops": flops,
        }


def train_dpo(cfg: DPOConfig) -> dict:
    """Preference tuning, length-normalised DPO with beta 5 by default (spec §6.3), on the training engine,
    resumed from ``out_dir``'s latest checkpoint if it has one: writes metrics.jsonl, reference_logps.pt,
    checkpoints and model/.

    Returns the run's summary."""
    with stage_run(cfg) as run:
        pairs = run.load_records(
            load_preferences, "preferences", max_length=cfg.max_seq_len, train_on=cfg.train_on
        )
        data = run.batches(len(pairs), "preference pairs")
        total = run.epoch_steps(data)
        module = DPOModule(run, load_policy(run), pairs, total)
        records = fit_stage(run, module, data, total)
        keys = ("loss", "margin", "accuracy")
        summary = {
            "steps": len(records),
            "reference_cache": "loaded" if module.reference_loaded else "computed",
            "first": {k: records[0][k] for k in keys} if records else None,
            "final": {k: records[-1][k] for k in keys} if records else None,
            "model": str(run.out / "model"),
            "pairs": len(pairs),
        }
        run.write_json("summary.json", summary)
        return summary
