"""Scaled dot-product attention: o = softmax(q k^T * scale + mask) v over the keys.

q (B, H, Tq, D), k and v (B, H, Tk, D) -> o (B, H, Tq, D). The causal mask lets query i see keys j <= i + Tk - Tq,
so with a KV cache (Tq < Tk) the last query sees every key. Local rule (p the probabilities, delta = rowsum(do o)):

    dv = p^T do,   dp = do v^T,   ds = p (dp - delta) scale,   dq = ds k,   dk = ds^T q

- ``attention_reference``: composed from matmul, masking, softmax (and dropout on the probabilities when given);
  ``F.scaled_dot_product_attention(..., fused=False)``, also the path for ``dropout_p > 0``.
- ``Attention``: one node. NumPy (and any additive mask): forward keeps the (B, H, Tq, Tk) probabilities, as eager
  PyTorch's math path does (recomputing q k^T would cost a third more time). CUDA without a mask
  (``attention_forward`` / ``_backward`` in ``autograd/cuda/attention.py``: flash attention for float16, else cuBLAS
  GEMMs and row kernels): keeps the per-row log-sum-exp only and recomputes the probabilities in backward.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ... import backend, dtypes
from ...cuda import kernel_for
from ...tensor import Tensor
from ..elementwise import Where
from .base import FusedFunction
from .dropout import dropout_reference
from .softmax import softmax_reference


# ------------------------------------------------------------------------------------------------ masks
_mask_cache: dict = {}


def causal_mask(xp, tq: int, tk: int):
    """(tq, tk) boolean, True where query i may NOT see key j (j > i + tk - tq). Cached per device and size."""
    key = (xp.__name__, None if xp is np else xp.cuda.Device().id, tq, tk)
    m = _mask_cache.get(key)
    if m is None:
        if len(_mask_cache) > 64:
            _mask_cache.clear()
        m = _mask_cache[key] = xp.triu(xp.ones((tq, tk), dtype=bool), k=1 + tk - tq)
    return m


def _causal_bias(xp, tq: int, tk: int, dtype):
    """The causal mask as an additive (tq, tk) array, 0 or -inf (adding it is far cheaper than masked assignment)."""
    key = ("bias", xp.__name__, None if xp is np else xp.cuda.Device().id, tq, tk, np.dtype(dtype).str)
    m = _mask_cache.get(key)
    if m is None:
        m = _mask_cache[key] = xp.where(causal_mask(xp, tq, tk), dtype.type(-np.inf), dtype.type(0))
    return m


def checked_mask(attn_mask, q: Tensor, scores_shape):
    """The mask on q's device (an array, or the Tensor itself when it needs a gradient), checked against the scores."""
    if attn_mask is None:
        return None
    if not isinstance(attn_mask, Tensor):
        m = attn_mask if hasattr(attn_mask, "dtype") else np.asarray(attn_mask)
        attn_mask = Tensor(m) if m.dtype != bool else m
    m = attn_mask.data if isinstance(attn_mask, Tensor) else attn_mask
    if m.dtype != bool and not dtypes.is_float(m.dtype):
        raise TypeError(f"scaled_dot_product_attention: attn_mask must be boolean or float, got dtype {m.dtype}")
    try:
        if np.broadcast_shapes(m.shape, scores_shape) != tuple(scores_shape):
            raise ValueError
    except ValueError:
        raise ValueError(f"scaled_dot_product_attention: attn_mask of shape {m.shape} does not broadcast to the "
                         f"scores {tuple(scores_shape)} (B, H, Tq, Tk)") from None
    if backend.device_of(m) != q.device:
        m = backend.to_device(m, q.device)
        attn_mask = Tensor(m) if isinstance(attn_mask, Tensor) else m
    if isinstance(attn_mask, Tensor) and not attn_mask.requires_grad and m.dtype != q.dtype:
        attn_mask = Tensor(m.astype(q.dtype))
    return attn_mask


def repeat_heads(x: Tensor, n: int) -> Tensor:
    """(B, K, T, D) -> (B, K n, T, D): each head repeated n times in a row (head j serves query heads j n .. )."""
    b, kh, t, d = x.shape
    return x.reshape(b, kh, 1, t, d).broadcast_to((b, kh, n, t, d)).reshape(b, kh * n, t, d)


def additive_mask(mask, dtype):
    """The mask as an additive array of ``dtype``: a boolean one (True = may attend) becomes 0 / -inf."""
    m = mask.data if isinstance(mask, Tensor) else mask
    if m.dtype != bool:
        return m
    return backend.xp_of(m).where(m, np.dtype(dtype).type(0), np.dtype(dtype).type(-np.inf))


