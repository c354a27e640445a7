"""The training loader (spec §4.4): fixed-length instances, one global shuffle per epoch, exact resume.

Instances are ``seq_len`` consecutive tokens cut from *each token file* separately; the remainder at
the end of every file is dropped, as OLMo's ``MemMapDataset`` does (so a file boundary never falls
inside an instance; "cut from the concatenated stream" would differ only by those remainders).
Documents are separated by EOS only: no padding, no attention mask between documents.

Each epoch permutes the mix's instance list with ``Generator(PCG64(seed + epoch)).shuffle``; the
global batch at step k is the next ``global_batch_size`` ids of that permutation, and rank r of W
takes ids r, r+W, r+2W, ... of it (spec §4.4), so the data order never depends on the number of
ranks. A state is (epoch, batches consumed in it) plus a data fingerprint that must match on resume.

Token files at URLs (``olmo2.storage``) are read one instance per ranged request, a batch's requests
in parallel; a file's size, from the mix's listing, is all the loader needs to know about it before.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from olmo2 import storage
from olmo2.config import ConfigError
from olmo2.data.mix import Mix, find_files
from olmo2.data.repeats import repeated_ngram_mask
from olmo2.data.token_files import DTYPE, read_tokens

STATE_VERSION = 1
# Bump ORDER_VERSION when the mix sampling or the shuffle changes: old states and cached orders then refuse.
ORDER_VERSION = 1
_END = object()


def batch_hash(batch) -> str:
    """First 12 hex of sha256 of the tokens as little-endian uint32 (the token files' own bytes)."""
    if isinstance(batch, StepBatch):
        batch = batch.input_ids
    if isinstance(batch, torch.Tensor):
        batch = batch.detach().cpu().numpy()
    return hashlib.sha256(np.ascontiguousarray(batch, dtype=DTYPE).tobytes()).hexdigest()[:12]


def gather_global(rank_parts: list[torch.Tensor]) -> torch.Tensor:
    """Rebuild the global batch, in global order, from every rank's rows (rank r holds rows r, r+W, ...)."""
    return torch.stack(list(rank_parts), dim=1).reshape(-1, rank_parts[0].shape[-1])


class InstanceReader:
    """Reads instances by global id from raw uint32 token files (memory-mapped lazily, once each).

    A URL is read by one ranged request per instance (``REMOTE_THREADS`` at a time), unless
    ``OLMO2_DATA_CACHE_DIR`` is set: then its whole file is downloaded once and memory-mapped.
    """

    REMOTE_THREADS = 8

    def __init__(self, files: list[Path | str], file_tokens: np.ndarray, seq_len: int):
        self.files, self.seq_len = list(files), seq_len
        counts = np.asarray(file_tokens, dtype=np.int64) // seq_len
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._maps: dict[int, np.ndarray] = {}
        self._ranged = [storage.is_remote(f) and storage.cache_dir() is None for f in self.files]
        self._pool: ThreadPoolExecutor | None = None

    def _map(self, i: int) -> np.ndarray:
        m = self._maps.get(i)
        if m is None:
            # a plain ndarray view of the map (it keeps the mmap alive): slicing np.memmap costs 3x more
            m = self._maps[i] = read_tokens(self.files[i]).view(np.ndarray)
        return m

    def read(self, ids) -> np.ndarray:
        """int64 [len(ids), seq_len] tokens of the given global instance ids."""
        ids = np.asarray(ids, dtype=np.int64)
        f = np.searchsorted(self.offsets, ids, side="right") - 1
        start = (ids - self.offsets[f]) * self.seq_len
        out = np.empty((len(ids), self.seq_len), dtype=np.int64)
        remote = []
        for j, (fi, s) in enumerate(zip(f.tolist(), start.tolist(), strict=True)):
            if self._ranged[fi]:
                remote.append((j, fi, s))
            else:
                out[j] = self._map(fi)[s : s + self.seq_len]
        if remote:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.REMOTE_THREADS, thread_name_prefix="olmo2-read")
            for (j, _, _), row in zip(remote, self._pool.map(self._read_remote, remote), strict=True):
                out[j] = row
        return out

    def _read_remote(self, job: tuple[int, int, int]) -> np.ndarray:
        _, fi, start = job
        size = self.seq_len * DTYPE.itemsize
        return np.frombuffer(storage.read_range(self.files[fi], start * DTYPE.itemsize, size), DTYPE)


