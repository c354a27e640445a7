"""Training checkpoints ``step<N>/``: never half-written, resumed exactly.

Layout::

    step<N>/train/       model + optimizer (and any other model of the stage, e.g. PPO's value model),
                         sharded with torch.distributed.checkpoint (every rank writes)
    step<N>/model/       the model as an HF directory (model/checkpoint.py), if export_hf
    step<N>/state.json   step and the run's stateful parts by name: data position, spike windows, ...
    step<N>/rng-rank<R>.pt  RNG states per rank (loaded with weights_only=True)
    step<N>/COMPLETE     written last

Everything is written into ``.step<N>.tmp/`` and renamed once complete, so a kill at any moment
leaves either the previous checkpoint or the new one, never a partial one that counts. That holds
for asynchronous saves too (``async_save``): a background thread writes a CPU copy of the state and
renames the folder only once everything, ``COMPLETE`` last, is written.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

from olmo2.model.checkpoint import save_state_dict
from olmo2.train.distributed import DistEnv, barrier, unwrap

COMPLETE = "COMPLETE"
STEP_DIR = re.compile(r"^step(\d+)$")


def complete_checkpoints(save_folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint, oldest first."""
    found = []
    if save_folder.is_dir():
        for path in save_folder.iterdir():
            m = STEP_DIR.match(path.name)
            if m and (path / COMPLETE).is_file():
                found.append((int(m.group(1)), path))
    return sorted(found)


def latest_checkpoint(save_folder: Path) -> Path | None:
    found = complete_checkpoints(save_folder)
    return found[-1][1] if found else None


def _rng_state() -> dict:
    """RNG states as tensors and plain values only, so they load with ``weights_only=True``."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class PendingCheckpoint:
    """A ``step<N>/`` being written by a background thread (``async_save``); ``wait()`` returns once it
    is complete and renamed into place, and re-raises the thread's error if writing failed."""

    def __init__(self, path: Path, work: Callable[[], None] | None = None):
        self.path, self._error = path, None
        self._thread = None
        if work is not None:
            self._thread = threading.Thread(target=self._run, args=(work,), name=f"olmo2-save-{path.name}")
            self._thread.start()

    def _run(self, work: Callable[[], None]) -> None:
        try:
            work()
        except BaseException as e:  # re-raised by wait(), in the training thread
            self._error = e

    def wait(self) -> Path:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError(f"checkpoint {self.path} was not written: {error!r}") from error
        return self.path


def _complete(save_folder: Path, tmp: Path, final: Path, step: int, state_json: str, keep_last: int) -> None:
    """Rank 0, once every rank's files are in ``tmp``: state.json, COMPLETE, rename, prune."""
    (tmp / "state.json").write_text(state_json)
    with open(tmp / COMPLETE, "w") as f:
        f.write(f"step {step}\n")
        f.flush()
        os.fsync(f.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    if keep_last > 0:
        for _, old in complete_checkpoints(save_folder)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)


def _dcp_state(parts: dict) -> dict:
    """The DCP state of ``{name: Part}``: ``model``/``optim`` for the main model (the layout of every
    checkpoint so far), ``<name>``/``<name>_optim`` for others (e.g. PPO's ``value``)."""
    state = {}
    for name, part in parts.items():
        optim_key = "optim" if name == "model" else f"{name}_optim"
        if part.optimizer is None:
            state[name] = get_model_state_dict(part.model)
        else:
            state[name], state[optim_key] = get_state_dict(part.model, part.optimizer)
    return state


def save_checkpoint(
    save_folder: Path,
    step: int,
    parts: dict,
    state: dict,
    env: DistEnv,
    *,
    export_hf: bool = True,
    write_extra_files: Callable[[Path], None] | None = None,
    keep_last: int = 0,
    async_save: bool = False,
    process_group=None,
) -> PendingCheckpoint:
    """Write ``step<step>/`` atomically on all ranks: every ``Part`` in ``parts`` (``{name: Part}``;
    ``"model"`` is exported as HF, with ``write_extra_files(model_dir)`` adding e.g. tokenizer files)
    and the JSON ``state``.

    Synchronous by default (the returned handle is already complete). With ``async_save`` the model
    and optimizer state are copied to CPU memory here, and a background thread writes them
    (``dcp.async_save``, over ``process_group``: give it its own Gloo group when there are several
    ranks), then on rank 0 the HF export, ``state.json`` and ``COMPLETE``, and renames the folder into
    place; call ``wait()`` on the handle before the next save and before exiting.
    """
    final = save_folder / f"step{step}"
    tmp = save_folder / f".step{step}.tmp"
    if env.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    torch.save(_rng_state(), tmp / f"rng-rank{env.rank}.pt")
    model = parts["model"].model
    train_state = _dcp_state(parts)
    hf_state = None
    if export_hf:
        hf_state = get_model_state_dict(
            model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        if async_save and env.device.type == "cpu":  # then these are the live parameters, which training
            hf_state = {k: v.detach().clone() for k, v in hf_state.items()}  # goes on updating
    model_config = unwrap(model).config
    state_json = json.dumps({"step": step, **state}, indent=2) + "\n"  # as of now, not when written
    train_dir = str(tmp / "train")

    def finish(upload: Future | None) -> None:
        if upload is not None:
            upload.result()  # on rank 0: returns once every rank's shards and the metadata are written
        if env.is_main:
            if hf_state is not None:
                save_state_dict(hf_state, model_config, tmp / "model")
                if write_extra_files is not None:
                    write_extra_files(tmp / "model")
            _complete(save_folder, tmp, final, step, state_json, keep_last)

    if async_save:
        response = dcp.async_save(train_state, checkpoint_id=train_dir, process_group=process_group)
        upload = getattr(response, "upload_completion", response)  # newer torch: AsyncSaveResponse
        return PendingCheckpoint(final, lambda: finish(upload))
    dcp.save(train_state, checkpoint_id=train_dir)
    barrier()  # every rank's shards and RNG state are in tmp
    finish(None)
    barrier()
    return PendingCheckpoint(final)


def read_train_state(path: Path) -> dict:
    return json.loads((path / "state.json").read_text())


def load_checkpoint(path: Path, parts: dict, env: DistEnv, *, restore_rng: bool = True) -> dict:
    """Restore every ``Part`` of ``parts`` (``{name: Part}``; a part without an optimizer loads its
    weights only) and, with ``restore_rng``, this rank's RNG from ``path``; returns the saved state."""
    to_load = _dcp_state(parts)
    dcp.load(to_load, checkpoint_id=str(path / "train"))
    for name, part in parts.items():
        if part.optimizer is None:
            set_model_state_dict(part.model, to_load[name])
        else:
            optim_key = "optim" if name == "model" else f"{name}_optim"
            set_state_dict(
                part.model,
                part.optimizer,
                model_state_dict=to_load[name],
                optim_state_dict=to_load[optim_key],
            )
    rng = path / f"rng-rank{env.rank}.pt"
    if restore_rng and rng.is_file():
        _set_rng_state(torch.load(rng, weights_only=True))
    return read_train_state(path)


def load_model_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a full (unsharded) model state dict into a possibly sharded model."""
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=True))
