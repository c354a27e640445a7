"""The eval benchmark's generative part runs end to end on the tiny preset and 2 GSM8K docs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "bench_eval.py"


@pytest.mark.slow  # a child process (torch + transformers start-up) and two decodes: ~30 s
def test_bench_eval_generative_tiny(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(SCRIPT), "--preset", "tiny", "--tasks", "none", "--gen-tasks", "gsm8k:gen"]
    cmd += ["--gen-limit", "2", "--gen-max-tokens", "24", "--threads", "1", "--json", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    res = json.loads(out.read_text())
    gen = res["generative"]
    assert gen["docs"] == 2 and gen["naive_docs_timed"] == 2
    assert gen["naive_identical"] == 2 and gen["naive_tokens_generated"] > 2  # the same texts, not empty
    assert gen["ratio"] == round(gen["naive_seconds_estimated"] / gen["ours_seconds"], 2)
    assert res["ours_dtype"] == res["naive_dtype"] == "float32" and "ranked" not in res
    assert "CPU: " in result.stdout and "identical texts: 2 of 2" in result.stdout
