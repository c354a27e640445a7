"""``launch.nproc_per_node``: the recipe runs its training steps under torchrun, with the same summary."""

import json
import sys
from pathlib import Path

import pytest
import yaml

from olmo2.config import ConfigError
from olmo2.recipe.config import AnnealConfig, LaunchConfig, RecipeConfig, RecipePostTrainConfig, load_recipe
from olmo2.recipe.runner import Recipe, StageFailed, run_stage_command


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _stage1_recipe(tmp_path: Path, train_config_dict) -> Path:
    stage1 = train_config_dict(run={"max_steps": 4, "folder": "unused"})
    stage1["checkpoint"] = {"save_every": 2, "keep_last": 1}
    (tmp_path / "stage1.yaml").write_text(yaml.safe_dump(stage1))
    recipe = {
        "name": "tiny",
        "out": "unused",
        "stage1": {"config": str(tmp_path / "stage1.yaml")},
        "anneals": [{"config": "unused"}],
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return tmp_path / "recipe.yaml"


def test_stage1_under_torchrun_matches_the_in_process_run(tmp_path, train_config_dict, capfd):
    path = _stage1_recipe(tmp_path, train_config_dict)
    summaries = {}
    for n in (1, 2):
        cfg = load_recipe(path, [f"out={tmp_path / f'nproc{n}'}", f"launch.nproc_per_node={n}"])
        summaries[n] = Recipe(cfg).stage1()
    err = capfd.readouterr().err
    assert "torch.distributed.run --standalone --nproc_per_node=2" in err and "2 rank(s), fsdp" in err
    one, two = summaries[1], summaries[2]
    assert one.keys() == two.keys() >= {"checkpoint", "run_dir", "step", "lr", "val_loss", "seconds"}
    assert Path(two["checkpoint"]) == tmp_path / "nproc2" / "stage1" / "step4"
    assert Path(two["run_dir"]) == tmp_path / "nproc2" / "stage1"
    assert (two["step"], two["total_steps"], two["lr"]) == (one["step"], one["total_steps"], one["lr"])
    assert two["val_loss"] == pytest.approx(one["val_loss"], rel=1e-5)
    for a, b in zip(_metrics(Path(one["run_dir"])), _metrics(Path(two["run_dir"])), strict=True):
        assert a["batch_hash"] == b["batch_hash"] and a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    assert json.loads((tmp_path / "nproc2/.done/stage1.json").read_text()) == two


def test_launch_keys_are_validated_on_load(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(
        yaml.safe_dump({"name": "x", "out": "o", "stage1": {"config": "c"}, "anneals": [{"config": "c"}]})
    )
    assert load_recipe(path).launch == LaunchConfig(nproc_per_node=1, torchrun_args=[])
    with pytest.raises(ConfigError, match="launch.nproc_per_node must be at least 1, got 0"):
        load_recipe(path, ["launch.nproc_per_node=0"])
    with pytest.raises(ConfigError, match="launch.nproc_per_node: expected an integer"):
        load_recipe(path, ["launch.nproc_per_node=two"])
    with pytest.raises(
        ConfigError, match=r"unknown key launch.nprocs \(known: nproc_per_node, torchrun_args\)"
    ):
        load_recipe(path, ["launch.nprocs=2"])
    with pytest.raises(ConfigError, match="launch.torchrun_args: '--nproc-per-node=4' is set by the recipe"):
        load_recipe(path, ["launch.torchrun_args=[--nproc-per-node=4]"])
    with pytest.raises(ConfigError, match="launch.torchrun_args: 'train.py' is not an option"):
        load_recipe(path, ["launch.torchrun_args=[train.py]"])


def test_anneal_entries_are_validated_on_load(tmp_path):
    """Each anneal run is a step and a run folder: entries need distinct, folder-safe names."""
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "out": "o", "stage1": {"config": "c"}, "anneals": []}))
    with pytest.raises(ConfigError, match="anneals: give at least one entry"):
        load_recipe(path)
    two = "anneals=[{config: a, seeds: [1, 2]}, {config: b, seeds: [2]}]"
    with pytest.raises(
        ConfigError, match="two runs would both be anneal-seed2; give the entries distinct names"
    ):
        load_recipe(path, [two])
    with pytest.raises(ConfigError, match="name '100b/x' must be letters, digits, - or _"):
        load_recipe(path, ["anneals=[{config: a, name: 100b/x}]"])
    with pytest.raises(ConfigError, match="soup_weights: 1 weights for 3 anneal runs"):
        load_recipe(path, [two.replace("[2]}", "[2], name: long}"), "soup_weights=[1.0]"])
    cfg = load_recipe(path, [two.replace("[2]}", "[2], name: long}")])
    assert [step for step, _, _ in cfg.anneal_runs()] == ["anneal-seed1", "anneal-seed2", "anneal-long-seed2"]


def test_stage_command_summary_and_failure(capfd):
    ok = "import json; print('a log line'); print(json.dumps({'model': 'm', 'steps': 2})); print('done')"
    assert run_stage_command("posttrain-sft", [sys.executable, "-c", ok]) == {"model": "m", "steps": 2}
    assert "a log line" in capfd.readouterr().err  # the command's stdout goes to the recipe's log
    with pytest.raises(StageFailed, match=r"recipe step stage1 failed: exit status 3 of\n  .*sys.exit\(3\)"):
        run_stage_command("stage1", [sys.executable, "-c", "import sys; sys.exit(3)"])
    with pytest.raises(StageFailed, match="recipe step anneal-seed1: no JSON summary"):
        run_stage_command("anneal-seed1", [sys.executable, "-c", "print('[1, 2]')"])


def test_posttrain_stages_are_launched_as_olmo2_commands(tmp_path, monkeypatch):
    calls = []

    def fake_run(step: str, cmd: list[str]) -> dict:
        calls.append((step, cmd))
        return {"model": f"/models/{cmd[cmd.index('olmo2.cli') + 1]}"}

    monkeypatch.setattr("olmo2.recipe.runner.run_stage_command", fake_run)
    cfg = RecipeConfig(
        name="tiny",
        out=str(tmp_path / "out"),
        stage1={"checkpoint": "unused"},
        anneals=[AnnealConfig(config="unused")],
        posttrain=RecipePostTrainConfig(sft="sft.yaml", dpo="dpo.yaml"),
        launch=LaunchConfig(nproc_per_node=4, torchrun_args=["--max_restarts=1"]),
    )
    results = Recipe(cfg).posttrain("/models/soup")
    post = tmp_path / "out" / "posttrain"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4"]
    assert calls == [
        (
            "posttrain-sft",
            [*torchrun, "--max_restarts=1", "-m", "olmo2.cli", "sft", "sft.yaml"]
            + ["model=/models/soup", f"run.folder={post / 'sft'}"],
        ),
        (
            "posttrain-dpo",
            [*torchrun, "--max_restarts=1", "-m", "olmo2.cli", "dpo", "dpo.yaml"]
            + ["model=/models/sft", f"run.folder={post / 'dpo'}"],
        ),
    ]
    assert results["dpo"]["model"] == "/models/dpo"
