"""``olmo2 recipe RECIPE.yaml``: the OLMo 2 curriculum as one resumable pipeline (spec §5).

    stage 1 ─▶ anneals × seeds (LR linear to 0 from the hand-off LR) ─▶ soup ─▶ eval of each
            ─▶ (optional) SFT ─▶ DPO ─▶ RLVR from the soup (spec §6) ─▶ report

Every step writes a marker (``OUT/.done/<step>.json``) when it completes and is skipped when its
marker exists; a step killed half-way is simply run again, and training steps resume from their own
latest checkpoint, so an interrupted recipe redoes only what was unfinished. ``Pipeline`` holds this
machinery; ``olmo2 microanneal`` (``microanneal.py``) chains the same steps differently.

Training steps run in this process, or, with ``launch.nproc_per_node`` above 1, each as a
``torchrun --standalone`` subprocess of ``olmo2 train|sft|dpo|rlvr`` on this machine; both return the
same summary.
"""

from __future__ import annotations

import functools
import json
import math
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch

from olmo2.config import ConfigError
from olmo2.data.loader import ValidationLoader
from olmo2.demo.corpus import build_demo_corpus
from olmo2.demo.posttrain_data import write_demo_data
from olmo2.eval.runner import run_eval
from olmo2.model.checkpoint import load_model
from olmo2.posttrain.stages import stage_functions
from olmo2.recipe.config import LaunchConfig, RecipeConfig, RecipeEvalConfig, StageOneConfig
from olmo2.recipe.report import write_report
from olmo2.recipe.soup import soup_checkpoints
from olmo2.tokenizer import load_tokenizer
from olmo2.train.checkpoint import latest_checkpoint, read_train_state
from olmo2.train.config import load_train_config
from olmo2.train.monitor import log
from olmo2.train.trainer import heldout_sums, train


class StageFailed(RuntimeError):
    """A training step launched as a subprocess exited with an error; the message names it."""


def run_stage_command(step: str, cmd: list[str]) -> dict:
    """Run one ``olmo2 train|sft|dpo|rlvr`` command line and return the JSON summary it prints as its
    last line on stdout. Its stderr goes straight through; its stdout is streamed to our stderr (the
    recipe's log), so the recipe's own stdout stays clean."""
    log(f"recipe: {step}: {shlex.join(cmd)}")
    lines = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
        for line in proc.stdout:
            sys.stderr.write(line)
            lines.append(line)
    if proc.returncode != 0:
        raise StageFailed(
            f"recipe step {step} failed: exit status {proc.returncode} of\n  {shlex.join(cmd)}\n"
            "(its output is above; rerun the recipe to resume the step from its last checkpoint)"
        )
    summary = _last_json_object(lines)
    if summary is None:
        raise StageFailed(
            f"recipe step {step}: no JSON summary among the stdout lines of\n  {shlex.join(cmd)}"
        )
    return summary


def _last_json_object(lines: list[str]) -> dict | None:
    """The last line that is a JSON object (rank 0 prints the summary last; other lines are logs)."""
    for line in reversed(lines):
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _in_process_functions(stage: str) -> tuple[Callable, Callable]:
    """``(load_config(path, overrides), train(cfg) -> summary)`` of ``train``, ``sft``, ``dpo`` or ``rlvr``."""
    return (load_train_config, train) if stage == "train" else stage_functions(stage)


class PipelineConfig(Protocol):
    """What the shared steps read from a pipeline's config (``RecipeConfig``, ``MicroAnnealConfig``)."""

    out: str
    stage1: StageOneConfig
    eval: RecipeEvalConfig
    demo_corpus: bool
    variables: dict[str, str]
    launch: LaunchConfig


