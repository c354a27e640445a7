"""Training FLOPs the way the paper counts them (spec §8): 6·N·D.

N is *every* parameter, the input embedding and LM head included: that is what reproduces the
paper's 1.8 / 4.6 ×10²³ for the 7B / 13B (non-embedding N gives 1.57 / 4.26). D is every token
trained on: stage 1 plus *every* anneal run, so all soup ingredients count even though only their
average is released. There is no attention term and post-training is not counted (the paper reuses
the base model's FLOPs for its instruct models). This is a compute-accounting convention, not the
hardware FLOPs the trainer's MFU uses (``olmo2.train.monitor.flops_per_token``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from olmo2.config import from_dict
from olmo2.model.config import ModelConfig, preset
from olmo2.model.spec import model_config
from olmo2.model.transformer import count_params
from olmo2.recipe.config import RecipeConfig, load_recipe
from olmo2.train.config import TrainConfig, load_train_config

SEQ_LEN = 4096  # every paper-scale run trains on 4096-token instances (spec §1.6)


def training_flops(n_params: float, tokens: float) -> float:
    """Kaplan et al.'s 6·N·D: forward (2) + backward (4) FLOPs per parameter per token."""
    if n_params <= 0 or tokens < 0:
        raise ValueError(f"need n_params > 0 and tokens >= 0, got {n_params} and {tokens}")
    return 6.0 * float(n_params) * float(tokens)


@dataclass(frozen=True)
class RecipeFlops:
    """FLOPs of one model's training recipe, stage by stage."""

    model: str
    n_params: int  # all parameters, embeddings included (the paper's N)
    n_non_embedding: int
    stages: tuple[tuple[str, float], ...]  # (label, tokens), stage 1 first, then one per anneal run

    @property
    def tokens(self) -> float:
        return sum(tokens for _, tokens in self.stages)

    @property
    def flops(self) -> float:
        return training_flops(self.n_params, self.tokens)

    @property
    def flops_non_embedding(self) -> float:
        """What 6·N·D gives with non-embedding N (shown only to explain why the paper's N is total)."""
        return training_flops(self.n_non_embedding, self.tokens)

    def as_dict(self) -> dict:
        return {
            "model": self.model,
            "n_params": self.n_params,
            "n_non_embedding": self.n_non_embedding,
            "stages": [
                {"stage": s, "tokens": t, "flops": training_flops(self.n_params, t)} for s, t in self.stages
            ],
            "tokens": self.tokens,
            "flops": self.flops,
        }


def _resolve_model(model: str | ModelConfig) -> tuple[str, ModelConfig]:
    if isinstance(model, ModelConfig):
        return "custom", model
    return model, preset(model)


def recipe_flops(
    model: str | ModelConfig,
    stage1_tokens: float,
    anneal_tokens: Sequence[float] = (),
    *,
    name: str | None = None,
) -> RecipeFlops:
    """6·N·D for stage 1 plus each anneal run (one entry per run: three 50B soup ingredients = 3 entries)."""
    label, cfg = _resolve_model(model)
    for tokens in (stage1_tokens, *anneal_tokens):
        if not tokens >= 0:
            raise ValueError(f"token counts must be non-negative numbers, got {tokens}")
    counts = count_params(cfg)
    stages = (("stage 1", float(stage1_tokens)),) + tuple(
        (f"anneal {i}", float(t)) for i, t in enumerate(anneal_tokens, 1)
    )
    return RecipeFlops(name or label, counts["total_params"], counts["non_embedding_params"], stages)


def _planned_tokens(cfg: TrainConfig) -> float:
    """The tokens a training config will train on: run.max_tokens, or run.max_steps full batches."""
    if cfg.run.max_tokens is not None:
        return float(cfg.run.max_tokens)
    return float(cfg.run.max_steps * cfg.data.global_batch_size * cfg.data.seq_len)


def recipe_config_flops(recipe: RecipeConfig) -> RecipeFlops:
    """The 6·N·D that ``olmo2 recipe`` would spend: stage 1 and every anneal run (each seed of each
    entry), their tokens read from the training configs as the recipe would load them."""
    if recipe.stage1.config is None:
        raise ValueError(
            f"recipe {recipe.name}: stage 1 is an imported checkpoint, so its tokens are unknown; "
            "count it with --size, --tokens and --anneal"
        )
    stage1 = load_train_config(recipe.stage1.config, recipe.stage1.overrides)
    runs = [
        (step, _planned_tokens(load_train_config(anneal.config, [*anneal.overrides, f"data.seed={seed}"])))
        for step, seed, anneal in recipe.anneal_runs()
    ]
    rf = recipe_flops(stage1.model, _planned_tokens(stage1), [tokens for _, tokens in runs], name=recipe.name)
    return RecipeFlops(rf.model, rf.n_params, rf.n_non_embedding, (rf.stages[0], *runs))


