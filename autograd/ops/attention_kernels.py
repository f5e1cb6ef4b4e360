"""Attention's array code (NumPy/CuPy generic): the score matrix, causal mask, softmax and their backward.

Part of the kernel contract (docs/KERNELS.md) re-exported by ``nn_kernels``: ``attention_forward/backward`` dispatch
to the flash-attention CUDA kernel when one is registered; the generic version builds the (Tq, Tk) scores.
"""
from __future__ import annotations

import numpy as np

from .nn_kernels import _acc, _dispatch, _xp, matmul

_mask_cache: dict = {}


def causal_bias(xp, tq: int, tk: int, dtype):
    """(tq, tk) additive mask: 0 where query i may see key j (j <= i + tk - tq), -inf above that diagonal, so the
    last query sees every key (the KV-cache case). Cached: adding it is far cheaper than boolean-mask assignment."""
    key = (xp.__name__, _device_key(xp), tq, tk, np.dtype(dtype).str)
    m = _mask_cache.get(key)
    if m is None:
        if len(_mask_cache) > 64:
            _mask_cache.clear()
        m = xp.triu(xp.full((tq, tk), -np.inf, dtype=dtype), k=1 + tk - tq)
        _mask_cache[key] = m
    return m


def _device_key(xp):
    return None if xp is np else xp.cuda.Device().id


def _scores(q, k, causal, scale):
    """s = q k^T * scale (+ causal bias), in float32 at least. q is scaled first: (Tq, D) is smaller than (Tq, Tk)."""
    xp = _xp(q)
    acc = _acc(q.dtype)
    s = matmul(q * q.dtype.type(scale), k.swapaxes(-1, -2))
    if s.dtype != acc:
        s = s.astype(acc)
    if causal and q.shape[-2] > 1:  # a single query (decoding with a KV cache) sees every key: nothing to mask
        s += causal_bias(xp, q.shape[-2], k.shape[-2], acc)
    return s


def attention_probs_forward(q, k, v, causal, scale):
    """(o, lse, p): the forward that also returns the probabilities p (B, H, Tq, Tk) (float32 at least); used on
    NumPy, and by the generic attention_forward."""
    xp = _xp(q)
    s = _scores(q, k, causal, scale)
    m = s.max(axis=-1, keepdims=True)
    s -= m
    xp.exp(s, out=s)
    denom = s.sum(axis=-1, keepdims=True)
    s /= denom
    xp.log(denom, out=denom)
    denom += m
    o = matmul(s.astype(v.dtype, copy=False), v)
    return o, denom[..., 0], s


def attention_probs_backward(q, k, v, o, p, do, scale):
    """(dq, dk, dv) from saved probabilities p: dv = p^T do, dp = do v^T, ds = p (dp - rowsum(do o)) * scale,
    dq = ds k, dk = ds^T q."""
    acc = p.dtype
    dv = matmul(p.astype(q.dtype, copy=False).swapaxes(-1, -2), do)
    ds = matmul(do, v.swapaxes(-1, -2))
    if ds.dtype != acc:
        ds = ds.astype(acc)
    delta = (do.astype(acc, copy=False) * o.astype(acc, copy=False)).sum(axis=-1, keepdims=True)
    ds -= delta
    ds *= p
    ds *= scale
    ds = ds.astype(q.dtype, copy=False)
    return matmul(ds, k), matmul(ds.swapaxes(-1, -2), q), dv.astype(v.dtype, copy=False)


@_dispatch
def attention_forward(q, k, v, causal, scale):
    """(o, lse): o = softmax(q k^T * scale, causal-masked) v; q (B, H, Tq, D), k, v (B, H, Tk, D); o (B, H, Tq, D);
    lse (B, H, Tq) in float32 at least. This generic version builds the (Tq, Tk) score matrix; the CUDA kernel
    (flash-attention style) does not."""
    o, lse, _ = attention_probs_forward(q, k, v, causal, scale)
    return o, lse


@_dispatch
def attention_backward(q, k, v, o, lse, do, causal, scale):
    """(dq, dk, dv), recomputing p = exp(s - lse) from the saved log-sum-exp (nothing (Tq, Tk) is kept)."""
    xp = _xp(q)
    p = _scores(q, k, causal, scale)
    p -= lse[..., None]
    xp.exp(p, out=p)
    return attention_probs_backward(q, k, v, o, p, do, scale)
