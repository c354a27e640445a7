"""Verifiable rewards for RLVR (spec §6.4): GSM8K numbers, MATH ``\\boxed{}`` answers, IFEval constraints.

Each check is a function of the response text, so a reward can be recomputed and audited offline.
``verifiable_reward`` is the RLVR reward: 10 when the answer verifies, else 0, and (optional) a fixed
penalty, −10 in the 7B/13B PPO runs, replacing it when the response never produced EOS.

Who checks what: GSM8K answers are ours (a number, normalised). MATH answers are ours up to
extraction and a light normalisation, then ``math-verify`` (SymPy) decides equivalence, so
``\\frac{\\sqrt2}{2}`` equals ``\\sqrt{2}/2``. IFEval and IFBench instructions are checked by the
``if-verifiable`` registry (every instruction id of open-instruct's IF-constraint data).
"""

from __future__ import annotations

import ast
import functools
import json
import logging
import math
import multiprocessing
import re
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from decimal import Decimal, InvalidOperation
from typing import Any

from olmo2.assets import AssetError
from olmo2.posttrain.nltk_data import missing_nltk_data, no_downloads, use_offline_nltk_data

__all__ = [
    "CONSTRAINTS",
    "MATH_TIMEOUT_S",
    "NO_EOS_PENALTY",
    "VERIFIED_REWARD",
    "VERIFIERS",
    "check_ground_truth",
    "check_ifeval",
    "extract_gsm8k_answer",
    "extract_math_answer",
    "instruction_registry",
    "last_boxed",
    "math_equal",
    "normalize_math",
    "normalize_number",
    "symbolic_equal",
    "verifiable_reward",
    "verify",
    "verify_gsm8k",
    "verify_math",
]

VERIFIED_REWARD = 10.0
NO_EOS_PENALTY = -10.0
MATH_TIMEOUT_S = 5  # seconds math-verify may spend on one parse or one comparison

_log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------ GSM8K

_NUMBER = re.compile(r"[-+]?\$?\s?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\$?\.\d+")
_HASHES = re.compile(r"####\s*(.+)")
_ANSWER_IS = re.compile(r"answer\s+is\s*:?\s*(.+)", re.IGNORECASE)


def normalize_number(text: str) -> str | None:
    """Canonical form of the first number in ``text`` ("$1,000.00" -> "1000", "-.50" -> "-0.5"), or None."""
    m = _NUMBER.search(text)
    if m is None:
        return None
    s = re.sub(r"[\s$,+]", "", m.group(0))
    try:
        d = Decimal(s).normalize()
    except InvalidOperation:
        return None
    out = format(d, "f")
    return "0" if out in ("-0", "0") else out


def extract_gsm8k_answer(text: str) -> str | None:
    """The final number: after the last ``####``, else after the last "answer is", else the last number."""
    for pattern in (_HASHES, _ANSWER_IS):
        hits = pattern.findall(text)
        if hits and (n := normalize_number(hits[-1])) is not None:
            return n
    numbers = _NUMBER.findall(text)
    return normalize_number(numbers[-1]) if numbers else None


def verify_gsm8k(response: str, ground_truth: str | int | float) -> bool:
    """``ground_truth`` may be the bare number or a full GSM8K solution ending in ``#### N``."""
    gt = extract_gsm8k_answer(str(ground_truth))
    return gt is not None and extract_gsm8k_answer(response) == gt


