"""Mixes: shares, up/down-sampling, validation messages, and every shipped config (on fake token files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from olmo2.config import ConfigError, from_dict
from olmo2.data.mix import MixConfig, expand_variables, load_mix_config, resolve_mix

CONFIGS = Path(__file__).parents[2] / "configs" / "data"
SEQ = 16


def write_tokens(path: Path, n: int, seed: int = 0) -> Path:
    """A raw little-endian uint32 token file of ``n`` tokens (the tokenizer's output format)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.random.default_rng(seed).integers(0, 100_000, n, dtype=np.uint32).astype("<u4").tofile(path)
    return path


def make_source(root: Path, name: str, sizes: list[int]) -> str:
    for i, n in enumerate(sizes):
        write_tokens(root / name / f"part-{i:02d}-00000.npy", n, seed=hash((name, i)) % 2**32)
    return str(root / name / "*.npy")


def mix(sources: list[dict], **kw) -> MixConfig:
    return from_dict(MixConfig, {"sources": sources, **kw})


def realized(m, index: np.ndarray) -> dict[str, float]:
    names = np.array(m.source_of(index))
    return {s.name: float(np.mean(names == s.name)) for s in m.sources}


@pytest.fixture
def three(tmp_path):
    """Three sources, several files of different sizes (with ragged remainders)."""
    return {
        "web": make_source(tmp_path, "web", [5000, 3001, 7777, 1234]),  # 1062 instances
        "code": make_source(tmp_path, "code", [900, 2050, 333]),  # 204 instances
        "math": make_source(tmp_path, "math", [400, 615]),  # 63 instances
    }


def test_shares_within_one_percent_with_up_and_downsampling(three):
    cfg = mix(
        [
            {"name": "web", "paths": [three["web"]], "share": 0.6},
            {"name": "code", "paths": [three["code"]], "share": 0.25, "max_repeat": 1.5},
            {"name": "math", "paths": [three["math"]], "share": 0.15, "max_repeat": 3},
        ],
        total_tokens=1000 * SEQ,
    )
    m = resolve_mix(cfg, SEQ)
    assert [s.available for s in m.sources] == [1062, 204, 63]
    assert m.epoch_instances == 1000
    index = m.index()
    assert len(index) == 1000
    for name, target in {"web": 0.6, "code": 0.25, "math": 0.15}.items():
        assert abs(realized(m, index)[name] - target) < 0.01
    web, code, math = m.sources
    counts = np.bincount(index.astype(np.int64), minlength=m.n_instances)
    assert counts[web.first : web.first + web.available].max() == 1  # downsampled: no repeats
    assert counts[code.first : code.first + code.available].max() == 2  # 250 of 204: all once, 46 twice
    assert counts[code.first : code.first + code.available].min() == 1
    assert sorted(set(counts[math.first : math.first + math.available])) == [2, 3]  # 150 of 63


def test_upsampling_needs_max_repeat(three):
    cfg = mix(
        [
            {"name": "web", "paths": [three["web"]], "share": 0.6},
            {"name": "code", "paths": [three["code"]], "share": 0.25, "max_repeat": 2},
            {"name": "math", "paths": [three["math"]], "share": 0.15},
        ],
        total_tokens=1000 * SEQ,
    )
    with pytest.raises(ConfigError, match=r"source 'math' needs .* max_repeat >= 2\.381"):
        resolve_mix(cfg, SEQ)


def test_downsampling_is_seeded(three):
    def index(seed):
        cfg = mix([{"name": "web", "paths": [three["web"]], "tokens": 300 * SEQ}], seed=seed)
        return resolve_mix(cfg, SEQ).index()

    a, b, c = index(0), index(0), index(1)
    assert len(a) == 300 and len(np.unique(a)) == 300
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_as_is_uses_everything_once(three):
    cfg = mix([{"name": n, "paths": [p]} for n, p in three.items()])
    m = resolve_mix(cfg, SEQ)
    assert cfg.mode == "as-is"
    np.testing.assert_array_equal(m.index(), np.arange(1062 + 204 + 63))
    assert m.index().dtype == np.uint32


def test_tokens_budgets_and_largest_total(three):
    cfg = mix(
        [
            {"name": "web", "paths": [three["web"]], "tokens": "1.6K"},  # 100 instances
            {"name": "code", "paths": [three["code"]]},  # as-is: 204
            {"name": "math", "paths": [three["math"]], "tokens": 126 * SEQ, "max_repeat": 2},
        ]
    )
    assert [s.target for s in resolve_mix(cfg, SEQ).sources] == [100, 204, 126]
    # shares without a total: the largest total that keeps every source within max_repeat
    cfg = mix(
        [
            {"name": "web", "paths": [three["web"]], "share": 0.5},
            {"name": "math", "paths": [three["math"]], "share": 0.5, "max_repeat": 2},
        ]
    )
    assert [s.target for s in resolve_mix(cfg, SEQ).sources] == [126, 126]


@pytest.mark.parametrize(
    "sources, kw, message",
    [
        (
            [{"name": "a", "paths": ["P"], "share": 0.5}, {"name": "b", "paths": ["P"], "share": 0.4}],
            {"total_tokens": 10},
            r"shares sum to 0\.9, off by -0\.1 .*normalize_shares",
        ),
        ([{"name": "a", "paths": ["P"], "share": 0.5}, {"name": "b", "paths": ["P"]}], {}, r"no share: b"),
        ([{"name": "a", "paths": ["P"], "share": 0.5, "tokens": 5}], {}, r"source 'a': give share or tokens"),
        ([{"name": "a", "paths": ["P"], "shar": 0.5}], {}, r"unknown key sources\[0\]\.shar .*share"),
        ([{"name": "a", "paths": ["P"], "max_repeat": 0.5}], {}, r"sources\[0\]: .*max_repeat must be >= 1"),
        ([{"name": "a", "paths": ["P"]}], {"total_tokens": "lots"}, r"total_tokens: 'lots' is not a token"),
        ([{"name": "a", "paths": ["P"]}, {"name": "a", "paths": ["P"]}], {}, r"duplicate source names: a"),
    ],
)
def test_config_errors_name_the_key(sources, kw, message):
    with pytest.raises(ConfigError, match=message):
        mix(sources, **kw)


def test_normalize_shares(three):
    cfg = mix(
        [
            {"name": "web", "paths": [three["web"]], "share": 0.4},
            {"name": "code", "paths": [three["code"]], "share": 0.4},
        ],
        total_tokens=400 * SEQ,
        normalize_shares=True,
    )
    assert [s.target for s in resolve_mix(cfg, SEQ).sources] == [200, 200]


def test_resolve_errors_name_source_and_pattern(tmp_path, three, monkeypatch):
    missing = str(tmp_path / "nope" / "*.npy")
    cfg = mix([{"name": "web", "paths": [three["web"]]}, {"name": "ghost", "paths": [missing]}])
    with pytest.raises(ConfigError, match=r"sources\[1\] \(ghost\): no token files match .*nope"):
        resolve_mix(cfg, SEQ)

    monkeypatch.delenv("NO_SUCH_ROOT", raising=False)
    cfg = mix([{"name": "web", "paths": ["${NO_SUCH_ROOT}/web/*.npy"]}])
    with pytest.raises(ConfigError, match=r"\(web\): .*variable NO_SUCH_ROOT is not defined"):
        resolve_mix(cfg, SEQ)

    cfg = mix([{"name": "web", "paths": [three["web"]], "tokens": 2000 * SEQ}])
    with pytest.raises(ConfigError, match=r"source 'web' needs .* max_repeat 1 allows at most 1062"):
        resolve_mix(cfg, SEQ)

    cfg = mix([{"name": "a", "paths": [three["web"]]}, {"name": "b", "paths": [three["web"]]}])
    with pytest.raises(ConfigError, match=r"\(b\): .* also listed by source 'a'"):
        resolve_mix(cfg, SEQ)

    (tmp_path / "odd.npy").write_bytes(b"\0" * 7)
    with pytest.raises(ConfigError, match=r"odd\.npy: 7 bytes is not a whole number"):
        resolve_mix(mix([{"name": "odd", "paths": [str(tmp_path / "odd.npy")]}]), SEQ)

    tiny = write_tokens(tmp_path / "tiny" / "a.npy", SEQ - 1)
    with pytest.raises(ConfigError, match=r"\(tiny\): 1 files with 15 tokens hold no complete instance"):
        resolve_mix(mix([{"name": "tiny", "paths": [str(tiny)]}]), SEQ)


def test_folder_paths_take_their_npy_files(three, tmp_path):
    (tmp_path / "web" / "part-00-00000.csv.gz").write_bytes(b"sidecar")  # tokenizer metadata: ignored
    (tmp_path / "web" / ".part-09-00000.npy.tmp-1").write_bytes(b"0000")  # a half-written file: ignored
    m = resolve_mix(mix([{"name": "web", "paths": [str(tmp_path / "web")]}]), SEQ)
    assert [p.name for p in m.files] == [f"part-{i:02d}-00000.npy" for i in range(4)]
    assert m.sources[0].names == [p.name for p in m.files]


def test_variables_precedence(monkeypatch):
    monkeypatch.setenv("OLMO2_T_ROOT", "env")
    assert expand_variables("${OLMO2_T_ROOT}/x") == "env/x"
    assert expand_variables("${OLMO2_T_ROOT}/x", {"OLMO2_T_ROOT": "arg"}) == "arg/x"
    monkeypatch.delenv("OLMO2_T_ROOT")
    assert expand_variables("${OLMO2_T_ROOT:-/d}/x") == "/d/x"
    with pytest.raises(ConfigError, match="variable OLMO2_T_ROOT is not defined"):
        expand_variables("${OLMO2_T_ROOT}/x")


# Real pool sizes in tokens (spec §4.1/§4.2), scaled by 1e-6 for the fake files.
STAGE1 = {
    "dclm": 3.71e12,
    "starcoder": 83e9,
    "pes2o": 58.6e9,
    "arxiv": 20.8e9,
    "open-web-math": 12.2e9,
    "algebraic-stack": 11.8e9,
    "wiki": 3.7e9,
}
DOLMINO = {
    "dclm": 752e9,
    "flan": 17e9,
    "stackexchange": 1.26e9,
    "pes2o": 58.6e9,
    "wiki": 3.7e9,
    "math": 10.7e9,
}
SCALE = 1e-6


def fake_pool(root: Path, sizes: dict[str, float], scale: float = SCALE) -> None:
    """Each source as 3 files of uneven sizes, ``scale`` x its real token count in all (+ per-file slack)."""
    for name, tokens in sizes.items():
        n = int(tokens * scale)
        for i, part in enumerate([n // 2, n // 3, n - n // 2 - n // 3]):
            write_tokens(root / name / "sub" / f"part-{i:02d}-00000.npy", part + SEQ, seed=i)


def test_stage1_config(tmp_path, monkeypatch):
    fake_pool(tmp_path / "olmo-mix-1124", {k: v / 100 for k, v in STAGE1.items()})
    monkeypatch.setenv("DATA_ROOT", str(tmp_path))
    cfg = load_mix_config(CONFIGS / "olmo2-mix-1124.yaml")
    m = resolve_mix(cfg, SEQ)
    assert cfg.mode == "as-is" and [s.name for s in m.sources] == list(STAGE1)
    shares = realized(m, m.index())
    total = sum(STAGE1.values())
    for name, tokens in STAGE1.items():
        assert abs(shares[name] - tokens / total) < 0.01


@pytest.mark.parametrize("size", [50, 100, 300])
def test_dolmino_configs(tmp_path, size):
    fake_pool(tmp_path / "dolmino-mix-1124", DOLMINO)
    path = CONFIGS / f"dolmino-mix-1124-{size}b.yaml"
    cfg = load_mix_config(path, [f"variables.DATA_ROOT={tmp_path}", f"total_tokens={size * 1e9 * SCALE}"])
    assert cfg.name == f"dolmino-mix-1124-{size}b" and cfg.normalize_shares
    mix_pct = {  # paper Tab 13, Mix% column
        50: [47.2, 16.6, 2.45, 5.85, 7.11, 20.8],
        100: [50.2, 16.7, 2.47, 9.52, 3.57, 17.5],
        300: [51.9, 11.3, 1.68, 19.4, 4.86, 10.8],
    }[size]
    assert [s.share for s in cfg.sources] == pytest.approx([p / 100 for p in mix_pct])
    m = resolve_mix(cfg, SEQ)
    assert m.epoch_instances == int(size * 1e9 * SCALE) // SEQ
    shares = realized(m, m.index())
    for name, pct in zip(DOLMINO, mix_pct, strict=True):
        assert shares[name] == pytest.approx(pct / sum(mix_pct), rel=0.01), name
    assert "math" in m.summary()


def test_demo_configs(tmp_path, monkeypatch):
    fake_pool(tmp_path / "stage1", {"shakespeare": 5e5, "python_stdlib": 8e5, "prose": 2e6}, scale=0.01)
    fake_pool(tmp_path / "stage2", {"qa": 2e5, "gsm": 1e5, "prose_best": 6e5}, scale=0.01)
    for p in tmp_path.glob("stage*/*/sub/*.npy"):  # the demo mixes glob one folder per source
        p.rename(p.parent.parent / p.name)
    monkeypatch.setenv("OLMO2_DEMO_DATA", str(tmp_path))
    m1 = resolve_mix(load_mix_config(CONFIGS / "demo-stage1.yaml"), SEQ)
    assert [s.name for s in m1.sources] == ["shakespeare", "python_stdlib", "prose"]
    assert m1.epoch_instances == m1.n_instances
    m2 = resolve_mix(load_mix_config(CONFIGS / "demo-stage2.yaml"), SEQ)
    shares = realized(m2, m2.index())
    for name, target in {"qa": 0.4, "gsm": 0.3, "prose_best": 0.3}.items():
        assert abs(shares[name] - target) < 0.01
    assert max(s.repeat for s in m2.sources) <= 4
