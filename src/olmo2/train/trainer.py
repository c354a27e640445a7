"""``olmo2 train``: the OLMo 2 training loop (spec §3), from one CPU to many GPUs.

One optimizer step = one global batch, split over ranks and micro-batches. The loss of every
micro-batch is a *sum* over its target tokens divided by the number of target tokens in the whole
global batch (counted before the forward passes), so neither gradient accumulation nor the number of
ranks changes the loss or the gradients. (OLMo divides by ``input_ids.numel()`` instead; the two
differ only when instances are loss-masked, and ours is the true mean over trained tokens.)

A run folder holds ``config.yaml``, ``metrics.jsonl`` and ``step<N>/`` checkpoints (and
``tensorboard/`` or W&B files if enabled); starting a run whose folder has a complete checkpoint
resumes from the latest one, exactly. One run at a time holds the folder, and a refused start leaves
it as it was (``olmo2.train.run_folder``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from pathlib import Path

import torch

from olmo2.assets import AssetError
from olmo2.chat import write_hf_chat_files
from olmo2.config import ConfigError
from olmo2.data.loader import StepBatch, TrainLoader, ValidationLoader
from olmo2.data.mix import Mix, find_files, load_mix_config, resolve_mix
from olmo2.data.token_files import check_manifests
from olmo2.model.checkpoint import (
    CheckpointError,
    check_state_dict,
    read_config,
    read_state_dict,
    resolve_model_dir,
)
from olmo2.model.config import ModelConfig
from olmo2.model.loss import IGNORE_INDEX, shift_labels
from olmo2.model.transformer import build_model
from olmo2.tokenizer import load_tokenizer
from olmo2.train.checkpoint import checkpoint_fault, load_checkpoint, load_model_weights
from olmo2.train.components import Checkpointer, GarbageCollection, HeldoutEval, MetricsWriter
from olmo2.train.config import TrainConfig, load_train_config, save_train_config
from olmo2.train.distributed import (
    DistEnv,
    all_gather_object,
    all_reduce_sum,
    barrier,
    init_distributed,
    resolve_parallel,
    set_malloc_mmap_threshold,
    unwrap,
)
from olmo2.train.engine import (
    Part,
    ScheduledOptimizer,
    SpikeGuard,
    Trainer,
    TrainingHalted,
    TrainModule,
    apply_update,
    global_count,
    log_main,
)
from olmo2.train.monitor import flops_per_token, log
from olmo2.train.run_folder import hold_run_folder
from olmo2.train.runtime import autocast, build_parallel_model, choose_precision, sync_gradients
from olmo2.train.schedule import lr_factor
from olmo2.train.tracking import open_sinks

__all__ = ["LMTrainModule", "TrainingHalted", "check_data", "heldout_sums", "train"]


def _labels(micro: dict, device: torch.device) -> torch.Tensor:
    labels = shift_labels(micro["input_ids"])
    mask = micro.get("instance_mask")
    if mask is not None:
        labels[~mask] = IGNORE_INDEX  # the whole instance is loss-masked (spec §3.4)
    return labels.to(device, non_blocking=True)


@torch.no_grad()
def heldout_sums(
    model,
    loader: ValidationLoader,
    device: torch.device,
    dtype: torch.dtype,
    byte_lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """This rank's float64 ``[CE in nats, target tokens, target UTF-8 bytes]`` over ``loader``, the one
    held-out pass behind both the training run's ``val_loss`` and the recipe's bits per byte. Bytes are
    counted only given ``byte_lengths`` (the bytes each token id stands for), else stay 0."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, device=device, dtype=torch.float64)
    if byte_lengths is not None:
        byte_lengths = byte_lengths.to(device)
    for batch in loader:
        ids = batch["input_ids"].to(device)
        labels = shift_labels(ids)
        with autocast(device, dtype):
            out = model(ids, labels=labels, z_loss_multiplier=0.0, loss_normalizer=1.0)
        valid = labels != IGNORE_INDEX
        sums[:2] += torch.stack([out.ce_loss.double(), valid.sum().double()])
        if byte_lengths is not None:
            sums[2] += byte_lengths[labels[valid]].sum()
    model.train(was_training)
    return sums


