"""The one training loop every stage runs on: pretraining, anneals, SFT, DPO, GRPO and PPO.

A stage differs from another only in its *train module* (what one step computes: the LM loss, the
SFT loss on assistant tokens, DPO against a frozen reference, a GRPO or PPO update on fresh
rollouts) and in the data it is fed. Everything else is the same code for all of them:

- ``Trainer.fit``: a short loop — next batch, ``module.train_step``, the components' hooks, a
  checkpoint when due — after restoring the latest complete checkpoint of the run folder, if any;
- components that own their state (``state_dict``/``load_state_dict``) and are checkpointed with
  the data position and the module as one ``{name: state}`` mapping (``train/components.py``);
- ``apply_update``: gradient clipping, the finite check and the spike guard's veto before any
  optimizer touches the weights (the 32B's SkipStepAdamW), shared by every module.

The same command runs in one process or under ``torchrun`` (FSDP2/HSDP/DDP): modules normalise
their losses over the *global* batch, so neither the world size nor micro-batching changes them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from olmo2.train.distributed import DistEnv, all_reduce_sum
from olmo2.train.monitor import SpikeDetector, log
from olmo2.train.optim import OptimConfig, build_optimizer
from olmo2.train.runtime import raise_measured_peak
from olmo2.train.schedule import ScheduleConfig, lr_factor


class TrainingHalted(RuntimeError):
    """The run stopped itself (repeated skipped steps); the message says how to resume."""


class Stateful(Protocol):
    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> None: ...


@dataclass
class Part:
    """A model and its optimizer (None for a frozen model), saved together in a checkpoint's ``train/``."""

    model: nn.Module
    optimizer: torch.optim.Optimizer | None = None


@dataclass
class StepOutcome:
    """What ``apply_update`` decided: the gradient norms before clipping and whether the step was
    skipped (no optimizer touched the weights or the moments), and why."""

    values: list[float]  # the losses passed in, as Python floats (one host sync for all)
    grad_norms: list[float]
    spikes: list[str] = field(default_factory=list)
    skip_reason: str | None = None

    @property
    def skipped(self) -> bool:
        return self.skip_reason is not None

    def record(self) -> dict:
        """The fields every step's metrics record has: ``grad_norm``, ``skipped`` (+ reason, spikes)."""
        out: dict[str, Any] = {"grad_norm": self.grad_norms[0], "skipped": self.skipped}
        if self.skip_reason:
            out["skip_reason"] = self.skip_reason
        if self.spikes:
            out["spikes"] = self.spikes
        return out


class SpikeGuard:
    """Spike detection on the loss and the gradient norm (spec §3.4); with ``skip_spikes``, a spike
    vetoes the update as OLMo 2 32B's SkipStepAdamW does.

    A value counts as a spike when it exceeds the mean + ``sigmas``·std of the last ``window`` values
    (after ``min_count`` of them). Every finite value enters its window, spike or not.
    """

    def __init__(
        self, window: int = 128, sigmas: float = 6.0, min_count: int = 64, skip_spikes: bool = False
    ):
        self.skip_spikes = skip_spikes
        self.detectors = {name: SpikeDetector(window, sigmas, min_count) for name in ("loss", "grad_norm")}

    def check(self, loss: float, grad_norm: float) -> list[str]:
        """The names of the values that spiked (and record both)."""
        return [
            name
            for name, value in (("loss", loss), ("grad_norm", grad_norm))
            if self.detectors[name].check(value)
        ]

    def state_dict(self) -> dict:
        return {name: det.state_dict() for name, det in self.detectors.items()}

    def load_state_dict(self, state: dict) -> None:
        for name, det in self.detectors.items():
            det.load_state_dict(state.get(name, []))


def apply_update(
    parts: Sequence[tuple[Sequence[nn.Parameter], torch.optim.Optimizer, float]],
    losses: torch.Tensor,
    guard: SpikeGuard | None,
) -> StepOutcome:
    """Clip each ``(params, optimizer, max_norm)``'s gradients, then step every optimizer, unless a
    loss in ``losses`` (already reduced over ranks; ``losses[0]`` is the one the guard watches) or a
    gradient norm is not finite, or the guard sees a spike and may skip. Every rank decides alike (the
    values are global), and the gradients are zeroed either way."""
    norms = []
    for params, _, max_norm in parts:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
        if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor
            norm = norm.full_tensor()
        norms.append(norm.reshape(1).to(losses))
    values = torch.cat([losses.reshape(-1), *norms]).tolist()  # one host sync per step
    n = losses.numel()
    reason, spikes = None, []
    if guard is not None:
        spikes = guard.check(values[0], values[n])
    if not all(math.isfinite(v) for v in values):
        reason = "non-finite"
    elif spikes and guard.skip_spikes:
        reason = "spike in " + ", ".join(spikes)
    for _, optimizer, _ in parts:
        if reason is None:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return StepOutcome(values[:n], values[n:], spikes, reason)


