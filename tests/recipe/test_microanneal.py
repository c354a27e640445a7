"""``olmo2 microanneal`` on a tiny setup: the mixes it writes, the table's deltas, resume after a kill."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from olmo2.config import ConfigError
from olmo2.recipe.microanneal import MicroAnneal, load_microanneal
from olmo2.train.config import load_train_config


def _microanneal(tmp_path: Path, train_config, write_tokens, candidates: list[dict] | None = None) -> Path:
    """Stage 1 (4 steps) on the fixture's data; anneals of 3 steps of 8 x 32 tokens from its checkpoint.
    Baseline: the fixture's training files; candidates: two other token sets."""
    stage1 = train_config(run={"max_steps": 4, "folder": "unused"})
    stage1["checkpoint"] = {"save_every": 2, "keep_last": 1}
    (tmp_path / "stage1.yaml").write_text(yaml.safe_dump(stage1))
    stage2 = train_config(run={"max_steps": 100, "folder": "unused"})
    stage2["schedule"] = {"name": "linear", "warmup_steps": 0, "alpha_f": 0.0}
    stage2["checkpoint"] = {"save_every": 1, "keep_last": 1}
    (tmp_path / "stage2.yaml").write_text(yaml.safe_dump(stage2))
    for seed, name in enumerate(("qa", "gsm"), start=1):
        write_tokens(tmp_path / "data" / name, n_files=1, tokens=3000, seed=seed)
    config = {
        "name": "tiny",
        "out": str(tmp_path / "micro"),
        "stage1": {"config": str(tmp_path / "stage1.yaml")},
        "anneal": {"config": str(tmp_path / "stage2.yaml"), "tokens": 600},  # 3 steps of 256 tokens
        "baseline": {"name": "web", "paths": [str(tmp_path / "data/train/*.npy")]},
        "candidates": candidates
        or [
            {"name": "qa", "paths": [str(tmp_path / "data/qa/*.npy")]},
            {"name": "gsm", "paths": [str(tmp_path / "data/gsm/*.npy")], "share": 0.25},
        ],
        "eval": {
            "heldout": {"val": [str(tmp_path / "data/val/*.npy")]},
            "seq_len": 32,
            "heldout_max_instances": 8,
        },
    }
    (tmp_path / "micro.yaml").write_text(yaml.safe_dump(config))
    return tmp_path / "micro.yaml"


def test_microanneal_runs_baseline_and_candidates_and_tabulates_deltas(
    tmp_path, monkeypatch, train_config_dict, write_tokens
):
    monkeypatch.setattr("olmo2.recipe.runner._token_byte_lengths", lambda tok, size: torch.full((size,), 2.0))
    summary = MicroAnneal(load_microanneal(_microanneal(tmp_path, train_config_dict, write_tokens))).run()
    out = tmp_path / "micro"
    assert sorted(p.stem for p in (out / ".done").glob("*.json")) == [
        "anneal-gsm",
        "anneal-qa",
        "anneal-web",
        "eval-anneal-gsm",
        "eval-anneal-qa",
        "eval-anneal-web",
        "eval-stage1",
        "stage1",
    ]
    # The mixes: the baseline alone, then baseline + candidate at the candidate's share (default 0.5),
    # each exactly the anneal's 3 steps x 256 tokens.
    mixes = {
        name: yaml.safe_load((out / "mixes" / f"{name}.yaml").read_text()) for name in ("web", "qa", "gsm")
    }
    shares = {name: {s["name"]: s["share"] for s in mix["sources"]} for name, mix in mixes.items()}
    assert shares == {"web": {"web": 1.0}, "qa": {"web": 0.5, "qa": 0.5}, "gsm": {"web": 0.75, "gsm": 0.25}}
    assert {mix["total_tokens"] for mix in mixes.values()} == {768}
    for name in ("web", "qa", "gsm"):
        config = yaml.safe_load((out / f"anneal-{name}" / "config.yaml").read_text())
        assert config["data"]["mix"] == str(out / "mixes" / f"{name}.yaml")
        metrics = [
            json.loads(line) for line in (out / f"anneal-{name}" / "metrics.jsonl").read_text().splitlines()
        ]
        assert len(metrics) == 3 and metrics[-1]["lr"] == 0.0  # its own linear decay to 0
    # The table's deltas are the evaluated metrics minus the baseline anneal's.
    result = json.loads((out / "microanneal.json").read_text())
    bpb = {
        name: json.loads((out / ".done" / f"eval-{step}.json").read_text())["heldout"]["val"]["bits_per_byte"]
        for name, step in [
            ("stage1", "stage1"),
            ("web", "anneal-web"),
            ("qa", "anneal-qa"),
            ("gsm", "anneal-gsm"),
        ]
    }
    assert result["baseline"] == "web" and result["metrics"] == ["bpb/val"]
    for name, value in bpb.items():
        assert result["anneals"][name]["values"]["bpb/val"] == value
        assert result["anneals"][name]["delta_vs_baseline"]["bpb/val"] == pytest.approx(value - bpb["web"])
    assert len({round(v, 9) for v in bpb.values()}) == 4  # the mixes really differ
    table = (out / "microanneal.md").read_text()
    assert f"| gsm | web 75% + gsm 25% | {bpb['gsm']:.4f} | {bpb['gsm'] - bpb['web']:+.4f} |" in table
    assert "| web (baseline) | web 100% |" in table and summary["text"] == table
    assert (out / "microanneal.png").stat().st_size > 0


