"""Run an evaluation: prepare tasks once, score a model, report a table and JSON.

``Evaluator`` is the one code path: ``olmo2 eval`` builds one for a checkpoint directory, and the
trainer's in-loop hook keeps one (tasks loaded and tokenised once) and calls it on the live model, so
offline and in-loop numbers for the same weights are the same numbers.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from olmo2 import __version__
from olmo2.assets import ASSETS
from olmo2.eval.generative import generative_metrics
from olmo2.eval.lm import EvalLM, TextTokenizer, as_eval_lm, as_text_tokenizer, load_eval_model
from olmo2.eval.scoring import bpb_metrics, loglikelihoods, macro, mc_or_rc, ranked_metrics
from olmo2.eval.shard import WHOLE, Shard
from olmo2.eval.suites import SUITES, expand, formats_of
from olmo2.eval.tasks import DATA_ASSET, TaskData, load_task, resolve_format
from olmo2.eval.tokens import encode_strings
from olmo2.train.distributed import init_distributed

__all__ = [
    "Evaluator",
    "TaskProgress",
    "check_writable",
    "evaluate",
    "flat_metrics",
    "format_table",
    "run_eval",
    "write_json",
    "write_results",
]


@dataclass
class _Prepared:
    data: TaskData
    requests: list[tuple[np.ndarray, np.ndarray]]  # ranked/bpb: every (context, continuation), in doc order
    seconds: float


def _tokenize(
    tok: TextTokenizer, data: TaskData, cache: bool, complete: bool
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Context and continuation are encoded separately (OLMES/olmo-eval); each string once."""
    pairs: list[tuple[str, str]] = []
    for d in data.docs:
        pairs += list(zip(d.contexts, d.continuations, strict=True))
        if d.uncond_contexts is not None:
            pairs += list(zip(d.uncond_contexts, d.continuations, strict=True))
    strings = [x for p in pairs for x in p]
    ids = encode_strings(tok, strings, data.format.name if cache else None, complete=complete)
    ctx_ids = {c: _with_bos(tok, ids[c]) for c in dict.fromkeys(c for c, _ in pairs)}
    return [(ctx_ids[c], ids[k]) for c, k in pairs]


def _with_bos(tok: TextTokenizer, ids: np.ndarray) -> np.ndarray:
    """Contexts start with BOS for tokenizers that use one (``ai2-olmo-eval`` does the same)."""
    if tok.bos_token_id is None or (len(ids) and ids[0] == tok.bos_token_id):
        return ids
    return np.concatenate([np.array([tok.bos_token_id], dtype=ids.dtype), ids])


_LINE = "{desc}: {n_fmt}/{total_fmt} batches, {elapsed} elapsed, about {remaining} left"


