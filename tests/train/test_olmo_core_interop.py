"""OLMo-core checkpoints both ways (``olmo2 convert from-olmo-core`` / ``to-olmo-core``), against
OLMo-core's own model, AdamW and checkpoint functions: the weights, both AdamW moments and the step
counts cross over exactly, and training goes on alike on both sides."""

import os
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from olmo2.cli import main
from olmo2.model.config import ModelConfig
from olmo2.model.transformer import build_model
from olmo2.train.checkpoint import load_checkpoint
from olmo2.train.config import load_train_config
from olmo2.train.distributed import DistEnv
from olmo2.train.engine import Part
from olmo2.train.olmo_core_checkpoint import from_olmo_core_name, to_olmo_core_name
from olmo2.train.optim import OptimConfig, build_optimizer
from olmo2.train.trainer import train

olmo_core_checkpoint = pytest.importorskip("olmo_core.distributed.checkpoint")
from olmo_core.nn.transformer import TransformerBlockType, TransformerConfig  # noqa: E402
from olmo_core.optim import AdamWConfig, OptimGroupOverride, SkipStepAdamWConfig  # noqa: E402

VOCAB = 384  # the training tests' vocabulary (tests/conftest.py), a multiple of 128
MODEL = {
    "d_model": 64,
    "n_layers": 2,
    "n_heads": 4,
    "n_kv_heads": 2,
    "mlp_hidden": 128,
    "vocab_size": VOCAB,
    "eos_token_id": VOCAB - 2,
    "pad_token_id": VOCAB - 1,
    "max_seq_len": 64,
}
LR = 1e-3
CPU = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def olmo_core_model(optim_config=AdamWConfig, **optim_options):
    """OLMo-core's own OLMo 2 block (reordered norm, QK-norm, RoPE θ 500k) at ``MODEL``'s shape, and
    its AdamW (or ``optim_config``) as OLMo 2 configures it (no weight decay on the input embedding)."""
    config = TransformerConfig.llama_like(
        d_model=64,
        vocab_size=VOCAB,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        hidden_size_multiplier=0.75,  # int(8 * 64 / 3 * 0.75) = 127, rounded up to 128
        hidden_size_multiple_of=128,
        block_name=TransformerBlockType.reordered_norm,
        qk_norm=True,
        rope_theta=500_000,
        layer_norm_eps=1e-6,
    )
    model = config.build(init_device="cpu")
    model.init_weights(device=torch.device("cpu"))
    optim = optim_config(
        lr=LR,
        betas=(0.9, 0.95),
        eps=1e-8,
        weight_decay=0.1,
        group_overrides=[OptimGroupOverride(params=["embeddings.weight"], opts={"weight_decay": 0.0})],
        **optim_options,
    ).build(model)
    return model, optim


def batch(seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB - 2, (2, 17), generator=torch.Generator().manual_seed(seed))


def mean_ce(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB).float(), ids[:, 1:].reshape(-1))


def olmo_core_step(model, optim, ids: torch.Tensor) -> float:
    loss = mean_ce(model(ids), ids)
    loss.backward()
    optim.step()
    optim.zero_grad(set_to_none=True)
    return loss.item()


def our_step(model, optimizer, ids: torch.Tensor) -> float:
    labels = torch.cat([ids[:, 1:], torch.full((ids.shape[0], 1), -100)], dim=1)
    out = model(ids, labels=labels, z_loss_multiplier=0.0, loss_normalizer=labels[:, :-1].numel())
    out.ce_loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return out.ce_loss.item()


