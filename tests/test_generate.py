"""KV-cache generation against Hugging Face ``generate`` on identical weights (CPU, fp32, tiny models)."""

from __future__ import annotations

import math

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers.generation.logits_process import (  # noqa: E402
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from olmo2.generate import (  # noqa: E402
    GenerationConfig,
    _generate,
    _sample_rows,
    filter_logits,
    generate,
    generate_text,
)
from olmo2.model.config import ModelConfig  # noqa: E402
from olmo2.model.transformer import build_model  # noqa: E402

EOS, PAD = 3, 1  # inside every test vocabulary

SHAPES = {
    "mha": dict(d_model=64, n_layers=2, n_heads=4, mlp_hidden=128, vocab_size=256),
    "gqa_odd": dict(d_model=96, n_layers=3, n_heads=6, n_kv_heads=2, mlp_hidden=200, vocab_size=1000),
}


def make_pair(shape: str, seed: int = 0):
    """Our model and an HF ``Olmo2ForCausalLM`` with the same weights (norm weights randomised)."""
    s = SHAPES[shape]
    cfg = ModelConfig(**s, embedding_size=s["vocab_size"], init_std=0.05, eos_token_id=EOS, pad_token_id=PAD)
    ours = build_model(cfg, seed=seed).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn(p.shape, generator=gen))
    hc = transformers.Olmo2Config(
        vocab_size=cfg.embedding_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.mlp_hidden,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        max_position_embeddings=512,
        rope_parameters={"rope_theta": 500000.0, "rope_type": "default"},
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        eos_token_id=EOS,
        pad_token_id=PAD,
        bos_token_id=None,
    )
    hf = transformers.Olmo2ForCausalLM(hc).eval()
    hf.load_state_dict(ours.state_dict())
    return ours, hf


@pytest.fixture(scope="module", params=list(SHAPES))
def pair(request):
    return make_pair(request.param)


def random_prompts(lengths, vocab, seed=0):
    gen = torch.Generator().manual_seed(seed)
    # Avoid EOS/PAD in prompts so that nothing but generation can produce them.
    return [torch.randint(4, vocab, (n,), generator=gen).tolist() for n in lengths]


def hf_greedy(hf, prompts, n, eos=None):
    """HF greedy continuation with left padding; cut after the first EOS like ours."""
    P = max(map(len, prompts))
    ids = torch.tensor([[PAD] * (P - len(p)) + p for p in prompts])
    attn = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts])
    kw = dict(max_new_tokens=n, do_sample=False, pad_token_id=PAD, eos_token_id=eos)
    if eos is None:
        kw["min_new_tokens"] = n
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=attn, **kw)[:, P:].tolist()
    return [row[: row.index(eos) + 1] if eos in row else row for row in out]


def test_greedy_single_prompt_matches_hf(pair):
    ours, hf = pair
    prompts = random_prompts([9], ours.config.vocab_size)
    got = generate(ours, prompts, GenerationConfig(max_new_tokens=24))
    assert got == hf_greedy(hf, prompts, 24)
    assert len(got[0]) == 24


def test_greedy_ragged_batch_matches_hf_and_single(pair):
    ours, hf = pair
    prompts = random_prompts([5, 13, 1, 8], ours.config.vocab_size, seed=1)
    cfg = GenerationConfig(max_new_tokens=20)
    got = generate(ours, prompts, cfg, pad_token_id=PAD)
    assert got == hf_greedy(hf, prompts, 20)
    assert got == [generate(ours, [p], cfg)[0] for p in prompts]  # padding changes nothing


def test_cached_logits_equal_full_forward(pair):
    ours, _ = pair
    prompts = random_prompts([4, 11, 7], ours.config.vocab_size, seed=2)
    for batch in ([prompts[0]], prompts):  # batch 1 and the ragged batch use different head/mask paths
        toks, logits = _generate(
            ours, batch, GenerationConfig(max_new_tokens=12), None, None, keep_logits=True
        )
        for i, (p, new) in enumerate(zip(batch, toks, strict=True)):
            with torch.no_grad():
                full = ours(torch.tensor([p + new[:-1]]))[0, len(p) - 1 :]
            torch.testing.assert_close(logits[i], full, atol=1e-5, rtol=0)


