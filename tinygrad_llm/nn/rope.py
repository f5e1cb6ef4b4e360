"""Rotary position embeddings (RoPE, Su et al. 2021), in the "rotate half" layout of Llama and Hugging Face.

For a head vector x of even size D, split into halves x1 = x[:D/2], x2 = x[D/2:], position p rotates each pair
(x1[i], x2[i]) by the angle p * theta^(-2i/D):

    out1 = x1 cos - x2 sin,   out2 = x2 cos + x1 sin

The rotation is one fused Function: its backward is the rotation by the opposite angle (sin -> -sin), written as
the same Function, so it is differentiable twice.

Frequency scaling stretches the long wavelengths for longer contexts: "linear" divides every frequency by
``factor``; "llama3" (Llama 3.1/3.2) keeps wavelengths shorter than original / high_freq_factor, divides those
longer than original / low_freq_factor by ``factor``, and interpolates smoothly in between. Tables are computed in
float64 (more exact than Hugging Face's float32 tables far into long contexts) and cast to the model's dtype.
"""
from __future__ import annotations

import numpy as np

from autograd import Function, Tensor, backend

from .module import Module

__all__ = ["rope_frequencies", "rope_tables", "apply_rope", "RoPE", "RotaryEmbedding"]


def rope_frequencies(head_dim: int, theta: float = 10000.0, scaling: dict | None = None) -> np.ndarray:
    """The head_dim // 2 angular frequencies theta^(-2i/D), float64, after ``scaling`` (None, or a dict with
    "rope_type" "linear" (factor) or "llama3" (factor, low_freq_factor, high_freq_factor,
    original_max_position_embeddings), Hugging Face's ``rope_scaling``)."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head size, got head_dim={head_dim}")
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    kind = None if scaling is None else scaling.get("rope_type")
    if kind is None or kind == "default":
        return inv_freq
    factor = float(scaling["factor"])
    if kind == "linear":
        return inv_freq / factor
    if kind != "llama3":
        raise ValueError(f"rope scaling: unknown rope_type {kind!r} (known: 'linear', 'llama3')")
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    original = float(scaling["original_max_position_embeddings"])
    wavelen = 2 * np.pi / inv_freq
    smooth = (original / wavelen - low) / (high - low)        # 0 at the long end of the band, 1 at the short end
    scaled = np.where(wavelen > original / low, inv_freq / factor, inv_freq)
    medium = (wavelen >= original / high) & (wavelen <= original / low)
    return np.where(medium, (1 - smooth) * inv_freq / factor + smooth * inv_freq, scaled)


def rope_tables(head_dim: int, context_length: int, theta: float = 10000.0, dtype=np.float32,
                scaling: dict | None = None, start: int = 0):
    """(cos, sin), each (context_length, head_dim // 2), for positions start .. start+context_length-1, computed
    in float64 and cast to ``dtype``."""
    positions = np.arange(start, start + context_length, dtype=np.float64)
    angles = positions[:, None] * rope_frequencies(head_dim, theta, scaling)
    return np.cos(angles).astype(dtype), np.sin(angles).astype(dtype)


class RoPE(Function):
    """y = rotate(x) by the angles whose cos/sin are ``cos``/``sin`` (T, D/2); x (..., T, D)."""

    rule = "rotation by +angle; gradient: rotation by -angle"
    params = ("cos", "sin")

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


class RotaryEmbedding(Module):
    """The rotation of one attention layer: base ``theta``, optional ``scaling``, heads of size ``head_dim``.

    ``tables(start, t, like)`` -> (cos, sin), each (t, head_dim // 2), for positions start .. start+t-1, in the
    dtype and on the device of the array ``like``; pass them to ``apply_rope``. The angles are computed in float64
    on the host (exact far into long contexts, whatever the model's dtype) for just the positions asked for, and
    the last tables are kept: a training step asks for the same positions in every call. Nothing is saved in
    checkpoints, nothing is sized by the context length.
    """

    def __init__(self, head_dim: int, theta: float = 10000.0, scaling: dict | None = None):
        super().__init__()
        rope_frequencies(head_dim, theta, scaling)          # a bad head size or scaling fails here, not later
        self.head_dim, self.theta, self.scaling = int(head_dim), float(theta), scaling
        self._last = (None, None)

    def tables(self, start: int, t: int, like):
        key = (start, t, like.dtype, backend.device_of(like))
        if self._last[0] != key:
            tables = rope_tables(self.head_dim, t, self.theta, like.dtype, self.scaling, start)
            self._last = (key, tuple(backend.to_device(a, key[3]) for a in tables))
        return self._last[1]

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, theta={self.theta}"
