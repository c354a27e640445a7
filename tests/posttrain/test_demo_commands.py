"""The miniature post-training commands of docs/posttrain.md, run as written (slow: ~6 min on 2 cores)."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).parents[2] / "docs" / "posttrain.md"
REPO = Path(__file__).parents[2]


def _demo_commands() -> list[str]:
    text = DOC.read_text()
    block = re.search(r"```text\n(olmo2 posttrain-data.*?)```", text, re.S).group(1)
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def test_doc_lists_the_five_stages():
    cmds = _demo_commands()
    assert [c.split()[1] for c in cmds[:5]] == ["posttrain-data", "sft", "dpo", "rlvr", "rlvr"]


@pytest.mark.slow
def test_demo_commands_run_from_a_random_demo_model(tmp_path):
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    bin_dir = Path(sys.executable).parent
    run = lambda cmd: subprocess.run(  # noqa: E731
        ["bash", "-euo", "pipefail", "-c", f"PATH={bin_dir}:$PATH; {cmd}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert run("olmo2 model init demo runs/demo/soup").returncode == 0
    for cmd in _demo_commands():
        result = run(cmd)
        assert result.returncode == 0, (cmd, result.stderr[-3000:])
    summary = json.loads((tmp_path / "runs/posttrain-demo/rlvr/summary.json").read_text())
    assert summary["steps"] == 30 and (tmp_path / "runs/posttrain-demo/rlvr/rewards.png").is_file()
    assert result.stdout.strip()  # the chat answered
