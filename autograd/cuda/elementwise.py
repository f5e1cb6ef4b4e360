"""Fused elementwise kernels: GELU (tanh approximation, GPT-2) and bias + GELU, forward and backward.

One pass over memory each: the forward reads x (and b) and writes y; the backward reads x (b) and gy and writes gx.
Arithmetic runs in float32 for float16/bfloat16/float32 and in float64 for float64. The bias gradient gb is a
column sum of gx (the ``colsum`` cuBLAS product, float32 accumulation). GELU and its derivative are written once, in ``_GELU``.
"""
from __future__ import annotations

import numpy as np

from ..dtypes import is_bfloat16
from ._common import FAST_MATH, FLOAT_DTYPES, VECTOR_IO, LazyModule, aligned16, contiguous, ctypes_of, require_cupy
from .registry import register

# GELU and its derivative, written once: shared by the raw kernels and the ElementwiseKernels below.
# tanh(u) = 2 sigmoid(2u) - 1, so both come from s = sigmoid(2u): one exp. float: exp(-2u) = 2^(h (a + b h^2)) with
# a = -2k log2(e), b = c a (one EX2 after one multiply and one FMA) and an approximate reciprocal (1 ulp; an IEEE
# division costs ~10 instructions and a branch: the 16-bit backward moves 6 bytes per element, too few to hide them).
_GELU = FAST_MATH + r"""
#define GELU_K 0.7978845608028654
#define GELU_C 0.044715
#define GELU_LOG2E 1.4426950408889634
// s = sigmoid(2u),  u = k (h + c h^3)
__device__ __forceinline__ float gelu_sig2(float h) {
    const float a = (float)(-2 * GELU_K * GELU_LOG2E), b = (float)(-2 * GELU_K * GELU_C * GELU_LOG2E);
    return __fdividef(1.0f, 1.0f + exp2_fast(h * fmaf(b, h * h, a)));
}
__device__ __forceinline__ double gelu_sig2(double h) {
    return 1.0 / (1.0 + exp(-2.0 * GELU_K * (h + GELU_C * h * h * h)));
}
// gelu(h) = h s
template <typename A> __device__ __forceinline__ A gelu_f(A h) { return h * gelu_sig2(h); }
// gelu'(h) = s (1 + 2k h (1 - s) (1 + 3c h^2))
template <typename A> __device__ __forceinline__ A gelu_d(A h) {
    const A s = gelu_sig2(h);
    return s * ((A)1 + (A)(2 * GELU_K) * h * ((A)1 - s) * ((A)1 + (A)(3 * GELU_C) * h * h));
}
"""

# contiguous arrays: RawKernels with plain indices (ElementwiseKernel's general indexer costs about 1.6x on these
# memory-bound passes). gelu_vec: 16-byte vectors, U of them per thread, all loads issued before the arithmetic
# (n and C multiples of the vector width, aligned pointers); gelu_elem: one element at a time, 4 per thread.
# Bytes per element: forward 2 x itemsize (read x, write y), backward 3 x itemsize (read x, gy; write gx).
_RAW = _GELU + r"""
// BWD = false: out = gelu(x [+ b]);  BWD = true: out = gy * gelu'(x [+ b])  (gy unused in the forward).
// Each step of a thread covers U vectors blockDim.x apart; a grid smaller than nvec / (U blockDim.x) walks on.
template <typename T, typename A, int U, bool BWD>
__global__ void gelu_vec(const T* __restrict__ x, const T* __restrict__ b, const T* __restrict__ gy,
                         T* __restrict__ out, i64 nvec, int C, int has_b) {
    constexpr int V = 16 / sizeof(T);
    const i64 stride = (i64)gridDim.x * blockDim.x * U;
    for (i64 base = (i64)blockIdx.x * blockDim.x * U + threadIdx.x; base < nvec; base += stride) {
        A h[U][V], g[U][V];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const i64 i = base + (i64)u * blockDim.x;
            if (i < nvec) {
                ldv<V>(x, i * V, h[u]);
                if (BWD) ldv<V>(gy, i * V, g[u]);
                if (has_b) {
                    A bv[V];
                    ldv<V>(b, (i * V) % C, bv);
#pragma unroll
                    for (int k = 0; k < V; ++k) h[u][k] += bv[k];
                }
            }
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const i64 i = base + (i64)u * blockDim.x;
            if (i < nvec) {
#pragma unroll
                for (int k = 0; k < V; ++k) h[u][k] = BWD ? g[u][k] * gelu_d(h[u][k]) : gelu_f(h[u][k]);
                stv<V>(out, i * V, h[u]);
            }
        }
    }
}
template <typename T, typename A, bool BWD>
__global__ void gelu_elem(const T* __restrict__ x, const T* __restrict__ b, const T* __restrict__ gy,
                          T* __restrict__ out, i64 n, int C, int has_b) {
    const i64 base = (i64)blockIdx.x * blockDim.x * 4 + threadIdx.x;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const i64 i = base + (i64)j * blockDim.x;
        if (i < n) {
            A h = ld(x, i);
            if (has_b) h += ld(b, i % C);
            st(out, i, BWD ? ld(gy, i) * gelu_d(h) : gelu_f(h));
        }
    }
}
"""
_TARGS = ["float,float", "half_t,float", "bf16_t,float", "double,double"]
_U = 1   # 16-byte vectors per thread (more blocks in flight stream faster than more vectors per thread)
_raw = LazyModule(VECTOR_IO + _RAW, {"gelu_vec": [f"{t},{_U},{d}" for t in _TARGS for d in ("false", "true")],
                                     "gelu_elem": [f"{t},{d}" for t in _TARGS for d in ("false", "true")]})
