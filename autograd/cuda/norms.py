"""LayerNorm and RMSNorm over the last axis, plain or with the residual add fused in: forward and hand-derived
backward as row kernels.

Forward: rows of up to 32 * NV * V elements (V = one 16-byte vector of the storage type; C a multiple of V) take one
warp each and stay in registers (one read of x, one write of y); wider or unaligned rows take one block each and
are read three times (mean, variance, write), from L1 after the first. With the residual r, the kernel reads x and
r, writes s = x + r (rounded to x's dtype, as the composed add stores it) and normalises s. Statistics (mean, rstd)
are kept in the accumulation type (float32 for 16-bit and float32 inputs, float64 for float64).
Bytes per element, float32 LayerNorm: 4 read + 4 written; residual add with float16 r: 4 + 2 read, 4 + 4 written.

Backward (xhat = (x - mean) rstd, g = gy * w), one block per row (16-byte vectors, gy and x read once into
registers, when C is a multiple of the vector width and at most 512 x 2 vectors; else one element at a time):
    gx = rstd * (g - mean(g) - xhat * mean(g * xhat))  [+ gs, the residual stream's own gradient]
    gw = sum over rows of gy * xhat,  gb = sum over rows of gy          (RMSNorm: no mean(g) term, mean = 0)
A grid of a few blocks per multiprocessor walks the rows; each thread owns the same columns in every row, so it
accumulates its gw/gb partial sums in registers without atomics; the (blocks, C) partials are then summed by
cuBLAS. The element-wise version leaves gw/gb to CuPy sums.
"""
from __future__ import annotations

import numpy as np

from ._common import VECTOR_IO, LazyModule, acc_dtype, aligned16, contiguous, ctypes_of, require_cupy, row_threads
from .registry import register

