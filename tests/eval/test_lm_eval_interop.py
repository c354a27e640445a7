"""lm-eval's Hugging Face model class loads our export unchanged and gives the log-likelihoods of
``olmo2 eval`` on real OLMES requests."""

from __future__ import annotations

import pytest

from olmo2.eval.runner import run_eval
from olmo2.eval.tasks import load_task
from olmo2.model.checkpoint import save_model
from olmo2.model.config import ModelConfig
from olmo2.model.convert import convert_checkpoint
from olmo2.model.transformer import build_model
from olmo2.tokenizer import load_tokenizer

pytest.importorskip("lm_eval")
TASKS = {"arc_easy:rc": 2, "piqa:rc": 1}  # task format: docs


def test_lm_eval_hflm_scores_our_export_as_we_do(tmp_path, monkeypatch):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    raw = save_model(
        build_model(ModelConfig(d_model=32, n_layers=2, n_heads=4, mlp_hidden=64), seed=3), tmp_path / "raw"
    )
    export = convert_checkpoint(raw, tmp_path / "hf")  # config, safetensors, tokenizer files
    ours, requests = [], []
    for task, limit in TASKS.items():
        results = run_eval(export, task, limit=limit, keep_docs=True, quiet=True)
        ours += [lp for doc in results["tasks"][task]["per_doc"] for lp in doc["logprobs"]]
        requests += [
            p
            for d in load_task(task, limit=limit).docs
            for p in zip(d.contexts, d.continuations, strict=True)
        ]
    # lm-eval encodes context + continuation jointly, OLMES separately: these requests split alike.
    tok = load_tokenizer()
    assert all(tok.encode(c + x) == tok.encode(c) + tok.encode(x) for c, x in requests)

    lm = HFLM(pretrained=str(export), device="cpu", batch_size=4)
    instances = [
        Instance(request_type="loglikelihood", doc={}, arguments=(c, x), idx=i)
        for i, (c, x) in enumerate(requests)
    ]
    theirs = [logprob for logprob, _ in lm.loglikelihood(instances, disable_tqdm=True)]
    assert len(theirs) == len(ours) == 10
    assert theirs == pytest.approx(ours, abs=1e-4)
