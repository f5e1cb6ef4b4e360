"""Attention from cuBLAS batched GEMMs and fused row kernels (the reference GPU version).

q (B, H, Tq, D), k, v (B, H, Tk, D); causal aligns the last query with the last key: query i sees keys
j <= i + (Tk - Tq). This version materialises the (B, H, Tq, Tk) score matrix (one in the forward, two in the
backward), but touches it as few times as possible:
  forward:  S = q k^T (GEMM, k^T a view: no copy) -> one row kernel, in place: scale, causal mask, online
            max/sum-exp, P = softmax and lse per row -> o = P v (GEMM)
  backward: S = q k^T -> P = exp(scale S - lse), masked (in place) -> dv = P^T do, dP = do v^T (GEMMs)
            -> one row kernel, in place: dS = scale P (dP - sum_j P dP)  (sum_j P dP = rowsum(do * o))
            -> dq = dS k, dk = dS^T q (GEMMs)
The flash-attention kernels (the flash_attention package; flash_attention_tf32.py for float32 with TF32 on), when
they handle the case, are checked against this one.
"""
from __future__ import annotations

import numpy as np

from ._common import LazyModule, acc_dtype, ctypes_of, require_cupy, row_threads
from .matmul import matmul
from .registry import register

_SRC = r"""
// limit of allowed keys for the query of this row (keys j <= lim)
// (row0, off): the rows here are queries row0 .. row0 + Tq - 1, and query i sees keys j <= i + off
__device__ __forceinline__ int key_limit(i64 row, int Tq, int Tk, int causal, int row0, int off) {
    if (!causal) return Tk - 1;
    const int i = row0 + (int)(row % Tq);
    const int lim = i + off;
    return lim < Tk - 1 ? lim : Tk - 1;
}

template <typename T, typename A>
__global__ void attn_softmax(T* s, A* __restrict__ lse, int Tq, int Tk, double scale, int causal, int row0,
                             int off) {
    __shared__ A red[32];
    const i64 row = blockIdx.x;
    T* sr = s + row * Tk;
    const int lim = key_limit(row, Tq, Tk, causal, row0, off);
    const A ninf = (A)neg_inf_f(), sc = (A)scale;
    A m = ninf, sum = 0;
    for (int j = threadIdx.x; j <= lim; j += blockDim.x) {
        const A v = ld(sr, j) * sc;
        if (v > m) { sum = sum * exp(m - v) + (A)1; m = v; }
        else if (v > ninf) sum += exp(v - m);
    }
    const A M = block_max(m, red);
    sum = (m == ninf) ? (A)0 : sum * exp(m - M);
    const A S = block_sum(sum, red);
    const bool empty = !(S > (A)0);
    const A inv = empty ? (A)0 : (A)1 / S;
    for (int j = threadIdx.x; j < Tk; j += blockDim.x)
        st(sr, j, (j <= lim && !empty) ? exp(ld(sr, j) * sc - M) * inv : (A)0);
    if (threadIdx.x == 0) lse[row] = empty ? ninf : M + log(S);
}

template <typename T, typename A>
__global__ void attn_probs(T* s, const A* __restrict__ lse, int Tq, int Tk, double scale, int causal, int row0,
                           int off) {
    const i64 row = blockIdx.x;
    T* sr = s + row * Tk;
    const int lim = key_limit(row, Tq, Tk, causal, row0, off);
    const A l = lse[row], sc = (A)scale;
    const bool empty = !(l > (A)neg_inf_f());
    for (int j = threadIdx.x; j < Tk; j += blockDim.x)
        st(sr, j, (j <= lim && !empty) ? exp(ld(sr, j) * sc - l) : (A)0);
}

// dS = scale * P * (dP - sum_j P dP), written over dP
template <typename T, typename A>
__global__ void attn_dscores(const T* __restrict__ p, T* dp, int Tk, double scale) {
    __shared__ A red[32];
    const i64 off = (i64)blockIdx.x * Tk;
    A s = 0;
    for (int j = threadIdx.x; j < Tk; j += blockDim.x) s += ld(p + off, j) * ld(dp + off, j);
    s = block_sum(s, red);
    const A sc = (A)scale;
    for (int j = threadIdx.x; j < Tk; j += blockDim.x) {
        const A pv = ld(p + off, j);
        st(dp + off, j, sc * pv * (ld(dp + off, j) - s));
    }
}
"""

_TARGS = ["float,float", "half_t,float", "bf16_t,float", "double,double"]
_mod = LazyModule(_SRC, {"attn_softmax": _TARGS, "attn_probs": _TARGS, "attn_dscores": _TARGS})


def _targs(dtype) -> str:
    t, a = ctypes_of(dtype)
    return f"{t},{a}"


