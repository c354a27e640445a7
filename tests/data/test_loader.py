"""The training loader: per-file instances, PCG64(seed + epoch) order, rank slicing, exact resume."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from olmo2.config import ConfigError, from_dict
from olmo2.data.loader import (
    TrainLoader,
    ValidationLoader,
    batch_hash,
    gather_global,
)
from olmo2.data.mix import MixConfig, resolve_mix

SEQ = 8


def write_file(path: Path, tokens: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.asarray(tokens, dtype="<u4").tofile(path)
    return path


@pytest.fixture
def data(tmp_path):
    """Two sources; token value = 1000 * file number + position, so every token says where it came from."""
    sizes = {"a": [5 * SEQ + 3, 7 * SEQ, 2 * SEQ + 7], "b": [11 * SEQ + 1, 4 * SEQ + 5]}
    k = 0
    for name, ns in sizes.items():
        for i, n in enumerate(ns):
            write_file(tmp_path / name / f"part-{i:02d}-00000.npy", 1000 * k + np.arange(n))
            k += 1
    return tmp_path


def make_mix(root: Path, **kw):
    sources = kw.pop("sources", [{"name": n, "paths": [str(root / n / "*.npy")]} for n in ("a", "b")])
    return resolve_mix(from_dict(MixConfig, {"sources": sources, **kw}), SEQ)


def loader(root, *, seed=7, batch=4, mix=None, **kw) -> TrainLoader:
    return TrainLoader(mix or make_mix(root), global_batch_size=batch, seed=seed, **kw)


def test_instances_cut_per_file_remainders_dropped(data):
    m = make_mix(data)
    assert m.n_instances == 5 + 7 + 2 + 11 + 4
    tokens = loader(data).reader.read(np.arange(m.n_instances))
    assert tokens.dtype == np.int64 and tokens.shape == (29, SEQ)
    file_of = tokens // 1000
    assert (file_of == file_of[:, :1]).all()  # no instance spans two files
    assert (np.diff(tokens, axis=1) == 1).all()  # consecutive tokens
    starts = tokens[:, 0] % 1000
    np.testing.assert_array_equal(starts[:5], np.arange(5) * SEQ)  # file 0: 5 instances, remainder 3 dropped
    assert list(np.bincount(file_of[:, 0])) == [5, 7, 2, 11, 4]


def test_order_is_pcg64_seed_plus_epoch(data):
    ld = loader(data, seed=7)
    for epoch in (0, 1):
        expected = np.arange(29, dtype=np.uint32)
        np.random.Generator(np.random.PCG64(7 + epoch)).shuffle(expected)
        np.testing.assert_array_equal(ld.epoch_order(epoch), expected)
        got = np.concatenate([ld.global_indices(epoch, k) for k in range(ld.steps_per_epoch)])
        np.testing.assert_array_equal(got, expected[: 7 * 4])  # 29 // 4 = 7 steps, partial batch dropped
    assert ld.steps_per_epoch == 7


def test_same_global_batches_for_world_sizes_1_2_4(data):
    ref = loader(data, batch=4, prefetch=0)
    for world in (2, 4):
        ranks = [loader(data, batch=4, rank=r, world_size=world, micro_batch_size=1) for r in range(world)]
        for step in range(ref.steps_per_epoch + 2):  # into epoch 1
            e, k = divmod(step, ref.steps_per_epoch)
            parts = [rk.batch_at(e, k) for rk in ranks]
            assert all(p.input_ids.shape == (4 // world, SEQ) for p in parts)
            whole = ref.batch_at(e, k)
            assert torch.equal(gather_global([p.input_ids for p in parts]), whole.input_ids)
            assert torch.equal(whole.input_ids, ref.read_global_batch(e, k))
            assert {p.index_hash for p in parts} == {whole.index_hash}
            assert batch_hash(gather_global([p.input_ids for p in parts])) == batch_hash(whole)


def test_micro_batches_and_metadata(data):
    ld = loader(data, batch=4, micro_batch_size=2, world_size=1)
    batch = next(iter(ld))
    micro = batch.micro_batches()
    assert [mb["input_ids"].shape for mb in micro] == [(2, SEQ), (2, SEQ)]
    assert micro[0]["input_ids"].dtype == torch.int64
    file_of = (batch.input_ids[:, 0] // 1000).tolist()
    assert batch.sources == ["a" if f < 3 else "b" for f in file_of]
    with pytest.raises(ConfigError, match="micro_batch_size 3 does not divide the per-rank batch 4"):
        loader(data, micro_batch_size=3)
    with pytest.raises(ConfigError, match="not a multiple of world_size 3"):
        loader(data, world_size=3, rank=0)
    with pytest.raises(ConfigError, match="fewer than one global batch of 64"):
        loader(data, batch=64)


@pytest.mark.parametrize("prefetch", [0, 2])
@pytest.mark.parametrize("stop_after", [3, 7, 9])  # mid-epoch, exactly at the boundary, across it
def test_exact_resume(data, prefetch, stop_after):
    straight = [b.input_ids for _, b in zip(range(16), loader(data, prefetch=prefetch), strict=False)]
    first = loader(data, prefetch=prefetch)
    it = iter(first)
    for _ in range(stop_after):
        next(it)
    state = first.state_dict()
    assert state["step"] == stop_after
    resumed = loader(data, prefetch=prefetch)
    resumed.load_state_dict(state)
    for i, b in zip(range(stop_after, 16), resumed, strict=False):
        assert b.step == i
        assert torch.equal(b.input_ids, straight[i]), i
    assert resumed.epoch == 2 and resumed.batch_in_epoch == 2  # 16 batches = 2 epochs of 7 + 2


def test_resume_on_a_different_number_of_ranks(data):
    single = loader(data)
    it = iter(single)
    for _ in range(5):
        next(it)
    expected = next(it).input_ids
    state = loader(data).state_dict() | {"epoch": 0, "batch_in_epoch": 5, "step": 5}
    ranks = [loader(data, rank=r, world_size=2) for r in range(2)]
    for rk in ranks:
        rk.load_state_dict(state)
    assert torch.equal(gather_global([next(iter(rk)).input_ids for rk in ranks]), expected)


def test_iteration_continues_after_break_and_stops_at_max_epochs(data):
    ld = loader(data, max_epochs=1)
    first = [b.step for _, b in zip(range(3), ld, strict=False)]
    rest = [b.step for b in ld]
    assert first == [0, 1, 2] and rest == [3, 4, 5, 6]


def test_seeds_give_different_orders(data):
    a, b = loader(data, seed=1), loader(data, seed=2)
    assert not np.array_equal(a.epoch_order(0), b.epoch_order(0))
    assert not np.array_equal(a.epoch_order(0), a.epoch_order(1))
    assert sorted(a.epoch_order(0)) == sorted(b.epoch_order(0))


def test_fingerprint_mismatch_refused(data):
    state = loader(data, seed=1).state_dict()
    with pytest.raises(ConfigError, match=r"refusing to resume(.|\n)*seed: checkpoint '1', now '2'"):
        loader(data, seed=2).load_state_dict(state)
    write_file(data / "b" / "part-02-00000.npy", np.arange(3 * SEQ))
    with pytest.raises(ConfigError, match=r"source b: checkpoint '2 files, .*now '3 files"):
        loader(data, seed=1).load_state_dict(state)


def test_fingerprint_survives_moving_the_data(data, tmp_path_factory):
    import shutil

    moved = tmp_path_factory.mktemp("elsewhere") / "root"
    shutil.copytree(data, moved)
    assert loader(data).fingerprint == loader(moved).fingerprint


def test_upsampled_mix_epoch_has_repeats(data):
    sources = [
        {"name": "a", "paths": [str(data / "a" / "*.npy")], "share": 0.5, "max_repeat": 2},
        {"name": "b", "paths": [str(data / "b" / "*.npy")], "share": 0.5},
    ]
    m = make_mix(data, sources=sources, total_tokens=28 * SEQ)  # a: 14 (all once), b: 14 of 15
    ld = loader(data, mix=m, batch=4)
    ids = np.concatenate([ld.global_indices(0, k) for k in range(ld.steps_per_epoch)])
    assert ld.steps_per_epoch == 7 and len(ids) == 28
    names = m.source_of(ids)
    assert names.count("a") == 14 and names.count("b") == 14


def test_order_cache_on_disk(data, tmp_path):
    a = loader(data, cache_dir=tmp_path / "cache")
    order = np.array(a.epoch_order(0))
    assert len(list((tmp_path / "cache").glob("order-*-epoch0.npy"))) == 1
    b = loader(data, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(b.epoch_order(0), order)


def test_batch_hash_is_stable():
    x = np.arange(2 * SEQ, dtype=np.uint32).reshape(2, SEQ)
    expected = hashlib.sha256(x.astype("<u4").tobytes()).hexdigest()[:12]
    assert batch_hash(x) == batch_hash(torch.from_numpy(x.astype(np.int64))) == expected
    assert batch_hash(x) == "5d85718ec594"  # pinned: the hash must never change between versions
    assert batch_hash(x[::-1]) != expected


def test_validation_loader_sequential(data):
    val = ValidationLoader([str(data / "a" / "*.npy"), str(data / "b" / "*.npy")], SEQ, batch_size=4)
    batches = list(val)
    assert val.n_instances == 29 and len(val) == len(batches) == 8 and batches[-1]["input_ids"].shape[0] == 1
    every = torch.cat([b["input_ids"] for b in batches])
    assert torch.equal(every, torch.from_numpy(loader(data).reader.read(np.arange(29))))
    limited = ValidationLoader([str(data / "a" / "*.npy")], SEQ, batch_size=4, max_instances=6)
    assert sum(b["input_ids"].shape[0] for b in limited) == 6
    halves = [ValidationLoader([str(data / "b" / "*.npy")], SEQ, 2, rank=r, world_size=2) for r in (0, 1)]
    ids = sorted(np.concatenate([b["indices"] for h in halves for b in h]).tolist())
    assert ids == list(range(15))


def test_filter_repeats_flag(tmp_path):
    rows = np.random.default_rng(0).integers(0, 1000, (4, SEQ * 8))
    rows[2] = 9  # a run of one token: masked
    write_file(tmp_path / "r" / "x.npy", rows.ravel())
    m = resolve_mix(
        from_dict(MixConfig, {"sources": [{"name": "r", "paths": [str(tmp_path / "r/x.npy")]}]}), 64
    )
    ld = TrainLoader(m, global_batch_size=4, seed=0, filter_repeats=True)
    b = ld.batch_at(0, 0)
    keep = b.instance_mask.tolist()
    assert keep == [int(i) != 2 for i in b.indices]
    assert b.micro_batches()[0]["instance_mask"].dtype == torch.bool
