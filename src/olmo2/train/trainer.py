"""``olmo2 train``: the OLMo 2 training loop (spec §3), from one CPU to many GPUs.

One optimizer step = one global batch, split over ranks and micro-batches. The loss of every
micro-batch is a *sum* over its target tokens divided by the number of target tokens in the whole
global batch (counted before the forward passes), so neither gradient accumulation nor the number of
ranks changes the loss or the gradients. (OLMo divides by ``input_ids.numel()`` instead; the two
differ only when instances are loss-masked, and ours is the true mean over trained tokens.)

A run folder holds ``config.yaml``, ``metrics.jsonl`` and ``step<N>/`` checkpoints (and
``tensorboard/`` or W&B files if enabled); starting a run whose folder has a complete checkpoint
resumes from the latest one, exactly.
"""

from __future__ import annotations

import contextlib
import gc
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from olmo2.data.loader import StepBatch, TrainLoader, ValidationLoader
from olmo2.data.mix import load_mix_config, resolve_mix
from olmo2.model.checkpoint import check_state_dict, read_config, read_state_dict, resolve_model_dir
from olmo2.model.transformer import build_model
from olmo2.train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    load_model_weights,
    save_checkpoint,
)
from olmo2.train.config import TrainConfig, save_train_config
from olmo2.train.distributed import (
    DistEnv,
    all_reduce_sum,
    background_group,
    barrier,
    init_distributed,
    parallelize,
    resolve_parallel,
    set_malloc_mmap_threshold,
    unwrap,
)
from olmo2.train.loss import IGNORE_INDEX, shift_labels
from olmo2.train.monitor import (
    MetricsLog,
    SpikeDetector,
    console_line,
    flops_per_token,
    log,
    measure_peak_flops,
)
from olmo2.train.optim import build_optimizer
from olmo2.train.schedule import lr_factor
from olmo2.train.tracking import open_sinks


class TrainingHalted(RuntimeError):
    """The run stopped itself (repeated non-finite steps); the message says how to resume."""


@dataclass
class StepResult:
    ce_loss: float
    z_loss: float
    grad_norm: float
    n_tokens: int
    skipped: bool


def choose_precision(requested: str, device: torch.device) -> tuple[torch.dtype, float]:
    """(compute dtype, its measured matmul peak). ``auto``: bf16 where it is clearly faster than fp32."""
    if requested == "fp32":
        return torch.float32, measure_peak_flops(device, torch.float32)
    if requested == "bf16":
        return torch.bfloat16, measure_peak_flops(device, torch.bfloat16)
    fp32 = measure_peak_flops(device, torch.float32)
    if device.type == "cuda":
        return torch.bfloat16, measure_peak_flops(device, torch.bfloat16)
    # A small probe first: without bf16 matrix units (AVX2-only CPUs) a 1024^2 bf16 matmul takes
    # seconds, and measuring it properly would cost half a minute at every start.
    if measure_peak_flops(device, torch.bfloat16, size=256, repeats=1) < fp32:
        return torch.float32, fp32
    bf16 = measure_peak_flops(device, torch.bfloat16, size=1024, repeats=2)
    return (torch.bfloat16, bf16) if bf16 > 1.5 * fp32 else (torch.float32, fp32)


def _labels(micro: dict, device: torch.device) -> torch.Tensor:
    labels = shift_labels(micro["input_ids"])
    mask = micro.get("instance_mask")
    if mask is not None:
        labels[~mask] = IGNORE_INDEX  # the whole instance is loss-masked (spec §3.4)
    return labels.to(device, non_blocking=True)


def _sync_context(model: torch.nn.Module, sync: bool):
    """Skip the gradient all-reduce on all but the last micro-batch (DDP / FSDP2)."""
    if hasattr(model, "no_sync") and not sync:
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()


