"""The chat format (spec §6.1) with the real dolma2 tokenizer: rendering, the loss mask, and parity with
``transformers.apply_chat_template`` on the exported HF tokenizer + ``CHAT_TEMPLATE``."""

from __future__ import annotations

import pytest

from olmo2.chat import (
    CHAT_TEMPLATE,
    ChatFormatError,
    check_messages,
    decode_response,
    encode_chat,
    encode_prompt,
    render,
    special_token_strings,
    write_hf_chat_files,
)
from olmo2.tokenizer import load_tokenizer

EOS_ID = 100257
CARD_REPLY = (
    "I'm just a computer program, so I don't have feelings, but I'm functioning as expected. "
    "How can I assist you today?"
)
CONVERSATIONS = [
    [{"role": "user", "content": "How are you doing?"}, {"role": "assistant", "content": CARD_REPLY}],
    [
        {"role": "system", "content": "You are OLMo, a helpful assistant."},
        {"role": "user", "content": "héllo wörld — naïve café 🤖 日本語"},
        {"role": "assistant", "content": "  Leading spaces,\ttabs\r\nand CRLF.  "},
        {"role": "user", "content": "def f(x):\n    return x ** 2  # 1234567890"},
        {"role": "assistant", "content": "```python\nprint(f(3))\n```\n9"},
    ],
    [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ],
    [{"role": "user", "content": "Starts with newline?"}, {"role": "assistant", "content": "\n\nYes."}],
]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def hf_tok(tok, tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    out = tmp_path_factory.mktemp("hf_tok")
    write_hf_chat_files(tok, out)
    return transformers.AutoTokenizer.from_pretrained(out)


def test_render_matches_spec_example():
    text = render(CONVERSATIONS[0])
    assert text == f"<|endoftext|><|user|>\nHow are you doing?\n<|assistant|>\n{CARD_REPLY}<|endoftext|>"


def test_render_rules():
    msgs = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "U1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "U2"},
    ]
    expected = "<|endoftext|><|system|>\nS\n<|user|>\nU1\n<|assistant|>\nA1<|endoftext|>\n<|user|>\nU2\n"
    assert render(msgs) == expected
    assert render(msgs, add_generation_prompt=True) == expected + "<|assistant|>\n"


@pytest.mark.parametrize("conv", range(len(CONVERSATIONS)))
@pytest.mark.parametrize("gen", [False, True])
def test_hf_apply_chat_template_parity(tok, hf_tok, conv, gen):
    msgs = CONVERSATIONS[conv]
    ours = encode_chat(tok, msgs, add_generation_prompt=gen)
    assert hf_tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen) == render(msgs, gen)
    out = hf_tok.apply_chat_template(
        msgs, tokenize=True, return_dict=True, add_generation_prompt=gen, return_assistant_tokens_mask=True
    )
    assert out["input_ids"] == ours.input_ids
    assert out["assistant_masks"] == ours.assistant_mask
    assert hf_tok.chat_template == CHAT_TEMPLATE


def test_hf_template_rejects_unknown_role(hf_tok):
    with pytest.raises(Exception, match="unknown chat role"):
        hf_tok.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_mask_is_assistant_content_plus_eos(tok):
    msgs = CONVERSATIONS[1]
    enc = encode_chat(tok, msgs)
    assert enc.input_ids[0] == EOS_ID and enc.assistant_mask[0] == 0  # the BOS is not trained
    trained = tok.decode([t for t, m in zip(enc.input_ids, enc.assistant_mask, strict=True) if m])
    assert trained == "".join(m["content"] + "<|endoftext|>" for m in msgs if m["role"] == "assistant")
    assert enc.labels == [t if m else -100 for t, m in zip(enc.input_ids, enc.assistant_mask, strict=True)]
    last = encode_chat(tok, msgs, train_on="last")
    assert tok.decode([t for t, m in zip(last.input_ids, last.assistant_mask, strict=True) if m]) == (
        msgs[-1]["content"] + "<|endoftext|>"
    )
    assert last.input_ids == enc.input_ids


