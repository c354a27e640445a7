"""A run never exits 0 on garbage: non-finite hyperparameters are refused at load, a run whose last
step was skipped or whose weights went non-finite halts without saving, and metrics.jsonl stays
strict JSON when a loss is NaN."""

import json
import math

import pytest
import torch

import olmo2.train.trainer as trainer_mod
from olmo2.config import ConfigError
from olmo2.posttrain.sft import load_sft_config
from olmo2.train.config import load_train_config
from olmo2.train.engine import TrainingHalted
from olmo2.train.monitor import read_metrics
from olmo2.train.trainer import train


@pytest.mark.parametrize("key", ["optim.lr", "optim.eps", "optim.grad_clip", "loss.z_loss_multiplier"])
@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_non_finite_hyperparameters_are_refused_naming_the_key(make_train_config, key, value):
    with pytest.raises(ConfigError, match=f"{key}: expected a finite number, got '{value}'"):
        load_train_config(make_train_config(), [f"{key}={value}"])


def test_post_training_refuses_an_infinite_lr(tmp_path):
    with pytest.raises(ConfigError, match="optim.lr: expected a finite number"):
        load_sft_config(None, [f"model={tmp_path}", f"data={tmp_path}/d.jsonl", "optim.lr=inf"])


def _break_update_at(monkeypatch, step: int, how: str) -> None:
    """At optimizer step ``step``: ``nan_loss`` makes the update see a NaN loss (so it is skipped);
    ``nan_weight`` applies the update, then writes a NaN into one weight (as lr=inf once did)."""
    real_update, real_step, seen = trainer_mod.apply_update, trainer_mod.LMTrainModule.train_step, {}

    def train_step(module, batch, current, guard):
        seen["step"] = current
        return real_step(module, batch, current, guard)

    def update(parts, losses, guard):
        if seen["step"] == step and how == "nan_loss":
            losses = losses * float("nan")
        outcome = real_update(parts, losses, guard)
        if seen["step"] == step and how == "nan_weight":
            with torch.no_grad():
                parts[0][0][0].view(-1)[0] = float("nan")
        return outcome

    monkeypatch.setattr(trainer_mod, "apply_update", update)
    monkeypatch.setattr(trainer_mod.LMTrainModule, "train_step", train_step)


def test_a_skipped_last_step_halts_and_saves_nothing(make_train_config, tmp_path, monkeypatch):
    cfg = load_train_config(make_train_config(), ["run.max_steps=4", "checkpoint.save_every=2"])
    _break_update_at(monkeypatch, 4, "nan_loss")
    with pytest.raises(TrainingHalted, match=r"stopped at step 4: the last 1 step had a non-finite loss"):
        train(cfg)
    run = tmp_path / "run"
    assert (run / "step2/COMPLETE").is_file() and not (run / "step4").exists()
    lines = (run / "metrics.jsonl").read_text().splitlines()

    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    last = json.loads(lines[-1], parse_constant=refuse)  # NaN/Infinity would be refused here
    assert last["loss"] is None and last["non_finite"]["loss"] == "nan" and last["skipped"]
    assert math.isnan(read_metrics(run)[-1]["loss"])  # read back as the float it was


def test_non_finite_weights_halt_before_a_checkpoint(make_train_config, tmp_path, monkeypatch):
    cfg = load_train_config(make_train_config(), ["run.max_steps=4", "checkpoint.save_every=2"])
    _break_update_at(monkeypatch, 4, "nan_weight")
    with pytest.raises(
        TrainingHalted, match=r"after step 4 the weights are not finite \(model\..*nothing was saved"
    ):
        train(cfg)
    run = tmp_path / "run"
    assert (run / "step2/COMPLETE").is_file() and not (run / "step4").exists()
