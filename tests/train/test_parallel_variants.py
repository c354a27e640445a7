"""Ways of running the same training that must not change it: HSDP meshes, activation checkpointing,
per-block ``torch.compile``; and the spike detector the loop consults every step."""

import json
import math
import os

import pytest
import torch

from olmo2.train.config import load_train_config
from olmo2.train.monitor import SpikeDetector
from olmo2.train.trainer import train

# --- HSDP -------------------------------------------------------------------------------------

# Runs the CLI with ``fully_shard`` wrapped: after each call, every rank appends the mesh and the
# placements its parameters got to <dir>/rank<R>.jsonl, so the test sees the mesh of the very run it
# compares (a config that silently fell back to a 1-D FSDP mesh would train identically).
MESH_SPY = """
import json, os, sys
from pathlib import Path

import torch.distributed.fsdp as fsdp

out, real = Path(sys.argv.pop(1)), fsdp.fully_shard


def spy(module, *args, **kwargs):
    module = real(module, *args, **kwargs)
    params = list(module.parameters())
    record = {
        "mesh": list(params[0].device_mesh.shape),
        "names": list(params[0].device_mesh.mesh_dim_names or ()),
        "placements": sorted({repr(tuple(p.placements)) for p in params}),
    }
    with open(out / f"rank{os.environ['RANK']}.jsonl", "a") as f:
        f.write(json.dumps(record) + "\\n")
    return module


fsdp.fully_shard = spy

from olmo2.cli import main

sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs torchrun")
@pytest.mark.parametrize("replicas", [1, 2], ids=["1x2", "2x1"])
def test_hsdp_two_processes_match_one(
    make_train_config, tmp_path, torchrun_train, assert_runs_match, replicas
):
    """HSDP on 2 CPU ranks (Gloo): 1 replica group x 2 shards, and 2 replicas x 1 shard (pure
    replication through FSDP2), against one process. Both meshes work on CPU with torch 2.13."""
    config = make_train_config()
    steps = ["run.max_steps=4", "runtime.precision=fp32", "data.validation=[]"]
    single = tmp_path / "single"
    train(load_train_config(config, [f"run.folder={single}", *steps]))
    spy, meshes = tmp_path / "mesh_spy.py", tmp_path / "meshes"
    spy.write_text(MESH_SPY)
    meshes.mkdir()
    multi = torchrun_train(
        config,
        tmp_path / "hsdp",
        *steps,
        "parallel.strategy=hsdp",
        f"parallel.hsdp_replicas={replicas}",
        entry=(spy, meshes),
    )
    # Measured (both meshes): losses within 8e-8 relative, grad norms 8e-7, weights 1.6e-5 absolute.
    assert_runs_match(single, multi, step=4)  # weights: 4 AdamW steps of lr 3e-3
    want = {
        "mesh": [replicas, 2 // replicas],
        "names": ["replicate", "shard"],
        "placements": ["(Replicate(), Shard(dim=0))"],
    }
    for rank in (0, 1):
        records = [json.loads(line) for line in (meshes / f"rank{rank}.jsonl").read_text().splitlines()]
        assert records == [want] * 3  # each of the 2 blocks, then the root


# --- activation checkpointing and compile (one process) ----------------------------------------

STEPS = ["run.max_steps=3", "runtime.precision=fp32", "data.validation=[]"]


def _run(config, folder, *overrides):
    train(load_train_config(config, [f"run.folder={folder}", *STEPS, *overrides]))
    return folder


def test_activation_checkpointing_changes_nothing(
    make_train_config, tmp_path, assert_runs_match, monkeypatch
):
    import olmo2.model.transformer as transformer

    config = make_train_config()
    plain = _run(config, tmp_path / "plain")
    calls = []
    real_checkpoint = transformer.checkpoint

    def counting(*args, **kwargs):
        calls.append(1)
        return real_checkpoint(*args, **kwargs)

    monkeypatch.setattr(transformer, "checkpoint", counting)
    ac = _run(config, tmp_path / "ac", "parallel.activation_checkpointing=true")
    assert len(calls) == 3 * 4 * 2  # steps x micro-batches (8 / 2) x blocks: every block ran under checkpoint
    # Zero tolerance: in fp32 on CPU the recomputed forward replays the same kernels on the same
    # inputs, so losses, grad norms and weights were measured bit-identical. (rel=0 leaves pytest.approx
    # its 1e-12 absolute floor, far below one float32 ulp of a loss near 6.)
    assert_runs_match(plain, ac, step=3, loss_rel=0, grad_norm_rel=0, rtol=0, atol=0)


@pytest.mark.slow  # measured 60-78 s with a cold inductor cache (17 s warm) on 2 busy CPU cores
def test_compile_per_block_matches_eager(make_train_config, tmp_path, assert_runs_match):
    from torch._dynamo.utils import counters

    config = make_train_config()
    eager = _run(config, tmp_path / "eager")
    torch._dynamo.reset()
    counters.clear()
    try:
        compiled = _run(config, tmp_path / "compiled", "runtime.compile=true")
        # One graph serves every block; it ran through AOT autograd (forward and backward compiled).
        assert counters["stats"]["unique_graphs"] == 1 and counters["aot_autograd"]["ok"] == 1
    finally:
        torch._dynamo.reset()
    # Inductor fuses and reorders fp32 arithmetic. Measured over 3 steps: losses within 8.0e-8
    # relative (one float32 ulp), grad norms 2.2e-7; weights 4.7e-5 absolute in 2 of 8192 entries
    # of one matrix (AdamW magnifies tiny differences in near-zero gradients), elsewhere < 7e-6.
    assert_runs_match(eager, compiled, step=3, loss_rel=2e-7, grad_norm_rel=1e-6, rtol=1e-4, atol=1e-4)


# --- spike detection --------------------------------------------------------------------------


def _detector(values, window=8, sigmas=3.0, min_count=4) -> SpikeDetector:
    det = SpikeDetector(window=window, sigmas=sigmas, min_count=min_count)
    det.load_state_dict(values)
    return det


def test_spike_needs_min_count_values_first():
    det = SpikeDetector(window=8, sigmas=3.0, min_count=4)
    assert [det.check(v) for v in (1.0, 1.0, 1.0)] == [False] * 3
    assert det.check(1e6) is False  # only 3 values seen: no judgement yet (and 1e6 joins the window)
    assert det.state_dict() == [1.0, 1.0, 1.0, 1e6]
    assert _detector([1.0, 3.0, 1.0, 3.0]).check(1e6) is True  # 4 values: now it is judged


def test_spike_threshold_is_mean_plus_sigmas_std():
    values = [1.0, 3.0, 1.0, 3.0]  # mean 2, population std 1: threshold 2 + 3 * 1 = 5
    assert _detector(values).check(5.001) is True
    assert _detector(values).check(5.0) is False  # strictly above
    assert _detector(values).check(4.0) is False
    assert _detector(values).check(-100.0) is False  # only upward spikes count
    assert _detector(values, sigmas=1.0).check(3.5) is True  # threshold 3


def test_spike_non_finite_values_stay_out_of_the_window():
    det = _detector([1.0, 3.0, 1.0, 3.0])
    assert det.check(float("nan")) is False
    assert det.check(float("inf")) is True
    assert det.check(float("-inf")) is False
    assert det.state_dict() == [1.0, 3.0, 1.0, 3.0]
    json.dumps(det.state_dict(), allow_nan=False)  # the checkpoint's state.json stays strict JSON
    assert det.check(5.001) is True  # the threshold did not move
    fresh = SpikeDetector(window=8, sigmas=3.0, min_count=2)
    assert [fresh.check(v) for v in (float("nan"), float("inf"), 1.0)] == [False, False, False]
    assert fresh.state_dict() == [1.0]  # non-finite values do not count towards min_count either


def test_spike_window_keeps_only_the_last_values():
    det = SpikeDetector(window=4, sigmas=3.0, min_count=4)
    for v in [100.0, -100.0] * 5 + [1.0, 3.0, 1.0, 3.0]:
        det.check(v)
    assert det.state_dict() == [1.0, 3.0, 1.0, 3.0]
    # Against the whole history (mean 0, std ~90) 10 is ordinary; against the window it is a spike.
    assert det.check(10.0) is True
    assert len(det.state_dict()) == 4
    assert _detector(list(range(20)), window=4).state_dict() == [16, 17, 18, 19]


def test_spike_state_round_trip_gives_the_same_future_decisions():
    gen = torch.Generator().manual_seed(0)
    history = (2.0 + 0.1 * torch.randn(40, generator=gen)).tolist()
    future = (2.0 + 0.1 * torch.randn(30, generator=gen)).tolist()
    # A spike, a NaN, then 2.6 twice: not a spike while the 9.0 is in the 16-value window, then one.
    future[5], future[12], future[20], future[25] = 9.0, float("nan"), 2.6, 2.6
    a = SpikeDetector(window=16, sigmas=3.0, min_count=8)
    for v in history:
        a.check(v)
    saved = json.loads(json.dumps(a.state_dict()))  # as train() stores it in state.json
    b = SpikeDetector(window=16, sigmas=3.0, min_count=8)
    b.check(100.0)  # state from before the load must not survive it
    b.load_state_dict(saved)
    assert b.state_dict() == a.state_dict() and len(saved) == 16
    decisions_a, decisions_b = [a.check(v) for v in future], [b.check(v) for v in future]
    assert decisions_a == decisions_b
    assert [i for i, spike in enumerate(decisions_a) if spike] == [5, 25]
    assert all(math.isfinite(v) for v in b.state_dict())
