"""Softmax and softmax + cross-entropy over the last axis as row kernels (one block per row; a warp per row for
softmax rows of at most 1024).

Block-per-row kernels stream the row as 16-byte vectors (a scalar head up to the first 16-byte boundary and a scalar
tail, so any length and offset works; rows whose other operands sit at another offset go element by element), _U
vectors in flight per thread. Exponentials in float32 are one EX2 each (``ExpFrom``), float64 ones exact.

Softmax forward: each thread keeps an online (max, sum of exp) pair over its elements, rescaled once per _U vectors
(one read), the block combines the pairs, then the row is written (a second read, from L1/L2). Backward:
gx = y (gy - sum(gy y)).

Cross-entropy forward: the same online pass gives lse = max + log(sum exp) per row and loss_row = lse - x[target];
rows whose target is ignore_index give 0. Backward writes scale * (exp(x - lse) - onehot) straight into dlogits (one
read of the logits, one write; no probabilities or one-hot arrays), zero rows for ignored targets. An out-of-range
target gives a NaN loss (checked on the device, so no host sync); a NaN logit gives a NaN row.
"""
from __future__ import annotations

import numpy as np

from ._common import FAST_MATH, VECTOR_IO, LazyModule, acc_dtype, contiguous, ctypes_of, require_cupy, row_threads
from .registry import register

