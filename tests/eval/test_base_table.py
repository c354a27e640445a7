"""`olmo2 eval --table base`, the QA generation tasks end to end, and the local AGIEval/MMLU-Pro files."""

from __future__ import annotations

import json

import pytest
import torch

from olmo2.cli import main
from olmo2.eval.base_table import base_table, format_markdown
from olmo2.eval.generative import qa_metrics
from olmo2.eval.heldout import AGIEVAL_TASKS, LocalDataError, read_agieval
from olmo2.eval.lm import EvalLM, as_text_tokenizer
from olmo2.eval.reference_results import BASE, BASE_BENCHMARKS
from olmo2.eval.tasks import EvalDataError, load_task
from olmo2.model.checkpoint import save_model
from olmo2.model.config import ModelConfig
from olmo2.model.transformer import build_model
from olmo2.tokenizer import load_tokenizer


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def write_agieval(folder, n=3):
    folder.mkdir()
    for task in AGIEVAL_TASKS:
        rows = [
            {
                "passage": "A passage." if task.endswith("rc") else None,
                "question": f"{task} question {i}?",
                "options": ["(A)one", "(B)two", "(C)three", "(D)four"],
                "label": "ABCD"[i % 4],
                "other": "ignored",
            }
            for i in range(n)
        ]
        _write_jsonl(folder / f"{task}.jsonl", rows)
    return folder


def write_mmlu_pro(folder):
    folder.mkdir()
    row = lambda i, cat: {  # noqa: E731
        "question": f"q{i}?",
        "options": [f"o{j}" for j in range(10)],
        "answer_index": i % 10,
        "category": cat,
    }
    _write_jsonl(folder / "test.jsonl", [row(i, c) for c in ("law", "math") for i in range(3)])
    _write_jsonl(folder / "validation.jsonl", [row(i, c) for c in ("law", "math") for i in range(5)])
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = build_model(ModelConfig(d_model=32, n_layers=2, n_heads=4, mlp_hidden=64), seed=0)
    path = tmp_path_factory.mktemp("ck") / "model"
    save_model(model, path)
    return path


def test_table_base_end_to_end(checkpoint, tmp_path, capsys):
    out = tmp_path / "t.json"
    argv = [
        "eval",
        str(checkpoint),
        "--table",
        "base",
        "--limit",
        "2",
        "--gen-max-tokens",
        "3",
        "--out",
        str(out),
    ]
    argv += [
        "--agieval",
        str(write_agieval(tmp_path / "agi")),
        "--mmlu-pro",
        str(write_mmlu_pro(tmp_path / "pro")),
    ]
    assert main([*argv, "--quiet"]) == 0
    res = json.loads(out.read_text())
    table = res["table"]
    assert table["columns"] == list(BASE_BENCHMARKS) and table["ran"] == list(BASE_BENCHMARKS)
    mine = table["rows"][0]
    expected = [100 * res["tasks"][table["tasks"][c]]["primary"] for c in BASE_BENCHMARKS]
    assert list(mine["scores"].values()) == pytest.approx(expected)
    assert mine["avg"] == pytest.approx(sum(expected) / 10) == mine["avg_ran"]
    olmo7 = next(r for r in table["rows"] if r["name"] == "OLMo 2 7B")
    assert olmo7["avg"] == 62.9 and olmo7["scores"]["DROP"] == 60.9
    assert len(table["rows"]) == 1 + len(BASE)
    assert res["tasks"]["drop:gen"]["primary_metric"] == "f1" and res["tasks"]["drop:gen"]["docs"] == 2
    assert res["tasks"]["agieval:mc"]["docs"] == 2 and res["tasks"]["mmlu_pro:mc"]["docs"] == 2
    md = out.with_suffix(".md").read_text()
    assert md.count("\n| ") == len(table["rows"]) + 1 and "--limit 2" in md
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()