_SRC = VECTOR_IO + r"""
// One row per block (wide or unaligned rows). has_r: s = x + r is written to s_out and normalised (the later passes
// read s back, from L1/L2).
template <typename T, typename R, typename A>
__global__ void norm_fwd(const T* __restrict__ x, const R* __restrict__ r, const T* __restrict__ w,
                         const T* __restrict__ b, T* __restrict__ s_out, T* __restrict__ y,
                         A* __restrict__ mean_out, A* __restrict__ rstd_out,
                         int C, float eps, int has_w, int has_b, int rms, int has_r) {
    __shared__ A red[32];
    const i64 row = blockIdx.x;
    const T* xr = x + row * C;
    T* yr = y + row * C;
    A s = 0, s2 = 0;
    if (has_r) {
        const R* rr = r + row * C;
        T* sr = s_out + row * C;
        for (int i = threadIdx.x; i < C; i += blockDim.x) {
            st(sr, i, ld(xr, i) + ld(rr, i));
            const A v = ld(sr, i);   // the stored (rounded) s, as the composed x + r gives it
            s += v; s2 += v * v;
        }
        xr = sr;
    }
    A mean = 0;
    if (!rms) {
        if (!has_r) for (int i = threadIdx.x; i < C; i += blockDim.x) s += ld(xr, i);
        mean = block_sum(s, red) / (A)C;
    }
    if (!rms || !has_r) {   // variance about the mean, a second pass (no cancellation)
        s2 = 0;
        for (int i = threadIdx.x; i < C; i += blockDim.x) { A d = ld(xr, i) - mean; s2 += d * d; }
    }
    const A var = block_sum(s2, red) / (A)C;
    const A rstd = (A)1 / sqrt(var + (A)eps);
    for (int i = threadIdx.x; i < C; i += blockDim.x) {
        A v = (ld(xr, i) - mean) * rstd;
        if (has_w) v *= ld(w, i);
        if (has_b) v += ld(b, i);
        st(yr, i, v);
    }
    if (threadIdx.x == 0) { mean_out[row] = mean; rstd_out[row] = rstd; }
}

// One warp per row of at most 32 * NV * V elements (V = 16 bytes of T; C a multiple of V, 16-byte aligned rows):
// NV vector loads per lane in flight, the row in registers, one read of x (and r), one write of y (and s).
template <typename T, typename R, typename A, int NV>
__global__ void norm_fwd_warp(const T* __restrict__ x, const R* __restrict__ r, const T* __restrict__ w,
                              const T* __restrict__ b, T* __restrict__ s_out, T* __restrict__ y,
                              A* __restrict__ mean_out, A* __restrict__ rstd_out,
                              i64 N, int C, float eps, int has_w, int has_b, int rms, int has_r) {
    constexpr int V = 16 / sizeof(T);
    const int lane = threadIdx.x & 31;
    const i64 row = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= N) return;                       // whole warps leave together
    const i64 base = row * C;
    A v[NV][V];
    A s = 0;
#pragma unroll
    for (int j = 0; j < NV; ++j) {
        const int i = (lane + 32 * j) * V;
        if (i < C) {
            ldv<V>(x, base + i, v[j]);
            if (has_r) {
                A rv[V];
                ldv<V>(r, base + i, rv);
                Pack<T, V> sp;   // s rounded to T, as the composed x + r stores it, is what gets normalised
#pragma unroll
                for (int k = 0; k < V; ++k) { st(sp.v, k, v[j][k] + rv[k]); v[j][k] = ld(sp.v, k); }
                *reinterpret_cast<Pack<T, V>*>(s_out + base + i) = sp;
            }
        } else {
#pragma unroll
            for (int k = 0; k < V; ++k) v[j][k] = 0;
        }
#pragma unroll
        for (int k = 0; k < V; ++k) s += v[j][k];
    }
    const A mean = rms ? (A)0 : warp_sum(s) / (A)C;
    A s2 = 0;
#pragma unroll
    for (int j = 0; j < NV; ++j)
        if ((lane + 32 * j) * V < C) {
#pragma unroll
            for (int k = 0; k < V; ++k) { const A d = v[j][k] - mean; s2 += d * d; }
        }
    const A rstd = (A)1 / sqrt(warp_sum(s2) / (A)C + (A)eps);
#pragma unroll
    for (int j = 0; j < NV; ++j) {
        const int i = (lane + 32 * j) * V;
        if (i < C) {
            A o[V], wv[V], bv[V];
            if (has_w) ldv<V>(w, i, wv);
            if (has_b) ldv<V>(b, i, bv);
#pragma unroll
            for (int k = 0; k < V; ++k) {
                o[k] = (v[j][k] - mean) * rstd;
                if (has_w) o[k] *= wv[k];
                if (has_b) o[k] += bv[k];
            }
            stv<V>(y, base + i, o);
        }
    }
    if (lane == 0) { mean_out[row] = mean; rstd_out[row] = rstd; }
}

// Element-wise backward (odd or very wide C): grid-stride over rows, gx only (gw/gb: CuPy sums). has_gs: the
// residual stream's gradient is added to gx; has_gr: gx is also written to gr in r's type.
template <typename T, typename R, typename A>
__global__ void norm_bwd(const T* __restrict__ gy, const T* __restrict__ x, const T* __restrict__ w,
                         const A* __restrict__ mean, const A* __restrict__ rstd, const T* __restrict__ gs,
                         T* __restrict__ gx, R* __restrict__ gr, i64 N, int C, int has_w, int rms, int has_gs,
                         int has_gr) {
    __shared__ A red[32];
    for (i64 row = blockIdx.x; row < N; row += gridDim.x) {
        const T* gyr = gy + row * C;
        const T* xr = x + row * C;
        const A mu = rms ? (A)0 : mean[row];
        const A rs = rstd[row];
        A s1 = 0, s2 = 0;
        for (int i = threadIdx.x; i < C; i += blockDim.x) {
            const A xh = (ld(xr, i) - mu) * rs;
            const A gw_ = has_w ? ld(gyr, i) * ld(w, i) : ld(gyr, i);
            s1 += gw_;
            s2 += gw_ * xh;
        }
        s1 = rms ? (A)0 : block_sum(s1, red) / (A)C;
        s2 = block_sum(s2, red) / (A)C;
        for (int i = threadIdx.x; i < C; i += blockDim.x) {
            const A xh = (ld(xr, i) - mu) * rs;
            const A gw_ = has_w ? ld(gyr, i) * ld(w, i) : ld(gyr, i);
            A o = rs * (gw_ - s1 - xh * s2);
            if (has_gs) o += ld(gs + row * C, i);
            st(gx + row * C, i, o);
            if (has_gr) st(gr + row * C, i, o);
        }
    }
}

// Block sums of two values at once (one round of barriers); red: 64 shared slots.
template <typename A> __device__ __forceinline__ void block_sum2(A& a, A& b, A* red) {
    a = warp_sum(a); b = warp_sum(b);
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) { red[wid] = a; red[32 + wid] = b; }
    __syncthreads();
    if (wid == 0) {
        A ta = lane < nw ? red[lane] : (A)0, tb = lane < nw ? red[32 + lane] : (A)0;
        ta = warp_sum(ta); tb = warp_sum(tb);
        if (lane == 0) { red[0] = ta; red[32] = tb; }
    }
    __syncthreads();
    a = red[0]; b = red[32];
}

// The backward on 16-byte vectors (C a multiple of V, aligned): each thread owns NV vectors of columns, the same in
// every row, so gy and x are read once into registers and the gw/gb partial sums stay in registers too; the block
// writes them to part_*[block, C] at the end (when do_part).
template <typename T, typename R, typename A, int NV>
__global__ void __launch_bounds__(512) norm_bwd_vec(const T* __restrict__ gy, const T* __restrict__ x, const T* __restrict__ w,
                             const A* __restrict__ mean, const A* __restrict__ rstd, const T* __restrict__ gs,
                             T* __restrict__ gx, R* __restrict__ gr, A* __restrict__ part_w, A* __restrict__ part_b,
                             i64 N, int C, int has_w, int rms, int do_part, int has_gs, int has_gr) {
    constexpr int V = 16 / sizeof(T);
    __shared__ A red[64];
    A wv[NV][V], pw[NV][V], pb[NV][V];
#pragma unroll
    for (int j = 0; j < NV; ++j) {
        const int i = (threadIdx.x + j * blockDim.x) * V;
#pragma unroll
        for (int k = 0; k < V; ++k) { wv[j][k] = 1; pw[j][k] = 0; pb[j][k] = 0; }
        if (has_w && i < C) ldv<V>(w, i, wv[j]);
    }
    for (i64 row = blockIdx.x; row < N; row += gridDim.x) {
        const i64 base = row * C;
        const A mu = rms ? (A)0 : mean[row];
        const A rs = rstd[row];
        A g[NV][V], xh[NV][V];
        A s1 = 0, s2 = 0;
#pragma unroll
        for (int j = 0; j < NV; ++j) {
            const int i = (threadIdx.x + j * blockDim.x) * V;
            if (i < C) {
                ldv<V>(gy, base + i, g[j]);
                ldv<V>(x, base + i, xh[j]);
#pragma unroll
                for (int k = 0; k < V; ++k) {
                    xh[j][k] = (xh[j][k] - mu) * rs;
                    pw[j][k] += g[j][k] * xh[j][k];
                    pb[j][k] += g[j][k];
                    g[j][k] *= wv[j][k];
                    s1 += g[j][k];
                    s2 += g[j][k] * xh[j][k];
                }
            }
        }
        block_sum2(s1, s2, red);
        s1 = rms ? (A)0 : s1 / (A)C;
        s2 /= (A)C;
#pragma unroll
        for (int j = 0; j < NV; ++j) {
            const int i = (threadIdx.x + j * blockDim.x) * V;
            if (i < C) {
                A o[V], gsv[V];
                if (has_gs) ldv<V>(gs, base + i, gsv);
#pragma unroll
                for (int k = 0; k < V; ++k) o[k] = rs * (g[j][k] - s1 - xh[j][k] * s2) + (has_gs ? gsv[k] : (A)0);
                stv<V>(gx, base + i, o);
                if (has_gr) stv<V>(gr, base + i, o);
            }
        }
    }
    if (do_part)
#pragma unroll
        for (int j = 0; j < NV; ++j) {
            const int i = (threadIdx.x + j * blockDim.x) * V;
            if (i < C) {
                stv<V>(part_w, (i64)blockIdx.x * C + i, pw[j]);
                stv<V>(part_b, (i64)blockIdx.x * C + i, pb[j]);
            }
        }
}
"""

