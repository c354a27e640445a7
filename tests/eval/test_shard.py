"""Evaluation split over ranks: merged results equal one process's exactly; --device auto; progress."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading

import pytest
import torch
from eval_models import strip_timing

from olmo2.eval.runner import Evaluator, run_eval
from olmo2.eval.shard import Shard
from olmo2.model.checkpoint import save_model
from olmo2.model.config import ModelConfig
from olmo2.model.transformer import build_model
from olmo2.tokenizer import load_tokenizer

# ranked (MC, RC with PMI), bits per byte, and generation: every kind goes through the shard
TASKS = "arc_easy:mc,arc_challenge:rc,gsm8k:bpb,gsm8k"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = build_model(ModelConfig(d_model=32, n_layers=2, n_heads=4, mlp_hidden=64), seed=0)
    path = tmp_path_factory.mktemp("ck") / "model"
    save_model(model, path)
    return model, path


def _thread_gathers(world: int) -> list:
    """``all_gather_object`` stand-ins for ``world`` threads of one process."""
    slots: list = [None] * world
    barrier = threading.Barrier(world)

    def gather_of(rank: int):
        def gather(obj):
            slots[rank] = obj
            barrier.wait()
            out = list(slots)
            barrier.wait()  # everyone has read before the next call overwrites a slot
            return out

        return gather

    return [gather_of(rank) for rank in range(world)]


def test_shards_merge_to_the_single_process_results(checkpoint):
    """Three ranks (threads) over tasks of every kind, batches of 2 so each rank runs several and one
    may run none: every rank's merged per-doc records and metrics equal one process's exactly."""
    model, _ = checkpoint
    tok = load_tokenizer()
    options = dict(limit=5, batch_size=2, gen_max_tokens=4, keep_docs=True, token_cache=False)
    whole = Evaluator(tok, TASKS, **options)(model)
    world, results = 3, {}

    def rank(r: int, gather) -> None:
        results[r] = Evaluator(tok, TASKS, shard=Shard(r, world, gather), **options)(model)

    threads = [threading.Thread(target=rank, args=(r, g)) for r, g in enumerate(_thread_gathers(world))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [0, 1, 2]
    for r in range(world):
        assert strip_timing(results[r]["tasks"]) == strip_timing(whole["tasks"])
        assert results[r]["summary"] == whole["summary"] and results[r]["settings"]["ranks"] == world
    assert len(whole["tasks"]["gsm8k:gen"]["per_doc"]) == 5
    assert len(whole["tasks"]["arc_challenge:rc"]["per_doc"][0]["uncond_logprobs"]) == 4  # PMI


def test_shard_owns_batches_round_robin():
    assert [k for k in range(7) if Shard(1, 3).owns(k)] == [1, 4]
    assert Shard().merge({3: "x"}) == {3: "x"}
    with pytest.raises(ValueError, match="rank 2 is not one of world size 2"):
        Shard(2, 2)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs torchrun")
def test_two_gloo_ranks_equal_one_process(checkpoint, tmp_path, torchrun):
    """``torchrun --nproc_per_node=2 -m olmo2.cli eval``: the JSON rank 0 writes equals one process's
    (per-doc records included); the table is printed once. (10 s measured on 2 busy cores.)"""
    _, path = checkpoint
    args = ["--tasks", TASKS, "--limit", "4", "--batch-size", "2", "--gen-max-tokens", "4", "--per-doc"]
    one = run_eval(path, TASKS, limit=4, batch_size=2, gen_max_tokens=4, keep_docs=True, quiet=True)
    out = tmp_path / "two.json"
    cmd = [*torchrun(2), "-m", "olmo2.cli", "eval", str(path), *args, "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads(out.read_text())
    assert two["settings"]["ranks"] == 2 and one["settings"]["ranks"] == 1
    assert strip_timing(two["tasks"]) == json.loads(json.dumps(strip_timing(one["tasks"])))
    assert proc.stdout.count("results written to") == 1 and proc.stdout.count("arc_easy:mc") == 1


def test_device_auto_and_progress_lines(checkpoint, capsys):
    """``--device auto`` (the default) takes CUDA when present, else the CPU; each task logs its
    progress in batches on stderr (plain lines when stderr is not a terminal)."""
    _, path = checkpoint
    res = run_eval(path, "piqa:mc,gsm8k", limit=3, batch_size=2, gen_max_tokens=2)
    assert res["settings"]["device"] == ("cuda:0" if torch.cuda.is_available() else "cpu")
    err = capsys.readouterr().err
    assert "olmo2 eval: piqa:mc: 2/2 batches" in err and "olmo2 eval: gsm8k:gen: 3/3 batches" in err


def test_progress_bar_on_a_terminal(checkpoint, monkeypatch):
    """On a terminal the progress is a tqdm bar (cleared when the task ends)."""

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    model, _ = checkpoint
    monkeypatch.setattr("sys.stderr", Terminal())
    Evaluator(load_tokenizer(), "piqa:mc", limit=3, batch_size=1, token_cache=False, verbose=True)(model)
    bar = sys.stderr.getvalue()
    assert "\rpiqa:mc:   0%|          | 0/3 [00:00<?, ?batch/s]" in bar
