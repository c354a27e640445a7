"""The offline tasks of the Tülu 3 dev suite behind paper Tab 7 (spec §7.3), through the chat template.

Every prompt is a chat rendered by ``olmo2.chat`` (BOS, ``<|user|>`` turns, ending in ``<|assistant|>\\n``)
and answered by greedy generation (``generate_until``: batched, KV-cached, split over torchrun ranks).

* GSM8K: 8-shot CoT as multiturn ICL, each OLMES exemplar a user turn ("Question: …\\nAnswer:") and an
  assistant turn (its worked answer); exact match of the extracted number, as ``gsm8k:gen`` scores it.
* MATH: Minerva 4-shot CoT as multiturn ICL; "flex" exact match: correct when the last ``\\boxed{}`` or
  the Minerva "The final answer is X" equals the gold answer under ``math_equal`` (normalisation, then
  math-verify). Macro average over the 7 subjects. The exemplars are the four fixed Minerva prompts
  (Lewkowycz et al. 2022, App. D.2, as OLMES's ``Minerva:MATH:fixed``), read from the pinned request
  files' contexts rather than copied into this module, so they cannot drift from OLMES's text.
* MMLU: 0-shot CoT, a "summarize your reasoning, then answer" instruction after Tülu 3's (wording ours:
  UNVERIFIED against OLMES), exact match of the answer letter; macro average over the 57 subjects.
* IFEval: the public ``input_data.jsonl`` prompts from a local file (no pinned package ships them),
  0-shot, scored by ``if-verifiable``'s checker for every instruction; primary is prompt-level loose
  accuracy (the paper's), strict and instruction-level numbers are reported beside it.

Chat generations end at EOS; the tasks' stop sequences still apply, except the bare ``"\\n\\n"``, which
would cut a chat answer at its first paragraph, and ``"<|user|>"`` ends a model that writes the next
turn itself. A model that never stops is cut at the task's token limit and scored as it is.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from olmo2.chat import render
from olmo2.eval.generative import extract_answer, generate_until, normalize_answer
from olmo2.eval.heldout import read_jsonl_objects
from olmo2.eval.lm import EvalLM, TextTokenizer
from olmo2.eval.shard import WHOLE, Shard
from olmo2.eval.tasks import LETTERS, MMLU_DIR, EvalDataError, data_root, load_task, read_arrow
from olmo2.posttrain.verifiers import (
    check_ground_truth,
    check_ifeval,
    extract_math_answer,
    last_boxed,
    math_equal,
)

__all__ = [
    "CHAT_TASKS",
    "ChatDoc",
    "ChatTask",
    "IFEvalDataError",
    "chat_metrics",
    "chat_prompt_ids",
    "ifeval_record",
    "load_chat_task",
    "load_ifeval",
    "math_flex_correct",
    "mmlu_letter",
    "multiturn",
    "score_chat_task",
]

USER_TURN = "<|user|>"
MAX_NEW = {"gsm8k": 512, "minerva_math": 1024, "mmlu": 512, "ifeval": 2048}


class IFEvalDataError(EvalDataError):
    """A local IFEval prompts file that is unreadable or malformed (names the file and line)."""


@dataclass
class ChatDoc:
    """One prompt: the chat so far, the gold answer (or IFEval's instructions) and generation limits."""

    doc_id: int
    messages: list[dict[str, str]]
    gold: object
    stop: tuple[str, ...]
    max_new: int
    subject: str = ""


@dataclass
class ChatTask:
    """A chat task's docs and how one generation is scored (a per-doc record with ``correct``)."""

    name: str
    docs: list[ChatDoc]
    score: Callable[[str, ChatDoc], dict]
    source: str
    metric: str = "exact_match"  # the name of ``primary``
    macro: bool = False  # average per subject, then over subjects
    extra_metrics: Callable[[list[dict]], dict] | None = None  # further metrics from the records


def multiturn(context: str, query: str, answer: str) -> list[dict[str, str]]:
    """A few-shot plain-text prompt as chat turns: each exemplar a user turn up to and including the
    ``answer`` marker and an assistant turn with the rest; the final query a user turn."""
    blocks = re.split(rf"\n\n(?={re.escape(query)})", context)
    messages = []
    for block in blocks[:-1]:
        head, marker, reply = block.partition(answer)
        if not marker:
            raise EvalDataError(f"few-shot exemplar without {answer!r}: {block[:80]!r}")
        messages += [
            {"role": "user", "content": head + marker},
            {"role": "assistant", "content": reply.strip()},
        ]
    return [*messages, {"role": "user", "content": blocks[-1]}]


def _chat_stops(stops: tuple[str, ...]) -> tuple[str, ...]:
    return (*(s for s in stops if s.strip()), USER_TURN)


# ---------------------------------------------------------------------------------------- scorers


def _gsm8k_record(text: str, doc: ChatDoc) -> dict:
    pred, gold = extract_answer(text), normalize_answer(str(doc.gold))
    return {"extracted": pred, "gold": gold, "correct": pred == gold}


_FINAL = "Final Answer:"


def _math_candidates(text: str) -> list[str]:
    """The last ``\\boxed{}`` and the Minerva "The final answer is X", whichever are present."""
    found = [last_boxed(text)]
    if _FINAL in text:
        found.append(extract_math_answer(text[text.rfind(_FINAL) :]))
    return list(dict.fromkeys(c.strip().strip("$").strip() for c in found if c and c.strip()))


def math_flex_correct(text: str, gold: str) -> bool:
    """Flex exact match: any extracted candidate equals ``gold`` (``math_equal``: normalised, then SymPy)."""
    return any(math_equal(c, gold) for c in _math_candidates(text))


def _math_record(text: str, doc: ChatDoc) -> dict:
    return {
        "extracted": _math_candidates(text),
        "gold": doc.gold,
        "correct": math_flex_correct(text, str(doc.gold)),
    }


_LETTER = re.compile(r"answer is:?\s*\(?\s*([A-J])\b", re.IGNORECASE)
_PAREN = re.compile(r"\(([A-J])\)")


def mmlu_letter(text: str) -> str | None:
    """The letter after the last "answer is", else the last "(X)"."""
    for pattern in (_LETTER, _PAREN):
        hits = pattern.findall(text)
        if hits:
            return hits[-1].upper()
    return None


def _mmlu_record(text: str, doc: ChatDoc) -> dict:
    pred = mmlu_letter(text)
    return {"extracted": pred, "gold": doc.gold, "correct": pred == doc.gold}


def _loose_variants(text: str) -> list[str]:
    """IFEval's loose responses: with the first and/or last line removed, and with ``*`` removed."""
    lines = text.split("\n")
    cut = [text, "\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    return [v for c in cut for v in (c, c.replace("*", ""))]


def ifeval_record(text: str, doc: ChatDoc) -> dict:
    """Per instruction: strict (the response as is) and loose (any loose variant) following; the prompt
    is correct (loose) when all of its instructions are followed loosely."""
    ids, kwargs = doc.gold["instruction_id_list"], doc.gold["kwargs"]
    variants = _loose_variants(text)
    strict, loose = [], []
    for iid, kw in zip(ids, kwargs, strict=True):
        truth = {"instruction_id": [iid], "kwargs": [kw]}
        strict.append(check_ifeval(text, truth))
        loose.append(strict[-1] or any(v.strip() and check_ifeval(v, truth) for v in variants))
    return {
        "key": doc.gold["key"],
        "instruction_id_list": ids,
        "follow_strict": strict,
        "follow_loose": loose,
        "prompt_strict": all(strict),
        "correct": all(loose),
    }


def _ifeval_metrics(records: list[dict]) -> dict:
    """Prompt-level strict accuracy and instruction-level strict/loose accuracy (the primary is
    prompt-level loose)."""
    strict = [f for r in records for f in r["follow_strict"]]
    loose = [f for r in records for f in r["follow_loose"]]
    nan = float("nan")
    return {
        "prompt_strict": _mean(records, "prompt_strict"),
        "inst_strict": sum(strict) / len(strict) if strict else nan,
        "inst_loose": sum(loose) / len(loose) if loose else nan,
    }


# ---------------------------------------------------------------------------------------- loaders


def _from_requests(
    fmt: str, query: str, answer: str, max_new: int, limit: int | None
) -> tuple[list[ChatDoc], str]:
    data = load_task(fmt, limit=limit)
    docs = [
        ChatDoc(
            d.doc_id,
            multiturn(d.contexts[0], query, answer),
            d.answer,
            _chat_stops(d.stop),
            max_new,
            d.subject,
        )
        for d in data.docs
    ]
    return docs, ", ".join(data.files) if len(data.files) <= 8 else f"{len(data.files)} dirs"


MMLU_INSTRUCTION = (
    "The following are multiple choice questions about {subject}. Summarize your reasoning concisely, "
    'then conclude with "Therefore, the answer is: X" where X is one of {letters}.'
)


def _load_mmlu(limit: int | None, root: Path | None = None) -> tuple[list[ChatDoc], str]:
    """MMLU test questions, 0-shot, each a single user turn; ``limit`` as ``load_task`` counts it."""
    base = (root or data_root()) / MMLU_DIR
    subjects = sorted(p.name for p in base.iterdir() if p.is_dir())
    per = None if limit is None else math.ceil(limit / len(subjects))
    groups = []
    for s in subjects:
        rows = read_arrow(base / s / "test")[:per]
        docs = []
        for row in rows:
            letters = LETTERS[: len(row["choices"])]
            options = "\n".join(f"({letters[i]}) {c}" for i, c in enumerate(row["choices"]))
            head = MMLU_INSTRUCTION.format(
                subject=s.replace("_", " "), letters=", ".join(letters[:-1]) + f", or {letters[-1]}"
            )
            prompt = f"{head}\n\nQuestion: {row['question']}\n{options}"
            docs.append(
                ChatDoc(
                    0,
                    [{"role": "user", "content": prompt}],
                    letters[row["answer"]],
                    (USER_TURN,),
                    MAX_NEW["mmlu"],
                    s,
                )
            )
        groups.append(docs)
    order = sorted((i, g) for g, docs in enumerate(groups) for i in range(len(docs)))
    keep = order if limit is None else order[:limit]
    docs = [groups[g][i] for i, g in sorted(keep, key=lambda x: (x[1], x[0]))]
    for i, d in enumerate(docs):
        d.doc_id = i
    return docs, f"{MMLU_DIR} (test, 0-shot)"


def load_ifeval(path: str | Path, limit: int | None = None) -> list[ChatDoc]:
    """IFEval prompts from a local ``input_data.jsonl`` (``key``, ``prompt``, ``instruction_id_list``,
    ``kwargs``); every instruction is checked against the registry at load time, so a file that could
    never be scored fails here, naming its line."""
    path = Path(path)
    docs: list[ChatDoc] = []
    for lineno, row in read_jsonl_objects(path, IFEvalDataError, "IFEval prompts"):
        if limit is not None and len(docs) >= limit:
            break
        where = f"{path}:{lineno}"
        missing = [k for k in ("key", "prompt", "instruction_id_list", "kwargs") if k not in row]
        if missing:
            raise IFEvalDataError(f"{where}: missing {', '.join(missing)}")
        ids, kwargs, prompt = row["instruction_id_list"], row["kwargs"], row["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise IFEvalDataError(f"{where}: 'prompt' must be a non-empty string")
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
            raise IFEvalDataError(f"{where}: 'instruction_id_list' must be a non-empty list of ids")
        if (
            not isinstance(kwargs, list)
            or len(kwargs) != len(ids)
            or not all(isinstance(k, dict) for k in kwargs)
        ):
            raise IFEvalDataError(
                f"{where}: 'kwargs' must be a list of {len(ids)} objects, one per instruction"
            )
        try:
            check_ground_truth("ifeval", {"instruction_id": ids, "kwargs": kwargs})
        except ValueError as e:
            raise IFEvalDataError(f"{where}: {e}") from None
        gold = {"key": row["key"], "instruction_id_list": ids, "kwargs": kwargs}
        docs.append(
            ChatDoc(len(docs), [{"role": "user", "content": prompt}], gold, (USER_TURN,), MAX_NEW["ifeval"])
        )
    return docs


CHAT_TASKS = ("gsm8k:chat", "minerva_math:chat", "mmlu:chat", "ifeval:chat")


def load_chat_task(name: str, *, limit: int | None = None, ifeval_data: str | Path | None = None) -> ChatTask:
    """One of ``CHAT_TASKS`` with its docs (``ifeval:chat`` needs ``ifeval_data``)."""
    if name == "gsm8k:chat":
        docs, src = _from_requests("gsm8k:gen", "Question:", "Answer:", MAX_NEW["gsm8k"], limit)
        return ChatTask(name, docs, _gsm8k_record, src)
    if name == "minerva_math:chat":
        docs, src = _from_requests(
            "minerva_math:bpb", "Problem:", "Solution:", MAX_NEW["minerva_math"], limit
        )
        return ChatTask(name, docs, _math_record, src, "exact_match_flex", macro=True)
    if name == "mmlu:chat":
        docs, src = _load_mmlu(limit)
        return ChatTask(name, docs, _mmlu_record, src, macro=True)
    if name == "ifeval:chat":
        if ifeval_data is None:
            raise IFEvalDataError("ifeval:chat needs a local copy of the IFEval prompts (--ifeval-data PATH)")
        return ChatTask(
            name,
            load_ifeval(ifeval_data, limit),
            ifeval_record,
            str(ifeval_data),
            "prompt_loose",
            extra_metrics=_ifeval_metrics,
        )
    raise EvalDataError(f"unknown chat task {name!r}; available: {', '.join(CHAT_TASKS)}")


# ---------------------------------------------------------------------------------------- scoring


def chat_prompt_ids(tok: TextTokenizer, docs: list[ChatDoc]) -> list[list[int]]:
    """Token ids of each doc's chat ending in the generation prompt (the template's BOS included)."""
    return tok.encode_batch([render(d.messages, add_generation_prompt=True) for d in docs])


def _mean(records: list[dict], key: str) -> float:
    return sum(bool(r[key]) for r in records) / len(records) if records else float("nan")


def score_chat_task(
    lm: EvalLM,
    tok: TextTokenizer,
    task: ChatTask,
    *,
    batch_size: int = 16,
    max_new_tokens: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    shard: Shard = WHOLE,
) -> tuple[dict, list[dict]]:
    """Generate for every doc, score each generation, and average (per subject first when ``macro``)."""
    limits = [min(d.max_new, max_new_tokens or d.max_new) for d in task.docs]
    texts = generate_until(
        lm,
        tok,
        chat_prompt_ids(tok, task.docs),
        [d.stop for d in task.docs],
        limits,
        batch_size=batch_size,
        progress=progress,
        shard=shard,
    )
    return chat_metrics(task, texts)


def chat_metrics(task: ChatTask, texts: list[str]) -> tuple[dict, list[dict]]:
    """Score one generation per doc and average: per subject first when ``task.macro``."""
    records = []
    for d, text in zip(task.docs, texts, strict=True):
        rec = {"doc_id": d.doc_id, "generation": text, **task.score(text, d)}
        if d.subject:
            rec["subject"] = d.subject
        records.append(rec)
    metrics: dict = {"docs": len(records), "correct": sum(r["correct"] for r in records)}
    metrics["micro"] = _mean(records, "correct")
    if task.macro:
        subjects = sorted({r["subject"] for r in records})
        per = {s: _mean([r for r in records if r["subject"] == s], "correct") for s in subjects}
        metrics["subjects"] = per
        metrics["primary"] = sum(per.values()) / len(per) if per else float("nan")
    else:
        metrics["primary"] = metrics["micro"]
    if task.extra_metrics is not None:
        metrics.update(task.extra_metrics(records))
    metrics["primary_metric"] = task.metric
    metrics["source"] = task.source
    return metrics, records
