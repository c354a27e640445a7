"""Optional metric backends beside ``metrics.jsonl``: TensorBoard and Weights & Biases.

Each backend receives every record that ``MetricsLog`` writes (rank 0 only), as scalars tagged with
the record's own keys (``loss``, ``lr``, ``grad_norm``, ``val_loss``, ...) at the record's ``step``.
Both packages are imported only when enabled; the config refuses to load if one is missing.
"""

from __future__ import annotations

import importlib
import secrets
from pathlib import Path

from olmo2.config import to_dict


def scalars(record: dict) -> dict[str, float]:
    """The numeric fields of a metrics record (booleans as 0/1; NaN kept), without ``step`` itself."""
    return {k: float(v) for k, v in record.items() if k != "step" and isinstance(v, (int, float))}


class TensorBoardSink:
    """Event files in ``log_dir``. On resume, ``purge_step`` makes TensorBoard drop what the
    interrupted run logged after the checkpoint, as ``metrics.jsonl`` is trimmed."""

    def __init__(self, log_dir: Path, start_step: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir), purge_step=start_step + 1 if start_step else None)

    def write(self, record: dict) -> None:
        for key, value in scalars(record).items():
            self.writer.add_scalar(key, value, global_step=record["step"])

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """One W&B run per run folder: its id is kept in ``wandb-id`` there, so a resumed run continues it."""

    def __init__(self, cfg, save_folder: Path, config: dict):
        wandb = importlib.import_module("wandb")
        id_file = save_folder / "wandb-id"
        if not id_file.is_file():
            id_file.write_text(secrets.token_hex(8) + "\n")
        self.run = wandb.init(
            project=cfg.project,
            name=cfg.name or save_folder.resolve().name,
            mode=cfg.mode,
            dir=str(save_folder),
            config=config,
            id=id_file.read_text().strip(),
            resume="allow",
        )

    def write(self, record: dict) -> None:
        self.run.log(scalars(record), step=record["step"])

    def close(self) -> None:
        self.run.finish()


def open_sinks(cfg, save_folder: Path, start_step: int) -> list:
    """The backends ``cfg.logging`` (a TrainConfig) enables, opened for a run starting after ``start_step``."""
    sinks: list = []
    try:
        if cfg.logging.tensorboard:
            sinks.append(TensorBoardSink(save_folder / "tensorboard", start_step))
        if cfg.logging.wandb.enabled:
            sinks.append(WandbSink(cfg.logging.wandb, save_folder, to_dict(cfg)))
    except BaseException:
        for sink in sinks:
            sink.close()
        raise
    return sinks
