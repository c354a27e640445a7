"""The OLMo 2 (dolma2) tokenizer.

A thin wrapper over ``tokenizers.Tokenizer`` so the rest of the system has one place that fixes the
conventions OLMo 2 relies on: encoding never adds special tokens (documents get EOS appended by the
data pipeline, there is no BOS), special-token strings inside text are recognised, and ids are
bit-identical to the tokenizer the released models were trained with (checked by sha256).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import tokenizers

from olmo2.assets import ASSETS, AssetError, Downloader, fetch, sha256_file

__all__ = ["DEFAULT_ASSET", "Tokenizer", "load_tokenizer", "write_hf_tokenizer_files"]

DEFAULT_ASSET = "dolma2-tokenizer"
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
IGNORE_INDEX = -100  # the label of a position the loss skips (PyTorch cross-entropy's convention)


class Tokenizer:
    """OLMo 2 tokenizer; special-token names are parameters only so custom tokenizers can be used."""

    def __init__(
        self,
        tokenizer: tokenizers.Tokenizer,
        path: str | Path | None = None,
        *,
        eos_token: str = EOS_TOKEN,
        pad_token: str | None = PAD_TOKEN,
        bos_token: str | None = None,
    ) -> None:
        self._tok = tokenizer
        self._path = Path(path) if path is not None else None
        self.eos_token = eos_token
        self.pad_token = pad_token
        self.bos_token = bos_token
        # Fail at load time, not deep inside data preparation, if a custom tokenizer lacks a token.
        for role, tok in (("eos", eos_token), ("pad", pad_token), ("bos", bos_token)):
            if tok is not None and tokenizer.token_to_id(tok) is None:
                raise ValueError(f"{role} token {tok!r} is not in the tokenizer vocabulary ({path})")

    @classmethod
    def from_file(cls, path: str | Path, **kwargs) -> Tokenizer:
        return cls(tokenizers.Tokenizer.from_file(str(path)), path, **kwargs)

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def backend(self) -> tokenizers.Tokenizer:
        return self._tok

    @property
    def vocab_size(self) -> int:
        """Including added/special tokens: this is the size the embedding must cover."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def eos_token_id(self) -> int:
        return self._tok.token_to_id(self.eos_token)

    @property
    def pad_token_id(self) -> int | None:
        return None if self.pad_token is None else self._tok.token_to_id(self.pad_token)

    @property
    def bos_token_id(self) -> int | None:
        return None if self.bos_token is None else self._tok.token_to_id(self.bos_token)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(token_id)

    def encode(self, text: str) -> list[int]:
        # add_special_tokens=False: explicit, so a custom tokenizer with a post-processor adds nothing either.
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        # The backend defaults to skipping special tokens; we default to a faithful round trip.
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def decode_batch(self, batch: Iterable[Iterable[int]], skip_special_tokens: bool = False) -> list[str]:
        return self._tok.decode_batch([list(ids) for ids in batch], skip_special_tokens=skip_special_tokens)

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"Tokenizer(path={str(self._path)!r}, vocab_size={self.vocab_size}, eos={self.eos_token_id})"


def load_tokenizer(
    path: str | Path | None = None, *, verify: bool = True, download: Downloader | None = None
) -> Tokenizer:
    """Load the OLMo 2 tokenizer from ``path``, else ``$OLMO2_TOKENIZER``, else the pinned PyPI asset.

    A local file is checked against the pinned sha256 because a near-identical tokenizer (another
    revision, a re-saved JSON) silently produces different ids; ``verify=False`` is the explicit way to
    use a custom tokenizer. ``path`` may also be a directory containing ``tokenizer.json``.
    """
    source = "argument"
    if path is None and os.environ.get("OLMO2_TOKENIZER"):
        path, source = os.environ["OLMO2_TOKENIZER"], "$OLMO2_TOKENIZER"
    if path is None:
        return Tokenizer.from_file(fetch(DEFAULT_ASSET, download=download))

    file = Path(path).expanduser()
    if file.is_dir():
        file = file / "tokenizer.json"
    if not file.is_file():
        raise FileNotFoundError(f"tokenizer file {file} (from {source}) does not exist")
    if verify:
        expected = ASSETS[DEFAULT_ASSET].sha256
        actual = sha256_file(file)
        if actual != expected:
            raise AssetError(
                f"tokenizer file {file} (from {source}) has sha256 {actual}, expected {expected} "
                f"(the pinned OLMo 2 dolma2 tokenizer). Use verify=False to load a custom tokenizer."
            )
    return Tokenizer.from_file(file)


def write_hf_tokenizer_files(
    tokenizer: Tokenizer, out_dir: str | Path, *, model_max_length: int | None = 4096
) -> list[Path]:
    """Write files so ``transformers.AutoTokenizer.from_pretrained(out_dir)`` reproduces our ids.

    ``tokenizer_class`` is ``PreTrainedTokenizerFast`` (the generic tokenizer.json backend) rather than
    the ``GPT2Tokenizer`` of the HF OLMo 2 releases: transformers 5.x rebuilds GPT2Tokenizer with
    GPT-2's pre-tokenizer regex, which changes ids for some whitespace runs. ``bos_token`` mirrors the
    releases (= EOS) for tools that want one, with ``add_bos_token`` false so nothing is prepended.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok_json = out / "tokenizer.json"
    if tokenizer.path is not None and tokenizer.path.is_file():
        if tokenizer.path.resolve() != tok_json.resolve():
            shutil.copyfile(tokenizer.path, tok_json)
    else:
        tokenizer.backend.save(str(tok_json))

    bos = tokenizer.bos_token if tokenizer.bos_token is not None else tokenizer.eos_token
    special = {"bos_token": bos, "eos_token": tokenizer.eos_token}
    if tokenizer.pad_token is not None:
        special["pad_token"] = tokenizer.pad_token
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
    }
    if model_max_length is not None:
        config["model_max_length"] = model_max_length

    written = [tok_json]
    for name, obj in (("tokenizer_config.json", config), ("special_tokens_map.json", special)):
        p = out / name
        p.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(p)
    return written
