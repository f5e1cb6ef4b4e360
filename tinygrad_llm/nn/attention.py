"""Causal multi-head self-attention with a fused QKV projection, RoPE, grouped-query attention and a KV cache.

Shapes: B batch, T tokens, C = n_embd, H query heads, K key/value heads (K divides H; K == H is ordinary
multi-head attention, K == 1 multi-query), D = C // H the head size.

    x (B, T, C) --qkv--> (B, T, (H + 2K) D) --> q (B, H, T, D), k, v (B, K, T, D)
      --RoPE (optional)--> k, v appended to the cache (decoding) --> k, v repeated to H heads (GQA)
      --F.scaled_dot_product_attention (causal, fused)--> (B, H, T, D) --> (B, T, H D) --proj--> (B, T, C)

The qkv weight's rows are [q heads | k heads | v heads], each head's D rows together (GPT-2's c_attn layout), so
GPT-2 weights load with a transpose and no reshuffling. No Python loop runs over heads or positions.
"""
from __future__ import annotations

import numpy as np

from autograd import Tensor, backend
from autograd import functional as F

from .layers import Dropout, Linear
from .module import Module
from .rope import apply_rope, rope_tables

__all__ = ["MultiHeadAttention", "LayerKVCache", "KVCache", "repeat_kv"]


class LayerKVCache:
    """Keys and values of one attention layer, preallocated (B, K, max_len, D) and filled in place.

    Inference only: the cached arrays carry no graph, so gradients do not flow through earlier positions.
    """

    def __init__(self, batch_size: int, n_kv_heads: int, max_len: int, head_dim: int, dtype=np.float32,
                 device: str = "cpu"):
        xp = backend.get_xp(device)
        shape = (batch_size, n_kv_heads, max_len, head_dim)
        with _on(device):
            self.k = xp.zeros(shape, dtype=dtype)
            self.v = xp.zeros(shape, dtype=dtype)
        self.length = 0
        self.max_len = max_len

    def append(self, k, v):
        """Write k, v (B, K, T, D arrays) at the current end; return views of all cached keys and values."""
        t = k.shape[2]
        if self.length + t > self.max_len:
            raise ValueError(f"KV cache full: {self.length} cached + {t} new positions > max_len {self.max_len}")
        if k.shape[0] != self.k.shape[0]:
            raise ValueError(f"KV cache was made for batch size {self.k.shape[0]}, got {k.shape[0]}")
        self.k[:, :, self.length:self.length + t] = k
        self.v[:, :, self.length:self.length + t] = v
        self.length += t
        return self.k[:, :, :self.length], self.v[:, :, :self.length]


class KVCache:
    """The caches of all layers of a model, plus the number of positions already processed (``pos``)."""

    def __init__(self, n_layer: int, batch_size: int, n_kv_heads: int, max_len: int, head_dim: int,
                 dtype=np.float32, device: str = "cpu"):
        self.layers = [LayerKVCache(batch_size, n_kv_heads, max_len, head_dim, dtype, device)
                       for _ in range(n_layer)]
        self.max_len = max_len

    @property
    def pos(self) -> int:
        """How many positions are cached (the position of the next token)."""
        return self.layers[0].length if self.layers else 0

    def __getitem__(self, i: int) -> LayerKVCache:
        return self.layers[i]

    def __len__(self) -> int:
        return len(self.layers)


class _on:
    """``with _on(device)``: make CuPy allocate on that GPU (no-op for the CPU)."""

    def __init__(self, device):
        kind, index = backend.parse_device(device)
        self.ctx = None
        if kind == "cuda" and index is not None:
            self.ctx = backend.cupy_module().cuda.Device(index)

    def __enter__(self):
        if self.ctx is not None:
            self.ctx.__enter__()

    def __exit__(self, *exc):
        if self.ctx is not None:
            self.ctx.__exit__(*exc)


def repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """(B, K, T, D) -> (B, K * n_rep, T, D), each kv head repeated n_rep times in a row (head h of the queries
    uses kv head h // n_rep). A broadcast and a reshape: no loop; the backward sums the copies."""
    if n_rep == 1:
        return x
    b, k, t, d = x.shape
    return x.unsqueeze(2).broadcast_to((b, k, n_rep, t, d)).reshape(b, k * n_rep, t, d)


