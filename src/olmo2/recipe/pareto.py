"""``olmo2 pareto``: score against training FLOPs, the paper's Fig 1 view (spec §7.2, §8).

The left panel is the paper's reference table (``reference_results``) on a log FLOPs axis with its
Pareto frontier: the models that no other model beats on both axes (no fewer FLOPs *and* a higher
score). The user's own runs go in a separate right panel with their own axes, because a miniature's
score (other tasks, other scale) is not comparable with the paper's averages.

Run files (written by the recipe report) are JSON: a list of
``{"name": str, "flops": float, "score": float, "score_name": str}``, FLOPs in FLOPs (not ×10²³),
counted as ``olmo2 flops`` does, and a score where higher is better (the frontier assumes it; give
one ``score_name`` per file). Extra keys are ignored; a single object is accepted too.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from olmo2.eval.reference_results import Reference, reference_table

COLORS = {
    "fully open": "#d6336c",
    "partially open": "#f08c00",
    "open weights": "#1c7ed6",
    "closed": "#495057",
    None: "#adb5bd",
}
Y_LABELS = {
    "base": "OLMES average of 10 tasks (paper Tab 6 / Tab 22)",
    "instruct": "Tülu 3 dev-suite average (paper Tab 7)",
}


@dataclass(frozen=True)
class RunPoint:
    name: str
    flops: float
    score: float
    score_name: str


@dataclass(frozen=True)
class ParetoPlot:
    path: Path
    frontier: list[str]  # reference models on the frontier, by FLOPs
    run_frontier: list[str]  # the user's runs on their own frontier
    not_plotted: list[str]  # reference models without FLOPs or score

    def summary(self) -> str:
        lines = [f"wrote {self.path}", f"paper frontier: {', '.join(self.frontier)}"]
        if self.run_frontier:
            lines.append(f"frontier of your runs: {', '.join(self.run_frontier)}")
        return "\n".join(lines)


def pareto_frontier(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (flops, score) points that no other point dominates (FLOPs <= and score >=,
    one of them strictly), sorted by FLOPs. Exact duplicates are both kept."""
    keep = []
    for i, (fi, si) in enumerate(points):
        if not any(fj <= fi and sj >= si and (fj < fi or sj > si) for fj, sj in points):
            keep.append(i)
    return sorted(keep, key=lambda i: (points[i][0], points[i][1]))


def load_runs(paths: Sequence[str | Path]) -> list[RunPoint]:
    """Runs from report JSON files, validated (a bad field names the file and entry)."""
    runs = []
    for path in paths:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: runs file not found") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON: {e}") from None
        for i, entry in enumerate([data] if isinstance(data, dict) else data):
            where = f"{path}[{i}]"
            if not isinstance(entry, dict):
                raise ValueError(f"{where}: expected an object with name, flops, score, score_name")
            missing = [k for k in ("name", "flops", "score", "score_name") if k not in entry]
            if missing:
                raise ValueError(f"{where}: missing {', '.join(missing)}")
            try:
                flops, score = float(entry["flops"]), float(entry["score"])
            except (TypeError, ValueError):
                raise ValueError(f"{where}: flops and score must be numbers") from None
            if not (math.isfinite(flops) and flops > 0 and math.isfinite(score)):
                raise ValueError(f"{where}: flops must be positive and score finite, got {flops}, {score}")
            runs.append(RunPoint(str(entry["name"]), flops, score, str(entry["score_name"])))
    return runs


def _place_labels(ax, items, fig) -> None:
    """Label points (x, y, text, big) greedily: the first of a few offsets that overlaps neither a
    marker nor an earlier label (the first offset when all do)."""
    from matplotlib.transforms import Bbox

    offsets = [
        (6, 3),
        (6, -10),
        (-6, 3),
        (-6, -10),
        (6, 11),
        (-6, 11),
        (6, -18),
        (-6, -18),
        (0, 19),
        (0, -27),
    ]
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    placed = []
    for x, y, _, big in items:  # markers are obstacles too
        px, py = ax.transData.transform((x, y))
        r = (7 if big else 3.5) * fig.dpi / 72
        placed.append(Bbox.from_extents(px - r, py - r, px + r, py + r))
    for x, y, text, big in items:
        for i, (dx, dy) in enumerate([*offsets, offsets[0]]):
            ann = ax.annotate(
                text,
                (x, y),
                xytext=(dx + 4 * big * (1 if dx >= 0 else -1), dy),
                textcoords="offset points",
                fontsize=7,
                ha="left" if dx >= 0 else "right",
                fontweight="bold" if big else "normal",
                bbox={"boxstyle": "square,pad=0.05", "fc": "white", "ec": "none", "alpha": 0.75},
            )
            box = ann.get_window_extent(renderer)
            inside = frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1)
            if (inside and not any(box.overlaps(other) for other in placed)) or i == len(offsets):
                placed.append(box)
                break
            ann.remove()


