"""What SFT, DPO and RLVR share: the config sections, the run set-up on the training engine (ranks,
tokenizer, precision, the policy sharded like pretraining's model), global batches over epochs that
resume by step, the final HF-format save, ``olmo2 chat`` and the reward plot.

Every stage is a ``TrainModule`` (``olmo2.train.engine``) driven by the same ``Trainer`` as
pretraining: one command on one CPU or under ``torchrun`` with FSDP2/HSDP/DDP, checkpoints every
``checkpoint.save_every`` steps and an exact resume after a kill.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
import yaml
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from olmo2.chat import decode_response, encode_prompt, write_hf_chat_files
from olmo2.config import ConfigError, apply_overrides, from_dict, read_yaml, refuse_moved_keys, to_dict
from olmo2.generate import GenerationConfig, generate
from olmo2.model.checkpoint import CheckpointError, load_model, resolve_model_dir, save_state_dict
from olmo2.model.device import resolve_device
from olmo2.posttrain.plot import plot_rewards
from olmo2.tokenizer import load_tokenizer
from olmo2.train.components import Checkpointer, GarbageCollection, MetricsWriter
from olmo2.train.config import (
    RUNTIME_MOVED_KEYS,
    CheckpointConfig,
    LoggingConfig,
    ParallelConfig,
    RuntimeConfig,
    SpikeConfig,
)
from olmo2.train.distributed import (
    DistEnv,
    barrier,
    broadcast_object,
    init_distributed,
    resolve_parallel,
    set_malloc_mmap_threshold,
    unwrap,
)
from olmo2.train.engine import SpikeGuard, Trainer, TrainModule, log_main, rank_slice
from olmo2.train.monitor import read_metrics
from olmo2.train.optim import OptimConfig
from olmo2.train.run_folder import RunFolder, hold_run_folder
from olmo2.train.runtime import build_parallel_model, choose_precision
from olmo2.train.schedule import ScheduleConfig
from olmo2.train.tracking import open_sinks

T = TypeVar("T")

__all__ = [
    "GlobalBatches",
    "PostTrainConfig",
    "StageRun",
    "StageRunConfig",
    "chat",
    "fit_stage",
    "load_posttrain_config",
    "load_policy",
    "plot_rewards",
    "resolve_device",
    "save_final",
    "stage_run",
    "stage_run_config",
]

# Keys of earlier post-training layouts: the flat single-process one, then the ``trainer`` section.
MOVED_KEYS = {
    "lr": "optim.lr",
    "weight_decay": "optim.weight_decay",
    "grad_clip": "optim.grad_clip",
    "warmup_ratio": "schedule.warmup_ratio",
    "device": "runtime.device",
    "precision": "runtime.precision",
    "log_every": "logging.every",
    "out_dir": "run.folder",
    "epochs": "run.epochs",
    "max_steps": "run.max_steps",
    **RUNTIME_MOVED_KEYS,
}


def posttrain_optim(lr: float) -> OptimConfig:
    """AdamW as open-instruct runs it: HF's β (0.9, 0.999), no weight decay, clip at 1."""
    return OptimConfig(lr=lr, betas=(0.9, 0.999), weight_decay=0.0, grad_clip=1.0)


def posttrain_schedule(warmup_ratio: float, name: str = "linear") -> ScheduleConfig:
    """Tülu 3's schedule: warmup over a fraction of the run, then linear to 0 (or constant)."""
    return ScheduleConfig(name=name, warmup_ratio=warmup_ratio, alpha_f=0.0)


@dataclass
class StageRunConfig:
    """A post-training run: where it lives and how long it lasts."""

    folder: str = "runs/posttrain"  # config.yaml, metrics.jsonl, step<N>/ checkpoints, model/
    epochs: int = 1
    max_steps: int | None = None  # cap on optimizer steps (demos, tests)

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"run.epochs must be >= 1, got {self.epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"run.max_steps must be >= 1 (or null), got {self.max_steps}")


def stage_run_config(folder: str, epochs: int = 1) -> Callable[[], StageRunConfig]:
    """A stage's default ``run`` section (its own folder, its own epoch count)."""
    return lambda: StageRunConfig(folder=folder, epochs=epochs)


