"""A training checkpoint's ``model/`` is what other tools load as is: transformers' AutoTokenizer (with
the chat template) and AutoModelForCausalLM, and config.json names the dtype both ways."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from olmo2.chat import encode_chat
from olmo2.cli import main
from olmo2.model.checkpoint import load_model
from olmo2.model.config import DOLMA2_VOCAB_SIZE, EOS_TOKEN_ID, PAD_TOKEN_ID
from olmo2.tokenizer import load_tokenizer

transformers = pytest.importorskip("transformers")


def test_a_training_checkpoint_model_folder_loads_in_transformers(train_config_dict, tmp_path):
    cfg = train_config_dict(
        model={"d_model": 16, "n_heads": 2, "n_kv_heads": 1, "mlp_hidden": 32, "n_layers": 1,
               "vocab_size": DOLMA2_VOCAB_SIZE, "eos_token_id": EOS_TOKEN_ID, "pad_token_id": PAD_TOKEN_ID},
        run={"max_steps": 2}, schedule={"warmup_steps": 1}, checkpoint={"save_every": 2},
    )  # fmt: skip
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "train.yaml")]) == 0
    model_dir = tmp_path / "run" / "step2" / "model"

    config = json.loads((model_dir / "config.json").read_text())
    assert config["torch_dtype"] == config["dtype"] == "float32"
    hf_tok = transformers.AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    ours = load_tokenizer()
    text = "OLMo 2 reads  tabs\tand <|endoftext|> as one token."
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == ours.encode(text)
    chat = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]
    assert (
        hf_tok.apply_chat_template(chat, tokenize=True, return_dict=True)["input_ids"]
        == encode_chat(ours, chat).input_ids
    )

    hf = transformers.AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).eval()
    ids = torch.tensor([ours.encode(text)])
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, load_model(model_dir)(ids), rtol=1e-5, atol=1e-5)


def test_a_model_of_another_vocabulary_gets_no_tokenizer_files(make_train_config, tmp_path, capsys):
    assert main(["train", str(make_train_config(run={"max_steps": 4}))]) == 0
    assert (
        "model/ get no tokenizer files: model.vocab_size 384 is not the tokenizer's 100278"
        in capsys.readouterr().err
    )
    assert sorted(p.name for p in (tmp_path / "run" / "step4" / "model").iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors",
    ]  # fmt: skip
