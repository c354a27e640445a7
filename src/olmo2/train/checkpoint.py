"""Training checkpoints ``step<N>/``: never half-written, resumed exactly.

Layout::

    step<N>/train/       model + optimizer (and any other model of the stage, e.g. PPO's value model),
                         sharded with torch.distributed.checkpoint (every rank writes)
    step<N>/model/       the model as an HF directory (model/checkpoint.py), if export_hf
    step<N>/state.json   step and the run's stateful parts by name: data position, spike windows, ...
    step<N>/rng-rank<R>.pt  RNG states per rank (loaded with weights_only=True)
    step<N>/CHECKSUMS.json  size and sha256 of every file above, by relative path
    step<N>/COMPLETE     written last

Everything is written into ``.step<N>.tmp/`` and renamed once complete, so a kill at any moment
leaves either the previous checkpoint or the new one, never a partial one that counts. That holds
for asynchronous saves too (``async_save``): a background thread writes a CPU copy of the state and
renames the folder only once everything, ``COMPLETE`` last, is written.

A complete checkpoint can still be damaged later (a disk error, a copy cut short, a stray write), so
rank 0 hashes every file once all ranks' files are in ``.step<N>.tmp/``, and a resume checks the
sizes and hashes first (``checkpoint_fault``; the ranks share the hashing there). SHA-256 because ``sha256sum`` can check a file by
hand and because, with the SHA extensions of current x86 and ARM CPUs, it is among the fastest
hashes: 1.4 GB/s per core measured on the development machine's AMD EPYC (blake2b 0.47, md5 0.58,
crc32 2.0 GB/s). A 7B checkpoint (~85 GB of fp32 weights and AdamW moments) is a minute of one
core; its files are hashed on up to ``HASH_THREADS`` threads, as fast as storage reads them (in the
background for asynchronous saves).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

from olmo2.model.checkpoint import CheckpointError, save_state_dict
from olmo2.train.distributed import DistEnv, all_gather_object, barrier, unwrap
from olmo2.train.monitor import log
from olmo2.train.safe_dcp import SafeLoadPlanner, SafeReader

COMPLETE = "COMPLETE"
CHECKSUMS = "CHECKSUMS.json"
HASH_THREADS = 8
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


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _hash_all(paths: list[Path]) -> list[str]:
    """The sha256 of each file, on several threads (hashlib releases the GIL)."""
    with ThreadPoolExecutor(min(HASH_THREADS, max(1, len(paths)))) as pool:
        return list(pool.map(_sha256, paths))


def file_checksums(folder: Path) -> dict[str, dict]:
    """``{relative path: {"bytes": size, "sha256": hex}}`` of every file under ``folder``."""
    paths = sorted(p for p in folder.rglob("*") if p.is_file())
    return {
        p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": digest}
        for p, digest in zip(paths, _hash_all(paths), strict=True)
    }


def checkpoint_fault(path: Path, rank: int = 0, world_size: int = 1) -> str | None:
    """What is wrong with checkpoint ``path``, naming the file, or None if every file listed in its
    ``CHECKSUMS.json`` has its size and hash (a checkpoint written before checksums passes). Under
    several ranks each checks the sizes of all files and hashes its share of them."""
    listing = path / CHECKSUMS
    if not listing.is_file():
        return None
    try:
        expected = json.loads(listing.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"{listing}: not valid JSON ({e})"
    if not isinstance(expected, dict) or not all(
        isinstance(want, dict) and {"bytes", "sha256"} <= want.keys() for want in expected.values()
    ):
        return f"{listing}: not a listing of files with their bytes and sha256"
    for rel, want in expected.items():
        file = path / rel
        if not file.is_file():
            return f"{file} is missing"
        size = file.stat().st_size
        if size != want["bytes"]:
            return f"{file} has {size} bytes, {want['bytes']} were written"
    mine = list(expected)[rank::world_size]
    for rel, digest in zip(mine, _hash_all([path / rel for rel in mine]), strict=True):
        if digest != expected[rel]["sha256"]:
            return f"{path / rel} has changed since it was written (sha256 mismatch)"
    return None


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
    """Rank 0, once every rank's files are in ``tmp``: state.json, checksums, COMPLETE, rename, prune.

    A ``step<N>`` already there is one a resume found damaged (it would have resumed from it
    otherwise): it is kept as ``step<N>.damaged`` (``.damaged2``, ... if that exists). Pruning to ``keep_last`` counts only checkpoints up
    to this one, so damaged later ones never push out the good ones.
    """
    (tmp / "state.json").write_text(state_json)
    (tmp / CHECKSUMS).write_text(json.dumps(file_checksums(tmp), indent=1) + "\n")
    with open(tmp / COMPLETE, "w") as f:
        f.write(f"step {step}\n")
        f.flush()
        os.fsync(f.fileno())
    if final.exists():
        damaged, n = final.with_name(f"{final.name}.damaged"), 1
        while damaged.exists():
            n += 1
            damaged = final.with_name(f"{final.name}.damaged{n}")
        os.replace(final, damaged)
    os.replace(tmp, final)
    if keep_last > 0:
        upto_here = [path for s, path in complete_checkpoints(save_folder) if s <= step]
        for old in upto_here[:-keep_last]:
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
    try:
        dcp.save(train_state, checkpoint_id=train_dir)
    except CheckpointException as e:
        raise_if_interrupted(e)
        raise
    barrier()  # every rank's shards and RNG state are in tmp
    finish(None)
    barrier()
    return PendingCheckpoint(final)


@contextlib.contextmanager
def single_process_dcp():
    """DCP in a process without ``torch.distributed`` (a converter), without DCP's warning that it
    assumes exactly that."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is (disabled, )?unavailable")
        yield


