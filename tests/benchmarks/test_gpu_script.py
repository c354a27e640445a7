"""The prepared GPU check runs end to end (on the CPU, in --smoke mode) before device time is spent:
pretraining through the trainer, then one SFT, DPO and GRPO step each through their train modules."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "gpu" / "run.py"


def test_gpu_script_smoke(tmp_path):
    out = tmp_path / "report.json"
    # The stand-in tokenizer is what a bare GPU machine without the cached asset gets.
    cmd = [sys.executable, str(SCRIPT), "--smoke", "--tokenizer", "stand-in", "--out", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["precision"] == "fp32" and report["device_kind"]
    assert report["parity"]["max_abs_logit_diff_fp32"] < 1e-4
    assert report["train"]["steps"] == 3 and report["train"]["tokens_per_sec_per_device"] > 0
    assert report["tokenizer"].startswith("stand-in")
    stages = report["posttrain"]
    assert sorted(stages) == ["dpo", "grpo", "sft"]
    for name, stage in stages.items():
        assert "error" not in stage, (name, stage.get("error"))
        assert stage["steps_timed"] == 1 and stage["precision"] == "fp32"
        assert stage["tokens_per_sec"] > 0 and 0 < stage["mfu_vs_measured_peak"] < 1.5
        assert stage["tokens_per_sec"] == stage["tokens_per_step"] / stage["step_seconds"]
        assert stage["engine_tokens_per_sec"] > 0
    assert stages["sft"]["tokens_per_step"] == 2 * 64 and stages["sft"]["target_tokens_per_step"] == 64
    assert stages["dpo"]["tokens_per_step"] == 2 * 2 * 32 and stages["dpo"]["reference_pass"]["seconds"] > 0
    grpo = stages["grpo"]
    assert grpo["tokens_per_step"] == 2 * 2 * (8 + 8) and grpo["reference_model"]
    assert (
        0 < grpo["rollout"]["seconds"] < grpo["step_seconds"] and grpo["rollout"]["new_tokens"] == 2 * 2 * 8
    )
    table = result.stdout.split("stage | precision")[1]
    for name in ("pretrain", "sft", "dpo", "grpo"):
        assert f"\n{name} | fp32 |" in table
