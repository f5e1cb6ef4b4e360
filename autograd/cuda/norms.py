"""LayerNorm and RMSNorm over the last axis: forward and hand-derived backward as row kernels.

Forward: rows of up to 1024 elements take one warp each and stay in registers (one read of x, one write of y);
wider rows take one block each and are read three times (mean, variance, write), from L1 after the first.
Statistics (mean, rstd) are kept in the accumulation type (float32 for float16/float32 inputs, float64 for float64).

Backward (xhat = (x - mean) rstd, g = gy * w), one block per row:
    gx = rstd * (g - mean(g) - xhat * mean(g * xhat))        (RMSNorm: no mean(g) term, mean = 0)
    gw = sum over rows of gy * xhat,  gb = sum over rows of gy
A grid of a few blocks per multiprocessor walks the rows; each thread owns the same columns in every row, so it
accumulates its gw/gb partial sums (in registers, or shared memory for the block version) without global atomics;
the (blocks, C) partials are then summed by CuPy. When 2*C partials do not fit in 48 KB of shared memory, the gw/gb
sums fall back to CuPy.
"""
from __future__ import annotations

import numpy as np

from ._common import LazyModule, acc_dtype, contiguous, ctypes_of, require_cupy, row_threads
from .registry import register

_SRC = r"""
template <typename T, typename A>
__global__ void norm_fwd(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,
                         T* __restrict__ y, A* __restrict__ mean_out, A* __restrict__ rstd_out,
                         int C, float eps, int has_w, int has_b, int rms) {
    __shared__ A red[32];
    const i64 row = blockIdx.x;
    const T* xr = x + row * C;
    T* yr = y + row * C;
    A mean = 0;
    if (!rms) {
        A s = 0;
        for (int i = threadIdx.x; i < C; i += blockDim.x) s += ld(xr, i);
        mean = block_sum(s, red) / (A)C;
    }
    A s2 = 0;
    for (int i = threadIdx.x; i < C; i += blockDim.x) { A d = ld(xr, i) - mean; s2 += d * d; }
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

// rows of at most 32 * VPT elements: one warp per row, the row held in registers (one read of x)
template <typename T, typename A, int VPT>
__global__ void norm_fwd_warp(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,
                              T* __restrict__ y, A* __restrict__ mean_out, A* __restrict__ rstd_out,
                              i64 N, int C, float eps, int has_w, int has_b, int rms) {
    const int lane = threadIdx.x & 31;
    const i64 row = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= N) return;                       // whole warps leave together
    const T* xr = x + row * C;
    T* yr = y + row * C;
    A v[VPT];
    A s = 0;
#pragma unroll
    for (int j = 0; j < VPT; ++j) {
        const int i = lane + 32 * j;
        v[j] = i < C ? ld(xr, i) : (A)0;
        s += v[j];
    }
    const A mean = rms ? (A)0 : warp_sum(s) / (A)C;
    A s2 = 0;
#pragma unroll
    for (int j = 0; j < VPT; ++j) {
        const int i = lane + 32 * j;
        const A d = i < C ? v[j] - mean : (A)0;
        s2 += d * d;
    }
    const A rstd = (A)1 / sqrt(warp_sum(s2) / (A)C + (A)eps);
#pragma unroll
    for (int j = 0; j < VPT; ++j) {
        const int i = lane + 32 * j;
        if (i < C) {
            A o = (v[j] - mean) * rstd;
            if (has_w) o *= ld(w, i);
            if (has_b) o += ld(b, i);
            st(yr, i, o);
        }
    }
    if (lane == 0) { mean_out[row] = mean; rstd_out[row] = rstd; }
}

// grid-stride over rows; partial gw/gb per block in shared memory (when part_w != 0), written to part_*[block, C]
template <typename T, typename A>
__global__ void norm_bwd(const T* __restrict__ gy, const T* __restrict__ x, const T* __restrict__ w,
                         const A* __restrict__ mean, const A* __restrict__ rstd, T* __restrict__ gx,
                         A* __restrict__ part_w, A* __restrict__ part_b, i64 N, int C, int has_w, int rms,
                         int do_part) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    A* s_gw = reinterpret_cast<A*>(smem_raw);
    A* s_gb = s_gw + C;
    __shared__ A red[32];
    if (do_part) for (int i = threadIdx.x; i < C; i += blockDim.x) { s_gw[i] = 0; s_gb[i] = 0; }
    for (i64 row = blockIdx.x; row < N; row += gridDim.x) {
        const T* gyr = gy + row * C;
        const T* xr = x + row * C;
        T* gxr = gx + row * C;
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
            st(gxr, i, rs * (gw_ - s1 - xh * s2));
        }
    }
    if (do_part)
        for (int i = threadIdx.x; i < C; i += blockDim.x) {
            part_w[(i64)blockIdx.x * C + i] = s_gw[i];
            part_b[(i64)blockIdx.x * C + i] = s_gb[i];
        }
}
"""

