"""What SFT, DPO and RLVR share: the run config fields, model/tokenizer setup, one training loop
(LR schedule, grad clipping, ``metrics.jsonl``), response log-probs without full logits, the final
HF-format save, ``olmo2 chat`` and the reward plot.

One loop serves all three trainers so they differ only in how a step turns items into a loss.
Single process (one CPU or one GPU); no FSDP here.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from olmo2.config import to_dict
from olmo2.train.loss import IGNORE_INDEX, shift_labels
from olmo2.train.monitor import MetricsLog, log
from olmo2.train.optim import OptimConfig, build_optimizer
from olmo2.train.schedule import ScheduleConfig, lr_factor

__all__ = [
    "PostTrainConfig",
    "StepOptimizer",
    "add_cli_commands",
    "batched",
    "chat",
    "plot_rewards",
    "resolve_device",
    "run_steps",
    "save_final",
    "setup",
    "token_logps",
    "train_loop",
]


@dataclass
class PostTrainConfig:
    """Fields every post-training run has; the trainers subclass it with their own defaults."""

    model: str = ""  # input checkpoint directory (HF format, e.g. from `olmo2 model init` or a prior stage)
    data: str | list[str] = field(default_factory=list)  # JSONL file(s)
    out_dir: str = "runs/posttrain"
    tokenizer: str | None = None  # default: the pinned dolma2 tokenizer
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 = autocast on CUDA; weights stay fp32
    lr: float = 1e-5
    schedule: Literal["linear", "constant"] = "linear"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # <= 0: off
    epochs: int = 1
    batch_size: int = 8  # items per optimizer step
    micro_batch_size: int = 8  # items per forward/backward
    max_steps: int | None = None  # cap on optimizer steps (demos, tests)
    log_every: int = 1  # console line every N steps (metrics.jsonl gets every step)

    def __post_init__(self) -> None:
        self.data = [self.data] if isinstance(self.data, str) else list(self.data)
        if not self.model:
            raise ValueError("model: an input checkpoint directory is required")
        if not self.data:
            raise ValueError("data: at least one JSONL file is required")
        if self.batch_size < 1 or self.micro_batch_size < 1 or self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a positive multiple of micro_batch_size "
                f"({self.micro_batch_size})"
            )
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.lr <= 0 or self.epochs < 1:
            raise ValueError("lr must be > 0 and epochs >= 1")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def setup(cfg: PostTrainConfig):
    """Seed everything, load the tokenizer and the model (fp32, train mode) on the configured device."""
    from olmo2.model.checkpoint import load_model
    from olmo2.tokenizer import load_tokenizer

    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    tok = load_tokenizer(cfg.tokenizer)
    model = load_model(cfg.model, device=device, dtype=torch.float32).train()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    import yaml

    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return model, tok, device


def batched(items: Sequence, size: int) -> list[list]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def autocast(cfg: PostTrainConfig, device: torch.device):
    enabled = cfg.precision == "bf16" and device.type == "cuda"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def token_logps(
    model, input_ids: torch.Tensor, labels: torch.Tensor, *, temperature: float = 1.0, **kwargs
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs [B, T] of the labelled tokens (HF-aligned ``labels``, -100 = none) and their mask.

    Only labelled positions go through the LM head, so the [B, T, vocab] logits never exist: with a
    100k vocabulary that is what makes DPO/GRPO fit on a small machine.
    """
    hidden = model.hidden_states(input_ids, **kwargs)
    targets = shift_labels(labels)
    mask = targets != IGNORE_INDEX
    logits = model.lm_head(hidden[mask]).float()
    if temperature != 1.0:
        logits = logits / temperature
    picked = logits.gather(-1, targets[mask].unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)
    out = torch.zeros(targets.shape, dtype=picked.dtype, device=picked.device)
    out[mask] = picked
    return out, mask


class StepOptimizer:
    """AdamW, the LR schedule and gradient clipping for one model over ``total`` optimizer steps.

    The schedule is linear (to 0 after the last step, HF-style, so the last step still learns) or
    constant, after ``warmup_ratio`` × steps of linear warmup. AdamW uses HF's defaults (β 0.9/0.999)
    as open-instruct does; weight decay applies to every parameter but the input embedding.
    """

    def __init__(self, cfg: PostTrainConfig, model, total: int, *, lr: float | None = None):
        self.lr, self.total = cfg.lr if lr is None else lr, total
        self.opt = build_optimizer(
            model,
            OptimConfig(
                lr=self.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip
            ),
        )
        self.sched = ScheduleConfig(
            name=cfg.schedule, warmup_steps=int(total * cfg.warmup_ratio), alpha_f=0.0, t_max=None
        )
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")

    def begin(self, step: int) -> float:
        """Zero the gradients and set the LR of optimizer step ``step`` (1-based); return that LR."""
        lr = self.lr * lr_factor(self.sched, step, self.total + 1)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        return lr

    def step(self) -> float:
        """Clip the gradients, step; return the gradient norm before clipping."""
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_norm)
        self.opt.step()
        return float(grad_norm)


