"""``olmo2 convert to-hf`` / ``from-hf``.

Our model checkpoints are already HF directories (``model/checkpoint.py``), so both directions are:
validate config and tensors → optionally cast → write atomically, carrying the tokenizer along.
Tensors are copied bit for bit unless a dtype is asked for.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from olmo2.chat import write_hf_chat_files
from olmo2.model.checkpoint import (
    check_state_dict,
    parse_dtype,
    read_config,
    read_state_dict,
    resolve_model_dir,
    save_state_dict,
)
from olmo2.tokenizer import load_tokenizer

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def convert_checkpoint(
    src: str | Path,
    dst: str | Path,
    *,
    dtype: str | None = None,
    tokenizer: str | Path | None = None,
    with_tokenizer: bool = True,
    revision: str | None = None,
) -> Path:
    """Validate ``src`` (a directory, or a Hub id at ``revision``) and write it to ``dst``.

    Tokenizer files found in ``src`` travel along; otherwise, when ``with_tokenizer``, the dolma2
    tokenizer (or the file ``tokenizer``) is written with the OLMo 2 chat template, so that
    ``AutoTokenizer`` loads ``dst`` and ``apply_chat_template`` matches ``olmo2.chat``.
    """
    model_dir = resolve_model_dir(src, revision)
    cfg = read_config(model_dir)
    state = read_state_dict(model_dir)
    check_state_dict(state, cfg, str(model_dir))
    cast = parse_dtype(dtype)
    if cast is not None:
        state = {k: v.to(cast) for k, v in state.items()}
    extra = {name: model_dir / name for name in TOKENIZER_FILES if (model_dir / name).is_file()}
    with tempfile.TemporaryDirectory() as tok_dir:
        if with_tokenizer and (tokenizer is not None or "tokenizer.json" not in extra):
            write_hf_chat_files(load_tokenizer(tokenizer), tok_dir)  # tokenizer + the OLMo 2 chat template
            extra = {p.name: p for p in Path(tok_dir).iterdir()}
        return save_state_dict(state, cfg, dst, extra_files=extra)
