"""Training-test helpers: stop a run in process at a chosen step, as an interruption would."""

from __future__ import annotations

import pytest


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
