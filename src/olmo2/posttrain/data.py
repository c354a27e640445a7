"""Post-training data: SFT chats, preference pairs and RLVR prompts from JSON lines, and SFT batching.

``iter_sft`` / ``iter_preferences`` / ``iter_rl_prompts`` stream examples (a full Tülu mix does not fit
in memory as Python lists) and fill the ``DataReport`` passed in; ``load_*`` collect them into a list
and return ``(examples, report)``. Bad records are never dropped or cut silently: each is
counted under a reason with its first few ``file:line`` locations, ``read == used + skipped`` always
holds (``DataReport.check``), and ``strict=True`` turns the first bad record into a ``DataError`` naming
its ``file:line``. Blank lines are not records. Too-long records are skipped or truncated (counted as
``modified["truncated"]``) as configured; a truncated SFT example that keeps no trained token is skipped.

Formats (one JSON object per line):

* SFT: ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}``.
* Preferences: ``{"chosen": [messages], "rejected": [messages]}`` whose messages differ only in the
  final assistant turn, or ``{"prompt": str | [messages], "chosen": ..., "rejected": ...}`` where a
  response is a string, one assistant message, or a message list (a list that starts with the prompt
  is taken as the whole conversation, as in UltraFeedback-style dumps).
* RLVR: ``{"messages" | "prompt": ..., "ground_truth": ..., "verifier": "gsm8k"|"math"|"ifeval"}``
  (``"ifeval_old"``, open-instruct's name for ``func_name`` constraints, is ``"ifeval"`` too);
  open-instruct's ``"dataset"`` key is accepted for ``"verifier"`` and a trailing assistant turn (the
  reference answer in some dumps) is dropped (counted) so the prompt ends with a user turn.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from olmo2.chat import (
    ChatFormatError,
    EncodedChat,
    check_messages,
    encode_chat,
    encode_prompt,
    special_token_strings,
)
from olmo2.model.loss import IGNORE_INDEX
from olmo2.posttrain.verifiers import VERIFIERS, check_ground_truth

__all__ = [
    "PAD_TOKEN_ID",
    "DataError",
    "DataReport",
    "PackedRow",
    "PreferenceExample",
    "RLPrompt",
    "SFTBatch",
    "SFTExample",
    "collate",
    "iter_jsonl",
    "iter_preferences",
    "iter_rl_prompts",
    "iter_sft",
    "load_preferences",
    "load_rl_prompts",
    "load_sft",
    "pack_examples",
]

PAD_TOKEN_ID = 100277
TOO_LONG = ("skip", "truncate")


class DataError(ValueError):
    """A bad record in strict mode; the message starts with ``file:line``."""


@dataclass
class DataReport:
    """What a reader did: ``read`` records, ``used`` ones, ``skipped`` by reason, ``modified`` by kind."""

    kind: str
    read: int = 0
    used: int = 0
    skipped: Counter = field(default_factory=Counter)
    modified: Counter = field(default_factory=Counter)
    where: dict[str, list[str]] = field(default_factory=dict)  # reason -> first few "file:line: detail"
    max_where: int = 5

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def skip(self, reason: str, where: str, detail: str, strict: bool) -> None:
        if strict:
            raise DataError(f"{where}: {reason}: {detail}")
        self.skipped[reason] += 1
        locs = self.where.setdefault(reason, [])
        if len(locs) < self.max_where:
            locs.append(f"{where}: {detail}")

    def check(self) -> None:
        if self.read != self.used + self.n_skipped:
            raise AssertionError(
                f"{self.kind}: read {self.read} != used {self.used} + skipped {self.n_skipped}"
            )

    def summary(self) -> str:
        lines = [f"{self.kind}: read {self.read}, used {self.used}, skipped {self.n_skipped}"]
        lines += [f"  modified {k}: {v}" for k, v in sorted(self.modified.items())]
        for reason, n in self.skipped.most_common():
            lines.append(f"  skipped {reason}: {n}")
            lines += [f"    {w}" for w in self.where.get(reason, [])]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "read": self.read,
            "used": self.used,
            "skipped": dict(self.skipped),
            "modified": dict(self.modified),
            "where": self.where,
        }


def iter_jsonl(paths: str | Path | Iterable[str | Path]) -> Iterator[tuple[str, Any]]:
    """``(file:line, parsed object)`` per non-blank line; a line that is not JSON yields the exception."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield f"{path}:{lineno}", json.loads(line)
                except json.JSONDecodeError as e:
                    yield f"{path}:{lineno}", e