# (storage, residual, accumulation): every dtype alone, and the autocast pairs (float32 stream, 16-bit branch)
_TARGS = ["float,float,float", "half_t,half_t,float", "bf16_t,bf16_t,float", "double,double,double",
          "float,half_t,float", "float,bf16_t,float"]
_NV = (1, 2, 4, 8)      # warp-per-row forward for C <= 32 * NV * V
_BWD_NV = (1, 2)       # vector backward: NV vectors a thread, at most _BWD_THREADS threads a block
_BWD_THREADS = 512
_mod = LazyModule(_SRC, {"norm_fwd": _TARGS, "norm_bwd": _TARGS,
                         "norm_fwd_warp": [f"{t},{v}" for t in _TARGS for v in _NV],
                         "norm_bwd_vec": [f"{t},{v}" for t in _TARGS for v in _BWD_NV]})
_sm_count: dict[int, int] = {}


def _targs(dtype, rdtype=None) -> str:
    t, a = ctypes_of(dtype)
    return f"{t},{ctypes_of(dtype if rdtype is None else rdtype)[0]},{a}"


def _num_sms() -> int:
    cp = require_cupy()
    dev = cp.cuda.Device().id
    n = _sm_count.get(dev)
    if n is None:
        n = cp.cuda.runtime.getDeviceProperties(dev)["multiProcessorCount"]
        _sm_count[dev] = n
    return n


