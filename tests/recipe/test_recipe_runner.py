"""The recipe pipeline on a tiny setup: every step, resume after a kill, and the report."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from olmo2.cli import main
from olmo2.eval.suites import expand, formats_of
from olmo2.eval.tasks import resolve_format
from olmo2.model.checkpoint import read_state_dict
from olmo2.recipe.config import load_recipe
from olmo2.recipe.runner import Recipe
from olmo2.train.monitor import read_metrics


def _recipe(tmp_path: Path, train_config, seeds=(1, 2), long_anneal: bool = False) -> Path:
    """Stage 1 (6 steps), anneals of 4 steps per seed and, with ``long_anneal``, a second entry
    ``long`` of 6 steps (seed 1): the 13B/32B soup's shape (3 x 100B + 1 x 300B) in miniature."""
    stage1 = train_config(run={"max_steps": 6, "folder": "unused"})
    stage1["checkpoint"] = {"save_every": 2, "keep_last": 1}
    (tmp_path / "stage1.yaml").write_text(yaml.safe_dump(stage1))
    stage2 = train_config(run={"max_steps": 4, "folder": "unused"})
    stage2["schedule"] = {"name": "linear", "warmup_steps": 0, "alpha_f": 0.0}
    stage2["checkpoint"] = {"save_every": 1, "keep_last": 1}
    (tmp_path / "stage2.yaml").write_text(yaml.safe_dump(stage2))
    anneals = [{"config": str(tmp_path / "stage2.yaml"), "seeds": list(seeds)}]
    if long_anneal:
        long = dict(stage2, run={"max_steps": 6, "folder": "unused"})
        (tmp_path / "stage2-long.yaml").write_text(yaml.safe_dump(long))
        anneals.append({"name": "long", "config": str(tmp_path / "stage2-long.yaml"), "seeds": [1]})
    recipe = {
        "name": "tiny",
        "out": str(tmp_path / "recipe"),
        "stage1": {"config": str(tmp_path / "stage1.yaml")},
        "anneals": anneals,
        "eval": {
            "heldout": {"val": [str(tmp_path / "data/val/*.npy")]},
            "seq_len": 32,
            "heldout_max_instances": 8,
        },
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return tmp_path / "recipe.yaml"


def _demo_like_eval(monkeypatch) -> list[tuple[str, int | None]]:
    """The demo recipe's task spec, scored by a stand-in for ``run_eval`` (the test models' 384-token
    vocabulary cannot read the real tasks): the overrides that set it, and the calls it records."""
    demo = load_recipe(Path(__file__).parents[2] / "configs/recipe/demo.yaml").eval
    formats = [resolve_format(f) for entry in expand(demo.tasks) for f in formats_of(entry)]
    assert formats and all(
        f.kind == "ranked" for f in formats
    )  # accuracies: higher is better, as pareto needs
    calls = []

    def run_eval(checkpoint, tasks, *, limit, out, quiet):
        calls.append((tasks, limit))
        summary = {entry: 0.25 + 0.01 * len(calls) for entry in expand(tasks)}
        return {"model": checkpoint, "settings": {}, "summary": summary, "suites": {}, "tasks": {}}

    monkeypatch.setattr("olmo2.recipe.runner.run_eval", run_eval)
    return [f"eval.tasks={demo.tasks}", f"eval.limit={demo.limit}"], calls


def test_recipe_runs_every_step_and_reports(tmp_path, monkeypatch, train_config_dict, capsys):
    monkeypatch.setattr("olmo2.recipe.runner._token_byte_lengths", lambda tok, size: torch.full((size,), 2.0))
    overrides, eval_calls = _demo_like_eval(monkeypatch)
    recipe = load_recipe(_recipe(tmp_path, train_config_dict, long_anneal=True), overrides)
    summary = Recipe(recipe).run()
    out = tmp_path / "recipe"
    assert sorted(p.stem for p in (out / ".done").glob("*.json")) == [
        "anneal-long-seed1",
        "anneal-seed1",
        "anneal-seed2",
        "eval-anneal-long-seed1",
        "eval-anneal-seed1",
        "eval-anneal-seed2",
        "eval-soup",
        "eval-stage1",
        "soup",
        "stage1",
    ]
    # Each anneal entry trains for its own budget.
    assert len(read_metrics(out / "anneal-seed2")) == 4 and len(read_metrics(out / "anneal-long-seed1")) == 6
    # Anneals start from stage 1 at its final LR and decay to 0.
    stage1_last = json.loads((out / "stage1/metrics.jsonl").read_text().splitlines()[-1])
    anneal = [json.loads(x) for x in (out / "anneal-seed1/metrics.jsonl").read_text().splitlines()]
    assert anneal[0]["lr"] == pytest.approx(stage1_last["lr"] * 0.75) and anneal[-1]["lr"] == 0.0
    # The soup is the mean of all three anneal runs, of both entries.
    a, b = (read_state_dict(out / f"anneal-seed{s}/step4") for s in (1, 2))
    c = read_state_dict(out / "anneal-long-seed1/step6")
    soup = read_state_dict(out / "soup")
    key = "model.layers.0.mlp.up_proj.weight"
    torch.testing.assert_close(soup[key], (a[key] + b[key] + c[key]) / 3)
    report = (out / "report.md").read_text()
    assert "Did annealing and souping help?" in report and "bpb/val" in report
    # Steps are listed in the order they ran (not alphabetically), then their total.
    steps = report.split("## Steps (in the order they finished)")[1].strip().splitlines()
    names = [line[2:].split(":")[0] for line in steps]
    assert names[0] == "stage1" and names.index("anneal-seed2") < names.index("soup") and names[-1] == "total"
    assert (out / "loss_curves.png").is_file() and (out / "eval_metrics.png").is_file()
    assert summary["flops"]["soup"] > summary["flops"]["anneal-seed1"] > summary["flops"]["stage1"] > 0
    # With the demo's tasks, every checkpoint is a point of `olmo2 pareto --runs report.json`.
    assert len(eval_calls) == 5 and {call[0] for call in eval_calls} == {recipe.eval.tasks}
    points = json.loads((out / "report.json").read_text())
    assert [p["name"] for p in points] == [f"tiny/{c}" for c in summary["metrics"]] and len(points) == 5
    capsys.readouterr()
    assert main(["pareto", "--runs", str(out / "report.json"), "--out", str(tmp_path / "pareto.png")]) == 0
    plotted = capsys.readouterr().out.split("frontier of your runs: ")[1].split(", ")
    assert len(plotted) >= 1 and plotted[0] == "tiny/stage1"  # the cheapest run is on its frontier


def test_killed_recipe_reruns_only_unfinished_steps(tmp_path, train_config_dict, capfd):
    """The killed recipe is an ``olmo2 recipe`` process; the rerun runs in this one."""
    recipe = _recipe(tmp_path, train_config_dict, seeds=(1, 2))
    out = tmp_path / "recipe"
    cmd = [sys.executable, "-m", "olmo2.cli", "recipe", str(recipe)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    marker = out / "anneal-seed2" / "metrics.jsonl"
    while time.time() < deadline and not (marker.is_file() and marker.read_text().count("\n") >= 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = {p.stem: p.stat().st_mtime_ns for p in (out / ".done").glob("*.json")}
    assert "anneal-seed1" in done_before and "anneal-seed2" not in done_before
    capfd.readouterr()
    Recipe(load_recipe(recipe)).run()
    err = capfd.readouterr().err
    assert "stage1: done already, skipped" in err
    assert "anneal-seed1: done already, skipped" in err
    assert "resumed from" in err  # anneal-seed2 continued from its own checkpoint
    for step, mtime in done_before.items():
        assert (out / ".done" / f"{step}.json").stat().st_mtime_ns == mtime, step
    assert (out / "report.md").is_file()