def run_steps(
    cfg: PostTrainConfig, steps: Sequence, step_fn: Callable[[object, int], dict], *, out_dir: Path
) -> list[dict]:
    """Call ``step_fn(item, step)`` for each element of ``steps``; write each returned record (plus
    ``step`` and ``step_time``) to ``metrics.jsonl`` and every ``log_every`` steps to the console."""
    total = len(steps)
    metrics = MetricsLog(out_dir / "metrics.jsonl")
    records = []
    try:
        for step, item in enumerate(steps, 1):
            t0 = time.perf_counter()
            record = {"step": step, **step_fn(item, step)}
            record["step_time"] = time.perf_counter() - t0
            metrics.write(record)
            records.append(record)
            if step % cfg.log_every == 0 or step == total:
                shown = " ".join(
                    f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in record.items()
                    if k != "step"
                )
                log(f"step {step}/{total} {shown}")
    finally:
        metrics.close()
    return records


def train_loop(
    cfg: PostTrainConfig,
    model,
    steps: Sequence,
    step_fn: Callable[[object, int], dict],
    *,
    out_dir: Path,
) -> list[dict]:
    """Run one optimizer step (``StepOptimizer``) per element of ``steps``; ``step_fn(item, step)``
    does the forward and backward passes (gradients summed over its micro-batches) and returns the
    step's metrics."""
    optim = StepOptimizer(cfg, model, len(steps))

    def one_step(item, step: int) -> dict:
        lr = optim.begin(step)
        model.train()
        record = step_fn(item, step)
        return {**record, "lr": lr, "grad_norm": optim.step()}

    return run_steps(cfg, steps, one_step, out_dir=out_dir)


def n_steps(n_items: int, cfg: PostTrainConfig) -> int:
    per_epoch = math.ceil(n_items / cfg.batch_size)
    total = per_epoch * cfg.epochs
    return min(total, cfg.max_steps) if cfg.max_steps else total


def epoch_batches(items: Sequence, cfg: PostTrainConfig) -> list[list]:
    """Global batches over ``epochs`` passes, reshuffled each epoch with ``seed + epoch``."""
    out = []
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(items), generator=torch.Generator().manual_seed(cfg.seed + epoch))
        out += batched([items[i] for i in order.tolist()], cfg.batch_size)
    return out[: n_steps(len(items), cfg)]


def save_final(model, tok, out_dir: Path) -> Path:
    """``out_dir/model``: the HF checkpoint plus tokenizer files with the chat template, so the result
    loads with ``olmo2 chat``, ``AutoModelForCausalLM`` and ``apply_chat_template`` alike. A rerun in
    the same ``out_dir`` replaces the previous ``model/`` once the new one is fully written."""
    import shutil

    from olmo2.model.checkpoint import save_model
    from olmo2.posttrain.chat import write_hf_chat_files

    final, tmp = out_dir / "model", out_dir / "model.new"
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(model, tmp)
    write_hf_chat_files(tok, tmp)
    if final.exists():  # a rerun in the same out_dir replaces its own previous result
        shutil.rmtree(final)
    tmp.rename(final)
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
) -> list[dict[str, str]]:
    """``olmo2 chat``: read user lines, answer with the chat template and the KV-cache generator.

    ``/exit`` (or end of input) quits, ``/reset`` clears the history. Returns the conversation.
    """
    from olmo2.generate import GenerationConfig, generate
    from olmo2.model.checkpoint import load_model
    from olmo2.posttrain.chat import decode_response, encode_prompt
    from olmo2.tokenizer import load_tokenizer

    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    tok = load_tokenizer(tokenizer)
    model = load_model(ckpt, device=resolve_device(device))
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


