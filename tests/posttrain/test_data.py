"""Post-training data: readers count every bad record by reason and place, and batching (padding, packing)."""

from __future__ import annotations

import json

import pytest
import torch

from olmo2.chat import encode_chat, encode_prompt
from olmo2.model.config import ModelConfig
from olmo2.model.loss import shift_labels
from olmo2.model.transformer import Olmo2
from olmo2.posttrain.data import (
    PAD_TOKEN_ID,
    DataError,
    DataReport,
    SFTExample,
    collate,
    iter_sft,
    load_preferences,
    load_rl_prompts,
    load_sft,
    pack_examples,
)
from olmo2.posttrain.losses import sft_loss
from olmo2.posttrain.verifiers import verifiable_reward
from olmo2.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def user(text):
    return {"role": "user", "content": text}


def asst(text):
    return {"role": "assistant", "content": text}


def write_jsonl(path, records):
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


GOOD = {"messages": [user("What is 2+2?"), asst("4")]}
LONG = {"messages": [user("Tell me a story."), asst("Once upon a time " * 40)]}
SFT_RECORDS = [
    GOOD,
    "{not json",
    "[1, 2]",
    {"text": "no messages"},
    {"messages": [{"role": "tool", "content": "x"}, asst("y")]},
    {"messages": [user(""), asst("y")]},
    {"messages": [user("only a question")]},
    {"messages": [user("hi"), asst("bye<|endoftext|>")]},
    "",  # blank line: not a record
    LONG,
    {"messages": [user("word " * 60), asst("short")]},  # truncation would cut the whole reply
]


