"""Feed-forward networks (GELU MLP, SwiGLU) and the pre-norm transformer block.

    x = x + attn(norm1(x))
    x = x + ffn(norm2(x))
"""
from __future__ import annotations

import numpy as np

from autograd import Tensor
from autograd import functional as F

from .attention import LayerKVCache, MultiHeadAttention
from .layers import Dropout, LayerNorm, Linear, RMSNorm
from .module import Module

__all__ = ["FeedForward", "SwiGLUFeedForward", "TransformerBlock", "make_norm"]


class FeedForward(Module):
    """GPT-2's MLP: proj(gelu(fc(x))), hidden width 4 C by default, then residual dropout. (B, T, C) -> (B, T, C).

    Parameters ``fc.weight`` (hidden, C), ``fc.bias``, ``proj.weight`` (C, hidden), ``proj.bias``. The fc bias and
    the GELU run as one fused op (``F.bias_gelu``).
    """

    def __init__(self, d_model: int, hidden: int | None = None, bias: bool = True, dropout: float = 0.0,
                 dtype=np.float32, rng=None, seed: int | None = None):
        super().__init__()
        hidden = 4 * d_model if hidden is None else int(hidden)
        self.fc = Linear(d_model, hidden, bias=bias, dtype=dtype, rng=rng)
        self.proj = Linear(hidden, d_model, bias=bias, dtype=dtype, rng=rng)
        self.drop = Dropout(dropout, seed=seed)

    def forward(self, x: Tensor) -> Tensor:
        if self.fc.bias is not None and type(self.fc) is Linear:  # a wrapped fc (LoRA) runs its own forward
            h = F.bias_gelu(F.linear(x, self.fc.weight, None), self.fc.bias)
        else:
            h = F.gelu(self.fc(x))
        return self.drop(self.proj(h))


class SwiGLUFeedForward(Module):
    """Llama's MLP: proj(silu(gate(x)) * up(x)), then residual dropout. (B, T, C) -> (B, T, C).

    Parameters ``gate.weight`` (hidden, C), ``up.weight`` (hidden, C), ``proj.weight`` (C, hidden) (+ biases when
    ``bias``). Default hidden width: 8 C / 3 rounded up to a multiple of 64 (Llama's rule of thumb, so that three
    matrices hold about as many weights as GPT-2's two 4 C ones).
    """

    def __init__(self, d_model: int, hidden: int | None = None, bias: bool = False, dropout: float = 0.0,
                 dtype=np.float32, rng=None, seed: int | None = None):
        super().__init__()
        hidden = swiglu_hidden(d_model) if hidden is None else int(hidden)
        self.gate = Linear(d_model, hidden, bias=bias, dtype=dtype, rng=rng)
        self.up = Linear(d_model, hidden, bias=bias, dtype=dtype, rng=rng)
        self.proj = Linear(hidden, d_model, bias=bias, dtype=dtype, rng=rng)
        self.drop = Dropout(dropout, seed=seed)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.proj(F.silu(self.gate(x)) * self.up(x)))


def swiglu_hidden(d_model: int, multiple_of: int = 64) -> int:
    """8 d_model / 3 rounded up to a multiple of ``multiple_of``."""
    h = (8 * d_model + 2) // 3
    return multiple_of * ((h + multiple_of - 1) // multiple_of)


def make_norm(kind: str, d_model: int, eps: float = 1e-5, bias: bool = True, dtype=np.float32) -> Module:
    """'layernorm' (with or without bias) or 'rmsnorm'."""
    if kind == "layernorm":
        return LayerNorm(d_model, eps=eps, bias=bias, dtype=dtype)
    if kind == "rmsnorm":
        return RMSNorm(d_model, eps=eps, dtype=dtype)
    raise ValueError(f"unknown norm {kind!r}: expected 'layernorm' or 'rmsnorm'")


class TransformerBlock(Module):
    """Pre-norm block: x + attn(norm1(x)), then + ffn(norm2(x)). (B, T, C) -> (B, T, C).

    Children: ``norm1``, ``attn`` (MultiHeadAttention), ``norm2``, ``ffn`` (FeedForward or SwiGLUFeedForward).
    """

    def __init__(self, d_model: int, n_head: int, n_kv_heads: int | None = None, context_length: int = 1024,
                 dropout: float = 0.0, qkv_bias: bool = False, bias: bool = True, norm: str = "layernorm",
                 norm_eps: float = 1e-5, mlp: str = "gelu", ffn_hidden: int | None = None, rope: bool = False,
                 rope_theta: float = 10000.0, dtype=np.float32, rng=None, seed: int | None = None):
        super().__init__()
        s = (lambda i: None) if seed is None else (lambda i: seed + i)
        self.norm1 = make_norm(norm, d_model, norm_eps, bias, dtype)
        self.attn = MultiHeadAttention(d_model, n_head, n_kv_heads, context_length, dropout, qkv_bias, bias, rope,
                                       rope_theta, dtype, rng, seed=s(0))
        self.norm2 = make_norm(norm, d_model, norm_eps, bias, dtype)
        if mlp == "gelu":
            self.ffn = FeedForward(d_model, ffn_hidden, bias, dropout, dtype, rng, seed=s(2))
        elif mlp == "swiglu":
            self.ffn = SwiGLUFeedForward(d_model, ffn_hidden, bias, dropout, dtype, rng, seed=s(2))
        else:
            raise ValueError(f"unknown mlp {mlp!r}: expected 'gelu' or 'swiglu'")

    def forward(self, x: Tensor, cache: LayerKVCache | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x), cache=cache)
        return x + self.ffn(self.norm2(x))
