"""Parity with transformers' Olmo2ForCausalLM, both directions, through the converter."""

import json

import pytest
import torch

from olmo2.generate import GenerationConfig, generate
from olmo2.model.checkpoint import load_model, read_state_dict, save_model
from olmo2.model.config import ModelConfig
from olmo2.model.convert import convert_checkpoint
from olmo2.model.transformer import build_model

transformers = pytest.importorskip("transformers")


def _greedy_hf(hf, prompt: list[int], n: int) -> list[int]:
    out = hf.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=None)
    return out[0, len(prompt) :].tolist()


def _greedy_ours(model, prompt: list[int], n: int) -> list[int]:
    return generate(model, [prompt], GenerationConfig(max_new_tokens=n, temperature=0.0, stop_on_eos=False))[
        0
    ]


def test_hf_to_ours_logits_and_greedy(tmp_path, hf_shape, make_hf_model):
    hf = make_hf_model(hf_shape, seed=1)
    hf.save_pretrained(tmp_path / "hf")
    convert_checkpoint(tmp_path / "hf", tmp_path / "ours", with_tokenizer=False)
    ours = load_model(tmp_path / "ours")
    vocab = hf.config.vocab_size
    x = torch.randint(0, vocab, (3, 37), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (hf(x).logits - ours(x)).abs().max().item()
    assert diff <= 1e-4
    prompt = x[0, :11].tolist()
    assert _greedy_ours(ours, prompt, 24) == _greedy_hf(hf, prompt, 24)


def test_ours_to_hf_logits_and_greedy(tmp_path):
    cfg = ModelConfig(
        d_model=96,
        n_layers=3,
        n_heads=6,
        n_kv_heads=3,
        mlp_hidden=160,
        vocab_size=900,
        eos_token_id=898,
        pad_token_id=899,
    )
    ours = build_model(cfg, seed=3).eval()
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if "norm" in name:
                p.mul_(1 + 0.2 * torch.randn_like(p))
    save_model(ours, tmp_path / "ours")
    convert_checkpoint(tmp_path / "ours", tmp_path / "hf", with_tokenizer=False)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(hf).__name__ == "Olmo2ForCausalLM"
    assert hf.config.vocab_size == 1024 and hf.config.num_key_value_heads == 3
    x = torch.randint(0, 900, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (hf(x).logits - ours(x)).abs().max().item()
    assert diff <= 1e-4
    prompt = x[1, :9].tolist()
    assert _greedy_hf(hf, prompt, 20) == _greedy_ours(ours, prompt, 20)


def test_round_trip_is_bit_exact(tmp_path, make_hf_model):
    hf = make_hf_model("odd", seed=2)
    hf.save_pretrained(tmp_path / "hf")
    convert_checkpoint(tmp_path / "hf", tmp_path / "ours", with_tokenizer=False)
    convert_checkpoint(tmp_path / "ours", tmp_path / "back", with_tokenizer=False)
    original, back = read_state_dict(tmp_path / "hf"), read_state_dict(tmp_path / "back")
    assert original.keys() == back.keys()
    assert all(torch.equal(original[k], back[k]) for k in original)
    # Same bytes on disk, too.
    assert (tmp_path / "hf/model.safetensors").read_bytes() == (
        tmp_path / "back/model.safetensors"
    ).read_bytes()
    model_keys = ("hidden_size", "num_key_value_heads", "vocab_size", "rms_norm_eps", "rope_parameters")
    a, b = (json.loads((tmp_path / d / "config.json").read_text()) for d in ("hf", "back"))
    assert {k: a[k] for k in model_keys} == {k: b[k] for k in model_keys}


def test_bf16_export_loads_in_hf(tmp_path, make_hf_model):
    hf = make_hf_model("mha", seed=4)
    hf.save_pretrained(tmp_path / "hf")
    convert_checkpoint(tmp_path / "hf", tmp_path / "bf16", dtype="bfloat16", with_tokenizer=False)
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "bf16", dtype="auto")
    assert back.model.embed_tokens.weight.dtype == torch.bfloat16
    assert torch.equal(back.lm_head.weight, hf.lm_head.weight.to(torch.bfloat16))


def test_to_hf_carries_tokenizer_and_chat_template(tmp_path):
    from olmo2.chat import encode_chat
    from olmo2.tokenizer import load_tokenizer

    cfg = ModelConfig(d_model=64, n_layers=1, n_heads=2, mlp_hidden=64)
    save_model(build_model(cfg), tmp_path / "ours")
    convert_checkpoint(tmp_path / "ours", tmp_path / "hf")
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    messages = [{"role": "user", "content": "How are you doing?"}, {"role": "assistant", "content": "Fine."}]
    ours = encode_chat(load_tokenizer(), messages).input_ids
    theirs = hf_tok.apply_chat_template(messages, tokenize=True)
    theirs = theirs["input_ids"] if isinstance(theirs, dict) or hasattr(theirs, "keys") else theirs
    assert list(theirs) == list(ours)
    assert hf_tok.encode("Hello world!") == load_tokenizer().encode("Hello world!")