class LMTrainModule(TrainModule):
    """Pretraining and anneals: next-token CE + z-loss over one global batch of token instances.

    The loss of every micro-batch is a *sum* over its target tokens divided by the number of target
    tokens in the whole global batch (counted before the forward passes), so neither gradient
    accumulation nor the number of ranks changes the loss or the gradients.
    """

    def __init__(
        self, model, cfg: TrainConfig, env: DistEnv, dtype: torch.dtype, peak: float, total_steps: int
    ):
        self.model, self.cfg, self.env, self.dtype = model, cfg, env, dtype
        self.optim = ScheduledOptimizer(model, cfg.optim, cfg.schedule, total_steps)
        self.tokens_per_step = cfg.data.global_batch_size * cfg.data.seq_len
        self.flops_per_token = flops_per_token(cfg.model, cfg.data.seq_len)
        self.peak_flops = peak

    def parts(self) -> dict[str, Part]:
        return {"model": Part(self.model, self.optim.optimizer)}

    def train_step(self, batch: StepBatch, step: int, guard: SpikeGuard | None) -> dict:
        """Forward/backward over the micro-batches, then the shared update (clip, finite, spikes)."""
        lr = self.optim.set_lr(step)
        env, model = self.env, self.model
        micro = batch.micro_batches()
        labels = [_labels(mb, env.device) for mb in micro]
        n_tokens = global_count(sum((lab != IGNORE_INDEX).sum() for lab in labels), env.device)
        normalizer = n_tokens.clamp(min=1.0)
        sums = torch.zeros(2, device=env.device)
        for i, (mb, lab) in enumerate(zip(micro, labels, strict=True)):
            ids = mb["input_ids"].to(env.device, non_blocking=True)
            with sync_gradients(model, i == len(micro) - 1), autocast(env.device, self.dtype):
                out = model(
                    ids,
                    labels=lab,
                    z_loss_multiplier=self.cfg.loss.z_loss_multiplier,
                    loss_normalizer=normalizer,
                    loss_chunk_size=self.cfg.loss.chunk_size,
                )
                # Each rank's loss is its share of the global mean; DDP/FSDP average gradients over
                # ranks, so scale by the world size to make that average the global sum.
                ((out.ce_loss + out.z_loss) * env.world_size).backward()
            sums += torch.stack([out.ce_loss.detach(), out.z_loss.detach()])
        outcome = apply_update([self.optim.update_part], all_reduce_sum(sums), guard)
        ce_loss, z_loss = outcome.values
        return {
            "loss": ce_loss,
            "z_loss": z_loss,
            **outcome.record(),
            "lr": lr,
            "n_tokens": self.tokens_per_step,
            "batch_hash": batch.index_hash,
        }

    def heldout_loss(self, loader: ValidationLoader) -> dict:
        """Mean CE per target token over the validation files (every instance once), and perplexity."""
        nats, tokens, _ = all_reduce_sum(heldout_sums(self.model, loader, self.env.device, self.dtype))
        loss = (nats / tokens.clamp(min=1)).item()
        return {
            "val_loss": loss,
            "val_perplexity": math.exp(min(loss, 50.0)),
            "val_tokens": int(tokens.item()),
        }


def _weight_shapes(config: ModelConfig) -> ModelConfig:
    """What fixes the tensors' shapes: not the special token ids, nor the tokenizer's vocabulary size
    within the embedding (a released HF config says 100352 for both; ours keeps dolma2's 100278)."""
    return config.replace(
        eos_token_id=None, pad_token_id=None, bos_token_id=None, vocab_size=config.embedding_size
    )


