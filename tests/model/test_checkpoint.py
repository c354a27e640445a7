"""Checkpoint format: atomic writes, sharding, and clear refusals of bad directories."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from olmo2.model.checkpoint import CheckpointError, load_model, read_state_dict, save_model
from olmo2.model.config import ModelConfig
from olmo2.model.convert import convert_checkpoint
from olmo2.model.transformer import build_model

CFG = ModelConfig(
    d_model=64,
    n_layers=2,
    n_heads=4,
    n_kv_heads=2,
    mlp_hidden=96,
    vocab_size=250,
    eos_token_id=248,
    pad_token_id=249,
)


@pytest.fixture
def saved(tmp_path):
    model = build_model(CFG, seed=0)
    return model, save_model(model, tmp_path / "ckpt")


def test_save_load_round_trip(saved):
    model, path = saved
    loaded = load_model(path)
    assert loaded.config == model.config
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    x = torch.randint(0, 250, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x), rtol=0, atol=0)


def test_training_checkpoint_layout_is_accepted(tmp_path):
    save_model(build_model(CFG), tmp_path / "step10" / "model")
    assert load_model(tmp_path / "step10").config.d_model == 64


def test_sharded_save_loads_here_and_in_hf(tmp_path):
    model = build_model(CFG, seed=5)
    save_model(model, tmp_path / "sharded", max_shard_bytes=40_000)
    index = json.loads((tmp_path / "sharded/model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 3
    state = read_state_dict(tmp_path / "sharded")
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "sharded")
    assert torch.equal(hf.lm_head.weight, model.lm_head.weight)


def test_refuses_non_empty_output_and_leaves_no_partial_dir(tmp_path, saved):
    model, path = saved
    with pytest.raises(CheckpointError, match="already exists and is not empty"):
        save_model(model, path)
    with pytest.raises(FileNotFoundError):
        save_model(model, tmp_path / "broken", extra_files={"x.json": tmp_path / "does-not-exist"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_other_architecture_is_refused(tmp_path, saved):
    _, path = saved
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(model_type="llama", architectures=["LlamaForCausalLM"])
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="not an OLMo 2 model \\(model_type='llama'"):
        load_model(path)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"tie_word_embeddings": True}, "embeddings are untied"),
        ({"attention_bias": True}, "no biases"),
        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}}, "rope type 'yarn'"),
        ({"num_key_value_heads": 3}, "n_kv_heads \\(3\\) does not divide n_heads \\(4\\)"),
    ],
)
def test_unsupported_config_is_refused(saved, change, message):
    _, path = saved
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(change)
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=message):
        load_model(path)


def test_missing_and_mismatched_tensors_are_named(tmp_path, saved):
    _, path = saved
    state = load_file(path / "model.safetensors")
    del state["model.layers.1.mlp.up_proj.weight"]
    state["model.layers.0.self_attn.k_norm.weight"] = torch.ones(7)
    state["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(64)
    save_file(state, path / "model.safetensors")
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    text = str(err.value)
    assert "1 missing tensor(s): model.layers.1.mlp.up_proj.weight" in text
    assert "unexpected tensor(s): model.layers.0.self_attn.q_proj.bias" in text
    assert "model.layers.0.self_attn.k_norm.weight: expected (32,), found (7,)" in text


def test_missing_directory_and_config(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model(tmp_path / "empty")


class _Evil:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').touch()",))


def test_legacy_bin_loads_without_executing_code(tmp_path, saved, monkeypatch):
    model, path = saved
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "config.json").write_text((path / "config.json").read_text())
    torch.save(model.state_dict(), legacy / "pytorch_model.bin")
    assert torch.equal(load_model(legacy).lm_head.weight, model.lm_head.weight)
    monkeypatch.chdir(tmp_path)
    torch.save({"x": _Evil()}, legacy / "pytorch_model.bin")
    with pytest.raises(Exception, match="[Ww]eights only load failed|Unsupported global"):
        load_model(legacy)
    assert not (tmp_path / "PWNED").exists()


def test_convert_unknown_dtype(tmp_path, saved):
    _, path = saved
    with pytest.raises(CheckpointError, match="unknown dtype 'fp8'"):
        convert_checkpoint(path, tmp_path / "out", dtype="fp8", with_tokenizer=False)


@pytest.mark.parametrize("damage", ["truncated", "garbage header"])
def test_corrupt_weights_are_a_value_error_naming_the_file(saved, damage):
    _, path = saved
    weights = path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\xff" * 64 + data[64:])
    with pytest.raises(ValueError, match=f"{weights}: unreadable, truncated or corrupt"):
        load_model(path)