def _draw_frontier(ax, xs, ys, color="#868e96") -> None:
    ax.step(xs, ys, where="post", color=color, lw=1.2, ls="--", zorder=1, label="Pareto frontier")


def _reference_panel(
    ax, fig, refs: Sequence[Reference], table: str, labels: bool
) -> tuple[list[str], list[str]]:
    plotted = [r for r in refs if r.flops is not None and r.avg is not None]
    missing = [r.name for r in refs if r not in plotted]
    front = [plotted[i] for i in pareto_frontier([(r.flops, r.avg) for r in plotted])]
    _draw_frontier(ax, [r.flops for r in front], [r.avg for r in front])
    seen = set()
    for r in plotted:
        group = r.openness if r.openness in COLORS else None
        legend = (group or "openness not stated") if group not in seen else None
        seen.add(group)
        ax.scatter(
            r.flops,
            r.avg,
            s=230 if r.is_olmo2 else 40,
            marker="*" if r.is_olmo2 else "o",
            color=COLORS[group],
            edgecolor="black" if r.is_olmo2 else "white",
            lw=0.8,
            zorder=3,
            label=legend,
        )
    ax.scatter(
        [r.flops for r in front],
        [r.avg for r in front],
        s=110,
        facecolor="none",
        edgecolor="#343a40",
        lw=0.8,
        zorder=2,
        label="on the frontier",
    )
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs, 6·N·D (log scale)")
    ax.set_ylabel(Y_LABELS[table])
    ax.set_title(f"Paper reference ({table} models): OLMo 2 (stars) and comparators", fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7, loc="lower right")
    if labels:
        fig.canvas.draw()
        _place_labels(ax, [(r.flops, r.avg, r.name, r.is_olmo2) for r in plotted], fig)
    return [r.name for r in front], missing


def _runs_panel(ax, fig, runs: Sequence[RunPoint], labels: bool) -> list[str]:
    names = sorted({r.score_name for r in runs})
    markers = "osD^vP"
    on_front = []
    for k, score_name in enumerate(names):
        group = [r for r in runs if r.score_name == score_name]
        front = [group[i] for i in pareto_frontier([(r.flops, r.score) for r in group])]
        on_front += [r.name for r in front]
        _draw_frontier(ax, [r.flops for r in front], [r.score for r in front], color=f"C{k}")
        ax.scatter(
            [r.flops for r in group],
            [r.score for r in group],
            marker=markers[k % len(markers)],
            color=f"C{k}",
            s=45,
            zorder=3,
            label=score_name,
        )
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs, 6·N·D (log scale)")
    ax.set_ylabel(" / ".join(names))
    ax.set_title(
        "Your runs (miniature recipe): own scale,\nnot comparable with the paper's scores", fontsize=10
    )
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7, loc="lower right")
    if labels:
        fig.canvas.draw()
        _place_labels(ax, [(r.flops, r.score, r.name, False) for r in runs], fig)
    return on_front


def plot_pareto(
    out: str | Path, runs: Sequence[RunPoint] = (), *, table: str = "base", labels: bool = True
) -> ParetoPlot:
    """Draw the paper's table (and ``runs`` in their own panel) to the PNG ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    refs = reference_table(table)
    ncols = 2 if runs else 1
    fig, axes = plt.subplots(
        1,
        ncols,
        figsize=(10 + 6 * (ncols - 1), 7),
        squeeze=False,
        gridspec_kw={"width_ratios": [5, 3][:ncols]},
    )
    try:
        frontier, missing = _reference_panel(axes[0, 0], fig, refs, table, labels)
        run_frontier = _runs_panel(axes[0, 1], fig, runs, labels) if runs else []
        fig.text(
            0.01,
            0.01,
            f"Not plotted (paper gives no FLOPs or no Avg): {', '.join(missing)}",
            fontsize=7,
            color="#495057",
            wrap=True,
        )
        fig.tight_layout(rect=(0, 0.04, 1, 1))
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=150)
    finally:
        plt.close(fig)
    return ParetoPlot(out, frontier, run_frontier, missing)


def pareto_chart(
    runs: Sequence[str | Path] = (),
    *,
    out: str | Path = "pareto.png",
    table: str = "base",
    labels: bool = True,
) -> str:
    """The paper's models (spec §7.2 base / §7.3 instruct) on a log-FLOPs axis with the Pareto frontier;
    runs from recipe-report JSON files go in a separate panel (their scores are not comparable).

    Draws to the PNG ``out``; returns what was drawn."""
    return plot_pareto(out, load_runs(runs), table=table, labels=labels).summary()