_THREADS = 256


def _raw_ok(x, b, *others) -> bool:
    return (x.flags.c_contiguous and x.ndim >= 1 and x.size > 0 and all(o.flags.c_contiguous and o.shape == x.shape
                                                                       for o in others)
            and (b is None or (b.flags.c_contiguous and b.shape == (x.shape[-1],))))


def _launch(x, b, gy, out):
    """out = gelu(x [+ b]), or gy * gelu'(x [+ b]) when gy is given. The vector kernel when n (and C, with a
    bias) are multiples of the vector width and the pointers are aligned, else the element-wise one."""
    t, a = ctypes_of(x.dtype)
    n, C = x.size, x.shape[-1]
    vec = 16 // x.dtype.itemsize
    bwd = "true" if gy is not None else "false"
    arrays = (x, x if b is None else b, x if gy is None else gy, out)
    flags = (np.int32(C), np.int32(b is not None))
    if n % vec == 0 and (b is None or C % vec == 0) and aligned16(*arrays):
        nvec = n // vec
        grid = ((nvec + _U * _THREADS - 1) // (_U * _THREADS),)
        _raw.kernel("gelu_vec", f"{t},{a},{_U},{bwd}")(grid, (_THREADS,), arrays + (np.int64(nvec),) + flags)
    else:
        grid = ((n + 4 * _THREADS - 1) // (4 * _THREADS),)
        _raw.kernel("gelu_elem", f"{t},{a},{bwd}")(grid, (_THREADS,), arrays + (np.int64(n),) + flags)
    return out


# strided / broadcast inputs: ElementwiseKernels over the same device functions
_PRE = r"""
template <typename U> struct Acc { typedef float type; };
template <> struct Acc<double> { typedef double type; };
""" + _GELU

# h = x (or x + b, in the accumulation type A)
_H = "typedef Acc<T>::type A;\nA h = (A)x;\n"
_HB = "typedef Acc<T>::type A;\nA h = (A)x + (A)b;\n"
_FWD = "y = (T)gelu_f(h);\n"
_BWD = "gx = (T)((A)gy * gelu_d(h));\n"

_kernels: dict = {}


def _k(name: str):
    k = _kernels.get(name)
    if k is None:
        cp = require_cupy()
        if name == "gelu_fwd":
            k = cp.ElementwiseKernel("T x", "T y", _H + _FWD, "tgl_gelu_fwd", preamble=_PRE)
        elif name == "gelu_bwd":
            k = cp.ElementwiseKernel("T x, T gy", "T gx", _H + _BWD, "tgl_gelu_bwd", preamble=_PRE)
        elif name == "bias_gelu_fwd":
            k = cp.ElementwiseKernel("T x, T b", "T y", _HB + _FWD, "tgl_bias_gelu_fwd", preamble=_PRE)
        elif name == "bias_gelu_bwd":
            k = cp.ElementwiseKernel("T x, T b, T gy", "T gx", _HB + _BWD, "tgl_bias_gelu_bwd", preamble=_PRE)
        else:
            raise KeyError(name)
        _kernels[name] = k
    return k


def _operands(op: str, x, b, *others):
    """(x, b, others, raw): dtypes checked; bfloat16 views made contiguous (the ElementwiseKernels below serve
    CuPy's own dtypes only); raw: the RawKernels take them."""
    dt = x.dtype
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{op}: CUDA kernel takes float16/bfloat16/float32/float64, got {dt}")
    for a in (b, *others):
        if a is not None and a.dtype != dt:
            raise TypeError(f"{op}: dtypes differ ({dt} and {a.dtype})")
    if is_bfloat16(dt):
        x, others = contiguous(x), tuple(contiguous(o) for o in others)
        b = contiguous(b) if b is not None else None
    raw = _raw_ok(x, b, *others)
    if not raw and is_bfloat16(dt):
        raise TypeError(f"{op}: bfloat16 operands must share x's shape {x.shape} (bias: ({x.shape[-1]},))")
    return x, b, others, raw


def gelu_forward(x):
    """y = gelu(x), same shape and dtype."""
    x, _, _, raw = _operands("gelu_forward", x, None)
    if raw:
        return _launch(x, None, None, require_cupy().empty_like(x))
    return _k("gelu_fwd")(x)


def gelu_backward(x, gy):
    """gx = gy * gelu'(x)."""
    x, _, (gy,), raw = _operands("gelu_backward", x, None, gy)
    if raw:
        return _launch(x, None, gy, require_cupy().empty_like(x))
    return _k("gelu_bwd")(x, gy)


def bias_gelu_forward(x, b):
    """y = gelu(x + b); x (..., C), b (C,)."""
    x, b, _, raw = _operands("bias_gelu_forward", x, b)
    if raw:
        return _launch(x, b, None, require_cupy().empty_like(x))
    return _k("bias_gelu_fwd")(x, b)


def bias_gelu_backward(x, b, gy):
    """(gx, gb): gx = gy * gelu'(x + b) (..., C); gb (C,) = gx summed over the leading axes."""
    x, b, (gy,), raw = _operands("bias_gelu_backward", x, b, gy)
    gx = _launch(x, b, gy, require_cupy().empty_like(x)) if raw else _k("bias_gelu_bwd")(x, b, gy)
    C = x.shape[-1]
    from .matmul import colsum   # one cuBLAS ones @ gx pass, several times faster than CuPy's axis-0 sum
    gb = colsum(gx.reshape(-1, C), out_dtype=b.dtype)
    return gx, gb


register("gelu_forward", gelu_forward)
register("gelu_backward", gelu_backward)
register("bias_gelu_forward", bias_gelu_forward)
register("bias_gelu_backward", bias_gelu_backward)
