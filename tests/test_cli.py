"""The command line, run as a user would (in-process through ``main``), and its error path."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from olmo2.cli import build_parser, main, resolve
from olmo2.commands import COMMANDS
from olmo2.model.checkpoint import save_model
from olmo2.model.config import ModelConfig
from olmo2.model.transformer import build_model


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "size, total, non_embedding",
    [
        ("1b", 1_484_916_736, 1_073_874_944),
        ("7b", 7_298_617_344, 6_476_533_760),
        ("13b", 13_716_198_400, 12_688_593_920),
        ("32b", 32_234_279_936, 31_206_675_456),
    ],
)
def test_model_info_json(capsys, size, total, non_embedding):
    code, out, _ = _run(capsys, "model", "info", size, "--json")
    info = json.loads(out)
    assert code == 0
    assert (info["total_params"], info["non_embedding_params"]) == (total, non_embedding)


def test_unknown_size_is_a_clear_error(capsys):
    code, _, err = _run(capsys, "model", "info", "3b")
    assert code == 4
    assert "unknown model size '3b'; known sizes: 1b, 7b, 13b, 32b, tiny, small" in err


def test_model_info_from_yaml_names_bad_key(capsys, tmp_path):
    cfg = tmp_path / "m.yaml"
    cfg.write_text("d_model: 64\nn_layers: 2\nn_heads: 4\nmlp_hidden: 128\nheads_kv: 2\n")
    code, _, err = _run(capsys, "model", "info", str(cfg))
    assert code == 4 and "m.yaml: unknown key heads_kv" in err
    cfg.write_text("d_model: 64\nn_layers: 2\nn_heads: 3\nmlp_hidden: 128\n")
    code, _, err = _run(capsys, "model", "info", str(cfg))
    assert code == 4 and "d_model (64) is not divisible by n_heads (3)" in err


def test_init_then_convert_both_ways(capsys, tmp_path):
    cfg = tmp_path / "m.yaml"
    cfg.write_text(
        "d_model: 64\nn_layers: 2\nn_heads: 4\nmlp_hidden: 128\nvocab_size: 300\n"
        "eos_token_id: 298\npad_token_id: 299\n"
    )
    assert _run(capsys, "model", "init", str(cfg), str(tmp_path / "init"), "--seed", "3")[0] == 0
    code, out, _ = _run(
        capsys, "convert", "to-hf", str(tmp_path / "init"), str(tmp_path / "hf"), "--no-tokenizer"
    )
    assert code == 0 and "wrote" in out
    code, _, _ = _run(
        capsys, "convert", "from-hf", str(tmp_path / "hf"), str(tmp_path / "back"), "--dtype", "bfloat16"
    )
    assert code == 0
    code, out, _ = _run(capsys, "model", "info", str(tmp_path / "back"), "--json")
    assert json.loads(out)["vocab_size"] == 300
    code, _, err = _run(
        capsys, "convert", "to-hf", str(tmp_path / "init"), str(tmp_path / "hf"), "--no-tokenizer"
    )
    assert code == 4 and "already exists and is not empty" in err


def test_convert_refuses_other_architecture(capsys, tmp_path):
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama/config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    code, _, err = _run(capsys, "convert", "from-hf", str(tmp_path / "llama"), str(tmp_path / "out"))
    assert code == 4 and "not an OLMo 2 model (model_type='llama'" in err


def _subparsers(parser):
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for sub in action.choices.values():
                yield sub
                yield from _subparsers(sub)


def test_every_command_has_help(capsys):
    parsers = list(_subparsers(build_parser()))
    assert len(parsers) >= 7
    for parser in parsers:
        text = parser.format_help()
        assert "usage: olmo2" in text and "-h, --help" in text


def test_every_command_names_functions_that_exist():
    """The table's "module:function" names are imported only on use: check them all here."""
    for name, cmd in COMMANDS.items():
        assert callable(resolve(cmd.run)), name
        assert cmd.config is None or callable(resolve(cmd.config[0])), name


