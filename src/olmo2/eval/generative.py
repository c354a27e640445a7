"""Generative evaluation: greedy decoding until a stop sequence, then exact match of the extracted answer
(GSM8K) or answer-overlap F1/EM (DROP, NQ, TriviaQA, SQuAD, CoQA; ``answer_metrics``).

A row whose text contains a stop sequence (or EOS) is finished and dropped from its batch, so a
batch does not decode 512 tokens for every row just because one row is long. Models that take a
stop callback (``supports_until``, our ``Olmo2LM``) decode each batch in one KV-cached pass and check
the texts as they grow; others generate in chunks of ``chunk`` new tokens, re-fed with the prompt.
Extraction follows the OLMES GSM8K recipe: the number after the last "So the answer is", else the
last number in the output; both sides are normalised with the task's ``regexes_to_ignore`` (commas,
``$``, anything up to ``#### ``, a final period) before comparing. A generation that never reaches a stop sequence is cut at the task's token limit and scored as it is.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from olmo2.eval.answer_metrics import drop_em_f1, squad_em_f1
from olmo2.eval.lm import EvalLM, TextTokenizer
from olmo2.eval.shard import WHOLE, Shard
from olmo2.eval.tasks import Doc, TaskFormat

__all__ = [
    "cut_at_stop",
    "exact_match",
    "extract_answer",
    "generate_until",
    "generative_metrics",
    "gsm8k_metrics",
    "normalize_answer",
    "qa_metrics",
]

IGNORE = (",", r"\$", r"(?s).*#### ", r"\.$")  # the gsm8k config's metric_kwargs.regexes_to_ignore
_NUMBER = r"-?[\d,]*\.?\d+"
_SO = re.compile(r"answer is\s*:?\s*\$?\s*(" + _NUMBER + ")", re.IGNORECASE)


def normalize_answer(s: str) -> str:
    """Apply the ignore regexes, strip, and write integral numbers canonically (``18.00`` -> ``18``)."""
    for pat in IGNORE:
        s = re.sub(pat, "", s)
    s = s.strip()
    try:
        x = float(s)
    except ValueError:
        return s
    return str(int(x)) if x.is_integer() else repr(x)


def extract_answer(text: str) -> str:
    """The answer a CoT generation commits to (OLMES GSM8K)."""
    found = _SO.findall(text)
    if found:
        return normalize_answer(found[-1])
    numbers = re.findall(_NUMBER, text)
    return normalize_answer(numbers[-1]) if numbers else normalize_answer(text)


def exact_match(prediction: str, gold: str) -> bool:
    return extract_answer(prediction) == normalize_answer(gold)


def cut_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """(``text`` up to its first stop sequence, whether it had one)."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


def generate_until(
    lm: EvalLM,
    tok: TextTokenizer,
    prompts: list[list[int]],
    stops: list[tuple[str, ...]],
    max_new: list[int],
    *,
    batch_size: int = 16,
    chunk: int = 64,
    progress: Callable[[int, int], None] | None = None,
    shard: Shard = WHOLE,
) -> list[str]:
    """Greedy continuations, each cut at its first stop sequence (and before EOS).

    ``progress(done, total)`` counts this rank's batches; with a ``shard``, each rank decodes its own
    batches and every rank returns all continuations."""
    outs: dict[int, str] = {}
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    mine = [idx for k, idx in enumerate(batches) if shard.owns(k)]
    decode = _generate_batch if getattr(lm, "supports_until", False) else _generate_chunked
    for done, idx in enumerate(mine, 1):
        outs.update(decode(lm, tok, idx, prompts, stops, max_new, chunk))
        if progress is not None:
            progress(done, len(mine))
    outs = shard.merge(outs)
    return [outs[i] for i in range(len(prompts))]


def _finish(lm: EvalLM, tok: TextTokenizer, ids: list[int], stops: tuple[str, ...], max_new: int):
    """(text cut before EOS and at the first stop, whether the row is done)."""
    eos = lm.eos_token_id is not None and lm.eos_token_id in ids
    if eos:
        ids = ids[: ids.index(lm.eos_token_id)]
    text, stopped = cut_at_stop(tok.decode(ids), stops)
    return text, stopped or eos or len(ids) >= max_new


def _generate_batch(lm, tok, idx, prompts, stops, max_new, chunk) -> dict[int, str]:
    """Rows ``idx`` in one KV-cached pass; ``until`` ends each at its stop text or token limit."""
    n = max(max_new[i] for i in idx)
    keep = max(1, lm.max_length - n)
    until = lambda r, ids: _finish(lm, tok, ids, stops[idx[r]], max_new[idx[r]])[1]  # noqa: E731
    new = lm.generate([prompts[i][-keep:] for i in idx], n, until=until)
    return {
        i: _finish(lm, tok, ids[: max_new[i]], stops[i], max_new[i])[0]
        for i, ids in zip(idx, new, strict=True)
    }


