"""Softmax and softmax + cross-entropy over the last axis as row kernels (one block per row).

Softmax forward: each thread keeps an online (max, sum of exp) pair over its elements (one read), the block combines
the pairs, then the row is written (a second read, from L1/L2). Backward: gx = y (gy - sum(gy y)).

Cross-entropy forward: the same online pass gives lse = max + log(sum exp) per row and loss_row = lse - x[target];
rows whose target is ignore_index give 0. Backward writes scale * (exp(x - lse) - onehot) straight into dlogits (one
read of the logits, one write; no probabilities or one-hot arrays), zero rows for ignored targets. An out-of-range
target gives a NaN loss (checked on the device, so no host sync).
"""
from __future__ import annotations

import numpy as np

from ._common import LazyModule, acc_dtype, contiguous, ctypes_of, require_cupy, row_threads
from .registry import register

_SRC = r"""
// cap tanh(v / cap), Gemma's final-logit soft cap; v itself for cap 0
template <typename A> __device__ __forceinline__ A soft_cap(A v, A cap) { return cap > 0 ? cap * tanh(v / cap) : v; }

// online (m, s) over a strided row slice (soft-capped when cap > 0), then combined over the block: returns (M, S)
// in every thread
template <typename T, typename A>
__device__ void row_max_sumexp(const T* xr, int C, A* red, A& M, A& S, A cap = 0) {
    const A ninf = (A)neg_inf_f();
    A m = ninf, s = 0;
    for (int i = threadIdx.x; i < C; i += blockDim.x) {
        const A v = soft_cap(ld(xr, i), cap);
        if (v > m) { s = s * exp(m - v) + (A)1; m = v; }
        else if (v > ninf) s += exp(v - m);
    }
    M = block_max(m, red);
    s = (m == ninf) ? (A)0 : s * exp(m - M);
    S = block_sum(s, red);
}

template <typename T, typename A>
__global__ void softmax_fwd(const T* __restrict__ x, T* __restrict__ y, int C) {
    __shared__ A red[32];
    const T* xr = x + (i64)blockIdx.x * C;
    T* yr = y + (i64)blockIdx.x * C;
    A M, S;
    row_max_sumexp<T, A>(xr, C, red, M, S);
    const A inv = (A)1 / S;
    for (int i = threadIdx.x; i < C; i += blockDim.x) st(yr, i, exp(ld(xr, i) - M) * inv);
}

// rows of at most 32 * VPT elements: one warp per row, held in registers (one read, one write)
template <typename T, typename A, int VPT>
__global__ void softmax_fwd_warp(const T* __restrict__ x, T* __restrict__ y, i64 N, int C) {
    const int lane = threadIdx.x & 31;
    const i64 row = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= N) return;
    const T* xr = x + row * C;
    T* yr = y + row * C;
    const A ninf = (A)neg_inf_f();
    A v[VPT];
    A m = ninf;
#pragma unroll
    for (int j = 0; j < VPT; ++j) {
        const int i = lane + 32 * j;
        v[j] = i < C ? ld(xr, i) : ninf;
        m = v[j] > m ? v[j] : m;
    }
    m = warp_max(m);
    A s = 0;
#pragma unroll
    for (int j = 0; j < VPT; ++j) { v[j] = v[j] > ninf ? exp(v[j] - m) : (A)0; s += v[j]; }
    const A inv = (A)1 / warp_sum(s);
#pragma unroll
    for (int j = 0; j < VPT; ++j) {
        const int i = lane + 32 * j;
        if (i < C) st(yr, i, v[j] * inv);
    }
}

template <typename T, typename A, int VPT>
__global__ void softmax_bwd_warp(const T* __restrict__ y, const T* __restrict__ gy, T* __restrict__ gx,
                                 i64 N, int C) {
    const int lane = threadIdx.x & 31;
    const i64 row = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= N) return;
    const i64 off = row * C;
    A yv[VPT], gv[VPT];
    A s = 0;
#pragma unroll
    for (int j = 0; j < VPT; ++j) {
        const int i = lane + 32 * j;
        yv[j] = i < C ? ld(y + off, i) : (A)0;
        gv[j] = i < C ? ld(gy + off, i) : (A)0;
        s += yv[j] * gv[j];
    }
    s = warp_sum(s);
#pragma unroll
    for (int j = 0; j < VPT; ++j) {
        const int i = lane + 32 * j;
        if (i < C) st(gx + off, i, yv[j] * (gv[j] - s));
    }
}

template <typename T, typename A>
__global__ void softmax_bwd(const T* __restrict__ y, const T* __restrict__ gy, T* __restrict__ gx, int C) {
    __shared__ A red[32];
    const i64 off = (i64)blockIdx.x * C;
    A s = 0;
    for (int i = threadIdx.x; i < C; i += blockDim.x) s += ld(y + off, i) * ld(gy + off, i);
    s = block_sum(s, red);
    for (int i = threadIdx.x; i < C; i += blockDim.x) {
        const A yv = ld(y + off, i);
        st(gx + off, i, yv * (ld(gy + off, i) - s));
    }
}

template <typename T, typename A>
__global__ void xent_fwd(const T* __restrict__ x, const i64* __restrict__ tgt, A* __restrict__ loss,
                         A* __restrict__ lse, int V, i64 ignore_index) {
    __shared__ A red[32];
    const i64 row = blockIdx.x;
    const T* xr = x + row * V;
    A M, S;
    row_max_sumexp<T, A>(xr, V, red, M, S);
    if (threadIdx.x == 0) {
        const A l = M + log(S);
        lse[row] = l;
        const i64 t = tgt[row];
        A out;
        if (t == ignore_index) out = 0;
        else if (t < 0 || t >= V) out = (A)__int_as_float(0x7fc00000);   // NaN: bad target
        else out = l - ld(xr, t);
        loss[row] = out;
    }
}

template <typename T, typename A>
__global__ void xent_bwd(const T* __restrict__ x, const i64* __restrict__ tgt, const A* __restrict__ lse,
                         T* __restrict__ dx, int V, i64 ignore_index, const A* __restrict__ scale_ptr,
                         double scale_val) {
    const i64 row = blockIdx.x;
    const T* xr = x + row * V;
    T* dr = dx + row * V;
    const i64 t = tgt[row];
    if (t == ignore_index) {
        for (int i = threadIdx.x; i < V; i += blockDim.x) st(dr, i, (A)0);
        return;
    }
    const A sc = scale_ptr ? scale_ptr[0] : (A)scale_val;
    const A l = lse[row];
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        A p = exp(ld(xr, i) - l);
        if (i == t) p -= (A)1;
        st(dr, i, sc * p);
    }
}

// Loss rows and, when dx is given, dx = gscale (softmax(z) - onehot) [* (1 - (z / cap)^2)] for z = soft_cap(x):
// the linear + cross-entropy op's chunk. dx may be x itself (same type: each element is read, then written by
// one thread; x[target] is read before the barrier that precedes the writes), so neither pointer is restrict.
template <typename TI, typename TO, typename A>
__global__ void xent_rows(const TI* x, TO* dx, const i64* __restrict__ tgt, A* __restrict__ loss, int V,
                          i64 ignore_index, A cap, A gscale) {
    __shared__ A red[32];
    const i64 row = blockIdx.x;
    const TI* xr = x + row * V;
    A M, S;
    row_max_sumexp<TI, A>(xr, V, red, M, S, cap);
    const A l = M + log(S);
    const i64 t = tgt[row];
    if (threadIdx.x == 0) {
        A out;
        if (t == ignore_index) out = 0;
        else if (t < 0 || t >= V) out = (A)__int_as_float(0x7fc00000);   // NaN: bad target
        else out = l - soft_cap(ld(xr, t), cap);
        loss[row] = out;
    }
    if (dx == nullptr) return;
    __syncthreads();
    TO* dr = dx + row * V;
    if (t == ignore_index) {
        for (int i = threadIdx.x; i < V; i += blockDim.x) st(dr, i, (A)0);
        return;
    }
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        const A z = soft_cap(ld(xr, i), cap);
        A p = exp(z - l);
        if (i == t) p -= (A)1;
        if (cap > 0) { const A r = z / cap; p *= (A)1 - r * r; }
        st(dr, i, gscale * p);
    }
}
"""