def _init_from(cfg: TrainConfig, module: LMTrainModule, env: DistEnv) -> str:
    """Stage 2: weights (and AdamW moments) from a stage-1 checkpoint or an imported HF model; never
    the data position (the anneal reads another mix)."""
    path, model = Path(cfg.init.checkpoint), module.model
    if (path / "train").is_dir() and cfg.init.revision is None:  # with one: refused just below
        faults = [f for f in all_gather_object(checkpoint_fault(path, env.rank, env.world_size)) if f]
        if faults:  # a stage-2 start has no earlier checkpoint to fall back to
            raise ValueError(f"init.checkpoint {path} is damaged: {faults[0]}")
        optimizer = module.optim.optimizer if cfg.init.load_optimizer else None
        load_checkpoint(path, {"model": Part(model, optimizer)}, env, restore_rng=False)
        return f"model{' + optimizer' if cfg.init.load_optimizer else ''} from {path}"
    try:
        model_dir = resolve_model_dir(cfg.init.checkpoint, cfg.init.revision)
    except CheckpointError as e:
        raise ValueError(f"init.checkpoint: {e}") from None
    found = read_config(model_dir)
    if _weight_shapes(found) != _weight_shapes(unwrap(model).config):
        raise ValueError(
            f"init.checkpoint {path}: its model shape differs from the config's model:\n"
            f"  checkpoint: {found}\n  config:     {unwrap(model).config}"
        )
    state = read_state_dict(model_dir)
    check_state_dict(state, found, str(model_dir))
    load_model_weights(model, state)
    return f"model weights from {model_dir}"


def _check_same_model(checkpoint: Path, cfg: TrainConfig) -> None:
    """Refuse to resume a run folder whose checkpoint holds another model, naming the difference.
    The model is the checkpoint's HF export, else (``export_hf: false``) the run's ``config.yaml``,
    which is written only by a run that started, so it is the one that saved the checkpoints."""
    found, saved_config = None, checkpoint.parent / "config.yaml"
    if (checkpoint / "model").is_dir():
        found = read_config(checkpoint)
    elif saved_config.is_file():
        with contextlib.suppress(ConfigError):  # a config of an older layout: the load will tell
            found = load_train_config(saved_config).model
    if found is None or found == cfg.model:
        return
    diffs = [
        f"model.{k}: checkpoint {getattr(found, k)!r}, config {getattr(cfg.model, k)!r}"
        for k in vars(cfg.model)
        if getattr(found, k) != getattr(cfg.model, k)
    ]
    raise ValueError(
        f"run.folder {checkpoint.parent} holds a checkpoint of another model ({'; '.join(diffs)}); "
        "use a new run.folder"
    )


def check_data(cfg: TrainConfig) -> None:
    """``olmo2 train --dry-run``: the mix resolves (its files exist, whole tokens, shares and repeats
    fit) and the validation files exist. File sizes only: no token or manifest is read."""
    mix = load_mix_config(cfg.data.mix)  # its errors name the file
    try:
        resolve_mix(mix, cfg.data.seq_len, cfg.data.variables)
    except ConfigError as e:
        raise ConfigError(f"data.mix ({cfg.data.mix}): {e}") from None
    find_files(cfg.data.validation, cfg.data.variables, "data.validation: ")


def _check_manifests(cfg: TrainConfig, mix: Mix, env: DistEnv) -> None:
    """Data tokenized for another model fails here, before any step, instead of training on wrong ids."""
    held_out = [path for path, _, _ in find_files(cfg.data.validation, cfg.data.variables, "validation: ")]
    note = check_manifests(
        [*mix.files, *held_out], eos_token_id=cfg.model.eos_token_id, vocab_size=cfg.model.vocab_size
    )
    if env.is_main:
        log(note)