@dataclass
class StepBatch:
    """This rank's share of one global batch; ``micro_batches()`` splits it for gradient accumulation."""

    epoch: int
    step: int  # global step: batches consumed before this one, over all epochs
    step_in_epoch: int
    input_ids: torch.Tensor  # int64 [global_batch_size // world_size, seq_len]
    indices: np.ndarray  # global instance ids of these rows
    sources: list[str]  # source name of each row
    global_indices: np.ndarray  # the whole global batch's ids, in global order (same on every rank)
    micro_batch_size: int
    instance_mask: torch.Tensor | None = None  # bool per row, False = loss-mask it (filter_repeats)

    @property
    def index_hash(self) -> str:
        """Hash of the global batch's instance ids: identical on every rank, no communication needed."""
        return hashlib.sha256(self.global_indices.astype("<i8").tobytes()).hexdigest()[:12]

    def micro_batches(self) -> list[dict]:
        """``[{"input_ids": int64 [micro, seq_len], "sources", "indices"[, "instance_mask"]}, ...]``."""
        out, mb = [], self.micro_batch_size
        for i in range(0, self.input_ids.shape[0], mb):
            d = {
                "input_ids": self.input_ids[i : i + mb],
                "sources": self.sources[i : i + mb],
                "indices": self.indices[i : i + mb],
            }
            if self.instance_mask is not None:
                d["instance_mask"] = self.instance_mask[i : i + mb]
            out.append(d)
        return out


class TrainLoader:
    """Shuffled, resumable, rank-sliced batches over a resolved ``Mix`` (see module docstring)."""

    def __init__(
        self,
        mix: Mix,
        *,
        global_batch_size: int,
        seed: int,
        micro_batch_size: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        prefetch: int = 2,
        max_epochs: int | None = None,
        cache_dir: str | Path | None = None,
        pin_memory: bool = False,
        filter_repeats: bool = False,
    ):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is not in [0, world_size={world_size})")
        if global_batch_size < 1 or global_batch_size % world_size:
            raise ConfigError(
                f"global_batch_size {global_batch_size} is not a multiple of world_size {world_size}"
            )
        self.rank_batch_size = global_batch_size // world_size
        micro_batch_size = micro_batch_size or self.rank_batch_size
        if self.rank_batch_size % micro_batch_size:
            raise ConfigError(
                f"micro_batch_size {micro_batch_size} does not divide the per-rank batch {self.rank_batch_size}"
            )
        self.mix, self.seq_len, self.seed = mix, mix.seq_len, seed
        self.global_batch_size, self.micro_batch_size = global_batch_size, micro_batch_size
        self.rank, self.world_size, self.prefetch, self.max_epochs = rank, world_size, prefetch, max_epochs
        self.cache_dir, self.pin_memory, self.filter_repeats = cache_dir, pin_memory, filter_repeats
        self.steps_per_epoch = mix.epoch_instances // global_batch_size  # a partial last batch is dropped
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"the mix has {mix.epoch_instances} instances per epoch, fewer than one global batch "
                f"of {global_batch_size}"
            )
        self.reader = InstanceReader(mix.files, mix.file_tokens, self.seq_len)
        self.fingerprint_parts = {
            "order version": str(ORDER_VERSION),
            **mix.fingerprint_parts(),
            "seed": str(seed),
            "global_batch_size": str(global_batch_size),
        }
        self.fingerprint = hashlib.sha256(
            json.dumps(self.fingerprint_parts, sort_keys=True).encode()
        ).hexdigest()[:16]
        self.epoch, self.batch_in_epoch = 0, 0
        self._lock = threading.Lock()
        self._order: tuple[int, np.ndarray] | None = None
        self._generation = 0

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch_size * self.seq_len

    @property
    def step(self) -> int:
        """Global batches consumed so far, over all epochs."""
        return self.epoch * self.steps_per_epoch + self.batch_in_epoch

    # -- state ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "version": STATE_VERSION,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "step": self.step,
            "fingerprint": self.fingerprint,
            "fingerprint_parts": dict(self.fingerprint_parts),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where ``state`` was taken; refuse (naming what differs) if the data changed."""
        if state.get("version") != STATE_VERSION:
            raise ConfigError(
                f"loader state version {state.get('version')!r}; this code reads {STATE_VERSION}"
            )
        if state.get("fingerprint") != self.fingerprint:
            old, new = state.get("fingerprint_parts", {}), self.fingerprint_parts
            diffs = [
                f"{k}: checkpoint {old.get(k, '(absent)')!r}, now {new.get(k, '(absent)')!r}"
                for k in sorted(set(old) | set(new), key=lambda k: (k.startswith("source"), k))
                if old.get(k) != new.get(k)
            ] or ["(fingerprint differs, no details stored)"]
            raise ConfigError(
                "refusing to resume: the data differs from the checkpoint's:\n  " + "\n  ".join(diffs)
            )
        epoch, k = int(state["epoch"]), int(state["batch_in_epoch"])
        if not 0 <= k <= self.steps_per_epoch:
            raise ConfigError(f"batch_in_epoch {k} is outside [0, {self.steps_per_epoch}]")
        self.epoch, self.batch_in_epoch = (epoch + 1, 0) if k == self.steps_per_epoch else (epoch, k)
        self._generation += 1  # an iterator started before this call stops

    # -- order ---------------------------------------------------------------------------------------
    def epoch_order(self, epoch: int) -> np.ndarray:
        """The epoch's permutation of the mix's instance ids (cached in memory, optionally on disk)."""
        with self._lock:
            if self._order is not None and self._order[0] == epoch:
                return self._order[1]
            path = (
                Path(self.cache_dir, f"order-{self.fingerprint}-epoch{epoch}.npy") if self.cache_dir else None
            )
            self._order = None  # let the previous epoch's order go before building the next
            if path is not None and path.is_file():
                order = np.load(path, mmap_mode="r")
            else:
                order = self.mix.index()  # rebuilt per epoch (cheap) rather than held: it can be GBs
                np.random.Generator(np.random.PCG64(self.seed + epoch)).shuffle(order)
                if path is not None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npy.tmp")
                    with os.fdopen(fd, "wb") as fh:
                        np.save(fh, order)
                    os.replace(tmp, path)  # atomic: ranks sharing the folder never read a partial file
            self._order = (epoch, order)
            return order

    def global_indices(self, epoch: int, step_in_epoch: int) -> np.ndarray:
        b = self.global_batch_size
        return np.asarray(
            self.epoch_order(epoch)[step_in_epoch * b : (step_in_epoch + 1) * b], dtype=np.int64
        )

    def read_global_batch(self, epoch: int, step_in_epoch: int) -> torch.Tensor:
        """The whole global batch's tokens (every rank's rows), for checks and logging at world size 1."""
        return torch.from_numpy(self.reader.read(self.global_indices(epoch, step_in_epoch)))

    def batch_at(self, epoch: int, step_in_epoch: int) -> StepBatch:
        """This rank's batch at (epoch, step): a pure function of the config, so resume is exact."""
        if not 0 <= step_in_epoch < self.steps_per_epoch:
            raise IndexError(f"step_in_epoch {step_in_epoch} outside [0, {self.steps_per_epoch})")
        gids = self.global_indices(epoch, step_in_epoch)
        ids = gids[self.rank :: self.world_size]
        tokens = self.reader.read(ids)
        input_ids = torch.from_numpy(tokens)
        mask = torch.from_numpy(~repeated_ngram_mask(tokens)) if self.filter_repeats else None
        if self.pin_memory:
            input_ids = input_ids.pin_memory()
        return StepBatch(
            epoch,
            epoch * self.steps_per_epoch + step_in_epoch,
            step_in_epoch,
            input_ids,
            ids,
            self.mix.source_of(ids),
            gids,
            self.micro_batch_size,
            mask,
        )

    # -- iteration -----------------------------------------------------------------------------------
    def _positions(self, epoch: int, k: int) -> Iterator[tuple[int, int]]:
        while self.max_epochs is None or epoch < self.max_epochs:
            if k >= self.steps_per_epoch:
                epoch, k = epoch + 1, 0
                continue
            yield epoch, k
            k += 1

    def __iter__(self) -> Iterator[StepBatch]:
        """Batches from the current state on, forever (or ``max_epochs``); each yield advances the state."""
        gen = self._generation
        positions = self._positions(self.epoch, self.batch_in_epoch)
        if self.prefetch <= 0:
            for e, k in positions:
                if gen != self._generation:
                    return
                batch = self.batch_at(e, k)
                self.epoch, self.batch_in_epoch = e, k + 1
                yield batch
            return
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def produce() -> None:  # reads ahead in a thread so a training step never waits on I/O
            try:
                for e, k in positions:
                    item = self.batch_at(e, k)
                    while not stop.is_set():
                        try:
                            q.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            pass
                    if stop.is_set():
                        return
                q.put(_END)
            except BaseException as exc:  # surfaced in the consumer
                q.put(exc)

        worker = threading.Thread(target=produce, name="olmo2-loader", daemon=True)
        worker.start()
        try:
            while gen == self._generation:
                item = q.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                self.epoch, self.batch_in_epoch = item.epoch, item.step_in_epoch + 1
                yield item
        finally:
            stop.set()
            worker.join(timeout=5)


