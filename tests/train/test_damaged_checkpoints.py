"""Damaged checkpoints: found by their checksums (or by failing to load), named, and skipped for the
one before, on every rank alike; the resumed run is still the uninterrupted one."""

import json
import os
import pickle
import shutil
import subprocess

import pytest
import torch

import olmo2.train.checkpoint as checkpoint_mod
from olmo2.model.checkpoint import CheckpointError, read_state_dict
from olmo2.train.checkpoint import (
    CHECKSUMS,
    COMPLETE,
    _complete,
    checkpoint_fault,
    file_checksums,
    read_train_state,
)
from olmo2.train.config import load_train_config
from olmo2.train.monitor import read_metrics
from olmo2.train.trainer import TrainingHalted, train


def _trace(run) -> list[tuple]:
    return [(r["step"], r["loss"], r["batch_hash"]) for r in read_metrics(run)]


def _shard(step_dir):
    return sorted((step_dir / "train").glob("*.distcp"))[0]


def _random_bytes(path) -> None:
    """Overwrite 256 bytes in the middle of the file (its size stays)."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 256] = os.urandom(256)
    path.write_bytes(bytes(data))


# damage -> (the file it breaks, relative to step<N>/; what the fallback line says about it)
DAMAGE = {
    "delete shard": (lambda d: _shard(d).unlink(), "is missing"),
    "truncate shard": (lambda d: os.truncate(_shard(d), 100), "has 100 bytes"),
    "random bytes in shard": (lambda d: _random_bytes(_shard(d)), "sha256 mismatch"),
    "delete metadata": (lambda d: (d / "train/.metadata").unlink(), "is missing"),
    "truncate state.json": (lambda d: os.truncate(d / "state.json", 20), "has 20 bytes"),
}
DAMAGED_FILE = {
    "delete shard": "train/__0_0.distcp",
    "truncate shard": "train/__0_0.distcp",
    "random bytes in shard": "train/__0_0.distcp",
    "delete metadata": "train/.metadata",
    "truncate state.json": "state.json",
}


@pytest.fixture
def finished_run(make_train_config, tmp_path):
    """A 2-step run with checkpoints step1 and step2, and its config."""
    config = make_train_config(
        checkpoint={"save_every": 1, "keep_last": 0}, run={"max_steps": 2}, schedule={"warmup_steps": 1}
    )
    train(load_train_config(config, [f"run.folder={tmp_path}/ref"]))
    return config, tmp_path / "ref"


def _damaged_copy(ref, run, damage: str, legacy: bool = False):
    """``ref`` copied to ``run`` with its latest checkpoint damaged; the damaged file."""
    shutil.copytree(ref, run)
    latest = max(run.glob("step*"), key=lambda p: int(p.name[4:]))
    if legacy:
        for checksums in run.glob(f"step*/{CHECKSUMS}"):
            checksums.unlink()
    DAMAGE[damage][0](latest)
    return latest / DAMAGED_FILE[damage]


@pytest.mark.parametrize(
    "damage, legacy",
    [(d, False) for d in DAMAGE] + [(d, True) for d in DAMAGE if d != "random bytes in shard"],
    ids=[*DAMAGE, *(f"{d}, no checksums" for d in DAMAGE if d != "random bytes in shard")],
)
def test_a_damaged_checkpoint_is_named_and_skipped(finished_run, tmp_path, capsys, damage, legacy):
    """With checksums the line names the file and what is wrong with it; a checkpoint of older code
    (no CHECKSUMS.json) fails to load instead (random bytes in its tensor data can load silently: see
    the NaN test below). The damaged one is kept as step2.damaged."""
    config, ref = finished_run
    run = tmp_path / "damaged"
    bad = _damaged_copy(ref, run, damage, legacy)
    says = DAMAGE[damage][1]
    if not legacy:
        fault = checkpoint_fault(run / "step2")
        assert str(bad) in fault and says in fault
    assert checkpoint_fault(run / "step1") is None

    capsys.readouterr()
    train(load_train_config(config, [f"run.folder={run}"]))
    err = capsys.readouterr().err
    fallback = [line for line in err.splitlines() if "is damaged" in line]
    assert len(fallback) == 1 and f"checkpoint {run / 'step2'} is damaged" in fallback[0]
    if not legacy:
        assert str(bad) in fallback[0] and says in fallback[0]
    assert f"resumed from {run / 'step1'}" in err
    assert (run / "step2.damaged").is_dir() and checkpoint_fault(run / "step2") is None


def test_the_fallback_resumes_exactly(make_train_config, tmp_path, capsys):
    """Random bytes in the latest checkpoint's shard (before checksums: a silent resume into NaN or
    garbage): the rerun resumes from step4 and ends as the uninterrupted run did."""
    config = make_train_config(checkpoint={"save_every": 4, "keep_last": 0})
    ref = tmp_path / "ref"
    train(load_train_config(config, [f"run.folder={ref}"]))
    run = tmp_path / "damaged"
    _damaged_copy(ref, run, "random bytes in shard")
    capsys.readouterr()
    train(load_train_config(config, [f"run.folder={run}"]))
    assert f"resumed from {run / 'step4'}" in capsys.readouterr().err
    assert _trace(run) == _trace(ref) and len(_trace(run)) == 8
    wa, wb = read_state_dict(ref / "step8"), read_state_dict(run / "step8")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_no_loadable_checkpoint_names_each_fault(finished_run, tmp_path):
    config, ref = finished_run
    run = tmp_path / "damaged"
    shutil.copytree(ref, run)
    os.truncate(_shard(run / "step2"), 100)
    (run / "step1" / "state.json").write_text("{}")
    with pytest.raises(ValueError, match="no checkpoint in .* loads") as err:
        train(load_train_config(config, [f"run.folder={run}"]))
    text = str(err.value)
    assert f"{run / 'step2'}: {_shard(run / 'step2')} has 100 bytes" in text
    assert f"{run / 'step1'}: {run / 'step1' / 'state.json'} has 2 bytes" in text
    assert sorted(p.name for p in run.glob("step*")) == ["step1", "step2"]


def test_a_damaged_stage_one_checkpoint_stops_a_stage_two_start(finished_run, tmp_path):
    """``init.checkpoint`` has nothing to fall back to: its fault is named before any step."""
    config, ref = finished_run
    os.truncate(_shard(ref / "step2"), 100)
    overrides = [f"init.checkpoint={ref / 'step2'}", f"run.folder={tmp_path}/anneal"]
    with pytest.raises(ValueError, match=rf"init.checkpoint {ref / 'step2'} is damaged: .*has 100 bytes"):
        train(load_train_config(config, overrides))
    assert not (tmp_path / "anneal").exists()


def test_a_nan_checkpoint_halts_saying_it_may_be_damaged(finished_run, tmp_path, monkeypatch):
    """A checkpoint whose weights are NaN passes every check (as one written by older code with
    random bytes in a tensor can): every step after the resume is non-finite."""
    config, ref = finished_run
    run = tmp_path / "nan"
    shutil.copytree(ref, run)
    real_load = checkpoint_mod.load_checkpoint

    def load_nan(path, parts, env, **kwargs):
        state = real_load(path, parts, env, **kwargs)
        with torch.no_grad():
            next(parts["model"].model.parameters()).fill_(float("nan"))
        return state

    monkeypatch.setattr(checkpoint_mod, "load_checkpoint", load_nan)
    with pytest.raises(TrainingHalted, match="stopped at step 5") as err:
        train(load_train_config(config, [f"run.folder={run}", "run.max_steps=8"]))
    assert f"No step succeeded since resuming from {run / 'step2'}: that checkpoint may be damaged" in str(
        err.value
    )


def _fake_checkpoint(folder, step, complete=True):
    path = folder / f"step{step}"
    path.mkdir(parents=True)
    if complete:
        (path / COMPLETE).write_text(f"step {step}\n")
    return path


def test_pruning_keeps_the_good_checkpoints_below_damaged_later_ones(tmp_path):
    """keep_last 1, resumed from step2 because step6 is damaged: saving step4 keeps step4 (the old
    pruning kept step6 alone, the only one that does not load)."""
    for step in (2, 6):
        _fake_checkpoint(tmp_path, step)
    tmp = tmp_path / ".step4.tmp"
    tmp.mkdir()
    _complete(tmp_path, tmp, tmp_path / "step4", 4, "{}\n", keep_last=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step4", "step6"]
    listed = json.loads((tmp_path / "step4" / CHECKSUMS).read_text())
    assert listed == {"state.json": {"bytes": 3, "sha256": listed["state.json"]["sha256"]}}

    (tmp_path / "step6" / "a file").write_text("of the damaged one")  # the run reaches step6 again
    tmp.mkdir()
    _complete(tmp_path, tmp, tmp_path / "step6", 6, "{}\n", keep_last=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step6", "step6.damaged"]
    assert (tmp_path / "step6.damaged" / "a file").is_file()
    tmp.mkdir()  # damaged again: both damaged ones are kept
    _complete(tmp_path, tmp, tmp_path / "step6", 6, "{}\n", keep_last=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step6", "step6.damaged", "step6.damaged2"]


def test_read_train_state_names_the_file(tmp_path):
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'state.json'} is missing"):
        read_train_state(tmp_path)
    (tmp_path / "state.json").write_text('{"step": ')
    with pytest.raises(ValueError, match=f"{tmp_path / 'state.json'}: not valid JSON"):
        read_train_state(tmp_path)


@pytest.mark.slow  # a minute of torchrun start-ups on a busy 2-core machine
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs torchrun")
def test_two_ranks_fall_back_together(make_train_config, tmp_path, torchrun, torchrun_train):
    """step3: random bytes in a shard whose hash rank 1 checks; step2 (no checksums): only rank 1
    fails to load (its RNG file). Both ranks skip both, instead of rank 1 raising while rank 0
    trains on and waits for it."""
    config = make_train_config(
        checkpoint={"save_every": 1, "keep_last": 0}, run={"max_steps": 3}, schedule={"warmup_steps": 1}
    )
    run = torchrun_train(config, tmp_path / "run", "parallel.strategy=ddp")
    listed = list(json.loads((run / "step3" / CHECKSUMS).read_text()))
    assert listed.index("train/__0_0.distcp") % 2 == 1
    _random_bytes(run / "step3" / "train" / "__0_0.distcp")
    (run / "step2" / CHECKSUMS).unlink()
    os.truncate(run / "step2" / "rng-rank1.pt", 10)
    cmd = [
        *torchrun(2),
        "-m",
        "olmo2.cli",
        "train",
        str(config),
        f"run.folder={run}",
        "parallel.strategy=ddp",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert (
        f"checkpoint {run / 'step3'} is damaged, trying the one before: {run / 'step3'}/train"
        in result.stderr
    )
    assert f"checkpoint {run / 'step2'} is damaged, trying the one before: rank 1: " in result.stderr
    assert f"resumed from {run / 'step1'}" in result.stderr
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3]


def test_each_rank_hashes_its_share(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).write_text(name)
    (tmp_path / CHECKSUMS).write_text(json.dumps(file_checksums(tmp_path)))
    (tmp_path / "b").write_text("c")
    assert checkpoint_fault(tmp_path, 0, 2) is None
    assert (
        checkpoint_fault(tmp_path, 1, 2)
        == f"{tmp_path / 'b'} has changed since it was written (sha256 mismatch)"
    )
    assert checkpoint_fault(tmp_path) == checkpoint_fault(tmp_path, 1, 2)
    (tmp_path / CHECKSUMS).write_text('{"a": 1}')
    assert "not a listing of files" in checkpoint_fault(tmp_path)


def test_ctrl_c_during_a_save_is_an_interrupt_not_a_checkpoint_error(tmp_path, monkeypatch):
    """DCP wraps a KeyboardInterrupt raised while it writes into a CheckpointException; the CLI must
    see the interrupt (exit 130), and an interrupted load must not count as a damaged checkpoint."""
    from olmo2.model.config import ModelConfig
    from olmo2.model.transformer import build_model
    from olmo2.train.distributed import DistEnv
    from olmo2.train.engine import Part

    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if not isinstance(f, (str, os.PathLike)):  # DCP's shard streams; the RNG file is a path
            raise KeyboardInterrupt
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    model = build_model(
        ModelConfig(
            d_model=32,
            n_layers=1,
            n_heads=2,
            mlp_hidden=64,
            vocab_size=128,
            eos_token_id=None,
            pad_token_id=None,
        ),
        seed=0,
    )
    env = DistEnv(0, 1, 0, torch.device("cpu"))
    with pytest.raises(KeyboardInterrupt):
        checkpoint_mod.save_checkpoint(tmp_path, 1, {"model": Part(model)}, {}, env, export_hf=False)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_whose_metadata_would_run_code_is_refused_not_run(finished_run, tmp_path, capsys):
    """DCP's ``.metadata`` is a pickle; it is read with an unpickler that admits only DCP's metadata
    classes. A crafted one (without checksums, so that it reaches the reader) is named and skipped."""
    config, ref = finished_run
    run = tmp_path / "crafted"
    shutil.copytree(ref, run)
    (run / "step2" / CHECKSUMS).unlink()
    marker = tmp_path / "code-ran"
    (run / "step2" / "train" / ".metadata").write_bytes(pickle.dumps(_RunsCode(marker)))
    capsys.readouterr()
    train(load_train_config(config, [f"run.folder={run}"]))
    err = capsys.readouterr().err
    assert "refers to posix.system, which DCP metadata never holds" in err
    assert f"resumed from {run / 'step1'}" in err
    assert not marker.exists()
