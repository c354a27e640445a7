"""checkpoint.async_save: training goes on while a checkpoint is written, and resumes exactly."""

import threading

import pytest
import torch

import olmo2.train.checkpoint as checkpoint_mod
import olmo2.train.components as components_mod
from olmo2.model.checkpoint import read_state_dict
from olmo2.train.checkpoint import latest_checkpoint
from olmo2.train.config import load_train_config
from olmo2.train.monitor import read_metrics
from olmo2.train.trainer import train


def _trace(run) -> list[tuple]:
    return [(r["step"], r["loss"], r["batch_hash"]) for r in read_metrics(run)]


def _assert_same_run(a, b, steps=(8,)) -> None:
    assert _trace(a) == _trace(b) and len(_trace(a)) == 8
    for step in steps:
        wa, wb = read_state_dict(a / f"step{step}"), read_state_dict(b / f"step{step}")
        assert all(torch.equal(wa[k], wb[k]) for k in wa), step
    assert not list(b.glob(".step*.tmp"))


def test_async_save_overlaps_training_and_resumes_exactly(
    make_train_config, tmp_path, monkeypatch, interrupt_at
):
    config = make_train_config(checkpoint={"save_every": 2, "keep_last": 2})
    train(load_train_config(config, [f"run.folder={tmp_path}/sync"]))
    run, async_on = (
        tmp_path / "async",
        [f"run.folder={tmp_path}/async", "checkpoint.async_save=true"],
    )

    # Each checkpoint's HF export waits until training has finished one more step (its optimizer
    # update applied), which can only happen if the save runs in the background (synchronously it
    # would time out); the export must still hold the weights of its own step.
    steps, target, trained_on = [0], [0], threading.Event()
    overlapped = []
    real_save, real_export = components_mod.save_checkpoint, checkpoint_mod.save_state_dict

    def on_step():
        steps[0] += 1
        if steps[0] >= target[0]:
            trained_on.set()

    def save(*args, **kwargs):
        trained_on.clear()
        target[0] = steps[0] + 2  # the next step has finished once the one after it starts
        return real_save(*args, **kwargs)

    def slow_export(*args, **kwargs):
        overlapped.append(trained_on.wait(timeout=30))
        return real_export(*args, **kwargs)

    monkeypatch.setattr(components_mod, "save_checkpoint", save)
    monkeypatch.setattr(checkpoint_mod, "save_state_dict", slow_export)
    interrupt_at(8, every_step=on_step)  # saves of steps 2, 4, 6 done, step 7 trained; resume from 6
    with pytest.raises(interrupt_at.error):
        train(load_train_config(config, async_on))
    assert overlapped == [True, True, True]
    assert sorted(p.name for p in run.glob("step*")) == ["step4", "step6"]  # keep_last 2

    monkeypatch.undo()
    train(load_train_config(config, async_on))
    assert sorted(p.name for p in run.glob("step*")) == ["step6", "step8"]
    # Step 6 was exported after step 7 trained: still the weights of step 6, as in the sync run.
    _assert_same_run(tmp_path / "sync", run, steps=(6, 8))


def test_incomplete_async_checkpoint_is_never_resumed(make_train_config, tmp_path, monkeypatch, capsys):
    config = make_train_config(checkpoint={"save_every": 2, "keep_last": 0})
    train(load_train_config(config, [f"run.folder={tmp_path}/sync"]))
    run, async_on = (
        tmp_path / "async",
        [f"run.folder={tmp_path}/async", "checkpoint.async_save=true"],
    )
    real_export = checkpoint_mod.save_state_dict

    def failing_export(state, cfg, out_dir, **kwargs):
        if ".step4.tmp" in str(out_dir):
            raise OSError("disk full")
        return real_export(state, cfg, out_dir, **kwargs)

    monkeypatch.setattr(checkpoint_mod, "save_state_dict", failing_export)
    with pytest.raises(RuntimeError, match=r"checkpoint .*step4 was not written: OSError\('disk full'\)"):
        train(load_train_config(config, async_on))
    assert len(read_metrics(run)) == 6  # the failure surfaced at the next save
    assert (run / ".step4.tmp" / "train" / ".metadata").is_file()  # model + optimizer shards written,
    assert not (run / ".step4.tmp" / "COMPLETE").exists() and not (run / "step4").exists()  # not complete
    assert latest_checkpoint(run) == run / "step2"

    monkeypatch.undo()
    capsys.readouterr()
    train(load_train_config(config, async_on))
    assert f"resumed from {run / 'step2'}" in capsys.readouterr().err
    _assert_same_run(tmp_path / "sync", run, steps=(4, 8))