def _records(paths, report: DataReport, strict: bool) -> Iterator[tuple[str, dict]]:
    """Objects of the files, counting each as read; non-JSON and non-object lines are skipped."""
    for where, obj in iter_jsonl(paths):
        report.read += 1
        if isinstance(obj, Exception):
            report.skip("bad_json", where, str(obj), strict)
        elif not isinstance(obj, dict):
            report.skip("not_an_object", where, f"got {type(obj).__name__}", strict)
        else:
            yield where, obj


def _check_too_long(too_long: str) -> None:
    if too_long not in TOO_LONG:
        raise ValueError(f"too_long must be one of {TOO_LONG}, got {too_long!r}")


# ----------------------------------------------------------------------------------------- SFT


@dataclass
class SFTExample:
    """One tokenised chat: ids and Hugging Face-style labels (aligned with ids, -100 = no loss)."""

    input_ids: list[int]
    labels: list[int]
    where: str = ""
    truncated: bool = False

    @classmethod
    def from_encoded(cls, enc: EncodedChat, where: str = "") -> SFTExample:
        return cls(enc.input_ids, enc.labels, where)

    @property
    def n_targets(self) -> int:
        return sum(t != IGNORE_INDEX for t in self.labels)

    def __len__(self) -> int:
        return len(self.input_ids)


def _fit(ex: SFTExample, max_length: int | None, too_long: str) -> SFTExample | str:
    """The example within ``max_length`` or the reason it cannot be used."""
    if max_length is None or len(ex) <= max_length:
        return ex
    if too_long == "skip":
        return "too_long"
    cut = SFTExample(ex.input_ids[:max_length], ex.labels[:max_length], ex.where, truncated=True)
    return cut if cut.n_targets else "no_targets_after_truncation"


def iter_sft(
    paths,
    tokenizer,
    *,
    max_length: int | None = 4096,
    too_long: str = "truncate",
    train_on: str = "all",
    strict: bool = False,
    report: DataReport | None = None,
) -> Iterator[SFTExample]:
    """SFT examples from ``{"messages": [...]}`` lines; defaults follow open-instruct (truncate at 4096)."""
    _check_too_long(too_long)
    report = DataReport("sft") if report is None else report
    forbidden = special_token_strings(tokenizer)
    for where, rec in _records(paths, report, strict):
        try:
            messages = check_messages(rec.get("messages"), forbidden=forbidden)
        except ChatFormatError as e:
            report.skip(e.reason, where, str(e), strict)
            continue
        full = SFTExample.from_encoded(encode_chat(tokenizer, messages, train_on=train_on), where)
        ex = _fit(full, max_length, too_long)
        if isinstance(ex, str):
            report.skip(ex, where, f"{len(full)} tokens > {max_length}", strict)
            continue
        report.used += 1
        report.modified["truncated"] += ex.truncated
        yield ex
    report.check()


# --------------------------------------------------------------------------------- preferences


@dataclass
class PreferenceExample:
    """A chosen/rejected pair sharing ``prompt_ids`` (the prompt plus ``<|assistant|>\\n``)."""

    prompt_ids: list[int]
    chosen: SFTExample
    rejected: SFTExample
    where: str = ""


def _as_messages(value, default_role: str):
    if isinstance(value, str):
        return [{"role": default_role, "content": value}]
    if isinstance(value, dict):
        return [value]
    return value


def _pair_messages(rec: dict) -> tuple[list, list]:
    """(chosen, rejected) full conversations from either preference format (validated by the caller)."""
    if "chosen" not in rec or "rejected" not in rec:
        raise ChatFormatError("missing_field", "needs 'chosen' and 'rejected'")
    if "prompt" not in rec:
        return rec["chosen"], rec["rejected"]
    prompt = _as_messages(rec["prompt"], "user")
    if not isinstance(prompt, list):
        raise ChatFormatError("not_a_list", "'prompt' must be a string or a message list")
    pair = []
    for key in ("chosen", "rejected"):
        resp = _as_messages(rec[key], "assistant")
        if not isinstance(resp, list):
            raise ChatFormatError("not_a_list", f"'{key}' must be a string, a message or a message list")
        pair.append(resp if resp[: len(prompt)] == prompt and len(resp) > len(prompt) else prompt + resp)
    return pair[0], pair[1]