# ------------------------------------------------------------------------------------- MATH


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` (balanced braces), or ``\\boxed 5``; else None."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = start + (6 if text.startswith("\\boxed", start) else 5)
    if text.startswith(" ", i):  # "\boxed 5": up to the next space or $
        m = re.match(r"\s+([^\s$]+)", text[i:])
        return m.group(1) if m else None
    if not text.startswith("{", i):
        return None
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j]
    return None  # unbalanced


_FINAL_ANSWER = re.compile(r"final answer is\s*\$?(.+?)\$?(?:\.\s*I hope|\s*$)", re.IGNORECASE | re.S)


def extract_math_answer(text: str) -> str | None:
    """The last ``\\boxed{}`` answer, else Minerva's "The final answer is X", else None."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    m = _FINAL_ANSWER.search(text)
    return m.group(1).strip() if m else None


_TEXT = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")
_DROP = ("\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "\\$", "$", "^{\\circ}", "^\\circ", "\\%", "%")


def normalize_math(answer: str) -> str:
    """Light normalisation: spacing, ``\\left``/``\\right``, ``\\dfrac``, degrees, ``\\text{}``, ``x =``."""
    s = _TEXT.sub(r"\1", answer.strip())
    for tok in _DROP:
        s = s.replace(tok, "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\displaystyle", "")
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\sqrt(\d)", r"\\sqrt{\1}", s)
    s = re.sub(r"\s+", "", s).rstrip(".")
    s = re.sub(r"^[a-zA-Z]=", "", s)  # "x=5" -> "5"
    s = re.sub(r"(?<![\d}])\.(\d)", r"0.\1", s)  # ".5" -> "0.5"
    return s


def _as_number(s: str) -> float | None:
    s = s.replace(",", "") if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s) else s
    m = re.fullmatch(r"(-?)\\frac\{(-?[\d.]+)\}\{(-?[\d.]+)\}", s) or re.fullmatch(
        r"(-?)(-?[\d.]+)/(-?[\d.]+)", s
    )
    try:
        if m:
            value = float(m.group(2)) / float(m.group(3))
            return -value if m.group(1) else value
        return float(s) if re.fullmatch(r"-?\d+(\.\d+)?", s) else None
    except (ValueError, ZeroDivisionError):
        return None


def _math_verify_equal(pred: str, gold: str) -> bool:
    """math-verify on both answers, each read as a boxed LaTeX answer; its timeouts use SIGALRM."""
    import math_verify  # SymPy and the LaTeX grammar take a second to import; only MATH needs them

    parsed_gold = math_verify.parse(f"\\boxed{{{gold}}}", parsing_timeout=MATH_TIMEOUT_S)
    parsed_pred = math_verify.parse(f"\\boxed{{{pred}}}", parsing_timeout=MATH_TIMEOUT_S)
    if not parsed_gold or not parsed_pred:
        return False
    return bool(math_verify.verify(parsed_gold, parsed_pred, timeout_seconds=MATH_TIMEOUT_S))


@functools.cache
def _math_worker() -> ProcessPoolExecutor:
    """One spawned process whose main thread runs math-verify with its signal timeouts."""
    return ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))


def symbolic_equal(pred: str, gold: str) -> bool:
    """math-verify's verdict, with its time limits honoured from any thread.

    math-verify bounds a parse or comparison with ``signal.alarm``, which Python allows only in the
    main thread; called from another thread it would fail. There the work goes to a worker process,
    where the alarm works, so a pathological answer can never hang a rollout.
    """
    if threading.current_thread() is threading.main_thread():
        return _math_verify_equal(pred, gold)
    return _math_worker().submit(_math_verify_equal, pred, gold).result()


def math_equal(pred: str, gold: str) -> bool:
    """Equal after ``normalize_math``, or as plain numbers (rel. 1e-9), else by math-verify (SymPy)."""
    na, nb = normalize_math(pred), normalize_math(gold)
    if na == nb:
        return True
    x, y = _as_number(na), _as_number(nb)
    if x is not None and y is not None and math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12):
        return True
    return symbolic_equal(pred, gold)


def verify_math(response: str, ground_truth: str) -> bool:
    """``ground_truth`` may be the bare answer or a solution containing ``\\boxed{}``."""
    pred = extract_math_answer(response)
    gt = last_boxed(str(ground_truth))
    return pred is not None and math_equal(pred, str(ground_truth) if gt is None else gt)


# ----------------------------------------------------------------------------------- IFEval


def _words(text: str) -> int:
    return len(text.split())


def _paragraphs(text: str, n: int) -> bool:
    """IFEval: paragraphs separated by the markdown divider ``* * *``, none empty."""
    parts = re.split(r"\s?\*\s?\*\s?\*\s?", text.strip())
    return len(parts) == n and all(p.strip() for p in parts)


def _bullets(text: str, n: int) -> bool:
    """Markdown bullets: lines starting with ``* `` or ``- ``."""
    return len(re.findall(r"^\s*(?:\*[^*]|-).*$", text, flags=re.M)) == n


def _json(text: str) -> bool:
    s = re.sub(r"^```(?:json)?\s*|\s*```$", "", text.strip(), flags=re.I)
    try:
        json.loads(s)
    except ValueError:
        return False
    return True


def _word_count(text: str, n: int, quantifier: str = "at least") -> bool:
    if quantifier == "at least":
        return _words(text) >= n
    if quantifier == "at most":
        return _words(text) <= n
    if quantifier == "around":
        return abs(_words(text) - n) <= max(round(0.1 * n), 1)
    raise ValueError(f"unknown word-count quantifier {quantifier!r}")


# name -> (check(text, **args), argument names)
CONSTRAINTS: dict[str, tuple[Callable[..., bool], tuple[str, ...]]] = {
    "min_words": (lambda t, n: _words(t) >= n, ("n",)),
    "max_words": (lambda t, n: _words(t) <= n, ("n",)),
    "keywords": (lambda t, keywords: all(k.lower() in t.lower() for k in keywords), ("keywords",)),
    "forbidden_words": (
        lambda t, words: not any(re.search(rf"\b{re.escape(w)}\b", t, re.I) for w in words),
        ("words",),
    ),
    "lowercase": (lambda t: t == t.lower(), ()),
    "paragraphs": (_paragraphs, ("n",)),
    "bullets": (_bullets, ("n",)),
    "ends_with": (lambda t, phrase: t.strip().lower().endswith(phrase.strip().lower()), ("phrase",)),
    "json": (_json, ()),
}

# open-instruct's older ground truths ({"func_name": ..., args}, its IFEvalVerifierOld): those that map
# onto our checks above, then those scored by the library's checker for the same instruction.
_OI_FUNCS = {
    "verify_keywords": ("keywords", {"keyword_list": "keywords"}),
    "validate_forbidden_words": ("forbidden_words", {"forbidden_words": "words"}),
    "validate_lowercase": ("lowercase", {}),
    "verify_paragraph_count": ("paragraphs", {"N": "n"}),
    "verify_bullet_points": ("bullets", {"N": "n"}),
    "validate_end": ("ends_with", {"end_phrase": "phrase"}),
    "validate_json_format": ("json", {}),
}
_OI_TO_INSTRUCTION = {
    "validate_response_language": ("language:response_language", {"language": "language"}),
    "validate_paragraphs": (
        "length_constraints:nth_paragraph_first_word",
        {"N": "num_paragraphs", "i": "nth_paragraph", "first_word": "first_word"},
    ),
    "verify_postscript": ("detectable_content:postscript", {"postscript_marker": "postscript_marker"}),
    "validate_placeholders": ("detectable_content:number_placeholders", {"N": "num_placeholders"}),
    "validate_title": ("detectable_format:title", {}),
    "validate_highlighted_sections": (
        "detectable_format:number_highlighted_sections",
        {"N": "num_highlights"},
    ),
    "validate_sections": (
        "detectable_format:multiple_sections",
        {"N": "num_sections", "section_splitter": "section_spliter"},
    ),
    "validate_repeat_prompt": ("combination:repeat_prompt", {"original_prompt": "prompt_to_repeat"}),
    "validate_two_responses": ("combination:two_responses", {}),
    "validate_uppercase": ("change_case:english_capital", {}),
    "validate_quotation": ("startend:quotation", {}),
    "validate_no_commas": ("punctuation:no_comma", {}),
}

# Text every checker can read: a probe for instructions whose NLTK data is missing.
_PROBE = "Hello world. This is a short probe, with two sentences."


@functools.cache
def instruction_registry() -> dict[str, type]:
    """Every IFEval and IFBench instruction checker of ``if-verifiable``, by instruction id.

    The English Punkt model comes from a pinned asset (``olmo2.posttrain.nltk_data``); without it the
    sentence-based instructions are refused at load time, like those needing other NLTK data.
    """
    try:
        use_offline_nltk_data()
    except AssetError as e:
        _log.warning("no Punkt sentence model, sentence-based IFEval instructions will be refused: %s", e)
    with no_downloads():
        from if_verifiable.ifbench.instructions_registry import INSTRUCTION_DICT as ifbench
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT as ifeval

    both = set(ifeval) & set(ifbench)
    if both:
        raise RuntimeError(f"IFEval and IFBench share instruction ids {sorted(both)}")
    return {**ifeval, **ifbench}


def _follows(checker: Any, response: str) -> bool:
    """The library's strict check; an empty response, or one a checker cannot read, does not follow."""
    if not response.strip():
        return False
    try:
        return bool(checker.check_following(response))
    except LookupError:  # missing NLTK data is our problem, not the response's: never a silent 0
        raise
    except Exception:  # noqa: BLE001 - a checker tripping over odd model output is a failed check
        return False


def _instruction(instruction_id: str, kwargs: dict[str, Any] | None, probe: bool) -> Callable[[str], bool]:
    """The check of one registry instruction; ValueError if it cannot be checked deterministically
    (with ``probe``, also when the NLTK data it needs is missing)."""
    registry = instruction_registry()
    if instruction_id not in registry:
        raise ValueError(f"unknown IFEval/IFBench instruction id {instruction_id!r}")
    args = {k: v for k, v in (kwargs or {}).items() if v is not None}
    checker = registry[instruction_id](instruction_id)
    try:
        checker.build_description(**args)
    except (TypeError, ValueError) as e:
        raise ValueError(f"instruction {instruction_id!r}: bad arguments {args}: {e}") from None
    missing = set(checker.get_instruction_args_keys()) - set(args)
    if missing:  # the library would draw them at random: the reward would be noise
        raise ValueError(f"instruction {instruction_id!r} lacks arguments {sorted(missing)}")
    try:
        if probe:
            checker.check_following(_PROBE)
    except LookupError as e:
        raise ValueError(f"instruction {instruction_id!r} {missing_nltk_data(e)}") from None
    except Exception:  # noqa: BLE001, S110 - the probe only looks for missing data
        pass
    return functools.partial(_follows, checker)


def _parse_ground_truth(ground_truth: Any) -> list[Any]:
    """JSON, or the Python literal open-instruct stores (``"[{'instruction_id': [...], ...}]"``)."""
    gt = ground_truth
    if isinstance(gt, str):
        try:
            gt = json.loads(gt)
        except ValueError:
            try:
                gt = ast.literal_eval(gt)
            except (ValueError, SyntaxError):
                raise ValueError(
                    f"IFEval ground truth is neither JSON nor a literal: {ground_truth[:80]!r}"
                ) from None
    return gt if isinstance(gt, list) else [gt]


def _constraints(ground_truth: Any, probe: bool = False) -> list[Callable[[str], bool]]:
    """Parse an IFEval ground truth into checks; raises ValueError when it cannot be verified."""
    out: list[Callable[[str], bool]] = []
    for c in _parse_ground_truth(ground_truth):
        if isinstance(c, str):  # open-instruct nests the JSON object as a string in some dumps
            c = json.loads(c)
        if not isinstance(c, dict):
            raise ValueError(f"an IFEval constraint must be an object, got {c!r}")
        if "instruction_id" in c:  # IFEval / IFBench / open-instruct IFEvalVerifier
            ids = c["instruction_id"]
            ids = [ids] if isinstance(ids, str) else list(ids)
            kwargs = c.get("kwargs") or [None] * len(ids)
            kwargs = [kwargs] if isinstance(kwargs, dict) else list(kwargs)
            if len(kwargs) != len(ids):
                raise ValueError(f"{len(ids)} instruction ids but {len(kwargs)} kwargs")
            out += [_instruction(i, k, probe) for i, k in zip(ids, kwargs, strict=True)]
            continue
        if "func_name" in c:  # open-instruct style
            name = c["func_name"]
            if name in _OI_TO_INSTRUCTION:
                iid, rename = _OI_TO_INSTRUCTION[name]
                args = {ours: c.get(theirs) for theirs, ours in rename.items()}
                out.append(_instruction(iid, args, probe))
                continue
            if name == "validate_word_constraint":
                out.append(functools.partial(_word_count, n=c["N"], quantifier=c["quantifier"]))
                continue
            if name not in _OI_FUNCS:
                raise ValueError(f"unsupported IFEval constraint {name!r}")
            kind, rename = _OI_FUNCS[name]
            args = {ours: c[theirs] for theirs, ours in rename.items()}
        else:
            kind, args = c.get("type"), {k: v for k, v in c.items() if k != "type"}
        if kind not in CONSTRAINTS:
            raise ValueError(f"unknown IFEval constraint type {kind!r} (known: {sorted(CONSTRAINTS)})")
        fn, names = CONSTRAINTS[kind]
        if set(args) != set(names):
            raise ValueError(f"constraint {kind!r} takes {names}, got {sorted(args)}")
        out.append(functools.partial(fn, **args))
    if not out:
        raise ValueError("no IFEval constraint given")
    return out


def check_ifeval(response: str, ground_truth: Any) -> bool:
    """All constraints hold. ``ground_truth``: a constraint, a list of them, or their JSON (or Python
    literal): IFEval/IFBench's ``{"instruction_id": [...], "kwargs": [...]}`` (any id of
    ``instruction_registry()``), open-instruct's ``{"func_name": ...}``, or ours, e.g.
    ``{"type": "min_words", "n": 50}`` (see ``CONSTRAINTS``)."""
    return all(check(response) for check in _constraints(ground_truth))


# ------------------------------------------------------------------------------------ reward

VERIFIERS: dict[str, Callable[[str, Any], bool]] = {
    "gsm8k": verify_gsm8k,
    "math": verify_math,
    "ifeval": check_ifeval,
    "ifeval_old": check_ifeval,  # open-instruct's name for its {"func_name": ...} ground truths
}


def check_ground_truth(verifier: str, ground_truth: Any) -> None:
    """Raise ValueError if ``ground_truth`` can never verify (checked at load time, not mid-rollout)."""
    verifier = verifier.lower()
    if VERIFIERS.get(verifier) is check_ifeval:
        _constraints(ground_truth, probe=True)
    elif verifier == "gsm8k" and extract_gsm8k_answer(str(ground_truth)) is None:
        raise ValueError(f"GSM8K ground truth {ground_truth!r} has no number")
    elif verifier == "math" and not str(ground_truth).strip():
        raise ValueError("empty MATH ground truth")


def verify(verifier: str, response: str, ground_truth: Any) -> bool:
    """Whether ``response`` (decoded text, EOS excluded) is correct under the named verifier."""
    try:
        fn = VERIFIERS[verifier.lower()]
    except KeyError:
        raise ValueError(f"unknown verifier {verifier!r}; known: {sorted(VERIFIERS)}") from None
    return bool(fn(response, ground_truth))


def verifiable_reward(
    verifier: str,
    response: str,
    ground_truth: Any,
    *,
    finished: bool = True,
    reward: float = VERIFIED_REWARD,
    no_eos_penalty: float | None = None,
) -> float:
    """``reward`` if verified, else 0; ``no_eos_penalty`` (e.g. ``NO_EOS_PENALTY``) replaces the score of a
    response that did not end with EOS (``finished=False``), as open-instruct's ``non_stop_penalty``."""
    if not finished and no_eos_penalty is not None:
        return float(no_eos_penalty)
    return float(reward) if verify(verifier, response, ground_truth) else 0.0
