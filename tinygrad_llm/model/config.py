"""GPTConfig: the hyperparameters of a GPT, its presets, and its parameter count computed without weights.

    cfg = GPTConfig.preset("gpt2-124m")                 # GPT-2 small, as released (qkv bias, tied head)
    cfg = GPTConfig.preset("tiny", vocab_size=1000)     # a preset with overrides
    cfg.num_parameters()                                # 124_439_808 for gpt2-124m, no arrays allocated
    GPTConfig.from_dict(cfg.to_dict()) == cfg           # JSON-able, for checkpoints
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = ["GPTConfig", "PRESETS"]


@dataclass
class GPTConfig:
    """Hyperparameters of a GPT. The defaults are GPT-2 124M's.

    vocab_size, context_length: token vocabulary and the longest sequence the model reads.
    n_layer, n_head, n_embd: blocks, attention heads, model width C (C divisible by n_head).
    n_kv_heads: key/value heads for grouped-query attention (None: n_head, plain multi-head attention).
    dropout: one rate for embedding, attention, and residual dropout.
    qkv_bias: bias in the fused QKV projection (GPT-2: True). bias: biases in the other Linear layers and the
        LayerNorms (GPT-2: True; Llama: False).
    tie_weights: the LM head reuses the token embedding matrix.
    norm: "layernorm" | "rmsnorm"; norm_eps its epsilon.
    mlp: "gelu" (GPT-2's 4x MLP) | "swiglu" (Llama's); ffn_hidden the hidden width (None: 4 C for gelu,
        8 C / 3 rounded up to a multiple of 64 for swiglu).
    pos: "learned" (GPT-2's position embedding) | "rope" (rotary, Llama); rope_theta the RoPE base.
    """

    vocab_size: int = 50257
    context_length: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    n_kv_heads: int | None = None
    dropout: float = 0.0
    qkv_bias: bool = True
    bias: bool = True
    tie_weights: bool = True
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    mlp: str = "gelu"
    ffn_hidden: int | None = None
    pos: str = "learned"
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "n_layer", "n_head", "n_embd"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig: n_embd {self.n_embd} must be divisible by n_head {self.n_head}")
        if self.n_kv_heads is not None and (self.n_kv_heads < 1 or self.n_head % self.n_kv_heads):
            raise ValueError(f"GPTConfig: n_kv_heads {self.n_kv_heads} must divide n_head {self.n_head}")
        if self.ffn_hidden is not None and int(self.ffn_hidden) < 1:
            raise ValueError(f"GPTConfig: ffn_hidden must be a positive integer or None, got {self.ffn_hidden!r}")
        if self.norm_eps <= 0 or self.rope_theta <= 0:
            raise ValueError(f"GPTConfig: norm_eps and rope_theta must be > 0, got {self.norm_eps}, {self.rope_theta}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig: dropout must be in [0, 1), got {self.dropout}")
        if self.norm not in ("layernorm", "rmsnorm"):
            raise ValueError(f"GPTConfig: norm must be 'layernorm' or 'rmsnorm', got {self.norm!r}")
        if self.mlp not in ("gelu", "swiglu"):
            raise ValueError(f"GPTConfig: mlp must be 'gelu' or 'swiglu', got {self.mlp!r}")
        if self.pos not in ("learned", "rope"):
            raise ValueError(f"GPTConfig: pos must be 'learned' or 'rope', got {self.pos!r}")
        if self.pos == "rope" and self.head_dim % 2:
            raise ValueError(f"GPTConfig: RoPE needs an even head size, got n_embd/n_head = {self.head_dim}")

    # ------------------------------------------------------------------ derived sizes
    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_head if self.n_kv_heads is None else self.n_kv_heads

    @property
    def ffn_hidden_size(self) -> int:
        if self.ffn_hidden is not None:
            return int(self.ffn_hidden)
        if self.mlp == "gelu":
            return 4 * self.n_embd
        from ..nn.transformer import swiglu_hidden
        return swiglu_hidden(self.n_embd)

    def num_parameters(self, trainable_only: bool = False, non_embedding: bool = False) -> int:
        """Parameter count of ``GPT(self)``, computed from the sizes alone (no arrays are allocated).

        ``non_embedding=True`` leaves out the position embedding (and the token embedding unless it is tied to
        the head, which still needs it), the convention of the scaling-law papers and nanoGPT. ``trainable_only``
        is accepted for symmetry with ``Module.num_parameters`` (a fresh model trains everything).
        """
        c, v, hd = self.n_embd, self.vocab_size, self.head_dim
        h, kv, f = self.n_head, self.kv_heads, self.ffn_hidden_size
        norm = c + (c if self.norm == "layernorm" and self.bias else 0)
        qkv = c * (h + 2 * kv) * hd + ((h + 2 * kv) * hd if self.qkv_bias else 0)
        proj = h * hd * c + (c if self.bias else 0)
        if self.mlp == "gelu":
            ffn = 2 * c * f + ((f + c) if self.bias else 0)
        else:
            ffn = 3 * c * f + ((2 * f + c) if self.bias else 0)
        block = 2 * norm + qkv + proj + ffn
        tok = v * c
        pos = self.context_length * c if self.pos == "learned" else 0
        head = 0 if self.tie_weights else v * c
        total = tok + pos + self.n_layer * block + norm + head
        if non_embedding:
            total -= pos + (0 if self.tie_weights else tok)
        return int(total)

    # ------------------------------------------------------------------ presets and (de)serialisation
    @classmethod
    def preset(cls, name: str, **overrides) -> "GPTConfig":
        """A named configuration (see ``GPTConfig.presets()``), with fields replaced by ``overrides``."""
        key = _ALIASES.get(name, name)
        if key not in PRESETS:
            raise KeyError(f"unknown GPT preset {name!r}; available: {', '.join(cls.presets())}")
        return cls.from_dict({**PRESETS[key], **overrides})

    @staticmethod
    def presets() -> list[str]:
        return list(PRESETS) + list(_ALIASES)

    def to_dict(self) -> dict:
        """A JSON-able dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        """Inverse of ``to_dict``; unknown keys are an error (they would be silently ignored otherwise)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"GPTConfig.from_dict: unknown fields {unknown}; known fields: {sorted(names)}")
        return cls(**d)

    def replace(self, **changes) -> "GPTConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


_GPT2 = dict(vocab_size=50257, context_length=1024, qkv_bias=True, bias=True, tie_weights=True, dropout=0.0)
# Small presets train from scratch on a laptop CPU in minutes (vocab 512 suits a small BPE or a char tokenizer;
# override vocab_size to match yours). "small" is the CPU benchmark configuration of issue 5.
_SMALL = dict(vocab_size=512, context_length=128, qkv_bias=False, bias=True, tie_weights=True, dropout=0.0)
_LLAMA = dict(vocab_size=512, context_length=128, qkv_bias=False, bias=False, tie_weights=False, dropout=0.0,
              norm="rmsnorm", mlp="swiglu", pos="rope", rope_theta=10000.0)

PRESETS: dict[str, dict] = {
    "gpt2-124m": dict(_GPT2, n_layer=12, n_head=12, n_embd=768),
    "gpt2-355m": dict(_GPT2, n_layer=24, n_head=16, n_embd=1024),
    "gpt2-774m": dict(_GPT2, n_layer=36, n_head=20, n_embd=1280),
    "gpt2-1558m": dict(_GPT2, n_layer=48, n_head=25, n_embd=1600),
    "micro": dict(_SMALL, context_length=64, n_layer=2, n_head=2, n_embd=64),
    "tiny": dict(_SMALL, n_layer=4, n_head=4, n_embd=128),
    "small": dict(_SMALL, n_layer=4, n_head=4, n_embd=256),
    "llama-tiny": dict(_LLAMA, n_layer=4, n_head=4, n_kv_heads=2, n_embd=128),
    "llama-small": dict(_LLAMA, n_layer=4, n_head=8, n_kv_heads=2, n_embd=256),
}
# Hugging Face model names of the released GPT-2 checkpoints
_ALIASES = {"gpt2": "gpt2-124m", "gpt2-medium": "gpt2-355m", "gpt2-large": "gpt2-774m", "gpt2-xl": "gpt2-1558m",
            "mini": "small"}
