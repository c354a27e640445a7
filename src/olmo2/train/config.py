"""The typed config of ``olmo2 train``, one section per concern: model, data, run (folder and length),
optim, schedule, loss, init, parallel, runtime, spikes, checkpoint, logging. Post-training reuses the
parallel, runtime, spikes, checkpoint and logging sections.

Loaded from YAML with ``key.sub=value`` overrides and validated before any work starts. ``model`` may
be a preset name (``model: 1b``); it is expanded to the preset's fields first, so
``model.n_layers=2`` overrides work on presets too.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from olmo2.config import ConfigError, apply_overrides, from_dict, read_yaml, refuse_moved_keys, to_dict
from olmo2.model.config import ModelConfig, preset
from olmo2.train.optim import OptimConfig
from olmo2.train.schedule import ScheduleConfig


@dataclass
class DataConfig:
    mix: str  # path to a mix YAML (configs/data/...)
    seq_len: int = 4096
    global_batch_size: int = 1024  # instances per optimizer step, over all ranks
    micro_batch_size: int = 2  # instances per forward/backward on one rank
    seed: int = 6198  # data-order seed (spec §3.1); stage-2 soup ingredients differ only here
    variables: dict[str, str] = field(default_factory=dict)  # ${VAR} values for the mix's paths
    filter_repeats: bool = True  # loss-mask instances with >= 32 repeats of a 1-13 token period (§3.4)
    validation: list[str] = field(default_factory=list)  # held-out token files (paths or globs)
    validation_max_instances: int | None = 64

    def __post_init__(self) -> None:
        for name in ("seq_len", "global_batch_size", "micro_batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


@dataclass
class SpikeConfig:
    """Spike detection (spec §3.4): value > rolling mean + ``sigmas``·std of the last ``window`` values."""

    window: int = 128
    sigmas: float = 6.0
    min_count: int = 64  # values needed before detection starts
    skip_spikes: bool = False  # skip the update on a spike, as OLMo 2 32B's SkipStepAdamW does
    max_consecutive_skips: int = 3  # then stop cleanly, keeping the last good checkpoint


@dataclass
class LossConfig:
    """The pretraining loss beside cross-entropy, and how it is computed."""

    z_loss_multiplier: float = 1e-5  # paper Tab 1 / 32B (spec §12.1 lists the 1e-4 alternative)
    chunk_size: int = 512  # logits rows per chunk: 512 x 100352 fp32 = 205 MB per buffer


@dataclass
class ParallelConfig:
    """How the model is spread over ranks (``torchrun``); one process needs none of it."""

    strategy: Literal["auto", "none", "ddp", "fsdp", "hsdp"] = "auto"  # auto: fsdp if several ranks
    hsdp_replicas: int | None = None  # hsdp: number of replica groups (default: one per node)
    activation_checkpointing: bool = False


@dataclass
class RuntimeConfig:
    """Where and how fast the run executes; none of it changes what is learned (up to precision)."""

    device: str = "auto"  # auto: cuda if available, else cpu
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast where it is faster
    compile: bool = False
    gc_every: int = 100  # explicit Python GC every N steps on all ranks together (spec §9.1)
    # CPU runs: tensors of at least this many MiB get their own mmap and go back to the OS when freed
    # (glibc's mallopt); glibc's default, a threshold that rises to 32 MiB, lets freed activations
    # fragment the heap and keeps the peak RSS ~1 GB above the live peak for `small`. 0: glibc default.
    cpu_malloc_mmap_threshold_mib: int = 8

    def __post_init__(self) -> None:
        if not 0 <= self.cpu_malloc_mmap_threshold_mib <= 32:
            raise ValueError(
                "runtime.cpu_malloc_mmap_threshold_mib must be in [0, 32] (glibc caps its threshold at 32 MiB), "
                f"got {self.cpu_malloc_mmap_threshold_mib}"
            )


@dataclass
class RunConfig:
    """Pretraining's run: where it lives and how long it lasts."""

    folder: str  # config.yaml, metrics.jsonl and the step<N>/ checkpoints
    max_steps: int | None = None
    max_tokens: float | None = None  # alternative to max_steps: rounded up to whole steps
    eval_every: int = 0  # steps between held-out evaluations (0: only at the end, if data.validation)

    def __post_init__(self) -> None:
        if (self.max_steps is None) == (self.max_tokens is None):
            raise ValueError("set exactly one of run.max_steps and run.max_tokens")
        if self.max_steps is not None and self.max_steps <= 0:
            raise ValueError(f"run.max_steps must be positive, got {self.max_steps}")


@dataclass
class CheckpointConfig:
    save_every: int = 1000  # steps; the final step is always saved
    keep_last: int = 3  # complete checkpoints kept (older ones deleted); 0 keeps all
    export_hf: bool = True  # also write model/ (an HF directory) inside each checkpoint
    # Write checkpoints in the background: the state is copied to CPU memory, then training goes on
    # while a thread writes it; the run waits for it before the next save and at exit.
    async_save: bool = False


