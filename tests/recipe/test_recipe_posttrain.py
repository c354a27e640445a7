"""The recipe's post-training tail: SFT → DPO → RLVR chained on the demo data, validated up front."""

import json

import pytest
import yaml

from olmo2.config import ConfigError
from olmo2.model.checkpoint import save_model
from olmo2.model.config import ModelConfig
from olmo2.model.transformer import build_model
from olmo2.recipe.config import AnnealConfig, RecipeConfig, RecipePostTrainConfig
from olmo2.recipe.report import _posttrain_lines
from olmo2.recipe.runner import Recipe

TINY = ModelConfig(d_model=32, n_layers=1, n_heads=2, mlp_hidden=64, max_seq_len=128)
STAGES = {
    "sft": {"run": {"max_steps": 2}, "batch_size": 4, "micro_batch_size": 4, "max_seq_len": 64},
    "dpo": {"run": {"max_steps": 2}, "batch_size": 2, "micro_batch_size": 2, "max_seq_len": 64},
    "rlvr": {"steps": 2, "batch_size": 2, "group_size": 2, "max_new_tokens": 4, "optim": {"lr": 1e-4}},
}


def _recipe(tmp_path, stages=STAGES) -> Recipe:
    paths = {}
    for name, cfg in stages.items():
        # model, data and run.folder are the recipe's to set: placeholders prove they are replaced
        full = {
            "model": "unused",
            "data": "unused.jsonl",
            **cfg,
            "run": {**cfg.get("run", {}), "folder": "unused"},
        }
        paths[name] = tmp_path / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(full))
    cfg = RecipeConfig(
        name="tiny",
        out=str(tmp_path / "out"),
        stage1={"checkpoint": "unused"},
        anneals=[AnnealConfig(config="unused")],
        posttrain=RecipePostTrainConfig(**{k: str(v) for k, v in paths.items()}, demo_data=True),
    )
    return Recipe(cfg)


def test_posttrain_chains_stages_on_demo_data_and_reports(tmp_path):
    start = tmp_path / "soup"
    save_model(build_model(TINY, seed=0), start)
    recipe = _recipe(tmp_path)
    recipe.check_posttrain()
    results = recipe.posttrain(str(start))
    out = tmp_path / "out"
    assert sorted(p.stem for p in (out / ".done").glob("*.json")) == [
        "posttrain-data",
        "posttrain-dpo",
        "posttrain-rlvr",
        "posttrain-sft",
    ]
    # each stage starts from the previous one's model and trains on the demo files
    chain = (("sft", start), ("dpo", out / "posttrain/sft/model"), ("rlvr", out / "posttrain/dpo/model"))
    for name, model in chain:
        run_cfg = yaml.safe_load((out / "posttrain" / name / "config.yaml").read_text())
        assert run_cfg["model"] == str(model), name
        assert run_cfg["data"] == [str(out / "posttrain/data" / f"{name}.jsonl")]
    assert results["rlvr"]["model"] == str(out / "posttrain/rlvr/model")
    lines = "\n".join(_posttrain_lines(out, results))
    assert "SFT: 2 steps" in lines and "DPO: 2 steps" in lines and "RLVR (grpo): 2 steps" in lines
    assert "![rewards](posttrain/rlvr/rewards.png)" in lines
    # a second run finds every stage done
    again = _recipe(tmp_path).posttrain(str(start))
    assert json.dumps(again, sort_keys=True, default=str) == json.dumps(results, sort_keys=True, default=str)


def test_bad_posttrain_key_fails_before_any_work(tmp_path):
    stages = {**STAGES, "dpo": {**STAGES["dpo"], "betta": 5}}
    recipe = _recipe(tmp_path, stages)
    with pytest.raises((ConfigError, ValueError), match="betta"):
        recipe.prepare()
    assert not (tmp_path / "out" / ".done").exists()
