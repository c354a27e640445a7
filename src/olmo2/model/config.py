"""Model shape and the named presets (spec §1.6), checked on construction."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# dolma2 tokenizer facts (spec §2): 100,278 ids, padded to a multiple of 128 for the embedding.
DOLMA2_VOCAB_SIZE = 100_278
EOS_TOKEN_ID = 100_257
PAD_TOKEN_ID = 100_277


@dataclass
class ModelConfig:
    """The shape of an OLMo 2 model. ``embedding_size`` defaults to ``vocab_size`` rounded up to 128."""

    d_model: int
    n_layers: int
    n_heads: int
    mlp_hidden: int  # per SwiGLU branch (F in the spec; the OLMo trainer's fused size is 2F)
    n_kv_heads: int | None = None  # None: multi-head attention (n_kv_heads = n_heads)
    vocab_size: int = DOLMA2_VOCAB_SIZE
    embedding_size: int | None = None
    max_seq_len: int = 4096
    rope_theta: float = 500_000.0
    norm_eps: float = 1e-6
    init_std: float = 0.02
    eos_token_id: int | None = EOS_TOKEN_ID
    pad_token_id: int | None = PAD_TOKEN_ID
    bos_token_id: int | None = None

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.embedding_size is None:
            self.embedding_size = -(-self.vocab_size // 128) * 128
        for name in (
            "d_model",
            "n_layers",
            "n_heads",
            "n_kv_heads",
            "mlp_hidden",
            "vocab_size",
            "max_seq_len",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) is not divisible by n_heads ({self.n_heads})")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_kv_heads ({self.n_kv_heads}) does not divide n_heads ({self.n_heads})")
        if self.head_dim % 2:
            raise ValueError(
                f"head_dim (d_model/n_heads = {self.head_dim}) must be even for rotary embeddings"
            )
        for name in ("eos_token_id", "pad_token_id", "bos_token_id"):
            token = getattr(self, name)
            if token is not None and not 0 <= token < self.vocab_size:
                raise ValueError(
                    f"{name} ({token}) is outside the vocabulary (size {self.vocab_size}); "
                    f"set it to your tokenizer's id or null"
                )
        if self.embedding_size < self.vocab_size:
            raise ValueError(
                f"embedding_size ({self.embedding_size}) is smaller than vocab_size ({self.vocab_size})"
            )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)


# Spec §1.6. 32B: F = 27648 per branch, 8 KV heads (GQA); every size has d_head = 128.
PRESETS: dict[str, ModelConfig] = {
    "1b": ModelConfig(d_model=2048, n_layers=16, n_heads=16, mlp_hidden=8192),
    "7b": ModelConfig(d_model=4096, n_layers=32, n_heads=32, mlp_hidden=11008),
    "13b": ModelConfig(d_model=5120, n_layers=40, n_heads=40, mlp_hidden=13824),
    "32b": ModelConfig(d_model=5120, n_layers=64, n_heads=40, n_kv_heads=8, mlp_hidden=27648),
    # Small shapes for tests, benchmarks and CPU demos (full dolma2 vocabulary).
    "tiny": ModelConfig(d_model=256, n_layers=4, n_heads=4, mlp_hidden=1024),
    "small": ModelConfig(d_model=768, n_layers=12, n_heads=12, mlp_hidden=3072),
    # The `make demo` model: ~27M parameters, most of them the (untied) 100k-row embeddings.
    "demo": ModelConfig(d_model=128, n_layers=4, n_heads=4, mlp_hidden=512, max_seq_len=1024),
}


def preset(name: str) -> ModelConfig:
    """The preset called ``name``; unknown names list the known ones."""
    try:
        return dataclasses.replace(PRESETS[name.lower()])
    except KeyError:
        raise ValueError(f"unknown model size {name!r}; known sizes: {', '.join(PRESETS)}") from None
