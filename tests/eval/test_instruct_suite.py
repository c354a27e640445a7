"""The Instruct suite (paper Tab 7): chat prompts, MATH flex matching, IFEval scoring, the table command."""

from __future__ import annotations

import json
import math
import os
import subprocess

import pytest
from eval_models import transformers

from olmo2.chat import CHAT_TEMPLATE, encode_prompt, render
from olmo2.cli import main
from olmo2.eval.generative import generate_until
from olmo2.eval.instruct_suite import (
    IFEvalDataError,
    chat_metrics,
    chat_prompt_ids,
    load_chat_task,
    math_flex_correct,
    mmlu_letter,
)
from olmo2.eval.instruct_table import INSTRUCT_TABLE_TASKS, run_instruct_table
from olmo2.eval.lm import as_text_tokenizer
from olmo2.eval.reference_results import INSTRUCT, INSTRUCT_BENCHMARKS
from olmo2.model.checkpoint import save_model
from olmo2.model.config import ModelConfig
from olmo2.model.transformer import build_model
from olmo2.tokenizer import load_tokenizer, write_hf_tokenizer_files

LOWER = {
    "key": 1,
    "prompt": "Write about cats in lowercase.",
    "instruction_id_list": ["change_case:english_lowercase"],
}
ENDS = "Is there anything else I can help with?"
IFEVAL_ROWS = [
    {**LOWER, "kwargs": [{}]},
    {
        "key": 2,
        "prompt": "List two fruits as bullets, no commas, and end with the phrase.",
        "instruction_id_list": [
            "detectable_format:number_bullet_lists",
            "punctuation:no_comma",
            "startend:end_checker",
        ],
        "kwargs": [{"num_bullets": 2}, {}, {"end_phrase": ENDS}],
    },
]


@pytest.fixture
def ifeval_file(tmp_path):
    path = tmp_path / "input_data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in IFEVAL_ROWS))
    return path


def test_chat_prompts_are_the_chat_templates_output(tmp_path):
    """Multiturn ICL from the OLMES 8-shot GSM8K / 4-shot Minerva prompts, rendered as the template does."""
    gsm = load_chat_task("gsm8k:chat", limit=1).docs[0]
    assert len(gsm.messages) == 17 and [m["role"] for m in gsm.messages[:3]] == ["user", "assistant", "user"]
    assert gsm.messages[0]["content"].startswith("Question: There are 15 trees") and gsm.messages[0][
        "content"
    ].endswith("\nAnswer:")
    assert gsm.messages[1]["content"] == (
        "There are 15 trees originally. Then there were 21 trees after some more were planted. "
        "So there must have been 21 - 15 = 6. So the answer is 6."
    )
    assert gsm.messages[-1]["content"].startswith("Question: Janet") and gsm.gold == "18"
    assert "\n\n" not in gsm.stop and "<|user|>" in gsm.stop
    math_doc = load_chat_task("minerva_math:chat", limit=1).docs[0]
    assert len(math_doc.messages) == 9 and math_doc.messages[0]["content"].startswith(
        "Problem:\nFind the domain"
    )
    assert math_doc.messages[1]["content"].endswith(
        "Final Answer: The final answer is $[2,5)$. I hope it is correct."
    )
    assert math_doc.gold == "2" and math_doc.subject == "minerva_math_algebra"
    starts = [
        "Problem:\nFind the domain",
        "Problem:\nIf $\\det",
        "Problem:\nTerrell",
        "Problem:\nIf the system",
    ]
    for doc in load_chat_task("minerva_math:chat", limit=7).docs:  # one per subject: the same 4 Minerva shots
        shots = [m["content"] for m in doc.messages[:-1:2]]
        assert [q[: len(p)] for q, p in zip(shots, starts, strict=True)] == starts
        assert doc.messages[:-1] == math_doc.messages[:-1]

    tok = load_tokenizer()
    write_hf_tokenizer_files(tok, tmp_path)
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for doc in (gsm, math_doc, load_chat_task("mmlu:chat", limit=1).docs[0]):
        jinja = hf_tok.apply_chat_template(
            doc.messages, chat_template=CHAT_TEMPLATE, tokenize=False, add_generation_prompt=True
        )
        assert render(doc.messages, add_generation_prompt=True) == jinja
        ids = chat_prompt_ids(as_text_tokenizer(tok), [doc])[0]
        assert ids == encode_prompt(tok, doc.messages) and ids[0] == tok.eos_token_id


