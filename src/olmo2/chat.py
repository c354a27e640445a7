"""The OLMo 2 chat format (spec §6.1): open-instruct's "tulu" template with ``--add_bos``.

One implementation serves training (ids + which tokens carry a loss), generation (the prompt ending in
``<|assistant|>\\n``) and ``olmo2 chat``, and ``CHAT_TEMPLATE`` is the same format as Jinja for Hugging
Face tools, so ``apply_chat_template`` and ``encode_chat`` give the same ids and the same assistant mask
(tested with the real dolma2 tokenizer).

    <|endoftext|><|system|>\\n{system}\\n<|user|>\\n{user}\\n<|assistant|>\\n{reply}<|endoftext|>\\n<|user|>\\n...

``<|system|>``/``<|user|>``/``<|assistant|>`` are plain text (BPE-tokenised); ``<|endoftext|>`` is the
special token 100257, both the BOS that ``--add_bos`` prepends and each assistant turn's EOS.

Loss mask (open-instruct ``sft_tulu_tokenize_and_truncate_v1``): only assistant *content plus its
``<|endoftext|>``* is trained. The BOS, system/user turns, every ``<|assistant|>\\n`` header and the
``\\n`` after an assistant's EOS are masked. The mask is computed on the tokenisation of the whole
rendered string (never by encoding pieces separately, which could change ids), marking every token from
the one holding the span's first character to the one holding its last, as ``transformers`` does for
``{% generation %}`` blocks. A token straddling a boundary (only when content starts with a newline that
BPE merges into the header's ``>\\n``) is therefore trained; open-instruct's prefix re-tokenisation
masks it instead. Everywhere else the two masks are identical (tested).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from olmo2.tokenizer import IGNORE_INDEX, write_hf_tokenizer_files

__all__ = [
    "BOS",
    "CHAT_TEMPLATE",
    "EOS",
    "GENERATION_PROMPT",
    "ROLES",
    "ChatFormatError",
    "EncodedChat",
    "check_messages",
    "decode_response",
    "encode_chat",
    "encode_prompt",
    "render",
    "render_with_spans",
    "special_token_strings",
    "write_hf_chat_files",
]

ROLES = ("system", "user", "assistant")
BOS = "<|endoftext|>"  # dolma2 has no BOS of its own; --add_bos prepends the tokenizer's bos token = EOS
EOS = "<|endoftext|>"
GENERATION_PROMPT = "<|assistant|>\n"
_HEADER = {"system": "<|system|>\n", "user": "<|user|>\n", "assistant": GENERATION_PROMPT}

# open-instruct's CHAT_TEMPLATES["tulu"] with "{{ bos_token }}" prepended (what --add_bos does), plus
# {% generation %} markers (ignored when rendering; they let transformers' return_assistant_tokens_mask,
# hence TRL's assistant_only_loss, see the same mask as ours) and an error for unknown roles instead of
# silently dropping the turn. write_hf_tokenizer_files sets bos_token = eos_token = <|endoftext|>.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\n' }}"
    "{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
    "{% if not loop.last %}{{ '\n' }}{% endif %}"
    "{% else %}{{ raise_exception('unknown chat role: ' + message['role']) }}"
    "{% endif %}"
    "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    "{% endfor %}"
)


class ChatFormatError(ValueError):
    """A message list the format cannot represent; ``reason`` is a short code used in data reports."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def special_token_strings(tokenizer) -> tuple[str, ...]:
    """Strings the tokenizer turns into special tokens wherever they appear in text."""
    decoder = tokenizer.backend.get_added_tokens_decoder()
    return tuple(sorted(t.content for t in decoder.values() if t.special))


def check_messages(
    messages, *, require_assistant: bool = True, forbidden: Sequence[str] = ()
) -> list[dict[str, str]]:
    """Validate a message list; return it as plain ``{"role", "content"}`` dicts (other keys dropped).

    Raises ``ChatFormatError`` with reason ``not_a_list``, ``empty_messages``, ``bad_message``,
    ``unknown_role``, ``empty_content``, ``no_assistant_turn`` or ``special_token_in_content`` (content
    containing one of ``forbidden``, e.g. ``<|endoftext|>``, which would be encoded as the special token
    and end the turn early).
    """
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)):
        raise ChatFormatError("not_a_list", f"messages must be a list, got {type(messages).__name__}")
    if not messages:
        raise ChatFormatError("empty_messages", "messages is empty")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise ChatFormatError("bad_message", f"message {i} is not a {{'role', 'content'}} object")
        role, content = m["role"], m["content"]
        if role not in ROLES:
            raise ChatFormatError("unknown_role", f"message {i} has unknown role {role!r} (expected {ROLES})")
        if not isinstance(content, str) or not content.strip():
            raise ChatFormatError("empty_content", f"message {i} ({role}) has empty or non-string content")
        for tok in forbidden:
            if tok in content:
                raise ChatFormatError(
                    "special_token_in_content", f"message {i} ({role}) contains the special token {tok!r}"
                )
        out.append({"role": role, "content": content})
    if require_assistant and not any(m["role"] == "assistant" for m in out):
        raise ChatFormatError("no_assistant_turn", "no assistant message")
    return out