def test_killed_microanneal_reruns_only_unfinished_steps(tmp_path, train_config_dict, write_tokens, capfd):
    """The killed microanneal is an ``olmo2 microanneal`` process; the rerun runs in this one."""
    config = _microanneal(tmp_path, train_config_dict, write_tokens)
    out = tmp_path / "micro"
    proc = subprocess.Popen(
        [sys.executable, "-m", "olmo2.cli", "microanneal", str(config)], stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    marker = out / "anneal-qa" / "step1"  # its first checkpoint, of three steps
    while time.time() < deadline and not marker.is_dir():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = {p.stem: p.stat().st_mtime_ns for p in (out / ".done").glob("*.json")}
    assert set(done_before) == {"stage1", "anneal-web"}
    capfd.readouterr()
    MicroAnneal(load_microanneal(config)).run()
    err = capfd.readouterr().err
    assert "microanneal: stage1: done already, skipped" in err
    assert "microanneal: anneal-web: done already, skipped" in err
    assert "resumed from" in err  # anneal-qa continued from its own checkpoint
    for step, mtime in done_before.items():
        assert (out / ".done" / f"{step}.json").stat().st_mtime_ns == mtime, step
    assert len((out / "anneal-qa" / "metrics.jsonl").read_text().splitlines()) == 3
    assert (out / "microanneal.md").is_file()


def test_microanneal_config_is_checked_before_training(tmp_path, train_config_dict, write_tokens):
    """Bad shares, names, a schedule that does not end at 0 or a missing source fail before stage 1."""
    config = _microanneal(tmp_path, train_config_dict, write_tokens)
    data = yaml.safe_load(config.read_text())
    bad = {
        "share must be below 1": {"candidates": [dict(data["candidates"][0], share=1.0)]},
        "'web' is used twice": {"candidates": [dict(data["candidates"][0], name="web")]},
        "baseline's share is 1 minus": {"baseline": dict(data["baseline"], share=0.5)},
        "source name 'q/a' must be letters, digits": {
            "candidates": [dict(data["candidates"][0], name="q/a")]
        },
    }
    for message, change in bad.items():
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**data, **change}))
        with pytest.raises(ConfigError, match=message):
            load_microanneal(tmp_path / "bad.yaml")
    stage2 = yaml.safe_load((tmp_path / "stage2.yaml").read_text())
    (tmp_path / "stage2.yaml").write_text(yaml.safe_dump({**stage2, "schedule": {"name": "cosine"}}))
    with pytest.raises(ConfigError, match="decays the LR linearly to 0"):
        MicroAnneal(load_microanneal(config)).run()
    (tmp_path / "stage2.yaml").write_text(yaml.safe_dump(stage2))
    missing = {"candidates": [dict(data["candidates"][0], paths=[str(tmp_path / "nowhere/*.npy")])]}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**data, **missing}))
    with pytest.raises(ConfigError, match=r"sources\[1\] \(qa\): no token files match"):
        MicroAnneal(load_microanneal(tmp_path / "bad.yaml")).run()
    assert not (tmp_path / "micro" / "stage1").exists()


def test_shipped_demo_config_loads(monkeypatch):
    """``configs/microanneal/demo.yaml``: its stage 1 and base anneal load, and the anneal ends at LR 0."""
    monkeypatch.chdir(Path(__file__).parents[2])
    cfg = load_microanneal("configs/microanneal/demo.yaml")
    assert cfg.baseline.name == "prose_best" and {c.name: c.share for c in cfg.candidates} == {
        "qa": 0.5,
        "gsm": 0.5,
    }
    stage1 = load_train_config(cfg.stage1.config, cfg.stage1.overrides)
    base = MicroAnneal(cfg).base_config()
    assert base.model == stage1.model and base.data.seq_len == stage1.data.seq_len
    assert cfg.anneal.tokens == 8 * base.data.seq_len * base.data.global_batch_size