def _generate_chunked(lm, tok, idx, prompts, stops, max_new, chunk) -> dict[int, str]:
    """Rows ``idx`` in chunks of ``chunk`` tokens, each chunk re-fed prompt + tokens so far."""
    outs: dict[int, str] = {}
    gen: dict[int, list[int]] = {i: [] for i in idx}
    active = list(idx)
    while active:
        n = min(chunk, min(max_new[i] - len(gen[i]) for i in active))
        keep = max(1, lm.max_length - n)
        for i, new in zip(
            active, lm.generate([(prompts[i] + gen[i])[-keep:] for i in active], n), strict=True
        ):
            gen[i] += new
        still = []
        for i in active:
            text, done = _finish(lm, tok, gen[i], stops[i], max_new[i])
            if done:
                outs[i] = text
            else:
                still.append(i)
        active = still
    return outs


def _generate(
    lm: EvalLM,
    tok: TextTokenizer,
    docs: list[Doc],
    batch_size: int,
    max_new_tokens: int | None,
    progress: Callable[[int, int], None] | None,
    shard: Shard,
) -> list[str]:
    """Each doc's greedy generation after its context (with BOS for tokenizers that use one)."""
    prompts = tok.encode_batch([d.contexts[0] for d in docs])
    if tok.bos_token_id is not None:
        prompts = [p if p[:1] == [tok.bos_token_id] else [tok.bos_token_id, *p] for p in prompts]
    limit = [min(d.max_gen_toks or 512, max_new_tokens or 10**9) for d in docs]
    return generate_until(
        lm, tok, prompts, [d.stop for d in docs], limit, batch_size=batch_size, progress=progress, shard=shard
    )


def gsm8k_metrics(
    lm: EvalLM,
    tok: TextTokenizer,
    docs: list[Doc],
    *,
    batch_size: int = 16,
    max_new_tokens: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    shard: Shard = WHOLE,
) -> tuple[dict, list[dict]]:
    """Exact match of the extracted answer against the gold short answer, and per-doc records."""
    texts = _generate(lm, tok, docs, batch_size, max_new_tokens, progress, shard)
    records = []
    for d, text in zip(docs, texts, strict=True):
        pred = extract_answer(text)
        gold = normalize_answer(d.answer or "")
        records.append(
            {"doc_id": d.doc_id, "generation": text, "extracted": pred, "gold": gold, "correct": pred == gold}
        )
    n = len(records)
    correct = sum(r["correct"] for r in records)
    em = correct / n if n else float("nan")
    metrics = {"docs": n, "exact_match": em, "exact_match_correct": correct, "primary_metric": "exact_match"}
    metrics["primary"] = em
    return metrics, records


def qa_metrics(
    lm: EvalLM,
    tok: TextTokenizer,
    docs: list[Doc],
    scorer: str,
    *,
    batch_size: int = 16,
    max_new_tokens: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    shard: Shard = WHOLE,
) -> tuple[dict, list[dict]]:
    """Mean F1 and exact match of the generations against each doc's gold answers (``squad`` or
    ``drop`` scoring), and per-doc records."""
    score = {"squad": squad_em_f1, "drop": drop_em_f1}[scorer]
    texts = _generate(lm, tok, docs, batch_size, max_new_tokens, progress, shard)
    records = []
    for d, text in zip(docs, texts, strict=True):
        em, f1 = score(text.strip(), d.answers or [])
        records.append(
            {"doc_id": d.doc_id, "generation": text, "gold": d.answers, "f1": f1, "exact_match": em}
        )
    n = len(records)
    mean = (lambda key: sum(r[key] for r in records) / n) if n else (lambda key: float("nan"))
    metrics = {"docs": n, "f1": mean("f1"), "exact_match": mean("exact_match"), "primary_metric": "f1"}
    metrics["primary"] = metrics["f1"]
    return metrics, records


def generative_metrics(
    lm: EvalLM, tok: TextTokenizer, fmt: TaskFormat, docs: list[Doc], **kwargs
) -> tuple[dict, list[dict]]:
    """Score a generative task format with its scorer (see :class:`~olmo2.eval.tasks.TaskFormat`)."""
    if fmt.scorer == "gsm8k":
        return gsm8k_metrics(lm, tok, docs, **kwargs)
    return qa_metrics(lm, tok, docs, fmt.scorer, **kwargs)