def render_with_spans(
    messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = False
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the character spans ``[start, end)`` of each assistant turn's content + EOS."""
    parts, spans, pos = [BOS], [], len(BOS)
    for i, m in enumerate(messages):
        role = m["role"]
        if role not in ROLES:
            raise ChatFormatError("unknown_role", f"message {i} has unknown role {role!r}")
        head = _HEADER[role]
        if role == "assistant":
            body = m["content"] + EOS
            spans.append((pos + len(head), pos + len(head) + len(body)))
            piece = head + body + ("\n" if i < len(messages) - 1 else "")
        else:
            piece = head + m["content"] + "\n"
        parts.append(piece)
        pos += len(piece)
    if add_generation_prompt and messages:
        parts.append(GENERATION_PROMPT)
    return "".join(parts), spans


def render(messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = False) -> str:
    """The chat as text, exactly as ``CHAT_TEMPLATE`` renders it (BOS included)."""
    return render_with_spans(messages, add_generation_prompt)[0]


@dataclass
class EncodedChat:
    """Token ids and the loss mask (1 = trained) over them, same length."""

    input_ids: list[int]
    assistant_mask: list[int]

    @property
    def labels(self) -> list[int]:
        """Hugging Face convention: aligned with ``input_ids`` (the loss shifts), -100 where not trained."""
        return [t if m else IGNORE_INDEX for t, m in zip(self.input_ids, self.assistant_mask, strict=True)]

    @property
    def n_targets(self) -> int:
        return sum(self.assistant_mask)

    def __len__(self) -> int:
        return len(self.input_ids)


def encode_chat(
    tokenizer,
    messages: Sequence[Mapping[str, str]],
    *,
    add_generation_prompt: bool = False,
    train_on: str = "all",
) -> EncodedChat:
    """Tokenise a chat and mark the trained tokens.

    ``train_on="all"`` trains every assistant turn (open-instruct SFT); ``"last"`` only the final
    assistant turn (open-instruct's ``last_turn_*`` variant, and TRL's prompt/completion split).
    """
    if train_on not in ("all", "last"):
        raise ValueError(f"train_on must be 'all' or 'last', got {train_on!r}")
    text, spans = render_with_spans(messages, add_generation_prompt)
    if train_on == "last":
        spans = spans[-1:]
    enc = tokenizer.backend.encode(text, add_special_tokens=False)
    ids = list(enc.ids)
    mask = [0] * len(ids)
    for start, end in spans:
        first, last = enc.char_to_token(start), enc.char_to_token(end - 1)
        if first is None:  # cannot happen with byte-level BPE; be loud rather than train on nothing
            raise RuntimeError(f"no token covers character {start} of the rendered chat")
        last = len(ids) - 1 if last is None else last
        mask[first : last + 1] = [1] * (last + 1 - first)
    return EncodedChat(ids, mask)


def encode_prompt(tokenizer, messages: Sequence[Mapping[str, str]]) -> list[int]:
    """Ids of a prompt for generation: the chat so far plus ``<|assistant|>\\n``.

    Refuses a chat that ends with an assistant turn: the template would append the header right after
    its EOS, which no training example contains.
    """
    if not messages:
        raise ChatFormatError("empty_messages", "messages is empty")
    if messages[-1]["role"] == "assistant":
        raise ChatFormatError(
            "prompt_ends_with_assistant", "a generation prompt must not end with an assistant turn"
        )
    return tokenizer.encode(render(messages, add_generation_prompt=True))


def decode_response(tokenizer, ids: Sequence[int]) -> tuple[str, bool]:
    """Text of generated ids up to (not including) the first EOS, and whether that EOS was produced.

    ``finished=False`` is what the RLVR no-EOS penalty (spec §6.4) looks at.
    """
    ids = list(ids)
    eos = tokenizer.eos_token_id
    finished = eos in ids
    if finished:
        ids = ids[: ids.index(eos)]
    return tokenizer.decode(ids), finished


def write_hf_chat_files(tokenizer, out_dir: str | Path, **kwargs) -> list[Path]:
    """``write_hf_tokenizer_files`` plus ``chat_template`` in tokenizer_config.json.

    After this, ``AutoTokenizer.from_pretrained(out_dir).apply_chat_template(messages, tokenize=True)``
    gives the ids of ``encode_chat`` (and ``return_assistant_tokens_mask`` its mask).
    """

    written = write_hf_tokenizer_files(tokenizer, out_dir, **kwargs)
    cfg_path = Path(out_dir) / "tokenizer_config.json"
    config = json.loads(cfg_path.read_text(encoding="utf-8"))
    if config.get("bos_token") != BOS or config.get("eos_token") != EOS:
        raise ValueError(
            f"the chat template needs bos_token = eos_token = {BOS!r}; tokenizer config has "
            f"{config.get('bos_token')!r} / {config.get('eos_token')!r}"
        )
    config["chat_template"] = CHAT_TEMPLATE
    cfg_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return written