_TARGS = ["float,float", "half_t,float", "bf16_t,float", "double,double"]
_ROWS = ["float,float,float", "float,half_t,float", "float,bf16_t,float", "double,double,double"]
_VPT = (4, 8, 16, 32)   # warp-per-row kernels for rows of at most 32 * VPT elements
_WARP = [f"{t},{v}" for t in _TARGS for v in _VPT]
_mod = LazyModule(_SRC, {"softmax_fwd": _TARGS, "softmax_bwd": _TARGS, "xent_fwd": _TARGS, "xent_bwd": _TARGS,
                         "softmax_fwd_warp": _WARP, "softmax_bwd_warp": _WARP, "xent_rows": _ROWS})


def _row_launch(name, dtype, N, C, args):
    """Warp-per-row kernel for C <= 1024, else one block per row."""
    if C <= 32 * _VPT[-1]:
        vpt = next(v for v in _VPT if C <= 32 * v)
        k = _mod.kernel(name + "_warp", f"{_targs(dtype)},{vpt}")
        k(((N + 3) // 4,), (128,), args + (np.int64(N), np.int32(C)))
    else:
        _mod.kernel(name, _targs(dtype))((N,), (row_threads(C, 8),), args + (np.int32(C),))


def _targs(dtype) -> str:
    t, a = ctypes_of(dtype)
    return f"{t},{a}"


def softmax_forward(x):
    """Softmax over the last axis; same shape and dtype as x (accumulation in float32 at least)."""
    cp = require_cupy()
    x = contiguous(x)
    C = x.shape[-1] if x.ndim else 1
    N = x.size // C if C else 0
    y = cp.empty_like(x)
    if N:
        _row_launch("softmax_fwd", x.dtype, N, C, (x, y))
    return y


def softmax_backward(y, gy):
    """gx = y * (gy - sum(gy * y)) over the last axis."""
    cp = require_cupy()
    y = contiguous(y)
    gy = contiguous(gy.astype(y.dtype, copy=False))
    C = y.shape[-1] if y.ndim else 1
    N = y.size // C if C else 0
    gx = cp.empty_like(y)
    if N:
        _row_launch("softmax_bwd", y.dtype, N, C, (y, gy, gx))
    return gx


def _xent_args(op, logits, targets):
    """(logits, targets as int64, accumulation dtype), both C-contiguous; a clear error for other shapes/dtypes."""
    if logits.ndim != 2 or targets.shape != (logits.shape[0],):
        raise ValueError(f"{op}: need logits (N, V) and targets (N,), got {logits.shape} and {targets.shape}")
    if targets.dtype.kind not in "iu":
        raise TypeError(f"{op}: targets must be integers, got {targets.dtype}")
    return contiguous(logits), contiguous(targets.astype(np.int64, copy=False)), acc_dtype(logits.dtype)


def cross_entropy_forward(logits, targets, ignore_index):
    """(loss_sum, lse, count): logits (N, V), targets (N,) int. loss_sum 0-d (float32, float64 for float64 logits)."""
    cp = require_cupy()
    logits, tg, acc = _xent_args("cross_entropy_forward", logits, targets)
    N, V = logits.shape
    loss = cp.empty((N,), acc)
    lse = cp.empty((N,), acc)
    if N:
        _mod.kernel("xent_fwd", _targs(logits.dtype))(
            (N,), (row_threads(V, 8),), (logits, tg, loss, lse, np.int32(V), np.int64(ignore_index)))
    from .graph import is_capturing
    if is_capturing():   # a CUDA graph cannot read the count back: a device value >= 1 (same mean: see CrossEntropy)
        count = cp.maximum(cp.count_nonzero(tg != ignore_index), 1).astype(acc)
    else:
        count = int(cp.count_nonzero(tg != ignore_index)) if N else 0
    return loss.sum(), lse, count


def cross_entropy_backward(logits, targets, lse, scale, ignore_index):
    """dlogits (N, V) = scale * (softmax(logits) - onehot(targets)); zero rows where the target is ignored.

    scale: a number or a 0-d/1-element CuPy array (read on the device, no sync)."""
    cp = require_cupy()
    logits, tg, acc = _xent_args("cross_entropy_backward", logits, targets)
    N, V = logits.shape
    lse = contiguous(lse.astype(acc, copy=False))
    dx = cp.empty_like(logits)
    if isinstance(scale, cp.ndarray):
        scale_arr = contiguous(scale.astype(acc, copy=False).reshape(-1)[:1])
        scale_val = 0.0
    else:
        scale_arr = None
        scale_val = float(scale)
    if N:
        _mod.kernel("xent_bwd", _targs(logits.dtype))(
            (N,), (row_threads(V, 8),),
            (logits, tg, lse, dx, np.int32(V), np.int64(ignore_index),
             scale_arr if scale_arr is not None else np.uint64(0), np.float64(scale_val)))
    return dx


def cross_entropy_rows(logits, targets, ignore_index, softcap, grad_scale, grad_dtype):
    """(losses, dlogits) of the linear + cross-entropy op's chunk: logits (n, V) float32 (float64) before the soft
    cap, targets (n,) int; losses (n,) 0 at ignored rows; dlogits (n, V) in ``grad_dtype`` (float32 is written over
    the logits, float16 / bfloat16 into a new array) = grad_scale (softmax - onehot) [* (1 - (z/cap)^2)], zero rows
    at ignored targets; None when ``grad_dtype`` is None. One block per row, two reads of the row, one write."""
    cp = require_cupy()
    logits, tg, acc = _xent_args("cross_entropy_rows", logits, targets)
    if logits.dtype != acc:
        raise TypeError(f"cross_entropy_rows: logits must be float32 or float64, got {logits.dtype}")
    N, V = logits.shape
    loss = cp.empty((N,), acc)
    dx = None
    if grad_dtype is not None:
        dx = logits if np.dtype(grad_dtype) == logits.dtype else cp.empty((N, V), grad_dtype)
    if N:
        t_in, a = ctypes_of(logits.dtype)
        t_out = ctypes_of(dx.dtype)[0] if dx is not None else t_in
        _mod.kernel("xent_rows", f"{t_in},{t_out},{a}")(
            (N,), (row_threads(V, 8),),
            (logits, dx if dx is not None else np.uint64(0), tg, loss, np.int32(V), np.int64(ignore_index),
             acc(softcap or 0.0), acc(grad_scale)))
    return loss, dx


register("softmax_forward", softmax_forward)
register("softmax_backward", softmax_backward)
register("cross_entropy_forward", cross_entropy_forward)
register("cross_entropy_backward", cross_entropy_backward)
register("cross_entropy_rows", cross_entropy_rows)