def iter_preferences(
    paths,
    tokenizer,
    *,
    max_length: int | None = 2048,
    too_long: str = "skip",
    train_on: str = "all",
    strict: bool = False,
    report: DataReport | None = None,
) -> Iterator[PreferenceExample]:
    """Preference pairs; both responses must end in an assistant turn after an identical prompt.

    ``train_on="all"`` scores every assistant turn of each conversation (open-instruct's
    ``preference_tulu_tokenize_and_truncate_v1``); ``"last"`` only the final response (TRL). They
    agree for single-turn prompts. A pair is too long when either side is; truncation cuts both.
    """
    _check_too_long(too_long)
    report = DataReport("preferences") if report is None else report
    forbidden = special_token_strings(tokenizer)
    for where, rec in _records(paths, report, strict):
        try:
            chosen, rejected = _pair_messages(rec)
            chosen = check_messages(chosen, forbidden=forbidden)
            rejected = check_messages(rejected, forbidden=forbidden)
            if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
                raise ChatFormatError(
                    "response_not_assistant", "chosen and rejected must end with an assistant turn"
                )
            if chosen[:-1] != rejected[:-1]:
                raise ChatFormatError("prompt_mismatch", "chosen and rejected have different prompts")
            if chosen[-1]["content"] == rejected[-1]["content"]:
                raise ChatFormatError("identical_responses", "chosen and rejected responses are identical")
            if len(chosen) == 1:
                raise ChatFormatError("no_prompt", "the conversation is a lone assistant turn")
            prompt_ids = encode_prompt(tokenizer, chosen[:-1])
        except ChatFormatError as e:
            report.skip(e.reason, where, str(e), strict)
            continue
        if max_length is not None and len(prompt_ids) >= max_length:
            report.skip(
                "prompt_too_long", where, f"prompt has {len(prompt_ids)} tokens >= {max_length}", strict
            )
            continue
        sides = [
            _fit(
                SFTExample.from_encoded(encode_chat(tokenizer, m, train_on=train_on), where),
                max_length,
                too_long,
            )
            for m in (chosen, rejected)
        ]
        bad = [s for s in sides if isinstance(s, str)]
        if bad:
            report.skip(bad[0], where, f"a response exceeds {max_length} tokens", strict)
            continue
        report.used += 1
        report.modified["truncated"] += any(s.truncated for s in sides)
        yield PreferenceExample(prompt_ids, sides[0], sides[1], where)
    report.check()


# -------------------------------------------------------------------------------------- RLVR


@dataclass
class RLPrompt:
    """An RLVR prompt: messages ending in a user turn, their generation ids, and what verifies answers."""

    messages: list[dict[str, str]]
    prompt_ids: list[int]
    ground_truth: Any
    verifier: str
    where: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def iter_rl_prompts(
    paths,
    tokenizer,
    *,
    max_prompt_length: int | None = 2048,
    strict: bool = False,
    report: DataReport | None = None,
) -> Iterator[RLPrompt]:
    """RLVR prompts; too-long prompts are always skipped (a cut question has a different answer)."""
    report = DataReport("rl_prompts") if report is None else report
    forbidden = special_token_strings(tokenizer)
    for where, rec in _records(paths, report, strict):
        try:
            raw = rec["messages"] if "messages" in rec else rec.get("prompt")
            messages = check_messages(_as_messages(raw, "user"), require_assistant=False, forbidden=forbidden)
            if len(messages) > 1 and messages[-1]["role"] == "assistant":
                messages = messages[:-1]
                report.modified["dropped_trailing_assistant"] += 1
            if messages[-1]["role"] != "user":
                raise ChatFormatError("prompt_not_user", "the prompt must end with a user turn")
            name = str(rec.get("verifier", rec.get("dataset", ""))).lower()
            if name not in VERIFIERS:
                raise ChatFormatError(
                    "unknown_verifier", f"verifier {name!r} is not one of {sorted(VERIFIERS)}"
                )
            if rec.get("ground_truth") is None:
                raise ChatFormatError("missing_ground_truth", "no ground_truth")
            check_ground_truth(name, rec["ground_truth"])
        except ChatFormatError as e:
            report.skip(e.reason, where, str(e), strict)
            continue
        except ValueError as e:
            report.skip("bad_ground_truth", where, str(e), strict)
            continue
        ids = encode_prompt(tokenizer, messages)
        if max_prompt_length is not None and len(ids) > max_prompt_length:
            report.skip("prompt_too_long", where, f"{len(ids)} tokens > {max_prompt_length}", strict)
            continue
        extra = {k: v for k, v in rec.items() if k not in ("messages", "prompt", "ground_truth", "verifier")}
        report.used += 1
        yield RLPrompt(messages, ids, rec["ground_truth"], name, where, extra)
    report.check()


def _load(it, kind: str, paths, tokenizer, kwargs) -> tuple[list, DataReport]:
    report = DataReport(kind)
    return list(it(paths, tokenizer, report=report, **kwargs)), report