class Pipeline:
    """The machinery of the resumable pipelines (``olmo2 recipe``, ``olmo2 microanneal``): the
    ``OUT/.done/`` markers, training steps in process or under torchrun, stage 1, the hand-off LR and
    the evaluation of a checkpoint. Subclasses chain the steps in their ``run()``."""

    command = "recipe"  # names the pipeline in its log lines

    def __init__(self, cfg: PipelineConfig, overrides: list[str] | None = None):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.done_dir = self.out / ".done"
        self.variables = dict(cfg.variables)
        self.train_overrides = list(overrides or [])

    # -- bookkeeping ---------------------------------------------------------------------------
    def done_record(self, step: str) -> dict | None:
        """What ``step`` recorded when it finished, or None while it has not."""
        path = self.done_dir / f"{step}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def record_done(self, step: str, info: dict) -> dict:
        """Write ``step``'s marker atomically (a killed recipe leaves none or a whole one); returns ``info``."""
        self.done_dir.mkdir(parents=True, exist_ok=True)
        partial = self.done_dir / f".{step}.json.tmp"
        partial.write_text(json.dumps(info, indent=2) + "\n")
        partial.replace(self.done_dir / f"{step}.json")
        return info

    def run_once(self, step: str, work: Callable[[], dict]) -> dict:
        """``work()``, timed and recorded as done; or, if an earlier run finished ``step``, its record."""
        done = self.done_record(step)
        if done is not None:
            log(f"{self.command}: {step}: done already, skipped")
            return done
        log(f"{self.command}: {step}: running")
        start = time.perf_counter()
        info = work()
        info["seconds"] = round(time.perf_counter() - start, 1)
        return self.record_done(step, info)

    def _launch(self, step: str, stage: str, config: str, overrides: list[str]) -> dict:
        """Run ``olmo2 STAGE CONFIG OVERRIDES`` (stage: train, sft, dpo or rlvr) in this process, or
        under torchrun when ``launch.nproc_per_node`` > 1; its summary either way."""
        if self.cfg.launch.nproc_per_node == 1:
            load, run = _in_process_functions(stage)
            return run(load(config, overrides))
        return run_stage_command(step, self.cfg.launch.command(stage, config, overrides))

    def _train(self, step: str, config: str, save_folder: Path, extra: list[str]) -> dict:
        variables = [f"data.variables.{k}={v}" for k, v in self.variables.items()]
        overrides = [*variables, *extra, *self.train_overrides, f"run.folder={save_folder}"]
        summary = self._launch(step, "train", config, overrides)
        final = latest_checkpoint(save_folder)
        return {"checkpoint": str(final), "run_dir": str(save_folder), **summary}

    # -- the steps -----------------------------------------------------------------------------
    def prepare(self) -> None:
        if self.cfg.demo_corpus:
            self.variables.setdefault("OLMO2_DEMO_DATA", str(build_demo_corpus()))

    def stage1(self) -> dict:
        stage1 = self.cfg.stage1
        if stage1.checkpoint is not None:
            imported = {"checkpoint": stage1.checkpoint, "run_dir": None, "lr": stage1.lr}
            return self.run_once("stage1", lambda: imported)
        return self.run_once(
            "stage1",
            functools.partial(
                self._train, "stage1", stage1.config, self.out / "stage1", list(stage1.overrides)
            ),
        )

    def handoff_lr(self, stage1: dict, lr: float | None = None) -> float:
        """An anneal's peak LR: ``lr`` if given, else the stage-1 LR at its final checkpoint."""
        if lr is not None:
            return lr
        state = Path(stage1["checkpoint"]) / "state.json"
        if state.is_file():
            saved = read_train_state(state.parent)
            return float(saved["run"]["lr"] if "run" in saved else saved["lr"])  # before the engine: "lr"
        if stage1.get("lr") is not None:
            return float(stage1["lr"])
        raise ConfigError(
            f"{stage1['checkpoint']} has no training state to read the hand-off LR from; "
            "set the anneal's lr (or stage1.lr) to the stage-1 LR at that checkpoint"
        )

    def evaluate(self, name: str, checkpoint: str) -> dict:
        def run() -> dict:
            results: dict = {"checkpoint": checkpoint}
            if self.cfg.eval.heldout:
                results["heldout"] = heldout_bpb(checkpoint, self.cfg.eval, self.variables)
            if self.cfg.eval.tasks:
                out = self.out / "eval" / f"{name}.json"
                tasks = run_eval(
                    checkpoint, self.cfg.eval.tasks, limit=self.cfg.eval.limit, out=out, quiet=True
                )
                results["tasks"] = {task: metrics for task, metrics in tasks.items() if task != "settings"}
            return results

        return self.run_once(f"eval-{name}", run)


