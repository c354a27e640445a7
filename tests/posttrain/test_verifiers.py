"""RLVR verifiers and the reward (spec §6.4): each check on hand-made positives and negatives."""

from __future__ import annotations

import json

import pytest

from olmo2.posttrain.verifiers import (
    NO_EOS_PENALTY,
    check_ground_truth,
    check_ifeval,
    extract_gsm8k_answer,
    extract_math_answer,
    last_boxed,
    math_equal,
    normalize_math,
    normalize_number,
    verifiable_reward,
    verify,
    verify_gsm8k,
    verify_math,
)

GSM8K_SOLUTION = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"
)


@pytest.mark.parametrize(
    "text,number",
    [
        ("$1,000.00", "1000"),
        ("-.50", "-0.5"),
        ("+7", "7"),
        ("72.0", "72"),
        ("1,234,567", "1234567"),
        ("-0", "0"),
        ("no digits", None),
    ],
)
def test_normalize_number(text, number):
    assert normalize_number(text) == number


@pytest.mark.parametrize(
    "text,answer",
    [
        (GSM8K_SOLUTION, "72"),
        ("First 3 apples, then 4. So the answer is 7.", "7"),
        ("The answer is: $1,250.50 in total, after 3 days", "1250.5"),
        ("She has 5 cats and 12 dogs", "12"),  # fallback: the last number
        ("#### 18\nIn 2024 ...", "18"),  # '####' wins over later numbers
        ("nothing here", None),
    ],
)
def test_extract_gsm8k_answer(text, answer):
    assert extract_gsm8k_answer(text) == answer


def test_verify_gsm8k():
    assert verify_gsm8k("48 + 24 = 72, so the answer is 72.", GSM8K_SOLUTION)
    assert verify_gsm8k("The total is $72.00", "72")
    assert verify_gsm8k("about 1,000 clips", 1000)
    assert not verify_gsm8k("The answer is 71.", "72")
    assert not verify_gsm8k("I don't know", "72")
    assert not verify_gsm8k("72", "no number")


@pytest.mark.parametrize(
    "text,inner",
    [
        (r"so $\boxed{\frac{1}{2}}$", r"\frac{1}{2}"),
        (r"\boxed{1} then \boxed{\dfrac{\sqrt{3}}{2}}", r"\dfrac{\sqrt{3}}{2}"),  # the last one
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),
        (r"$\boxed 5$", "5"),
        (r"\fbox{7}", "7"),
        (r"\boxed{unbalanced", None),
        ("no box", None),
    ],
)
def test_last_boxed(text, inner):
    assert last_boxed(text) == inner


@pytest.mark.parametrize(
    "raw,norm",
    [
        (r"\left( 3, \frac12 \right)", r"(3,\frac{1}{2})"),
        (r"\dfrac{3}{4}", r"\frac{3}{4}"),
        (r"90^\circ", "90"),
        (r"90^{\circ}", "90"),
        (r"x = 5", "5"),
        (r"\text{(A)}", "(A)"),
        (".5", "0.5"),
        (r"10\%", "10"),
        (r"\sqrt2", r"\sqrt{2}"),
        ("4.", "4"),
    ],
)
def test_normalize_math(raw, norm):
    assert normalize_math(raw) == norm


def test_math_equal():
    assert math_equal("0.5", r"\frac{1}{2}")
    assert math_equal(r"\dfrac{3}{4}", r"\frac34")
    assert math_equal(r"-\frac{1}{2}", "-0.5")
    assert math_equal("1,000", "1000")
    assert math_equal("3/4", "0.75")
    assert math_equal(r"\left(1,2\right)", "(1, 2)")
    assert not math_equal("2", "3")
    assert not math_equal(r"\frac{1}{0}", "0")
    assert not math_equal(r"\sqrt{2}/2", r"\frac{\sqrt{2}}{2}")  # light normalisation: no algebra