@pytest.fixture(scope="module")
def olmo_core_checkpoints(tmp_path_factory):
    """Two AdamW steps of OLMo-core's model, saved by OLMo-core both ways: ``plain`` as
    ``save_model_and_optim_state`` writes by default (param groups per group), ``trainer`` as its
    trainer does (``step2/model_and_optim``, param groups per parameter)."""
    torch.manual_seed(0)
    model, optim = olmo_core_model()
    for seed in (1, 2):
        olmo_core_step(model, optim, batch(seed))
    root = tmp_path_factory.mktemp("olmo_core")
    olmo_core_checkpoint.save_model_and_optim_state(root / "plain", model, optim)
    olmo_core_checkpoint.save_model_and_optim_state(
        root / "step2" / "model_and_optim", model, optim, flatten_optimizer_state=True
    )
    (root / "model.yaml").write_text(yaml.safe_dump(MODEL))
    return {"plain": (root / "plain", False), "trainer": (root / "step2", True), "root": root}


def load_olmo_core(path: Path, flattened: bool):
    """A fresh OLMo-core model and AdamW, restored by OLMo-core's own loader."""
    model, optim = olmo_core_model()
    olmo_core_checkpoint.load_model_and_optim_state(
        path / "model_and_optim" if (path / "model_and_optim").is_dir() else path,
        model,
        optim,
        flatten_optimizer_state=flattened,
    )
    return model, optim


def load_ours(path: Path, lr: float = LR):
    """Our model and AdamW restored as ``init.checkpoint`` restores them, with the LR a schedule would set."""
    model = build_model(ModelConfig(**MODEL))
    optimizer = build_optimizer(model, OptimConfig())
    load_checkpoint(path, {"model": Part(model, optimizer)}, CPU, restore_rng=False)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return model, optimizer


def assert_same_state(ours, optimizer, theirs, optim) -> None:
    """Same weights, both AdamW moments and step counts, bit for bit, parameter by parameter."""
    their_params = dict(theirs.named_parameters())
    for name, param in ours.named_parameters():
        twin = their_params[to_olmo_core_name(name)]
        assert torch.equal(param, twin), name
        mine, their = optimizer.state[param], optim.state[twin]
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(mine[key], their[key]), f"{name} {key}"
        assert float(mine["step"]) == float(their["step"]) == 2.0, name


def test_names_cover_the_model_both_ways():
    names = list(build_model(ModelConfig(**MODEL), "meta").state_dict())
    theirs = [to_olmo_core_name(n) for n in names]
    assert set(theirs) == set(olmo_core_model()[0].state_dict())
    assert [from_olmo_core_name(n) for n in theirs] == names
    assert to_olmo_core_name("model.layers.11.mlp.up_proj.weight") == "blocks.11.feed_forward.w3.weight"
    assert to_olmo_core_name("model.layers.0.mlp.up_proj.bias") is None


@pytest.mark.parametrize("layout", ["plain", "trainer"])
def test_import_keeps_moments_and_trains_on_alike(olmo_core_checkpoints, layout, tmp_path, capsys):
    src, flattened = olmo_core_checkpoints[layout]
    model_yaml = olmo_core_checkpoints["root"] / "model.yaml"
    assert (
        main(["convert", "from-olmo-core", str(src), str(tmp_path / "ours"), "--config", str(model_yaml)])
        == 0
    )
    assert "AdamW state after 2 step(s)" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == [
        "CHECKSUMS.json",
        "COMPLETE",
        "model",
        "state.json",
        "train",
    ]
    theirs, optim = load_olmo_core(src, flattened)
    ours, optimizer = load_ours(tmp_path / "ours")
    assert_same_state(ours, optimizer, theirs, optim)
    ids = batch(3)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), theirs(ids), rtol=0, atol=1e-5)
    # One more step on each side, same batch and LR: same loss, and the same update from the moments.
    assert our_step(ours, optimizer, ids) == pytest.approx(olmo_core_step(theirs, optim, ids), rel=1e-6)
    their_params = dict(theirs.named_parameters())
    for name, param in ours.named_parameters():
        twin = their_params[to_olmo_core_name(name)]
        torch.testing.assert_close(param, twin, rtol=0, atol=1e-6)
        assert float(optimizer.state[param]["step"]) == float(optim.state[twin]["step"]) == 3.0


