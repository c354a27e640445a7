"""DROP F1/EM and SQuAD-style F1/EM equal the reference implementations on every document of a sample.

References: lm-eval's DROP utils (the official DROP metric, with scipy's Hungarian matching) and the
SQuAD v1.1 normalisation and F1 lm-eval ships (qasper) with its max-over-ground-truths. Predictions
cover exact golds, perturbed golds (case, punctuation, articles, number formats, extra words), partial
spans, other documents' answers and empty strings.
"""

from __future__ import annotations

import random

import pytest

from olmo2.eval.answer_metrics import drop_em_f1, squad_em_f1
from olmo2.eval.tasks import load_task

drop_ref = pytest.importorskip("lm_eval.tasks.drop.utils")
squad_ref = pytest.importorskip("lm_eval.tasks.qasper.metrics")
from lm_eval.api.metrics import metric_max_over_ground_truths  # noqa: E402

N_DOCS = 50


def _perturb(answer: str, rng: random.Random) -> str:
    words = answer.split()
    choice = rng.randrange(8)
    if choice == 0:
        return answer.upper() + "."
    if choice == 1:
        return "The " + answer + " indeed"
    if choice == 2 and len(words) > 1:
        return " ".join(words[: len(words) // 2])  # a partial span
    if choice == 3:
        return answer.replace(" ", "-")
    if choice == 4 and answer.replace(",", "").isdigit():
        return f"{answer}.0 points"
    if choice == 5:
        return f"{answer} and {answer}"
    if choice == 6:
        return f"  {answer}\n"
    return answer


def _predictions(golds: list[list[str]], rng: random.Random) -> list[list[str]]:
    """For each doc: its gold, perturbed golds, another doc's answer, an empty and a junk string."""
    out = []
    for i, doc_golds in enumerate(golds):
        first = doc_golds[0]
        other = golds[(i + 7) % len(golds)][0]
        preds = [
            first,
            _perturb(first, rng),
            _perturb(doc_golds[-1], rng),
            other,
            "",
            "$%",
            f"{first} {other}",
        ]
        out.append(preds)
    return out


@pytest.fixture(scope="module")
def drop_docs():
    return load_task("drop:gen", limit=N_DOCS).docs


def test_drop_matches_the_official_metric(drop_docs):
    rng = random.Random(0)
    golds = [[" ".join(g) for g in d.answers] for d in drop_docs]
    checked = nonzero = 0
    for d, preds in zip(drop_docs, _predictions(golds, rng), strict=True):
        spans = [tuple(g) for g in d.answers]
        for pred in [*preds, list(spans[0]), [*spans[0], "extra span"]]:
            ref = drop_ref.process_results({"answers": spans}, [pred] if isinstance(pred, str) else pred)
            got = drop_em_f1(pred, spans)
            assert got == (float(ref["em"]), float(ref["f1"])), (pred, spans)
            checked += 1
            nonzero += got[1] > 0
    assert checked == N_DOCS * 9 and nonzero > N_DOCS  # the sample exercises real overlaps


@pytest.mark.parametrize("task", ["naturalqs:gen", "triviaqa:gen", "squad:gen"])
def test_squad_style_matches_squad_v11(task):
    docs = load_task(task, limit=N_DOCS).docs
    assert len(docs) == N_DOCS
    rng = random.Random(1)
    golds = [list(d.answers) for d in docs]
    partial = 0
    for doc_golds, preds in zip(golds, _predictions(golds, rng), strict=True):
        for pred in preds:
            em = metric_max_over_ground_truths(
                lambda p, g: float(squad_ref.normalize_answer(p) == squad_ref.normalize_answer(g)),
                pred,
                doc_golds,
            )
            f1 = metric_max_over_ground_truths(
                lambda p, g: squad_ref.f1_abstractive([p], [g]), pred, doc_golds
            )
            assert squad_em_f1(pred, doc_golds) == (em, pytest.approx(f1, abs=0)), (pred, doc_golds)
            partial += 0 < f1 < 1
    assert partial > 10


def test_drop_numbers_and_spans():
    assert drop_em_f1(" 2 touchdowns", [("2",)]) == (0.0, 0.67)
    assert drop_em_f1("$5", [("5",)]) == (1.0, 1.0)  # punctuation goes, then 5 -> 5.0
    assert drop_em_f1("3", [("2",)]) == (0.0, 0.0)  # numbers must agree
    assert drop_em_f1(["Smith", "Jones"], [("Jones", "Smith")]) == (1.0, 1.0)  # span order is free
    assert drop_em_f1("anything", [("",)]) == (0.0, 0.0)  # blank golds are skipped


def test_full_task_sizes_and_settings():
    """The OLMES samples and TriviaQA's validation split, with their stop sequences and token limit."""
    expected = {"drop:gen": 1000, "naturalqs:gen": 1000, "triviaqa:gen": 7993}
    for task, n in expected.items():
        docs = load_task(task).docs
        assert len(docs) == n and all(d.answers and d.max_gen_toks == 50 for d in docs), task
    trivia = load_task("triviaqa:gen", limit=1).docs[0]
    assert trivia.contexts[0].count("Question: ") == 6 and trivia.contexts[0].endswith(
        "Question: Which Lloyd Webber musical premiered in the US on 10th December 1993?\nAnswer:"
    )
    assert trivia.continuations == [" Sunset Boulevard"] and "Sunset Blvd" in trivia.answers
