"""Answer-overlap metrics of generative QA: SQuAD-style F1/EM (NQ, TriviaQA, SQuAD, CoQA) and DROP's F1/EM.

SQuAD (v1.1 official script, as OLMES's ``SQuADF1EMRecallMetric`` uses it): lower-case, drop ASCII
punctuation, drop the articles a/an/the, collapse whitespace; F1 is the token-multiset overlap; both are
the maximum over the gold answers.

DROP (its official metric): an answer is one or more spans; each span is split on spaces and hyphens,
and each token is lower-cased, stripped of punctuation unless it parses as a number, written as a float
if it does (``"2"`` -> ``"2.0"``), and cleared of articles. EM compares the sets of normalised spans; F1
aligns predicted and gold spans one-to-one (the assignment with the largest total bag-of-words F1, a pair
scoring 0 when the gold span has numbers and the predicted one shares none) and averages over the larger
side, rounded to 2 decimals. Gold answers whose first span is blank are skipped; the maximum over the
rest is kept. The optimal assignment is computed exactly by dynamic programming over subsets of the
smaller side (answers have a handful of spans), so no solver dependency is needed.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

import numpy as np

__all__ = ["drop_em_f1", "drop_normalize", "squad_em_f1", "squad_normalize"]

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)
MAX_SPANS = 16  # the smaller side of a DROP alignment; real answers have a few spans


def squad_normalize(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _squad_f1(prediction: str, gold: str) -> float:
    pred, ref = squad_normalize(prediction).split(), squad_normalize(gold).split()
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def squad_em_f1(prediction: str, golds: Sequence[str]) -> tuple[float, float]:
    """``(exact match, F1)`` of ``prediction``, each the maximum over ``golds`` (0 when there are none)."""
    if not golds:
        return 0.0, 0.0
    norm = squad_normalize(prediction)
    em = max(float(norm == squad_normalize(g)) for g in golds)
    return em, max(_squad_f1(prediction, g) for g in golds)


# --------------------------------------------------------------------------------------------- DROP


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _drop_token(token: str) -> str:
    """Punctuation goes first (kept in numbers), then what is a number becomes a float: ``$5`` -> ``5.0``."""
    token = token.lower()
    if not _is_number(token):
        token = "".join(ch for ch in token if ch not in _PUNCTUATION)
    if _is_number(token):
        token = str(float(token))
    return " ".join(_ARTICLES.sub(" ", token).split())


def drop_normalize(span: str) -> str:
    return " ".join(t for t in (_drop_token(tok) for tok in re.split(" |-", span)) if t.strip())


def _bag_f1(pred: set[str], gold: set[str]) -> float:
    common = len(pred & gold)
    precision = common / len(pred) if pred else 1.0
    recall = common / len(gold) if gold else 1.0
    return 0.0 if precision == recall == 0.0 else 2 * precision * recall / (precision + recall)


def _numbers_agree(gold: set[str], pred: set[str]) -> bool:
    """A gold span with numbers matches only a predicted span that shares one of them."""
    gold_numbers = {w for w in gold if _is_number(w)}
    return not gold_numbers or bool(gold_numbers & {w for w in pred if _is_number(w)})


def _best_assignment(scores: np.ndarray) -> list[tuple[int, int]]:
    """The (row, column) pairs of a one-to-one assignment with the largest total score (scores >= 0).

    Dynamic programming over the subsets of columns already used, row by row; exact, and cheap
    because the smaller side is a handful of spans."""
    transpose = scores.shape[1] > scores.shape[0]
    s = scores.T if transpose else scores
    rows, cols = s.shape
    if cols > MAX_SPANS:
        raise ValueError(f"DROP answers with more than {MAX_SPANS} spans on both sides are not supported")
    best: dict[int, tuple[float, tuple[tuple[int, int], ...]]] = {0: (0.0, ())}
    for r in range(rows):
        step = dict(best)
        for used, (total, pairs) in best.items():
            for c in range(cols):
                if not used & (1 << c):
                    key, value = used | (1 << c), total + s[r, c]
                    if key not in step or value > step[key][0]:
                        step[key] = (value, (*pairs, (r, c)))
        best = step
    pairs = max(best.values(), key=lambda v: v[0])[1]
    return [(c, r) for r, c in pairs] if transpose else list(pairs)


def _drop_pair(predicted: Sequence[str], gold: Sequence[str]) -> tuple[float, float]:
    pred_spans = [drop_normalize(s) for s in predicted]
    gold_spans = [drop_normalize(s) for s in gold]
    em = float(set(pred_spans) == set(gold_spans) and len(pred_spans) == len(gold_spans))
    pred_bags = [set(s.split()) for s in pred_spans]
    gold_bags = [set(s.split()) for s in gold_spans]
    scores = np.zeros((len(gold_bags), len(pred_bags)))
    for g, gb in enumerate(gold_bags):
        for p, pb in enumerate(pred_bags):
            if _numbers_agree(gb, pb):
                scores[g, p] = _bag_f1(pb, gb)
    per_span = np.zeros(max(len(gold_bags), len(pred_bags)))
    for g, p in _best_assignment(scores):
        per_span[g] = max(per_span[g], scores[g, p])
    return em, float(np.round(np.mean(per_span), 2))


def drop_em_f1(prediction: str | Sequence[str], golds: Sequence[Sequence[str]]) -> tuple[float, float]:
    """``(exact match, F1)`` of a predicted answer (a string, or its spans) against DROP gold answers
    (each a sequence of spans), maxima over the golds whose first span is not blank."""
    predicted = [prediction] if isinstance(prediction, str) else list(prediction)
    em = f1 = 0.0
    for gold in golds:
        pair_em, pair_f1 = _drop_pair(predicted, gold)
        if gold and gold[0].strip():
            em, f1 = max(em, pair_em), max(f1, pair_f1)
    return em, f1