def _installed(package: str) -> bool:
    if package in sys.modules:
        return sys.modules[package] is not None
    return importlib.util.find_spec(package) is not None


def require_package(package: str, what: str) -> None:
    """Fail at config time, before any work, saying what to install if ``package`` cannot be imported."""
    if not _installed(package):
        raise ValueError(f"{what} but the {package} package is not installed: pip install {package}")


@dataclass
class WandbConfig:
    """Weights & Biases: every metrics.jsonl record goes to a run (rank 0). Needs ``pip install wandb``."""

    enabled: bool = False
    project: str = "olmo2"
    name: str | None = None  # default: the save folder's name
    mode: Literal["offline", "online", "disabled"] = "offline"  # offline: sync later with `wandb sync`

    def __post_init__(self) -> None:
        if self.enabled:
            require_package("wandb", "enabled")


@dataclass
class LoggingConfig:
    """Metric backends beside metrics.jsonl; each receives every record (rank 0 only)."""

    every: int = 1  # steps between metrics records (console, metrics.jsonl, backends)
    tensorboard: bool = False  # event files in <run folder>/tensorboard
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"logging.every must be >= 1, got {self.every}")
        if self.tensorboard:
            require_package("tensorboard", "tensorboard is on")


@dataclass
class InitConfig:
    """Start from existing weights (stage 2 anneals start from the stage-1 checkpoint)."""

    checkpoint: str | None = None  # a training checkpoint step<N>/, any model (HF) directory or a Hub id
    revision: str | None = None  # Hub branch, tag or commit when checkpoint is a Hub id (default: main)
    load_optimizer: bool = True  # restore AdamW moments too, when the checkpoint has them (spec §5)
    seed: int = 0  # random initialisation seed (when there is no checkpoint)

    def __post_init__(self) -> None:
        if self.revision is not None and not self.checkpoint:
            raise ValueError(f"init.revision ({self.revision}) needs init.checkpoint (a Hub id)")


@dataclass
class TrainConfig:
    """``olmo2 train``'s config, one section per concern."""

    model: ModelConfig
    data: DataConfig
    run: RunConfig
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    init: InitConfig = field(default_factory=InitConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    spikes: SpikeConfig = field(default_factory=SpikeConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def __post_init__(self) -> None:
        steps = self.run.max_steps
        if steps is not None and self.schedule.warmup_steps >= steps:
            raise ValueError(
                f"schedule.warmup_steps ({self.schedule.warmup_steps}) is not shorter than the run "
                f"(run.max_steps {steps})"
            )
        if self.data.global_batch_size % self.data.micro_batch_size:
            raise ValueError(
                f"data.global_batch_size ({self.data.global_batch_size}) is not divisible by "
                f"data.micro_batch_size ({self.data.micro_batch_size})"
            )
        if self.data.seq_len > self.model.max_seq_len:
            raise ValueError(
                f"data.seq_len ({self.data.seq_len}) exceeds model.max_seq_len ({self.model.max_seq_len})"
            )


# Keys of the ``trainer`` section that mixed every concern, and the sections they moved to.
RUNTIME_MOVED_KEYS = {
    "trainer.device": "runtime.device",
    "trainer.precision": "runtime.precision",
    "trainer.compile": "runtime.compile",
    "trainer.gc_every": "runtime.gc_every",
    "trainer.cpu_malloc_mmap_threshold_mib": "runtime.cpu_malloc_mmap_threshold_mib",
    "trainer.parallel": "parallel.strategy",
    "trainer.hsdp_replicas": "parallel.hsdp_replicas",
    "trainer.activation_checkpointing": "parallel.activation_checkpointing",
    "trainer.log_every": "logging.every",
    "trainer.spikes": "spikes",
}
MOVED_KEYS = {
    **RUNTIME_MOVED_KEYS,
    "trainer.save_folder": "run.folder",
    "trainer.max_steps": "run.max_steps",
    "trainer.max_tokens": "run.max_tokens",
    "trainer.eval_every": "run.eval_every",
    "trainer.init_seed": "init.seed",
    "trainer.z_loss_multiplier": "loss.z_loss_multiplier",
    "trainer.loss_chunk_size": "loss.chunk_size",
}


def load_train_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read YAML, expand a preset name under ``model``, apply overrides, validate."""
    data = read_yaml(path)
    where = f"{path}: " if path else ""
    model_override = [o for o in overrides or [] if o.startswith("model=")]
    if model_override:
        data["model"] = model_override[-1].split("=", 1)[1]
    if isinstance(data.get("model"), str):
        try:
            data["model"] = to_dict(preset(data["model"]))
        except ValueError as e:
            raise ConfigError(f"{where}model: {e}") from None
    try:
        apply_overrides(data, [o for o in overrides or [] if not o.startswith("model=")])
        refuse_moved_keys(data, MOVED_KEYS)
        return from_dict(TrainConfig, data)
    except ConfigError as e:
        raise ConfigError(f"{where}{e}") from None


def save_train_config(cfg: TrainConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
