"""Evaluation tests run their tiny models on one thread."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread avoids OpenMP synchronisation costs that dominate (and, on a
    busy 2-core machine, multiply) the run time of millisecond-sized ops."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
