"""The run folder of a training run, every stage alike: one run at a time, and a start that is
refused or fails leaves it exactly as it was.

- Rank 0 holds the folder's lock (``olmo2.folder_lock``) for the whole run and every rank gets its
  verdict, so under ``torchrun`` all ranks raise together instead of waiting on rank 0 for ever.
- ``config.yaml`` (and the other files a run writes about itself) are written by :class:`RunFolder`'s
  ``start``, a ``Trainer`` component that runs after the checkpoint is restored and every other
  component started: a config that fails a check, or whose resume is refused, never replaces the
  config of the run that is in the folder.
- A folder that the run created is removed again if the run fails before it started.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from olmo2.folder_lock import FolderLocked, hold_folder
from olmo2.train.distributed import DistEnv, broadcast_object
from olmo2.train.engine import Component, Trainer

__all__ = ["RunFolder", "hold_run_folder"]


class RunFolder(Component):
    """Marks the run started; its ``start`` writes what was registered with :meth:`on_start` (rank 0).
    Place it last among the components, so everything before it has passed."""

    name = "run_folder"

    def __init__(self, path: Path, env: DistEnv):
        self.path, self.env = path, env
        self.writes: list[Callable[[], None]] = []
        self.started = False

    def on_start(self, write: Callable[[], None]) -> None:
        """Run ``write`` (on rank 0) once the run has started."""
        self.writes.append(write)

    def start(self, trainer: Trainer) -> None:
        if self.env.is_main:
            for write in self.writes:
                write()
        self.started = True


def _make_dirs(path: Path) -> list[Path]:
    """Create ``path`` and its missing parents; the ones this call created, outermost first."""
    missing = [p for p in [path, *path.parents] if not p.exists()][::-1]
    created = []
    for p in missing:
        try:
            p.mkdir()
            created.append(p)
        except FileExistsError:  # made meanwhile by someone else: not ours to remove
            pass
    return created


def _remove_created(path: Path, created: list[Path]) -> None:
    """Undo ``_make_dirs``: the run folder with what the failed start put there, then the parents
    it created if they are still empty (another run may have made a folder beside it meanwhile)."""
    if path in created:
        shutil.rmtree(path, ignore_errors=True)
    for parent in reversed(created):
        with contextlib.suppress(OSError):
            parent.rmdir()


@contextlib.contextmanager
def hold_run_folder(path: Path, env: DistEnv) -> Iterator[RunFolder]:
    """Create and hold ``path`` for the run; a :class:`~olmo2.folder_lock.FolderLocked` on every rank
    if another run holds it. Yields the :class:`RunFolder` component to add to the ``Trainer``."""
    folder = RunFolder(path, env)
    created: list[Path] = []
    with contextlib.ExitStack() as stack:
        failure, verdict = None, None
        if env.is_main:
            try:
                created = _make_dirs(path)
                stack.enter_context(hold_folder(path))
            except Exception as e:
                failure, verdict = e, (isinstance(e, FolderLocked), str(e))
        verdict = broadcast_object(verdict)
        if failure is not None:
            if not isinstance(failure, FolderLocked):  # refused: the folder is the holder's now
                _remove_created(path, created)
            raise failure
        if verdict is not None:
            locked, message = verdict
            raise (FolderLocked if locked else RuntimeError)(f"rank 0: {message}")
        try:
            yield folder
        except BaseException:
            if env.is_main and not folder.started:
                _remove_created(path, created)
            raise