def _open_instruct_labels(hf_tok, msgs):
    """open-instruct's sft_tulu_tokenize_and_truncate_v1 masking, by prefix re-tokenisation (reference)."""
    ids = hf_tok.apply_chat_template(msgs, tokenize=True, return_dict=True)["input_ids"]
    labels = list(ids)

    def n(prefix, gen):
        return len(
            hf_tok.apply_chat_template(prefix, tokenize=True, return_dict=True, add_generation_prompt=gen)[
                "input_ids"
            ]
        )

    for i, m in enumerate(msgs):
        if m["role"] == "assistant":
            continue
        start = 0 if i == 0 else n(msgs[:i], False)
        next_is_assistant = i + 1 < len(msgs) and msgs[i + 1]["role"] == "assistant"
        end = n(msgs[: i + 1], next_is_assistant)
        labels[start:end] = [-100] * (end - start)
    return labels


@pytest.mark.parametrize("conv", [0, 1, 2])  # conversation 3 has a token straddling the header (see chat.py)
def test_mask_matches_open_instruct_masking(tok, hf_tok, conv):
    msgs = CONVERSATIONS[conv]
    assert encode_chat(tok, msgs).labels == _open_instruct_labels(hf_tok, msgs)


def test_boundary_token_straddling_header_is_trained(tok, hf_tok):
    enc = encode_chat(tok, CONVERSATIONS[3])
    first = enc.assistant_mask.index(1)
    assert tok.decode([enc.input_ids[first]]) == ">\n\n\n"  # header's ">\n" merged with the content's "\n"
    oi = _open_instruct_labels(hf_tok, CONVERSATIONS[3])  # open-instruct masks that one token, nothing else
    assert [i for i, (a, b) in enumerate(zip(enc.labels, oi, strict=True)) if a != b] == [first]


def test_encode_prompt_and_decode_response(tok):
    prompt = encode_prompt(tok, CONVERSATIONS[0][:1])
    assert tok.decode(prompt).endswith("How are you doing?\n<|assistant|>\n")
    full = encode_chat(tok, CONVERSATIONS[0])
    assert full.input_ids[: len(prompt)] == prompt  # the generation prompt is a prefix of the training ids
    assert full.assistant_mask[: len(prompt)] == [0] * len(prompt)
    with pytest.raises(ChatFormatError, match="assistant"):
        encode_prompt(tok, CONVERSATIONS[0])
    reply = full.input_ids[len(prompt) :]
    assert decode_response(tok, reply) == (CARD_REPLY, True)
    assert decode_response(tok, reply[:-1] + [100277]) == (tok.decode(reply[:-1] + [100277]), False)


@pytest.mark.parametrize(
    "messages,reason",
    [
        ("hello", "not_a_list"),
        ([], "empty_messages"),
        ([{"role": "user"}], "bad_message"),
        (["hi"], "bad_message"),
        ([{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}], "unknown_role"),
        ([{"role": "user", "content": "  "}, {"role": "assistant", "content": "y"}], "empty_content"),
        ([{"role": "user", "content": 3}, {"role": "assistant", "content": "y"}], "empty_content"),
        ([{"role": "user", "content": "x"}], "no_assistant_turn"),
        (
            [{"role": "user", "content": "x"}, {"role": "assistant", "content": "a<|endoftext|>b"}],
            "special_token_in_content",
        ),
    ],
)
def test_check_messages_reasons(messages, reason):
    with pytest.raises(ChatFormatError) as e:
        check_messages(messages, forbidden=("<|endoftext|>",))
    assert e.value.reason == reason


def test_check_messages_normalises(tok):
    msgs = [{"role": "user", "content": "x", "name": "bob"}, {"role": "assistant", "content": "y"}]
    assert check_messages(msgs) == [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
    assert check_messages(msgs[:1], require_assistant=False) == [{"role": "user", "content": "x"}]
    specials = special_token_strings(tok)
    assert "<|endoftext|>" in specials and "<|pad|>" in specials and "<|user|>" not in specials