class Recipe(Pipeline):
    """Runs (or resumes) a recipe; ``run()`` returns the report's summary."""

    cfg: RecipeConfig

    def _posttrain_overrides(self, name: str, model: str) -> list[str]:
        out = self.out / "posttrain"
        extra = [f"model={model}", f"run.folder={out / name}"]
        if self.cfg.posttrain and self.cfg.posttrain.demo_data:
            extra.append(f"data={out / 'data' / f'{name}.jsonl'}")
        return extra

    def check_posttrain(self) -> None:
        """Load every post-training config now, so a bad key fails before hours of pretraining."""
        for name, config in self.cfg.posttrain.stages() if self.cfg.posttrain else []:
            load, _ = stage_functions(name)
            load(config, self._posttrain_overrides(name, "soup"))

    def prepare(self) -> None:
        self.check_posttrain()
        super().prepare()

    def anneals(self, stage1: dict) -> list[dict]:
        runs = []
        for step, seed, anneal in self.cfg.anneal_runs():
            extra = [
                *anneal.overrides,
                f"init.checkpoint={stage1['checkpoint']}",
                f"data.seed={seed}",
                f"optim.lr={self.handoff_lr(stage1, anneal.lr)}",
            ]
            work = functools.partial(self._train, step, anneal.config, self.out / step, extra)
            runs.append(self.run_once(step, work))
        return runs

    def soup(self, anneals: list[dict]) -> dict | None:
        if not self.cfg.soup or len(anneals) < 2:
            return None

        def run() -> dict:
            out = self.out / "soup"
            if out.exists():  # a partial soup from a killed run: the writer is atomic, but be safe
                shutil.rmtree(out)
            soup_checkpoints([anneal["checkpoint"] for anneal in anneals], out, self.cfg.soup_weights)
            return {"checkpoint": str(out)}

        return self.run_once("soup", run)

    def posttrain(self, start: str) -> dict[str, dict]:
        posttrain = self.cfg.posttrain
        if posttrain is None or not posttrain.stages():
            return {}
        if posttrain.demo_data:

            def write() -> dict:
                files = write_demo_data(self.out / "posttrain" / "data")
                return {"files": {stage: str(path) for stage, path in files.items()}}

            self.run_once("posttrain-data", write)
        results, model = {}, start
        for name, config in posttrain.stages():
            step, overrides = f"posttrain-{name}", self._posttrain_overrides(name, model)
            results[name] = self.run_once(
                step, functools.partial(self._launch, step, name, config, overrides)
            )
            model = results[name]["model"]
        return results

    def run(self) -> dict:
        self.out.mkdir(parents=True, exist_ok=True)
        self.prepare()
        stage1 = self.stage1()
        anneals = self.anneals(stage1)
        soup = self.soup(anneals)
        checkpoints = {"stage1": stage1["checkpoint"]}
        steps = [step for step, _, _ in self.cfg.anneal_runs()]
        checkpoints.update({step: run["checkpoint"] for step, run in zip(steps, anneals, strict=True)})
        if soup is not None:
            checkpoints["soup"] = soup["checkpoint"]
        evals = {name: self.evaluate(name, checkpoint) for name, checkpoint in checkpoints.items()}
        posttrain = self.posttrain(list(checkpoints.values())[-1])
        return write_report(self.cfg, self.out, stage1, anneals, soup, evals, posttrain)


def heldout_bpb(checkpoint: str, cfg: RecipeEvalConfig, variables: dict[str, str]) -> dict[str, dict]:
    """Held-out CE per token and bits per UTF-8 byte on each named set of validation token files."""
    model = load_model(checkpoint)  # on the CPU, in the checkpoint's dtype (float32 below: no autocast)
    byte_lengths = _token_byte_lengths(load_tokenizer(), model.config.embedding_size)
    results = {}
    for name, paths in cfg.heldout.items():
        loader = ValidationLoader(
            paths, cfg.seq_len, cfg.batch_size, max_instances=cfg.heldout_max_instances, variables=variables
        )
        sums = heldout_sums(model, loader, torch.device("cpu"), torch.float32, byte_lengths)
        nats, tokens, n_bytes = sums.tolist()
        results[name] = {
            "ce_per_token": nats / tokens,
            "bits_per_byte": nats / math.log(2) / n_bytes,
            "tokens": int(tokens),
            "bytes": int(n_bytes),
        }
    return results


def _token_byte_lengths(tokenizer, size: int):
    """UTF-8 bytes each token id stands for. dolma2 is byte-level BPE: one vocabulary character per
    byte; special tokens (EOS) stand for no text and count 0 bytes."""
    lengths = torch.zeros(size, dtype=torch.float64)
    special = {i for i, t in tokenizer.backend.get_added_tokens_decoder().items() if t.special}
    added = tokenizer.backend.get_added_tokens_decoder()
    for i in range(min(size, tokenizer.vocab_size)):
        if i in special:
            continue
        token = tokenizer.id_to_token(i)
        lengths[i] = len(added[i].content.encode("utf-8")) if i in added else len(token)
    return lengths


def run_recipe(cfg: RecipeConfig, train_overrides: list[str] | None = None) -> dict:
    """Run the OLMo 2 curriculum as the recipe describes. Each finished step is recorded in OUT/.done/ and
    skipped on a rerun; an interrupted training step resumes from its checkpoint.

    ``train_overrides`` apply to every training run; returns the report's summary."""
    return Recipe(cfg, train_overrides).run()
