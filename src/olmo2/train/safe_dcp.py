"""Reading torch.distributed.checkpoint folders without executing code from them.

DCP keeps its ``.metadata`` as a pickle and plain values (an optimizer's param groups) as
``torch.save`` blobs, and by default unpickles both in full: a crafted checkpoint could run code on
load. Here the metadata goes through an unpickler that admits only DCP's metadata classes, and plain
values load with ``weights_only=True``. Used for our resumes and ``init.checkpoint`` as for imports
of OLMo-core checkpoints (whose metadata names OLMo-core's copy of the storage record: it is read
as torch's, so OLMo-core need not be installed).
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

from olmo2.model.checkpoint import CheckpointError

__all__ = ["MetadataUnpickler", "SafeLoadPlanner", "SafeReader"]

_DCP = "torch.distributed.checkpoint."
_METADATA_GLOBALS = {
    (_DCP + "metadata", name)
    for name in (
        "Metadata",
        "MetadataIndex",
        "StorageMeta",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "TensorProperties",
        "_MEM_FORMAT_ENCODING",
    )
} | {
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("collections", "OrderedDict"),
    ("pathlib", "PosixPath"),  # StorageMeta.checkpoint_id
}
_STORAGE_INFO = {
    (_DCP + "filesystem", "_StorageInfo"),
    ("olmo_core.distributed.checkpoint.filesystem", "_StorageInfo"),
}


class MetadataUnpickler(pickle.Unpickler):
    """Builds a DCP ``Metadata`` and nothing else: any other global in the pickle is refused."""

    def __init__(self, file, source: Path):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str):
        if (module, name) in _STORAGE_INFO:
            return _StorageInfo  # OLMo-core's record has the same fields (path, offset, length)
        if (module, name) in _METADATA_GLOBALS:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise CheckpointError(
            f"{self.source}: refers to {module}.{name}, which DCP metadata never holds; not loading it"
        )


class SafeReader(FileSystemReader):
    """DCP's file reader with the metadata read by ``MetadataUnpickler``."""

    def read_metadata(self, *args, **kwargs) -> Metadata:
        path = Path(self.path) / ".metadata"
        try:
            with open(path, "rb") as f:
                metadata = MetadataUnpickler(f, path).load()
        except FileNotFoundError:
            raise CheckpointError(
                f"{path.parent}: not a torch.distributed.checkpoint folder (no .metadata)"
            ) from None
        except (pickle.UnpicklingError, EOFError, AttributeError, TypeError) as e:
            raise CheckpointError(f"{path}: unreadable DCP metadata ({e})") from None
        if not isinstance(metadata, Metadata):
            raise CheckpointError(f"{path}: holds a {type(metadata).__name__}, not DCP metadata")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's load planner, with each plain value (optimizer param groups, ...) first read by
    ``torch.load(weights_only=True)``: anything but plain data is refused before DCP's own full
    unpickle of the same bytes."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        torch.load(value, weights_only=True)
        value.seek(0)
        super().load_bytes(read_item, value)