def _check(op, q, k, v, causal):
    if q.ndim < 2 or k.shape != v.shape or q.shape[:-2] != k.shape[:-2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"{op}: need q (..., Tq, D), k and v (..., Tk, D); got {q.shape}, {k.shape}, {v.shape}")
    if causal and q.shape[-2] > k.shape[-2]:
        raise ValueError(f"{op}: causal attention needs Tq <= Tk, got Tq={q.shape[-2]}, Tk={k.shape[-2]}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"{op}: q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    ctypes_of(q.dtype)


def attention_forward_matmul(q, k, v, causal, scale):
    """(o, lse) through GEMMs + one fused masked-softmax row kernel; lse (..., Tq) float32 (float64 for float64)."""
    cp = require_cupy()
    _check("attention_forward", q, k, v, causal)
    Tq, Tk = q.shape[-2], k.shape[-2]
    acc = acc_dtype(q.dtype)
    lse = cp.empty(q.shape[:-1], acc)
    s = matmul(q, k.swapaxes(-1, -2))
    rows = q.size // q.shape[-1] if q.shape[-1] else int(np.prod(q.shape[:-1]))
    if rows and Tk:
        _mod.kernel("attn_softmax", _targs(q.dtype))(
            (rows,), (row_threads(Tk, 8),), (s, lse, np.int32(Tq), np.int32(Tk), np.float64(scale),
                                             np.int32(bool(causal)), np.int32(0), np.int32(Tk - Tq)))
    o = matmul(s, v)
    return o, lse


def attention_backward_matmul(q, k, v, o, lse, do, causal, scale):
    """(dq, dk, dv) through GEMMs + two fused row kernels (probabilities from lse; dS)."""
    _check("attention_backward", q, k, v, causal)
    Tq, Tk = q.shape[-2], k.shape[-2]
    acc = acc_dtype(q.dtype)
    do = do.astype(q.dtype, copy=False)
    p = matmul(q, k.swapaxes(-1, -2))
    rows = int(np.prod(q.shape[:-1]))
    lse = require_cupy().ascontiguousarray(lse.astype(acc, copy=False))
    threads = row_threads(Tk, 8)
    if rows and Tk:
        _mod.kernel("attn_probs", _targs(q.dtype))(
            (rows,), (threads,), (p, lse, np.int32(Tq), np.int32(Tk), np.float64(scale), np.int32(bool(causal)),
                                  np.int32(0), np.int32(Tk - Tq)))
    dv = matmul(p.swapaxes(-1, -2), do)
    dp = matmul(do, v.swapaxes(-1, -2))
    if rows and Tk:
        _mod.kernel("attn_dscores", _targs(q.dtype))((rows,), (threads,), (p, dp, np.int32(Tk), np.float64(scale)))
    dq = matmul(dp, k)
    dk = matmul(dp.swapaxes(-1, -2), q)
    return dq, dk, dv


def _full_heads(q, kv):
    """k or v (B, Hk, Tk, D) with each head repeated for the H / Hk query heads it serves (B, H, Tk, D)."""
    rep = q.shape[1] // kv.shape[1] if q.ndim == 4 and kv.ndim == 4 and kv.shape[1] else 1
    return kv if rep == 1 else require_cupy().repeat(kv, rep, axis=1)


def _group_sum(g, heads: int):
    """(B, H, Tk, D) gradients summed over each group of query heads -> (B, heads, Tk, D)."""
    if g.ndim != 4 or g.shape[1] == heads:
        return g
    b, h, t, d = g.shape
    return g.reshape(b, heads, h // heads, t, d).sum(axis=2)


def supports_dropout(q, k, v) -> bool:
    """Whether attention can drop probabilities inside the kernels (flash forward and backward)."""
    from . import flash_attention as fa
    return fa.supports(q, k, v) and fa.supports_backward(q, k, v)


def attention_forward(q, k, v, causal, scale, dropout_p: float = 0.0, drop_state=None):
    """(o, lse): o (..., Tq, D) in q's dtype, lse (..., Tq) float32 (float64 for float64 inputs). k and v may
    have fewer heads than q (grouped-query attention); ``dropout_p`` > 0 needs ``supports_dropout``."""
    from . import flash_attention as fa, flash_attention_tf32 as ft
    if fa.supports(q, k, v):
        return fa.flash_forward(q, k, v, causal, scale, dropout_p, drop_state)
    if dropout_p > 0.0:
        raise ValueError(f"attention_forward: dropout inside the kernel needs float16/bfloat16 q, k, v with D in "
                         f"32/64/96/128, got {q.dtype} D={q.shape[-1]}")
    k, v = _full_heads(q, k), _full_heads(q, v)
    if ft.supports(q, k, v):   # float32 with TF32 on
        return ft.flash_forward(q, k, v, causal, scale)
    return attention_forward_matmul(q, k, v, causal, scale)


def attention_backward(q, k, v, o, lse, do, causal, scale, dropout_p: float = 0.0, drop_state=None):
    """(dq, dk, dv) in the inputs' dtype and shapes (dk, dv summed over the query heads of a group)."""
    from . import flash_attention as fa, flash_attention_tf32 as ft
    if fa.supports_backward(q, k, v):
        return fa.flash_backward(q, k, v, o, lse, do, causal, scale, dropout_p, drop_state)
    if dropout_p > 0.0:
        raise ValueError("attention_backward: dropout inside the kernel needs the flash backward")
    heads = k.shape[1] if k.ndim == 4 else None
    k, v = _full_heads(q, k), _full_heads(q, v)
    if heads is not None and heads != k.shape[1]:
        dq, dk, dv = attention_backward(q, k, v, o, lse, do, causal, scale)
        return dq, _group_sum(dk, heads), _group_sum(dv, heads)
    if ft.supports(q, k, v):
        return ft.flash_backward(q, k, v, o, lse, do, causal, scale)
    return attention_backward_matmul(q, k, v, o, lse, do, causal, scale)


register("attention_forward", attention_forward)
register("attention_backward", attention_backward)
register("attention_supports_dropout", supports_dropout)
