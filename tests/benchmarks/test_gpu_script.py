"""The prepared GPU check runs end to end (on the CPU, in --smoke mode) before device time is spent."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "gpu" / "run.py"


def test_gpu_script_smoke(tmp_path):
    out = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["parity"]["max_abs_logit_diff_fp32"] < 1e-4
    assert report["train"]["steps"] == 3 and report["train"]["tokens_per_sec_per_device"] > 0