class ScheduledOptimizer:
    """AdamW over one model's trainable parameters with the LR schedule of ``olmo2.train.schedule``
    (the same function pretraining uses) over ``total_steps`` optimizer steps."""

    def __init__(self, model: nn.Module, optim: OptimConfig, schedule: ScheduleConfig, total_steps: int):
        self.optimizer = build_optimizer(model, optim)
        self.peak, self.schedule, self.total_steps = optim.lr, schedule, total_steps
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.max_norm = optim.grad_clip

    def set_lr(self, step: int) -> float:
        """Set and return the LR of optimizer step ``step`` (1-based)."""
        lr = self.peak * lr_factor(self.schedule, step, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    @property
    def update_part(self) -> tuple[Sequence[nn.Parameter], torch.optim.Optimizer, float]:
        return self.params, self.optimizer, self.max_norm


class TrainModule:
    """What one step of a stage computes. Subclasses own their model(s), optimizer(s) and loss."""

    #: training FLOPs per token and the device's measured matmul peak (for MFU); 0 where unknown
    flops_per_token: float = 0.0
    peak_flops: float = 0.0
    #: record keys shown on the console line besides loss, grad norm, LR and throughput
    console_keys: tuple[str, ...] = ()

    def parts(self) -> dict[str, Part]:
        """The models and optimizers a checkpoint holds; ``"model"`` is the one exported as HF."""
        raise NotImplementedError

    def train_step(self, batch: Any, step: int, guard: SpikeGuard | None) -> dict:
        """Forward, backward and update for optimizer step ``step`` (1-based); the step's metrics,
        with ``skipped`` (bool), ``n_tokens`` (tokens trained on, over all ranks) and, when skipped,
        ``skip_reason``."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class Component:
    """A part of the run beside the step (metrics, evaluation, GC, ...) with hooks and its own state."""

    name = "component"

    def start(self, trainer: Trainer) -> None:
        """Called once the run is restored (``trainer.step`` is where it resumes)."""

    def post_step(self, trainer: Trainer, record: dict) -> None:
        """Called after each step with the step's record (before it is written; add to it here)."""

    def finish(self, trainer: Trainer, summary: dict) -> None:
        """Called after the last step (add to the summary here)."""

    def close(self) -> None:
        """Called once at the end, even after an error."""

    def state_dict(self) -> Any:
        return None

    def load_state_dict(self, state: Any) -> None:
        pass


class StatefulData(Protocol):
    def __iter__(self) -> Iterator: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class Trainer:
    """Drives one run: restore, then ``train_step`` per optimizer step with the components around it.

    After each step the components see the record in order (metrics are written by one of them), then
    the checkpointer saves if a save is due, so a checkpoint holds what the components recorded.
    """

    module: TrainModule
    data: StatefulData
    total_steps: int
    env: DistEnv
    components: list[Component] = field(default_factory=list)
    checkpointer: Component | None = None  # components.Checkpointer; restores before anything starts
    guard: SpikeGuard | None = None
    max_consecutive_skips: int = 3
    on_fresh_start: Callable[[], str] | None = None  # e.g. stage 2's init from a checkpoint; its origin
    step: int = 0
    tokens: int = 0  # trained tokens so far, over all ranks
    lr: float | None = None  # the last step's (peak-scaled) learning rate: a stage-2 hand-off reads it
    origin: str = "fresh start"
    last_saved: Path | None = None  # the latest complete checkpoint
    resumed_step: int | None = None  # the step of the checkpoint the run resumed from

    def stateful(self) -> dict[str, Stateful]:
        """Everything but the models that a checkpoint's ``state.json`` holds, by name."""
        out: dict[str, Stateful] = {"loader": self.data, "module": self.module, "run": _RunState(self)}
        if self.guard is not None:
            out["spikes"] = self.guard
        out.update({c.name: c for c in self.components if c.state_dict() is not None})
        return out

    def state_dict(self) -> dict:
        return {name: obj.state_dict() for name, obj in self.stateful().items()}

    def load_state_dict(self, state: dict) -> None:
        for name, obj in self.stateful().items():
            if name in state:
                obj.load_state_dict(state[name])

    def fit(self) -> dict:
        everything = [*self.components, *([self.checkpointer] if self.checkpointer else [])]
        consecutive_skips, start = 0, time.perf_counter()
        try:
            if self.checkpointer is not None:
                self.checkpointer.start(self)  # restores the latest checkpoint, if any
            if self.step == 0 and self.on_fresh_start is not None:
                self.origin = self.on_fresh_start()
            for component in self.components:
                component.start(self)
            batches = iter(self.data)
            while self.step < self.total_steps:
                t0 = time.perf_counter()
                batch = next(batches)
                self.step += 1
                record = {"step": self.step, **self.module.train_step(batch, self.step, self.guard)}
                self._add_throughput(record, time.perf_counter() - t0)
                consecutive_skips = consecutive_skips + 1 if record.get("skipped") else 0
                for component in everything:
                    component.post_step(self, record)
                if consecutive_skips >= self.max_consecutive_skips:
                    raise self._halted(consecutive_skips, record)
            if consecutive_skips:  # the final state was never saved: the run did not finish
                raise self._halted(consecutive_skips, record)
            summary = {
                "step": self.step,
                "total_steps": self.total_steps,
                "seconds": time.perf_counter() - start,
            }
            for component in everything:
                component.finish(self, summary)
            return summary
        finally:
            _close_all(everything[::-1])  # the checkpointer first: a pending save completes

    def _add_throughput(self, record: dict, elapsed: float) -> None:
        n_tokens = record.get("n_tokens", 0)
        self.tokens += n_tokens
        self.lr = record.get("lr", self.lr)
        record.update(tokens=self.tokens, step_time=elapsed)
        # A module whose rows differ in length (SFT) counts its step's FLOPs itself (``model_flops``).
        flops = record.pop("model_flops", None)
        if n_tokens:
            record["tokens_per_sec"] = n_tokens / elapsed
            if flops is None and self.module.flops_per_token:
                flops = self.module.flops_per_token * n_tokens
            if flops and self.module.peak_flops:
                achieved = flops / elapsed / self.env.world_size
                if achieved > self.module.peak_flops:
                    self.module.peak_flops = raise_measured_peak(
                        self.env.device, self.module.peak_flops, achieved
                    )
                record["mfu"] = achieved / self.module.peak_flops

    def _halted(self, skips: int, record: dict) -> TrainingHalted:
        if self.checkpointer is not None:
            self.checkpointer.close()  # a save still being written lands first
        reason = record.get("skip_reason")
        why = "had a non-finite loss or gradient" if reason == "non-finite" else f"were skipped ({reason})"
        batch = f" (last batch {record['batch_hash']})" if "batch_hash" in record else ""
        steps = f"{skips} consecutive steps" if skips > 1 else "1 step"
        where = "the last " if self.step == self.total_steps else ""
        advice = (
            f"The last good checkpoint is {self.last_saved or '(none yet)'}. Rerun the same command to "
            "resume from it, e.g. with a lower optim.lr or schedule.warmup_steps."
        )
        if self.resumed_step is not None and self.step - skips == self.resumed_step:
            advice = (
                f"No step succeeded since resuming from {self.last_saved}: that checkpoint may be "
                "damaged. Move it out of the run folder and rerun the same command to resume from the "
                "one before."
            )
        return TrainingHalted(
            f"stopped at step {self.step}: {where}{steps} {why}{batch}; no update was applied "
            f"for them. {advice}"
        )


def check_finite_weights(parts: dict[str, Part], step: int) -> None:
    """Refuse to go on (and to save) once any weight is NaN or infinite: a checkpoint of such a state
    would only spread the damage. Every rank checks its shards and all decide alike."""
    bad = []
    for name, part in parts.items():
        for pname, param in part.model.named_parameters():
            local = param.to_local() if hasattr(param, "to_local") else param  # FSDP2: this rank's shard
            if not bool(torch.isfinite(local.detach()).all()):
                bad.append(f"{name}.{pname}")
    device = next(parts["model"].model.parameters()).device
    if all_reduce_sum(torch.tensor(float(len(bad)), device=device)).item():
        raise TrainingHalted(
            f"after step {step} the weights are not finite ({', '.join(bad[:3]) or 'on another rank'}"
            f"{', ...' if len(bad) > 3 else ''}); nothing was saved. Rerun from the last good checkpoint "
            "with a lower optim.lr."
        )


def _close_all(components: Sequence[Component]) -> None:
    """Close every component, even if one fails; then raise the first failure."""
    errors = []
    for component in components:
        try:
            component.close()
        except Exception as e:
            errors.append(e)
    if errors:
        raise errors[0]


class _RunState:
    """The loop's own counters in ``state.json``."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer

    def state_dict(self) -> dict:
        return {"tokens": self.trainer.tokens, "lr": self.trainer.lr}

    def load_state_dict(self, state: dict) -> None:
        self.trainer.tokens = int(state.get("tokens", 0))
        self.trainer.lr = state.get("lr")


def global_count(local: int | torch.Tensor, device: torch.device) -> torch.Tensor:
    """A count summed over ranks, as a float tensor on ``device`` (the normaliser of a global mean)."""
    value = local if isinstance(local, torch.Tensor) else torch.tensor(local)
    return all_reduce_sum(value.to(device=device, dtype=torch.float32))


def rank_slice(items: Sequence, rank: int, world_size: int) -> list:
    """This rank's contiguous share of a global batch (ranks get equal shares; validated upstream)."""
    per_rank = len(items) // world_size
    return list(items[rank * per_rank : (rank + 1) * per_rank])


def log_main(env: DistEnv, message: str) -> None:
    if env.is_main:
        log(message)


def chunks(items: Iterable, size: int) -> list[list]:
    items = list(items)
    return [items[i : i + size] for i in range(0, len(items), size)]
