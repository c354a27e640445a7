"""The parts of a run beside the step, each owning its state: checkpointing, metrics and loggers,
held-out evaluation, garbage collection. Every stage (pretraining, SFT, DPO, RLVR) uses them alike.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from pathlib import Path

from olmo2.train.checkpoint import PendingCheckpoint, resume_checkpoint, save_checkpoint
from olmo2.train.config import CheckpointConfig
from olmo2.train.distributed import DistEnv, background_group
from olmo2.train.engine import Component, Trainer, check_finite_weights
from olmo2.train.monitor import MetricsLog, console_line, log


class Checkpointer(Component):
    """``step<N>/`` checkpoints of the module's models and optimizers plus every stateful part of the
    run (``Trainer.state_dict``), every ``save_every`` steps and at the last one; resumes from the
    latest complete one that verifies and loads (``resume_checkpoint``). A skipped step is never
    saved: the save waits for the next applied step.
    """

    name = "checkpointer"

    def __init__(
        self,
        save_folder: Path,
        cfg: CheckpointConfig,
        env: DistEnv,
        *,
        check_resume: Callable[[Path], None] | None = None,
        write_extra_files: Callable[[Path], None] | None = None,
    ):
        self.save_folder, self.cfg, self.env = save_folder, cfg, env
        self.check_resume, self.write_extra_files = check_resume, write_extra_files
        self.group = background_group() if cfg.async_save else None
        self.pending: PendingCheckpoint | None = None  # the last save, maybe still being written
        self.due = False
        self.trainer: Trainer | None = None

    def start(self, trainer: Trainer) -> None:
        self.trainer = trainer
        found = resume_checkpoint(self.save_folder, trainer.module.parts(), self.env, check=self.check_resume)
        if found is None:
            return
        path, state = found
        trainer.load_state_dict(state)
        trainer.step, trainer.origin, trainer.last_saved = state["step"], f"resumed from {path}", path
        trainer.resumed_step = state["step"]

    def post_step(self, trainer: Trainer, record: dict) -> None:
        step = trainer.step
        self.due = self.due or step % self.cfg.save_every == 0 or step == trainer.total_steps
        if not self.due or record.get("skipped"):  # never checkpoint a state that just failed
            return
        self.due = False
        check_finite_weights(trainer.module.parts(), step)
        self.close()  # one save at a time; raises if the previous one failed
        self.pending = save_checkpoint(
            self.save_folder,
            step,
            trainer.module.parts(),
            trainer.state_dict(),
            self.env,
            export_hf=self.cfg.export_hf,
            write_extra_files=self.write_extra_files,
            keep_last=self.cfg.keep_last,
            async_save=self.cfg.async_save,
            process_group=self.group,
        )
        if not self.cfg.async_save:
            trainer.last_saved = self.pending.path

    def close(self) -> None:
        """Wait for a save still being written (raising its error); it is then the last saved one."""
        if self.pending is not None:
            pending, self.pending = self.pending, None
            path = pending.wait()
            if self.trainer is not None:
                self.trainer.last_saved = path


class MetricsWriter(Component):
    """``metrics.jsonl`` (one record per step; on resume, records past the checkpoint are dropped),
    the optional TensorBoard/W&B sinks, and a console line every ``log_every`` steps (rank 0)."""

    name = "metrics"

    def __init__(
        self,
        path: Path,
        env: DistEnv,
        *,
        log_every: int = 1,
        open_sinks: Callable[[int], Sequence] | None = None,
        header: Callable[[Trainer], str] | None = None,
    ):
        self.path, self.env, self.log_every = path, env, log_every
        self.open_sinks, self.header = open_sinks, header
        self.metrics: MetricsLog | None = None
        self.timed_steps, self.timed_seconds = 0, 0.0

    def start(self, trainer: Trainer) -> None:
        if not self.env.is_main:
            return
        sinks = self.open_sinks(trainer.step) if self.open_sinks is not None else ()
        self.metrics = MetricsLog(self.path, trainer.step, sinks)
        if self.header is not None:
            log(self.header(trainer))

    def post_step(self, trainer: Trainer, record: dict) -> None:
        self.timed_steps += 1
        self.timed_seconds += record.get("step_time", 0.0)
        if self.metrics is None:
            return
        if record.get("spikes"):
            where = f" (batch {record['batch_hash']})" if "batch_hash" in record else ""
            log(f"spike in {', '.join(record['spikes'])} at step {trainer.step}{where}")
        self.metrics.write(record)
        if trainer.step % self.log_every == 0 or trainer.step == trainer.total_steps:
            eta = self.timed_seconds / self.timed_steps * (trainer.total_steps - trainer.step)
            log(console_line(record, trainer.total_steps, eta, trainer.module.console_keys))

    def close(self) -> None:
        if self.metrics is not None:
            metrics, self.metrics = self.metrics, None
            metrics.close()


class HeldoutEval(Component):
    """Held-out metrics (``evaluate() -> dict``) into the record every ``every`` steps, or only into
    the summary at the end when ``every`` is 0."""

    name = "heldout"

    def __init__(self, evaluate: Callable[[], dict], every: int = 0):
        self.evaluate, self.every = evaluate, every

    def post_step(self, trainer: Trainer, record: dict) -> None:
        if self.every and trainer.step % self.every == 0:
            record.update(self.evaluate())

    def finish(self, trainer: Trainer, summary: dict) -> None:
        if not self.every:
            summary.update(self.evaluate())


class GarbageCollection(Component):
    """Python's GC off during the run and a young-generation collection every ``every`` steps on all
    ranks together (spec §9.1: uncoordinated GC pauses stall every rank in turn)."""

    name = "gc"

    def __init__(self, every: int):
        self.every = every

    def start(self, trainer: Trainer) -> None:
        gc.disable()

    def post_step(self, trainer: Trainer, record: dict) -> None:
        if self.every and trainer.step % self.every == 0:
            gc.collect(1)

    def close(self) -> None:
        gc.enable()