def test_stops_at_eos_and_returns_nothing_after(pair):
    ours, hf = pair
    prompts = random_prompts([6, 10], ours.config.vocab_size, seed=3)
    free = generate(ours, prompts, GenerationConfig(max_new_tokens=16))
    # Use as EOS the token row 0 produces at some step k >= 2 (its first occurrence).
    k = next(i for i in range(2, 16) if free[0][i] not in free[0][:i])
    eos = free[0][k]
    got = generate(ours, prompts, GenerationConfig(max_new_tokens=16), eos_token_id=eos)
    assert got[0] == free[0][: k + 1] and got[0][-1] == eos
    for row, ref in zip(got, free, strict=True):
        cut = ref.index(eos) + 1 if eos in ref else len(ref)
        assert row == ref[:cut]
    assert got == hf_greedy(hf, prompts, 16, eos=eos)
    # stop_on_eos=False ignores it; stop_token_ids stop like EOS.
    assert generate(ours, prompts, GenerationConfig(16, stop_on_eos=False), eos_token_id=eos) == free
    assert generate(ours, prompts, GenerationConfig(16, stop_token_ids=[eos])) == got


def test_generation_ends_when_every_row_has_stopped():
    ours, _ = make_pair("mha")
    prompts = random_prompts([5, 7], ours.config.vocab_size, seed=4)
    free = generate(ours, prompts, GenerationConfig(max_new_tokens=30))
    stops = [free[0][2], free[1][4]]
    cfg = GenerationConfig(max_new_tokens=30, stop_token_ids=stops)
    toks, logits = _generate(ours, prompts, cfg, None, None, keep_logits=True)
    assert all(row[-1] in stops and len(row) <= 5 for row in toks)
    assert logits.shape[1] == max(map(len, toks))  # no step ran after the last row stopped


def test_until_drops_ended_rows_and_the_rest_match_hf(pair):
    ours, hf = pair
    prompts = random_prompts([5, 12, 8], ours.config.vocab_size, seed=5)
    free = generate(ours, prompts, GenerationConfig(max_new_tokens=20), pad_token_id=PAD)
    asked = []

    def until(row, new):  # row 1 ends once it has 6 tokens, row 0 at 13; row 2 runs to the end
        asked.append((row, len(new)))
        return len(new) >= {0: 13, 1: 6}.get(row, 99)

    got = generate(ours, prompts, GenerationConfig(max_new_tokens=20, check_every=3), until=until)
    assert got == [free[0][:15], free[1][:6], free[2]] and free == hf_greedy(hf, prompts, 20)
    assert {n for _, n in asked} == {3, 6, 9, 12, 15, 18}  # asked every 3 steps
    assert [r for r, n in asked if n > 6] == [0, 2, 0, 2, 0, 2, 2]  # row 1 left the batch at 6


def test_head_cache_follows_in_place_weight_changes():
    ours, _ = make_pair("mha")
    prompt = random_prompts([6], ours.config.vocab_size, seed=8)
    cfg = GenerationConfig(max_new_tokens=10)
    first = generate(ours, prompt, cfg)[0]  # batch 1 on CPU: uses the cached transposed head
    t, u = first[0], (first[0] + 1) % ours.config.vocab_size
    with torch.no_grad():
        w = ours.lm_head.weight
        w[[t, u]] = w[[u, t]].clone()  # swap two rows: step 0's greedy token becomes u
    assert generate(ours, prompt, cfg)[0][0] == u


def test_top_k_1_is_greedy(pair):
    ours, _ = pair
    prompts = random_prompts([6, 3], ours.config.vocab_size, seed=5)
    greedy = generate(ours, prompts, GenerationConfig(max_new_tokens=12))
    sampled = generate(ours, prompts, GenerationConfig(max_new_tokens=12, temperature=0.7, top_k=1, seed=1))
    assert sampled == greedy


