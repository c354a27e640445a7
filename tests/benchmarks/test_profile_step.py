"""The step profiler runs on the demo shape and accounts for all of the profiled time."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "profile_step.py"


@pytest.mark.slow  # two demo-model steps on 2 shared cores: ~20-60 s
def test_profile_step_demo_shape():
    cmd = [sys.executable, str(SCRIPT), "--config", "demo", "--steps", "1", "--rows", "5"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert out.startswith("CPU: ") and "float32" in out and "aten::mm" in out
    matmul = float(re.search(r"([\d.]+)% of self CPU time", out)[1])
    rest = float(re.search(r"everything else: ([\d.]+)%", out)[1])
    assert 0 < matmul < 100 and abs(matmul + rest - 100) < 0.2