def train_step(model, optimizer, batch: StepBatch, cfg: TrainConfig, env: DistEnv, dtype) -> StepResult:
    """Forward/backward over the micro-batches, clip, and step unless something is not finite."""
    micro = batch.micro_batches()
    labels = [_labels(mb, env.device) for mb in micro]
    n_tokens = all_reduce_sum(sum((lab != IGNORE_INDEX).sum() for lab in labels).to(env.device).float())
    normalizer = n_tokens.clamp(min=1.0)
    autocast = torch.autocast(env.device.type, dtype=dtype, enabled=dtype != torch.float32)
    sums = torch.zeros(2, device=env.device)
    for i, (mb, lab) in enumerate(zip(micro, labels, strict=True)):
        ids = mb["input_ids"].to(env.device, non_blocking=True)
        with _sync_context(model, i == len(micro) - 1), autocast:
            out = model(
                ids,
                labels=lab,
                z_loss_multiplier=cfg.trainer.z_loss_multiplier,
                loss_normalizer=normalizer,
                loss_chunk_size=cfg.trainer.loss_chunk_size,
            )
            # Each rank's loss is its share of the global mean; DDP/FSDP average gradients over
            # ranks, so scale by the world size to make that average the global sum.
            ((out.ce_loss + out.z_loss) * env.world_size).backward()
        sums += torch.stack([out.ce_loss.detach(), out.z_loss.detach()])
    clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    if hasattr(grad_norm, "full_tensor"):
        grad_norm = grad_norm.full_tensor()
    sums = all_reduce_sum(sums)
    values = torch.cat([sums, grad_norm.reshape(1).to(sums)]).tolist()  # one host sync per step
    finite = all(math.isfinite(v) for v in values)
    if finite:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(values[0], values[1], values[2], int(n_tokens.item()), skipped=not finite)