def test_columns_not_run_are_marked_and_averaged_like_for_like():
    tasks = {e: {"primary": 0.5} for e in ("mmlu:mc", "arc_challenge", "hellaswag", "winogrande")}
    tasks.update({e: {"primary": 0.25} for e in ("naturalqs:gen", "drop:gen", "gsm8k:gen", "triviaqa:gen")})
    table = base_table({"tasks": tasks, "settings": {"limit": None}}, "mine", {"AGIEval": "no copy given"})
    mine = table["rows"][0]
    assert mine["avg"] is None and mine["avg_ran"] == pytest.approx(37.5)
    assert table["not_run"] == {"AGIEval": "no copy given", "MMLU-Pro": "not run"}
    olmo7 = next(r for r in table["rows"] if r["name"] == "OLMo 2 7B")
    ran = [63.7, 79.8, 83.8, 77.2, 36.9, 60.9, 67.5, 78.0]  # paper Tab 6 without AGIEval, MMLU-Pro
    assert olmo7["avg_ran"] == pytest.approx(sum(ran) / 8) and olmo7["avg"] == 62.9
    md = format_markdown(table)
    assert "AGIEval†" in md and "† AGIEval: no copy given" in md and "| **mine** | – | 37.5 |" in md


def test_local_files_are_checked_naming_file_and_line(tmp_path):
    folder = write_agieval(tmp_path / "agi")
    bad = folder / "lsat-ar.jsonl"
    lines = bad.read_text().splitlines()
    lines[1] = json.dumps({"question": "q", "options": ["(A)x", "(B)y"]})
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(LocalDataError, match=r"lsat-ar.jsonl:2: field 'label' must be a str \(missing\)"):
        read_agieval(folder)
    bad.write_text("\n".join([lines[0], lines[2]]) + "\n")
    (folder / "sat-en.jsonl").unlink()
    with pytest.raises(LocalDataError, match="sat-en.jsonl: file not found"):
        read_agieval(folder)
    with pytest.raises(EvalDataError, match="--mmlu-pro DIR"):
        load_task("mmlu_pro:mc", limit=1)


def test_local_prompts(tmp_path):
    data = load_task("agieval:mc", local_data={"agieval": write_agieval(tmp_path / "agi")})
    assert len(data.docs) == 3 * len(AGIEVAL_TASKS) and {d.subject for d in data.docs} == set(AGIEVAL_TASKS)
    first, second = data.docs[0], data.docs[1]  # aqua-rat: doc 0's shot is question 1, the others' is 0
    assert first.contexts[0].startswith("Question: aqua-rat question 1?\n A. one\n B. two")
    assert second.contexts[0].startswith("Question: aqua-rat question 0?") and second.gold == 1
    assert first.continuations == [" A", " B", " C", " D"]
    pro = load_task("mmlu_pro:mc", limit=4, local_data={"mmlu_pro": write_mmlu_pro(tmp_path / "pro")})
    assert [d.subject for d in pro.docs] == [""] * 4  # micro average
    assert (
        pro.docs[2]
        .contexts[0]
        .startswith("The following are multiple choice questions (with answers) about math.")
    )
    assert pro.docs[0].contexts[0].count("Question:") == 6 and len(pro.docs[0].continuations) == 10


class _Repeater(EvalLM):
    """Never emits a stop sequence: always the same token."""

    max_length, vocab_size, eos_token_id, device = 100_000, 100_352, 100257, torch.device("cpu")

    def __init__(self, token: int):
        self.token = token

    def generate(self, prompts, max_new_tokens):
        return [[self.token] * max_new_tokens for _ in prompts]


def test_generation_without_stop_is_cut_at_the_limit_and_scored():
    tok = as_text_tokenizer(load_tokenizer())
    docs = load_task("naturalqs:gen", limit=3).docs
    assert docs[0].max_gen_toks == 50 and docs[0].stop == ("Question:", "Q:", "\n\n")
    word = tok.encode(" Justin")
    assert len(word) == 1
    metrics, records = qa_metrics(_Repeater(word[0]), tok, docs, "squad")
    assert records[0]["generation"] == " Justin" * 50
    assert records[0]["gold"] == ["Justin Timberlake"]
    assert records[0]["f1"] == pytest.approx(2 * (1 / 50) * (1 / 2) / (1 / 50 + 1 / 2))
    assert metrics["f1"] == pytest.approx(records[0]["f1"] / 3) and metrics["exact_match"] == 0.0