class TaskProgress:
    """One task's progress on stderr, counted in batches: a tqdm bar on a terminal; elsewhere (a log
    file) a plain line every ``every`` seconds and one at the end."""

    def __init__(self, name: str, every: float = 30.0):
        self.name, self.every = name, every
        self.bar = None
        self.start = self.last = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        if sys.stderr.isatty():
            if self.bar is None:
                self.bar = tqdm(total=total, desc=self.name, unit="batch", file=sys.stderr, leave=False)
            self.bar.update(done - self.bar.n)
            return
        now = time.monotonic()
        if done == total or now - self.last >= self.every:
            self.last = now
            line = tqdm.format_meter(
                done, total, now - self.start, prefix=self.name, unit="batch", bar_format=_LINE
            )
            print(f"olmo2 eval: {line}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Evaluator:
    """Tasks loaded and tokenised once; ``evaluator(model)`` scores a model on all of them.

    With a ``shard`` (one per rank of a process group), the ranks split every task's batches and all
    of them get the merged results, equal to one process's; ``verbose`` adds a progress bar per task.
    """

    def __init__(
        self,
        tokenizer,
        tasks: str | Sequence[str],
        *,
        limit: int | None = None,
        batch_size: int = 32,
        max_batch_tokens: int = 8192,
        gen_max_tokens: int | None = None,
        keep_docs: bool = False,
        token_cache: bool = True,
        all_norms: bool = False,
        verbose: bool = False,
        shard: Shard = WHOLE,
        local_data: Mapping[str, str | Path] | None = None,
    ):
        self.tok = as_text_tokenizer(tokenizer)
        self.spec = tasks if isinstance(tasks, str) else ",".join(tasks)
        self.entries = expand(tasks)
        self.limit, self.batch_size, self.max_batch_tokens = limit, batch_size, max_batch_tokens
        self.gen_max_tokens, self.keep_docs, self.verbose = gen_max_tokens, keep_docs, verbose
        self.all_norms, self.shard = all_norms, shard
        self.prepared: dict[str, _Prepared] = {}
        for entry in self.entries:
            for name in formats_of(entry):
                t0 = time.perf_counter()
                data = load_task(resolve_format(name), limit=limit, local_data=local_data)
                if data.format.kind == "ranked" and data.format.norm != "pmi" and not all_norms:
                    for d in data.docs:  # PMI's unconditional requests only when PMI is the metric
                        d.uncond_contexts = None
                reqs = (
                    _tokenize(self.tok, data, token_cache, limit is None) if data.format.kind != "gen" else []
                )
                self.prepared[name] = _Prepared(data, reqs, time.perf_counter() - t0)
                self._log(f"prepared {name}: {len(data.docs)} docs, {len(reqs)} requests")

    def _log(self, msg: str) -> None:
        if self.verbose:
            print(f"olmo2 eval: {msg}", file=sys.stderr, flush=True)

    def settings(self, lm: EvalLM) -> dict:
        asset = ASSETS[DATA_ASSET]
        param = next(iter(lm.model.parameters()), None) if hasattr(lm, "model") else None
        return {
            "tasks": self.spec,
            "entries": self.entries,
            "limit": self.limit,
            "batch_size": self.batch_size,
            "max_batch_tokens": self.max_batch_tokens,
            "gen_max_tokens": self.gen_max_tokens,
            "all_norms": self.all_norms,
            "model_backend": type(lm).__name__,
            "model_max_length": lm.max_length,
            "dtype": str(param.dtype).removeprefix("torch.") if param is not None else None,
            "device": str(lm.device),
            "ranks": self.shard.world_size,
            "tokenizer_sha256": self.tok.fingerprint,
            "data": f"{asset.requirement} {asset.member} (tree sha256 {asset.sha256})",
            "olmo2": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        }

    def __call__(self, model, *, max_length: int | None = None) -> dict:
        """Score ``model`` (our ``Olmo2``, a transformers causal LM or an ``EvalLM``) on every task."""
        module = getattr(model, "model", None) if isinstance(model, EvalLM) else model
        was_training = bool(getattr(module, "training", False))  # the adapters switch to eval mode
        lm = as_eval_lm(model, max_length=max_length)
        if self.tok.vocab_size > lm.vocab_size:
            raise ValueError(
                f"tokenizer mismatch: the tokenizer has {self.tok.vocab_size} ids but the model embeds "
                f"only {lm.vocab_size}; evaluate with the model's own tokenizer"
            )
        t_start = time.perf_counter()
        formats: dict[str, dict] = {}
        try:
            for name, prep in self.prepared.items():
                t0 = time.perf_counter()
                progress = TaskProgress(name) if self.verbose else None
                try:
                    metrics, records = self._score(lm, prep, progress)
                finally:
                    if progress is not None:
                        progress.close()
                fmt = prep.data.format
                metrics.update(
                    kind=fmt.kind,
                    norm=fmt.norm if fmt.kind == "ranked" else None,
                    split=fmt.split,
                    shots=fmt.shots,
                    requests=len(prep.requests),
                    source=prep.data.files if len(prep.data.files) <= 8 else f"{len(prep.data.files)} dirs",
                    seconds=round(time.perf_counter() - t0, 3),
                )
                if self.keep_docs:
                    metrics["per_doc"] = records
                formats[name] = metrics
                self._log(
                    f"{name}: {metrics['primary_metric']} = {metrics['primary']:.4f} ({metrics['seconds']} s)"
                )
        finally:
            if was_training:
                module.train()
        tasks: dict[str, dict] = {}
        for entry in self.entries:
            subs = formats_of(entry)
            if len(subs) == 2:
                tasks[entry] = {
                    **mc_or_rc(formats[subs[0]], formats[subs[1]]),
                    "mc": formats[subs[0]],
                    "rc": formats[subs[1]],
                }
            else:
                tasks[entry] = formats[entry]
        suites = {}
        for name, members in SUITES.items():
            if all(m in tasks for m in members):
                suites[name] = {
                    "average": float(np.mean([tasks[m]["primary"] for m in members])),
                    "tasks": members,
                }
        return {
            "model": lm.name,
            "settings": self.settings(lm),
            "summary": {e: tasks[e]["primary"] for e in self.entries},
            "suites": suites,
            "tasks": tasks,
            "timing": {
                "score_seconds": round(time.perf_counter() - t_start, 3),
                "prepare_seconds": round(sum(p.seconds for p in self.prepared.values()), 3),
            },
        }

    def _score(self, lm: EvalLM, prep: _Prepared, progress: TaskProgress | None) -> tuple[dict, list[dict]]:
        data, fmt = prep.data, prep.data.format
        if fmt.kind == "gen":
            return generative_metrics(
                lm,
                self.tok,
                fmt,
                data.docs,
                batch_size=max(1, self.batch_size // 2),
                max_new_tokens=self.gen_max_tokens,
                progress=progress,
                shard=self.shard,
            )
        ll = loglikelihoods(
            lm,
            prep.requests,
            batch_size=self.batch_size,
            max_batch_tokens=self.max_batch_tokens,
            progress=progress,
            shard=self.shard,
        )
        records, i = [], 0
        for d in data.docs:
            n = len(d.continuations)
            rec = {
                "doc_id": d.doc_id,
                "gold": d.gold,
                "logprobs": ll[i : i + n].tolist(),
                "num_tokens": [len(prep.requests[i + j][1]) for j in range(n)],
                "num_chars": [len(c) for c in d.continuations],
                "num_bytes": [len(c.encode("utf-8")) for c in d.continuations],
            }
            i += n
            if d.uncond_contexts is not None:
                rec["uncond_logprobs"] = ll[i : i + n].tolist()
                i += n
            if d.subject:
                rec["subject"] = d.subject
            records.append(rec)
        score = (lambda rs: ranked_metrics(rs, fmt.norm)) if fmt.kind == "ranked" else bpb_metrics
        subjects = sorted({r.get("subject", "") for r in records})
        if len(subjects) > 1:
            per = {s: score([r for r in records if r.get("subject", "") == s]) for s in subjects}
            metrics = macro(per)
            metrics["micro"] = score(records)["primary"]
            metrics["subjects"] = {s: {"primary": m["primary"], "docs": m["docs"]} for s, m in per.items()}
        else:
            metrics = score(records)
        return metrics, records


def evaluate(model, tokenizer, tasks: str | Sequence[str], limit: int | None = None, **kwargs) -> dict:
    """Prepare ``tasks`` and score ``model`` once (see :class:`Evaluator` for the options)."""
    max_length = kwargs.pop("max_length", None)
    return Evaluator(tokenizer, tasks, limit=limit, **kwargs)(model, max_length=max_length)


def flat_metrics(results: dict, prefix: str = "eval/") -> dict[str, float]:
    """``{prefix + entry: primary}`` plus suite averages: what a training log records."""
    out = {f"{prefix}{k}": float(v) for k, v in results["summary"].items()}
    out.update({f"{prefix}{k}": float(v["average"]) for k, v in results["suites"].items()})
    return out


def format_table(results: dict) -> str:
    """A plain-text table: one line per task (and its MC/RC formats), then suite averages."""
    lines = [f"{'task':28s} {'metric':20s} {'value':>9s} {'docs':>7s}", "-" * 67]

    def line(name, m):
        docs = m.get("docs", "")
        lines.append(f"{name:28s} {m['primary_metric']:20s} {m['primary']:9.4f} {docs!s:>7s}")

    for entry, m in results["tasks"].items():
        line(entry, m)
        if m.get("primary_metric") == "mc_or_rc":
            line(f"  {entry}:mc", m["mc"])
            line(f"  {entry}:rc", m["rc"])
    for name, s in results["suites"].items():
        lines.append(f"{'suite ' + name:28s} {'average':20s} {s['average']:9.4f}")
    t = results["timing"]
    lines.append(f"(scored in {t['score_seconds']:.1f} s; tasks prepared in {t['prepare_seconds']:.1f} s)")
    return "\n".join(lines)


def write_json(results: dict, path: str | Path) -> Path:
    """Write atomically (temp file + rename), so a results file is never half written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2, allow_nan=True)
        f.write("\n")
    os.replace(tmp, path)
    return path


def check_writable(path: str | Path) -> Path:
    """Fail before scoring, not after it: ``path`` must be a file name in a folder this process can write
    (created if missing); a probe file is made there and removed."""
    path = Path(path)
    try:
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "Is a directory")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
        os.unlink(probe)
    except FileExistsError:  # mkdir: a file where the folder should be
        raise NotADirectoryError(
            errno.ENOTDIR, "cannot write the results here: Not a directory", str(path)
        ) from None
    except OSError as e:
        raise OSError(e.errno, f"cannot write the results here: {e.strerror}", str(path)) from None
    return path


def write_results(results: dict, out: Path) -> None:
    """Results already computed are never lost to an output error: they go to a temporary file instead."""
    try:
        write_json(results, out)
    except OSError as e:
        fd, fallback = tempfile.mkstemp(prefix="olmo2-eval-", suffix=".json")
        os.close(fd)
        write_json(results, fallback)
        raise OSError(
            f"{out}: could not write the results ({e.strerror or e}); they are in {fallback}"
        ) from e


def run_eval(
    model: str | Path,
    tasks: str,
    *,
    limit: int | None = None,
    out: str | Path | None = None,
    batch_size: int = 32,
    max_batch_tokens: int = 8192,
    device: str = "auto",
    dtype: str | None = None,
    backend: str = "auto",
    tokenizer: str | None = None,
    gen_max_tokens: int | None = None,
    keep_docs: bool = False,
    all_norms: bool = False,
    quiet: bool = False,
    local_data: Mapping[str, str | Path] | None = None,
    revision: str | None = None,
) -> dict:
    """Score ``model`` (a directory, or a Hugging Face Hub id at ``revision``) on ``tasks`` (task:format
    names or suites such as olmes_core; ``olmo2 eval --list`` shows them), print a table and optionally write JSON to ``out`` with per-task metrics, counts and
    settings. ``out`` is checked before anything is scored; if writing it still fails, the results
    go to a temporary file, which the error names. ``local_data`` maps ``agieval`` / ``mmlu_pro`` to
    their local copies.

    ``device`` auto: CUDA when present, else the CPU. Under ``torchrun`` the ranks (NCCL on CUDA, each
    on ``cuda:LOCAL_RANK``; Gloo on CPU) split the batches of every task and merge the results,
    which equal one process's; only rank 0 prints and writes ``out``."""
    env = init_distributed(device)
    try:
        out = check_writable(out) if out is not None and env.is_main else None
        lm, tok = load_eval_model(
            model,
            device=str(env.device),
            dtype=dtype,
            backend=backend,
            tokenizer=tokenizer,
            revision=revision,
        )
        ev = Evaluator(
            tok,
            tasks,
            limit=limit,
            batch_size=batch_size,
            max_batch_tokens=max_batch_tokens,
            gen_max_tokens=gen_max_tokens,
            keep_docs=keep_docs,
            all_norms=all_norms,
            verbose=not quiet and env.is_main,
            shard=Shard(env.rank, env.world_size),
            local_data=local_data,
        )
        results = ev(lm)
    finally:
        if env.owns_process_group:
            torch.distributed.destroy_process_group()
    results["model"] = str(model)
    if revision is not None:
        results["revision"] = revision
    if not quiet and env.is_main:
        print(format_table(results))
    if out is not None:
        write_results(results, out)
        if not quiet:
            print(f"results written to {out}")
    return results
