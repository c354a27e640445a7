"""``olmo2 dpo CONFIG``: preference tuning, length-normalised DPO with β = 5 by default (spec §6.3).

The reference policy is the initial model, frozen; its log-probs of every chosen and rejected response
are computed once before training (the policy *is* the reference then, so no second copy is kept) and
cached in memory and in ``OUT_DIR/reference_logps.pt``. A rerun with the same model, data and length
reuses that file instead of recomputing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from olmo2.config import load_config
from olmo2.posttrain.common import (
    PostTrainConfig,
    autocast,
    batched,
    epoch_batches,
    save_final,
    setup,
    token_logps,
    train_loop,
    write_json,
)
from olmo2.posttrain.data import PreferenceExample, collate, load_preferences
from olmo2.posttrain.losses import dpo_loss
from olmo2.train.monitor import log

__all__ = ["DPOConfig", "load_dpo_config", "reference_logps", "train_dpo"]


@dataclass
class DPOConfig(PostTrainConfig):
    """Defaults follow spec §6.3: 1 epoch, 2048 tokens, batch 128, linear LR, 10% warmup."""

    out_dir: str = "runs/dpo"
    lr: float = 5e-7
    warmup_ratio: float = 0.1
    max_seq_len: int = 2048
    batch_size: int = 128
    micro_batch_size: int = 2  # pairs per forward (each pair is two sequences)
    loss_type: Literal["dpo_norm", "dpo"] = "dpo_norm"
    beta: float | None = None  # None: 5 for dpo_norm, 0.1 for dpo
    label_smoothing: float = 0.0
    train_on: Literal["all", "last"] = "all"


def load_dpo_config(path=None, overrides: list[str] | None = None) -> DPOConfig:
    return load_config(DPOConfig, path, overrides)


def _pair_logps(model, pairs: list[PreferenceExample], device, cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response log-probs [2, b] (chosen row, rejected row) and token counts [2, b]."""
    b = collate([p.chosen for p in pairs] + [p.rejected for p in pairs])
    with autocast(cfg, device):
        logps, mask = token_logps(model, b.input_ids.to(device), b.labels.to(device))
    return logps.sum(-1).view(2, -1), mask.sum(-1).view(2, -1)


@torch.no_grad()
def reference_logps(model, pairs: list[PreferenceExample], device, cfg: DPOConfig) -> dict[str, torch.Tensor]:
    """The frozen model's summed log-probs of each pair's responses, in data order (on CPU)."""
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    for mb in batched(pairs, cfg.micro_batch_size):
        s, _ = _pair_logps(model, mb, device, cfg)
        chosen.append(s[0].float().cpu())
        rejected.append(s[1].float().cpu())
    model.train(was_training)
    return {"chosen": torch.cat(chosen), "rejected": torch.cat(rejected)}


def _cache_key(cfg: DPOConfig, pairs: list[PreferenceExample]) -> str:
    """Changes whenever the reference model's weights file set, the data or the tokenisation do."""
    h = hashlib.sha256()
    model_dir = Path(cfg.model)
    for f in sorted(model_dir.glob("*.safetensors")) + sorted(model_dir.glob("*.bin")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    for p in pairs:
        h.update(str((p.chosen.input_ids, p.chosen.labels, p.rejected.input_ids, p.rejected.labels)).encode())
    return h.hexdigest()


def cached_reference_logps(model, pairs, device, cfg: DPOConfig) -> tuple[dict[str, torch.Tensor], bool]:
    """``(ref, loaded)``: from ``OUT_DIR/reference_logps.pt`` when its key matches, else computed and saved."""
    path = Path(cfg.out_dir) / "reference_logps.pt"
    key = _cache_key(cfg, pairs)
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("key") == key:
            log(f"dpo: reusing reference log-probs from {path}")
            return {"chosen": saved["chosen"], "rejected": saved["rejected"]}, True
    ref = reference_logps(model, pairs, device, cfg)
    torch.save({"key": key, **ref}, path)
    return ref, False


def train_dpo(cfg: DPOConfig) -> dict:
    """Train; write ``metrics.jsonl``, ``reference_logps.pt`` and ``model/``; return a summary."""
    model, tok, device = setup(cfg)
    out = Path(cfg.out_dir)
    pairs, report = load_preferences(cfg.data, tok, max_length=cfg.max_seq_len, train_on=cfg.train_on)
    write_json(out / "data_report.json", {"preferences": str(report)})
    if not pairs:
        raise ValueError(f"no usable preference pairs in {cfg.data}: {report}")
    log(f"dpo: {len(pairs)} pairs ({report})")
    ref, loaded = cached_reference_logps(model, pairs, device, cfg)
    indexed = list(range(len(pairs)))

    def step_fn(batch: list[int], step: int) -> dict:
        micro = batched(batch, cfg.micro_batch_size)
        sums = {k: 0.0 for k in ("loss", "margin", "accuracy", "chosen_logps", "rejected_logps")}
        for mb in micro:
            s, n = _pair_logps(model, [pairs[i] for i in mb], device, cfg)
            idx = torch.tensor(mb)
            res = dpo_loss(
                s[0],
                s[1],
                ref["chosen"][idx].to(device),
                ref["rejected"][idx].to(device),
                beta=cfg.beta,
                loss_type=cfg.loss_type,
                chosen_ntokens=n[0],
                rejected_ntokens=n[1],
                label_smoothing=cfg.label_smoothing,
            )
            (res.loss * len(mb) / len(batch)).backward()
            sums["loss"] += float(res.losses.detach().sum())
            sums["margin"] += float(res.margins.sum())
            sums["accuracy"] += float((res.margins > 0).float().sum())
            sums["chosen_logps"] += float(s[0].detach().sum())
            sums["rejected_logps"] += float(s[1].detach().sum())
        return {k: v / len(batch) for k, v in sums.items()}

    records = train_loop(cfg, model, epoch_batches(indexed, cfg), step_fn, out_dir=out)
    path = save_final(model, tok, out)
    summary = {
        "steps": len(records),
        "reference_cache": "loaded" if loaded else "computed",
        "first": {k: records[0][k] for k in ("loss", "margin", "accuracy")} if records else None,
        "final": {k: records[-1][k] for k in ("loss", "margin", "accuracy")} if records else None,
        "model": str(path),
        "pairs": len(pairs),
    }
    write_json(out / "summary.json", summary)
    return summary
