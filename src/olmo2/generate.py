"""Autoregressive generation with a KV cache: greedy, temperature, top-k and top-p sampling.

The prompt is prefilled in one forward pass, then one token per step is decoded against the cache.
Batched prompts are left-padded, and each row's positions count from its first real token (as HF
``generate`` does with an attention mask), so a padded batch yields what each prompt yields alone.
Sampling follows HF's order (temperature -> top-k -> top-p -> multinomial) with a seeded
``torch.Generator``, so a seed reproduces its samples.
"""

from __future__ import annotations

import math
import sys
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from olmo2.model.checkpoint import load_model, parse_dtype, read_config, resolve_model_dir
from olmo2.model.device import resolve_device
from olmo2.model.transformer import KVCache, Olmo2
from olmo2.tokenizer import load_tokenizer

__all__ = [
    "GenerationConfig",
    "filter_logits",
    "fit_prompts",
    "generate",
    "generate_from_checkpoint",
    "generate_text",
]


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass
class GenerationConfig:
    """How to generate. ``temperature=0`` is greedy (``top_k``/``top_p`` are then ignored).

    ``top_k`` 0/None and ``top_p`` 1.0 switch those filters off. ``stop_token_ids`` end a row like EOS
    does; EOS (passed to ``generate``) stops a row only if ``stop_on_eos``. ``check_every`` is how many
    steps pass between checks whether every row has stopped: each check waits for the device, so the
    default (None) checks every step on CPU, where it is free, and every 8 steps on accelerators.
    """

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float = 1.0
    seed: int | None = None
    stop_on_eos: bool = True
    stop_token_ids: Sequence[int] = field(default_factory=tuple)
    check_every: int | None = None

    def __post_init__(self) -> None:
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if (
            isinstance(self.temperature, bool)
            or not isinstance(self.temperature, (int, float))
            or not math.isfinite(self.temperature)
            or self.temperature < 0
        ):
            raise ValueError(
                f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature!r}"
            )
        if self.top_k is not None and (not _is_int(self.top_k) or self.top_k < 0):
            raise ValueError(f"top_k must be None or an integer >= 0 (0/None = off), got {self.top_k!r}")
        if (
            isinstance(self.top_p, bool)
            or not isinstance(self.top_p, (int, float))
            or not 0.0 < self.top_p <= 1.0
        ):
            raise ValueError(f"top_p must be in (0, 1] (1.0 = off), got {self.top_p!r}")
        if self.seed is not None and not _is_int(self.seed):
            raise ValueError(f"seed must be None or an integer, got {self.seed!r}")
        if not isinstance(self.stop_on_eos, bool):
            raise ValueError(f"stop_on_eos must be a bool, got {self.stop_on_eos!r}")
        if isinstance(self.stop_token_ids, (str, bytes)) or not all(
            _is_int(t) and t >= 0 for t in self.stop_token_ids
        ):
            raise ValueError(f"stop_token_ids must be non-negative integers, got {self.stop_token_ids!r}")
        self.stop_token_ids = tuple(self.stop_token_ids)
        if self.check_every is not None and (not _is_int(self.check_every) or self.check_every < 1):
            raise ValueError(f"check_every must be None or a positive integer, got {self.check_every!r}")

    @property
    def do_sample(self) -> bool:
        return self.temperature > 0


def filter_logits(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float = 1.0
) -> torch.Tensor:
    """Scale by temperature, then keep the top-k, then the top-p nucleus; removed entries become -inf.

    Same semantics as HF's ``TemperatureLogitsWarper``/``TopKLogitsWarper``/``TopPLogitsWarper`` (ties
    with the k-th value are kept; top-p keeps at least one token), so sampling matches HF's distribution.
    """
    if temperature != 1.0:
        logits = logits / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=False)
        remove = sorted_logits.softmax(dim=-1).cumsum(dim=-1) <= 1 - top_p
        remove[..., -1:] = False
        logits = logits.masked_fill(remove.scatter(-1, order, remove), -math.inf)
    return logits


