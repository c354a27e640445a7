"""TensorBoard and Weights & Biases receive every metrics.jsonl record; missing packages fail early."""

import sys
import types

import pytest

from olmo2.cli import main
from olmo2.train.config import load_train_config
from olmo2.train.monitor import read_metrics
from olmo2.train.trainer import train


def test_tensorboard_scalars_match_metrics_after_a_resume(make_train_config, tmp_path, interrupt_at):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = make_train_config(logging={"tensorboard": True}, run={"eval_every": 4})
    interrupt_at(7)  # steps 5 and 6 are logged, then the run stops; it resumes from step 4
    with pytest.raises(interrupt_at.error):
        train(load_train_config(config))
    train(load_train_config(config))
    run = tmp_path / "run"
    records = read_metrics(run)
    assert [r["step"] for r in records] == list(range(1, 9))
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    for tag in ("loss", "lr", "grad_norm", "z_loss", "tokens"):
        scalars = events.Scalars(tag)
        # The interrupted run's steps 5-6 are purged: each step appears once, with the resumed value.
        assert [s.step for s in scalars] == list(range(1, 9)), tag
        assert [s.value for s in scalars] == pytest.approx([r[tag] for r in records], rel=1e-6), tag
    assert [s.step for s in events.Scalars("val_loss")] == [4, 8]
    assert "batch_hash" not in events.Tags()["scalars"]


def test_wandb_run_gets_every_record(make_train_config, tmp_path, monkeypatch):
    calls = []

    class FakeRun:
        def log(self, data, step=None):
            calls.append(("log", dict(data), step))

        def finish(self):
            calls.append(("finish",))

    def init(**kwargs):
        calls.append(("init", kwargs))
        return FakeRun()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    wandb = {"enabled": True, "project": "olmo2-tests"}
    train(load_train_config(make_train_config(logging={"wandb": wandb}), ["run.max_steps=3"]))
    run = tmp_path / "run"
    (_, kwargs), *logs, last = calls
    assert last == ("finish",)
    assert kwargs["project"] == "olmo2-tests" and kwargs["name"] == "run" and kwargs["mode"] == "offline"
    assert kwargs["dir"] == str(run) and kwargs["config"]["optim"]["lr"] == 3e-3
    assert kwargs["id"] == (run / "wandb-id").read_text().strip() and kwargs["resume"] == "allow"
    records = read_metrics(run)
    assert [step for _, _, step in logs] == [r["step"] for r in records] == [1, 2, 3]
    for (_, data, _), record in zip(logs, records, strict=True):
        assert data["loss"] == record["loss"] and data["lr"] == record["lr"]
        assert data["skipped"] == 0.0 and "batch_hash" not in data and "step" not in data


def test_missing_backend_or_unknown_key_fails_before_training(
    make_train_config, tmp_path, monkeypatch, capsys
):
    path = make_train_config()
    for package, override in (
        ("tensorboard", "logging.tensorboard=true"),
        ("wandb", "logging.wandb.enabled=true"),
    ):
        monkeypatch.setitem(sys.modules, package, None)  # import fails, as if not installed
        assert main(["train", str(path), override]) == 4
        assert f"package is not installed: pip install {package}" in capsys.readouterr().err
    assert main(["train", str(path), "logging.tensorbord=true"]) == 4
    assert "unknown key logging.tensorbord (did you mean logging.tensorboard?)" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
