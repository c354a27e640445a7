"""``olmo2 microanneal CONFIG.yaml``: how OLMo 2 chose its stage-2 data (spec §4.3, paper §4).

    stage 1 (or an existing checkpoint) ─▶ baseline anneal: the baseline source alone
                                        ─▶ one anneal per candidate: baseline + candidate, 50/50 by default
    ─▶ eval of the start and of every anneal ─▶ OUT/microanneal.md, .json and .png: deltas vs the baseline

Every anneal is the same short run: the same base stage-2 config, token budget, data order seed and
hand-off LR decaying linearly to 0; only its data mix (``OUT/mixes/<anneal>.yaml``) differs, so a
metric's difference from the baseline anneal is the candidate source's effect. The steps, their
``OUT/.done/`` markers and resuming are the recipe's (``runner.Pipeline``).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from olmo2.config import ConfigError, load_config
from olmo2.data.mix import MixConfig, SourceConfig, parse_tokens, resolve_mix
from olmo2.recipe.config import LaunchConfig, RecipeEvalConfig, StageOneConfig, check_step_name
from olmo2.recipe.report import metric_rows
from olmo2.recipe.runner import Pipeline
from olmo2.train.config import TrainConfig, load_train_config


@dataclass
class MicroAnnealRunConfig:
    """The anneal that every candidate repeats. The command sets its ``data.mix``, its length (whole
    steps covering ``tokens``), ``init.checkpoint`` and ``optim.lr``."""

    config: str  # base stage-2 training config; its schedule must decay linearly to 0
    tokens: float | str  # training tokens per anneal, e.g. 50M; rounded up to whole steps
    overrides: list[str] = field(default_factory=list)
    lr: float | None = None  # None: the stage-1 LR at the hand-off, read from its checkpoint

    def __post_init__(self) -> None:
        self.tokens = parse_tokens(self.tokens, "anneal.tokens")


@dataclass
class MicroAnnealConfig:
    name: str
    out: str
    stage1: StageOneConfig
    anneal: MicroAnnealRunConfig
    baseline: SourceConfig  # annealed on alone, and half (1 - share) of every candidate's mix
    candidates: list[SourceConfig]  # share: the candidate's part of its mix (default 0.5)
    eval: RecipeEvalConfig = field(default_factory=RecipeEvalConfig)
    demo_corpus: bool = False  # build the built-in demo corpus and expose it as ${OLMO2_DEMO_DATA}
    variables: dict[str, str] = field(default_factory=dict)  # data.variables for every training run
    launch: LaunchConfig = field(default_factory=LaunchConfig)  # in process, or torchrun per step

    def __post_init__(self) -> None:
        if not self.candidates:
            raise ValueError("candidates: give at least one source to compare with the baseline")
        if self.baseline.share is not None:
            raise ValueError("baseline.share: the baseline's share is 1 minus each candidate's share")
        names = [self.baseline.name, *(c.name for c in self.candidates)]
        for source in (self.baseline, *self.candidates):
            check_step_name(source.name, "source name")
            if source.tokens is not None:
                raise ValueError(f"source {source.name!r}: tokens: the anneal's length is anneal.tokens")
            if source.name == "stage1":
                raise ValueError(
                    "source name 'stage1' names the starting checkpoint's row; rename the source"
                )
            if names.count(source.name) > 1:
                raise ValueError(f"source name {source.name!r} is used twice (baseline and candidates)")
        for candidate in self.candidates:
            if candidate.share is None:
                candidate.share = 0.5
            elif candidate.share >= 1:
                raise ValueError(
                    f"candidate {candidate.name!r}: share must be below 1 (the baseline's is 1 - share)"
                )
        if not self.eval.heldout and not self.eval.tasks:
            raise ValueError("eval: give heldout token sets and/or tasks to compare the anneals on")

    def mixes(self, total_tokens: float) -> dict[str, MixConfig]:
        """Each anneal's data mix, by anneal name: the baseline's alone, then one per candidate."""

        def mix(name: str, *sources: tuple[SourceConfig, float]) -> MixConfig:
            parts = [
                SourceConfig(s.name, list(s.paths), share, max_repeat=s.max_repeat) for s, share in sources
            ]
            return MixConfig(parts, name=f"{self.name}-{name}", total_tokens=total_tokens)

        mixes = {self.baseline.name: mix(self.baseline.name, (self.baseline, 1.0))}
        for c in self.candidates:
            mixes[c.name] = mix(c.name, (self.baseline, 1 - c.share), (c, c.share))
        return mixes


def load_microanneal(path: str | Path, overrides: list[str] | None = None) -> MicroAnnealConfig:
    return load_config(MicroAnnealConfig, path, overrides)


def _mix_yaml(mix: MixConfig) -> str:
    """The mix as a ``configs/data`` YAML (paths keep their ``${VAR}``s: the training run expands them)."""
    sources = [
        {"name": s.name, "paths": s.paths, "share": s.share, "max_repeat": s.max_repeat} for s in mix.sources
    ]
    return yaml.safe_dump(
        {"name": mix.name, "total_tokens": int(mix.total_tokens), "seed": mix.seed, "sources": sources},
        sort_keys=False,
    )


class MicroAnneal(Pipeline):
    """Runs (or resumes) a microanneal; ``run()`` returns the summary of its table."""

    command = "microanneal"
    cfg: MicroAnnealConfig

    def base_config(self) -> TrainConfig:
        """The base stage-2 config with every override the anneals get; its schedule must end at 0."""
        run = self.cfg.anneal
        cfg = load_train_config(run.config, [*run.overrides, *self.train_overrides])
        s = cfg.schedule
        if s.name != "linear" or s.alpha_f != 0 or s.t_max is not None:
            raise ConfigError(
                f"{run.config}: schedule: a microanneal decays the LR linearly to 0 at the run's end, as "
                f"stage 2 does (name linear, alpha_f 0, no t_max); got name {s.name}, alpha_f {s.alpha_f:g}, "
                f"t_max {s.t_max}"
            )
        return cfg

    def prepare(self) -> None:
        """Check everything before stage 1 trains: the base config, and that every mix resolves."""
        super().prepare()
        base = self.base_config()
        step_tokens = base.data.seq_len * base.data.global_batch_size
        self.steps = math.ceil(self.cfg.anneal.tokens / step_tokens)
        self.tokens = self.steps * step_tokens  # each mix is one epoch of exactly the anneal's tokens
        self.mix_files = {}
        for name, mix in self.cfg.mixes(self.tokens).items():
            resolve_mix(mix, base.data.seq_len, self.variables)  # missing files, too few tokens: fail now
            path = self.out / "mixes" / f"{name}.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(_mix_yaml(mix))
            self.mix_files[name] = path

    def anneal(self, name: str, stage1: dict, lr: float) -> dict:
        step = f"anneal-{name}"
        extra = [
            *self.cfg.anneal.overrides,
            f"data.mix={self.mix_files[name]}",
            f"init.checkpoint={stage1['checkpoint']}",
            f"optim.lr={lr}",
            f"run.max_steps={self.steps}",
            "run.max_tokens=null",
        ]
        work = functools.partial(self._train, step, self.cfg.anneal.config, self.out / step, extra)
        return self.run_once(step, work)

    def run(self) -> dict:
        self.out.mkdir(parents=True, exist_ok=True)
        self.prepare()
        stage1 = self.stage1()
        lr = self.handoff_lr(stage1, self.cfg.anneal.lr)
        runs = {name: self.anneal(name, stage1, lr) for name in self.mix_files}
        evals = {"stage1": self.evaluate("stage1", stage1["checkpoint"])}
        evals.update({name: self.evaluate(f"anneal-{name}", run["checkpoint"]) for name, run in runs.items()})
        return write_microanneal_report(
            self.cfg, self.out, stage1["checkpoint"], evals, lr, self.steps, self.tokens
        )


def _mix_label(cfg: MicroAnnealConfig, name: str) -> str:
    if name == cfg.baseline.name:
        return f"{name} 100%"
    share = next(c.share for c in cfg.candidates if c.name == name)
    return f"{cfg.baseline.name} {1 - share:.0%} + {name} {share:.0%}"


def _plot_deltas(out: Path, names: list[str], deltas: dict[str, dict[str, float]]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(names), figsize=(2.8 * len(names) + 1, 3.2), squeeze=False)
    for ax, metric in zip(axes[0], names, strict=True):
        candidates = [c for c in deltas if metric in deltas[c]]
        values = [deltas[c][metric] for c in candidates]
        lower_better = metric.startswith("bpb/")
        colors = ["#2b8a3e" if (v < 0) == lower_better and v != 0 else "#c92a2a" for v in values]
        ax.bar(range(len(candidates)), values, color=colors)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(range(len(candidates)), candidates, rotation=30, fontsize=8)
        ax.set_title(
            f"Δ {metric} vs baseline\n({'lower' if lower_better else 'higher'} is better)", fontsize=8
        )
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = out / "microanneal.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_microanneal_report(
    cfg: MicroAnnealConfig, out: Path, start: str, evals: dict, lr: float, steps: int, tokens: int
) -> dict:
    """``microanneal.md`` (the table), ``microanneal.json`` and ``microanneal.png``; returns the summary."""
    names, rows = metric_rows(evals)
    base = rows[cfg.baseline.name]
    deltas = {
        anneal: {m: row[m] - base[m] for m in names if m in row and m in base} for anneal, row in rows.items()
    }
    lines = [
        f"# Microanneal: {cfg.name}",
        "",
        f"Each anneal: {steps} steps ({tokens:,} tokens) from {start}, "
        f"LR {lr:.3g} decaying linearly to 0. Δ = the anneal's metric minus the baseline anneal's "
        f"({cfg.baseline.name} alone).",
        "",
        "| anneal | mix | " + " | ".join(f"{m} | Δ {m}" for m in names) + " |",
        "|---|---|" + "---:|---:|" * len(names),
    ]
    for anneal, row in rows.items():
        mix = "(the starting checkpoint)" if anneal == "stage1" else _mix_label(cfg, anneal)
        label = f"{anneal} (baseline)" if anneal == cfg.baseline.name else anneal
        cells = [f"{row[m]:.4f} | {deltas[anneal][m]:+.4f}" if m in deltas[anneal] else " | " for m in names]
        lines.append(f"| {label} | {mix} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "BPB = bits per UTF-8 byte on held-out tokens (lower is better); task scores: higher is better.",
        "",
    ]
    candidates = {c.name: deltas[c.name] for c in cfg.candidates}
    for m in names:
        lower_better = m.startswith("bpb/")
        helped = [c for c, d in candidates.items() if m in d and (d[m] < 0 if lower_better else d[m] > 0)]
        lines.append(
            f"- {m}: "
            + (
                f"better than the baseline with {', '.join(helped)}"
                if helped
                else "no candidate beat the baseline"
            )
        )
    plot = _plot_deltas(out, names, candidates)
    lines += ["", f"![deltas vs the baseline anneal]({plot.name})", ""]
    table = out / "microanneal.md"
    table.write_text("\n".join(lines))
    result = {
        "name": cfg.name,
        "start": start,
        "baseline": cfg.baseline.name,
        "steps": steps,
        "tokens": tokens,
        "lr": lr,
        "metrics": names,
        "anneals": {
            anneal: {
                "mix": None if anneal == "stage1" else _mix_label(cfg, anneal),
                "checkpoint": evals[anneal]["checkpoint"],
                "values": rows[anneal],
                "delta_vs_baseline": deltas[anneal],
            }
            for anneal in rows
        },
    }
    (out / "microanneal.json").write_text(json.dumps(result, indent=2) + "\n")
    return {
        "table": str(table),
        "json": str(out / "microanneal.json"),
        "plot": str(plot),
        "text": "\n".join(lines),
    }


def run_microanneal(cfg: MicroAnnealConfig, train_overrides: list[str] | None = None) -> dict:
    """Anneal from one stage-1 checkpoint on the baseline source alone and on a mix of it with each
    candidate source, then compare every anneal with the baseline anneal on the evaluation. Each
    finished step is recorded in OUT/.done/ and skipped on a rerun; an interrupted anneal resumes from
    its checkpoint.

    ``train_overrides`` apply to every training run; returns the table's summary."""
    return MicroAnneal(cfg, train_overrides).run()