@torch.no_grad()
def heldout_loss(model, loader: ValidationLoader, env: DistEnv, dtype) -> dict:
    """Mean CE per target token over the validation files (every instance once), and perplexity."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(2, device=env.device, dtype=torch.float64)
    autocast = torch.autocast(env.device.type, dtype=dtype, enabled=dtype != torch.float32)
    for batch in loader:
        ids = batch["input_ids"].to(env.device)
        labels = shift_labels(ids)
        with autocast:
            out = model(ids, labels=labels, z_loss_multiplier=0.0, loss_normalizer=1.0)
        sums += torch.stack([out.ce_loss.double(), (labels != IGNORE_INDEX).sum().double()])
    sums = all_reduce_sum(sums)
    model.train(was_training)
    loss = (sums[0] / sums[1].clamp(min=1)).item()
    return {"val_loss": loss, "val_perplexity": math.exp(min(loss, 50.0)), "val_tokens": int(sums[1].item())}


def _init_from(cfg: TrainConfig, model, optimizer, env: DistEnv) -> str:
    """Stage 2: weights (and AdamW moments) from a stage-1 checkpoint or an imported HF model; never
    the data position (the anneal reads another mix)."""
    path = Path(cfg.init.checkpoint)
    if (path / "train").is_dir():
        load_checkpoint(path, model, optimizer if cfg.init.load_optimizer else None, env)
        return f"model{' + optimizer' if cfg.init.load_optimizer else ''} from {path}"
    model_dir = resolve_model_dir(path)
    found = read_config(model_dir)
    if found.replace(eos_token_id=None, pad_token_id=None, bos_token_id=None) != unwrap(model).config.replace(
        eos_token_id=None, pad_token_id=None, bos_token_id=None
    ):
        raise ValueError(
            f"init.checkpoint {path}: its model shape differs from the config's model:\n"
            f"  checkpoint: {found}\n  config:     {unwrap(model).config}"
        )
    state = read_state_dict(model_dir)
    check_state_dict(state, found, str(model_dir))
    load_model_weights(model, state)
    return f"model weights from {model_dir}"


def _check_same_model(checkpoint: Path, cfg: TrainConfig) -> None:
    """Refuse to resume a run folder whose checkpoint holds another model, naming the difference."""
    found = read_config(checkpoint) if (checkpoint / "model").is_dir() else None
    if found is None or found == cfg.model:
        return
    diffs = [
        f"model.{k}: checkpoint {getattr(found, k)!r}, config {getattr(cfg.model, k)!r}"
        for k in vars(cfg.model)
        if getattr(found, k) != getattr(cfg.model, k)
    ]
    raise ValueError(
        f"trainer.save_folder {checkpoint.parent} holds a checkpoint of another model ({'; '.join(diffs)}); "
        "use a new save_folder"
    )


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) training as configured; returns a summary of the run."""
    env = init_distributed(cfg.trainer.device)
    if env.device.type == "cpu" and cfg.trainer.cpu_malloc_mmap_threshold_mib:
        set_malloc_mmap_threshold(cfg.trainer.cpu_malloc_mmap_threshold_mib)
    save_folder = Path(cfg.trainer.save_folder)
    if env.is_main:
        save_folder.mkdir(parents=True, exist_ok=True)
        save_train_config(cfg, save_folder / "config.yaml")

    mix = resolve_mix(load_mix_config(cfg.data.mix), cfg.data.seq_len, cfg.data.variables)
    loader = TrainLoader(
        mix,
        global_batch_size=cfg.data.global_batch_size,
        seed=cfg.data.seed,
        micro_batch_size=cfg.data.micro_batch_size,
        rank=env.rank,
        world_size=env.world_size,
        filter_repeats=cfg.data.filter_repeats,
        pin_memory=env.device.type == "cuda",
    )
    val_loader = None
    if cfg.data.validation:
        val_loader = ValidationLoader(
            cfg.data.validation,
            cfg.data.seq_len,
            cfg.data.micro_batch_size,
            max_instances=cfg.data.validation_max_instances,
            variables=cfg.data.variables,
            rank=env.rank,
            world_size=env.world_size,
        )
    tokens_per_step = loader.tokens_per_step
    total_steps = cfg.trainer.max_steps or math.ceil(cfg.trainer.max_tokens / tokens_per_step)
    dtype, peak = choose_precision(cfg.trainer.precision, env.device)

    model = build_model(cfg.model, env.device, seed=cfg.trainer.init_seed)
    model.activation_checkpointing = cfg.trainer.activation_checkpointing
    if cfg.trainer.compile:
        for layer in model.model.layers:
            layer.compile()
    fsdp_dtype = dtype if env.device.type == "cuda" and dtype != torch.float32 else None
    model = parallelize(
        model, env, cfg.trainer.parallel, param_dtype=fsdp_dtype, hsdp_replicas=cfg.trainer.hsdp_replicas
    )
    model.train()
    optimizer = build_optimizer(model, cfg.optim)
    loss_spikes = SpikeDetector(
        cfg.trainer.spikes.window, cfg.trainer.spikes.sigmas, cfg.trainer.spikes.min_count
    )
    norm_spikes = SpikeDetector(
        cfg.trainer.spikes.window, cfg.trainer.spikes.sigmas, cfg.trainer.spikes.min_count
    )

    start_step, last_lr = 0, 0.0
    latest = latest_checkpoint(save_folder)
    if latest is not None:
        _check_same_model(latest, cfg)
        state = load_checkpoint(latest, model, optimizer, env)
        loader.load_state_dict(state["loader"])
        loss_spikes.load_state_dict(state["spikes"]["loss"])
        norm_spikes.load_state_dict(state["spikes"]["grad_norm"])
        start_step = state["step"]
        origin = f"resumed from {latest}"
    elif cfg.init.checkpoint:
        origin = _init_from(cfg, model, optimizer, env)
    else:
        origin = f"random init (seed {cfg.trainer.init_seed})"
    metrics = None
    if env.is_main:
        sinks = open_sinks(cfg, save_folder, start_step)
        metrics = MetricsLog(save_folder / "metrics.jsonl", start_step, sinks)
    save_group = background_group() if cfg.checkpoint.async_save else None
    fpt = flops_per_token(cfg.model, cfg.data.seq_len)
    if env.is_main:
        log(
            f"olmo2 train: {save_folder} | {origin} | steps {start_step}->{total_steps} | "
            f"{env.world_size} rank(s), {resolve_parallel(cfg.trainer.parallel, env.world_size)}, "
            f"{env.device.type}, {str(dtype).removeprefix('torch.')} | {tokens_per_step:,} tokens/step\n"
            f"{mix.summary()}"
        )

    gc.disable()
    consecutive_skips, step, run_start, save_due = 0, start_step, time.perf_counter(), False
    timed_steps, timed_seconds = 0, 0.0
    pending = None  # the last checkpoint save, possibly still being written in the background
    try:
        batches = iter(loader)
        while step < total_steps:
            t0 = time.perf_counter()
            batch = next(batches)
            step += 1
            last_lr = cfg.optim.lr * lr_factor(cfg.schedule, step, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = last_lr
            result = train_step(model, optimizer, batch, cfg, env, dtype)
            spikes = [
                n
                for n, det, v in (
                    ("loss", loss_spikes, result.ce_loss),
                    ("grad_norm", norm_spikes, result.grad_norm),
                )
                if det.check(v)
            ]
            elapsed = time.perf_counter() - t0
            timed_steps, timed_seconds = timed_steps + 1, timed_seconds + elapsed
            record = {
                "step": step,
                "loss": result.ce_loss,
                "z_loss": result.z_loss,
                "grad_norm": result.grad_norm,
                "lr": last_lr,
                "tokens": step * tokens_per_step,
                "tokens_per_sec": tokens_per_step / elapsed,
                "mfu": fpt * tokens_per_step / elapsed / (peak * env.world_size),
                "batch_hash": batch.index_hash,
                "skipped": result.skipped,
            }
            if spikes:
                record["spikes"] = spikes
                if env.is_main:
                    log(f"spike in {', '.join(spikes)} at step {step} (batch {batch.index_hash})")
            consecutive_skips = consecutive_skips + 1 if result.skipped else 0
            if val_loader is not None and cfg.trainer.eval_every and step % cfg.trainer.eval_every == 0:
                record.update(heldout_loss(model, val_loader, env, dtype))
            if metrics is not None:
                metrics.write(record)
                if step % cfg.trainer.log_every == 0 or step == total_steps:
                    eta = timed_seconds / timed_steps * (total_steps - step)
                    log(console_line(record, total_steps, eta))
            if consecutive_skips >= cfg.trainer.spikes.max_consecutive_skips:
                if pending is not None:
                    pending.wait()
                last = latest_checkpoint(save_folder)
                raise TrainingHalted(
                    f"stopped at step {step}: {consecutive_skips} consecutive steps had a non-finite loss or "
                    f"gradient (last batch {batch.index_hash}); no update was applied for them. The last "
                    f"good checkpoint is {last or '(none yet)'}. Rerun the same command to resume from it, "
                    f"e.g. with a lower optim.lr or schedule.warmup_steps."
                )
            if cfg.trainer.gc_every and step % cfg.trainer.gc_every == 0:
                gc.collect(1)
            save_due = save_due or step % cfg.checkpoint.save_every == 0 or step == total_steps
            if save_due and not result.skipped:  # never checkpoint a state that just failed
                state = {
                    "loader": loader.state_dict(),
                    "lr": last_lr,
                    "spikes": {"loss": loss_spikes.state_dict(), "grad_norm": norm_spikes.state_dict()},
                }
                save_due = False
                if pending is not None:
                    pending.wait()  # one save at a time; raises if the previous one failed
                pending = save_checkpoint(
                    save_folder,
                    step,
                    model,
                    optimizer,
                    state,
                    env,
                    export_hf=cfg.checkpoint.export_hf,
                    keep_last=cfg.checkpoint.keep_last,
                    async_save=cfg.checkpoint.async_save,
                    process_group=save_group,
                )
        summary = {
            "step": step,
            "total_steps": total_steps,
            "lr": last_lr,
            "seconds": time.perf_counter() - run_start,
        }
        if val_loader is not None and not cfg.trainer.eval_every:
            summary.update(heldout_loss(model, val_loader, env, dtype))
        return summary
    finally:
        try:
            if pending is not None:  # the last save is complete (or its error raised) when train() ends
                pending.wait()
        finally:
            gc.enable()
            if metrics is not None:
                metrics.close()
            barrier()
            if env.owns_process_group:
                torch.distributed.destroy_process_group()
