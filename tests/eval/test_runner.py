"""The runner: in-loop equals offline, HF and non-OLMo models, bad model dirs, JSON/table, GSM8K."""

from __future__ import annotations

import errno
import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from eval_models import REAL_VOCAB, strip_timing, transformers

from olmo2.cli import main
from olmo2.eval import runner
from olmo2.eval.generative import generate_until
from olmo2.eval.lm import EvalLM, as_text_tokenizer, load_eval_model
from olmo2.eval.runner import Evaluator, flat_metrics, format_table, run_eval
from olmo2.model.checkpoint import CheckpointError, save_model
from olmo2.model.config import ModelConfig
from olmo2.model.transformer import build_model
from olmo2.tokenizer import load_tokenizer, write_hf_tokenizer_files

TASKS = "arc_easy,boolq:rc,mmlu:mc,gsm8k:bpb"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    cfg = ModelConfig(d_model=32, n_layers=2, n_heads=4, mlp_hidden=64)
    model = build_model(cfg, seed=0)
    d = tmp_path_factory.mktemp("ck") / "model"
    save_model(model, d)
    return model, d


def test_in_loop_equals_offline(checkpoint, tmp_path):
    model, path = checkpoint
    model.train()  # as the trainer holds it; the evaluator must restore this
    ev = Evaluator(load_tokenizer(), TASKS, limit=6, batch_size=4, token_cache=False)
    in_loop = ev(model)
    assert model.training
    out = tmp_path / "res.json"
    offline = run_eval(path, TASKS, limit=6, batch_size=4, out=out, quiet=True)
    assert strip_timing(in_loop["tasks"]) == strip_timing(offline["tasks"])
    assert in_loop["summary"] == offline["summary"]
    saved = json.loads(out.read_text())
    assert saved["summary"] == offline["summary"] and saved["settings"]["limit"] == 6
    assert saved["settings"]["tokenizer_sha256"] == ev.tok.fingerprint
    arc = saved["tasks"]["arc_easy"]
    assert arc["primary_metric"] == "mc_or_rc" and arc["primary"] == max(
        arc["mc"]["primary"], arc["rc"]["primary"]
    )
    assert arc["rc"]["primary_metric"] == "acc_per_char" and arc["mc"]["docs"] == 6
    assert saved["tasks"]["mmlu:mc"]["docs"] == 6 and len(saved["tasks"]["mmlu:mc"]["subjects"]) == 6
    flat = flat_metrics(offline)
    assert set(flat) == {"eval/arc_easy", "eval/boolq:rc", "eval/mmlu:mc", "eval/gsm8k:bpb"}
    table = format_table(offline)
    assert "arc_easy:rc" in table and "bits_per_byte" in table


def test_hf_backend_and_non_olmo_model(checkpoint, tmp_path):
    _, path = checkpoint
    ours = run_eval(path, "csqa:mc,naturalqs:bpb", limit=5, quiet=True)
    hf = run_eval(path, "csqa:mc,naturalqs:bpb", limit=5, backend="hf", quiet=True)
    assert hf["settings"]["model_backend"] == "HFLM" and ours["settings"]["model_backend"] == "Olmo2LM"
    assert hf["summary"]["csqa:mc"] == ours["summary"]["csqa:mc"]
    assert hf["summary"]["naturalqs:bpb"] == pytest.approx(ours["summary"]["naturalqs:bpb"], rel=1e-5)
    # A Llama directory with its own tokenizer files is evaluated through transformers.
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=REAL_VOCAB, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
        num_hidden_layers=2, intermediate_size=64, eos_token_id=100257,
    )  # fmt: skip
    llama_dir = tmp_path / "llama"
    transformers.LlamaForCausalLM(cfg).save_pretrained(llama_dir)
    write_hf_tokenizer_files(load_tokenizer(), llama_dir)
    res = run_eval(llama_dir, "csqa:mc", limit=4, quiet=True)
    assert res["settings"]["model_backend"] == "HFLM" and 0 <= res["summary"]["csqa:mc"] <= 1


def test_bad_model_dirs(tmp_path):
    bert = tmp_path / "bert"
    transformers.BertConfig(architectures=["BertForMaskedLM"]).save_pretrained(bert)
    with pytest.raises(CheckpointError, match="not a causal language model"):
        load_eval_model(bert)
    t5 = tmp_path / "t5"
    transformers.T5Config().save_pretrained(t5)
    with pytest.raises(CheckpointError, match="not a causal language model"):
        load_eval_model(t5)
    with pytest.raises(CheckpointError, match="no config.json"):
        load_eval_model(tmp_path)
    small = tmp_path / "small"  # a 300-token model cannot take dolma2 ids
    transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=300, hidden_size=16, num_attention_heads=2, num_hidden_layers=1, intermediate_size=32
        )
    ).save_pretrained(small)
    with pytest.raises(CheckpointError, match="tokenizer mismatch"):
        load_eval_model(small, tokenizer="dolma2")


class _ScriptedLM(EvalLM):
    """Emits a fixed token script, continuing where the prompt's generated part ends."""

    max_length, vocab_size, eos_token_id, device = 10_000, REAL_VOCAB, 100257, torch.device("cpu")

    def __init__(self, script, prompt_len):
        self.script, self.prompt_len, self.calls = script, prompt_len, 0

    def generate(self, prompts, max_new_tokens):
        self.calls += 1
        done = len(prompts[0]) - self.prompt_len
        return [self.script[done : done + max_new_tokens] for _ in prompts]


