"""``olmo2 sft CONFIG``: supervised fine-tuning on chats, loss on assistant tokens only (spec §6.2).

The loss is the chunked cross-entropy of ``olmo2.model.loss.lm_loss`` applied to the target positions'
hidden states only, so the [B, T, 100k] logits never exist and prompt tokens cost no LM-head matmul.
``loss_reduction="sum"`` (the recipe) weights every target token of a global batch equally: the
summed token losses of all micro-batches on all ranks, divided by the batch's target count (a constant
per step, which AdamW is invariant to apart from clipping). ``"mean"`` averages each micro-batch's
mean. Runs on the training engine: ``torchrun`` with FSDP2/DDP, checkpoints, exact resume.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
    stage_run,
    stage_run_config,
)
from olmo2.posttrain.data import PackedRow, SFTExample, collate, load_sft, pack_examples
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
from olmo2.train.optim import OptimConfig
from olmo2.train.runtime import autocast, sync_gradients

__all__ = ["SFTConfig", "SFTModule", "load_sft_config", "train_sft"]


@dataclass
class SFTConfig(PostTrainConfig):
    """Defaults follow spec §6.2 (2 epochs, 4096 tokens, sum loss, 3% warmup, linear, wd 0)."""

    run: StageRunConfig = field(default_factory=stage_run_config("runs/sft", epochs=2))
    optim: OptimConfig = field(default_factory=lambda: posttrain_optim(5e-6))
    max_seq_len: int = 4096
    batch_size: int = 128
    micro_batch_size: int = 4
    loss_reduction: Literal["sum", "mean"] = "sum"
    packing: bool = False  # pack whole examples into rows of max_seq_len (attention kept per example)
    train_on: Literal["all", "last"] = "all"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_seq_len < 2:
            raise ValueError(f"max_seq_len must be >= 2, got {self.max_seq_len}")


def load_sft_config(path=None, overrides: list[str] | None = None) -> SFTConfig:
    return load_posttrain_config(SFTConfig, path, overrides)


class SFTModule(TrainModule):
    """One SFT step: CE on assistant tokens, normalised over the global batch ("sum": every target
    token of the batch weighs the same whatever the micro-batching or the number of ranks; "mean":
    the mean of the micro-batches' means)."""

    def __init__(self, run: StageRun, model, items: list[SFTExample | PackedRow], total_steps: int):
        cfg = run.cfg
        self.run, self.cfg, self.model, self.items = run, cfg, model, items
        self.optim = ScheduledOptimizer(model, cfg.optim, cfg.schedule, total_steps)
        self.model_config = model.config
        self.peak_flops = run.peak_flops

    def parts(self) -> dict[str, Part]:
        return {"model": Part(self.model, self.optim.optimizer)}

    def train_step(self, batch: list[int], step: int, guard: SpikeGuard | None) -> dict:
        cfg, env, model = self.cfg, self.run.env, self.model
        lr = self.optim.set_lr(step)
        micro = chunks([self.items[i] for i in batch], cfg.micro_batch_size)
        collated = [collate(mb, length=cfg.max_seq_len if cfg.packing else None) for mb in micro]
        # Counted on the collated tensors: a Python pass over every label would cost the step time.
        n_targets = global_count(sum(b.n_targets for b in collated), env.device).clamp(min=1.0)
        # [CE summed over targets, tokens (not padding), examples, model FLOPs], over this rank's
        # micro-batches. The FLOPs follow the examples' own lengths, and only targets reach the LM head.
        sums = torch.zeros(4, device=env.device)
        for i, (mb, b) in enumerate(zip(micro, collated, strict=True)):
            kwargs = {}
            if cfg.packing:
                kwargs = {
                    "positions": b.position_ids.to(env.device),
                    "mask": b.attention_mask_4d().to(env.device),
                }
            if cfg.loss_reduction == "sum":
                norm = n_targets
            else:
                norm = torch.tensor(
                    float(max(b.n_targets, 1) * len(micro) * env.world_size), device=env.device
                )
            with sync_gradients(model, i == len(micro) - 1), autocast(env.device, self.run.dtype):
                out = model(
                    b.input_ids.to(env.device),
                    labels=shift_labels(b.labels).to(env.device),
                    targets_only=True,  # prompts cost no LM-head matmul
                    loss_normalizer=norm,
                    **kwargs,
                )
                (out.ce_loss * env.world_size).backward()  # DDP/FSDP average over ranks: undo it
            n_examples = sum(len(getattr(x, "lengths", [0])) for x in mb)
            sums += torch.stack(
                [
                    out.ce_loss.detach() * norm,
                    (b.segment_ids > 0).sum().to(sums),
                    torch.tensor(float(n_examples), device=env.device),
                    torch.tensor(
                        model_flops(self.model_config, b.example_lengths(), b.n_targets), device=env.device
                    ),
                ]
            )
        sums = all_reduce_sum(sums)
        # The watched loss first: CE per target token (either reduction), then the counts.
        outcome = apply_update(
            [self.optim.update_part], torch.cat([sums[:1] / n_targets, sums[1:], n_targets.reshape(1)]), guard
        )
        loss, n_tokens, n_examples, flops, targets = outcome.values
        return {
            "loss": loss,
            **outcome.record(),
            "lr": lr,
            "n_targets": int(targets),
            "n_tokens": int(n_tokens),
            "n_examples": int(n_examples),
            "model_flops": flops,
        }


def train_sft(cfg: SFTConfig) -> dict:
    """Supervised fine-tuning on chats (assistant tokens only; spec §6.2) on the training engine,
    resumed from ``out_dir``'s latest checkpoint if it has one: writes metrics.jsonl, data_report.json,
    checkpoints and model/.

    Returns the run's summary."""
    with stage_run(cfg) as run:
        examples = run.load_records(load_sft, "sft", max_length=cfg.max_seq_len, train_on=cfg.train_on)
        items = pack_examples(examples, cfg.max_seq_len) if cfg.packing else examples
        data = run.batches(len(items), "SFT rows" if cfg.packing else "SFT examples")
        total = run.epoch_steps(data)
        model = load_policy(run)
        records = fit_stage(run, SFTModule(run, model, items, total), data, total)
        summary = {
            "steps": len(records),
            "first_loss": records[0]["loss"] if records else None,
            "final_loss": records[-1]["loss"] if records else None,
            "model": str(run.out / "model"),
            "examples": len(examples),
        }
        run.write_json("summary.json", summary)
        return summary