@dataclass
class PostTrainConfig:
    """Fields every post-training run has; the stages subclass it with their own defaults.

    ``run``, ``optim``, ``schedule``, ``parallel``, ``runtime``, ``spikes``, ``checkpoint`` and
    ``logging`` are the sections pretraining has, read by the same code.
    """

    model: str = ""  # input checkpoint: an HF directory (`olmo2 model init`, a prior stage) or a Hub id
    revision: str | None = None  # Hub branch, tag or commit when model is a Hub id (default: main)
    data: str | list[str] = field(default_factory=list)  # JSONL file(s)
    tokenizer: str | None = None  # default: the pinned dolma2 tokenizer
    seed: int = 0
    batch_size: int = 8  # items per optimizer step, over all ranks
    micro_batch_size: int = 8  # items per forward/backward on one rank
    strict: bool = False  # a bad data record is an error naming its file:line (default: counted, skipped)
    run: StageRunConfig = field(default_factory=StageRunConfig)
    optim: OptimConfig = field(default_factory=lambda: posttrain_optim(1e-5))
    schedule: ScheduleConfig = field(default_factory=lambda: posttrain_schedule(0.03))
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    spikes: SpikeConfig = field(default_factory=SpikeConfig)
    checkpoint: CheckpointConfig = field(
        default_factory=lambda: CheckpointConfig(save_every=500, keep_last=2)
    )
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def __post_init__(self) -> None:
        self.data = [self.data] if isinstance(self.data, str) else list(self.data)
        if not self.model:
            raise ValueError("model: an input checkpoint directory is required")
        if not self.data:
            raise ValueError("data: at least one JSONL file is required")
        if self.batch_size < 1 or self.micro_batch_size < 1:
            raise ValueError(
                f"batch_size ({self.batch_size}) and micro_batch_size ({self.micro_batch_size}) must be >= 1"
            )


def load_posttrain_config(
    cls: type[T],
    path=None,
    overrides: list[str] | None = None,
    defaults: Callable[[dict], None] | None = None,
) -> T:
    """Load a stage's config from YAML plus ``key.sub=value`` overrides; ``defaults(data)`` may fill
    in keys whose default depends on others (RLVR's algorithm). Keys of the old flat layout fail with
    the key that replaced them."""
    data = apply_overrides(read_yaml(path), overrides or [])
    where = f"{path}: " if path is not None else ""
    try:
        refuse_moved_keys(data, MOVED_KEYS)
    except ConfigError as e:
        raise ConfigError(f"{where}{e}") from None
    if isinstance(data.get("schedule"), str):
        raise ConfigError(f"{where}schedule: {data['schedule']!r} is now schedule.name")
    if defaults is not None:
        defaults(data)
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{where}{e}") from None


class GlobalBatches:
    """Global batches of ``batch_size`` item indices, epoch after epoch, and this rank's share of each.

    Each epoch is a permutation seeded with ``seed + epoch``; its last partial batch is dropped, so every
    step weighs the same and every rank gets an equal share. The state is the step alone: a resumed run
    reads exactly what the uninterrupted one would have. ``epochs=None`` cycles forever (RLVR prompts).
    """

    def __init__(
        self,
        n_items: int,
        batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        what: str = "items",
    ):
        if n_items < batch_size:
            raise ValueError(f"batch_size ({batch_size}) exceeds the {n_items} usable {what}")
        self.n_items, self.batch_size, self.seed = n_items, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.steps_per_epoch = n_items // batch_size
        self.step = 0
        self._order: tuple[int, list[int]] = (-1, [])

    def global_batch(self, step: int) -> list[int]:
        """The item indices of optimizer step ``step`` (1-based), over all ranks."""
        epoch, k = divmod(step - 1, self.steps_per_epoch)
        if self._order[0] != epoch:
            gen = torch.Generator().manual_seed(self.seed + epoch)
            self._order = (epoch, torch.randperm(self.n_items, generator=gen).tolist())
        return self._order[1][k * self.batch_size : (k + 1) * self.batch_size]

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            self.step += 1
            yield rank_slice(self.global_batch(self.step), self.rank, self.world_size)

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