def test_plot_commands_load_no_torch():
    """``olmo2 plot`` and ``olmo2 plot-rewards`` only read ``metrics.jsonl``: seconds less to start."""
    targets = [COMMANDS[name].run for name in ("plot", "plot-rewards")]
    code = (
        "import sys; from olmo2.cli import resolve\n"
        f"for target in {targets!r}: resolve(target)\n"
        "assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- the error path: each fault is one line on stderr and its documented exit status ------------


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A random model with the dolma2 vocabulary and a short max_seq_len (32), for generate and eval."""
    cfg = ModelConfig(d_model=32, n_layers=2, n_heads=4, mlp_hidden=64, max_seq_len=32)
    return save_model(build_model(cfg, seed=0), tmp_path_factory.mktemp("cli") / "ckpt")


def _truncated_weights(tmp_path, ckpt, monkeypatch, make_train_config):
    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return [*GENERATE, str(bad)]


def _corrupt_config(tmp_path, ckpt, monkeypatch, make_train_config):
    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    (bad / "config.json").write_text('{"model_type": "olmo2",')
    return [*GENERATE, str(bad)]


def _read_only_out(tmp_path, ckpt, monkeypatch, make_train_config):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):  # root ignores permissions
        pytest.skip("this user can write a read-only folder")
    return [*EVAL, str(ckpt), "--out", str(folder / "r.json")]


def _out_under_a_file(tmp_path, ckpt, monkeypatch, make_train_config):
    (tmp_path / "file").write_text("")
    return [*EVAL, str(ckpt), "--out", str(tmp_path / "file" / "r.json")]


def _out_is_a_folder(tmp_path, ckpt, monkeypatch, make_train_config):
    monkeypatch.setattr("olmo2.eval.runner.load_eval_model", _must_not_run)  # refused before any work
    return [*EVAL, str(ckpt), "--out", str(tmp_path)]


def _interrupted(tmp_path, ckpt, monkeypatch, make_train_config):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("olmo2.model.spec.model_info", interrupt)
    return ["model", "info", "tiny"]


def _cuda_without_cuda(tmp_path, ckpt, monkeypatch, make_train_config):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    monkeypatch.setattr("olmo2.generate.load_model", _must_not_run)
    return [*GENERATE, str(ckpt), "--device", "cuda"]


def _tokenizer_typo(tmp_path, ckpt, monkeypatch, make_train_config):
    monkeypatch.setattr("olmo2.eval.lm.load_model", _must_not_run)  # the tokenizer is checked first
    return [*EVAL, str(ckpt), "--tokenizer", "typo/tokenizer"]


def _no_room_for_the_prompt(tmp_path, ckpt, monkeypatch, make_train_config):
    monkeypatch.setattr("olmo2.generate.load_model", _must_not_run)
    return [*GENERATE, str(ckpt), "--max-new-tokens", "100000000"]


def _mix_without_files(tmp_path, ckpt, monkeypatch, make_train_config):
    config = make_train_config()
    mix = tmp_path / "mix.yaml"
    mix.write_text(mix.read_text().replace("data/train/*.npy", "data/trian/*.npy"))
    return ["train", str(config), "--dry-run"]


def _must_not_run(*args, **kwargs):
    raise AssertionError("work started before the input was checked")


EVAL = ["eval", "--tasks", "piqa:mc", "--limit", "2", "--quiet"]
GENERATE = ["generate", "--prompt", "hi", "--device", "cpu", "--max-new-tokens", "8"]
FAULTS = [  # (fault, argv maker, exit status, text the error line holds)
    (_truncated_weights, 4, ""),  # the message is model/checkpoint.py's (it names the file there)
    (_corrupt_config, 4, "config.json: not valid JSON"),
    (_read_only_out, 4, "r.json: cannot write the results here: Permission denied"),
    (_out_under_a_file, 4, "r.json: cannot write the results here: Not a directory"),
    (_out_is_a_folder, 4, "cannot write the results here: Is a directory"),
    (_interrupted, 130, "olmo2: interrupted"),
    (_cuda_without_cuda, 4, "device 'cuda': CUDA is not available on this machine"),
    (_tokenizer_typo, 4, "tokenizer typo/tokenizer not found"),
    (_no_room_for_the_prompt, 4, "max_new_tokens 100000000 leaves no room for a prompt"),
    (_mix_without_files, 4, "data.mix ("),
]


@pytest.mark.parametrize("make_argv, status, text", FAULTS, ids=[f[0].__name__.strip("_") for f in FAULTS])
def test_each_fault_is_one_line_and_its_exit_status(
    make_argv, status, text, tiny_checkpoint, tmp_path, monkeypatch, make_train_config, capsys
):
    argv = make_argv(tmp_path, tiny_checkpoint, monkeypatch, make_train_config)
    start = time.perf_counter()
    code, out, err = _run(capsys, *argv)
    assert time.perf_counter() - start < 5, "a fault must fail fast (no Hub retries, no model load)"
    lines = err.strip().splitlines()
    assert (code, len(lines)) == (status, 1), err
    assert lines[0].startswith("olmo2: interrupted" if status == 130 else "olmo2: error: "), err
    assert text in lines[0] and "Traceback" not in err


def test_a_bug_keeps_its_traceback_and_debug_shows_every_trace(monkeypatch, capsys):
    """An unexpected exception is not dressed up as bad input: it propagates (exit status 1)."""

    def bug(*args, **kwargs):
        raise TypeError("a bug")

    monkeypatch.setattr("olmo2.model.spec.model_info", bug)
    with pytest.raises(TypeError, match="a bug"):
        main(["model", "info", "tiny"])
    monkeypatch.undo()
    monkeypatch.setenv("OLMO2_DEBUG", "1")
    with pytest.raises(ValueError, match="unknown model size"):
        main(["model", "info", "3b"])


@pytest.mark.parametrize(
    "argv",
    [
        [*EVAL, "MODEL", "--batch-size", "0"],
        [*EVAL, "MODEL", "--limit", "-1"],
        ["generate", "MODEL", "--prompt", "hi", "--max-new-tokens", "0"],
        ["soup", "A", "--out", "B", "--max-shard-gb", "0"],
    ],
)
def test_non_positive_sizes_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2 and "must be a positive" in capsys.readouterr().err


def test_a_long_prompt_keeps_its_end(tiny_checkpoint, capsys):
    """The model holds 32 tokens: 8 new ones leave 24 for the prompt, cut from the left, said on stderr."""
    code, out, err = _run(
        capsys, "generate", str(tiny_checkpoint), "--prompt", " ".join(["word"] * 100), "--max-new-tokens", "8",
        "--device", "cpu",
    )  # fmt: skip
    assert code == 0 and out.strip()
    assert "olmo2 generate: prompt 0 has 100 tokens; keeping its last 24" in err


def test_help_lists_the_exit_statuses(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "exit status: 0 ok; 1 internal error" in " ".join(capsys.readouterr().out.split())