def _tokenizer_export(cfg: TrainConfig, env: DistEnv) -> Callable[[Path], None] | None:
    """What each checkpoint's ``model/`` gets beside the weights, so that other tools (transformers,
    lm-eval) load it as is: the tokenizer files with the chat template, written as post-training
    and ``convert to-hf`` write them. The tokenizer is pretraining's (dolma2, or ``$OLMO2_TOKENIZER``);
    a model built for another vocabulary, or a tokenizer that cannot be fetched, gets none (noted)."""
    if not cfg.checkpoint.export_hf:
        return None
    try:
        tok = load_tokenizer()
    except AssetError as e:
        log_main(env, f"checkpoints' model/ get no tokenizer files: {e}")
        return None
    if tok.vocab_size != cfg.model.vocab_size:
        log_main(
            env,
            f"checkpoints' model/ get no tokenizer files: model.vocab_size {cfg.model.vocab_size} is not "
            f"the tokenizer's {tok.vocab_size}",
        )
        return None
    return lambda model_dir: write_hf_chat_files(tok, model_dir, model_max_length=cfg.model.max_seq_len)


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) pretraining or an anneal as configured; returns a summary of the run."""
    env = init_distributed(cfg.runtime.device)
    if env.device.type == "cpu" and cfg.runtime.cpu_malloc_mmap_threshold_mib:
        set_malloc_mmap_threshold(cfg.runtime.cpu_malloc_mmap_threshold_mib)
    save_folder = Path(cfg.run.folder)
    try:
        return _train_in(cfg, env, save_folder)
    finally:
        barrier()
        if env.owns_process_group:
            torch.distributed.destroy_process_group()


def _train_in(cfg: TrainConfig, env: DistEnv, save_folder: Path) -> dict:
    """``train`` once the ranks are joined: hold the run folder, check, restore or start, train."""
    with hold_run_folder(save_folder, env) as run_folder:
        run_folder.on_start(lambda: save_train_config(cfg, save_folder / "config.yaml"))
        mix = resolve_mix(load_mix_config(cfg.data.mix), cfg.data.seq_len, cfg.data.variables)
        _check_manifests(cfg, mix, env)
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
        total_steps = cfg.run.max_steps or math.ceil(cfg.run.max_tokens / loader.tokens_per_step)
        dtype, peak = choose_precision(cfg.runtime.precision, env.device)
        model = build_parallel_model(
            build_model(cfg.model, env.device, seed=cfg.init.seed),
            env=env,
            dtype=dtype,
            parallel=cfg.parallel.strategy,
            hsdp_replicas=cfg.parallel.hsdp_replicas,
            activation_checkpointing=cfg.parallel.activation_checkpointing,
            compile=cfg.runtime.compile,
        )
        module = LMTrainModule(model, cfg, env, dtype, peak, total_steps)
        components = [
            MetricsWriter(
                save_folder / "metrics.jsonl",
                env,
                log_every=cfg.logging.every,
                open_sinks=lambda start: open_sinks(cfg, save_folder, start),
                header=lambda t: (
                    f"olmo2 train: {save_folder} | {t.origin} | steps {t.step}->{t.total_steps} | "
                    f"{env.world_size} rank(s), {resolve_parallel(cfg.parallel.strategy, env.world_size)}, "
                    f"{env.device.type}, {str(dtype).removeprefix('torch.')} | "
                    f"{loader.tokens_per_step:,} tokens/step\n{mix.summary()}"
                ),
            ),
            GarbageCollection(cfg.runtime.gc_every),
        ]
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
            components.insert(0, HeldoutEval(lambda: module.heldout_loss(val_loader), cfg.run.eval_every))
        components.append(run_folder)  # last: config.yaml once everything else has started
        spikes = cfg.spikes
        trainer = Trainer(
            module,
            loader,
            total_steps,
            env,
            components=components,
            checkpointer=Checkpointer(
                save_folder,
                cfg.checkpoint,
                env,
                check_resume=lambda path: _check_same_model(path, cfg),
                write_extra_files=_tokenizer_export(cfg, env),
            ),
            guard=SpikeGuard(spikes.window, spikes.sigmas, spikes.min_count, spikes.skip_spikes),
            max_consecutive_skips=spikes.max_consecutive_skips,
            on_fresh_start=lambda: (
                _init_from(cfg, module, env) if cfg.init.checkpoint else f"random init (seed {cfg.init.seed})"
            ),
        )
        summary = trainer.fit()
        summary["lr"] = (
            cfg.optim.lr * lr_factor(cfg.schedule, trainer.step, total_steps) if trainer.step else 0.0
        )
        return summary