def write_checkpoint(path: Path, parts: dict, state: dict) -> Path:
    """A complete checkpoint at ``path`` (any name) written by this one process, as a converter does:
    the layout of ``save_checkpoint`` (the HF export of ``parts["model"]``, no RNG states), through
    ``.<name>.tmp/`` beside it, renamed once ``COMPLETE``. ``state`` is ``state.json`` (with ``step``)."""
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with single_process_dcp():
            dcp.save(_dcp_state(parts), checkpoint_id=str(tmp / "train"), no_dist=True)
        model = parts["model"].model
        save_state_dict(model.state_dict(), unwrap(model).config, tmp / "model")
        if path.exists():
            path.rmdir()  # an empty folder; refuse anything else before calling this
        _complete(path.parent, tmp, path, state["step"], json.dumps(state, indent=2) + "\n", keep_last=0)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def read_train_state(path: Path) -> dict:
    """A checkpoint's ``state.json``; a missing or unreadable one is a ``CheckpointError`` naming it."""
    file = path / "state.json"
    try:
        return json.loads(file.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{file} is missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{file}: not valid JSON ({e})") from None


def load_checkpoint(path: Path, parts: dict, env: DistEnv, *, restore_rng: bool = True) -> dict:
    """Restore every ``Part`` of ``parts`` (``{name: Part}``; a part without an optimizer loads its
    weights only) and, with ``restore_rng``, this rank's RNG from ``path``; returns the saved state."""
    to_load = _dcp_state(parts)
    dcp.load(to_load, storage_reader=SafeReader(path / "train"), planner=SafeLoadPlanner())
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


def raise_if_interrupted(error: CheckpointException) -> None:
    """DCP reports a Ctrl-C during a save or load as one rank's failure: surface it as the
    ``KeyboardInterrupt`` it is (an interrupted load must stop the run, not count as damage)."""
    for failure in error.failures.values():
        cause = failure[0] if isinstance(failure, tuple) else failure
        if isinstance(cause, KeyboardInterrupt):
            raise KeyboardInterrupt from error


def _one_line(error: BaseException) -> str:
    """An error as one short line; for DCP's ``CheckpointException``, the first rank's cause."""
    if isinstance(error, CheckpointException) and error.failures:
        error = next(iter(error.failures.values()))[0]
    text = " ".join(str(error).split())[:400]
    return text if isinstance(error, CheckpointError) else f"{type(error).__name__}: {text}"


def _try_load(path: Path, parts: dict, env: DistEnv) -> tuple[dict | None, str | None]:
    """``load_checkpoint`` on every rank: (its state, None), or (None, the first rank's fault) on all
    ranks if it failed on any."""
    state, fault = None, None
    try:
        state = load_checkpoint(path, parts, env)
    except (Exception, CheckpointException) as e:  # CheckpointException is a BaseException
        if isinstance(e, CheckpointException):
            raise_if_interrupted(e)
        fault = _one_line(e)
    faults = all_gather_object(fault)
    bad = [f if len(faults) == 1 else f"rank {rank}: {f}" for rank, f in enumerate(faults) if f]
    return (None, bad[0]) if bad else (state, None)


def resume_checkpoint(
    save_folder: Path, parts: dict, env: DistEnv, *, check: Callable[[Path], None] | None = None
) -> tuple[Path, dict] | None:
    """Load the latest complete checkpoint of ``save_folder`` that verifies (``checkpoint_fault``, the
    ranks sharing the hashing and gathering the verdicts, so all decide alike) and loads on every
    rank, falling back to the one before for each that does not (logged; nothing is deleted).
    ``check(path)`` runs before loading and its errors propagate (e.g. a checkpoint of another model).
    Returns (path, saved state), or None if there is no complete checkpoint; a ``CheckpointError``
    naming every fault if none loads."""
    faults = []
    for _, path in reversed(complete_checkpoints(save_folder)):
        verdicts = all_gather_object(checkpoint_fault(path, env.rank, env.world_size))
        fault = next((f for f in verdicts if f is not None), None)
        state = None
        if fault is None:
            if check is not None:
                check(path)
            state, fault = _try_load(path, parts, env)
        if fault is None:
            return path, state
        if env.is_main:
            log(f"checkpoint {path} is damaged, trying the one before: {fault}")
        faults.append(f"{path}: {fault}")
    if faults:
        raise CheckpointError(f"no checkpoint in {save_folder} loads:\n  " + "\n  ".join(faults))
    return None


def load_model_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a full (unsharded) model state dict into a possibly sharded model."""
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=True))