@pytest.mark.parametrize(
    ("generation", "gold", "correct"),
    [
        (r"So $x = \boxed{\frac{1}{2}}$.", "0.5", True),
        (r"Final Answer: The final answer is $\frac12$. I hope it is correct.", r"\frac{1}{2}", True),
        (r"\boxed{0.5} Final Answer: The final answer is $7$. I hope it is correct.", r"\frac{1}{2}", True),
        (r"The answer is \boxed{\sqrt{2}/2}", r"\frac{\sqrt{2}}{2}", True),
        (r"\boxed{3}", "2", False),
        ("I am not sure.", "2", False),
    ],
)
def test_math_flex_matching(generation, gold, correct):
    assert math_flex_correct(generation, gold) is correct


def test_math_scorer_macro_averages_subjects():
    task = load_chat_task("minerva_math:chat", limit=2)  # algebra and counting_and_probability
    golds = [d.gold for d in task.docs]
    metrics, records = chat_metrics(task, [f"\\boxed{{{golds[0]}}}", "no answer"])
    assert [r["correct"] for r in records] == [True, False]
    assert metrics["primary"] == 0.5 and metrics["primary_metric"] == "exact_match_flex"
    assert metrics["subjects"] == {"minerva_math_algebra": 1.0, "minerva_math_counting_and_probability": 0.0}


def test_mmlu_letter():
    assert mmlu_letter("Reasoning... Therefore, the answer is: (C).") == "C"
    assert mmlu_letter("Between (A) and (B), I pick (B)") == "B"
    assert mmlu_letter("no idea") is None


def test_ifeval_scores_fixed_responses(ifeval_file):
    task = load_chat_task("ifeval:chat", ifeval_data=ifeval_file)
    assert [d.messages for d in task.docs] == [
        [{"role": "user", "content": r["prompt"]}] for r in IFEVAL_ROWS
    ]
    good_list = f"* apple\n* pear\n{ENDS}"
    responses = {
        "both follow": [
            "cats are wonderful pets and they love to sleep in the warm sun all day long.",
            good_list,
        ],
        "loose only": [
            "Sure! Here it is:\ncats are wonderful pets and they love to sleep in the warm sun all day long.",
            f"Here:\n* apple\n* pear, ripe\n{ENDS}",
        ],
        "none": [
            "Cats Are Wonderful Pets And They Love To Sleep In The Warm Sun.",
            "* apple, pear",
        ],  # one bullet, a comma, no end phrase
    }
    expected = {
        "both follow": (1.0, 1.0, 1.0, 1.0),  # prompt loose, prompt strict, inst strict, inst loose
        "loose only": (0.5, 0.0, 2 / 4, 3 / 4),  # lowercase passes loosely (first line dropped); a comma
        "none": (0.0, 0.0, 0.0, 0.0),
    }
    for case, texts in responses.items():
        metrics, records = chat_metrics(task, texts)
        got = (metrics["primary"], metrics["prompt_strict"], metrics["inst_strict"], metrics["inst_loose"])
        assert got == pytest.approx(expected[case]), (case, records)
        assert metrics["primary_metric"] == "prompt_loose" and metrics["docs"] == 2


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        (
            json.dumps({"key": 3, "prompt": "x", "instruction_id_list": ["no:such_id"], "kwargs": [{}]}),
            "no:such_id",
        ),
        (
            json.dumps(
                {"key": 3, "prompt": "x", "instruction_id_list": ["punctuation:no_comma"], "kwargs": []}
            ),
            "kwargs",
        ),
        (json.dumps({"key": 3, "instruction_id_list": [], "kwargs": []}), "missing prompt"),
    ],
)
def test_bad_ifeval_file_names_the_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({**LOWER, "kwargs": [{}]}) + "\n\n" + line + "\n")
    with pytest.raises(IFEvalDataError, match=rf"bad\.jsonl:3: .*{message}"):
        load_chat_task("ifeval:chat", ifeval_data=path)
    with pytest.raises(IFEvalDataError, match="--ifeval-data"):
        load_chat_task("ifeval:chat")


def test_generation_never_stopping_is_cut_and_scored():
    """A model that never ends is cut at the task's limit; the cut text is what gets scored."""
    tok = as_text_tokenizer(load_tokenizer())
    script = tok.encode("So the answer is 18." + " more" * 100)

    class Babbler:
        max_length, eos_token_id = 10_000, None

        def generate(self, prompts, n):
            done = len(prompts[0]) - len(prompt)
            return [script[done : done + n]]

    task = load_chat_task("gsm8k:chat", limit=1)
    (prompt,) = chat_prompt_ids(tok, task.docs)
    limit = len(tok.encode("So the answer is 18.")) + 3
    texts = generate_until(Babbler(), tok, [prompt], [task.docs[0].stop], [limit], chunk=4)
    assert texts == ["So the answer is 18. more more more"]
    assert chat_metrics(task, texts)[0]["primary"] == 1.0