def test_export_round_trips_to_olmo_core(olmo_core_checkpoints, tmp_path, capsys):
    src, _ = olmo_core_checkpoints["trainer"]
    model_yaml = olmo_core_checkpoints["root"] / "model.yaml"
    assert (
        main(["convert", "from-olmo-core", str(src), str(tmp_path / "ours"), "--config", str(model_yaml)])
        == 0
    )
    assert main(["convert", "to-olmo-core", str(tmp_path / "ours"), str(tmp_path / "back")]) == 0
    # OLMo-core's loader, into its own model and AdamW: the state of the original, bit for bit.
    original, original_optim = load_olmo_core(src, flattened=True)
    back, back_optim = load_olmo_core(tmp_path / "back", flattened=True)
    ours, optimizer = load_ours(tmp_path / "ours")
    assert_same_state(ours, optimizer, original, original_optim)
    assert_same_state(ours, optimizer, back, back_optim)
    assert [g["weight_decay"] for g in back_optim.param_groups] == [0.0, 0.1]  # embedding, the rest
    with torch.no_grad():
        ids = batch(4)
        torch.testing.assert_close(back(ids), ours(ids), rtol=0, atol=1e-5)
    # A checkpoint changed since it was written is refused before anything is read into OLMo-core's format.
    shard = next((tmp_path / "ours" / "train").glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:-1] + b"x")
    assert main(["convert", "to-olmo-core", str(tmp_path / "ours"), str(tmp_path / "again")]) == 4
    assert f"{tmp_path / 'ours'} is damaged: {shard} has changed" in capsys.readouterr().err
    assert not (tmp_path / "again").exists()


def test_stage2_starts_from_an_imported_checkpoint_and_exports(
    make_train_config, olmo_core_checkpoints, tmp_path
):
    """``init.checkpoint`` with ``init.load_optimizer: true`` takes the import; the run's own checkpoint
    then goes back to OLMo-core."""
    config = make_train_config(model=MODEL)
    src, _ = olmo_core_checkpoints["trainer"]
    assert (
        main(["convert", "from-olmo-core", str(src), str(tmp_path / "imported"), "--config", str(config)])
        == 0
    )
    cfg = load_train_config(
        config, [f"init.checkpoint={tmp_path / 'imported'}", "run.max_steps=2", "schedule.warmup_steps=0"]
    )
    assert cfg.init.load_optimizer
    train(cfg)
    ours, optimizer = load_ours(tmp_path / "run" / "step2")
    assert {float(state["step"]) for state in optimizer.state.values()} == {4.0}  # 2 imported + 2 here
    assert main(["convert", "to-olmo-core", str(tmp_path / "run" / "step2"), str(tmp_path / "back")]) == 0
    theirs, optim = load_olmo_core(tmp_path / "back", flattened=True)
    with torch.no_grad():
        torch.testing.assert_close(theirs(batch(5)), ours(batch(5)), rtol=0, atol=1e-5)
    their_params = dict(theirs.named_parameters())
    for name, param in ours.named_parameters():
        assert torch.equal(
            optim.state[their_params[to_olmo_core_name(name)]]["exp_avg"], optimizer.state[param]["exp_avg"]
        )