def _check(op, x, *others):
    """x's dtype has a kernel; weight/bias of shape (C,). Returns them in x's dtype, which the kernels read (a float32
    gain on float16 activations, e.g. a q_norm under autocast, is cast; gradients go back in its own dtype)."""
    ctypes_of(x.dtype)
    out = []
    for o in others:
        if o is not None and o.shape != (x.shape[-1],):
            raise ValueError(f"{op}: weight/bias must be ({x.shape[-1]},), got {o.shape} {o.dtype}")
        out.append(o if o is None or o.dtype == x.dtype else o.astype(x.dtype))
    return out


def _check_residual(op, x, r):
    ctypes_of(r.dtype)
    if r.shape != x.shape:
        raise ValueError(f"{op}: residual x {x.shape} and branch r {r.shape} must have one shape")
    if r.dtype != x.dtype and (x.dtype != np.float32 or r.dtype.itemsize != 2):
        raise TypeError(f"{op}: x {x.dtype} with r {r.dtype}: the kernel takes one dtype, or float32 x with a "
                        "16-bit r")


def _forward(x, r, w, b, eps, rms):
    """(s or None, y, mean, rstd); r None: the plain norm of x."""
    cp = require_cupy()
    x = contiguous(x)
    C = x.shape[-1]
    N = x.size // C if C else 0
    acc = acc_dtype(x.dtype)
    y = cp.empty_like(x)
    s = cp.empty_like(x) if r is not None else None
    mean = cp.empty(x.shape[:-1], acc)
    rstd = cp.empty(x.shape[:-1], acc)
    if N == 0 or C == 0:
        if s is not None:
            s[...] = x + r
        return s, y, mean, rstd
    r_ = contiguous(r) if r is not None else x
    w_ = contiguous(w) if w is not None else x
    b_ = contiguous(b) if b is not None else x
    flags = (np.int32(w is not None), np.int32(b is not None), np.int32(rms), np.int32(r is not None))
    targs = _targs(x.dtype, None if r is None else r.dtype)
    args = (x, r_, w_, b_, s if s is not None else y, y, mean, rstd)
    vec = 16 // x.dtype.itemsize
    aligned = C % vec == 0 and aligned16(x, r_, w_, b_)
    if aligned and C <= 32 * vec * _NV[-1]:
        nv = next(v for v in _NV if C <= 32 * vec * v)
        k = _mod.kernel("norm_fwd_warp", f"{targs},{nv}")
        k(((N + 3) // 4,), (128,), args + (np.int64(N), np.int32(C), np.float32(eps), *flags))
    else:
        k = _mod.kernel("norm_fwd", targs)
        k((N,), (row_threads(C),), args + (np.int32(C), np.float32(eps), *flags))
    return s, y, mean, rstd


def _backward(gy, x, w, mean, rstd, rms, want_gb, gs=None, r_dtype=None):
    """(gx, gr, gw, gb): gx = the norm's input gradient (+ gs); gr = gx in r_dtype when that differs from x's,
    else None (the same values as gx)."""
    cp = require_cupy()
    x = contiguous(x)
    gy = contiguous(gy.astype(x.dtype, copy=False))
    C = x.shape[-1]
    N = x.size // C if C else 0
    acc = acc_dtype(x.dtype)
    gx = cp.empty_like(x)
    has_gr = r_dtype is not None and np.dtype(r_dtype) != x.dtype
    gr = cp.empty(x.shape, r_dtype) if has_gr else None
    want_part = w is not None or want_gb
    if N == 0 or C == 0:
        z = cp.zeros((C,), acc)
        return gx, gr, z, z
    w_ = contiguous(w) if w is not None else x
    gs_ = contiguous(gs.astype(x.dtype, copy=False)) if gs is not None else x
    vec = 16 // x.dtype.itemsize
    nv = next((v for v in _BWD_NV if C <= _BWD_THREADS * v * vec), None)
    vector = C % vec == 0 and nv is not None and aligned16(gy, x, w_, gs_)
    if vector:    # enough blocks to keep ~2048 threads a multiprocessor busy
        threads = max(32, min(_BWD_THREADS, -(-C // (vec * nv * 32)) * 32))
        nblocks = int(min(N, max(1, min(8, 2048 // threads)) * _num_sms()))
    else:
        threads, nblocks = row_threads(C), int(min(N, 4 * _num_sms()))
    do_part = want_part and vector
    part = cp.empty((2, nblocks, C), acc) if do_part else None   # one allocation for both partials
    mean_ = contiguous(mean.astype(acc, copy=False)) if mean is not None else rstd
    rstd_ = contiguous(rstd.astype(acc, copy=False))
    ptrs = (gy, x, w_, mean_, rstd_, gs_, gx, gr if has_gr else gx)
    flags = (np.int32(w is not None), np.int32(rms))
    res = (np.int32(gs is not None), np.int32(has_gr))
    targs = _targs(x.dtype, r_dtype if has_gr else None)
    if vector:
        parts = (part[0], part[1]) if do_part else (gx, gx)
        _mod.kernel("norm_bwd_vec", f"{targs},{nv}")((nblocks,), (threads,), ptrs + parts + (
            np.int64(N), np.int32(C)) + flags + (np.int32(do_part),) + res)
    else:
        _mod.kernel("norm_bwd", targs)((nblocks,), (threads,), ptrs + (np.int64(N), np.int32(C)) + flags + res)
    gw = gb = None
    if do_part:
        # cuBLAS column sums (ones @ partials): CuPy's axis-0 reduction costs ~70 us of host time per call
        from .matmul import colsum
        gw = colsum(part[0]) if w is not None else None
        gb = colsum(part[1]) if want_gb else None
    elif want_part:  # odd or very wide rows: plain CuPy sums with float32 accumulation
        g2 = gy.reshape(-1, C).astype(acc, copy=False)
        xhat = x.reshape(-1, C).astype(acc)
        if not rms:
            xhat -= mean_.reshape(-1, 1)
        xhat *= rstd_.reshape(-1, 1)
        gw, gb = (g2 * xhat).sum(axis=0), g2.sum(axis=0)
    return gx, gr, gw, gb


def _cast(a, like):
    return a.astype(like.dtype, copy=False) if like is not None else None


def layer_norm_forward(x, w, b, eps):
    """(y, mean, rstd): x (..., C), w, b (C,) or None; mean, rstd (...,) float32 (float64 for float64 x)."""
    wk, bk = _check("layer_norm_forward", x, w, b)
    return _forward(x, None, wk, bk, eps, rms=False)[1:]


def layer_norm_backward(gy, x, w, mean, rstd):
    """(gx, gw, gb); gw None when w is None; gb (sum of gy over rows) always returned (caller drops it)."""
    wk, = _check("layer_norm_backward", x, w)
    gx, _, gw, gb = _backward(gy, x, wk, mean, rstd, rms=False, want_gb=True)
    return gx, _cast(gw, w), gb.astype(w.dtype if w is not None else x.dtype, copy=False)


def rms_norm_forward(x, w, eps):
    """(y, rstd): y = x * rstd * w, rstd = 1/sqrt(mean(x^2) + eps) (...,) float32 (float64 for float64 x)."""
    wk, = _check("rms_norm_forward", x, w)
    _, y, _, rstd = _forward(x, None, wk, None, eps, rms=True)
    return y, rstd


def rms_norm_backward(gy, x, w, rstd):
    """(gx, gw); gw None when w is None."""
    wk, = _check("rms_norm_backward", x, w)
    gx, _, gw, _ = _backward(gy, x, wk, None, rstd, rms=True, want_gb=False)
    return gx, _cast(gw, w)


def add_layer_norm_forward(x, r, w, b, eps):
    """(s, y, mean, rstd): s = x + r (x's dtype), y = layer_norm(s); x, r (..., C) one shape; w, b (C,) or None."""
    wk, bk = _check("add_layer_norm_forward", x, w, b)
    _check_residual("add_layer_norm_forward", x, r)
    return _forward(x, r, wk, bk, eps, rms=False)


def add_layer_norm_backward(gs, gy, s, w, mean, rstd, r_dtype):
    """(gx, gr, gw, gb): gx = gs + layer_norm's gradient for s; gr the same values in r_dtype."""
    wk, = _check("add_layer_norm_backward", s, w)
    gx, gr, gw, gb = _backward(gy, s, wk, mean, rstd, rms=False, want_gb=True, gs=gs, r_dtype=r_dtype)
    return gx, (gx if gr is None else gr), _cast(gw, w), gb.astype(w.dtype if w is not None else s.dtype, copy=False)


def add_rms_norm_forward(x, r, w, eps):
    """(s, y, rstd): s = x + r (x's dtype), y = rms_norm(s); x, r (..., C) one shape; w (C,) or None."""
    wk, = _check("add_rms_norm_forward", x, w)
    _check_residual("add_rms_norm_forward", x, r)
    s, y, _, rstd = _forward(x, r, wk, None, eps, rms=True)
    return s, y, rstd


def add_rms_norm_backward(gs, gy, s, w, rstd, r_dtype):
    """(gx, gr, gw): gx = gs + rms_norm's gradient for s; gr the same values in r_dtype."""
    wk, = _check("add_rms_norm_backward", s, w)
    gx, gr, gw, _ = _backward(gy, s, wk, None, rstd, rms=True, want_gb=False, gs=gs, r_dtype=r_dtype)
    return gx, (gx if gr is None else gr), _cast(gw, w)


register("layer_norm_forward", layer_norm_forward)
register("layer_norm_backward", layer_norm_backward)
register("rms_norm_forward", rms_norm_forward)
register("rms_norm_backward", rms_norm_backward)
register("add_layer_norm_forward", add_layer_norm_forward)
register("add_layer_norm_backward", add_layer_norm_backward)
register("add_rms_norm_forward", add_rms_norm_forward)
register("add_rms_norm_backward", add_rms_norm_backward)