def test_generate_until_stops_on_sequences_and_eos():
    tok = as_text_tokenizer(load_tokenizer())
    script = tok.encode(" 2 + 3 = 5. So the answer is 5.\n\nQuestion: and then" + " more" * 200)
    lm = _ScriptedLM(script, prompt_len=3)
    out = generate_until(lm, tok, [[1, 2, 3]], [("Question:", "\n\n")], [512], chunk=8)
    assert out == [" 2 + 3 = 5. So the answer is 5."] and lm.calls <= 3
    lm = _ScriptedLM(tok.encode(" 7") + [100257] + tok.encode(" junk"), prompt_len=1)
    assert generate_until(lm, tok, [[9]], [("\n\n",)], [16]) == [" 7"]
    lm = _ScriptedLM(script, prompt_len=1)
    assert generate_until(lm, tok, [[9]], [()], [4]) == [tok.decode(script[:4])]


def test_gsm8k_generation_end_to_end(checkpoint):
    model, _ = checkpoint
    res = Evaluator(load_tokenizer(), "gsm8k", limit=2, gen_max_tokens=6, keep_docs=True)(model)
    m = res["tasks"]["gsm8k:gen"]
    assert m["primary_metric"] == "exact_match" and m["docs"] == 2 and m["exact_match"] in (0.0, 0.5, 1.0)
    assert [d["gold"] for d in m["per_doc"]] == ["18", "3"]


def test_cli_arguments_roundtrip(checkpoint, tmp_path, capsys):
    """What `olmo2 eval` wires: the options parse and run, the table prints, the JSON is written."""
    _, path = checkpoint
    out = tmp_path / "r.json"
    argv = ["eval", str(path), "--tasks", "piqa:mc", "--limit", "3", "--out", str(out), "--batch-size", "2"]
    assert main(argv) == 0
    res = json.loads(out.read_text())
    assert res["settings"]["batch_size"] == 2 and "piqa:mc" in res["tasks"]
    assert "piqa:mc" in capsys.readouterr().out
    with pytest.raises(SystemExit) as listed:
        main(["eval", "--list"])
    assert listed.value.code == 0 and "olmes_core" in capsys.readouterr().out
    with pytest.raises(SystemExit) as missing:
        main(["eval"])
    assert missing.value.code == 2 and "model" in capsys.readouterr().err


def test_bos_tokenizers_start_contexts_with_bos():
    """dolma2 has no BOS; a tokenizer that prepends one gets it on every context (as olmo-eval does)."""
    import tokenizers

    tk = tokenizers.Tokenizer.from_str(load_tokenizer().backend.to_str())
    tk.post_processor = tokenizers.processors.TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", 100257)]
    )
    ctx, cont = Evaluator(tk, "piqa:mc", limit=2, token_cache=False).prepared["piqa:mc"].requests[0]
    plain_ctx, plain_cont = (
        Evaluator(load_tokenizer(), "piqa:mc", limit=2, token_cache=False).prepared["piqa:mc"].requests[0]
    )
    assert ctx.tolist() == [100257, *plain_ctx.tolist()] and cont.tolist() == plain_cont.tolist()
    assert plain_ctx[0] != 100257


def test_a_model_folder_code_never_runs(checkpoint, tmp_path, monkeypatch):
    """``auto_map`` + ``modeling_*.py``: no prompt on stdin, the code never runs; a type transformers
    does not know is refused, OLMo 2 loads as the plain Olmo2ForCausalLM."""
    marker = tmp_path / "code-ran"
    asked = []
    monkeypatch.setattr("builtins.input", lambda *args: asked.append(args) or "y")
    auto_map = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilForCausalLM"}
    evil = tmp_path / "evil"
    evil.mkdir()
    config = {"model_type": "evil", "architectures": ["EvilForCausalLM"], "auto_map": auto_map}
    (evil / "config.json").write_text(json.dumps(config))
    olmo = tmp_path / "olmo"
    shutil.copytree(checkpoint[1], olmo)
    config = json.loads((olmo / "config.json").read_text())
    (olmo / "config.json").write_text(json.dumps({**config, "auto_map": auto_map}))
    for folder in (evil, olmo):
        (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    with pytest.raises(CheckpointError, match="'evil' exists only as the folder's own code"):
        load_eval_model(evil, tokenizer="dolma2")
    lm, _ = load_eval_model(olmo, backend="hf")
    assert type(lm.model).__name__ == "Olmo2ForCausalLM"
    assert not asked and not marker.exists()


def test_results_survive_an_output_error(checkpoint, tmp_path, monkeypatch, capsys):
    """``--out`` passes the check but the write fails (disk full): the results go to a temporary file."""
    out, real_write = tmp_path / "r.json", runner.write_json

    def disk_full(results, path):
        if Path(path) == out:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_write(results, path)

    monkeypatch.setattr(runner, "write_json", disk_full)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    argv = ["eval", str(checkpoint[1]), "--tasks", "piqa:mc", "--limit", "2", "--quiet", "--out", str(out)]
    assert main(argv) == 4
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"olmo2: error: {out}: could not write the results (No space left on device)")
    fallback = Path(err.rsplit("they are in ", 1)[1])
    assert fallback.parent == tmp_path and json.loads(fallback.read_text())["tasks"]["piqa:mc"]["docs"] == 2
