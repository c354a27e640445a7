"""The command line, run as a user would (in-process through ``main``)."""

import json
import subprocess
import sys

import pytest

from olmo2.cli import build_parser, main, resolve
from olmo2.commands import COMMANDS


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
