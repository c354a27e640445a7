"""Repeated n-grams (spec §3.4): runs of >= 32 back-to-back repeats of a 1-13-token span, which OLMo 2
found in many loss-spike batches. Used at data time (``olmo2 tokenize --drop-repeats`` drops such
documents) and at train time (``data.filter_repeats`` loss-masks such instances). No torch here:
tokenize's worker processes import this module."""

from __future__ import annotations

import numpy as np

MAX_PERIOD = 13  # the longest repeated span, in tokens
MIN_REPEATS = 32  # back-to-back repeats that make a run


def repeated_ngram_mask(instance, max_period: int = MAX_PERIOD, min_count: int = MIN_REPEATS):
    """True where an instance holds >= ``min_count`` back-to-back repeats of a 1..``max_period``-token span.

    Spec §3.4: such an instance is loss-masked *whole* (OLMo ``instance_filter``). Accepts [L] -> bool
    or [n, L] -> bool array. ``min_count`` repeats of period p are a run of (min_count - 1)*p positions
    with x[i] == x[i + p].
    """
    x = np.asarray(instance)
    single = x.ndim == 1
    x = x.reshape(1, -1) if single else x
    out = np.zeros(x.shape[0], dtype=bool)
    for p in range(1, max_period + 1):
        need = (min_count - 1) * p
        if x.shape[1] - p < need:
            break
        eq = (x[:, p:] == x[:, :-p]).astype(np.int32)
        run = np.concatenate([np.zeros((x.shape[0], 1), np.int32), np.cumsum(eq, axis=1)], axis=1)
        out |= ((run[:, need:] - run[:, :-need]) == need).any(axis=1)
    return bool(out[0]) if single else out
