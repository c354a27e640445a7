"""SFT, DPO and GRPO on the training engine: one rank or two (FSDP2, gloo) give the same steps,
micro-batching does not change the loss, and a run killed with SIGKILL resumes exactly."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

from olmo2.folder_lock import FolderLocked, hold_folder
from olmo2.model.checkpoint import read_state_dict, save_model
from olmo2.model.config import ModelConfig
from olmo2.model.transformer import build_model
from olmo2.posttrain.stages import stage_functions
from olmo2.train.monitor import read_metrics

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs torchrun")

TINY = ModelConfig(d_model=64, n_layers=2, n_heads=4, mlp_hidden=128, max_seq_len=256)
TIMING = {"step_time", "tokens_per_sec", "mfu"}  # differ from run to run


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def stages(tmp_path_factory) -> dict[str, dict]:
    """A random tiny model and, per stage, a config (as a dict) that trains it for a few steps."""
    root = tmp_path_factory.mktemp("stages")
    model = root / "model"
    save_model(build_model(TINY, seed=0), model)
    chats = [
        {"messages": [{"role": "user", "content": f"Count to {n}."}, {"role": "assistant", "content": " ".join(map(str, range(1, n + 1)))}]}
        for n in range(1, 17)
    ]  # fmt: skip
    pairs = [
        {"prompt": f"What is {a} plus {a}?", "chosen": f"It is {2 * a}.", "rejected": f"It is {2 * a + 3}, sir."}
        for a in range(1, 17)
    ]  # fmt: skip
    prompts = [
        {"prompt": f"Pick a digit above {d}.", "ground_truth": str(d + 1), "verifier": "gsm8k"}
        for d in range(8)
    ]
    common = {"model": str(model), "seed": 3, "runtime": {"precision": "fp32", "device": "cpu"}}
    offline = {
        "batch_size": 8,
        "micro_batch_size": 2,
        "run": {"epochs": 2},
        "max_seq_len": 64,
        "optim": {"lr": 1e-3},
    }
    return {
        "sft": {**common, **offline, "data": _jsonl(root / "sft.jsonl", chats)},
        "dpo": {**common, **offline, "data": _jsonl(root / "dpo.jsonl", pairs)},
        "rlvr": {
            **common,
            "data": _jsonl(root / "rlvr.jsonl", prompts),
            "steps": 4,
            "batch_size": 2,
            "group_size": 4,
            "micro_batch_size": 4,
            "max_new_tokens": 6,
            "beta": 0.05,
            "optim": {"lr": 1e-3},
        },
    }


def _config(tmp_path: Path, stage: str, cfg: dict, **changes) -> Path:
    path = tmp_path / f"{stage}-{len(list(tmp_path.glob('*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump({**cfg, **changes}))
    return path


def _cli(
    stage: str, config: Path, *overrides: str, launcher: tuple[str, ...] = (sys.executable,)
) -> list[str]:
    return [*launcher, "-m", "olmo2.cli", stage, str(config), *overrides]


def _run(cmd: list[str]) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]


def _run_here(stage: str, config: Path, *overrides: str) -> None:
    """The same stage in this process (what ``olmo2 STAGE CONFIG overrides`` calls)."""
    load, train = stage_functions(stage)
    train(load(config, list(overrides)))


def _rows(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(run)]


# Runs ``olmo2 STAGE CONFIG overrides`` for each command line of the JSON file argv[1], in turn, in
# one process group: one torchrun launch for all three stages (each launch costs seconds of start-up).
# A stage joins the group it finds and leaves it to its owner, as under a recipe.
STAGES_IN_ONE_LAUNCH = """
import json, sys

import torch.distributed as dist

from olmo2.cli import main

dist.init_process_group("gloo")
for argv in json.loads(open(sys.argv[1]).read()):
    if main(argv):
        sys.exit(f"olmo2 {' '.join(argv)} failed")
