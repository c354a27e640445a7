"""The repeated n-gram test (spec §3.4): >= 32 back-to-back repeats of a 1-13-token span."""

import numpy as np
import pytest

from olmo2.data.repeats import repeated_ngram_mask


@pytest.mark.parametrize("period", [1, 2, 7, 13])
def test_repeated_ngram_mask(period):
    rng = np.random.default_rng(period)
    gram = rng.integers(1, 50_000, period) + np.arange(period) * 50_000  # no shorter period inside
    clean = rng.integers(0, 100_000, 4096)
    for count, masked in ((32, True), (31, False)):
        x = clean.copy()
        x[100 : 100 + count * period] = np.tile(gram, count)
        assert repeated_ngram_mask(x) is masked, (period, count)
    assert not repeated_ngram_mask(clean)
    batch = np.stack([clean, np.full(4096, 5)])
    np.testing.assert_array_equal(repeated_ngram_mask(batch), [False, True])
    long_gram = np.tile(rng.integers(0, 100_000, 14), 40)  # period 14 is beyond the filter
    assert not repeated_ngram_mask(long_gram)