def _tok(tokens: float) -> str:
    return f"{tokens / 1e12:.3f}T" if tokens >= 1e12 else f"{tokens / 1e9:.1f}B"


def format_recipe(rf: RecipeFlops) -> str:
    """A small stage table with the total in the paper's unit (10²³ FLOPs)."""
    width = max(10, *(len(stage) for stage, _ in rf.stages))
    lines = [
        f"{rf.model}: N = {rf.n_params:,} parameters (embeddings included; non-embedding {rf.n_non_embedding:,})",
        f"{'stage':<{width}} {'tokens':>12} {'FLOPs':>11}",
    ]
    for stage, tokens in rf.stages:
        lines.append(f"{stage:<{width}} {tokens:>12.4g} {training_flops(rf.n_params, tokens):>11.3e}")
    lines.append(
        f"{'total':<{width}} {rf.tokens:>12.4g} {rf.flops:>11.3e}  = {rf.flops / 1e23:.2f} x 10^23 (6*N*D)"
    )
    return "\n".join(lines)


# --- the paper's four models (spec §3.1 stage-1 steps and batches, §5 anneal runs) -----------------


@dataclass(frozen=True)
class PaperRecipe:
    size: str
    batch: int  # instances of SEQ_LEN tokens per step
    stage1_steps: int
    anneal_steps: tuple[int, ...]  # one entry per anneal run (soup ingredient)
    paper: tuple[tuple[str, str], ...]  # (value as printed, ×10²³; where)
    note: str

    def flops(self) -> RecipeFlops:
        per_step = self.batch * SEQ_LEN
        return recipe_flops(
            self.size,
            self.stage1_steps * per_step,
            [s * per_step for s in self.anneal_steps],
            name=f"OLMo 2 {self.size.upper()}",
        )


# Steps and batches equal configs/train/olmo2-*-stage{1,2}-*.yaml (tests/recipe/test_flops.py checks).
PAPER_RECIPES = (
    PaperRecipe(
        "1b",
        512,
        1_907_359,
        (23_852,),
        (("0.4", "Tab 22"), ("0.35", "Tab 7")),
        "one 50B anneal counted (the released 1B is the seed-42 run, no soup; spec §8 uses D = 4.05T); "
        "counting all three 50B seeds gives 0.37",
    ),
    PaperRecipe("7b", 1024, 928_646, (11_931,) * 3, (("1.8", "Tab 6"),), "3 x 50B soup ingredients"),
    PaperRecipe(
        "13b",
        2048,
        596_057,
        (11_931,) * 3 + (35_773,),
        (("4.6", "Tab 6"),),
        "3 x 100B + 1 x 300B ingredients",
    ),
    PaperRecipe(
        "32b",
        2048,
        721_901,
        (11_921,) * 3 + (35_763,),
        (("13.0", "Tab 6"),),
        "paper's 3 x 100B + 1 x 300B (released: 2 x 100B + 300B, 12.68); 13.0 needs D >= 6.70T, "
        "the recipe gives 6.66T (spec §8: 1.28-1.30e24 for D = 6.6-6.7T)",
    ),
)


def matches_printed(value_e23: float, printed: str) -> bool:
    """Whether ``value_e23`` rounds to the paper's number at the paper's printed precision."""
    decimals = len(printed.split(".")[1]) if "." in printed else 0
    return round(value_e23, decimals) == float(printed)


def paper_results() -> list[dict]:
    """``format_paper``'s numbers as data: our 6·N·D per size with the paper's printed values."""
    results = []
    for recipe in PAPER_RECIPES:
        rf = recipe.flops()
        paper = [{"value_e23": float(p), "source": where, "matches": matches_printed(rf.flops / 1e23, p)}
                 for p, where in recipe.paper]  # fmt: skip
        results.append({**rf.as_dict(), "flops_e23": rf.flops / 1e23, "paper": paper, "note": recipe.note})
    return results


def format_paper() -> str:
    """Our 6·N·D for OLMo 2 1B/7B/13B/32B next to the paper's numbers."""
    lines = [
        "training FLOPs in units of 10^23: 6*N*D, N = all parameters, D = stage 1 + every anneal run (spec §8)",
        f"{'model':<11} {'N':>8} {'stage 1':>7}  {'anneal runs':<23} {'D':>6} {'6ND':>6} {'(non-emb N)':>11}  paper",
    ]
    notes = []
    for recipe, result in zip(PAPER_RECIPES, paper_results(), strict=True):
        rf = recipe.flops()
        runs: dict[float, int] = {}
        for _, tokens in rf.stages[1:]:
            runs[tokens] = runs.get(tokens, 0) + 1
        anneal = " + ".join(f"{n} x {_tok(t)}" for t, n in runs.items())
        paper = "; ".join(
            f"{p} ({where}) {'ok' if r['matches'] else 'off'}"
            for (p, where), r in zip(recipe.paper, result["paper"], strict=True)
        )
        lines.append(
            f"{rf.model:<11} {rf.n_params / 1e9:>7.3f}B {_tok(rf.stages[0][1]):>7}  {anneal:<23} "
            f"{_tok(rf.tokens):>6} {rf.flops / 1e23:>6.2f} {rf.flops_non_embedding / 1e23:>11.2f}  {paper}"
        )
        notes.append(f"  {rf.model}: {recipe.note}")
    lines.append("ok / off: equal or not at the paper's printed precision. Notes:")
    return "\n".join(lines + notes)