dist.destroy_process_group()
"""


@pytest.fixture(scope="module")
def two_fsdp_ranks(stages, tmp_path_factory, torchrun) -> Iterator[dict[str, Path]]:
    """Per stage, the run folder of its config trained by two FSDP ranks (``olmo2 STAGE`` under torchrun)."""
    root = tmp_path_factory.mktemp("two_ranks")
    folders = {stage: root / stage for stage in stages}
    commands = [
        [stage, str(_config(root, stage, cfg)), f"run.folder={folders[stage]}", "parallel.strategy=fsdp"]
        for stage, cfg in stages.items()
    ]
    (root / "commands.json").write_text(json.dumps(commands))
    (root / "stages.py").write_text(STAGES_IN_ONE_LAUNCH)
    _run([*torchrun(2), str(root / "stages.py"), str(root / "commands.json")])
    yield folders
    shutil.rmtree(root)  # ~0.8 GB of checkpoints


@pytest.mark.parametrize("stage", ["sft", "dpo", "rlvr"])
def test_two_fsdp_ranks_give_the_one_rank_steps(stages, two_fsdp_ranks, tmp_path, stage):
    config = _config(tmp_path, stage, stages[stage])
    _run_here(stage, config, f"run.folder={tmp_path / 'one'}")
    one, two = read_metrics(tmp_path / "one"), read_metrics(two_fsdp_ranks[stage])
    assert len(one) == len(two) >= 4
    for a, b in zip(one, two, strict=True):
        for key in ("loss", "grad_norm", *(("reward_mean", "kl") if stage == "rlvr" else ())):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), (a["step"], key)
        assert a.get("n_targets") == b.get("n_targets")
    if stage == "rlvr":  # the same rollouts: rewards differ from step to step, identically
        assert [r["reward_mean"] for r in one] == [r["reward_mean"] for r in two]
    wa, wb = read_state_dict(tmp_path / "one/model"), read_state_dict(two_fsdp_ranks[stage] / "model")
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-4, atol=1e-5)


def test_sft_micro_batches_do_not_change_the_loss(stages, tmp_path):
    runs = {}
    for micro in (8, 2):  # 1 x 8 and 4 x 2 per step
        config = _config(tmp_path, "sft", stages["sft"])
        _run_here("sft", config, f"micro_batch_size={micro}", f"run.folder={tmp_path / str(micro)}")
        runs[micro] = read_metrics(tmp_path / str(micro))
    for a, b in zip(runs[8], runs[2], strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5)
        assert a["n_targets"] == b["n_targets"]


def _kill_after(proc: subprocess.Popen, run: Path, lines: int, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    metrics = run / "metrics.jsonl"
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= lines:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("stage", ["sft", pytest.param("dpo", marks=pytest.mark.slow), "rlvr"])
def test_sigkill_then_rerun_reproduces_the_uninterrupted_run(stages, tmp_path, stage, capfd):
    """DPO's is slow-marked (CI time): its resume shares SFT's path plus the reference cache, which a
    resumed run reloads (checked by ``test_dpo_margin_and_accuracy_rise_reference_cached``).
    The killed run is an ``olmo2`` process; the rerun resumes its folder in this one, as the command would."""
    cfg = dict(stages[stage], checkpoint={"save_every": 2, "keep_last": 1})
    if stage == "rlvr":
        cfg["steps"] = 8
    else:
        cfg["run"] = {"epochs": 4}
    config = _config(tmp_path, stage, cfg)
    _run_here(stage, config, f"run.folder={tmp_path / 'whole'}")
    run = tmp_path / "killed"
    proc = subprocess.Popen(
        _cli(stage, config, f"run.folder={run}"), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    _kill_after(proc, run, lines=5)  # the step-4 checkpoint is complete before step 5 is logged
    done = len(read_metrics(run))
    assert done < len(read_metrics(tmp_path / "whole")), "the run finished before it could be killed"
    capfd.readouterr()
    _run_here(stage, config, f"run.folder={run}")
    assert "resumed from" in capfd.readouterr().err
    assert _rows(tmp_path / "whole") == _rows(run)
    wa, wb = read_state_dict(tmp_path / "whole/model"), read_state_dict(run / "model")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not list(run.glob(".step*.tmp"))


def test_a_missing_model_or_too_many_ranks_fail_before_any_work(stages, tmp_path, monkeypatch):
    from olmo2.train.distributed import DistEnv

    config = _config(tmp_path, "sft", stages["sft"])
    load, train = stage_functions("sft")
    with pytest.raises(ValueError, match=f"model: checkpoint not found: {tmp_path}/nope"):
        train(load(config, [f"model={tmp_path}/nope", f"run.folder={tmp_path}/a"]))
    monkeypatch.setattr(
        "olmo2.posttrain.common.init_distributed", lambda device: DistEnv(0, 3, 0, torch.device("cpu"))
    )
    with pytest.raises(
        ValueError, match=r"batch_size \(8\) must be divisible by the number of ranks launched \(3\)"
    ):
        train(load(config, [f"run.folder={tmp_path}/b"]))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_held_or_refused_stage_folder_stays_as_it_was(stages, tmp_path):
    """A second run while the first holds the folder, and a start refused for its data, change no byte
    of the first run's files (config.yaml, data_report.json); a refused new folder is removed."""
    config = _config(tmp_path, "sft", stages["sft"])
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.yaml", "data_report.json", "metrics.jsonl"):  # the first run's
        (run / name).write_text(f"the first run's {name}\n")
    before = _files(run)
    with hold_folder(run), pytest.raises(FolderLocked, match=f"pid {os.getpid()} on "):
        _run_here("sft", config, f"run.folder={run}", "run.max_steps=1")
    assert _files(run) == before
    unusable = _jsonl(tmp_path / "unusable.jsonl", [{"messages": []}])
    for folder in (run, tmp_path / "new" / "run"):
        with pytest.raises(ValueError, match="no usable sft records"):
            _run_here("sft", config, f"run.folder={folder}", f"data={unusable}")
    assert _files(run) == before and not (tmp_path / "new").exists()


def test_strict_makes_a_bad_record_an_error_naming_its_line(stages, tmp_path):
    lines = Path(stages["sft"]["data"]).read_text().splitlines()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        "\n".join([*lines[:3], json.dumps({"messages": [{"role": "user", "content": "hi"}]}), *lines[3:]])
        + "\n"
    )
    config = _config(tmp_path, "sft", stages["sft"], data=str(bad))
    load, train = stage_functions("sft")
    with pytest.raises(ValueError, match=f"{bad}:4: "):
        train(load(config, [f"run.folder={tmp_path}/strict", "strict=true", "run.max_steps=1"]))
    train(load(config, [f"run.folder={tmp_path}/lenient", "run.max_steps=1"]))
    report = json.loads((tmp_path / "lenient/data_report.json").read_text())["sft"]
    assert report["read"] == 17 and report["used"] == 16 and sum(report["skipped"].values()) == 1
    assert any(w.startswith(f"{bad}:4: ") for ws in report["where"].values() for w in ws)
