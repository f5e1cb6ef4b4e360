"""LayerNorm and RMSNorm over the last axis, plain or with the residual add fused in: forward and hand-derived
backward as row kernels.

Forward: rows of up to 32 * NV * V elements (V = one 16-byte vector of the storage type; C a multiple of V) take one
warp each and stay in registers (one read of x, one write of y); wider or unaligned rows take one block each and
are read three times (mean, variance, write), from L1 after the first. With the residual r, the kernel reads x and
r, writes s = x + r (rounded to x's dtype, as the composed add stores it) and normalises s. Statistics (mean, rstd)
are kept in the accumulation type (float32 for 16-bit and float32 inputs, float64 for float64).
Bytes per element, float32 LayerNorm: 4 read + 4 written; residual add with float16 r: 4 + 2 read, 4 + 4 written.

Backward (xhat = (x - mean) rstd, g = gy * w), one block per row:
    gx = rstd * (g - mean(g) - xhat * mean(g * xhat))  [+ gs, the residual stream's own gradient]
    gw = sum over rows of gy * xhat,  gb = sum over rows of gy          (RMSNorm: no mean(g) term, mean = 0)
A grid of a few blocks per multiprocessor walks the rows; each thread owns the same columns in every row, so it
accumulates its gw/gb partial sums (in shared memory) without global atomics; the (blocks, C) partials are then
summed by cuBLAS. When 2*C partials do not fit in 48 KB of shared memory, the gw/gb sums fall back to CuPy.
"""
from __future__ import annotations

import numpy as np

from ._common import VECTOR_IO, LazyModule, acc_dtype, aligned16, contiguous, ctypes_of, require_cupy, row_threads
from .registry import register

_SRC = VECTOR_IO + r"""
// One row per block (wide rows, or rows not split into 16-byte vectors). has_r: s = x + r is written to s_out and
// normalised (the fused residual add); the later passes read s back, from L1/L2.
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

// grid-stride over rows; partial gw/gb per block in shared memory (when do_part), written to part_*[block, C].
// has_gs: the gradient of the residual stream s (fused residual add) is added to gx; has_gr: gx is also written
// to gr in r's type (the branch output's gradient, when r's dtype differs from x's).
template <typename T, typename R, typename A>
__global__ void norm_bwd(const T* __restrict__ gy, const T* __restrict__ x, const T* __restrict__ w,
                         const A* __restrict__ mean, const A* __restrict__ rstd, const T* __restrict__ gs,
                         T* __restrict__ gx, R* __restrict__ gr, A* __restrict__ part_w, A* __restrict__ part_b,
                         i64 N, int C, int has_w, int rms, int do_part, int has_gs, int has_gr) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    A* s_gw = reinterpret_cast<A*>(smem_raw);
    A* s_gb = s_gw + C;
    __shared__ A red[32];
    if (do_part) for (int i = threadIdx.x; i < C; i += blockDim.x) { s_gw[i] = 0; s_gb[i] = 0; }
    for (i64 row = blockIdx.x; row < N; row += gridDim.x) {
        const T* gyr = gy + row * C;
        const T* xr = x + row * C;
        const A mu = rms ? (A)0 : mean[row];
        const A rs = rstd[row];
        A s1 = 0, s2 = 0;
        for (int i = threadIdx.x; i < C; i += blockDim.x) {
            const A g = ld(gyr, i);
            const A xh = (ld(xr, i) - mu) * rs;
            if (do_part) { s_gw[i] += g * xh; s_gb[i] += g; }
            const A gw_ = has_w ? g * ld(w, i) : g;
            s1 += gw_;
            s2 += gw_ * xh;
        }
        s1 = rms ? (A)0 : block_sum(s1, red) / (A)C;
        s2 = block_sum(s2, red) / (A)C;
        for (int i = threadIdx.x; i < C; i += blockDim.x) {
            const A g = ld(gyr, i);
            const A xh = (ld(xr, i) - mu) * rs;
            const A gw_ = has_w ? g * ld(w, i) : g;
            A o = rs * (gw_ - s1 - xh * s2);
            if (has_gs) o += ld(gs + row * C, i);
            st(gx + row * C, i, o);
            if (has_gr) st(gr + row * C, i, o);
        }
    }
    if (do_part)
        for (int i = threadIdx.x; i < C; i += blockDim.x) {
            part_w[(i64)blockIdx.x * C + i] = s_gw[i];
            part_b[(i64)blockIdx.x * C + i] = s_gb[i];
        }
}
"""

# (storage, residual, accumulation): every dtype alone, and the autocast pairs (float32 stream, 16-bit branch)
_TARGS = ["float,float,float", "half_t,half_t,float", "bf16_t,bf16_t,float", "double,double,double",
          "float,half_t,float", "float,bf16_t,float"]
_NV = (1, 2, 4, 8)      # warp-per-row forward for C <= 32 * NV * V
_mod = LazyModule(_SRC, {"norm_fwd": _TARGS, "norm_bwd": _TARGS,
                         "norm_fwd_warp": [f"{t},{v}" for t in _TARGS for v in _NV]})