class MultiHeadAttention(Module):
    """Causal self-attention. x (B, T, C) -> (B, T, C).

    Parameters: ``qkv.weight`` ((H + 2K) D, C), ``qkv.bias`` (if ``qkv_bias``), ``proj.weight`` (C, H D),
    ``proj.bias`` (if ``bias``). Dropout: ``dropout`` on the attention probabilities and on the output (residual
    dropout), each with its own seeded generator (``seed`` and ``seed + 1``). With ``rope=True`` queries and keys
    are rotated by position (tables for ``context_length`` positions, held as non-persistent buffers).
    """

    def __init__(self, d_model: int, n_head: int, n_kv_heads: int | None = None, context_length: int = 1024,
                 dropout: float = 0.0, qkv_bias: bool = False, bias: bool = True, rope: bool = False,
                 rope_theta: float = 10000.0, dtype=np.float32, rng=None, seed: int | None = None):
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"MultiHeadAttention: d_model {d_model} is not divisible by n_head {n_head}")
        n_kv = n_head if n_kv_heads is None else int(n_kv_heads)
        if n_kv < 1 or n_head % n_kv:
            raise ValueError(f"MultiHeadAttention: n_kv_heads {n_kv} must divide n_head {n_head}")
        self.d_model, self.n_head, self.n_kv_heads = int(d_model), int(n_head), n_kv
        self.head_dim = d_model // n_head
        self.context_length = int(context_length)
        self.dropout = float(dropout)
        self.use_rope = bool(rope)
        self.qkv = Linear(d_model, (n_head + 2 * n_kv) * self.head_dim, bias=qkv_bias, dtype=dtype, rng=rng)
        self.proj = Linear(n_head * self.head_dim, d_model, bias=bias, dtype=dtype, rng=rng)
        self.attn_drop = Dropout(dropout, seed=seed)
        self.resid_drop = Dropout(dropout, seed=None if seed is None else seed + 1)
        if rope:
            cos, sin = rope_tables(self.head_dim, context_length, rope_theta, dtype)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, x: Tensor, cache: LayerKVCache | None = None) -> Tensor:
        """x (B, T, C) -> (B, T, C). With ``cache`` (inference), x holds the T positions after the cached ones."""
        if x.ndim != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"MultiHeadAttention: expected input (B, T, {self.d_model}), got shape {x.shape}")
        b, t, _ = x.shape
        h, kv, d = self.n_head, self.n_kv_heads, self.head_dim
        start = cache.length if cache is not None else 0
        gpu = type(x.data) is not np.ndarray
        if gpu:   # one op, its backward writes d(qkv) directly; float16 (flash kernel): contiguous heads
            qkv = self.qkv(x)
            q, k, v = F.split_heads(qkv, h, kv, contiguous=qkv.dtype == np.float16)
        else:     # NumPy: views (the CPU attention reads them as they are)
            qkv = self.qkv(x).reshape(b, t, h + 2 * kv, d).transpose(0, 2, 1, 3)   # (B, H + 2K, T, D)
            q, k, v = qkv.split([h, h + kv], axis=1)
        if self.use_rope:
            q = apply_rope(q, self.rope_cos, self.rope_sin, start)
            k = apply_rope(k, self.rope_cos, self.rope_sin, start)
        if cache is not None:
            k_all, v_all = cache.append(k.data, v.data)
            k, v = Tensor(k_all), Tensor(v_all)
        k, v = repeat_kv(k, h // kv), repeat_kv(v, h // kv)
        p = self.dropout if self.attn_drop.active else 0.0
        y = F.scaled_dot_product_attention(q, k, v, causal=True, dropout_p=p, rng=self.attn_drop.rng)
        y = F.merge_heads(y) if gpu else y.transpose(0, 2, 1, 3).reshape(b, t, h * d)
        return self.resid_drop(self.proj(y))

    def extra_repr(self) -> str:
        extra = f", n_kv_heads={self.n_kv_heads}" if self.n_kv_heads != self.n_head else ""
        return f"d_model={self.d_model}, n_head={self.n_head}{extra}, rope={self.use_rope}, dropout={self.dropout}"