def load_sft(paths, tokenizer, **kwargs) -> tuple[list[SFTExample], DataReport]:
    """All of ``iter_sft`` in a list, with its report."""
    return _load(iter_sft, "sft", paths, tokenizer, kwargs)


def load_preferences(paths, tokenizer, **kwargs) -> tuple[list[PreferenceExample], DataReport]:
    """All of ``iter_preferences`` in a list, with its report."""
    return _load(iter_preferences, "preferences", paths, tokenizer, kwargs)


def load_rl_prompts(paths, tokenizer, **kwargs) -> tuple[list[RLPrompt], DataReport]:
    """All of ``iter_rl_prompts`` in a list, with its report."""
    return _load(iter_rl_prompts, "rl_prompts", paths, tokenizer, kwargs)


# ---------------------------------------------------------------------------------- batching


@dataclass
class PackedRow:
    """Several whole examples concatenated; ``lengths`` are theirs, in order."""

    input_ids: list[int]
    labels: list[int]
    lengths: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


def pack_examples(examples: Iterable[SFTExample], seq_len: int) -> list[PackedRow]:
    """Greedy, in order: append whole examples to the current row until the next one does not fit.

    Examples are never split across rows (a continuation without its prompt is not a chat); the row is
    right-padded by ``collate`` instead. Every example ends up in exactly one row.
    """
    rows: list[PackedRow] = []
    cur = PackedRow([], [], [])
    for ex in examples:
        if len(ex) > seq_len:
            raise ValueError(
                f"example {ex.where} has {len(ex)} tokens > seq_len {seq_len}; load it with max_length"
            )
        if len(cur) + len(ex) > seq_len and cur.lengths:
            rows.append(cur)
            cur = PackedRow([], [], [])
        cur.input_ids += ex.input_ids
        cur.labels += ex.labels
        cur.lengths.append(len(ex))
    if cur.lengths:
        rows.append(cur)
    return rows


@dataclass
class SFTBatch:
    """Right-padded tensors [B, T]; ``segment_ids`` number the examples of a row from 1 (0 = padding).

    Plain ``model(input_ids)`` lets a packed example attend to the examples before it in its row (no
    target crosses a boundary: each example starts with a BOS whose label is -100). For exact
    per-example attention pass ``positions=batch.position_ids, mask=batch.attention_mask_4d()`` to
    ``Olmo2.forward`` / ``hidden_states``. Right padding needs no mask: causal attention never looks right.
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor
    segment_ids: torch.Tensor

    @property
    def n_targets(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())

    def example_lengths(self) -> list[int]:
        """Tokens of each example (segment) in the batch, padding left out."""
        seg = self.segment_ids.long()
        rows = torch.arange(seg.shape[0], device=seg.device).unsqueeze(1) * (int(seg.max()) + 1)
        counts = torch.bincount((rows + seg)[seg > 0])
        return counts[counts > 0].tolist()

    def attention_mask_4d(self) -> torch.Tensor:
        """Boolean [B, 1, T, T]: causal and within the same segment (True = may attend)."""
        seg = self.segment_ids
        T = seg.shape[1]
        causal = torch.ones(T, T, dtype=torch.bool, device=seg.device).tril()
        return (causal & (seg[:, :, None] == seg[:, None, :])).unsqueeze(1)


def collate(
    items: Sequence[SFTExample | PackedRow],
    *,
    pad_id: int = PAD_TOKEN_ID,
    pad_to_multiple_of: int | None = None,
    length: int | None = None,
) -> SFTBatch:
    """Right-pad examples or packed rows to ``length`` (fixed-length rows, e.g. the packing ``seq_len``),
    else to the longest item rounded up to ``pad_to_multiple_of``."""
    T = max(len(x) for x in items)
    if length is not None:
        if length < T:
            raise ValueError(f"an item has {T} tokens > length {length}")
        T = length
    elif pad_to_multiple_of:
        T = -(-T // pad_to_multiple_of) * pad_to_multiple_of
    B = len(items)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    pos = torch.zeros((B, T), dtype=torch.long)
    seg = torch.zeros((B, T), dtype=torch.long)
    for i, x in enumerate(items):
        n = len(x)
        ids[i, :n] = torch.tensor(x.input_ids)
        labels[i, :n] = torch.tensor(x.labels)
        start = 0
        for s, length in enumerate(getattr(x, "lengths", [n]), 1):
            pos[i, start : start + length] = torch.arange(length)
            seg[i, start : start + length] = s
            start += length
    return SFTBatch(ids, labels, pos, seg)
