"""N-gram decontamination: find training texts that share a word n-gram with an evaluation item.

The usual check (GPT-3, OLMo's Dolma decontamination, Tülu): texts are lower-cased and split into
words (runs of letters and digits), and a training text is contaminated when one of its 13-word windows
also occurs in an evaluation item. Items shorter than 13 words are matched as a whole (down to
``min_words``; shorter ones are too generic to tell contamination from chance and are counted as
unchecked). Windows are hashed to 64 bits with numpy, so millions of words take about a second.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["NGramIndex", "Contamination", "normalize_words"]

_WORD = re.compile(r"[^\W_]+")


def normalize_words(text: str) -> list[str]:
    """Lower-cased runs of letters and digits: punctuation, case and spacing never hide an overlap."""
    return _WORD.findall(text.lower())


@dataclass
class Contamination:
    """The result of checking a list of texts: which ones overlap, and with which evaluation sets."""

    flagged: list[bool]
    by_eval_set: Counter = field(default_factory=Counter)  # eval set -> flagged texts that hit it

    @property
    def count(self) -> int:
        return sum(self.flagged)


class NGramIndex:
    """The n-grams of a set of evaluation items, each labelled with its evaluation set."""

    def __init__(self, n: int = 13, min_words: int = 8) -> None:
        if not 1 <= min_words <= n:
            raise ValueError(f"need 1 <= min_words ({min_words}) <= n ({n})")
        self.n, self.min_words = n, min_words
        self._sets: list[str] = []
        self._parts: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
        self._tables: dict[int, tuple[np.ndarray, np.ndarray]] | None = None
        self.items: Counter = Counter()  # eval set -> items indexed
        self.too_short: Counter = Counter()  # eval set -> items with fewer than min_words words

    @staticmethod
    def _ids(words: Sequence[str]) -> np.ndarray:
        # Python's string hash: 64 bits, salted per process, which is fine because the index and the
        # texts it checks are always hashed in the same process.
        return np.fromiter(map(hash, words), np.int64, len(words)).view(np.uint64)

    @staticmethod
    @functools.cache
    def _multipliers(length: int) -> np.ndarray:
        # Random odd 64-bit weights per window length: a weighted sum of word hashes mod 2^64 then
        # collides for two different windows with probability ~2^-63.
        rng = np.random.default_rng(0x5EED + length)
        return rng.integers(0, 2**63, size=length, dtype=np.uint64) * np.uint64(2) + np.uint64(1)

    def _windows(self, ids: np.ndarray, length: int) -> np.ndarray:
        count = len(ids) - length + 1
        h = np.zeros(max(count, 0), np.uint64)
        for k, m in enumerate(self._multipliers(length)):
            h += ids[k : k + count] * m  # wraps mod 2^64, as intended
        return h

    def _flatten(self, texts: Iterable[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(word hashes of all texts back to back, words per text, text index of every word)."""
        words = [normalize_words(t) for t in texts]
        lengths = np.array([len(w) for w in words], np.int64)
        ids = self._ids([w for ws in words for w in ws])
        return ids, lengths, np.repeat(np.arange(len(words)), lengths)

    def add(self, eval_set: str, texts: Iterable[str]) -> None:
        """Index evaluation items (one text per item) under the name of their set, e.g. ``arc_easy:test``."""
        self._tables = None
        if eval_set not in self._sets:
            self._sets.append(eval_set)
        owner = self._sets.index(eval_set)
        ids, lengths, item_of = self._flatten(texts)
        self.items[eval_set] += len(lengths)
        self.too_short[eval_set] += int((lengths < self.min_words).sum())
        grams = {}
        if len(ids) >= self.n:  # every window inside an item of >= n words
            h = self._windows(ids, self.n)
            grams[self.n] = h[item_of[: len(h)] == item_of[self.n - 1 :]]
        starts = np.cumsum(lengths) - lengths
        for length in range(self.min_words, self.n):  # a shorter item is one gram of its own length
            rows = starts[lengths == length]
            if len(rows):
                words = ids[rows[:, None] + np.arange(length)]
                grams[length] = (words * self._multipliers(length)).sum(axis=1, dtype=np.uint64)
        for length, h in grams.items():
            self._parts.setdefault(length, []).append((h, np.full(len(h), owner, np.int32)))

    def _table(self) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        if self._tables is None:
            self._tables = {}
            for length, parts in self._parts.items():
                h = np.concatenate([p[0] for p in parts])
                o = np.concatenate([p[1] for p in parts])
                order = np.argsort(h, kind="stable")
                self._tables[length] = (h[order], o[order])
        return self._tables

    def check(self, texts: Sequence[str]) -> Contamination:
        """Flag every text that contains an indexed n-gram (a whole short item counts as one)."""
        ids, lengths, text_of = self._flatten(texts)
        flagged = np.zeros(len(lengths), bool)
        hits: dict[int, set[int]] = {}
        for length, (table, owners) in self._table().items():
            if len(ids) < length:
                continue
            h = self._windows(ids, length)
            same_text = text_of[: len(h)] == text_of[length - 1 :]
            pos = np.searchsorted(table, h)
            pos[pos == len(table)] = 0
            match = (table[pos] == h) & same_text
            for i, owner in zip(text_of[: len(h)][match], owners[pos[match]], strict=True):
                flagged[i] = True
                hits.setdefault(int(i), set()).add(int(owner))
        by_set: Counter = Counter()
        for owned in hits.values():
            for owner in owned:
                by_set[self._sets[owner]] += 1
        return Contamination(flagged.tolist(), by_set)

    def summary(self) -> dict:
        return {
            "ngram": self.n,
            "min_words": self.min_words,
            "eval_items": dict(sorted(self.items.items())),
            "eval_items_too_short": dict(sorted(self.too_short.items())),
        }
