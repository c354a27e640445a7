"""Batched log-likelihood scoring and the OLMES metrics computed from it.

A request is (context tokens, continuation tokens), tokenised separately as OLMES does; its score is
``Σ log p(continuation | context)``. The work is arranged so little is computed twice:

* identical requests are scored once; all continuations of one context form one *unit*;
* single-token continuations (MC letters `` A``/`` B``…) of a context are read off one position;
* models that take packed rows (ours) get one row per context holding every continuation, each
  attending only to the context and itself (positions continue from the context for each);
* rows are clustered by shared token prefix (the few-shot examples are common to a whole task),
  sorted by length within a cluster and batched under a token budget; each batch's common prefix is
  run once and its keys/values reused by every row (and by the next batch when it shares it).

Contexts longer than the model are cut from the left, as ``ai2-olmo-eval`` does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from olmo2.eval.lm import EvalLM, Past
from olmo2.eval.shard import WHOLE, Shard

__all__ = ["bpb_metrics", "loglikelihoods", "mc_or_rc", "ranked_metrics"]

LN2 = math.log(2.0)
MIN_PREFIX = 8  # shorter shared prefixes are not worth a separate prefill
MAX_PACK = 512  # continuation tokens packed into one row (tree attention is quadratic in the row)


@dataclass
class _Row:
    """A context and the continuation branches (``continuation[:-1]``) packed after it."""

    key: bytes  # the context as big-endian uint32 bytes: sorts like the token tuple, slices compare fast
    branches: list[np.ndarray] = field(default_factory=list)
    reqs: list[tuple[int, int]] = field(default_factory=list)  # (request index, branch index or -1)

    @property
    def ctx_len(self) -> int:
        return len(self.key) // 4

    def tokens(self) -> np.ndarray:
        return np.concatenate([np.frombuffer(self.key, dtype=">u4"), *self.branches]).astype(np.int64)

    def __len__(self) -> int:
        return self.ctx_len + sum(len(b) for b in self.branches)


def _key(tokens) -> bytes:
    return np.asarray(tokens, dtype=">u4").tobytes()


def _lcp(a: bytes, b: bytes) -> int:
    """Common prefix length in tokens (binary search on memcmp-backed slice equality)."""
    lo, hi = 0, min(len(a), len(b)) // 4
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[: 4 * mid] == b[: 4 * mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _build_rows(uniq: list[tuple[bytes, np.ndarray]], packing: bool, max_pack: int) -> list[_Row]:
    units: dict[bytes, list[int]] = {}
    for i, (ctx, _) in enumerate(uniq):
        units.setdefault(ctx, []).append(i)
    rows = []
    for ctx, reqs in units.items():
        # Distinct non-empty branches; single-token continuations need only the context's last position.
        branches: dict[bytes, np.ndarray] = {}
        for i in reqs:
            b = uniq[i][1][:-1]
            if len(b):
                branches.setdefault(b.tobytes(), b)
        groups: list[list[bytes]] = [[]]
        used = 0
        for bk, b in branches.items():  # one row per branch, or up to max_pack branch tokens per row
            if groups[-1] and (not packing or used + len(b) > max_pack):
                groups.append([])
                used = 0
            groups[-1].append(bk)
            used += len(b)
        made = [_Row(ctx, [branches[bk] for bk in g]) for g in groups]
        where = {bk: (r, j) for r, g in zip(made, groups, strict=True) for j, bk in enumerate(g)}
        for i in reqs:
            b = uniq[i][1][:-1]
            r, j = where[b.tobytes()] if len(b) else (made[0], -1)
            r.reqs.append((i, j))
        rows += made
    return rows


def _batches(rows: list[_Row], batch_size: int, max_tokens: int, prefix: bool, min_share: int = 32):
    """Cluster rows sharing a long token prefix, sort each cluster by length, cut under the budget."""
    rows = sorted(rows, key=lambda r: r.key)
    clusters: list[list[_Row]] = []
    for r in rows:
        if clusters and _lcp(clusters[-1][-1].key, r.key) >= min_share:
            clusters[-1].append(r)
        else:
            clusters.append([r])
    for cl in clusters:
        share = min(_lcp(cl[0].key, cl[-1].key), min(r.ctx_len for r in cl) - 1)
        share = share if prefix and share >= MIN_PREFIX else 0
        cl.sort(key=lambda r: -len(r))
        batch: list[_Row] = []
        for r in cl:
            width = len(batch[0] if batch else r) - share
            if batch and (len(batch) >= batch_size or (len(batch) + 1) * width > max_tokens):
                yield batch
                batch = []
            batch.append(r)
        if batch:
            yield batch


def loglikelihoods(
    lm: EvalLM,
    requests: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    batch_size: int = 32,
    max_batch_tokens: int = 8192,
    progress: Callable[[int, int], None] | None = None,
    shard: Shard = WHOLE,
) -> np.ndarray:
    """``Σ log p(continuation | context)`` (float64) for each ``(context_ids, continuation_ids)``.

    Token sequences may be lists or integer arrays. ``progress(done, total)`` counts this rank's
    batches. With a ``shard``, each rank runs its own batches and every rank returns all scores; the
    prefix cache is still walked through every batch, so each batch starts from the keys/values one
    process would have.
    """
    L = lm.max_length
    index: dict[tuple[bytes, bytes], int] = {}
    back = np.empty(len(requests), dtype=np.int64)
    uniq: list[tuple[bytes, np.ndarray]] = []
    for i, (ctx, cont) in enumerate(requests):
        ctx, cont = np.asarray(ctx, dtype=np.int64), np.asarray(cont, dtype=np.int64)
        if not len(cont):
            raise ValueError(f"request {i} has an empty continuation")
        if len(cont) >= L:
            raise ValueError(f"request {i}: continuation of {len(cont)} tokens does not fit the model ({L})")
        if not len(ctx):  # nothing to condition on: condition on EOS, as lm-eval/oe-eval do
            if lm.eos_token_id is None:
                raise ValueError(f"request {i} has an empty context and the model has no EOS token")
            ctx = np.array([lm.eos_token_id], dtype=np.int64)
        if len(ctx) + len(cont) - 1 > L:  # keep the last L tokens of context + continuation[:-1]
            ctx = ctx[len(ctx) + len(cont) - 1 - L :]
        lo, hi = min(ctx.min(), cont.min()), max(ctx.max(), cont.max())
        if lo < 0 or hi >= lm.vocab_size:
            raise ValueError(
                f"token id {hi if hi >= lm.vocab_size else lo} is outside the model's vocabulary "
                f"({lm.vocab_size}): the tokenizer does not match the model"
            )
        k = (_key(ctx), cont.tobytes())
        j = index.setdefault(k, len(uniq))
        if j == len(uniq):
            uniq.append((k[0], cont))
        back[i] = j

    rows = _build_rows(uniq, lm.supports_packing, max_pack=MAX_PACK)
    batches = list(_batches(rows, batch_size, max_batch_tokens, lm.supports_prefix))
    mine = sum(shard.owns(k) for k in range(len(batches)))
    last = max((k for k in range(len(batches)) if shard.owns(k)), default=-1)
    scores: dict[int, float] = {}
    past: Past | None = None
    done = 0
    for k, batch in enumerate(batches):
        if k > last:
            break  # the rest belongs to other ranks
        P = 0
        if lm.supports_prefix:
            lo, hi = min(r.key for r in batch), max(r.key for r in batch)
            P = min(_lcp(lo, hi), min(r.ctx_len for r in batch) - 1)
        use = None
        if P >= MIN_PREFIX:
            past = use = _prefix(lm, past, batch[0].key[: 4 * P])
        else:
            P = 0
        if not shard.owns(k):
            continue
        idx, val = _run_batch(lm, batch, uniq, P, use)
        reqs, slot = np.unique(idx, return_inverse=True)
        totals = np.zeros(len(reqs), dtype=np.float64)
        np.add.at(totals, slot, val)  # a request's tokens all lie in this batch
        scores.update(zip(reqs.tolist(), totals.tolist(), strict=True))
        done += 1
        if progress is not None:
            progress(done, mine)
    merged = shard.merge(scores)
    return np.array([merged[i] for i in range(len(uniq))], dtype=np.float64)[back]


def _prefix(lm: EvalLM, past: Past | None, key: bytes) -> Past:
    """The keys/values of the prefix ``key``, reusing as much of the previous prefix as matches."""
    tokens = np.frombuffer(key, dtype=">u4").tolist()
    if past is not None:
        c = _lcp(_key(past.tokens), key)
        if c == len(tokens) == past.length:
            return past
        if c >= MIN_PREFIX:
            base = past.crop(c)
            return base if c == len(tokens) else lm.prefill(tokens[c:], base)
    return lm.prefill(tokens)


def _run_batch(lm: EvalLM, rows: list[_Row], uniq, P: int, past: Past | None):
    B = len(rows)
    T = max(len(r) for r in rows) - P
    ids = np.zeros((B, T), dtype=np.int64)
    packed = any(len(r.branches) > 1 for r in rows)
    seg = np.full((B, T), -1, dtype=np.int64)
    pos_ids = np.zeros((B, T), dtype=np.int64)
    sel_row, sel_pos, sel_tok, sel_req = [], [], [], []
    for bi, r in enumerate(rows):
        toks = r.tokens()[P:]
        ids[bi, : len(toks)] = toks
        c = r.ctx_len - P  # context tokens in this row (>= 1)
        starts = np.cumsum([c] + [len(b) for b in r.branches])
        seg[bi, :c] = 0
        pos_ids[bi, :c] = np.arange(c)
        for j, b in enumerate(r.branches):
            seg[bi, starts[j] : starts[j + 1]] = j + 1
            pos_ids[bi, starts[j] : starts[j + 1]] = np.arange(c, c + len(b))
        for ri, j in r.reqs:
            cont = uniq[ri][1]
            n = len(cont)
            where = np.concatenate(([c - 1], np.arange(starts[j], starts[j] + n - 1) if j >= 0 else []))
            sel_row.append(np.full(n, bi))
            sel_pos.append(where)
            sel_tok.append(cont)
            sel_req.append(np.full(n, ri))
    dev = lm.device
    positions = attn = None
    if packed:
        s = torch.from_numpy(seg)
        ar = torch.arange(T)
        causal = ar[None, :] <= ar[:, None]
        same = (s[:, None, :] == 0) | (s[:, None, :] == s[:, :, None])
        attn = (causal & same).to(dev)
        positions = torch.from_numpy(pos_ids).to(dev)
    as_t = lambda parts: torch.from_numpy(np.concatenate(parts).astype(np.int64)).to(dev)  # noqa: E731
    lp = lm.token_logprobs(
        torch.from_numpy(ids).to(dev),
        as_t(sel_row),
        as_t(sel_pos),
        as_t(sel_tok),
        past=past,
        positions=positions,
        attn=attn,
    )
    return np.concatenate(sel_req), lp.cpu().numpy()


# -------------------------------------------------------------------------------------------- metrics


def _argmax(x: Sequence[float]) -> int:
    """First index of the maximum (ties go to the earlier choice, as ``torch.argmax`` does)."""
    return int(np.argmax(np.asarray(x, dtype=np.float64)))


def ranked_metrics(docs: list[dict], norm: str) -> dict:
    """Accuracy under each OLMES normalisation from per-doc records.

    Each record has ``gold``, ``logprobs``, ``num_tokens``, ``num_chars``, ``num_bytes`` (per choice)
    and optionally ``uncond_logprobs``. Sets each record's ``pred``. ``norm`` picks ``primary``.
    """
    names = {"none": "acc_raw", "token": "acc_per_token", "char": "acc_per_char", "pmi": "acc_uncond"}
    correct = {k: 0 for k in names}
    has_uncond = all(d.get("uncond_logprobs") is not None for d in docs) and bool(docs)
    bits = 0.0
    for d in docs:
        ll = np.asarray(d["logprobs"], dtype=np.float64)
        scores = {
            "none": ll,
            "token": ll / np.asarray(d["num_tokens"], dtype=np.float64),
            "char": ll / np.asarray(d["num_chars"], dtype=np.float64),
        }
        if has_uncond:
            scores["pmi"] = ll - np.asarray(d["uncond_logprobs"], dtype=np.float64)
        d["pred"] = {k: _argmax(v) for k, v in scores.items()}
        for k, p in d["pred"].items():
            correct[k] += int(p == d["gold"])
        bits += -ll[d["gold"]] / LN2 / d["num_bytes"][d["gold"]]
    n = len(docs)
    if norm == "pmi" and not has_uncond:
        raise ValueError("PMI normalisation needs unconditional requests, which this task lacks")
    out = {"docs": n}
    for k, name in names.items():
        if k != "pmi" or has_uncond:
            out[name] = correct[k] / n if n else float("nan")
            out[f"{name}_correct"] = correct[k]
    out["bits_per_byte_gold"] = bits / n if n else float("nan")
    out["primary_metric"] = names[norm]
    out["primary"] = out[names[norm]]
    return out


def bpb_metrics(docs: list[dict]) -> dict:
    """Bits per UTF-8 byte of the gold continuation: mean over docs, and over all bytes (corpus)."""
    per = [-d["logprobs"][0] / LN2 / d["num_bytes"][0] for d in docs]
    for d, v in zip(docs, per, strict=True):
        d["bits_per_byte"] = v
    total_bits = sum(-d["logprobs"][0] / LN2 for d in docs)
    total_bytes = sum(d["num_bytes"][0] for d in docs)
    mean = float(np.mean(per)) if per else float("nan")
    return {
        "docs": len(docs),
        "bits_per_byte": mean,
        "bits_per_byte_corpus": total_bits / total_bytes if total_bytes else float("nan"),
        "primary_metric": "bits_per_byte",
        "primary": mean,
    }


def macro(per_subject: dict[str, dict]) -> dict:
    """Unweighted mean over subjects of every numeric metric (MMLU's headline number)."""
    first = next(iter(per_subject.values()))
    keys = [k for k, v in first.items() if isinstance(v, float) and not k.endswith("_correct")]
    out = {k: float(np.mean([m[k] for m in per_subject.values()])) for k in keys}
    out["docs"] = sum(m["docs"] for m in per_subject.values())
    out["primary_metric"] = first["primary_metric"]
    out["primary"] = out.get(first["primary_metric"], out.get("primary"))
    return out


def mc_or_rc(mc: dict, rc: dict) -> dict:
    """OLMES: a task run in both formats reports the better of the two primaries."""
    best = "mc" if mc["primary"] >= rc["primary"] else "rc"
    return {"primary_metric": "mc_or_rc", "primary": max(mc["primary"], rc["primary"]), "chosen": best}