_SRC = VECTOR_IO + FAST_MATH + r"""
// cap tanh(v / cap), Gemma's final-logit soft cap; v itself for cap 0
template <typename A> __device__ __forceinline__ A soft_cap(A v, A cap) { return cap > 0 ? cap * tanh(v / cap) : v; }

// exp(x - m) for one m. float: 2^((x - m) log2(e)) by one EX2 (relative error ~2^-22 + |x - m| 2^-24; expf costs
// ~10 instructions, and the row kernels take one exp per element); double: exact. m = -inf (a row of -inf) counts as
// 0, so each exp is 0, not NaN.
template <typename A> struct ExpFrom;
template <> struct ExpFrom<float> {
    float m;
    __device__ explicit ExpFrom(float m_) : m(m_ > neg_inf_f() ? m_ : 0.0f) {}
    __device__ float operator()(float x) const { return exp2_fast((x - m) * 1.4426950408889634f); }
};
template <> struct ExpFrom<double> {
    double m;
    __device__ explicit ExpFrom(double m_) : m(m_ > (double)neg_inf_f() ? m_ : 0.0) {}
    __device__ double operator()(double x) const { return exp(x - m); }
};

__device__ __forceinline__ float vmax(float a, float b) { return fmaxf(a, b); }   // a NaN never wins
__device__ __forceinline__ double vmax(double a, double b) { return fmax(a, b); }

// (m, s) = a thread's running max and sum of exp(v - m); K more values join with one rescale (a NaN value does not
// win the max, so it reaches the sum). Four partial maxima and sums: short dependent chains.
template <typename A, int K> __device__ __forceinline__ void online_add(A& m, A& s, const A* v) {
    constexpr int P = K < 4 ? K : 4;
    A b[P];
#pragma unroll
    for (int p = 0; p < P; ++p) b[p] = v[p];
#pragma unroll
    for (int k = P; k < K; ++k) b[k % P] = vmax(b[k % P], v[k]);
#pragma unroll
    for (int p = 1; p < P; ++p) b[0] = vmax(b[0], b[p]);
    const A mx = vmax(m, b[0]);
    const ExpFrom<A> e(mx);
    A t[P];
#pragma unroll
    for (int p = 0; p < P; ++p) t[p] = e(v[p]);
#pragma unroll
    for (int k = P; k < K; ++k) t[k % P] += e(v[k]);
    A r = s * e(m);
#pragma unroll
    for (int p = 0; p < P; ++p) r += t[p];
    m = mx;
    s = r;
}

// A row of n elements split for W-element vectors: a scalar head up to p's first 16-byte boundary, nvec whole
// vectors, a scalar tail (head + tail < 2W elements). Another row read or written at the same indices must be
// vector-aligned there too (also()), else the whole row goes element by element (nvec = 0).
template <int W> struct RowSplit {
    int head, nvec, n;
    template <typename T> __device__ RowSplit(const T* p, int n_) : n(n_) {
        const unsigned mis = (unsigned)(reinterpret_cast<unsigned long long>(p) & 15);
        head = mis % sizeof(T) ? n : (int)(((16 - mis) & 15) / sizeof(T));
        head = head < n ? head : n;
        nvec = (n - head) / W;
    }
    template <typename T> __device__ void also(const T* q) {
        if (reinterpret_cast<unsigned long long>(q + head) % (W * sizeof(T))) { head = n; nvec = 0; }
    }
    __device__ int vec(int j) const { return head + j * W; }             // first index of vector j
    __device__ int nscalar() const { return n - nvec * W; }
    __device__ int scalar(int k) const { return k < head ? k : k + nvec * W; }   // index of scalar k
};

// Visits a row with the block. Each step of a thread loads U vectors blockDim.x apart (v[u] = vector j0 + u
// blockDim.x of x, g[u] the same of x2 when TWO) before fv(j0, v, g, cnt) sees them; the first cnt are present (U
// in every step but a thread's last). Then fs(i, a, b) for each scalar (a = x[i], b = x2[i], or 0 without TWO).
template <typename A, int U, int W, bool TWO, typename T, typename FV, typename FS>
__device__ __forceinline__ void row_visit(const RowSplit<W>& sp, const T* x, const T* x2, FV&& fv, FS&& fs) {
    A v[U][W], g[TWO ? U : 1][W];
    int j0 = threadIdx.x;
    for (; j0 + (U - 1) * (int)blockDim.x < sp.nvec; j0 += U * blockDim.x) {   // all U present: no predicates
#pragma unroll
        for (int u = 0; u < U; ++u) {
            ldv<W>(x, sp.vec(j0 + u * blockDim.x), v[u]);
            if constexpr (TWO) ldv<W>(x2, sp.vec(j0 + u * blockDim.x), g[u]);
        }
        fv(j0, v, g, U);
    }
    if (j0 < sp.nvec) {
        const int cnt = (sp.nvec - j0 + blockDim.x - 1) / blockDim.x;
#pragma unroll
        for (int u = 0; u < U; ++u) {
            if (u < cnt) {
                ldv<W>(x, sp.vec(j0 + u * blockDim.x), v[u]);
                if constexpr (TWO) ldv<W>(x2, sp.vec(j0 + u * blockDim.x), g[u]);
            }
        }
        fv(j0, v, g, cnt);
    }
    for (int k = threadIdx.x; k < sp.nscalar(); k += blockDim.x) {
        const int i = sp.scalar(k);
        fs(i, (A)ld(x, i), TWO ? (A)ld(x2, i) : (A)0);
    }
}

// out[i] over a row of n elements from x[i] (and x2[i] when TWO; x2 is unused otherwise) by f(i0, v, g): v holds
// x[i0 .. i0 + K) (K = W, or 1 for a scalar) and is replaced by the outputs, g holds x2's (v itself without TWO).
// out may be x: each element is read and then written by the same thread.
template <typename A, int U, bool TWO, typename TI, typename TO, typename F>
__device__ __forceinline__ void row_map(const TI* x, const TI* x2, TO* out, int n, F&& f) {
    constexpr int W = 16 / sizeof(TI);
    RowSplit<W> sp(x, n);
    sp.also(out);
    if (TWO) sp.also(x2);
    row_visit<A, U, W, TWO>(sp, x, x2,
        [&](int j0, A (&v)[U][W], A (&g)[TWO ? U : 1][W], int cnt) {
#pragma unroll
            for (int u = 0; u < U; ++u) {
                if (u >= cnt) break;
                const int i0 = sp.vec(j0 + u * blockDim.x);
                if constexpr (TWO) f(i0, v[u], g[u]); else f(i0, v[u], v[u]);
                stv<W>(out, i0, v[u]);
            }
        },
        [&](int i, A a, A b) {
            A va[1] = {a}, vb[1] = {b};
            f(i, va, vb);
            st(out, i, va[0]);
        });
}

// out[i] = value over a row of n elements
template <typename A, int U, typename TO> __device__ __forceinline__ void row_fill(TO* out, int n, A value) {
    constexpr int W = 16 / sizeof(TO);
    const RowSplit<W> sp(out, n);
    A v[W];
#pragma unroll
    for (int k = 0; k < W; ++k) v[k] = value;
    for (int j = threadIdx.x; j < sp.nvec; j += blockDim.x) stv<W>(out, sp.vec(j), v);
    for (int k = threadIdx.x; k < sp.nscalar(); k += blockDim.x) st(out, sp.scalar(k), value);
}

// v[0 .. K) -= 1 at index t - i0 (the one-hot of a target t), when that falls inside: one compare per K values
template <typename A, int K> __device__ __forceinline__ void minus_onehot(A (&v)[K], int i0, int t) {
    const unsigned r = (unsigned)(t - i0);
    if (r < (unsigned)K) {
#pragma unroll
        for (int k = 0; k < K; ++k) v[k] -= k == (int)r ? (A)1 : (A)0;
    }
}

// online (m, s) over the row (soft-capped when cap > 0), then combined over the block: returns (M, S) in every
// thread
template <typename T, typename A, int U>
__device__ void row_max_sumexp(const T* xr, int n, A* red, A& M, A& S, A cap = 0) {
    constexpr int W = 16 / sizeof(T);
    const A ninf = (A)neg_inf_f();
    A m = ninf, s = 0;
    row_visit<A, U, W, false>(RowSplit<W>(xr, n), xr, xr,
        [&](int, A (&v)[U][W], A (&)[1][W], int cnt) {
            if (cap > 0) {
#pragma unroll
                for (int u = 0; u < U; ++u)
#pragma unroll
                    for (int k = 0; k < W; ++k) v[u][k] = soft_cap(v[u][k], cap);
            }
#pragma unroll
            for (int u = 0; u < U; ++u)
#pragma unroll
                for (int k = 0; k < W; ++k) v[u][k] = u < cnt ? v[u][k] : ninf;
            online_add<A, U * W>(m, s, &v[0][0]);
        },
        [&](int, A a, A) { a = soft_cap(a, cap); online_add<A, 1>(m, s, &a); });
    M = block_max(m, red);
    s *= ExpFrom<A>(M)(m);
    S = block_sum(s, red);
}

template <typename T, typename A, int U>
__global__ void softmax_fwd(const T* __restrict__ x, T* __restrict__ y, int C) {
    __shared__ A red[32];
    const T* xr = x + (i64)blockIdx.x * C;
    A M, S;
    row_max_sumexp<T, A, U>(xr, C, red, M, S);
    const A inv = (A)1 / S;
    const ExpFrom<A> e(M);
    row_map<A, U, false>(xr, xr, y + (i64)blockIdx.x * C, C, [&](int, auto& v, auto&) {
#pragma unroll
        for (auto& a : v) a = e(a) * inv;
    });
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
    const ExpFrom<A> e(m);
    A s = 0;
#pragma unroll
    for (int j = 0; j < VPT; ++j) { v[j] = e(v[j]); s += v[j]; }
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

template <typename T, typename A, int U>
__global__ void softmax_bwd(const T* __restrict__ y, const T* __restrict__ gy, T* __restrict__ gx, int C) {
    constexpr int W = 16 / sizeof(T);
    __shared__ A red[32];
    const i64 off = (i64)blockIdx.x * C;
    RowSplit<W> sp(y + off, C);
    sp.also(gy + off);
    A s = 0;
    row_visit<A, U, W, true>(sp, y + off, gy + off,
        [&](int, A (&v)[U][W], A (&g)[U][W], int cnt) {
#pragma unroll
            for (int u = 0; u < U; ++u)
#pragma unroll
                for (int k = 0; k < W; ++k) s += u < cnt ? v[u][k] * g[u][k] : (A)0;
        },
        [&](int, A a, A b) { s += a * b; });
    s = block_sum(s, red);
    row_map<A, U, true>(y + off, gy + off, gx + off, C, [&](int, auto& v, auto& g) {
#pragma unroll
        for (int k = 0; k < (int)(sizeof(v) / sizeof(v[0])); ++k) v[k] *= g[k] - s;
    });
}

template <typename T, typename A, int U>
__global__ void xent_fwd(const T* __restrict__ x, const i64* __restrict__ tgt, A* __restrict__ loss,
                         A* __restrict__ lse, int V, i64 ignore_index) {
    __shared__ A red[32];
    const i64 row = blockIdx.x;
    const T* xr = x + row * V;
    const i64 t = tgt[row];
    A xt = 0;   // x[target], loaded first so that its latency hides under the row pass
    if (threadIdx.x == 0 && t != ignore_index && t >= 0 && t < V) xt = ld(xr, t);
    A M, S;
    row_max_sumexp<T, A, U>(xr, V, red, M, S);
    if (threadIdx.x == 0) {
        const A l = M + log(S);
        lse[row] = l;
        A out;
        if (t == ignore_index) out = 0;
        else if (t < 0 || t >= V) out = (A)__int_as_float(0x7fc00000);   // NaN: bad target
        else out = l - xt;
        loss[row] = out;
    }
}

template <typename T, typename A, int U>
__global__ void xent_bwd(const T* __restrict__ x, const i64* __restrict__ tgt, const A* __restrict__ lse,
                         T* __restrict__ dx, int V, i64 ignore_index, const A* __restrict__ scale_ptr,
                         double scale_val) {
    const i64 row = blockIdx.x;
    T* dr = dx + row * V;
    const i64 t = tgt[row];
    if (t == ignore_index) {
        row_fill<A, U>(dr, V, (A)0);
        return;
    }
    const A sc = scale_ptr ? scale_ptr[0] : (A)scale_val;
    const ExpFrom<A> e(lse[row]);
    const int ti = t >= 0 && t < V ? (int)t : -1;
    row_map<A, U, false>(x + row * V, x + row * V, dr, V, [&](int i0, auto& v, auto&) {
#pragma unroll
        for (auto& a : v) a = e(a);
        minus_onehot(v, i0, ti);
#pragma unroll
        for (auto& a : v) a *= sc;
    });
}

// Loss rows and, when dx is given, dx = gscale (softmax(z) - onehot) [* (1 - (z / cap)^2)] for z = soft_cap(x):
// the linear + cross-entropy op's chunk. dx may be x itself (same type: each element is read, then written by
// one thread; x[target] and the first pass are read before the barrier that precedes the writes), so neither
// pointer is restrict.
template <typename TI, typename TO, typename A, int U>
__global__ void xent_rows(const TI* x, TO* dx, const i64* __restrict__ tgt, A* __restrict__ loss, int V,
                          i64 ignore_index, A cap, A gscale) {
    __shared__ A red[32];
    const i64 row = blockIdx.x;
    const TI* xr = x + row * V;
    const i64 t = tgt[row];
    A zt = 0;   // z[target], loaded first so that its latency hides under the row pass
    if (threadIdx.x == 0 && t != ignore_index && t >= 0 && t < V) zt = soft_cap(ld(xr, t), cap);
    A M, S;
    row_max_sumexp<TI, A, U>(xr, V, red, M, S, cap);
    const A l = M + log(S);
    if (threadIdx.x == 0) {
        A out;
        if (t == ignore_index) out = 0;
        else if (t < 0 || t >= V) out = (A)__int_as_float(0x7fc00000);   // NaN: bad target
        else out = l - zt;
        loss[row] = out;
    }
    if (dx == nullptr) return;
    __syncthreads();
    TO* dr = dx + row * V;
    if (t == ignore_index) {
        row_fill<A, U>(dr, V, (A)0);
        return;
    }
    const ExpFrom<A> e(l);
    const int ti = t >= 0 && t < V ? (int)t : -1;
    row_map<A, U, false>(xr, xr, dr, V, [&](int i0, auto& v, auto&) {
        if (cap > 0) {   // dz/dx = 1 - (z / cap)^2, folded into the scale
            A slope[sizeof(v) / sizeof(v[0])];
#pragma unroll
            for (int k = 0; k < (int)(sizeof(v) / sizeof(v[0])); ++k) {
                const A z = soft_cap(v[k], cap), r = z / cap;
                slope[k] = gscale * ((A)1 - r * r);
                v[k] = e(z);
            }
            minus_onehot(v, i0, ti);
#pragma unroll
            for (int k = 0; k < (int)(sizeof(v) / sizeof(v[0])); ++k) v[k] *= slope[k];
        } else {
#pragma unroll
            for (auto& a : v) a = e(a);
            minus_onehot(v, i0, ti);
#pragma unroll
            for (auto& a : v) a *= gscale;
        }
    });
}
"""

