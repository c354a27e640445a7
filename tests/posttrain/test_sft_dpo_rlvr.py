"""SFT, DPO, RLVR and chat end to end on a tiny model (full dolma2 vocabulary), on CPU."""

from __future__ import annotations

import io
import json
import re
import shutil
import time

import pytest
import torch

from olmo2.chat import encode_chat
from olmo2.cli import main
from olmo2.config import ConfigError
from olmo2.model.checkpoint import save_model
from olmo2.model.config import ModelConfig
from olmo2.model.transformer import build_model
from olmo2.posttrain.common import chat, plot_rewards
from olmo2.posttrain.dpo import load_dpo_config, train_dpo
from olmo2.posttrain.rlvr import load_rlvr_config, train_rlvr
from olmo2.posttrain.sft import load_sft_config, train_sft
from olmo2.tokenizer import load_tokenizer

TINY = ModelConfig(d_model=64, n_layers=2, n_heads=4, mlp_hidden=128, max_seq_len=256)
PROMPT = "Pick a digit."


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("base") / "model"
    save_model(build_model(TINY, seed=0), path)
    return str(path)


@pytest.fixture(scope="module")
def digits_sft(tmp_path_factory, base):
    """A tiny model SFT'd to answer PROMPT with a random digit: the starting point for RLVR and chat."""
    tmp = tmp_path_factory.mktemp("sft")
    rows = [
        {"messages": [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": str(d)}]}
        for d in (3, 5, 7, 9) * 5
    ]
    data = _jsonl(tmp / "digits.jsonl", rows)
    cfg = load_sft_config(
        None,
        [f"model={base}", f"data={data}", f"run.folder={tmp / 'run'}", "optim.lr=3e-2", "run.epochs=16"]
        + ["batch_size=20", "micro_batch_size=20", "max_seq_len=64", "schedule.warmup_ratio=0.0"]
        + ["logging.tensorboard=true"],
    )
    summary = train_sft(cfg)
    yield tmp / "run", summary, rows
    shutil.rmtree(tmp)


def test_sft_metrics_reach_tensorboard_as_in_pretraining(digits_sft):
    """Post-training shares pretraining's ``logging`` section: every record's scalars go to TensorBoard."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _, _ = digits_sft
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    for tag in ("loss", "lr", "grad_norm"):
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [r["step"] for r in records], tag
        assert [s.value for s in scalars] == pytest.approx([r[tag] for r in records], rel=1e-6), tag


def test_sft_lowers_loss_and_trains_assistant_tokens_only(digits_sft, tok):
    run, summary, rows = digits_sft
    assert summary["final_loss"] < summary["first_loss"] * 0.5
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epoch_targets = records[0]["n_targets"]  # one step = one epoch
    encoded = [encode_chat(tok, r["messages"]) for r in rows]
    assert epoch_targets == sum(e.n_targets for e in encoded) == 2 * len(rows)  # digit + EOS each
    assert epoch_targets < records[0]["n_tokens"] == sum(len(e) for e in encoded)
    assert (run / "model" / "config.json").is_file()
    assert "chat_template" in json.loads((run / "model" / "tokenizer_config.json").read_text())


def test_sft_packing_matches_target_count(tmp_path, base, tok):
    rows = [
        {"messages": [{"role": "user", "content": f"Say {w}."}, {"role": "assistant", "content": w}]}
        for w in ("yes", "no", "maybe", "never")
    ]
    data = _jsonl(tmp_path / "d.jsonl", rows)
    cfg = load_sft_config(
        None,
        [f"model={base}", f"data={data}", f"run.folder={tmp_path / 'run'}", "packing=true", "max_seq_len=64"]
        + ["batch_size=1", "micro_batch_size=1", "run.epochs=1", "loss_reduction=mean"],
    )
    train_sft(cfg)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["n_targets"] for r in records) == sum(
        encode_chat(tok, r["messages"]).n_targets for r in rows
    )


def test_bad_config_keys_are_named(base):
    with pytest.raises(ConfigError, match="unknown key lr_rate"):
        load_sft_config(None, [f"model={base}", "data=x.jsonl", "lr_rate=1"])
    with pytest.raises(ConfigError, match="loss_type"):
        load_dpo_config(None, [f"model={base}", "data=x.jsonl", "loss_type=ipo"])
    with pytest.raises(ConfigError, match="group_size"):
        load_rlvr_config(None, [f"model={base}", "data=x.jsonl", "group_size=1"])
    with pytest.raises(ConfigError, match="model"):
        load_sft_config(None, ["data=x.jsonl"])


def test_dpo_margin_and_accuracy_rise_reference_cached(tmp_path, base):
    rows = [
        {
            "prompt": f"What is {a} plus {a}?",
            "chosen": f"It is {2 * a}.",
            "rejected": f"It is {2 * a + 3}, sir.",
        }
        for a in range(1, 9)
    ]
    data = _jsonl(tmp_path / "pairs.jsonl", rows)
    args = [
        f"model={base}",
        f"data={data}",
        f"run.folder={tmp_path / 'run'}",
        "optim.lr=2e-3",
        "run.epochs=6",
    ]
    args += ["batch_size=8", "micro_batch_size=4", "max_seq_len=64", "schedule.warmup_ratio=0.0"]
    summary = train_dpo(load_dpo_config(None, args))
    assert summary["reference_cache"] == "computed"
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["margin"] == pytest.approx(0.0, abs=1e-4)  # policy == reference at step 1
    assert records[-1]["margin"] > 0.5 and records[-1]["accuracy"] == 1.0
    assert records[-1]["loss"] < records[0]["loss"]
    assert {"chosen_logps", "rejected_logps"} <= set(records[-1])
    cache = torch.load(tmp_path / "run" / "reference_logps.pt", weights_only=True)
    assert cache["chosen"].shape == (len(rows),)
    again = train_dpo(load_dpo_config(None, [*args, "run.max_steps=1"]))
    assert again["reference_cache"] == "loaded"


def _train_digit_rl(digits_sft, out, *overrides) -> tuple[dict, list[dict], float]:
    """RLVR from the digits SFT model, rewarded for answering 7: ``(summary, records, seconds)``."""
    run, _, _ = digits_sft
    rows = [{"prompt": PROMPT, "ground_truth": "7", "verifier": "gsm8k"}] * 2
    data = _jsonl(out.parent / "prompts.jsonl", rows)
    t0 = time.time()
    common = ["batch_size=2", "group_size=8", "micro_batch_size=16", "max_new_tokens=3"]
    cfg = load_rlvr_config(
        None, [f"model={run / 'model'}", f"data={data}", f"run.folder={out}", *common, *overrides]
    )
    summary = train_rlvr(cfg)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return summary, records, time.time() - t0


def test_rlvr_mean_reward_rises(digits_sft, tmp_path):
    summary, records, seconds = _train_digit_rl(
        digits_sft, tmp_path / "rl", "optim.lr=1e-3", "steps=24", "beta=0.01"
    )
    assert all({"reward_mean", "kl"} <= set(r) for r in records)
    assert summary["reward_last_quarter"] > summary["reward_first_quarter"] + 2.0, summary
    assert (tmp_path / "rl" / "rewards.png").is_file() or plot_rewards(tmp_path / "rl").is_file()
    assert seconds < 60


def test_ppo_mean_reward_rises(digits_sft, tmp_path):
    """PPO (value model from the start checkpoint, zero head; 2 epochs per rollout) learns the same toy
    task as GRPO: mean reward 0.0 -> 5.6 (first vs last quarter of 12 steps) with seed 0."""
    summary, records, seconds = _train_digit_rl(
        digits_sft,
        tmp_path / "ppo",
        "algorithm=ppo",
        "optim.lr=2e-3",
        "schedule.name=constant",
        "steps=12",
        "ppo_epochs=2",
    )
    assert len(records) == 12 and summary["algorithm"] == "ppo"
    keys = {"reward_mean", "kl", "value_loss", "vf_clipfrac", "clipfrac", "approx_kl", "policy_loss"}
    assert all(keys <= set(r) for r in records)
    assert summary["reward_last_quarter"] > summary["reward_first_quarter"] + 2.0, summary
    assert records[-1]["value_mean"] > records[0]["value_mean"]  # the value head learns the returns
    assert (tmp_path / "ppo" / "rewards.png").is_file()
    assert seconds < 60


def test_chat_with_piped_stdin(digits_sft):
    run, _, _ = digits_sft
    out = io.StringIO()
    history = chat(run / "model", stdin=io.StringIO(f"{PROMPT}\n/exit\nnever read\n"), stdout=out)
    assert [m["role"] for m in history] == ["user", "assistant"]
    assert out.getvalue().splitlines() == [history[1]["content"]]  # one reply; /exit stopped reading
    assert history[1]["content"]


@pytest.mark.parametrize("task", ["chain_sum", "gsm_symbolic"])
def test_demo_data_loads_cleanly_and_pairs_are_verified(tmp_path, tok, task):
    from olmo2.demo.posttrain_data import write_demo_data
    from olmo2.posttrain.data import load_preferences, load_rl_prompts, load_sft
    from olmo2.posttrain.verifiers import verify

    paths = write_demo_data(tmp_path, task=task, n_sft=8, n_dpo=8, n_rlvr=8, seed=3)
    sft, r1 = load_sft(paths["sft"], tok)
    pairs, r2 = load_preferences(paths["dpo"], tok)
    prompts, r3 = load_rl_prompts(paths["rlvr"], tok)
    assert len(sft) == 8 and len(pairs) >= 6 and len(prompts) == 8
    assert not (r1.skipped or r2.skipped or r3.skipped)
    for row in map(json.loads, paths["dpo"].read_text().splitlines()):
        assert row["chosen"] != row["rejected"]
        assert verify("gsm8k", row["chosen"], row["chosen"].rsplit("####", 1)[1])
    questions = [json.loads(x)["messages"][0]["content"] for x in paths["sft"].read_text().splitlines()]
    rl_questions = [p.messages[0]["content"] for p in prompts]
    assert len(set(rl_questions)) == len(rl_questions)  # distinct RLVR prompts
    if task == "gsm_symbolic":  # disjoint seeds, and enough problems not to collide
        assert not set(questions) & set(rl_questions)
    else:  # ~200 one-digit problems: the stages share them (documented)
        assert all(re.fullmatch(r".*: \d [+-] \d =", q) for q in questions + rl_questions)
    again = write_demo_data(tmp_path / "again", task=task, n_sft=8, n_dpo=8, n_rlvr=8, seed=3)
    assert again["sft"].read_text() == paths["sft"].read_text()  # seeded


def test_cli_commands_parse_and_dry_run(base, capsys, digits_sft, monkeypatch):
    assert main(["dpo", "configs/posttrain/demo-dpo.yaml", f"model={base}", "beta=0.5", "--dry-run"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["beta"] == 0.5 and shown["loss_type"] == "dpo_norm" and shown["model"] == base
    for name in ("sft", "rlvr"):
        assert main([name, f"configs/posttrain/demo-{name}.yaml", "--dry-run"]) == 0
        assert json.loads(capsys.readouterr().out)["run"]["folder"].startswith("runs/posttrain-demo/")
    run, _, _ = digits_sft
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{PROMPT}\n"))
    assert main(["chat", str(run / "model"), "--max-new-tokens", "4"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1


def test_posttrain_data_cli_writes_the_chosen_task(tmp_path, capsys):
    assert (
        main(["posttrain-data", str(tmp_path), "--task", "chain_sum", "--n-sft", "4", "--n-rlvr", "3"]) == 0
    )
    out = capsys.readouterr().out
    assert "sft:" in out and "(4 records)" in out and "(3 records)" in out
    row = json.loads((tmp_path / "sft.jsonl").read_text().splitlines()[0])
    assert re.fullmatch(r"\d [+-] \d = (-?\d+)\n#### \1", row["messages"][1]["content"])
