"""``olmo2 plot RUN_DIR``: loss, z-loss, gradient norm, LR and throughput of a run, redrawn from
``metrics.jsonl`` at any time (also while the run is going)."""

from __future__ import annotations

from pathlib import Path

from olmo2.train.monitor import read_metrics


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    if not records:
        raise ValueError(f"{run_dir}/metrics.jsonl is empty: nothing to plot yet")
    steps = [r["step"] for r in records]
    panels = [
        ("loss", "training loss (CE per token)"),
        ("grad_norm", "gradient L2 norm (before clipping)"),
        ("lr", "learning rate"),
        ("z_loss", "z-loss"),
        ("tokens_per_sec", "tokens / s"),
    ]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.2 * len(panels)), sharex=True)
    for ax, (key, title) in zip(axes, panels, strict=True):
        ax.plot(steps, [r[key] for r in records], lw=1)
        if key == "loss" and val:
            ax.plot(*zip(*val, strict=True), "o-", ms=3, label="held-out")
            ax.legend()
        spikes = [r["step"] for r in records if key in r.get("spikes", [])]
        for s in spikes:
            ax.axvline(s, color="red", alpha=0.3, lw=0.8)
        skipped = [r["step"] for r in records if r.get("skipped")]
        for s in skipped:
            ax.axvline(s, color="black", alpha=0.4, lw=0.8, ls="--")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("optimizer step")
    fig.suptitle(str(Path(run_dir).name))
    fig.tight_layout()
    out = Path(out) if out else Path(run_dir) / "training.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return [out]