_TARGS = ["float,float", "half_t,float", "bf16_t,float", "double,double"]
_ROWS = ["float,float,float", "float,half_t,float", "float,bf16_t,float", "double,double,double"]
_VPT = (4, 8, 16, 32)   # warp-per-row kernels for rows of at most 32 * VPT elements
_WARP = [f"{t},{v}" for t in _TARGS for v in _VPT]
# Block-per-row kernels: _U 16-byte vectors per thread in flight (each SM needs ~32 KB in flight to stream at full
# bandwidth), at most _ROW_THREADS threads per row (several blocks per SM, so one block's reductions and start overlap
# the others' loads).
_U = 2
_ROW_THREADS = 512
_BLOCK = [f"{t},{_U}" for t in _TARGS]
_mod = LazyModule(_SRC, {"softmax_fwd": _BLOCK, "softmax_bwd": _BLOCK, "xent_fwd": _BLOCK, "xent_bwd": _BLOCK,
                         "softmax_fwd_warp": _WARP, "softmax_bwd_warp": _WARP,
                         "xent_rows": [f"{t},{_U}" for t in _ROWS]})


def _row_block(C: int, dtype) -> tuple[int]:
    """Threads of a block-per-row kernel for rows of C elements of dtype: about _U vectors each."""
    return (row_threads(C, _U * 16 // np.dtype(dtype).itemsize, _ROW_THREADS),)


def _row_launch(name, dtype, N, C, args):
    """Warp-per-row kernel for C <= 1024, else one block per row."""
    if C <= 32 * _VPT[-1]:
        vpt = next(v for v in _VPT if C <= 32 * v)
        k = _mod.kernel(name + "_warp", f"{_targs(dtype)},{vpt}")
        k(((N + 3) // 4,), (128,), args + (np.int64(N), np.int32(C)))
    else:
        _mod.kernel(name, f"{_targs(dtype)},{_U}")((N,), _row_block(C, dtype), args + (np.int32(C),))


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
        _mod.kernel("xent_fwd", f"{_targs(logits.dtype)},{_U}")(
            (N,), _row_block(V, logits.dtype), (logits, tg, loss, lse, np.int32(V), np.int64(ignore_index)))
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
        _mod.kernel("xent_bwd", f"{_targs(logits.dtype)},{_U}")(
            (N,), _row_block(V, logits.dtype),
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
        _mod.kernel("xent_rows", f"{t_in},{t_out},{a},{_U}")(
            (N,), _row_block(V, logits.dtype),
            (logits, dx if dx is not None else np.uint64(0), tg, loss, np.int32(V), np.int64(ignore_index),
             acc(softcap or 0.0), acc(grad_scale)))
    return loss, dx


register("softmax_forward", softmax_forward)
register("softmax_backward", softmax_backward)
register("cross_entropy_forward", cross_entropy_forward)
register("cross_entropy_backward", cross_entropy_backward)
register("cross_entropy_rows", cross_entropy_rows)