class ValidationLoader:
    """Sequential, unshuffled batches over held-out token files: every instance once, in file order."""

    def __init__(
        self,
        paths: list[str],
        seq_len: int,
        batch_size: int,
        *,
        max_instances: int | None = None,
        variables: dict[str, str] | None = None,
        rank: int = 0,
        world_size: int = 1,
    ):
        found = find_files(list(paths), variables, "validation: ")
        tokens = np.array([n for _, _, n in found], dtype=np.int64)
        self.reader = InstanceReader([p for p, _, _ in found], tokens, seq_len)
        self.seq_len, self.batch_size = seq_len, batch_size
        total = int(self.reader.offsets[-1])
        self.n_instances = total if max_instances is None else min(total, max_instances)
        if self.n_instances == 0:
            raise ConfigError(f"validation: {len(found)} files hold no complete instance of {seq_len} tokens")
        self.ids = np.arange(rank, self.n_instances, world_size, dtype=np.int64)  # ranks split, none repeated

    @property
    def n_tokens(self) -> int:
        return self.n_instances * self.seq_len

    def __len__(self) -> int:
        return -(-len(self.ids) // self.batch_size)

    def __iter__(self) -> Iterator[dict]:
        for i in range(0, len(self.ids), self.batch_size):
            ids = self.ids[i : i + self.batch_size]
            yield {"input_ids": torch.from_numpy(self.reader.read(ids)), "indices": ids}