@dataclass
class StageRun:
    """What every post-training stage sets up alike: ranks, tokenizer, precision, the run folder."""

    cfg: PostTrainConfig
    model_dir: Path  # cfg.model resolved: its HF directory (a Hub id's cached snapshot)
    env: DistEnv
    tok: Any
    dtype: torch.dtype
    peak_flops: float
    out: Path
    folder: RunFolder  # held for the run; writes config.yaml and data_report.json once it started

    def log(self, message: str) -> None:
        log_main(self.env, message)

    def write_json(self, name: str, obj) -> None:
        if self.env.is_main:
            (self.out / name).write_text(json.dumps(obj, indent=2) + "\n")

    def load_records(self, load: Callable, kind: str, **kwargs) -> list:
        """The usable records of ``cfg.data`` by ``load(paths, tokenizer, strict=..., **kwargs)``; what it
        read, used and skipped goes to ``data_report.json`` and the console; none usable is an error."""
        records, report = load(self.cfg.data, self.tok, strict=self.cfg.strict, **kwargs)
        self.folder.on_start(lambda: self.write_json("data_report.json", {kind: report.to_dict()}))
        if not records:
            raise ValueError(f"no usable {kind} records in {self.cfg.data}: {report.summary()}")
        self.log(report.summary())
        return records

    def batches(self, n_items: int, what: str) -> GlobalBatches:
        """This rank's share of the run's global batches of ``n_items`` items."""
        cfg, env = self.cfg, self.env
        return GlobalBatches(
            n_items, cfg.batch_size, seed=cfg.seed, rank=env.rank, world_size=env.world_size, what=what
        )

    def epoch_steps(self, data: GlobalBatches) -> int:
        """Optimizer steps of ``epochs`` passes, capped at ``max_steps``."""
        total = data.steps_per_epoch * self.cfg.run.epochs
        return min(total, self.cfg.run.max_steps) if self.cfg.run.max_steps else total