def test_another_architecture_fails_naming_the_tensor(olmo_core_checkpoints, tmp_path, capsys):
    src, _ = olmo_core_checkpoints["trainer"]
    wider = tmp_path / "wider.yaml"
    wider.write_text(yaml.safe_dump({**MODEL, "mlp_hidden": 256}))
    assert main(["convert", "from-olmo-core", str(src), str(tmp_path / "out"), "--config", str(wider)]) == 4
    err = capsys.readouterr().err
    assert (
        "model.blocks.0.feed_forward.w1.weight: (128, 64) in the checkpoint, (256, 64) in the config's model"
        in err
    )
    deeper = tmp_path / "deeper.yaml"
    deeper.write_text(yaml.safe_dump({**MODEL, "n_layers": 3}))
    assert main(["convert", "from-olmo-core", str(src), str(tmp_path / "out"), "--config", str(deeper)]) == 4
    assert "missing: model.blocks.2.attention.w_q.weight" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_metadata_that_would_run_code_is_refused(tmp_path, capsys):
    (tmp_path / "evil").mkdir()
    (tmp_path / "evil" / ".metadata").write_bytes(pickle.dumps(_Exploit(tmp_path / "pwned")))
    model_yaml = tmp_path / "model.yaml"
    model_yaml.write_text(yaml.safe_dump(MODEL))
    assert (
        main(
            [
                "convert",
                "from-olmo-core",
                str(tmp_path / "evil"),
                str(tmp_path / "out"),
                "--config",
                str(model_yaml),
            ]
        )
        == 4
    )
    assert "which DCP metadata never holds; not loading it" in capsys.readouterr().err
    assert not (tmp_path / "pwned").exists()


def test_group_settings_come_from_the_config_with_a_note(
    make_train_config, olmo_core_checkpoints, tmp_path, capsys
):
    config = make_train_config(model=MODEL, optim={"eps": 1e-6, "embedding_weight_decay": 0.1})
    src, _ = olmo_core_checkpoints["plain"]
    assert main(["convert", "from-olmo-core", str(src), str(tmp_path / "ours"), "--config", str(config)]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert notes == [
        "note: eps 1e-08 -> 1e-06 for model.layers.0.self_attn.q_proj.weight, model.layers.0.self_attn.k_proj.weight, "
        "model.layers.0.self_attn.v_proj.weight, model.layers.0.self_attn.o_proj.weight, "
        "model.layers.0.self_attn.q_norm.weight (+20 more) (from the config)",
        "note: weight_decay 0.0 -> 0.1 for model.embed_tokens.weight (from the config)",
    ]
    _, optimizer = load_ours(tmp_path / "ours")
    assert {(g["name"], g["eps"], g["weight_decay"]) for g in optimizer.param_groups} == {
        ("decayed", 1e-6, 0.1),
        ("embedding", 1e-6, 0.1),
    }


@pytest.mark.parametrize("bugfix", [True, False])
def test_skip_step_adamw_imports_alike(bugfix, tmp_path, capsys):
    """The 32B's SkipStepAdamW keeps the same state; with ``step_increment_bugfix=False`` it never
    counts steps, which the import points out."""
    torch.manual_seed(0)
    theirs, optim = olmo_core_model(SkipStepAdamWConfig, step_increment_bugfix=bugfix)
    for seed in (1, 2):
        olmo_core_step(theirs, optim, batch(seed))
    olmo_core_checkpoint.save_model_and_optim_state(tmp_path / "skip", theirs, optim)
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(MODEL))
    args = ["convert", "from-olmo-core", str(tmp_path / "skip"), str(tmp_path / "ours")]
    assert main([*args, "--config", str(tmp_path / "model.yaml")]) == 0
    out = capsys.readouterr().out
    assert ("step_increment_bugfix=False never counts steps" in out) != bugfix
    ours, optimizer = load_ours(tmp_path / "ours")
    their_params = dict(theirs.named_parameters())
    for name, param in ours.named_parameters():
        twin = their_params[to_olmo_core_name(name)]
        assert torch.equal(param, twin)
        assert torch.equal(optimizer.state[param]["exp_avg_sq"], optim.state[twin]["exp_avg_sq"]), name
        assert (
            float(optimizer.state[param]["step"])
            == float(optim.state[twin]["step"])
            == (2.0 if bugfix else 0.0)
        )
    if bugfix:  # the same update rule as torch's AdamW, step for step
        ids = batch(3)
        assert our_step(ours, optimizer, ids) == pytest.approx(olmo_core_step(theirs, optim, ids), rel=1e-6)
        for name, param in ours.named_parameters():
            torch.testing.assert_close(param, their_params[to_olmo_core_name(name)], rtol=0, atol=1e-6)
