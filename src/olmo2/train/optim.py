"""AdamW as OLMo 2 configures it (spec §3.1): β (0.9, 0.95), ε 1e-8, decoupled weight decay 0.1 on
every parameter except the input embedding (norms and the LM head *are* decayed, §3.4.2)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class OptimConfig:
    lr: float = 4e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    embedding_weight_decay: float = 0.0
    grad_clip: float = 1.0  # global L2 norm; <= 0 disables clipping

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if self.eps <= 0 or self.weight_decay < 0:
            raise ValueError("eps must be > 0 and weight_decay >= 0")


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Two groups: the input embedding (``embedding_weight_decay``) and everything else."""
    embedding, rest = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (embedding if "embed_tokens" in name else rest).append(param)
    return [
        {"params": rest, "weight_decay": cfg.weight_decay, "name": "decayed"},
        {"params": embedding, "weight_decay": cfg.embedding_weight_decay, "name": "embedding"},
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    device = next(model.parameters()).device
    return torch.optim.AdamW(
        param_groups(model, cfg),
        lr=cfg.lr,
        betas=cfg.betas,
        eps=cfg.eps,
        # The fused kernel on CPU too: measured here for 267M parameters, 0.2 s per step instead of
        # 1.6 s for the default foreach path, and no parameter-sized temporaries (0.7 GB less peak).
        fused=device.type in ("cuda", "cpu") or None,
    )
