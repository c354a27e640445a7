"""The OLMo 2 transformer (spec §1), small enough to hold in your head.

    h   = x + RMSNorm(Attn(x))          # reordered norm: the sublayer *output* is normalised
    out = h + RMSNorm(MLP(h))
    Attn: q = RMSNorm(W_q x), k = RMSNorm(W_k x) over the full projections, then rotate-half RoPE (fp32)
    MLP:  W_down(silu(W_gate h) * W_up h)

Parameter names follow Hugging Face's ``Olmo2ForCausalLM`` exactly, so a state dict of this model is
a state dict of that one: the project's model checkpoint is an HF directory (see ``model/checkpoint.py``).
The model knows nothing of data, distribution or checkpoints. Top down: RMSNorm, RoPE, attention, MLP,
block, model. The numerics with hand-written backward passes (RMSNorm, RoPE, the SwiGLU down-projection)
are in ``model/ops.py``, the chunked LM loss in ``model/loss.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from olmo2.model.config import ModelConfig
from olmo2.model.loss import DEFAULT_CHUNK_SIZE, IGNORE_INDEX, lm_loss
from olmo2.model.ops import apply_rotary, rms_norm, swiglu_down


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x²) + eps) · weight``: a learnable weight, no bias, computed in fp32 (as HF does)
    and cast back. Used as QK-norm, after each sublayer and as the final norm."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class RotaryEmbedding(nn.Module):
    """Rotate-half RoPE's cos/sin tables, in fp32; ``ops.apply_rotary`` rotates q and k with them (in fp32)."""

    def __init__(self, head_dim: int, theta: float, max_seq_len: int):
        super().__init__()
        self.head_dim, self.theta = head_dim, theta
        self.register_buffer("cos", torch.empty(0), persistent=False)
        self.register_buffer("sin", torch.empty(0), persistent=False)
        self.build(max_seq_len)

    def build(self, length: int, device: torch.device | None = None) -> None:
        """(Re)compute the tables for positions 0..length-1. The buffers are not in the state dict, so a
        model made on the meta device calls this once its weights are real (init or load)."""
        device = device or self.cos.device
        if device.type == "meta":  # shapes only
            self.cos = torch.empty(length, self.head_dim, device=device)
            self.sin = torch.empty(length, self.head_dim, device=device)
            return
        inv_freq = 1.0 / (
            self.theta
            ** (torch.arange(0, self.head_dim, 2, dtype=torch.float, device=device) / self.head_dim)
        )
        freqs = torch.outer(torch.arange(length, dtype=torch.float, device=device), inv_freq)
        angles = torch.cat((freqs, freqs), dim=-1)
        self.cos, self.sin = angles.cos(), angles.sin()

    def tables(self, positions: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin for ``positions`` ([T] or [B, T], all < ``length``), shaped to broadcast over
        [B, heads, T, head_dim]. The table grows on demand and stays fp32 even if the model is cast."""
        if length > self.cos.shape[0] or self.cos.device != positions.device or self.cos.dtype != torch.float:
            self.build(max(length, self.cos.shape[0]), positions.device)
        cos, sin = self.cos[positions], self.sin[positions]
        if positions.dim() == 2:  # per-row positions (left-padded batches)
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        return cos, sin


class KVCache:
    """Preallocated keys/values for incremental decoding: one [B, n_kv, max_len, head_dim] pair per layer."""

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, device, dtype):
        shape = (batch_size, cfg.n_kv_heads, max_len, cfg.head_dim)
        self.keys = [torch.empty(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.values = [torch.empty(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.length = 0  # tokens already stored
        self.max_len = max_len

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``layer``'s new keys/values after the ``length`` already held and return all of them.
        ``length`` itself advances once all layers have run (``Olmo2.hidden_states``)."""
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} tokens > capacity {self.max_len}")
        self.keys[layer][:, :, self.length : end] = k
        self.values[layer][:, :, self.length : end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def reorder(self, keep: torch.Tensor) -> None:
        """Keep only batch rows ``keep`` (finished sequences are dropped during generation)."""
        self.keys = [k[keep] for k in self.keys]
        self.values = [v[keep] for v in self.values]


class Attention(nn.Module):
    """Causal self-attention with QK-norm and RoPE; grouped-query when ``n_kv_heads < n_heads``."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=False)
        # QK-norm over the full projections, not per head (spec §1.3).
        self.q_norm = RMSNorm(cfg.n_heads * cfg.head_dim, cfg.norm_eps)
        self.k_norm = RMSNorm(cfg.n_kv_heads * cfg.head_dim, cfg.norm_eps)

    def forward(self, x, cos, sin, mask: torch.Tensor | None = None, cache: KVCache | None = None):
        B, T, _ = x.shape
        q = self.q_norm(self.q_proj(x)).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_norm(self.k_proj(x)).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)
        if self.n_kv_heads != self.n_heads:  # GQA: each KV head serves n_heads / n_kv_heads query heads
            rep = self.n_heads // self.n_kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and T > 1)
        return self.o_proj(o.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    """SwiGLU: ``down(silu(gate(x)) · up(x))``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.mlp_hidden, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.mlp_hidden, bias=False)
        self.down_proj = nn.Linear(cfg.mlp_hidden, cfg.d_model, bias=False)

    def forward(self, x):
        return swiglu_down(self.gate_proj(x), self.up_proj(x), self.down_proj.weight)


