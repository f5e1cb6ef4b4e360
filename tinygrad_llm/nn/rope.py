"""Rotary position embeddings (RoPE, Su et al. 2021), in the "rotate half" layout of Llama and Hugging Face.

For a head vector x of even size D, split into halves x1 = x[:D/2], x2 = x[D/2:], position p rotates each pair
(x1[i], x2[i]) by the angle p * theta^(-2i/D):

    out1 = x1 cos - x2 sin,   out2 = x2 cos + x1 sin

The rotation is one fused Function: its backward is the rotation by the opposite angle (sin -> -sin), written as
the same Function, so it is differentiable twice.
"""
from __future__ import annotations

import numpy as np

from autograd import Function, Tensor, backend

__all__ = ["rope_tables", "apply_rope", "RoPE"]


def rope_tables(head_dim: int, context_length: int, theta: float = 10000.0, dtype=np.float32):
    """(cos, sin), each (context_length, head_dim // 2), computed in float64 and cast to ``dtype``."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head size, got head_dim={head_dim}")
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    angles = np.arange(context_length, dtype=np.float64)[:, None] * inv_freq[None, :]
    return np.cos(angles).astype(dtype), np.sin(angles).astype(dtype)


class RoPE(Function):
    """y = rotate(x) by the angles whose cos/sin are ``cos``/``sin`` (T, D/2); x (..., T, D)."""

    rule = "rotation by +angle; gradient: rotation by -angle"

    def forward(self, x):
        xp = backend.xp_of(x)
        h = x.shape[-1] // 2
        x1, x2 = x[..., :h], x[..., h:]
        out = xp.empty_like(x)
        out[..., :h] = x1 * self.cos - x2 * self.sin
        out[..., h:] = x2 * self.cos + x1 * self.sin
        return out

    def backward(self, gy):
        return RoPE.apply(gy, cos=self.cos, sin=-self.sin)


def apply_rope(x: Tensor, cos, sin, start: int = 0) -> Tensor:
    """Rotate x (B, H, T, D) for positions start .. start+T-1, using tables (ctx, D/2) from ``rope_tables``."""
    t = x.shape[-2]
    if start + t > cos.shape[0]:
        raise ValueError(f"RoPE: positions {start}..{start + t - 1} exceed the table's {cos.shape[0]} positions "
                         f"(context_length)")
    c, s = cos[start:start + t], sin[start:start + t]
    if c.dtype != x.dtype:
        c, s = c.astype(x.dtype), s.astype(x.dtype)
    return RoPE.apply(x, cos=c, sin=s)
