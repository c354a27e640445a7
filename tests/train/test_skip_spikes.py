"""spikes.skip_spikes: a loss spike vetoes the update (SkipStepAdamW), a normal step does not."""

import pytest
import torch

import olmo2.train.trainer as trainer_mod
from olmo2.train.config import load_train_config
from olmo2.train.monitor import read_metrics
from olmo2.train.trainer import train

SPIKE_STEP = 7


def _inject_spike(monkeypatch) -> dict:
    """Multiply the loss that the update sees by 1000 at step ``SPIKE_STEP``; record the weights and
    AdamW step counts just before and after each update."""
    real_update, real_step, seen = trainer_mod.apply_update, trainer_mod.LMTrainModule.train_step, {}

    def train_step(module, batch, step, guard):
        seen["step"] = step
        return real_step(module, batch, step, guard)

    def snapshot(parts) -> tuple[dict, list]:
        ((params, optimizer, _),) = parts
        weights = {i: p.detach().clone() for i, p in enumerate(params)}
        steps = [float(s["step"]) for s in optimizer.state.values() if "step" in s]
        return weights, steps

    def update(parts, losses, guard):
        if seen["step"] == SPIKE_STEP:
            losses = losses * 1000.0
        before = snapshot(parts)
        outcome = real_update(parts, losses, guard)
        seen[seen["step"]] = (before, snapshot(parts), outcome)
        return outcome

    monkeypatch.setattr(trainer_mod, "apply_update", update)
    monkeypatch.setattr(trainer_mod.LMTrainModule, "train_step", train_step)
    return seen


def _unchanged(before, after) -> bool:
    (w0, s0), (w1, s1) = before, after
    return all(torch.equal(w0[i], w1[i]) for i in w0) and s0 == s1


@pytest.mark.parametrize("skip", [True, False])
def test_a_loss_spike_is_skipped_and_a_normal_step_is_not(make_train_config, tmp_path, monkeypatch, skip):
    spikes = f"spikes={{window: 8, sigmas: 6.0, min_count: 4, skip_spikes: {str(skip).lower()}}}"
    cfg = load_train_config(make_train_config(), ["run.max_steps=9", "checkpoint.save_every=7", spikes])
    seen = _inject_spike(monkeypatch)
    train(cfg)
    records = read_metrics(tmp_path / "run")
    spiked = records[SPIKE_STEP - 1]
    assert spiked["spikes"] == ["loss"]
    assert all("spikes" not in r for r in records if r is not spiked)
    before, after, outcome = seen[SPIKE_STEP]
    if skip:
        assert spiked["skipped"] and spiked["skip_reason"] == "spike in loss"
        assert outcome.skipped and _unchanged(before, after)  # weights and AdamW moments untouched
        # The save due at the spike waits for the next applied step.
        assert not (tmp_path / "run/step7").exists() and (tmp_path / "run/step8/COMPLETE").is_file()
    else:
        assert not spiked["skipped"] and not _unchanged(before, after)
        assert (tmp_path / "run/step7/COMPLETE").is_file()
    before, after, outcome = seen[SPIKE_STEP - 1]  # an ordinary step is applied either way
    assert not outcome.skipped and not _unchanged(before, after)
    assert [r["skipped"] for r in records].count(True) == (1 if skip else 0)


def test_skip_spikes_resumes_with_the_same_windows(make_train_config, tmp_path, monkeypatch, interrupt_at):
    """The spike windows are part of the checkpoint: a resumed run flags exactly what the whole one did."""
    spikes = "spikes={window: 8, sigmas: 6.0, min_count: 4, skip_spikes: true}"
    overrides = ["run.max_steps=9", "checkpoint.save_every=5", spikes]
    _inject_spike(monkeypatch)
    train(load_train_config(make_train_config(), [*overrides, f"run.folder={tmp_path}/whole"]))
    assert '"grad_norm"' in (tmp_path / "whole/step5/state.json").read_text()  # a spike window
    run = tmp_path / "resumed"
    interrupt_at(6)  # after the step-5 checkpoint; the rerun resumes from it
    with pytest.raises(interrupt_at.error):
        train(load_train_config(make_train_config(), [*overrides, f"run.folder={run}"]))
    train(load_train_config(make_train_config(), [*overrides, f"run.folder={run}"]))
    whole, resumed = read_metrics(tmp_path / "whole"), read_metrics(run)
    assert [r["skipped"] for r in whole].count(True) == 1
    assert [(r["loss"], r["skipped"], r.get("spikes")) for r in whole] == [
        (r["loss"], r["skipped"], r.get("spikes")) for r in resumed
    ]