def test_verify_math():
    assert verify_math(r"Thus the answer is $\boxed{\dfrac{1}{2}}$.", r"\frac12")
    assert verify_math(
        r"... \boxed{0.5}", r"Solution: ... so $\boxed{\frac{1}{2}}$."
    )  # gt as a full solution
    assert verify_math("Final Answer: The final answer is $5$. I hope it is correct.", "5")
    assert extract_math_answer("no answer at all") is None
    assert not verify_math("no answer at all", "5")
    assert not verify_math(r"\boxed{6}", "5")


@pytest.mark.parametrize(
    "constraint,good,bad",
    [
        ({"type": "min_words", "n": 3}, "one two three", "one two"),
        ({"type": "max_words", "n": 2}, "one two", "one two three"),
        ({"type": "keywords", "keywords": ["Paris", "river"]}, "paris has a River", "paris only"),
        ({"type": "forbidden_words", "words": ["bad"]}, "a badge is fine", "that is Bad."),
        ({"type": "lowercase"}, "all lower 123", "Not lower"),
        ({"type": "paragraphs", "n": 2}, "one\n* * *\ntwo", "one\n* * *\n* * *\ntwo"),
        ({"type": "bullets", "n": 2}, "* a\n* b\ntext", "* a\n- b\n* c"),
        ({"type": "ends_with", "phrase": "Any questions?"}, "Done. any questions?  ", "Any questions? No."),
        ({"type": "json"}, '```json\n{"a": 1}\n```', "{a: 1}"),
    ],
)
def test_ifeval_constraints(constraint, good, bad):
    assert check_ifeval(good, constraint)
    assert not check_ifeval(bad, constraint)
    assert check_ifeval(good, json.dumps([constraint]))  # JSON and list forms


def test_ifeval_open_instruct_ground_truths():
    nulls = {k: None for k in ("N", "quantifier", "end_phrase", "keyword_list", "forbidden_words")}
    lower = json.dumps({**nulls, "func_name": "validate_lowercase"})
    assert check_ifeval("all lower", lower) and not check_ifeval("Upper", lower)
    words = {**nulls, "func_name": "validate_word_constraint", "N": 3, "quantifier": "at least"}
    assert check_ifeval("a b c", words) and not check_ifeval("a b", words)
    around = {**words, "quantifier": "around", "N": 10}
    assert check_ifeval(" ".join("w" * 11), around) and not check_ifeval("w " * 12, around)
    end = {**nulls, "func_name": "validate_end", "end_phrase": "Is there anything else?"}
    assert check_ifeval("Ok. Is there anything else?", end)
    with pytest.raises(ValueError, match="unsupported"):
        check_ifeval("x", {"func_name": "validate_response_language", "language": "en"})


def test_all_constraints_must_hold():
    both = [{"type": "lowercase"}, {"type": "min_words", "n": 2}]
    assert check_ifeval("two words", both)
    assert not check_ifeval("Two words", both)
    assert not check_ifeval("one", both)


@pytest.mark.parametrize(
    "verifier,gt",
    [
        ("ifeval", {"type": "nope"}),
        ("ifeval", {"type": "min_words"}),  # missing argument
        ("ifeval", "not json"),
        ("ifeval", []),
        ("gsm8k", "no number"),
        ("math", "  "),
    ],
)
def test_check_ground_truth_rejects(verifier, gt):
    with pytest.raises(ValueError):
        check_ground_truth(verifier, gt)


def test_verify_dispatch_and_reward():
    assert verify("GSM8K", "#### 4", "4") and verify("MATH", r"\boxed{4}", "4")
    with pytest.raises(ValueError, match="unknown verifier"):
        verify("code", "x", "y")
    assert verifiable_reward("gsm8k", "The answer is 4", "4") == 10.0
    assert verifiable_reward("gsm8k", "The answer is 5", "4") == 0.0
    # the no-EOS penalty replaces the score, verified or not; without it an unfinished response still scores
    assert (
        verifiable_reward("gsm8k", "The answer is 4", "4", finished=False, no_eos_penalty=NO_EOS_PENALTY)
        == -10
    )
    assert verifiable_reward("gsm8k", "The answer is 4", "4", finished=False) == 10.0
    assert verifiable_reward("ifeval", "ok", {"type": "lowercase"}, reward=1.0) == 1.0