def plot_rewards(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Mean reward (and KL to the reference) per step of an RLVR run, GRPO or PPO, as a PNG (default
    ``RUN_DIR/rewards.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from olmo2.train.monitor import read_metrics

    records = [r for r in read_metrics(run_dir) if "reward_mean" in r]
    if not records:
        raise ValueError(f"{run_dir}/metrics.jsonl has no reward_mean: not an RLVR run?")
    steps = [r["step"] for r in records]
    fig, axes = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
    rewards = [r["reward_mean"] for r in records]
    axes[0].plot(steps, rewards, lw=1, alpha=0.5, label="per step")
    window = max(1, min(5, len(rewards) // 4))
    if window > 1:  # a few dozen samples per step are noisy: the trend is in the running mean
        smooth = [
            sum(rewards[max(0, i - window + 1) : i + 1]) / min(window, i + 1) for i in range(len(rewards))
        ]
        axes[0].plot(steps, smooth, lw=2, color="tab:blue", label=f"mean of the last {window} steps")
        axes[0].legend(fontsize=8, loc="lower right")
    axes[0].set_title("mean verifiable reward", fontsize=9)
    axes[1].plot(steps, [r.get("kl", 0.0) for r in records], lw=1, color="tab:orange")
    run_cfg = _run_config(run_dir)
    estimator = run_cfg.get("kl_estimator")
    axes[1].set_title("KL to the reference" + (f" ({estimator}, per token)" if estimator else ""), fontsize=9)
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("step")
    fig.suptitle(Path(run_dir).name + (f" ({run_cfg['algorithm']})" if run_cfg.get("algorithm") else ""))
    fig.tight_layout()
    out = Path(out) if out else Path(run_dir) / "rewards.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _run_config(run_dir: str | Path) -> dict:
    """The run's ``config.yaml`` as a dict ({} if absent or unreadable)."""
    import yaml

    try:
        data = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


# ------------------------------------------------------------------------------------- CLI


def stage_functions(name: str) -> tuple[Callable, Callable]:
    """``(load_config(path, overrides), train(cfg) -> summary)`` of the stage ``sft``, ``dpo`` or ``rlvr``."""
    from olmo2.posttrain import dpo, rlvr, sft

    return {
        "sft": (sft.load_sft_config, sft.train_sft),
        "dpo": (dpo.load_dpo_config, dpo.train_dpo),
        "rlvr": (rlvr.load_rlvr_config, rlvr.train_rlvr),
    }[name]


def _run_stage(args) -> None:
    load, train = stage_functions(args.command)
    cfg = load(args.config, args.overrides)
    if args.dry_run:
        print(json.dumps(to_dict(cfg), indent=2))
        return
    print(json.dumps(train(cfg)))


def _run_chat(args) -> None:
    chat(
        args.checkpoint,
        tokenizer=args.tokenizer,
        system=args.system,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        device=args.device,
    )


def _run_data(args) -> None:
    from olmo2.posttrain.demo_data import write_demo_data

    paths = write_demo_data(
        args.out, task=args.task, n_sft=args.n_sft, n_dpo=args.n_dpo, n_rlvr=args.n_rlvr, seed=args.seed
    )
    for name, path in paths.items():
        print(f"{name}: {path} ({len(path.read_text().splitlines())} records)")


def _run_plot(args) -> None:
    print(f"wrote {plot_rewards(args.run_dir, args.out)}")


def add_cli_commands(commands) -> None:
    """Register ``sft``, ``dpo``, ``rlvr``, ``chat``, ``posttrain-data`` and ``plot-rewards`` on the
    ``olmo2`` argparse sub-parsers (``commands`` = ``parser.add_subparsers(...)``)."""
    for name, help_text in (
        ("sft", "supervised fine-tuning on chats (assistant tokens only; spec §6.2)"),
        ("dpo", "preference tuning: length-normalised DPO, beta 5 (spec §6.3)"),
        ("rlvr", "RL with verifiable rewards: GRPO or PPO with a value model (spec §6.4-6.5)"),
    ):
        p = commands.add_parser(
            name, help=help_text, description=help_text + "; key=value overrides the config"
        )
        p.add_argument("config", help=f"YAML config (configs/posttrain/demo-{name}.yaml)")
        p.add_argument("overrides", nargs="*", help="key=value overrides")
        p.add_argument("--dry-run", action="store_true", help="validate and print the resolved config")
        p.set_defaults(func=_run_stage)
    p = commands.add_parser("chat", help="interactive chat with a checkpoint (stdin lines; /exit quits)")
    p.add_argument("checkpoint", help="model directory (e.g. runs/posttrain-demo/sft/model)")
    p.add_argument("--tokenizer", default=None, help="tokenizer.json (default: the pinned dolma2 one)")
    p.add_argument("--system", default=None, help="system message")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_run_chat)
    p = commands.add_parser(
        "posttrain-data", help="write the offline demo SFT/DPO/RLVR JSONL (reasoning-gym)"
    )
    from olmo2.posttrain.demo_data import TASKS

    p.add_argument("out", help="output folder")
    p.add_argument(
        "--task",
        choices=sorted(TASKS),
        default="chain_sum",
        help="chain_sum: one-digit sums the demo model can learn (default); gsm_symbolic: word problems",
    )
    p.add_argument("--n-sft", type=int, default=2000, help="SFT chats")
    p.add_argument("--n-dpo", type=int, default=128, help="preference pairs (at most)")
    p.add_argument("--n-rlvr", type=int, default=16, help="distinct RLVR prompts (at most)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_run_data)
    p = commands.add_parser("plot-rewards", help="draw an RLVR run's mean reward and KL per step to PNG")
    p.add_argument("run_dir")
    p.add_argument("--out", default=None, help="PNG path (default RUN_DIR/rewards.png)")
    p.set_defaults(func=_run_plot)
