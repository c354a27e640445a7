"""The fault-injection script (issue 13's list, done to real ``olmo2`` commands) finds every outcome
as documented."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "fault_injection.py"


@pytest.mark.slow  # ~30 olmo2 subprocesses: 3-5 minutes on 2 cores
def test_every_fault_has_its_documented_outcome(tmp_path):
    out = tmp_path / "faults.json"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--json", str(out)], capture_output=True, text=True, timeout=1200
    )
    outcomes = json.loads(out.read_text())
    assert len(outcomes) == 15
    assert result.returncode == 0, [o for o in outcomes if not o["ok"]]
    assert "15 of 15 as expected" in result.stdout
