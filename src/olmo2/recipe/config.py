"""The recipe YAML (``olmo2 recipe``, ``olmo2 flops --recipe``): stage 1, the anneals and their soup,
evaluation, post-training and how each training step is launched; validated on load."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from olmo2.config import load_config


def check_step_name(name: str, what: str) -> None:
    """A name that becomes a recipe step and a run folder: letters, digits, - and _ only."""
    if not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"{what} {name!r} must be letters, digits, - or _ (it names run folders)")


@dataclass
class StageOneConfig:
    config: str | None = None  # training config for stage 1
    overrides: list[str] = field(default_factory=list)
    checkpoint: str | None = None  # or skip stage 1: an existing checkpoint (training step dir or HF dir)
    lr: float | None = None  # the stage-1 LR at the hand-off, for an imported checkpoint

    def __post_init__(self) -> None:
        if (self.config is None) == (self.checkpoint is None):
            raise ValueError("stage1: give exactly one of config (train it) and checkpoint (start from it)")


@dataclass
class AnnealConfig:
    """One kind of anneal, run once per seed: the 13B's soup is two entries, 100B × 3 seeds and
    300B × 1 seed (spec §5). Each run is the recipe step ``anneal-[NAME-]seed<SEED>``."""

    config: str  # training config for stage 2 (the recipe sets init.checkpoint, data.seed, optim.lr)
    seeds: list[int] = field(default_factory=lambda: [42, 42069, 666])  # the 7B's (spec §5)
    name: str = ""  # tells the runs of several entries apart, e.g. 100b / 300b
    overrides: list[str] = field(default_factory=list)
    lr: float | None = None  # None: the stage-1 LR at the hand-off, read from its checkpoint

    def __post_init__(self) -> None:
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and non-empty, got {self.seeds}")
        if self.name:
            check_step_name(self.name, "name")

    def steps(self) -> list[tuple[str, int]]:
        """``(recipe step, data seed)`` of each run of this entry."""
        prefix = f"anneal-{self.name}-" if self.name else "anneal-"
        return [(f"{prefix}seed{seed}", seed) for seed in self.seeds]


@dataclass
class RecipeEvalConfig:
    tasks: str = ""  # an `olmo2 eval` task spec (empty: none)
    limit: int | None = None
    heldout: dict[str, list[str]] = field(default_factory=dict)  # name -> validation token files
    heldout_max_instances: int | None = 256
    seq_len: int = 512
    batch_size: int = 8


@dataclass
class RecipePostTrainConfig:
    """OLMo 2-Instruct in miniature (spec §6): each given stage runs, in the order SFT → DPO → RLVR, on
    the previous one's output, the first on the soup (else the last anneal). The recipe sets each
    stage config's ``model`` and ``run.folder`` (under ``OUT/posttrain/``) and, with ``demo_data``, its
    ``data``: the offline files of ``olmo2 posttrain-data``, written to ``OUT/posttrain/data``."""

    sft: str | None = None  # `olmo2 sft` config
    dpo: str | None = None  # `olmo2 dpo` config
    rlvr: str | None = None  # `olmo2 rlvr` config
    demo_data: bool = False

    def stages(self) -> list[tuple[str, str]]:
        return [(name, getattr(self, name)) for name in ("sft", "dpo", "rlvr") if getattr(self, name)]


# torchrun options the runner sets itself (a recipe launches on this machine only)
_RESERVED_TORCHRUN_ARGS = ("--standalone", "--nproc_per_node", "--nproc-per-node", "--nnodes")


@dataclass
class LaunchConfig:
    """How the recipe runs its training steps (stage 1, anneals, SFT/DPO/RLVR). ``nproc_per_node``
    1: in the recipe's own process, as ever. Above 1: each step as
    ``python -m torch.distributed.run --standalone --nproc_per_node=N [torchrun_args] -m olmo2.cli
    train|sft|dpo|rlvr CONFIG OVERRIDES``, i.e. N ranks (one per GPU) on this machine."""

    nproc_per_node: int = 1
    torchrun_args: list[str] = field(default_factory=list)  # more torchrun options, e.g. --max_restarts=1

    def __post_init__(self) -> None:
        if self.nproc_per_node < 1:
            raise ValueError(f"launch.nproc_per_node must be at least 1, got {self.nproc_per_node}")
        for arg in self.torchrun_args:
            if not arg.startswith("-"):
                raise ValueError(
                    f"launch.torchrun_args: {arg!r} is not an option; give options as single items "
                    "such as --max_restarts=1 (the program and its arguments are the recipe's)"
                )
            if arg.split("=", 1)[0] in _RESERVED_TORCHRUN_ARGS:
                raise ValueError(
                    f"launch.torchrun_args: {arg!r} is set by the recipe (--standalone, "
                    "--nproc_per_node=launch.nproc_per_node); for several nodes use scripts/slurm/olmo2.sbatch"
                )

    def command(self, stage: str, config: str, overrides: list[str]) -> list[str]:
        """The torchrun command line of one ``olmo2 STAGE CONFIG OVERRIDES`` run."""
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={self.nproc_per_node}",
            *self.torchrun_args,
            "-m",
            "olmo2.cli",
            stage,
            str(config),
            *overrides,
        ]


@dataclass
class RecipeConfig:
    name: str
    out: str
    stage1: StageOneConfig
    anneals: list[AnnealConfig]  # every anneal run; the soup averages all of them
    soup: bool = True
    soup_weights: list[float] | None = None
    eval: RecipeEvalConfig = field(default_factory=RecipeEvalConfig)
    posttrain: RecipePostTrainConfig | None = None
    demo_corpus: bool = False  # build the built-in demo corpus and expose it as ${OLMO2_DEMO_DATA}
    variables: dict[str, str] = field(default_factory=dict)  # data.variables for every training run
    launch: LaunchConfig = field(default_factory=LaunchConfig)  # in process, or torchrun per step

    def __post_init__(self) -> None:
        if not self.anneals:
            raise ValueError("anneals: give at least one entry (config and seeds)")
        steps = [step for anneal in self.anneals for step, _ in anneal.steps()]
        repeated = sorted({step for step in steps if steps.count(step) > 1})
        if repeated:
            raise ValueError(
                f"anneals: two runs would both be {', '.join(repeated)}; give the entries distinct names"
            )
        if self.soup_weights is not None and len(self.soup_weights) != len(steps):
            raise ValueError(f"soup_weights: {len(self.soup_weights)} weights for {len(steps)} anneal runs")

    def anneal_runs(self) -> list[tuple[str, int, AnnealConfig]]:
        """``(recipe step, data seed, entry)`` of every anneal run, in the order they run."""
        return [(step, seed, anneal) for anneal in self.anneals for step, seed in anneal.steps()]


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> RecipeConfig:
    return load_config(RecipeConfig, path, overrides)