# ------------------------------------------------------------------------------------------------ composed reference
def attention_reference(q: Tensor, k: Tensor, v: Tensor, attn_mask=None, is_causal: bool = False,
                        scale: float | None = None, dropout: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """softmax(q k^T * scale + mask) v from primitive ops. ``attn_mask``: boolean (True = may attend) or additive
    float (a Tensor or array broadcastable to (B, H, Tq, Tk)); ``dropout``: applied to the probabilities."""
    scale = 1.0 / float(np.sqrt(q.shape[-1])) if scale is None else scale
    s = (q @ k.swapaxes(-1, -2)) * scale
    xp = backend.xp_of(q.data)
    if is_causal:
        s = Where.apply(-np.inf, s, cond=causal_mask(xp, q.shape[-2], k.shape[-2]))
    if attn_mask is not None:
        m = attn_mask.data if isinstance(attn_mask, Tensor) else attn_mask
        if m.dtype == bool:
            s = Where.apply(-np.inf, s, cond=xp.broadcast_to(~m, s.shape))
        else:
            s = s + attn_mask
    p = softmax_reference(s, axis=-1)
    if dropout is not None:
        p = dropout(p)
    return p @ v


# ------------------------------------------------------------------------------------------------ NumPy
def _matmul(a, b):
    kernel = kernel_for("matmul", a)
    return kernel(a, b) if kernel is not None else dtypes.widened(backend.xp_of(a).matmul, a, b)


def attention_forward(q, k, v, causal, scale, bias=None):
    """(o, p): o in v's dtype, p (B, H, Tq, Tk) the probabilities in float32 at least. ``bias``: an additive mask
    broadcastable to the scores, or None."""
    xp = backend.xp_of(q)
    acc = backend.acc_dtype(q.dtype)
    s = _matmul(q * q.dtype.type(scale), k.swapaxes(-1, -2))   # q scaled first: (Tq, D) is smaller than (Tq, Tk)
    if s.dtype != acc:
        s = s.astype(acc)
    if causal and q.shape[-2] > 1:   # a single query (decoding with a KV cache) sees every key: nothing to mask
        s += _causal_bias(xp, q.shape[-2], k.shape[-2], np.dtype(acc))
    if bias is not None:
        s += bias
    s -= s.max(axis=-1, keepdims=True)
    xp.exp(s, out=s)
    s /= s.sum(axis=-1, keepdims=True)
    return _matmul(s.astype(v.dtype, copy=False), v), s


def attention_backward(q, k, v, o, p, do, scale):
    """(dq, dk, dv) from the saved probabilities p."""
    acc = p.dtype
    dv = _matmul(p.astype(q.dtype, copy=False).swapaxes(-1, -2), do)
    ds = _matmul(do, v.swapaxes(-1, -2))
    if ds.dtype != acc:
        ds = ds.astype(acc)
    ds -= (do.astype(acc, copy=False) * o.astype(acc, copy=False)).sum(axis=-1, keepdims=True)
    ds *= p
    ds *= scale
    ds = ds.astype(q.dtype, copy=False)
    return _matmul(ds, k), _matmul(ds.swapaxes(-1, -2), q), dv.astype(v.dtype, copy=False)


# ------------------------------------------------------------------------------------------------ the fused op
def _repeat_kv(x, rep: int):
    """(B, Hk, T, D) array -> (B, Hk rep, T, D), each head repeated for the query heads it serves."""
    return x if rep == 1 else backend.xp_of(x).repeat(x, rep, axis=1)


def _sum_groups(g, rep: int):
    """(B, Hk rep, T, D) gradient -> (B, Hk, T, D), summed over each head's query heads."""
    if rep == 1:
        return g
    b, h, t, d = g.shape
    return g.reshape(b, h // rep, rep, t, d).sum(axis=2)


class Attention(FusedFunction):
    """o = attention(q, k, v) in one node; ``bias`` an additive mask array (constant) or None. k and v may have
    fewer heads than q (each serves H / Hk query heads). ``dropout_p`` > 0 (GPU kernels only): the probabilities
    are dropped inside the kernels with the mask that ``drop_state`` ([seed, offset] of a Philox generator, kept
    for backward) stands for, the same mask the composed path's dropout would draw from that state."""
    rule = ("d attention: dv = p^T do, ds = p (do v^T - rowsum(do o)) scale, dq = ds k, dk = ds^T q "
            "(p after dropout in dv; dp dropped likewise)")
    params = ("causal", "scale", "bias", "dropout_p", "drop_state")
    bias = None
    dropout_p = 0.0
    drop_state = None
    save_outputs = True

    def forward(self, q, k, v):
        rep = q.shape[1] // k.shape[1]
        kernel = kernel_for("attention_forward", q) if self.bias is None else None
        if kernel is not None:
            self.p = None
            o, self.lse = kernel(q, k, v, self.causal, self.scale, self.dropout_p, self.drop_state)
            return o
        if self.dropout_p > 0.0:
            raise ValueError("attention: dropout inside the fused op needs the GPU kernels; "
                             "F.scaled_dot_product_attention takes the composed path otherwise")
        o, self.p = attention_forward(q, _repeat_kv(k, rep), _repeat_kv(v, rep), self.causal, self.scale, self.bias)
        return o

    def backward_arrays(self, do):
        q, k, v = (t.data for t in self.inputs)
        o = self._out_arrays[0]
        if self.p is None:
            grads = kernel_for("attention_backward", q)(q, k, v, o, self.lse, do.data, self.causal, self.scale,
                                                        self.dropout_p, self.drop_state)
        else:
            rep = q.shape[1] // k.shape[1]
            dq, dk, dv = attention_backward(q, _repeat_kv(k, rep), _repeat_kv(v, rep), o, self.p, do.data,
                                            self.scale)
            grads = dq, _sum_groups(dk, rep), _sum_groups(dv, rep)
        return tuple(Tensor(g) if need else None for g, need in zip(grads, self.needs_input_grad))

    def reference(self, q, k, v):
        rep = q.shape[1] // k.shape[1]
        if rep > 1:
            k, v = repeat_heads(k, rep), repeat_heads(v, rep)
        drop = None
        if self.dropout_p > 0.0:
            from ...cuda.philox import keep_mask_at
            keep = keep_mask_at(self.drop_state, (q.shape[0], q.shape[1], q.shape[2], k.shape[2]), self.dropout_p)
            mask = keep.astype(q.dtype)
            mask *= q.dtype.type(1.0 / (1.0 - self.dropout_p))
            drop = lambda p: dropout_reference(p, mask)   # noqa: E731
        return attention_reference(q, k, v, self.bias, self.causal, self.scale, dropout=drop)
