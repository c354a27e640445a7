"""RLVR verifiers and the reward (spec §6.4): each check on hand-made positives and negatives."""

from __future__ import annotations

import json
import random
import re
import threading
from pathlib import Path

import pytest

from olmo2.eval.generative import extract_answer as olmes_gsm8k_answer
from olmo2.posttrain.verifiers import (
    NO_EOS_PENALTY,
    check_ground_truth,
    check_ifeval,
    extract_gsm8k_answer,
    extract_math_answer,
    instruction_registry,
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
    assert math_equal(r"\sqrt{2}/2", r"\frac{\sqrt2}{2}")  # math-verify: equal as SymPy expressions
    assert not math_equal(r"\sqrt{2}", r"\sqrt{3}")


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
    # the others are scored by the library's checker for the same instruction
    english = {"func_name": "validate_response_language", "language": "en"}
    assert check_ifeval("This answer is written in plain English, as the question asked.", english)
    assert not check_ifeval("Esta respuesta está escrita en español, como se pidió.", english)
    title = {**nulls, "func_name": "validate_title"}
    assert check_ifeval("<<Ode to Rain>>\nDrops fall.", title) and not check_ifeval("Ode to Rain", title)
    with pytest.raises(ValueError, match="unsupported"):
        check_ifeval("x", {"func_name": "verify_keyword_frequency", "word": "a", "N": 2})


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


# ------------------------------------------------------------------- MATH parity with math-verify

# (response, ground truth, equivalent?) in the shape of MATH solutions; ground truths are bare answers
# or whole solutions with a \boxed{} answer.
MATH_PAIRS = [
    (r"so the ratio is $\boxed{\frac{\sqrt{2}}{2}}$.", r"\sqrt{2}/2", True),  # \frac vs /
    (r"Hence $\boxed{\frac{\sqrt2}{2}}$.", r"\frac{\sqrt{2}}{2}", True),  # \sqrt2 vs \sqrt{2}
    (r"So $x \in \boxed{(1, 2]}$.", r"(1,2]", True),  # intervals
    (r"So $x \in \boxed{[1,2)}$.", r"(1,2)", False),  # closed vs open end
    (r"The angle measures $\boxed{90^\circ}$.", "90", True),  # degrees
    (r"Thus $\angle A = \boxed{30^{\circ}}$.", "45", False),
    ("Final Answer: The final answer is $\\frac{1}{2}$. I hope it is correct.", "0.5", True),  # plain
    (r"There are $\boxed{7}$ ways.", r"We count the cases, so there are $\boxed{7}$ ways.", True),  # boxed gt
    (r"$\boxed{2\sqrt{3}}$", r"\sqrt{12}", True),
    (r"$\boxed{\dfrac{3}{4}}$", "0.75", True),
    (r"The set is $\boxed{\{1,2\}}$.", r"\{2,1\}", True),
    (r"Expanding, $\boxed{x^2+2x+1}$.", "(x+1)^2", True),
    (r"$\boxed{\frac{1}{3}}$", "0.33", False),
    (r"$\boxed{3}$", "4", False),
    (r"$\boxed{10\%}$", "10", True),
    (r"$\boxed{\pi/2}$", r"\frac{\pi}{2}", True),
    (r"The point is $\boxed{(3, \frac12)}$.", r"\left(3,\frac{1}{2}\right)", True),
    (r"$\boxed{-\frac{1}{2}}$", r"\frac{1}{2}", False),
    (r"The side is $\boxed{5\text{ cm}}$.", "5", True),
]


@pytest.mark.parametrize("response,gold,equivalent", MATH_PAIRS)
def test_math_flex_match_agrees_with_math_verify(response, gold, equivalent):
    mv = pytest.importorskip("math_verify")
    gold_text = gold if "\\boxed" in gold else f"\\boxed{{{gold}}}"
    assert mv.verify(mv.parse(gold_text), mv.parse(response)) == equivalent  # the library on raw text
    assert verify_math(response, gold) == equivalent  # ours: extraction, normalisation, then math-verify


def test_math_verify_off_the_main_thread():
    """math-verify's SIGALRM timeouts only work in the main thread: other threads use a worker process."""
    results = []
    pairs = [(r"\sqrt{2}/2", r"\frac{\sqrt2}{2}"), (r"\sqrt{2}", r"\sqrt{3}")]
    worker = threading.Thread(target=lambda: results.extend(math_equal(a, b) for a, b in pairs))
    worker.start()
    worker.join(timeout=120)
    assert results == [True, False]


# -------------------------------------------------------------- GSM8K parity with lm-eval's regexes

GSM8K_PREDICTIONS = [
    GSM8K_SOLUTION,
    "Janet has 16 - 3 - 4 = 9 eggs, so she makes 9 * 2 = $18 every day.\n#### 18",
    "The total is 5 + 7 = 12 apples.",
    "She earns $1,250.50 per week",
    "It costs 3 dollars, then 0.5 more: 3.5.",
    "The temperature fell to -4 degrees",
    "#### 1,000",
]


def _lm_eval_gsm8k(text: str) -> str:
    """lm-eval's gsm8k task: its strict '####' regex, else its flexible last number, then its ignores."""
    yaml = pytest.importorskip("yaml")
    lm_eval = pytest.importorskip("lm_eval")
    cfg = yaml.safe_load((Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k.yaml").read_text())
    filters = {f["name"]: f["filter"][0] for f in cfg["filter_list"]}
    strict = re.findall(filters["strict-match"]["regex_pattern"], text)
    if strict:
        answer = strict[0]
    else:
        flexible = filters["flexible-extract"]
        match = re.findall(flexible["regex_pattern"], text)[flexible["group_select"]]
        answer = next(group for group in match if group)
    for pattern in cfg["metric_list"][0]["regexes_to_ignore"]:
        answer = re.sub(pattern, "", answer)
    return answer.strip()


@pytest.mark.parametrize("text", GSM8K_PREDICTIONS)
def test_gsm8k_extraction_agrees_with_lm_eval_and_olmes(text):
    ours = extract_gsm8k_answer(text)
    assert ours == normalize_number(_lm_eval_gsm8k(text))
    assert ours == normalize_number(olmes_gsm8k_answer(text))  # our eval's OLMES extraction


def test_gsm8k_answer_is_beats_a_later_number():
    """Where they differ, by design: "answer is" wins over a later number (as in OLMES), lm-eval's
    flexible regex takes the last number."""
    text = "So the answer is 7. It took 3 steps."
    assert extract_gsm8k_answer(text) == "7" == olmes_gsm8k_answer(text)
    assert _lm_eval_gsm8k(text) == "3"


# ------------------------------------------------------------------- IFEval / IFBench (if-verifiable)

NEEDS_MISSING_NLTK_DATA = {"ratio:stop_words", "words:start_verb"}  # stopwords, POS tagger: no wheel


def _full_kwargs(instruction_id: str) -> dict:
    """Arguments for an instruction as the library itself draws them (seeded), completed where it needs
    text from the prompt."""
    checker = instruction_registry()[instruction_id](instruction_id)
    extra = {"prompt_to_repeat": "Write a short poem about the sea.", "reference_text": "the sea is calm"}
    try:
        checker.build_description()
    except ValueError:
        checker.build_description(prompt_to_repeat=extra["prompt_to_repeat"])
    args = checker.get_instruction_args() or {}
    return {k: extra.get(k, v) if v is None else v for k, v in args.items()}


def test_every_library_instruction_is_recognised():
    registry = instruction_registry()
    ifeval_ids = {i for i in registry if i.split(":")[0] in ("keywords", "length_constraints", "startend")}
    assert len(registry) == 83 and len(ifeval_ids) == 10  # 25 IFEval + 58 IFBench instructions
    random.seed(0)
    refused = {}
    for instruction_id in sorted(registry):
        gt = [{"instruction_id": [instruction_id], "kwargs": [_full_kwargs(instruction_id)]}]
        try:
            check_ground_truth("ifeval", json.dumps(gt))
        except ValueError as e:
            refused[instruction_id] = str(e)
    assert set(refused) <= NEEDS_MISSING_NLTK_DATA, refused
    assert all("needs NLTK data" in reason for reason in refused.values())


IF_CASES = [
    ("keywords:existence", {"keywords": ["ocean", "salt"]}, "The ocean tastes of salt.", "The sea is briny."),
    (
        "keywords:frequency",
        {"keyword": "rain", "frequency": 3, "relation": "at least"},
        "rain, rain and more rain",
        "rain once, then sun",
    ),
    ("keywords:forbidden_words", {"forbidden_words": ["sun"]}, "Clouds all day.", "The sun came out."),
    (
        "keywords:letter_frequency",
        {"letter": "z", "let_frequency": 2, "let_relation": "less than"},
        "Lazy dogs sleep.",
        "Jazz and pizza.",
    ),
    # Punkt (from the pinned wheel): "Dr." does not end a sentence, so the good text has 2 sentences
    (
        "length_constraints:number_sentences",
        {"num_sentences": 3, "relation": "less than"},
        "Dr. Smith left at noon. He came back.",
        "One. Two. Three. Four.",
    ),
    (
        "length_constraints:number_words",
        {"num_words": 5, "relation": "at least"},
        "one two three four five six",
        "one two",
    ),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "First.\n***\nSecond.", "Only one."),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hi.\nP.S. bring snacks", "Hi, snacks"),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* a\n* b", "* a"),
    ("detectable_format:json_format", {}, '```json\n{"a": 1}\n```', "{a: 1}"),
    (
        "change_case:capital_word_frequency",  # nltk.word_tokenize: Punkt again
        {"capital_frequency": 2, "capital_relation": "at least"},
        "NASA and the ESA launched it.",
        "nasa and esa launched it.",
    ),
    ("change_case:english_lowercase", {}, "all of these english words are lower case", "Not All Lower"),
    ("punctuation:no_comma", {}, "No commas here.", "Yes, one comma."),
    (
        "startend:end_checker",
        {"end_phrase": "Any other questions?"},
        "Done. Any other questions?",
        "Any other questions? Done.",
    ),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Name a color."}, "Name a color. Blue.", "Blue."),
    (
        "count:word_count_range",
        {"min_words": 3, "max_words": 5},
        "one two three four",
        "one two three four five six",
    ),
    ("count:numbers", {"N": 2}, "I have 3 cats and 4 dogs.", "I have 3 cats."),
    ("format:no_whitespace", {}, "no_spaces_here", "has spaces"),
    ("format:title_case", {}, "The Quiet Harbour At Dawn", "The quiet harbour at dawn"),
]


@pytest.mark.parametrize("instruction_id,kwargs,good,bad", IF_CASES)
def test_library_instructions_score_responses(instruction_id, kwargs, good, bad):
    gt = [{"instruction_id": [instruction_id], "kwargs": [kwargs]}]
    assert check_ifeval(good, gt)
    assert not check_ifeval(bad, gt)
    assert verifiable_reward("ifeval", good, str(gt)) == 10.0  # open-instruct stores a Python literal
    assert verifiable_reward("ifeval", bad, json.dumps(gt)) == 0.0


def test_library_instructions_all_must_hold_and_bad_ones_are_refused():
    gt = {
        "instruction_id": ["punctuation:no_comma", "length_constraints:number_words"],
        "kwargs": [None, {"num_words": 3, "relation": "less than"}],
    }
    assert check_ifeval("Two words", gt)
    assert not check_ifeval("Two, words", gt) and not check_ifeval("far too many words", gt)
    with pytest.raises(ValueError, match="unknown IFEval/IFBench instruction id"):
        check_ground_truth("ifeval", {"instruction_id": ["copy:repeat_phrase"], "kwargs": [{}]})
    with pytest.raises(ValueError, match="lacks arguments"):  # the library would draw it at random
        check_ground_truth("ifeval", {"instruction_id": ["keywords:existence"], "kwargs": [{}]})
    with pytest.raises(ValueError, match="bad arguments"):
        check_ground_truth("ifeval", {"instruction_id": ["punctuation:no_comma"], "kwargs": [{"n": 1}]})
    stopwords = {"instruction_id": ["ratio:stop_words"], "kwargs": [{"percentage": 50}]}
    with pytest.raises(ValueError, match="needs NLTK data"):
        check_ground_truth("ifeval", stopwords)
    with pytest.raises(LookupError):  # scored without loading: loud, never a silent 0
        check_ifeval("Some words here.", stopwords)
