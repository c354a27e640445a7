"""The loader benchmark runs end to end on a toy size, its remote case included."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "bench_loader.py"


@pytest.mark.slow  # ~15 s (torch and moto start-up); tests/data/test_remote.py covers the reads
def test_bench_loader_remote_case_reads_one_request_per_instance(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(SCRIPT), "--gb", "0.004", "--seq", "256", "--batch", "4", "--steps", "20"]
    cmd += ["--step-ms", "1", "--remote-mb", "1", "--remote-steps", "5", "--json", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    remote = json.loads(out.read_text())["remote"]
    assert remote["local_requests_per_instance"] == 0  # memory-mapped
    assert remote["http_requests_per_instance"] == remote["s3_requests_per_instance"] == 1.0
    assert remote["http_server_gets_per_instance"] == 1.0  # counted by the server itself
    assert all(remote[f"{w}_instances_s"] > 0 for w in ("local", "http", "s3"))
    assert "requests per instance" in result.stdout
