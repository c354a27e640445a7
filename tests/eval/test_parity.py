"""Parity on real OLMES tasks: our batched, prefix-cached, packed scorer against an independent
per-example computation with ``transformers`` log-probabilities, written here from the request files.

A seeded random ``Olmo2ForCausalLM`` with the real dolma2 vocabulary (tiny width) in float64 is scored
through both of our backends (our ``Olmo2`` loaded from the saved directory, and the HF model itself).
Per-example scores, correct counts and metric values must agree.
"""

from __future__ import annotations

import gzip
import json
import math

import numpy as np
import pytest
import torch
from eval_models import REAL_VOCAB, olmo2_hf

from olmo2.eval.lm import HFLM, Olmo2LM
from olmo2.eval.runner import Evaluator
from olmo2.eval.tasks import data_root
from olmo2.model.checkpoint import load_model
from olmo2.tokenizer import load_tokenizer

# (format, request dir or None for MMLU, docs): 293 docs over MC, RC (all four norms), MMLU and BPB.
SLICE = [
    ("arc_challenge:mc", "arc_challenge/test_mc_5shot", 80),
    ("arc_challenge:rc", "arc_challenge/test_rc_5shot", 20),
    ("boolq:rc", "boolq/rc_5shot", 25),
    ("csqa:rc", "csqa/rc_5shot", 25),
    ("hellaswag:rc", "hellaswag/rc_5shot", 5),
    ("winogrande:rc", "winogrande/rc_5shot", 30),
    ("piqa:mc", "piqa/mc_5shot", 50),
    ("mmlu:mc", None, 20),
    ("gsm8k:bpb", "gsm8k/gold_bpb_5shot", 8),
    ("naturalqs:bpb", "naturalqs_open/bpb_5shot", 30),
]


def _reference_docs(tok, rel: str, n: int) -> list[dict]:
    """The first ``n`` docs of a request file: choices' (context, continuation) and PMI partners."""
    docs: dict[int, dict] = {}
    with gzip.open(data_root() / "oe_eval_tasks" / rel / "requests.jsonl.gz", "rt") as f:
        for line in f:
            r = json.loads(line)
            did, uncond = r["doc_id"] % 1_000_000, r["doc_id"] >= 1_000_000
            if did not in docs and len(docs) == n:
                continue
            d = docs.setdefault(did, {"gold": r["label"], "cond": {}, "uncond": {}})
            d["uncond" if uncond else "cond"][r["idx"]] = (
                r["request"]["context"],
                r["request"]["continuation"],
            )
    return list(docs.values())


class _Reference:
    """Per-example ``transformers`` log-probabilities: one unbatched forward per distinct input row
    (context + continuation[:-1]), logits only at the continuation's positions."""

    def __init__(self, hf, tok):
        self.hf, self.tok, self.rows = hf, tok, {}

    def ll(self, ctx: str, cont: str) -> float:
        c, k = self.tok.encode(ctx), self.tok.encode(cont)
        key = (tuple(c + k[:-1]), len(k))
        if key not in self.rows:
            with torch.no_grad():
                logits = self.hf(torch.tensor([list(key[0])]), logits_to_keep=len(k)).logits[0]
            self.rows[key] = logits.double().log_softmax(-1)
        lp = self.rows[key]
        return float(sum(lp[i, t] for i, t in enumerate(k)))


def _reference_metrics(ref: _Reference, docs: list[dict], kind: str) -> tuple[dict, list[list[float]]]:
    if kind == "bpb":
        bpb = [-ref.ll(*d["cond"][0]) / math.log(2) / len(d["cond"][0][1].encode()) for d in docs]
        return {"bits_per_byte": sum(bpb) / len(bpb)}, [[-b] for b in bpb]
    correct = {"acc_raw": 0, "acc_per_token": 0, "acc_per_char": 0, "acc_uncond": 0}
    scores = []
    for d in docs:
        conts = [d["cond"][i] for i in range(len(d["cond"]))]
        s = [ref.ll(c, k) for c, k in conts]
        scores.append(s)
        norm = {
            "acc_raw": s,
            "acc_per_token": [x / len(ref.tok.encode(k)) for x, (_, k) in zip(s, conts, strict=True)],
            "acc_per_char": [x / len(k) for x, (_, k) in zip(s, conts, strict=True)],
        }
        if d["uncond"]:
            norm["acc_uncond"] = [x - ref.ll(*d["uncond"][i]) for i, x in enumerate(s)]
        for name, v in norm.items():
            correct[name] += int(max(range(len(v)), key=lambda i: (v[i], -i)) == d["gold"])
    return {k: v / len(docs) for k, v in correct.items() if k != "acc_uncond" or docs[0]["uncond"]}, scores


def _mmlu_reference(ref: _Reference) -> list[list[float]]:
    from olmo2.eval.tasks import load_task

    return [[ref.ll(d.contexts[0], c) for c in d.continuations] for d in load_task("mmlu:mc", limit=20).docs]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("parity")
    olmo2_hf(vocab=REAL_VOCAB, hidden=32, layers=2, seed=7, eos=100257).save_pretrained(d)
    hf = __import__("transformers").AutoModelForCausalLM.from_pretrained(d, dtype=torch.float64).eval()
    tok = load_tokenizer()
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    ref = _Reference(hf, tok)
    want = {}
    for fmt, rel, n_docs in SLICE:
        if rel is None:
            want[fmt] = (None, _mmlu_reference(ref))
        else:
            want[fmt] = _reference_metrics(
                ref, _reference_docs(tok, rel, n_docs), "bpb" if fmt.endswith("bpb") else "ranked"
            )
    torch.set_num_threads(n)
    return hf, load_model(d, dtype=torch.float64), tok, want


@pytest.mark.parametrize("backend", ["olmo2", "hf"])
def test_parity_with_per_example_transformers(setup, backend):
    hf, ours, tok, want = setup
    lm = Olmo2LM(ours) if backend == "olmo2" else HFLM(hf)
    results = {}
    for limit in sorted({n for _, _, n in SLICE}):  # one Evaluator per distinct doc count
        names = [f for f, _, n in SLICE if n == limit]
        ev = Evaluator(
            tok, names, limit=limit, batch_size=16, keep_docs=True, token_cache=False, all_norms=True
        )
        results.update(ev(lm)["tasks"])
    tol = 1e-9 if backend == "hf" else 1e-5  # our fp64 model differs from HF's kernels at ~1e-7
    total = 0
    for fmt, _, n in SLICE:
        got, (metrics, scores) = results[fmt], want[fmt]
        total += got["docs"]
        kind = "bpb" if fmt.endswith(":bpb") else "ranked"
        assert len(got["per_doc"]) == len(scores) == n
        for rec, ref in zip(got["per_doc"], scores, strict=True):
            ours_scores = [-rec["bits_per_byte"]] if kind == "bpb" else rec["logprobs"]
            np.testing.assert_allclose(ours_scores, ref, rtol=0, atol=tol, err_msg=fmt)
        if metrics is None:  # MMLU: micro accuracy from the reference scores
            gold = [rec["gold"] for rec in got["per_doc"]]
            micro = np.mean([int(np.argmax(s)) == g for s, g in zip(scores, gold, strict=True)])
            assert got["micro"] == pytest.approx(micro, abs=1e-12)
            continue
        for name, value in metrics.items():
            assert got[name] == pytest.approx(value, rel=1e-6, abs=1e-6), (fmt, name)
            if kind == "ranked":
                assert got[f"{name}_correct"] == round(value * n), (fmt, name)
    assert total == sum(n for _, _, n in SLICE) == 293
