"""The reward plot of an RLVR run (GRPO or PPO), drawn from its ``metrics.jsonl`` without torch."""

from __future__ import annotations

from pathlib import Path

import yaml

from olmo2.train.monitor import read_metrics


def plot_rewards(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Mean reward (and KL to the reference) per step of an RLVR run, GRPO or PPO, as a PNG (default
    ``RUN_DIR/rewards.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    try:
        data = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}
