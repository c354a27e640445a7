"""Learning-rate schedules as pure functions of the step (spec §3.1, §5), so resuming needs no state.

``step`` counts optimizer steps from 1. All schedules warm up linearly from 0 to the peak.
- ``cosine``: then cosine from the peak to ``alpha_f``·peak at ``t_max`` (stage 1; OLMo 2 runs stop
  before ``t_max`` for 7B/32B, so ``t_max`` is its own setting), flat after it.
- ``linear``: then linear to ``alpha_f``·peak at ``t_max`` (stage 2 anneals: no warmup, alpha_f 0).
- ``wsd``: warmup, stable at the peak, then linear to ``alpha_f``·peak over the last ``decay_steps``.
- ``constant``: warmup, then the peak.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal


@dataclass
class ScheduleConfig:
    name: Literal["cosine", "linear", "wsd", "constant"] = "cosine"
    warmup_steps: int = 0
    warmup_ratio: float = 0.0  # alternative to warmup_steps: this fraction of the run (post-training)
    t_max: int | None = None  # steps at which the decay reaches alpha_f; default: the run's length
    alpha_f: float = 0.1  # final LR as a fraction of the peak
    decay_steps: int | None = None  # wsd only: length of the final decay

    def __post_init__(self) -> None:
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.warmup_ratio and self.warmup_steps:
            raise ValueError("set one of warmup_steps and warmup_ratio, not both")
        if not 0.0 <= self.alpha_f <= 1.0:
            raise ValueError(f"alpha_f must be in [0, 1], got {self.alpha_f}")
        if self.t_max is not None and self.t_max <= self.warmup_steps:
            raise ValueError(f"t_max ({self.t_max}) must exceed warmup_steps ({self.warmup_steps})")
        if self.name == "wsd" and (self.decay_steps is None or self.decay_steps <= 0):
            raise ValueError("the wsd schedule needs decay_steps > 0")


def lr_factor(cfg: ScheduleConfig, step: int, total_steps: int) -> float:
    """The LR at optimizer step ``step`` (1-based) of a ``total_steps`` run, as a fraction of the peak."""
    if cfg.warmup_ratio:
        cfg = replace(cfg, warmup_steps=int(cfg.warmup_ratio * total_steps), warmup_ratio=0.0)
    if cfg.warmup_steps and step <= cfg.warmup_steps:
        return step / cfg.warmup_steps
    t_max = cfg.t_max or total_steps
    if cfg.name == "constant":
        return 1.0
    if cfg.name == "wsd":
        decay_start = t_max - cfg.decay_steps
        if step <= decay_start:
            return 1.0
        progress = min(1.0, (step - decay_start) / cfg.decay_steps)
        return 1.0 - (1.0 - cfg.alpha_f) * progress
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, t_max - cfg.warmup_steps))
    if cfg.name == "linear":
        return 1.0 - (1.0 - cfg.alpha_f) * progress
    return cfg.alpha_f + (1.0 - cfg.alpha_f) * 0.5 * (1.0 + math.cos(math.pi * progress))
