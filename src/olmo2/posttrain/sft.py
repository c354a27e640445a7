"""``olmo2 sft CONFIG``: supervised fine-tuning on chats, loss on assistant tokens only (spec §6.2).

The loss is the chunked cross-entropy of ``olmo2.train.loss.lm_loss`` applied to the target positions'
hidden states only, so the [B, T, 100k] logits never exist and prompt tokens cost no LM-head matmul. ``loss_reduction="sum"`` (the recipe) weights every target token of a global batch
equally: the summed token losses of all micro-batches, divided by the batch's target count (a constant
per step, which AdamW is invariant to apart from clipping). ``"mean"`` averages each micro-batch's mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from olmo2.config import load_config
from olmo2.posttrain.common import (
    PostTrainConfig,
    autocast,
    batched,
    epoch_batches,
    save_final,
    setup,
    train_loop,
    write_json,
)
from olmo2.posttrain.data import collate, load_sft, pack_examples
from olmo2.train.loss import IGNORE_INDEX, lm_loss, shift_labels
from olmo2.train.monitor import log

__all__ = ["SFTConfig", "load_sft_config", "train_sft"]


@dataclass
class SFTConfig(PostTrainConfig):
    """Defaults follow spec §6.2 (2 epochs, 4096 tokens, sum loss, 3% warmup, linear, wd 0)."""

    out_dir: str = "runs/sft"
    lr: float = 5e-6
    epochs: int = 2
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
    return load_config(SFTConfig, path, overrides)


def train_sft(cfg: SFTConfig) -> dict:
    """Train; write ``metrics.jsonl``, ``data_report.json`` and ``model/``; return a summary."""
    model, tok, device = setup(cfg)
    out = Path(cfg.out_dir)
    examples, report = load_sft(cfg.data, tok, max_length=cfg.max_seq_len, train_on=cfg.train_on)
    write_json(out / "data_report.json", {"sft": str(report)})
    if not examples:
        raise ValueError(f"no usable SFT examples in {cfg.data}: {report}")
    log(f"sft: {len(examples)} examples ({report})")
    items = pack_examples(examples, cfg.max_seq_len) if cfg.packing else examples

    def step_fn(batch: list, step: int) -> dict:
        n_targets = sum(sum(t != -100 for t in x.labels) for x in batch)
        micro = batched(batch, cfg.micro_batch_size)
        loss_sum, n_tokens = 0.0, 0
        for mb in micro:
            b = collate(mb, length=cfg.max_seq_len if cfg.packing else None)
            ids, labels = b.input_ids.to(device), shift_labels(b.labels).to(device)
            kwargs = {}
            if cfg.packing:
                kwargs = {"positions": b.position_ids.to(device), "mask": b.attention_mask_4d().to(device)}
            mb_targets = max(b.n_targets, 1)
            norm = n_targets if cfg.loss_reduction == "sum" else mb_targets * len(micro)
            with autocast(cfg, device):
                # Only target positions reach the (chunked) LM head: prompts cost no vocab-sized matmul.
                hidden = model.hidden_states(ids, **kwargs)
                keep = labels != IGNORE_INDEX
                res = lm_loss(
                    hidden[keep],
                    model.lm_head.weight,
                    labels[keep],
                    z_loss_multiplier=0.0,
                    normalizer=float(norm),
                )
            res.ce_loss.backward()
            loss_sum += float(res.ce_loss.detach()) * norm
            n_tokens += int((b.segment_ids > 0).sum())
        return {
            "loss": loss_sum / max(n_targets, 1),  # CE per target token, either reduction
            "n_targets": n_targets,
            "n_tokens": n_tokens,
            "n_examples": sum(len(getattr(x, "lengths", [0])) for x in batch),
        }

    records = train_loop(cfg, model, epoch_batches(items, cfg), step_fn, out_dir=out)
    path = save_final(model, tok, out)
    summary = {
        "steps": len(records),
        "first_loss": records[0]["loss"] if records else None,
        "final_loss": records[-1]["loss"] if records else None,
        "model": str(path),
        "examples": len(examples),
    }
    write_json(out / "summary.json", summary)
    return summary
