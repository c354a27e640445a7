"""Hugging Face Hub ids as model names: ``allenai/OLMo-2-0425-1B`` wherever a model directory is accepted.

``model.checkpoint.resolve_model_dir`` sends a name here only when no local path of that name exists.
The local HF cache is asked first, so a cached revision loads without a network call; a download
happens only when the cache lacks it and ``HF_HUB_OFFLINE`` is not set. Only the files a model load
reads are fetched (config, safetensors, tokenizer, chat template), not other frameworks' weights.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# org/name as the Hub spells repository ids: letters, digits, '_', '-', '.'; one slash.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
MODEL_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken"]
LEGACY_WEIGHTS = ["pytorch_model*.bin"]  # fetched only for a repository without safetensors
TRUE_VALUES = {"1", "ON", "YES", "TRUE"}  # huggingface_hub's spelling of an enabled flag


class HubError(ValueError):
    """A Hub model that is neither cached nor downloadable: the id, the revision and the cache say why."""


def is_hub_id(name: str) -> bool:
    """Whether ``name`` is shaped like a Hub repository id (``org/name``)."""
    return (
        bool(HUB_ID.fullmatch(name)) and ".." not in name and "--" not in name and not name.endswith(".git")
    )


def hub_cache_dir() -> Path:
    """huggingface_hub's model cache as the environment says now (``HF_HUB_CACHE``, else
    ``HF_HOME/hub``, else its default): huggingface_hub reads the variables once, at import."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set, read now for the same reason."""
    flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return flag.upper() in TRUE_VALUES


def hub_snapshot(repo_id: str, revision: str | None = None) -> Path:
    """The local snapshot folder of model ``repo_id`` at ``revision`` (branch, tag or commit; default
    ``main``): from the cache when it is there, else downloaded unless offline."""
    # huggingface_hub loads its HTTP stack on import (~0.15 s): only a Hub id pays for it.
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    revision = revision or "main"
    cache = hub_cache_dir()
    model = f"Hub model {repo_id} (revision {revision})"

    def fetch(patterns: list[str], local_only: bool) -> Path:
        path = snapshot_download(
            repo_id, revision=revision, cache_dir=cache, allow_patterns=patterns, local_files_only=local_only
        )
        return Path(path)

    try:
        cached = fetch(MODEL_FILES, local_only=True)
        if (cached / "config.json").is_file():
            return cached
    except LocalEntryNotFoundError:
        pass
    if hub_offline():
        raise HubError(
            f"{model} is not a local path and not in the Hugging Face cache {cache}; HF_HUB_OFFLINE is "
            "set, so it is not downloaded (download it once with network access, or give a local directory)"
        )
    try:
        path = fetch(MODEL_FILES, local_only=False)
        if not any(path.glob("*.safetensors")):
            path = fetch(LEGACY_WEIGHTS, local_only=False)
    except LocalEntryNotFoundError:
        raise HubError(
            f"{model} is not a local path, not in the Hugging Face cache {cache}, and the Hub cannot be reached"
        ) from None
    except RevisionNotFoundError:
        raise HubError(f"{model}: the Hub has no revision {revision!r} of {repo_id}") from None
    except RepositoryNotFoundError:
        raise HubError(
            f"{model} is not a local path, and the Hub has no model {repo_id} that you may read (a private "
            "or gated one needs `hf auth login` or HF_TOKEN)"
        ) from None
    except HfHubHTTPError as e:
        reason = " ".join(str(e).split())
        raise HubError(f"{model}: download into {cache} failed: {reason}") from None
    return path