class Block(nn.Module):
    """One layer. OLMo 2's reordered norm: each sublayer's *output* is normalised before the residual
    add, and the residual stream itself is never normalised inside a block."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.self_attn = Attention(cfg, layer_idx)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)
        self.post_feedforward_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)

    def forward(self, x, cos, sin, mask=None, cache=None):
        h = x + self.post_attention_layernorm(self.self_attn(x, cos, sin, mask, cache))
        return h + self.post_feedforward_layernorm(self.mlp(h))


class Embedding(nn.Embedding):
    """``nn.Embedding`` that leaves a weight on the meta device uninitialised: there are no values to
    draw there, yet the first ``normal_`` on meta costs a second or more of lazy torch imports, and
    every ``load_model``, shape check and parameter count builds the model on meta."""

    def reset_parameters(self) -> None:
        if not self.weight.is_meta:
            super().reset_parameters()


class Backbone(nn.Module):
    """Embedding, blocks and final norm (HF's ``Olmo2Model``)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = Embedding(cfg.embedding_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)


class Olmo2(nn.Module):
    """OLMo 2 causal LM. ``forward(input_ids) -> logits`` of shape [B, T, embedding_size]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.embedding_size, bias=False)  # untied
        self.rotary = RotaryEmbedding(cfg.head_dim, cfg.rope_theta, cfg.max_seq_len)
        self.activation_checkpointing = False  # recompute each block's activations in backward

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Final-norm hidden states [B, T, d_model].

        ``positions``: [T] or [B, T] (default 0..T-1, after what ``cache`` holds). ``mask``: boolean
        [B, 1, T, T_total] with True where attention is allowed; None means plain causal attention.
        """
        T = input_ids.shape[1]
        start = cache.length if cache is not None else 0
        if positions is None:
            positions = torch.arange(start, start + T, device=input_ids.device)
        if cache is not None and mask is None and start > 0:
            raise ValueError("decoding with a non-empty KV cache needs an explicit attention mask")
        cos, sin = self.rotary.tables(positions, start + T)
        x = self.model.embed_tokens(input_ids)
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for layer in self.model.layers:
            if recompute:
                x = checkpoint(layer, x, cos, sin, mask, cache, use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask, cache)
        if cache is not None:
            cache.length += T
        return self.model.norm(x)

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        z_loss_multiplier: float = 0.0,
        loss_normalizer: float | torch.Tensor | None = None,
        loss_chunk_size: int | None = DEFAULT_CHUNK_SIZE,
        targets_only: bool = False,
        target_logps: bool = False,
        temperature: float = 1.0,
        **kwargs,
    ):
        """One pass through the blocks, then one of three heads:

        - no ``labels``: the logits [B, T, embedding_size] (generation, evaluation);
        - ``labels`` (the next token at each position, -100 = ignore): the loss as a ``LossOutput``,
          computed from the hidden states in chunks so the full fp32 logits never exist
          (``model/loss.py``); ``targets_only`` sends only labelled positions to the LM head (SFT:
          prompts cost no vocabulary-sized matmul);
        - ``target_logps``: the log-probs [B, T] of the labels under softmax(logits / ``temperature``),
          0 where unlabelled, and the mask of labelled positions (DPO, RLVR).

        ``kwargs`` go to ``hidden_states``. The losses live here (as in OLMo-core's LM head) so that
        FSDP's forward hooks cover the LM head."""
        hidden = self.hidden_states(input_ids, **kwargs)
        if labels is None:
            return self.lm_head(hidden)
        if target_logps or targets_only:
            labelled = labels != IGNORE_INDEX
            hidden, targets = hidden[labelled], labels[labelled]
        if target_logps:
            logits = self.lm_head(hidden).float()
            if temperature != 1.0:
                logits = logits / temperature
            logps = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)
            out = torch.zeros(labels.shape, dtype=logps.dtype, device=logps.device)
            out[labelled] = logps
            return out, labelled
        return lm_loss(
            hidden,
            self.lm_head.weight,
            targets if targets_only else labels,
            z_loss_multiplier=z_loss_multiplier,
            chunk_size=loss_chunk_size,
            normalizer=loss_normalizer,
        )

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """Truncated normal (std ``init_std``, cut at ±3σ) for every matrix; norm weights 1 (spec §1.7).
        Also (re)fills the RoPE tables, so that a model moved off the meta device with ``to_empty`` is complete."""
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(module.weight, std=std, a=-3 * std, b=3 * std, generator=generator)
            elif isinstance(module, RMSNorm):
                module.weight.fill_(1.0)
        self.rotary.build(self.rotary.cos.shape[0], self.lm_head.weight.device)


def build_model(cfg: ModelConfig, device: str | torch.device = "cpu", seed: int | None = None) -> Olmo2:
    """A freshly initialised model; on the meta device it allocates nothing (for counting, sharding)."""
    device = torch.device(device)
    with device:
        model = Olmo2(cfg)
    if device.type != "meta":
        gen = torch.Generator(device=device)
        gen.manual_seed(0 if seed is None else seed)
        model.init_weights(gen)
    return model


def count_params(cfg: ModelConfig) -> dict[str, int]:
    """Parameter counts computed on the meta device. Non-embedding excludes the embedding and LM head."""
    model = build_model(cfg, "meta")
    total = sum(p.numel() for p in model.parameters())
    embed = model.model.embed_tokens.weight.numel() + model.lm_head.weight.numel()
    return {"total_params": total, "non_embedding_params": total - embed, "embedding_params": embed}