# id(weight) -> (weakref to weight, (data_ptr, version, dtype), contiguous transpose); see _lm_head.
_HEAD_T: dict[int, tuple] = {}


def _lm_head(model: Olmo2, batch: int, steps: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The LM head for [B, d] hidden states, in the matmul layout that is fastest for decoding.

    On CPU (MKL), ``h @ W.T`` with W [V, d] row-major is a slow GEMV/GEMM path: measured 2-4x slower
    than ``h @ Wt`` with a contiguous transposed copy Wt [d, V] at batch 1, and 2x slower than
    ``(W @ h.T).T`` at batch 2-16 (tiny preset, V = 100352). The head dominates a decode step for
    small models, so batch 1 keeps a transposed copy of the weight (built once, reused while the
    weight is unchanged, freed with it). Results equal ``lm_head(h)`` up to fp32 summation order.
    Elsewhere (CUDA) the plain ``nn.Linear`` is used.
    """
    w = model.lm_head.weight
    if w.device.type != "cpu":
        return model.lm_head
    if batch > 1 or (steps < 8 and id(w) not in _HEAD_T):
        return lambda h: (w @ h.T).T
    key = (w.data_ptr(), w._version, w.dtype)
    entry = _HEAD_T.get(id(w))
    if entry is None or entry[0]() is not w or entry[1] != key:
        if entry is None or entry[0]() is not w:
            weakref.finalize(w, _HEAD_T.pop, id(w), None)
        entry = (weakref.ref(w), key, w.detach().t().contiguous())
        _HEAD_T[id(w)] = entry
    wt = entry[2]
    return lambda h: h @ wt


def _check_prompts(prompts, vocab: int) -> None:
    if isinstance(prompts, (str, bytes)) or not prompts:
        raise ValueError("prompts must be a non-empty list of token-id lists")
    for i, p in enumerate(prompts):
        if isinstance(p, (str, bytes)) or len(p) == 0:
            raise ValueError(f"prompt {i} must be a non-empty list of token ids")
        if not all(_is_int(t) and 0 <= t < vocab for t in p):
            raise ValueError(f"prompt {i} has token ids outside [0, {vocab})")


def generate(
    model: Olmo2,
    prompts: list[list[int]],
    config: GenerationConfig | None = None,
    *,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    row_seeds: Sequence[int] | None = None,
    until: Callable[[int, list[int]], bool] | None = None,
) -> list[list[int]]:
    """The new tokens for each prompt (a stop token is included if generated; nothing after it).

    ``pad_token_id`` only fills the left padding, which is masked, so its value never matters;
    it defaults to ``eos_token_id`` or 0. Runs on the device of the model's parameters.
    ``row_seeds`` (sampling only) gives each row its own random stream: a row's sample then depends
    on its seed alone, not on the other rows of the batch, so rollouts split over ranks or batched
    differently draw the same tokens (inverse-CDF sampling with a counter-based uniform per row and
    step; ``config.seed`` is unused).
    ``until(row, new_tokens)`` ends a row early when it returns True (a stop *text*, say): it is asked
    at every check (``config.check_every``) about each running row, and rows it ends are dropped
    from the batch, so the rest decode without them; an ended row keeps every token it generated.
    """
    return _generate(model, prompts, config, eos_token_id, pad_token_id, row_seeds=row_seeds, until=until)[0]


_MASK64 = (1 << 64) - 1


def _signed(c: int) -> int:
    return c - (1 << 64) if c >= 1 << 63 else c


_GOLDEN, _MIX1, _MIX2 = (_signed(c) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))


def _shift_right(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 (torch shifts arithmetically)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def _splitmix64(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finaliser on int64 tensors (wrapping arithmetic): a well-mixed 64-bit hash."""
    x = x + _GOLDEN
    x = (x ^ _shift_right(x, 30)) * _MIX1
    x = (x ^ _shift_right(x, 27)) * _MIX2
    return x ^ _shift_right(x, 31)


def _row_uniforms(row_seeds: torch.Tensor, step: int) -> torch.Tensor:
    """One U(0, 1) number per row (float64), a pure function of (row seed, step)."""
    bits = _splitmix64(_splitmix64(row_seeds) + step)
    return (_shift_right(bits, 11).double() + 0.5) * 2.0**-53


def _sample_rows(scores: torch.Tensor, row_seeds: torch.Tensor, step: int) -> torch.Tensor:
    """Inverse-CDF sampling from softmax(``scores``) [B, V], each row with its own uniform: a row's
    token depends on its scores and seed only, never on the other rows of the batch."""
    cdf = scores.double().softmax(dim=-1).cumsum(dim=-1)
    u = _row_uniforms(row_seeds, step) * cdf[:, -1]
    return torch.searchsorted(cdf, u[:, None], right=True).squeeze(1).clamp(max=scores.shape[-1] - 1)


@torch.inference_mode()
def _generate(
    model: Olmo2,
    prompts: list[list[int]],
    config: GenerationConfig | None,
    eos_token_id: int | None,
    pad_token_id: int | None,
    keep_logits: bool = False,
    row_seeds: Sequence[int] | None = None,
    until: Callable[[int, list[int]], bool] | None = None,
) -> tuple[list[list[int]], torch.Tensor | None]:
    """``generate``, optionally also returning each step's fp32 logits [B, steps, V] (for tests)."""
    config = config or GenerationConfig()
    vocab = model.config.embedding_size
    _check_prompts(prompts, vocab)
    for name, tid in (("eos_token_id", eos_token_id), ("pad_token_id", pad_token_id)):
        if tid is not None and not (_is_int(tid) and 0 <= tid < vocab):
            raise ValueError(f"{name} must be None or a token id in [0, {vocab}), got {tid!r}")
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    B, N = len(prompts), config.max_new_tokens
    lengths = [len(p) for p in prompts]
    P = max(lengths)
    pad = pad_token_id if pad_token_id is not None else (eos_token_id if eos_token_id is not None else 0)

    stop_ids = set(config.stop_token_ids)
    if config.stop_on_eos and eos_token_id is not None:
        stop_ids.add(eos_token_id)
    stop = torch.tensor(sorted(stop_ids), dtype=torch.long, device=device) if stop_ids else None
    check_every = config.check_every or (1 if device.type == "cpu" else 8)
    gen = None
    if row_seeds is not None:
        if len(row_seeds) != len(prompts):
            raise ValueError(f"row_seeds has {len(row_seeds)} seeds for {len(prompts)} prompts")
        seeds = (
            torch.tensor([s & _MASK64 for s in row_seeds], dtype=torch.uint64).view(torch.int64).to(device)
        )
    elif config.do_sample and config.seed is not None:
        gen = torch.Generator(device=device)
        gen.manual_seed(config.seed)

    ids = torch.tensor([[pad] * (P - len(p)) + list(p) for p in prompts], dtype=torch.long)
    ids = ids.to(device, non_blocking=True)
    cache = KVCache(model.config, B, P + N - 1, device, dtype)  # the last token is never fed back

    if min(lengths) != P:
        # Left padding: mask padded keys (a padded query sees itself only, so no row is all-masked and
        # no NaN reaches the cache); real tokens' positions start at 0 per row.
        pad_len = torch.tensor([P - n for n in lengths], device=device)
        ar = torch.arange(P + N, device=device)
        key_valid = ar[None, :] >= pad_len[:, None]  # [B, P + N]; generated keys are always valid
        causal = torch.ones(P, P, dtype=torch.bool, device=device).tril()
        eye = torch.eye(P, dtype=torch.bool, device=device)
        prefill_mask = ((causal & key_valid[:, None, :P]) | eye)[:, None]  # [B, 1, P, P]
        prefill_pos = (ar[None, :P] - pad_len[:, None]).clamp(min=0)
        step_pos = ar[None, P:] - pad_len[:, None]  # [B, N]: column s is the position of step s's input
        step_mask = key_valid[:, None, None, :]  # sliced to the cache length each step (a view, no copy)
    else:
        prefill_mask = prefill_pos = step_pos = None
        step_mask = torch.ones(B, 1, 1, P + N, dtype=torch.bool, device=device)

    head = _lm_head(model, B, N)
    if prefill_mask is not None and device.type == "cpu":
        last = _prefill_rows(model, prompts, cache, P)
    else:
        last = model.hidden_states(ids, positions=prefill_pos, mask=prefill_mask, cache=cache)[:, -1]
    logits = head(last).float()
    out = torch.empty(B, N, dtype=torch.long, device=device)
    all_logits = torch.empty(B, N, logits.shape[-1], device=device) if keep_logits else None
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    alive = torch.arange(B, device=device)  # the original index of each row still in the batch
    ended: list[int | None] = [None] * B  # tokens kept by each row that ``until`` ended
    steps = N
    for step in range(N):
        if all_logits is not None:
            all_logits[alive, step] = logits
        if config.do_sample:
            scores = filter_logits(logits, config.temperature, config.top_k, config.top_p)
            if row_seeds is not None:
                tok = _sample_rows(scores, seeds, step)
            else:
                tok = torch.multinomial(scores.softmax(dim=-1), 1, generator=gen).squeeze(1)
        else:
            tok = logits.argmax(dim=-1)
        out[alive, step] = tok
        if step == N - 1:
            break
        if stop is not None:
            finished |= torch.isin(tok, stop)
        if until is not None and (step + 1) % check_every == 0:
            rows, toks = alive.tolist(), out[alive, : step + 1].tolist()
            finished |= torch.tensor([until(r, t) for r, t in zip(rows, toks, strict=True)], device=device)
            if bool(finished.any()):
                for r in alive[finished].tolist():
                    ended[r] = step + 1
                keep = (~finished).nonzero().squeeze(1)
                if len(keep) == 0:
                    break
                alive, tok, finished = alive[keep], tok[keep], finished[keep]
                cache.reorder(keep)
                step_mask = step_mask[keep]
                if step_pos is not None:
                    step_pos = step_pos[keep]
                if row_seeds is not None:
                    seeds = seeds[keep]
        elif stop is not None and (step + 1) % check_every == 0 and bool(finished.all()):
            steps = step + 1
            break
        end = P + step + 1
        pos = step_pos[:, step : step + 1] if step_pos is not None else None
        hidden = model.hidden_states(tok[:, None], positions=pos, mask=step_mask[..., :end], cache=cache)
        logits = head(hidden[:, -1]).float()

    result = []
    for r, row in enumerate(out[:, :steps].tolist()):
        row = row[: ended[r]]
        for i, t in enumerate(row):
            if t in stop_ids:
                row = row[: i + 1]
                break
        result.append(row)
    return result, (all_logits[:, :steps] if all_logits is not None else None)


def _prefill_rows(model: Olmo2, prompts: list[list[int]], cache: KVCache, P: int) -> torch.Tensor:
    """Prefill a ragged batch one prompt at a time into its left-padded slots of ``cache``; the last
    hidden state of each row [B, d].

    On CPU a padded batch prefill takes the masked attention path over every padded row: measured
    1.3-1.6x slower than the prompts one by one with plain causal attention (16 GSM8K 8-shot prompts
    of 691-773 tokens, small preset). Padded slots are zeroed (they are masked, but must be finite).
    """
    device, dtype = cache.keys[0].device, cache.keys[0].dtype
    last = []
    for i, p in enumerate(prompts):
        row = KVCache(model.config, 1, len(p), device, dtype)
        last.append(model.hidden_states(torch.tensor([p], device=device), cache=row)[:, -1])
        for big, small in ((cache.keys, row.keys), (cache.values, row.values)):
            for layer, kv in enumerate(small):
                big[layer][i, :, : P - len(p)] = 0
                big[layer][i, :, P - len(p) : P] = kv[0]
    cache.length = P
    return torch.cat(last)


def _encode(tokenizer, text: str) -> list[int]:
    ids = tokenizer.encode(text)
    return list(getattr(ids, "ids", ids))  # a raw ``tokenizers.Tokenizer`` returns an Encoding


def _prompt_room(max_seq_len: int, max_new_tokens: int) -> int:
    if max_new_tokens >= max_seq_len:
        raise ValueError(
            f"max_new_tokens {max_new_tokens} leaves no room for a prompt: the model's max_seq_len is "
            f"{max_seq_len}, so at most {max_seq_len - 1} new tokens"
        )
    return max_seq_len - max_new_tokens


def fit_prompts(prompts: list[list[int]], max_seq_len: int, max_new_tokens: int) -> list[list[int]]:
    """Prompt plus continuation within the model's length: ``max_new_tokens`` must be below
    ``max_seq_len``, and a prompt keeps its last ``max_seq_len - max_new_tokens`` tokens (cut from the
    left, as eval cuts contexts; said on stderr). The KV cache is then never longer than the model."""
    room = _prompt_room(max_seq_len, max_new_tokens)
    for i, p in enumerate(prompts):
        if len(p) > room:
            print(
                f"olmo2 generate: prompt {i} has {len(p)} tokens; keeping its last {room} "
                f"(max_seq_len {max_seq_len} - max_new_tokens {max_new_tokens})",
                file=sys.stderr,
                flush=True,
            )
    return [p[-room:] for p in prompts]


def generate_text(
    model: Olmo2, tokenizer, prompts: list[str], config: GenerationConfig | None = None
) -> list[str]:
    """Text in, text out, for any tokenizer with ``encode``/``decode`` (and optionally
    ``eos_token_id``/``pad_token_id``). Prompts are fitted to the model's length (``fit_prompts``); a
    final stop token is dropped before decoding."""
    if isinstance(prompts, str):
        raise ValueError("prompts must be a list of strings, not a single string")
    config = config or GenerationConfig()
    eos = getattr(tokenizer, "eos_token_id", None)
    pad = getattr(tokenizer, "pad_token_id", None)
    ids = fit_prompts(
        [_encode(tokenizer, p) for p in prompts], model.config.max_seq_len, config.max_new_tokens
    )
    outs = generate(model, ids, config, eos_token_id=eos, pad_token_id=pad)
    stop_ids = set(config.stop_token_ids) | ({eos} if config.stop_on_eos and eos is not None else set())
    return [tokenizer.decode(o[:-1] if o and o[-1] in stop_ids else o) for o in outs]


def generate_from_checkpoint(
    checkpoint: str | Path,
    prompts: list[str],
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    tokenizer: str | Path | None = None,
    device: str | None = None,
    dtype: str | None = None,
    echo: bool = False,
    revision: str | None = None,
) -> list[str]:
    """Each prompt's continuation by the model in ``checkpoint`` (a directory, or a Hub id at
    ``revision``), after the prompt itself with ``echo``, on ``device`` (default: cuda if available),
    with ``tokenizer`` (default: the checkpoint's tokenizer.json, else dolma2)."""
    device = resolve_device(device)
    model_dir = resolve_model_dir(checkpoint, revision)
    _prompt_room(read_config(model_dir).max_seq_len, max_new_tokens)  # before loading the weights
    model = load_model(model_dir, device=device, dtype=parse_dtype(dtype))
    own_tokenizer = model_dir / "tokenizer.json"
    if tokenizer is None and own_tokenizer.is_file():  # the model's own: no pinned hash to match
        tok = load_tokenizer(own_tokenizer, verify=False)
    else:
        tok = load_tokenizer(tokenizer)
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed
    )
    texts = generate_text(model, tok, prompts, config)
    return [prompt + text if echo else text for prompt, text in zip(prompts, texts, strict=True)]
