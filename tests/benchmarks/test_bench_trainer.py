"""The trainer benchmark runs end to end on a toy shape (the real shapes are for benchmarks/ runs)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "bench_trainer.py"


@pytest.mark.slow  # two child processes (torch + transformers start-up): ~40-100 s
def test_bench_trainer_toy_shape(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(SCRIPT), "--config", "tiny", "--seq-len", "32", "--batch-size", "2"]
    cmd += ["--steps", "2", "--warmup", "1", "--rounds", "1", "--json", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = json.loads(out.read_text())["results"]
    assert row["seq_len"] == 32 and row["batch_size"] == 2
    for side in ("ours", "hf"):
        assert row[side]["steps_measured"] == 2 and row[side]["tokens_per_sec"] > 0
        assert 0 < row[side]["peak_rss_gib"] < 24 and row[side]["mfu"] > 0
    assert row["hf"]["dtype"] == "float32" and row["ours"]["dtype"] in ("float32", "bfloat16")
    assert row["speedup_vs_hf"] == row["ours"]["tokens_per_sec"] / row["hf"]["tokens_per_sec"]
    assert "CPU: " in result.stdout and "ratio vs hf:" in result.stdout