def test_sampling_is_reproducible_per_seed():
    ours, _ = make_pair("gqa_odd")
    prompts = random_prompts([4, 9], ours.config.vocab_size, seed=6)

    def sample(seed, **kw):
        return generate(ours, prompts, GenerationConfig(max_new_tokens=20, temperature=1.5, seed=seed, **kw))

    assert sample(0) == sample(0)
    assert sample(0) != sample(1)
    assert sample(3, top_k=50, top_p=0.9) == sample(3, top_k=50, top_p=0.9)
    assert all(len(r) == 20 for r in sample(2))


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"), [(1.0, 5, 1.0), (1.0, None, 0.7), (0.6, 20, 0.5), (2.0, 1, 0.9)]
)
def test_filter_logits_matches_hf_warpers(temperature, top_k, top_p):
    gen = torch.Generator().manual_seed(7)
    logits = torch.randn(4, 300, generator=gen) * 3
    logits[0, :10] = 5.0  # ties around the top-k cut-off
    ref = TemperatureLogitsWarper(temperature)(None, logits.clone()) if temperature != 1.0 else logits.clone()
    if top_k:
        ref = TopKLogitsWarper(top_k)(None, ref)
    if top_p < 1.0:
        ref = TopPLogitsWarper(top_p)(None, ref)
    got = filter_logits(logits, temperature, top_k, top_p)
    assert torch.equal(torch.isinf(got), torch.isinf(ref))
    torch.testing.assert_close(got, ref, atol=0, rtol=0)
    assert (~torch.isinf(got)).sum(-1).min() >= 1


def test_filter_logits_off_is_identity():
    logits = torch.randn(2, 50)
    assert torch.equal(filter_logits(logits, 1.0, 0, 1.0), logits)
    assert torch.equal(filter_logits(logits, 1.0, None, 1.0), logits)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(max_new_tokens=2.5), "max_new_tokens"),
        (dict(temperature=-0.1), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(top_k=-1), "top_k"),
        (dict(top_k=1.5), "top_k"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.2), "top_p"),
        (dict(seed="1"), "seed"),
        (dict(stop_on_eos=1), "stop_on_eos"),
        (dict(stop_token_ids=[-1]), "stop_token_ids"),
        (dict(check_every=0), "check_every"),
    ],
)
def test_bad_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GenerationConfig(**kwargs)


def test_bad_inputs_raise():
    ours, _ = make_pair("mha")
    with pytest.raises(ValueError, match="non-empty"):
        generate(ours, [])
    with pytest.raises(ValueError, match="prompt 1"):
        generate(ours, [[5], []])
    with pytest.raises(ValueError, match="outside"):
        generate(ours, [[5, 256]])
    with pytest.raises(ValueError, match="eos_token_id"):
        generate(ours, [[5]], eos_token_id=10_000)


class CharTokenizer:
    """Duck-typed tokenizer: one id per byte, EOS = 3."""

    eos_token_id, pad_token_id = EOS, PAD

    def encode(self, text):
        return list(text.encode())

    def decode(self, ids):
        return bytes(i for i in ids if i >= 32 and i < 127).decode()


def test_generate_text_roundtrip():
    ours, _ = make_pair("mha")
    tok = CharTokenizer()
    cfg = GenerationConfig(max_new_tokens=8)
    texts = generate_text(ours, tok, ["hello", "a longer prompt"], cfg)
    ids = generate(ours, [tok.encode("hello"), tok.encode("a longer prompt")], cfg, eos_token_id=EOS)
    assert texts == [tok.decode([i for i in row if i != EOS]) for row in ids]
    with pytest.raises(ValueError, match="list of strings"):
        generate_text(ours, tok, "hello", cfg)


def test_row_seeded_sampling_depends_on_the_row_alone():
    """RLVR splits a step's rollouts over ranks: with ``row_seeds`` a row draws the same tokens
    whatever else is in its batch, and different seeds draw differently."""
    ours, _ = make_pair("mha")
    prompts = random_prompts([5, 9, 3, 7], ours.config.vocab_size, seed=11)
    cfg = GenerationConfig(max_new_tokens=12, temperature=1.0, stop_on_eos=False)
    together = generate(ours, prompts, cfg, row_seeds=[10, 11, 12, 13])
    alone = [
        generate(ours, [p], cfg, row_seeds=[s])[0] for p, s in zip(prompts, [10, 11, 12, 13], strict=True)
    ]
    swapped = generate(ours, prompts[::-1], cfg, row_seeds=[13, 12, 11, 10])[::-1]
    assert together == alone == swapped
    assert generate(ours, prompts, cfg, row_seeds=[20, 21, 22, 23]) != together


def test_row_seeded_sampling_follows_the_softmax():
    scores = torch.tensor([0.0, 1.0, 2.0, -1.0, -math.inf]).expand(20000, 5)
    tokens = _sample_rows(scores, torch.arange(20000), step=3)
    freq = torch.bincount(tokens, minlength=5).double() / 20000
    torch.testing.assert_close(freq, scores[0].double().softmax(-1), atol=0.01, rtol=0)  # 3σ ≈ 0.01
    assert freq[4] == 0  # a filtered token is never drawn