_TARGS = ["float,float", "half_t,float", "double,double"]
_VPT = (4, 8, 16, 32)   # warp-per-row forward for C <= 32 * VPT
_mod = LazyModule(_SRC, {"norm_fwd": _TARGS, "norm_bwd": _TARGS,
                         "norm_fwd_warp": [f"{t},{v}" for t in _TARGS for v in _VPT]})
_SMEM_LIMIT = 48 * 1024
_sm_count: dict[int, int] = {}


def _targs(dtype) -> str:
    t, a = ctypes_of(dtype)
    return f"{t},{a}"


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


def _forward(x, w, b, eps, rms):
    cp = require_cupy()
    x = contiguous(x)
    C = x.shape[-1]
    N = x.size // C if C else 0
    acc = acc_dtype(x.dtype)
    y = cp.empty_like(x)
    mean = cp.empty(x.shape[:-1], acc)
    rstd = cp.empty(x.shape[:-1], acc)
    if N == 0 or C == 0:
        return y, mean, rstd
    w_ = contiguous(w) if w is not None else x
    b_ = contiguous(b) if b is not None else x
    flags = (np.int32(w is not None), np.int32(b is not None), np.int32(rms))
    if C <= 32 * _VPT[-1]:
        vpt = next(v for v in _VPT if C <= 32 * v)
        k = _mod.kernel("norm_fwd_warp", f"{_targs(x.dtype)},{vpt}")
        k(((N + 3) // 4,), (128,), (x, w_, b_, y, mean, rstd, np.int64(N), np.int32(C), np.float32(eps), *flags))
    else:
        k = _mod.kernel("norm_fwd", _targs(x.dtype))
        k((N,), (row_threads(C),), (x, w_, b_, y, mean, rstd, np.int32(C), np.float32(eps), *flags))
    return y, mean, rstd


def _backward(gy, x, w, mean, rstd, rms, want_gb):
    cp = require_cupy()
    x = contiguous(x)
    gy = contiguous(gy.astype(x.dtype, copy=False))
    C = x.shape[-1]
    N = x.size // C if C else 0
    acc = acc_dtype(x.dtype)
    gx = cp.empty_like(x)
    want_part = w is not None or want_gb
    if N == 0 or C == 0:
        z = cp.zeros((C,), acc)
        return gx, z, z
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
    args = (gy, x, w_, mean_, rstd_, gx, part_w, part_b, np.int64(N), np.int32(C),
            np.int32(w is not None), np.int32(rms), np.int32(do_part))
    k = _mod.kernel("norm_bwd", _targs(x.dtype))
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
    return gx, gw, gb


def layer_norm_forward(x, w, b, eps):
    """(y, mean, rstd): x (..., C), w, b (C,) or None; mean, rstd (...,) float32 (float64 for float64 x)."""
    ctypes_of(x.dtype)
    _check("layer_norm_forward", x, w, b)
    return _forward(x, w, b, eps, rms=False)


def layer_norm_backward(gy, x, w, mean, rstd):
    """(gx, gw, gb); gw None when w is None; gb (sum of gy over rows) always returned (caller drops it)."""
    ctypes_of(x.dtype)
    _check("layer_norm_backward", x, w)
    gx, gw, gb = _backward(gy, x, w, mean, rstd, rms=False, want_gb=True)
    out_dt = w.dtype if w is not None else x.dtype
    gw = gw.astype(w.dtype, copy=False) if w is not None else None
    return gx, gw, gb.astype(out_dt, copy=False)


def rms_norm_forward(x, w, eps):
    """(y, rstd): y = x * rstd * w, rstd = 1/sqrt(mean(x^2) + eps) (...,) float32 (float64 for float64 x)."""
    ctypes_of(x.dtype)
    _check("rms_norm_forward", x, w)
    y, _, rstd = _forward(x, w, None, eps, rms=True)
    return y, rstd


def rms_norm_backward(gy, x, w, rstd):
    """(gx, gw); gw None when w is None."""
    ctypes_of(x.dtype)
    _check("rms_norm_backward", x, w)
    gx, gw, _ = _backward(gy, x, w, None, rstd, rms=True, want_gb=False)
    return gx, (gw.astype(w.dtype, copy=False) if w is not None else None)


register("layer_norm_forward", layer_norm_forward)
register("layer_norm_backward", layer_norm_backward)
register("rms_norm_forward", rms_norm_forward)
register("rms_norm_backward", rms_norm_backward)
