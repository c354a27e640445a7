"""AGIEval (English) and MMLU-Pro from a local copy: no pinned package ships them, so the user gives a folder.

The files are the public releases' JSON lines (extra fields are ignored):

* MMLU-Pro (TIGER-Lab/MMLU-Pro): ``test.jsonl`` (scored) and ``validation.jsonl`` (the 5 shots of each
  category), one question a line: ``question`` (str), ``options`` (list of str, up to 10),
  ``answer_index`` (int, the gold option) and ``category`` (str).
* AGIEval (ruixiangcui/AGIEval ``data/v1``): one ``<task>.jsonl`` per English task in
  :data:`AGIEVAL_TASKS`, one question a line: ``passage`` (str or null), ``question`` (str),
  ``options`` (list of str, written ``"(A)..."``; the letter prefix is dropped) and ``label`` (the gold
  letter).

A missing file, a bad line or a missing/mistyped field is refused naming the file and line.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

__all__ = ["AGIEVAL_TASKS", "LocalDataError", "read_agieval", "read_jsonl_objects", "read_mmlu_pro"]

AGIEVAL_TASKS = (
    "aqua-rat",
    "gaokao-english",
    "logiqa-en",
    "lsat-ar",
    "lsat-lr",
    "lsat-rc",
    "sat-en",
    "sat-math",
)
MAX_OPTIONS = 10
_OPTION_LETTER = re.compile(r"^\s*\(?[A-J]\)\s*")


class LocalDataError(ValueError):
    """A local task file that is missing or does not have the documented fields."""


def read_jsonl_objects(
    path: Path, error: type[ValueError] = LocalDataError, what: str = "questions"
) -> list[tuple[int, dict]]:
    """``(line number, object)`` of each non-blank line of a local JSONL copy; ``error`` names the
    file and line of anything else (a missing file, bad JSON, a non-object, an empty file)."""
    if not path.is_file():
        raise error(f"{path}: file not found (see docs/eval.md for the expected folder layout)")
    rows = []
    try:
        with path.open(encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise error(f"{path}:{line_no}: not valid JSON: {e}") from None
                if not isinstance(row, dict):
                    raise error(f"{path}:{line_no}: expected a JSON object")
                rows.append((line_no, row))
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{path}: cannot read it: {e}") from None
    if not rows:
        raise error(f"{path}: no {what}")
    return rows


def _field(row: dict, key: str, kind: type, where: str):
    value = row.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        found = "missing" if key not in row else f"a {type(value).__name__}"
        raise LocalDataError(f"{where}: field {key!r} must be a {kind.__name__} ({found})")
    return value


def _options(row: dict, where: str) -> list[str]:
    options = _field(row, "options", list, where)
    if not 2 <= len(options) <= MAX_OPTIONS or not all(isinstance(o, str) for o in options):
        raise LocalDataError(f"{where}: field 'options' must be 2 to {MAX_OPTIONS} strings")
    return options


def _mmlu_pro_split(path: Path) -> list[dict]:
    rows = []
    for line_no, row in read_jsonl_objects(path):
        where = f"{path}:{line_no}"
        options = _options(row, where)
        answer = _field(row, "answer_index", int, where)
        if not 0 <= answer < len(options):
            raise LocalDataError(f"{where}: answer_index {answer} is not one of the {len(options)} options")
        rows.append(
            {
                "question": _field(row, "question", str, where),
                "choices": options,
                "answer": answer,
                "subject": _field(row, "category", str, where),
            }
        )
    return rows


def read_mmlu_pro(folder: str | Path) -> tuple[list[dict], list[dict]]:
    """``(test rows, validation rows)``, each ``{question, choices, answer, subject}``."""
    folder = Path(folder)
    return _mmlu_pro_split(folder / "test.jsonl"), _mmlu_pro_split(folder / "validation.jsonl")


def read_agieval(folder: str | Path) -> dict[str, list[dict]]:
    """``{task: rows}`` for the 8 English tasks; rows are ``{passage, question, choices, answer}``."""
    folder = Path(folder)
    tasks = {}
    for task in AGIEVAL_TASKS:
        path = folder / f"{task}.jsonl"
        rows = []
        for line_no, row in read_jsonl_objects(path):
            where = f"{path}:{line_no}"
            options = [_OPTION_LETTER.sub("", o, count=1) for o in _options(row, where)]
            label = _field(row, "label", str, where).strip()
            if len(label) != 1 or not 0 <= ord(label) - ord("A") < len(options):
                raise LocalDataError(f"{where}: label {label!r} is not the letter of one of the options")
            passage = row.get("passage")
            if passage is not None and not isinstance(passage, str):
                raise LocalDataError(f"{where}: field 'passage' must be a str or null")
            rows.append(
                {
                    "passage": passage or "",
                    "question": _field(row, "question", str, where),
                    "choices": options,
                    "answer": ord(label) - ord("A"),
                }
            )
        tasks[task] = rows
    return tasks