def test_instruct_table_command(tmp_path, ifeval_file, capsys):
    model_dir = tmp_path / "model"
    save_model(build_model(ModelConfig(d_model=32, n_layers=2, n_heads=4, mlp_hidden=64), seed=0), model_dir)
    out = tmp_path / "t.json"
    argv = [
        "eval",
        str(model_dir),
        "--table",
        "instruct",
        "--limit",
        "1",
        "--gen-max-tokens",
        "3",
        "--out",
        str(out),
    ]
    assert main([*argv, "--ifeval-data", str(ifeval_file)]) == 0
    table = json.loads(out.read_text())["table"]
    assert table["columns"] == list(INSTRUCT_BENCHMARKS)
    runnable = [c for c in INSTRUCT_BENCHMARKS if c in INSTRUCT_TABLE_TASKS]
    assert table["ran"] == runnable == ["DROP", "GSM8K", "IFE", "MATH", "MMLU"]
    assert "5-shot" in table["notes"]["DROP"]
    assert table["not_run"]["AE2"].startswith("needs a judge") and "BBH" in table["not_run"]
    model_row, refs = table["rows"][0], {r["name"]: r for r in table["rows"][1:]}
    assert model_row["avg"] is None and all(0 <= model_row["scores"][c] <= 100 for c in runnable)
    assert len(refs) == len(INSTRUCT) and refs["OLMo 2 7B"]["avg"] == 56.5
    olmo7 = dict(
        zip(INSTRUCT_BENCHMARKS, next(r for r in INSTRUCT if r.name == "OLMo 2 7B").scores, strict=True)
    )
    assert refs["OLMo 2 7B"]["avg_ran"] == pytest.approx(sum(olmo7[c] for c in runnable) / len(runnable))
    assert math.isclose(sum(refs["OLMo 2 7B"]["scores"].values()) / 10, 56.52)  # the paper's Avg rule
    md = out.with_suffix(".md").read_text()
    header = f"| model | Avg | Avg ({len(runnable)}) | AE2† | BBH† |"
    assert header in md and "| MATH | MMLU | Safety† | PQA† | TQA† |" in md and "needs a judge" in md
    assert "--limit 1" in capsys.readouterr().out
    assert main(argv) == 0  # without --ifeval-data the IFE column says what it needs
    assert "needs --ifeval-data" in json.loads(out.read_text())["table"]["not_run"]["IFE"]
    assert main([*argv, "--tasks", "gsm8k"]) == 4
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"key": 1, "prompt": "x"\n')
    capsys.readouterr()
    assert main([*argv, "--ifeval-data", str(bad)]) == 4  # bad input: exit 4, before any scoring
    assert "bad.jsonl:1: not valid JSON" in capsys.readouterr().err


def _without_timing(x):
    if isinstance(x, dict):
        return {k: _without_timing(v) for k, v in x.items() if k not in ("seconds", "timing")}
    return x


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs torchrun")
def test_two_gloo_ranks_equal_one_process(tmp_path, ifeval_file, torchrun):
    """Under torchrun the ranks split every column's batches; rank 0 writes what one process computes."""
    model_dir = tmp_path / "model"
    save_model(build_model(ModelConfig(d_model=32, n_layers=2, n_heads=4, mlp_hidden=64), seed=0), model_dir)
    opts = dict(limit=3, batch_size=2, gen_max_tokens=3, keep_docs=True)
    one = run_instruct_table(
        model_dir, ifeval_data=ifeval_file, out=tmp_path / "one.json", quiet=True, **opts
    )
    out = tmp_path / "two.json"
    args = ["--table", "instruct", "--ifeval-data", str(ifeval_file), "--limit", "3", "--batch-size", "2"]
    args += ["--gen-max-tokens", "3", "--per-doc", "--device", "cpu", "--out", str(out)]
    proc = subprocess.run(
        [*torchrun(2), "-m", "olmo2.cli", "eval", str(model_dir), *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads(out.read_text())
    assert two["settings"]["ranks"] == 2 and one["settings"]["ranks"] == 1
    assert _without_timing(two["tasks"]) == json.loads(json.dumps(_without_timing(one["tasks"])))
    assert two["table"] == json.loads(json.dumps(one["table"]))
    assert proc.stdout.count("table written to") == 1