# --- our own training runs -----------------------------------------------------------------------


@dataclass(frozen=True)
class RunFlops:
    run_dir: str
    model: ModelConfig
    n_params: int
    steps: int
    tokens: int  # tokens this run trained on (a stage-2 run counts only its own steps)
    flops: float

    def as_dict(self) -> dict:
        keys = ("run_dir", "n_params", "steps", "tokens", "flops")
        return {k: getattr(self, k) for k in keys}


def _last_json_line(path: Path) -> dict:
    """The last record of a (possibly huge) JSON-lines file, read from the end."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        end = pos = f.tell()
        chunk = b""
        while pos > 0:
            pos = max(0, pos - 65536)
            f.seek(pos)
            chunk = f.read(end - pos)
            lines = [line for line in chunk.splitlines() if line.strip()]
            if len(lines) > 1 or (lines and pos == 0):
                return json.loads(lines[-1])
    raise ValueError(f"{path} is empty: the run has not finished a step yet")


def run_flops(run_dir: str | Path) -> RunFlops:
    """6·N·D of one ``olmo2 train`` run folder: N from its ``config.yaml``, D = the last ``tokens`` of
    ``metrics.jsonl``. Stage-2 runs start counting at 0, so summing a recipe's runs gives its D."""
    run_dir = Path(run_dir)
    config, metrics = run_dir / "config.yaml", run_dir / "metrics.jsonl"
    for path in (config, metrics):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; is {run_dir} an olmo2 training run folder?")
    model = (yaml.safe_load(config.read_text()) or {}).get("model")
    if model is None:
        raise ValueError(f"{config}: no 'model' section")
    cfg = preset(model) if isinstance(model, str) else from_dict(ModelConfig, model)
    last = _last_json_line(metrics)
    n_params = count_params(cfg)["total_params"]
    tokens = int(last["tokens"])
    return RunFlops(str(run_dir), cfg, n_params, int(last["step"]), tokens, training_flops(n_params, tokens))


def format_runs(runs: Sequence[RunFlops]) -> str:
    lines = [f"{'run':<40} {'N':>13} {'steps':>8} {'tokens':>12} {'FLOPs':>11}"]
    for r in runs:
        lines.append(f"{r.run_dir:<40} {r.n_params:>13,} {r.steps:>8} {r.tokens:>12.4g} {r.flops:>11.3e}")
    if len(runs) > 1:
        total = sum(r.flops for r in runs)
        lines.append(f"{'total':<40} {'':>13} {'':>8} {sum(r.tokens for r in runs):>12.4g} {total:>11.3e}")
    return "\n".join(lines)


def flops_report(
    *,
    paper: bool = False,
    size: str | None = None,
    run: Sequence[str | Path] | None = None,
    recipe: str | Path | None = None,
    tokens: float | None = None,
    anneal: Sequence[float] | None = None,
    as_json: bool = False,
) -> str:
    """6*N*D with N = all parameters (embeddings included) and D = every training token: stage 1 plus
    each anneal run (every soup ingredient). Post-training is not counted.

    As a table or JSON (``as_json``), of the paper's recipes (``paper``), of a recipe for the model
    ``size`` (a preset, checkpoint dir or model YAML) with ``tokens`` of stage 1 and one ``anneal``
    entry per anneal run, of a ``recipe`` YAML as ``olmo2 recipe`` would run it, or of the training
    runs ``run`` and their sum."""
    if paper:
        return json.dumps(paper_results(), indent=2) if as_json else format_paper()
    if recipe is not None:
        rf = recipe_config_flops(load_recipe(recipe))
        return json.dumps(rf.as_dict(), indent=2) if as_json else format_recipe(rf)
    if run:
        runs = [run_flops(r) for r in run]
        return json.dumps([r.as_dict() for r in runs], indent=2) if as_json else format_runs(runs)
    if size is None or tokens is None:
        raise ValueError("--size needs --tokens (stage-1 tokens); add --anneal TOKENS once per anneal run")
    rf = recipe_flops(model_config(size), tokens, anneal or [], name=size)
    return json.dumps(rf.as_dict(), indent=2) if as_json else format_recipe(rf)
