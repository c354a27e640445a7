"""Training-test helpers: stop a run in process at a chosen step, as an interruption would; run
``olmo2 train`` under torchrun; compare two run folders."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from olmo2.model.checkpoint import read_state_dict
from olmo2.train.monitor import read_metrics


class Interrupted(Exception):
    """Raised by the patched training step (see ``interrupt_at``)."""


@pytest.fixture
def interrupt_at(monkeypatch):
    """``interrupt_at(step, every_step=None)``: the ``step``-th call of the pretraining module's
    ``train_step`` (counted over all runs of the test) raises ``interrupt_at.error``, once;
    ``every_step()`` runs before each step."""
    from olmo2.train.trainer import LMTrainModule

    def install(step: int, every_step=None) -> None:
        real_step, calls = LMTrainModule.train_step, [0]

        def patched(*args, **kwargs):
            calls[0] += 1
            if every_step is not None:
                every_step()
            if calls[0] == step:
                raise Interrupted(f"interrupted at step {step}")
            return real_step(*args, **kwargs)

        monkeypatch.setattr(LMTrainModule, "train_step", patched)

    install.error = Interrupted
    return install


@pytest.fixture
def torchrun_train(torchrun):
    """``torchrun_train(config, folder, *overrides, nproc=2, entry=("-m", "olmo2.cli")) -> folder``:
    ``olmo2 train config`` under torchrun with ``nproc`` processes (Gloo on CPU), saving to ``folder``.
    ``entry`` replaces the CLI module with a script (and its leading arguments) that ends in it."""

    def run(config, folder, *overrides, nproc: int = 2, entry=("-m", "olmo2.cli")) -> Path:
        cmd = [
            *torchrun(nproc),
            *map(str, entry),
            "train",
            str(config),
            f"run.folder={folder}",
            *overrides,
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-4000:]
        return Path(folder)

    return run


@pytest.fixture
def assert_runs_match():
    """``assert_runs_match(a, b, step, loss_rel=1e-5, grad_norm_rel=1e-5, rtol=1e-4, atol=2e-5)``: two run
    folders saw the same batches, logged the same losses and gradient norms (relative tolerances), and
    hold close weights at checkpoint ``step`` (``torch.testing.assert_close``)."""

    def check(a, b, step: int, *, loss_rel=1e-5, grad_norm_rel=1e-5, rtol=1e-4, atol=2e-5) -> None:
        ma, mb = read_metrics(a), read_metrics(b)
        assert [r["step"] for r in ma] == [r["step"] for r in mb] == list(range(1, step + 1))
        for x, y in zip(ma, mb, strict=True):
            assert x["batch_hash"] == y["batch_hash"]
            assert x["loss"] == pytest.approx(y["loss"], rel=loss_rel)
            assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=grad_norm_rel)
        wa, wb = read_state_dict(f"{a}/step{step}"), read_state_dict(f"{b}/step{step}")
        assert wa.keys() == wb.keys()
        for key in wa:
            torch.testing.assert_close(
                wa[key], wb[key], rtol=rtol, atol=atol, msg=lambda m, k=key: f"{k}: {m}"
            )

    return check
