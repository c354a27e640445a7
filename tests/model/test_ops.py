"""The hand-written backward passes of model/ops.py against autograd's numerical gradients (float64)."""

import torch

from olmo2.model.ops import apply_rotary, rms_norm, swiglu_down
from olmo2.model.transformer import RotaryEmbedding


def test_rms_norm_backward_gradcheck():
    gen = torch.Generator().manual_seed(0)
    weight = (1 + 0.3 * torch.randn(12, generator=gen, dtype=torch.float64)).requires_grad_()
    x = torch.randn(2, 3, 12, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: rms_norm(x, w, 1e-6), (x, weight))


def test_rotary_backward_gradcheck_and_textbook_form():
    gen = torch.Generator().manual_seed(0)
    cos, sin = RotaryEmbedding(8, 10_000.0, 16).tables(torch.arange(5), 5)
    q = torch.randn(2, 3, 5, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q: apply_rotary(q, cos.double(), sin.double()), (q,))
    textbook = q * cos + torch.cat((-q[..., 4:], q[..., :4]), dim=-1) * sin
    with torch.no_grad():  # the no-grad path (generation) computes the same thing
        torch.testing.assert_close(apply_rotary(q, cos, sin), textbook)
    torch.testing.assert_close(apply_rotary(q, cos, sin), textbook)


def test_swiglu_down_backward_gradcheck():
    g = torch.Generator().manual_seed(0)
    gate, up = (torch.randn(2, 3, 8, generator=g, dtype=torch.float64, requires_grad=True) for _ in "gu")
    weight = torch.randn(5, 8, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(swiglu_down, (gate, up, weight))
