"""The post-training stages by name, for what runs them by name (``olmo2 recipe``).

It sits above the stage modules so that none of them, nor ``common``, has to import another.
"""

from __future__ import annotations

from collections.abc import Callable

from olmo2.posttrain import dpo, rlvr, sft

__all__ = ["stage_functions"]


def stage_functions(name: str) -> tuple[Callable, Callable]:
    """``(load_config(path, overrides), train(cfg) -> summary)`` of the stage ``sft``, ``dpo`` or ``rlvr``."""
    return {
        "sft": (sft.load_sft_config, sft.train_sft),
        "dpo": (dpo.load_dpo_config, dpo.train_dpo),
        "rlvr": (rlvr.load_rlvr_config, rlvr.train_rlvr),
    }[name]