def test_load_sft_counts_every_record(tok, tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", SFT_RECORDS)
    examples, report = load_sft(path, tok, max_length=40)
    assert report.read == 10 and report.used == 2 and report.n_skipped == 8
    assert report.read == report.used + report.n_skipped
    assert dict(report.skipped) == {
        "bad_json": 1,
        "not_an_object": 1,
        "not_a_list": 1,
        "unknown_role": 1,
        "empty_content": 1,
        "no_assistant_turn": 1,
        "special_token_in_content": 1,
        "no_targets_after_truncation": 1,
    }
    assert report.modified["truncated"] == 1
    assert report.where["bad_json"][0].startswith(f"{path}:2: ")
    assert report.where["no_targets_after_truncation"][0].startswith(f"{path}:11: ")  # the blank line counts
    assert examples[0].input_ids == encode_chat(tok, GOOD["messages"]).input_ids
    assert examples[0].where == f"{path}:1"
    assert len(examples[1]) == 40 and examples[1].truncated and examples[1].n_targets > 0
    summary = report.summary()
    assert "read 10, used 2, skipped 8" in summary and "modified truncated: 1" in summary
    assert json.loads(json.dumps(report.to_dict()))["skipped"]["bad_json"] == 1


def test_load_sft_skip_too_long_and_strict(tok, tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", SFT_RECORDS)
    examples, report = load_sft(path, tok, max_length=40, too_long="skip")
    assert report.skipped["too_long"] == 2 and report.used == 1 and report.modified["truncated"] == 0
    assert len(examples) == 1
    with pytest.raises(DataError, match=rf"^{path}:2: bad_json"):
        load_sft(path, tok, strict=True)
    with pytest.raises(ValueError, match="too_long"):
        load_sft(path, tok, too_long="drop")


def test_iter_sft_streams_into_the_report(tok, tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", [GOOD, "{bad", GOOD])
    report = DataReport("sft")
    stream = iter_sft(path, tok, report=report)
    next(stream)
    assert (report.read, report.used) == (1, 1)
    assert len(list(stream)) == 1
    assert (report.read, report.used, dict(report.skipped)) == (3, 2, {"bad_json": 1})


def test_load_sft_several_files(tok, tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [GOOD, GOOD])
    b = write_jsonl(tmp_path / "b.jsonl", [GOOD])
    examples, report = load_sft([a, b], tok)
    assert report.read == report.used == 3
    assert [e.where for e in examples] == [f"{a}:1", f"{a}:2", f"{b}:1"]


PREF_RECORDS = [
    {"chosen": [user("2+2?"), asst("4")], "rejected": [user("2+2?"), asst("5")]},
    {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon."},
    {
        "prompt": [user("Hi")],
        "chosen": [asst("Hello!")],
        "rejected": {"role": "assistant", "content": "Go away."},
    },
    {
        "prompt": "Hi",
        "chosen": [user("Hi"), asst("Hello!")],
        "rejected": [user("Hi"), asst("Yo.")],
    },  # full convs
    {"chosen": [user("2+2?"), asst("4")], "rejected": [user("3+3?"), asst("5")]},
    {"chosen": [user("2+2?"), asst("4")], "rejected": [user("2+2?"), asst("4")]},
    {"chosen": [user("2+2?"), asst("4")], "rejected": [asst("4"), user("2+2?")]},
    {"chosen": [user("2+2?"), asst("4")]},
    {"prompt": "word " * 60, "chosen": "a", "rejected": "b"},
    {"prompt": "Story?", "chosen": "long " * 60, "rejected": "short"},
    {"chosen": [asst("4")], "rejected": [asst("5")]},
]


def test_load_preferences(tok, tmp_path):
    path = write_jsonl(tmp_path / "pref.jsonl", PREF_RECORDS)
    pairs, report = load_preferences(path, tok, max_length=40)
    assert report.read == 11 and report.used == 4
    assert dict(report.skipped) == {
        "prompt_mismatch": 1,
        "response_not_assistant": 1,
        "identical_responses": 1,
        "missing_field": 1,
        "prompt_too_long": 1,
        "too_long": 1,
        "no_prompt": 1,
    }
    assert report.where["too_long"][0].startswith(f"{path}:10: ")
    p = pairs[1]
    assert p.prompt_ids == encode_prompt(tok, [user("Capital of France?")])
    for side, reply in ((p.chosen, "Paris."), (p.rejected, "Lyon.")):
        assert side.input_ids[: len(p.prompt_ids)] == p.prompt_ids
        trained = [t for t in side.labels if t != -100]
        assert tok.decode(trained) == reply + "<|endoftext|>"
    assert pairs[2].chosen.input_ids == pairs[3].chosen.input_ids  # both ways of writing the same pair
    truncated, report = load_preferences(path, tok, max_length=40, too_long="truncate")
    assert report.used == 5 and report.modified["truncated"] == 1
    assert len(truncated[-1].chosen) == 40


def test_preferences_train_on(tok, tmp_path):
    conv = [user("a"), asst("b"), user("c")]
    path = write_jsonl(
        tmp_path / "p.jsonl", [{"chosen": [*conv, asst("yes")], "rejected": [*conv, asst("no")]}]
    )
    (every,), _ = load_preferences(path, tok)
    (last,), _ = load_preferences(path, tok, train_on="last")
    assert tok.decode([t for t in every.chosen.labels if t != -100]) == "b<|endoftext|>yes<|endoftext|>"
    assert tok.decode([t for t in last.chosen.labels if t != -100]) == "yes<|endoftext|>"


RL_RECORDS = [
    {"messages": [user("What is 2+2?")], "ground_truth": "4", "dataset": "gsm8k"},
    {"prompt": "Solve x+1=2.", "ground_truth": "1", "verifier": "MATH", "id": 7},
    {
        "messages": [user("Write in lowercase."), asst("ref")],
        "ground_truth": {"type": "lowercase"},
        "verifier": "ifeval",
    },
    {"messages": [user("x")], "ground_truth": "4", "verifier": "code"},
    {"messages": [user("x")], "verifier": "gsm8k"},
    {"messages": [user("x")], "ground_truth": {"type": "nope"}, "verifier": "ifeval"},
    {"messages": [user("x"), asst("y"), asst("z")], "ground_truth": "1", "verifier": "math"},
    {"messages": [user("word " * 60)], "ground_truth": "1", "verifier": "math"},
    {"messages": [{"role": "system", "content": "be nice"}], "ground_truth": "1", "verifier": "math"},
]


def test_load_rl_prompts(tok, tmp_path):
    path = write_jsonl(tmp_path / "rl.jsonl", RL_RECORDS)
    prompts, report = load_rl_prompts(path, tok, max_prompt_length=40)
    assert report.read == 9 and report.used == 3
    assert dict(report.skipped) == {
        "unknown_verifier": 1,
        "missing_ground_truth": 1,
        "bad_ground_truth": 1,
        "prompt_not_user": 2,
        "prompt_too_long": 1,
    }
    assert report.modified["dropped_trailing_assistant"] == 2
    assert [p.verifier for p in prompts] == ["gsm8k", "math", "ifeval"]
    assert prompts[0].prompt_ids == encode_prompt(tok, [user("What is 2+2?")])
    assert prompts[1].messages == [user("Solve x+1=2.")] and prompts[1].extra == {"id": 7}
    assert prompts[2].messages == [user("Write in lowercase.")]
    with pytest.raises(DataError, match=rf"{path}:4: unknown_verifier"):
        load_rl_prompts(path, tok, strict=True)


def test_load_rl_prompts_recognises_library_instructions(tok, tmp_path):
    """open-instruct's IF-constraint ground truths (a Python literal of instruction ids and kwargs) load;
    one whose NLTK data cannot be had offline is skipped with the resource named, counts adding up."""
    sentences = [
        {
            "instruction_id": ["length_constraints:number_sentences", "punctuation:no_comma"],
            "kwargs": [{"num_sentences": 2, "relation": "less than"}, None],
        }
    ]
    stopwords = [{"instruction_id": ["ratio:stop_words"], "kwargs": [{"percentage": 40}]}]
    old = {"func_name": "validate_title", "N": None}
    path = write_jsonl(
        tmp_path / "if.jsonl",
        [
            {
                "messages": [user("One sentence, no commas.")],
                "ground_truth": str(sentences),
                "dataset": "ifeval",
            },
            {"messages": [user("Add a title.")], "ground_truth": json.dumps(old), "dataset": "ifeval_old"},
            {"messages": [user("Few stopwords.")], "ground_truth": str(stopwords), "dataset": "ifeval"},
        ],
    )
    prompts, report = load_rl_prompts(path, tok)
    assert (report.read, report.used, dict(report.skipped)) == (3, 2, {"bad_ground_truth": 1})
    assert "stopwords" in str(report.where["bad_ground_truth"])
    one, two = prompts
    assert verifiable_reward(one.verifier, "Just one sentence here.", one.ground_truth) == 10.0
    assert verifiable_reward(one.verifier, "First one. Second one.", one.ground_truth) == 0.0
    assert verifiable_reward(two.verifier, "<<Rain>>\nIt rains.", two.ground_truth) == 10.0


def ex(ids, labels=None):
    return SFTExample(list(ids), list(ids) if labels is None else list(labels))


def test_collate_pads_right():
    batch = collate([ex([1, 2, 3], [-100, 2, 3]), ex([4, 5])], pad_to_multiple_of=4)
    assert batch.input_ids.tolist() == [[1, 2, 3, PAD_TOKEN_ID], [4, 5, PAD_TOKEN_ID, PAD_TOKEN_ID]]
    assert batch.labels.tolist() == [[-100, 2, 3, -100], [4, 5, -100, -100]]
    assert batch.segment_ids.tolist() == [[1, 1, 1, 0], [1, 1, 0, 0]]
    assert batch.n_targets == 4


def test_pack_examples_keeps_every_example_whole():
    examples = [ex(range(n)) for n in (3, 4, 2, 5, 1, 6)]
    rows = pack_examples(examples, seq_len=7)
    assert [r.lengths for r in rows] == [[3, 4], [2, 5], [1, 6]]
    assert [i for r in rows for i in r.input_ids] == [i for e in examples for i in e.input_ids]
    batch = collate(rows)
    assert batch.position_ids[0].tolist() == [0, 1, 2, 0, 1, 2, 3]
    assert batch.segment_ids[2].tolist() == [1, 2, 2, 2, 2, 2, 2]
    mask = batch.attention_mask_4d()[0, 0]
    assert mask[4, 3] and not mask[3, 2] and not mask[2, 3]  # causal, and not across examples
    with pytest.raises(ValueError, match="seq_len"):
        pack_examples([ex(range(8))], seq_len=7)
    fixed = collate(rows, length=8)
    assert fixed.input_ids.shape == (3, 8) and fixed.segment_ids[0].tolist() == [1, 1, 1, 2, 2, 2, 2, 0]
    assert fixed.example_lengths() == [3, 4, 2, 5, 1, 6]  # what SFT's MFU counts: padding left out
    with pytest.raises(ValueError, match="length"):
        collate(rows, length=6)


def test_packed_forward_with_mask_equals_separate_examples():
    """With positions + block mask a packed row computes exactly what separate rows do; without, the
    later examples see the earlier ones (what docs/posttrain.md says)."""
    cfg = ModelConfig(
        d_model=32, n_layers=2, n_heads=4, mlp_hidden=64, vocab_size=97, eos_token_id=0, pad_token_id=1
    )
    model = Olmo2(cfg).eval()
    model.init_weights(torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    examples = [ex(torch.randint(2, 97, (n,), generator=g).tolist()) for n in (5, 3, 6)]
    for ex_ in examples:
        ex_.labels[0] = -100
    packed = collate(pack_examples(examples, seq_len=16), pad_id=1)
    separate = collate(examples, pad_id=1)
    with torch.no_grad():
        exact = model(packed.input_ids, positions=packed.position_ids, mask=packed.attention_mask_4d())
        leaky = model(packed.input_ids)
        alone = model(separate.input_ids)
    starts = [0, 5, 8]
    for i, (s, e) in enumerate(zip(starts, examples, strict=True)):
        torch.testing.assert_close(exact[0, s : s + len(e)], alone[i, : len(e)], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(leaky[0, 5:8], alone[1, :3], atol=1e-3)
    # "sum" reduction: the packed loss is the sum of the examples' losses
    packed_loss, n = sft_loss(exact, packed.labels)
    alone_loss, m = sft_loss(alone, separate.labels)
    torch.testing.assert_close(packed_loss, alone_loss, atol=1e-4, rtol=1e-5)
    assert int(n) == int(m) == sum(len(e) - 1 for e in examples)
    # the model's chunked loss (pretraining path) gives the same sum from hidden states
    with torch.no_grad():
        chunked = model(
            packed.input_ids,
            labels=shift_labels(packed.labels),
            positions=packed.position_ids,
            mask=packed.attention_mask_4d(),
        )
    torch.testing.assert_close(chunked.ce_loss, packed_loss, atol=1e-4, rtol=1e-5)
