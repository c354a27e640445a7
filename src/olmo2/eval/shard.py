"""An evaluation split over ranks: every rank plans the same batches, runs its own and gets all results.

Batch ``k`` of a task belongs to rank ``k mod world_size``. Because each batch is exactly the batch one
process would run (same rows, same padding, same cached prefix before it), its scores are the same
bits, and the merged results of N ranks equal those of one process exactly. Only the merge talks to
the other ranks (one ``all_gather_object`` per task).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from olmo2.train.distributed import all_gather_object

__all__ = ["WHOLE", "Shard"]

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """This rank's share; the default is the whole evaluation in one process."""

    rank: int = 0
    world_size: int = 1
    gather: Callable[[object], list] = field(default=all_gather_object, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not one of world size {self.world_size}")

    def owns(self, batch: int) -> bool:
        return batch % self.world_size == self.rank

    def merge(self, part: dict[int, T]) -> dict[int, T]:
        """Every rank's ``{index: result}`` joined (call on all ranks together; indices are disjoint)."""
        if self.world_size == 1:
            return part
        merged: dict[int, T] = {}
        for other in self.gather(part):
            merged.update(other)
        return merged


WHOLE = Shard()  # the default: one process does every batch
