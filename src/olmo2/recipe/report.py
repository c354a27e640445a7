"""The recipe report: ``report.md`` plus PNG plots, redrawn from run folders and eval results.

It answers the paper's question for this run, with the measured numbers whatever they are: did the
anneals improve the held-out metrics over stage 1, and did the soup improve over the anneals?
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from olmo2.recipe.flops import run_flops
from olmo2.train.monitor import read_metrics


def _flops(run_dir: str | None) -> float:
    if not run_dir:
        return 0.0
    return run_flops(run_dir).flops


def _plot_losses(out: Path, stage1: dict, anneals: list[dict], steps: list[str]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    offset = 0
    if stage1.get("run_dir"):
        rec = read_metrics(stage1["run_dir"])
        ax.plot([r["tokens"] for r in rec], [r["loss"] for r in rec], lw=1, color="black", label="stage 1")
        offset = rec[-1]["tokens"]
    for step, run in zip(steps, anneals, strict=True):
        rec = read_metrics(run["run_dir"])
        ax.plot([offset + r["tokens"] for r in rec], [r["loss"] for r in rec], lw=1, label=step)
    ax.set_xlabel("training tokens")
    ax.set_ylabel("training loss (CE per token)")
    ax.set_title("Stage 1 and the stage-2 anneals (different data mixes: compare within a curve)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "loss_curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def metric_rows(evals: dict[str, dict]) -> tuple[list[str], dict[str, dict[str, float]]]:
    """Metric names and {checkpoint: {metric: value}}: held-out BPB (lower is better), task scores."""
    rows: dict[str, dict[str, float]] = {}
    names: list[str] = []
    for ckpt, result in evals.items():
        row = {}
        for set_name, m in result.get("heldout", {}).items():
            row[f"bpb/{set_name}"] = m["bits_per_byte"]
        tasks = result.get("tasks", {})
        for task, value in tasks.get("summary", {}).items():
            # bits per byte of a generative task is lower-better, like the held-out sets: the "bpb/"
            # prefix is what the verdicts and the Pareto score (task/ only) read it by
            lower_better = tasks.get("tasks", {}).get(task, {}).get("primary_metric") == "bits_per_byte"
            row[f"{'bpb' if lower_better else 'task'}/{task}"] = value
        rows[ckpt] = row
        names += [k for k in row if k not in names]
    return names, rows


def _plot_metrics(out: Path, names: list[str], rows: dict[str, dict[str, float]]) -> Path | None:
    if not names:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(names), figsize=(2.6 * len(names) + 1, 3.2), squeeze=False)
    colors = {"stage1": "#495057", "soup": "#2b8a3e"}
    for ax, name in zip(axes[0], names, strict=True):
        ckpts = [c for c in rows if name in rows[c]]
        values = [rows[c][name] for c in ckpts]
        ax.bar(range(len(ckpts)), values, color=[colors.get(c, "#4dabf7") for c in ckpts])
        ax.set_xticks(range(len(ckpts)), [c.replace("anneal-", "") for c in ckpts], rotation=45, fontsize=7)
        lo, hi = min(values), max(values)
        pad = (hi - lo) * 0.5 or abs(hi) * 0.05 or 0.01
        ax.set_ylim(lo - pad, hi + pad)
        better = "lower" if name.startswith("bpb/") else "higher"
        ax.set_title(f"{name}\n({better} is better)", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = out / "eval_metrics.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _verdict(names: list[str], rows: dict[str, dict[str, float]]) -> list[str]:
    """Plain sentences, with the numbers, on the two claims of spec §5 for each metric: each anneal
    improves on stage 1, and the soup is at least as good as its best ingredient; then a tally."""
    lines, soup_tally = [], []
    anneal_names = [c for c in rows if c.startswith("anneal")]
    for name in names:
        lower_better = name.startswith("bpb/")
        s1 = rows.get("stage1", {}).get(name)
        anneals = {c: rows[c][name] for c in anneal_names if name in rows[c]}
        if s1 is None or not anneals:
            continue

        def better(a: float, b: float, lower_better: bool = lower_better) -> bool:
            return a < b if lower_better else a > b

        improved = [c for c, v in anneals.items() if better(v, s1)]
        values = ", ".join(f"{v:.4f}" for v in anneals.values())
        text = (
            f"- **{name}** ({'lower' if lower_better else 'higher'} is better): stage 1 {s1:.4f} → "
            f"anneals {values}: {len(improved)} of {len(anneals)} improved on stage 1"
        )
        soup = rows.get("soup", {}).get(name)
        if soup is not None:
            best = min(anneals.values()) if lower_better else max(anneals.values())
            as_good = not better(best, soup)
            soup_tally.append(as_good)
            text += (
                f"; soup {soup:.4f}, "
                + ("at least as good as" if as_good else f"worse by {abs(soup - best):.4f} than")
                + f" its best ingredient ({best:.4f})"
            )
        lines.append(text + ".")
    if soup_tally:
        lines.append(
            f"- The soup is at least as good as its best ingredient on {sum(soup_tally)} of "
            f"{len(soup_tally)} metrics (the paper's claim for souping, spec §5)."
        )
    return lines


def _posttrain_lines(out: Path, posttrain: dict[str, dict]) -> list[str]:
    """What each post-training stage measured on its own data (spec §6), first → last step."""
    lines = ["## Post-training (SFT → DPO → RLVR)", ""]
    if "sft" in posttrain:
        s = posttrain["sft"]
        lines.append(
            f"- SFT: {s['steps']} steps on {s['examples']} chats, loss per assistant token "
            f"{s['first_loss']:.4f} → {s['final_loss']:.4f}"
        )
    if "dpo" in posttrain:
        d = posttrain["dpo"]
        first, final = d["first"], d["final"]
        lines.append(
            f"- DPO: {d['steps']} steps on {d['pairs']} pairs, reward margin {first['margin']:.4f} → "
            f"{final['margin']:.4f}, preference accuracy {first['accuracy']:.2f} → {final['accuracy']:.2f}"
        )
    if "rlvr" in posttrain:
        r = posttrain["rlvr"]
        lines.append(
            f"- RLVR ({r['algorithm']}): {r['steps']} steps on {r['prompts']} prompts, mean verifiable "
            f"reward {r['reward_first_quarter']:.2f} (first quarter of the steps) → "
            f"{r['reward_last_quarter']:.2f} (last quarter)"
        )
    lines.append(f"- final model: {list(posttrain.values())[-1]['model']}")
    if "rlvr" in posttrain:
        plot = Path(posttrain["rlvr"]["model"]).parent / "rewards.png"
        if plot.is_file():
            lines += ["", f"![rewards]({plot.relative_to(out) if plot.is_relative_to(out) else plot})"]
    return lines + [""]


def write_report(
    cfg,
    out: Path,
    stage1: dict,
    anneals: list[dict],
    soup: dict | None,
    evals: dict,
    posttrain: dict[str, dict] | None = None,
) -> dict:
    steps = [step for step, _, _ in cfg.anneal_runs()]
    s1_flops = _flops(stage1.get("run_dir"))
    anneal_flops = [_flops(a["run_dir"]) for a in anneals]
    flops = {"stage1": s1_flops}
    flops.update({step: s1_flops + f for step, f in zip(steps, anneal_flops, strict=True)})
    if soup is not None:
        flops["soup"] = s1_flops + sum(anneal_flops)  # every ingredient counts (spec §8)
    names, rows = metric_rows(evals)
    plots = [_plot_losses(out, stage1, anneals, steps), _plot_metrics(out, names, rows)]

    lines = [f"# Recipe report: {cfg.name}", ""]
    lines += ["## Did annealing and souping help?", ""]
    lines += _verdict(names, rows) or ["- no held-out metrics were configured."]
    lines += ["", "## Held-out metrics", "", "| checkpoint | " + " | ".join(names) + " | FLOPs |"]
    lines.append("|---" * (len(names) + 2) + "|")
    for ckpt, row in rows.items():
        cells = [f"{row[n]:.4f}" if n in row else "" for n in names]
        lines.append(f"| {ckpt} | " + " | ".join(cells) + f" | {flops.get(ckpt, 0):.3g} |")
    lines += [
        "",
        "BPB = bits per UTF-8 byte (lower is better); task scores are each task's primary metric.",
        "",
    ]
    lines += ["## Training compute (6·N·D)", ""]
    lines.append(
        f"- stage 1: {s1_flops:.3g} FLOPs"
        + ("" if stage1.get("run_dir") else " (imported checkpoint: not counted)")
    )
    for step, f in zip(steps, anneal_flops, strict=True):
        lines.append(f"- {step}: {f:.3g} FLOPs")
    lines.append(f"- total, every stage and every anneal: {s1_flops + sum(anneal_flops):.3g} FLOPs")
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots if p is not None]
    if posttrain:
        lines += [""] + _posttrain_lines(out, posttrain)
    lines += ["", "## Steps (in the order they finished)", ""]
    total = 0.0
    for marker in sorted((out / ".done").glob("*.json"), key=lambda p: (p.stat().st_mtime, p.stem)):
        info = json.loads(marker.read_text())
        total += info.get("seconds", 0)
        lines.append(
            f"- {marker.stem}: {info.get('seconds', 0):.0f} s"
            + (f", {info['checkpoint']}" if "checkpoint" in info else "")
        )
    lines.append(f"- total: {total / 60:.1f} min (the steps' own time, summed over the runs that did them)")
    (out / "report.md").write_text("\n".join(lines) + "\n")

    task_names = [n for n in names if n.startswith("task/")]
    points = [
        {
            "name": f"{cfg.name}/{ckpt}",
            "flops": flops[ckpt],
            "score": statistics.mean(row[n] for n in task_names),
            "score_name": "mean task score (" + ", ".join(t[5:] for t in task_names) + ")",
        }
        for ckpt, row in rows.items()
        if task_names and all(n in row for n in task_names) and flops.get(ckpt)
    ]
    (out / "report.json").write_text(json.dumps(points, indent=2) + "\n")
    summary = {"report": str(out / "report.md"), "metrics": rows, "flops": flops}
    if posttrain:
        summary["posttrain"] = posttrain
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