_SMEM_LIMIT = 48 * 1024
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
    for o in others:
        if o is not None and (o.dtype != x.dtype or o.shape != (x.shape[-1],)):
            raise ValueError(f"{op}: weight/bias must be ({x.shape[-1]},) {x.dtype}, got {o.shape} {o.dtype}")


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
    threads = row_threads(C)
    nblocks = int(min(N, 4 * _num_sms()))
    smem = 2 * C * np.dtype(acc).itemsize
    do_part = want_part and smem <= _SMEM_LIMIT
    if do_part:   # one allocation for both partials
        part = cp.empty((2, nblocks, C), acc)
        part_w, part_b = part[0], part[1]
    else:
        part_w = part_b = gx
    w_ = contiguous(w) if w is not None else x
    mean_ = contiguous(mean.astype(acc, copy=False)) if mean is not None else rstd
    rstd_ = contiguous(rstd.astype(acc, copy=False))
    gs_ = contiguous(gs.astype(x.dtype, copy=False)) if gs is not None else x
    args = (gy, x, w_, mean_, rstd_, gs_, gx, gr if has_gr else gx, part_w, part_b, np.int64(N), np.int32(C),
            np.int32(w is not None), np.int32(rms), np.int32(do_part), np.int32(gs is not None), np.int32(has_gr))
    k = _mod.kernel("norm_bwd", _targs(x.dtype, r_dtype if has_gr else None))
    k((nblocks,), (threads,), args, shared_mem=smem if do_part else 0)
    gw = gb = None
    if do_part:
        # cuBLAS column sums (ones @ partials): CuPy's axis-0 reduction costs ~70 us of host time per call
        from .matmul import colsum
        gw = colsum(part_w) if w is not None else None
        gb = colsum(part_b) if want_gb else None
    elif want_part:  # very wide rows: plain CuPy sums with float32 accumulation
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
    ctypes_of(x.dtype)
    _check("layer_norm_forward", x, w, b)
    _, y, mean, rstd = _forward(x, None, w, b, eps, rms=False)
    return y, mean, rstd


def layer_norm_backward(gy, x, w, mean, rstd):
    """(gx, gw, gb); gw None when w is None; gb (sum of gy over rows) always returned (caller drops it)."""
    ctypes_of(x.dtype)
    _check("layer_norm_backward", x, w)
    gx, _, gw, gb = _backward(gy, x, w, mean, rstd, rms=False, want_gb=True)
    return gx, _cast(gw, w), gb.astype(w.dtype if w is not None else x.dtype, copy=False)


def rms_norm_forward(x, w, eps):
    """(y, rstd): y = x * rstd * w, rstd = 1/sqrt(mean(x^2) + eps) (...,) float32 (float64 for float64 x)."""
    ctypes_of(x.dtype)
    _check("rms_norm_forward", x, w)
    _, y, _, rstd = _forward(x, None, w, None, eps, rms=True)
    return y, rstd


def rms_norm_backward(gy, x, w, rstd):
    """(gx, gw); gw None when w is None."""
    ctypes_of(x.dtype)
    _check("rms_norm_backward", x, w)
    gx, _, gw, _ = _backward(gy, x, w, None, rstd, rms=True, want_gb=False)
    return gx, _cast(gw, w)


def add_layer_norm_forward(x, r, w, b, eps):
    """(s, y, mean, rstd): s = x + r (x's dtype), y = layer_norm(s); x, r (..., C) one shape; w, b (C,) or None."""
    ctypes_of(x.dtype)
    _check_residual("add_layer_norm_forward", x, r)
    _check("add_layer_norm_forward", x, w, b)
    return _forward(x, r, w, b, eps, rms=False)


def add_layer_norm_backward(gs, gy, s, w, mean, rstd, r_dtype):
    """(gx, gr, gw, gb): gx = gs + layer_norm's gradient for s; gr the same values in r_dtype."""
    ctypes_of(s.dtype)
    _check("add_layer_norm_backward", s, w)
    gx, gr, gw, gb = _backward(gy, s, w, mean, rstd, rms=False, want_gb=True, gs=gs, r_dtype=r_dtype)
    return gx, (gx if gr is None else gr), _cast(gw, w), gb.astype(w.dtype if w is not None else s.dtype, copy=False)


def add_rms_norm_forward(x, r, w, eps):
    """(s, y, rstd): s = x + r (x's dtype), y = rms_norm(s); x, r (..., C) one shape; w (C,) or None."""
    ctypes_of(x.dtype)
    _check_residual("add_rms_norm_forward", x, r)
    _check("add_rms_norm_forward", x, w)
    s, y, _, rstd = _forward(x, r, w, None, eps, rms=True)
    return s, y, rstd


def add_rms_norm_backward(gs, gy, s, w, rstd, r_dtype):
    """(gx, gr, gw): gx = gs + rms_norm's gradient for s; gr the same values in r_dtype."""
    ctypes_of(s.dtype)
    _check("add_rms_norm_backward", s, w)
    gx, gr, gw, _ = _backward(gy, s, w, None, rstd, rms=True, want_gb=False, gs=gs, r_dtype=r_dtype)
    return gx, (gx if gr is None else gr), _cast(gw, w)


register("layer_norm_forward", layer_norm_forward)
register("layer_norm_backward", layer_norm_backward)
register("rms_norm_forward", rms_norm_forward)
register("rms_norm_backward", rms_norm_backward)
register("add_layer_norm_forward", add_layer_norm_forward)
register("add_layer_norm_backward", add_layer_norm_backward)
register("add_rms_norm_forward", add_rms_norm_forward)
register("add_rms_norm_backward", add_rms_norm_backward)
