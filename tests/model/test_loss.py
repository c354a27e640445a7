"""The pretraining loss: chunked == plain == torch/HF, and gradient accumulation does not change it."""

import pytest
import torch
import torch.nn.functional as F

from olmo2.model.config import ModelConfig
from olmo2.model.loss import IGNORE_INDEX, lm_loss, lm_loss_from_logits, shift_labels
from olmo2.model.transformer import build_model

V, D = 301, 24


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: with 2 threads on a shared machine, OpenMP waits dominate."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _inputs(shape=(3, 13), seed=0, dtype=torch.float32, ignore_every=4, vocab=V, dim=D):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*shape, dim, generator=gen, dtype=dtype).requires_grad_()
    weight = (0.3 * torch.randn(vocab, dim, generator=gen, dtype=dtype)).requires_grad_()
    labels = torch.randint(0, vocab, shape, generator=gen)
    labels.view(-1)[::ignore_every] = IGNORE_INDEX
    return hidden, weight, labels


def _grads(out, hidden, weight, mix):
    """Gradients of ce + mix·z: mix=1 is the fused backward, anything else the recomputing one."""
    return torch.autograd.grad(out.ce_loss + mix * out.z_loss, (hidden, weight))


@pytest.mark.parametrize("chunk_size", [1, 5, 16, 1000])  # 39 tokens: 5 and 16 do not divide it
@pytest.mark.parametrize("mix", [1.0, 0.0, 3.0])
def test_chunked_matches_plain(chunk_size, mix):
    hidden, weight, labels = _inputs()
    kw = dict(z_loss_multiplier=1e-2, normalizer=17)
    ref = lm_loss(hidden, weight, labels, chunk_size=None, **kw)
    out = lm_loss(hidden, weight, labels, chunk_size=chunk_size, **kw)
    torch.testing.assert_close(out.ce_loss, ref.ce_loss, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(out.z_loss, ref.z_loss, rtol=1e-6, atol=1e-6)
    assert out.n_tokens.item() == ref.n_tokens.item() == (labels != IGNORE_INDEX).sum().item()
    for got, want in zip(_grads(out, hidden, weight, mix), _grads(ref, hidden, weight, mix), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_ignored_rows_get_no_gradient():
    hidden, weight, labels = _inputs()
    grad_h, _ = _grads(lm_loss(hidden, weight, labels, chunk_size=7), hidden, weight, 1.0)
    ignored = labels == IGNORE_INDEX
    assert ignored.any() and (grad_h[ignored] == 0).all() and (grad_h[~ignored] != 0).any(dim=-1).all()


def test_gradcheck_float64():
    hidden, weight, labels = _inputs(shape=(2, 5), dtype=torch.float64, ignore_every=3, vocab=13, dim=4)

    def f(h, w):
        out = lm_loss(h, w, labels, chunk_size=3, z_loss_multiplier=0.1, normalizer=4.0)
        return out.ce_loss, out.z_loss

    assert torch.autograd.gradcheck(f, (hidden, weight))


def test_terms_match_direct_computation():
    hidden, weight, labels = _inputs()
    out = lm_loss(hidden, weight, labels, chunk_size=8, z_loss_multiplier=1e-4)
    logits = (hidden @ weight.T).reshape(-1, V)
    flat = labels.reshape(-1)
    ce = F.cross_entropy(logits, flat, ignore_index=IGNORE_INDEX, reduction="sum")
    lse = torch.logsumexp(logits, dim=-1)[flat != IGNORE_INDEX]
    torch.testing.assert_close(out.ce_loss, ce)
    torch.testing.assert_close(out.z_loss, 1e-4 * (lse**2).sum())
    torch.testing.assert_close(out.loss, out.ce_loss + out.z_loss)
    # The from-logits reference and a normaliser.
    ref = lm_loss_from_logits(
        logits.view(3, 13, V), labels, z_loss_multiplier=1e-4, normalizer=torch.tensor(39)
    )
    torch.testing.assert_close(ref.ce_loss, ce / 39)
    torch.testing.assert_close(ref.z_loss, 1e-4 * (lse**2).sum() / 39)


def test_no_grad_and_inputs_without_grad():
    hidden, weight, labels = _inputs()
    ref = lm_loss(hidden, weight, labels, chunk_size=None)
    with torch.no_grad():
        out = lm_loss(hidden, weight, labels, chunk_size=6)
    torch.testing.assert_close(out.ce_loss, ref.ce_loss)
    # Only the weight needs a gradient (frozen hidden states).
    out = lm_loss(hidden.detach(), weight, labels, chunk_size=6)
    (grad_w,) = torch.autograd.grad(out.loss, weight)
    torch.testing.assert_close(grad_w, torch.autograd.grad(ref.loss, weight)[0], rtol=1e-5, atol=1e-6)


def test_bf16_autocast_keeps_the_softmax_fp32():
    hidden, weight, labels = _inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = lm_loss(hidden, weight, labels, chunk_size=7)
        ref = lm_loss(hidden, weight, labels, chunk_size=None)
    assert out.ce_loss.dtype == out.z_loss.dtype == torch.float32
    torch.testing.assert_close(out.ce_loss, ref.ce_loss, rtol=1e-3, atol=1e-3)
    grads, ref_grads = _grads(out, hidden, weight, 1.0), _grads(ref, hidden, weight, 1.0)
    assert [g.dtype for g in grads] == [torch.float32, torch.float32]
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=0.05, atol=2e-3)


def test_bad_arguments():
    hidden, weight, labels = _inputs()
    with pytest.raises(ValueError, match="chunk_size must be positive"):
        lm_loss(hidden, weight, labels, chunk_size=0)
    with pytest.raises(ValueError, match="do not match"):
        lm_loss(hidden, weight, labels[:, 1:])


def test_shift_labels():
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    assert shift_labels(ids).tolist() == [[6, 7, -100], [9, 10, -100]]


def test_ce_matches_hf_loss(make_hf_model):
    """HF shifts its labels internally and averages over targets; our CE sum is that times the count."""
    from olmo2.model.checkpoint import config_from_hf

    hf = make_hf_model("gqa", seed=3)
    ours = build_model(config_from_hf(hf.config.to_dict()))
    ours.load_state_dict(hf.state_dict())
    vocab = hf.config.vocab_size
    ids = torch.randint(0, vocab, (2, 21), generator=torch.Generator().manual_seed(5))
    labels = ids.clone()
    labels[0, 4:9] = IGNORE_INDEX
    with torch.no_grad():
        hf_loss = hf(ids, labels=labels).loss
        out = lm_loss(ours.hidden_states(ids), ours.lm_head.weight, shift_labels(labels), chunk_size=16)
    assert out.n_tokens.item() == 2 * 20 - 5
    torch.testing.assert_close(out.ce_loss, hf_loss * out.n_tokens, rtol=1e-5, atol=1e-4)


def test_gradient_accumulation_invariance():
    """Four micro-batches, each divided by the global batch's token count (spec §3.2), add up to the
    whole batch: the losses and the parameter gradients."""
    cfg = ModelConfig(
        d_model=32, n_layers=2, n_heads=4, mlp_hidden=64, vocab_size=200, eos_token_id=None, pad_token_id=None
    )
    model = build_model(cfg, seed=0)
    ids = torch.randint(0, 200, (4, 12), generator=torch.Generator().manual_seed(0))
    labels = shift_labels(ids)
    labels[1, :5] = IGNORE_INDEX  # micro-batches with different target counts
    global_tokens = ids.numel()

    def step(rows):
        out = lm_loss(
            model.hidden_states(ids[rows]),
            model.lm_head.weight,
            labels[rows],
            chunk_size=10,
            normalizer=global_tokens,
        )
        out.loss.backward()
        return out.loss.detach()

    whole = step(slice(None))
    whole_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    summed = sum(step(slice(i, i + 1)) for i in range(4))
    torch.testing.assert_close(summed, whole, rtol=1e-6, atol=1e-6)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, whole_grads[name], rtol=1e-5, atol=1e-7, msg=name)


def test_training_gradients_match_hf(make_hf_model):
    """Our training path (model, custom norm/RoPE backward, chunked loss) gives HF's gradients."""
    from olmo2.model.checkpoint import config_from_hf

    hf = make_hf_model("gqa", seed=4).train()
    ours = build_model(config_from_hf(hf.config.to_dict())).train()
    ours.load_state_dict(hf.state_dict())
    ids = torch.randint(0, hf.config.vocab_size, (2, 19), generator=torch.Generator().manual_seed(6))
    n = ids.shape[0] * (ids.shape[1] - 1)
    hf(ids, labels=ids).loss.backward()
    out = lm_loss(ours.hidden_states(ids), ours.lm_head.weight, shift_labels(ids), chunk_size=8, normalizer=n)
    out.ce_loss.backward()
    hf_grads = dict(hf.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, hf_grads[name].grad, rtol=1e-4, atol=1e-6, msg=name)
