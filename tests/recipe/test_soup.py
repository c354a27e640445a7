"""olmo2 soup: exact means streamed tensor by tensor, refusals that name the checkpoint, loadable output."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from olmo2.model.checkpoint import CheckpointError, load_model, read_state_dict, save_model, save_state_dict
from olmo2.model.config import ModelConfig
from olmo2.model.transformer import build_model
from olmo2.recipe.soup import parse_weights, soup_checkpoints

CFG = ModelConfig(
    d_model=32,
    n_layers=2,
    n_heads=4,
    n_kv_heads=2,
    mlp_hidden=48,
    vocab_size=120,
    eos_token_id=118,
    pad_token_id=119,
)


def _ckpt(path, seed, cfg=CFG, dtype=None, **kwargs):
    return save_model(build_model(cfg, seed=seed), path, dtype=dtype, **kwargs)


def _states(*paths):
    return [read_state_dict(p) for p in paths]


def test_soup_of_copies_is_bit_identical(tmp_path):
    a = _ckpt(tmp_path / "a", seed=0)
    out = soup_checkpoints([a, a, a], tmp_path / "soup")
    (sa, so) = _states(a, out)
    assert so.keys() == sa.keys() and all(
        torch.equal(sa[k], so[k]) and so[k].dtype == torch.float32 for k in sa
    )
    assert (out / "config.json").read_bytes() == (a / "config.json").read_bytes()


def test_uniform_mean_of_two_and_three(tmp_path):
    paths = [_ckpt(tmp_path / f"c{i}", seed=i) for i in range(3)]
    for n in (2, 3):
        out = soup_checkpoints(paths[:n], tmp_path / f"soup{n}")
        states, so = _states(*paths[:n]), read_state_dict(out)
        for k, v in so.items():
            ref = torch.stack([s[k].double() for s in states]).mean(0).float()  # correctly rounded mean
            assert torch.equal(v, ref), k


def test_simple_values_average_exactly(tmp_path):
    shapes = {k: v.shape for k, v in build_model(CFG, "meta").state_dict().items()}
    for name, value in (("ones", 1.0), ("threes", 3.0)):
        save_state_dict({k: torch.full(s, value) for k, s in shapes.items()}, CFG, tmp_path / name)
    so = read_state_dict(soup_checkpoints([tmp_path / "ones", tmp_path / "threes"], tmp_path / "soup"))
    assert all(torch.all(v == 2.0) for v in so.values())
    weighted = soup_checkpoints([tmp_path / "ones", tmp_path / "threes"], tmp_path / "w", weights=[3, 1])
    assert all(torch.all(v == 1.5) for v in read_state_dict(weighted).values())
    provenance = json.loads((weighted / "soup.json").read_text())
    assert provenance["weights"] == [0.75, 0.25] and provenance["method"] == "weighted mean"
    assert len(provenance["inputs"][0]["config_sha256"]) == 64


def test_weighted_mean(tmp_path):
    a, b = _ckpt(tmp_path / "a", seed=1), _ckpt(tmp_path / "b", seed=2)
    out = soup_checkpoints([a, b], tmp_path / "soup", weights=parse_weights("1,3", 2))
    (sa, sb, so) = _states(a, b, out)
    for k in so:
        torch.testing.assert_close(so[k], 0.25 * sa[k] + 0.75 * sb[k], rtol=1e-6, atol=1e-7)


def test_bf16_stays_bf16_and_is_averaged_in_fp32(tmp_path):
    paths = [_ckpt(tmp_path / f"c{i}", seed=i, dtype=torch.bfloat16) for i in range(3)]
    out = soup_checkpoints(paths, tmp_path / "soup")
    states, so = _states(*paths), read_state_dict(out)
    for k, v in so.items():
        assert v.dtype == torch.bfloat16
        exact = (sum(s[k].float() for s in states) / 3).to(torch.bfloat16)  # fp32 sums of bf16 are exact
        assert torch.equal(v, exact), k
    naive = {k: ((states[0][k] + states[1][k]) + states[2][k]) / 3 for k in so}  # bf16 arithmetic
    assert any(not torch.equal(naive[k], so[k]) for k in so)  # so fp32 accumulation is observable
    assert json.loads((out / "soup.json").read_text())["accumulated_in"] == {"BF16": "float32"}


def test_sharded_inputs_and_outputs(tmp_path):
    a = _ckpt(tmp_path / "a", seed=0, max_shard_bytes=30_000)
    b = _ckpt(tmp_path / "b", seed=1)
    out = soup_checkpoints([a, b], tmp_path / "soup", max_shard_bytes=20_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 3 and all(len(load_file(out / f)) for f in files)
    (sa, sb, so) = _states(a, b, out)
    assert all(torch.equal(so[k], ((sa[k].double() + sb[k].double()) / 2).float()) for k in sa)


def test_training_checkpoint_inputs_and_loadable_output(tmp_path):
    a = _ckpt(tmp_path / "run1" / "step5" / "model", seed=0)
    b = _ckpt(tmp_path / "run2" / "step5" / "model", seed=1)
    (a / "tokenizer.json").write_text("{}")
    out = soup_checkpoints([a.parent, b.parent], tmp_path / "soup")
    assert (out / "tokenizer.json").read_text() == "{}" and (out / "generation_config.json").is_file()
    model = load_model(out)
    x = torch.randint(0, 120, (1, 7))
    with torch.no_grad():
        logits = model(x)
    transformers = pytest.importorskip("transformers")
    (out / "tokenizer.json").unlink()  # a placeholder, not a real tokenizer
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, logits, rtol=1e-4, atol=1e-4)


def test_mixed_architectures_refused(tmp_path):
    a = _ckpt(tmp_path / "a", seed=0)
    b = _ckpt(tmp_path / "b", seed=0, cfg=CFG.replace(n_layers=3))
    with pytest.raises(CheckpointError, match=r"b: architecture differs .*n_layers 3 vs 2"):
        soup_checkpoints([a, b], tmp_path / "soup")
    assert not (tmp_path / "soup").exists()


def test_tensor_shape_mismatch_refused(tmp_path):
    a = _ckpt(tmp_path / "a", seed=0)
    b = _ckpt(tmp_path / "b", seed=1)
    state = load_file(b / "model.safetensors")
    state["model.layers.1.mlp.up_proj.weight"] = torch.zeros(49, 32)
    save_file(state, b / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"b: .*model.layers.1.mlp.up_proj.weight: expected \(48, 32\)"):
        soup_checkpoints([a, b], tmp_path / "soup")


def test_dtype_mismatch_and_bad_weights_refused(tmp_path):
    a = _ckpt(tmp_path / "a", seed=0)
    b = _ckpt(tmp_path / "b", seed=1, dtype=torch.bfloat16)
    with pytest.raises(CheckpointError, match=r"b: \d+ tensor dtype\(s\) differ .*BF16 vs F32"):
        soup_checkpoints([a, b], tmp_path / "soup")
    with pytest.raises(ValueError, match="2 weight"):
        soup_checkpoints([a, a, a], tmp_path / "soup", weights=[1, 2])
    with pytest.raises(ValueError, match="positive"):
        parse_weights("1,-1", 2)
    with pytest.raises(ValueError, match="numbers"):
        parse_weights("1,x", 2)
    with pytest.raises(CheckpointError, match="not empty"):
        soup_checkpoints([a], a)