@contextlib.contextmanager
def stage_run(cfg: PostTrainConfig) -> Iterator[StageRun]:
    """Check the input model and the rank count, join the ranks (``torchrun``) or run alone, seed,
    load the tokenizer, choose the precision, hold ``run.folder`` (``olmo2.train.run_folder``: its
    ``config.yaml`` is written once ``fit_stage`` has started); leave the process group when done.
    A bad ``model`` or ``batch_size`` fails here, naming the key, before any work."""
    try:
        model_dir = resolve_model_dir(cfg.model, cfg.revision)
    except CheckpointError as e:
        raise ValueError(f"model: {e}") from None
    env = init_distributed(cfg.runtime.device)
    try:
        if env.device.type == "cpu" and cfg.runtime.cpu_malloc_mmap_threshold_mib:
            set_malloc_mmap_threshold(cfg.runtime.cpu_malloc_mmap_threshold_mib)
        if cfg.batch_size % env.world_size:
            raise ValueError(
                f"batch_size ({cfg.batch_size}) must be divisible by the number of ranks launched "
                f"({env.world_size})"
            )
        random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        tok = load_tokenizer(cfg.tokenizer)
        dtype, peak = choose_precision(cfg.runtime.precision, env.device)
        out = Path(cfg.run.folder)
        with hold_run_folder(out, env) as folder:
            folder.on_start(
                lambda: (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
            )
            yield StageRun(cfg, model_dir, env, tok, dtype, peak, out, folder)
    finally:
        barrier()
        if env.owns_process_group:
            torch.distributed.destroy_process_group()


def load_policy(run: StageRun, *, frozen: bool = False) -> nn.Module:
    """The input checkpoint in fp32 on this rank's device, sharded or replicated as ``parallel.strategy``
    says; ``frozen`` (a reference model): no gradients, no activation checkpointing or compile."""
    cfg = run.cfg
    model = load_model(run.model_dir, device=run.env.device, dtype=torch.float32)
    parallel = resolve_parallel(cfg.parallel.strategy, run.env.world_size)
    if frozen:
        model.requires_grad_(False)
        parallel = "none" if parallel == "ddp" else parallel  # DDP replicates gradients; a copy will do
    model = build_parallel_model(
        model,
        env=run.env,
        dtype=run.dtype,
        parallel=parallel,
        hsdp_replicas=cfg.parallel.hsdp_replicas,
        activation_checkpointing=cfg.parallel.activation_checkpointing and not frozen,
        compile=cfg.runtime.compile and not frozen,
    )
    return model.eval() if frozen else model


def fit_stage(run: StageRun, module: TrainModule, data: GlobalBatches, total_steps: int) -> list[dict]:
    """Train ``module`` on the engine (resuming from ``run.folder``'s latest checkpoint), save the final
    model to ``run.folder/model``; return the run's metrics records (on every rank)."""
    cfg, env = run.cfg, run.env
    spikes = cfg.spikes
    trainer = Trainer(
        module,
        data,
        total_steps,
        env,
        components=[
            MetricsWriter(
                run.out / "metrics.jsonl",
                env,
                log_every=cfg.logging.every,
                open_sinks=lambda start: open_sinks(cfg, run.out, start),
                header=lambda t: (
                    f"{type(module).__name__}: {run.out} | {t.origin} | steps {t.step}->{t.total_steps} | "
                    f"{env.world_size} rank(s), {resolve_parallel(cfg.parallel.strategy, env.world_size)}, "
                    f"{env.device.type}, {str(run.dtype).removeprefix('torch.')}"
                ),
            ),
            GarbageCollection(cfg.runtime.gc_every),
            run.folder,  # last: config.yaml once everything else has started
        ],
        checkpointer=Checkpointer(
            run.out,
            cfg.checkpoint,
            env,
            write_extra_files=lambda model_dir: write_hf_chat_files(run.tok, model_dir),
        ),
        guard=SpikeGuard(spikes.window, spikes.sigmas, spikes.min_count, spikes.skip_spikes),
        max_consecutive_skips=spikes.max_consecutive_skips,
        on_fresh_start=lambda: f"from {cfg.model}",
    )
    trainer.fit()
    save_final(module.parts()["model"].model, run.tok, run.out, env)
    return broadcast_object(read_metrics(run.out) if env.is_main else None)


def save_final(model: nn.Module, tok, out_dir: Path, env: DistEnv | None = None) -> Path:
    """``out_dir/model``: the HF checkpoint plus tokenizer files with the chat template, so the result
    loads with ``olmo2 chat``, ``AutoModelForCausalLM`` and ``apply_chat_template`` alike. A rerun in
    the same ``out_dir`` replaces the previous ``model/`` once the new one is fully written. A sharded
    model is gathered (every rank calls this; rank 0 writes)."""
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    final, tmp = out_dir / "model", out_dir / "model.new"
    if env is None or env.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        save_state_dict(state, unwrap(model).config, tmp)
        write_hf_chat_files(tok, tmp)
        if final.exists():  # a rerun in the same out_dir replaces its own previous result
            shutil.rmtree(final)
        tmp.rename(final)
    barrier()
    return final


def chat(
    ckpt: str | Path,
    *,
    stdin=None,
    stdout=None,
    tokenizer: str | None = None,
    system: str | None = None,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    device: str = "auto",
    revision: str | None = None,
) -> list[dict[str, str]]:
    """``olmo2 chat``: read user lines, answer with the chat template and the KV-cache generator.

    ``/exit`` (or end of input) quits, ``/reset`` clears the history. Returns the conversation.
    """
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    tok = load_tokenizer(tokenizer)
    model = load_model(resolve_model_dir(ckpt, revision), device=resolve_device(device))
    gen = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    interactive = stdin.isatty()
    while True:
        if interactive:
            stdout.write("> ")
            stdout.flush()
        line = stdin.readline()
        if not line or line.strip() == "/exit":
            break
        text = line.strip()
        if not text:
            continue
        if text == "/reset":
            history = history[:1] if system else []
            continue
        history.append({"role": "user", "content": text})
        ids = encode_prompt(tok, history)
        out = generate(model, [ids], gen, eos_token_id=tok.eos_token_id)[0]
        reply, _ = decode_response(tok, out)
        reply = reply.strip() or "(empty reply)"
        history.append({"role": "assistant", "content": reply})
        stdout.write(reply + "\n")
        stdout.flush()
    return history
