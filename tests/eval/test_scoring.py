"""The batched log-likelihood engine and the metrics, on tiny random models (small vocabulary)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from eval_models import llama_hf, naive_loglikelihood, olmo2_hf

from olmo2.eval.generative import exact_match, extract_answer, normalize_answer
from olmo2.eval.lm import HFLM, Olmo2LM
from olmo2.eval.scoring import bpb_metrics, loglikelihoods, macro, mc_or_rc, ranked_metrics
from olmo2.model.checkpoint import load_model


def _requests(seed: int = 0, vocab: int = 300) -> list[tuple[list[int], list[int]]]:
    """Few-shot-like requests: a shared prefix, per-doc questions, several continuations each
    (single-token ones, shared-first-token ones, repeats, an identical duplicate)."""
    g = np.random.default_rng(seed)
    tok = lambda n: g.integers(0, vocab - 2, n).tolist()  # noqa: E731
    shots = tok(40)
    reqs = []
    for _ in range(6):
        ctx = shots + tok(int(g.integers(3, 15)))
        conts = [tok(1), tok(1), tok(int(g.integers(2, 6))), tok(int(g.integers(2, 9)))]
        conts.append(conts[3][:1] + tok(3))  # shares its first token with another continuation
        reqs += [(ctx, c) for c in conts]
        reqs.append((tok(2), conts[2]))  # a short unrelated context (like the PMI "Answer:")
    reqs.append(reqs[0])  # exact duplicate
    reqs.append((shots[:5], tok(4)))
    return reqs


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    hf = olmo2_hf(seed=3)
    d = tmp_path_factory.mktemp("ck")
    hf.save_pretrained(d)
    return hf.double(), load_model(d, dtype=torch.float64)


@pytest.mark.parametrize("batch_size,max_tokens", [(1, 10_000), (3, 64), (64, 10_000)])
def test_batched_matches_naive(models, batch_size, max_tokens):
    """Against an unbatched forward of the same model (ours in fp64 differs from HF's kernels at ~1e-7,
    so each adapter is held to its own model at 1e-9, and the two models to each other at 1e-5)."""
    hf, ours = models
    reqs = _requests()
    ref_hf = np.array([naive_loglikelihood(hf, c, k) for c, k in reqs])
    ref_ours = np.array([_naive_ours(ours, c, k) for c, k in reqs])
    np.testing.assert_allclose(ref_ours, ref_hf, atol=1e-5)
    for lm, ref in ((Olmo2LM(ours), ref_ours), (HFLM(hf), ref_hf)):
        got = loglikelihoods(lm, reqs, batch_size=batch_size, max_batch_tokens=max_tokens)
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-9, err_msg=type(lm).__name__)


def _naive_ours(model, ctx, cont) -> float:
    with torch.no_grad():
        lp = model(torch.tensor([ctx + cont[:-1]]))[0].log_softmax(-1)
    return float(sum(lp[len(ctx) - 1 + i, t] for i, t in enumerate(cont)))


def test_prefix_and_packing_paths_are_used(models, monkeypatch):
    """The cheap paths really run: a shared prefix is prefilled once and rows are packed."""
    _, ours = models
    lm = Olmo2LM(ours)
    calls = {"prefill": 0, "packed": 0}
    orig_prefill, orig_lp = lm.prefill, lm.token_logprobs

    def prefill(tokens, past=None):
        calls["prefill"] += 1
        return orig_prefill(tokens, past)

    def token_logprobs(*a, **kw):
        calls["packed"] += kw.get("attn") is not None
        return orig_lp(*a, **kw)

    monkeypatch.setattr(lm, "prefill", prefill)
    monkeypatch.setattr(lm, "token_logprobs", token_logprobs)
    loglikelihoods(lm, _requests(), batch_size=64)
    assert calls["prefill"] >= 1 and calls["packed"] >= 1


def test_non_olmo_hf_model_and_truncation():
    llama = llama_hf().double()
    lm = HFLM(llama, max_length=24)
    assert lm.supports_prefix
    reqs = _requests()
    got = loglikelihoods(lm, reqs, batch_size=4)
    # Reference: keep the last 24 tokens of context + continuation[:-1], as olmo-eval does.
    ref = []
    for c, k in reqs:
        keep = (c + k[:-1])[-24:]
        ref.append(naive_loglikelihood(llama, keep[: len(keep) - len(k) + 1], k))
    np.testing.assert_allclose(got, ref, atol=1e-9)


def test_empty_context_uses_eos_and_bad_inputs(models):
    hf, ours = models
    lm = Olmo2LM(ours)
    eos = ours.config.eos_token_id
    got = loglikelihoods(lm, [([], [5, 6]), ([eos], [5, 6])])
    assert got[0] == pytest.approx(got[1], abs=1e-12)
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        loglikelihoods(lm, [([1, 2], [10**6])])
    with pytest.raises(ValueError, match="empty continuation"):
        loglikelihoods(lm, [([1, 2], [])])


def _doc(gold, ll, uncond=None, conts=(" a", " bbbb", " cc")):
    return {
        "gold": gold,
        "logprobs": ll,
        "uncond_logprobs": uncond,
        "num_tokens": [1, 3, 2],
        "num_chars": [len(c) for c in conts],
        "num_bytes": [len(c.encode()) for c in conts],
    }


def test_ranked_metrics_normalisations():
    # none picks 0; per token picks 1 (-3/3 = -1 > -2/2? no: -1 vs -1 tie -> first max); per char etc.
    docs = [
        _doc(1, [-2.0, -3.0, -2.5], uncond=[-1.0, -4.0, -1.0]),
        _doc(2, [-6.0, -6.5, -3.0], uncond=[-5.0, -5.0, -1.0]),
    ]
    m = ranked_metrics(docs, "pmi")
    # doc 0: none 0; token [-2, -1, -1.25] -> 1; char [-1, -0.6, -0.833] -> 1; pmi [-1, 1, -1.5] -> 1
    # doc 1: none 2; token [-6, -2.17, -1.5] -> 2; char [-3, -1.3, -1] -> 2; pmi [-1, -1.5, -2] -> 0
    assert [d["pred"] for d in docs] == [
        {"none": 0, "token": 1, "char": 1, "pmi": 1},
        {"none": 2, "token": 2, "char": 2, "pmi": 0},
    ]
    assert m["acc_raw"] == 0.5 and m["acc_per_token"] == 1.0 and m["acc_per_char"] == 1.0
    assert m["acc_uncond"] == 0.5 and m["primary"] == 0.5 and m["primary_metric"] == "acc_uncond"
    bits = (3.0 / 5 + 3.0 / 3) / math.log(2) / 2
    assert m["bits_per_byte_gold"] == pytest.approx(bits)
    with pytest.raises(ValueError, match="unconditional"):
        ranked_metrics([_doc(0, [-1.0, -2.0, -3.0])], "pmi")


def test_ties_go_to_the_first_choice():
    assert ranked_metrics([_doc(0, [-1.0, -1.0, -1.0])], "none")["acc_raw"] == 1.0


def test_bpb_macro_and_mc_or_rc():
    docs = [
        {"logprobs": [-8 * math.log(2)], "num_bytes": [4]},
        {"logprobs": [-2 * math.log(2)], "num_bytes": [4]},
    ]
    m = bpb_metrics(docs)
    assert m["bits_per_byte"] == pytest.approx(1.25) and m["bits_per_byte_corpus"] == pytest.approx(1.25)
    assert docs[0]["bits_per_byte"] == pytest.approx(2.0)
    mac = macro(
        {"a": {"x": 1.0, "docs": 1, "primary_metric": "x"}, "b": {"x": 0.0, "docs": 3, "primary_metric": "x"}}
    )
    assert mac["primary"] == 0.5 and mac["docs"] == 4
    assert mc_or_rc({"primary": 0.3}, {"primary": 0.4}) == {
        "primary_metric": "mc_or_rc",
        "primary": 0.4,
        "chosen": "rc",
    }


@pytest.mark.parametrize(
    "text,answer",
    [
        (" She makes 9 * 2 = $18 every day. So the answer is 18.", "18"),
        (" 3 + 4 = 7 apples, then 1,200 more.", "1200"),
        (" So the answer is $1,000.00.", "1000"),
        (" the answer is -3. Then 5 more", "-3"),
        (" no numbers here", "no numbers here"),
    ],
)
def test_answer_extraction(text, answer):
    assert extract_answer(text) == answer


def test_exact_match_normalises_gold():
    assert exact_match("So the answer is 18.", "18")
    assert normalize_answer("Janet ... #### 1,018") == "1018"
    assert not exact_match("So the answer is 17.", "18")
