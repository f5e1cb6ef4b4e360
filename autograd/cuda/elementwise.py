"""Fused elementwise kernels: GELU (tanh approximation, GPT-2) and bias + GELU, forward and backward.

One pass over memory each: the forward reads x (and b) and writes y; the backward reads x (b) and gy and writes gx.
Arithmetic runs in float32 for float16/float32 and in float64 for float64. The bias gradient gb is a column sum of
gx (the ``colsum`` cuBLAS product, float32 accumulation). GELU and its derivative are written once, in ``_GELU``.
"""
from __future__ import annotations

import numpy as np

from ._common import LazyModule, ctypes_of, require_cupy
from .registry import register

# GELU and its derivative, written once: shared by the raw kernels and the ElementwiseKernels below
_GELU = r"""
#define GELU_K 0.7978845608028654
#define GELU_C 0.044715
// gelu(h) = h/2 (1 + t), t = tanh(k (h + c h^3))
template <typename A> __device__ __forceinline__ A gelu_f(A h) {
    const A t = tanh((A)GELU_K * (h + (A)GELU_C * h * h * h));
    return (A)0.5 * h * ((A)1 + t);
}
// gelu'(h) = (1 + t)/2 + h/2 (1 - t^2) k (1 + 3 c h^2)
template <typename A> __device__ __forceinline__ A gelu_d(A h) {
    const A t = tanh((A)GELU_K * (h + (A)GELU_C * h * h * h));
    return (A)0.5 * ((A)1 + t) + (A)0.5 * h * ((A)1 - t * t) * (A)GELU_K * ((A)1 + (A)(3 * GELU_C) * h * h);
}
"""

# contiguous arrays: a RawKernel with plain indices, 4 independent elements per thread (ElementwiseKernel's general
# indexer costs about 1.6x on these memory-bound passes)
_RAW = _GELU + r"""
template <typename T, typename A>
__global__ void gelu_fwd_raw(const T* __restrict__ x, const T* __restrict__ b, T* __restrict__ y, i64 n, int C,
                             int has_b) {
    const i64 base = (i64)blockIdx.x * blockDim.x * 4 + threadIdx.x;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const i64 i = base + (i64)j * blockDim.x;
        if (i < n) {
            A h = ld(x, i);
            if (has_b) h += ld(b, i % C);
            st(y, i, gelu_f(h));
        }
    }
}
template <typename T, typename A>
__global__ void gelu_bwd_raw(const T* __restrict__ x, const T* __restrict__ b, const T* __restrict__ gy,
                             T* __restrict__ gx, i64 n, int C, int has_b) {
    const i64 base = (i64)blockIdx.x * blockDim.x * 4 + threadIdx.x;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const i64 i = base + (i64)j * blockDim.x;
        if (i < n) {
            A h = ld(x, i);
            if (has_b) h += ld(b, i % C);
            st(gx, i, ld(gy, i) * gelu_d(h));
        }
    }
}
"""
_TARGS = ["float,float", "half_t,float", "double,double"]
_raw = LazyModule(_RAW, {"gelu_fwd_raw": _TARGS, "gelu_bwd_raw": _TARGS})
_THREADS = 256


def _raw_ok(x, b, *others) -> bool:
    return (x.flags.c_contiguous and x.ndim >= 1 and x.size > 0 and all(o.flags.c_contiguous and o.shape == x.shape
                                                                       for o in others)
            and (b is None or (b.flags.c_contiguous and b.shape == (x.shape[-1],))))


def _launch(name, x, b, args):
    t, a = ctypes_of(x.dtype)
    n = x.size
    grid = ((n + 4 * _THREADS - 1) // (4 * _THREADS),)
    C = x.shape[-1]
    _raw.kernel(name, f"{t},{a}")(grid, (_THREADS,), args + (np.int64(n), np.int32(C), np.int32(b is not None)))


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


def _check(op: str, *arrays):
    dt = arrays[0].dtype
    if dt not in (np.float16, np.float32, np.float64):
        raise TypeError(f"{op}: CUDA kernel takes float16/float32/float64, got {dt}")
    for a in arrays[1:]:
        if a.dtype != dt:
            raise TypeError(f"{op}: dtypes differ ({dt} and {a.dtype})")


def gelu_forward(x):
    """y = gelu(x), same shape and dtype."""
    _check("gelu_forward", x)
    if _raw_ok(x, None):
        y = require_cupy().empty_like(x)
        _launch("gelu_fwd_raw", x, None, (x, x, y))
        return y
    return _k("gelu_fwd")(x)


def gelu_backward(x, gy):
    """gx = gy * gelu'(x)."""
    _check("gelu_backward", x, gy)
    if _raw_ok(x, None, gy):
        gx = require_cupy().empty_like(x)
        _launch("gelu_bwd_raw", x, None, (x, x, gy, gx))
        return gx
    return _k("gelu_bwd")(x, gy)


def bias_gelu_forward(x, b):
    """y = gelu(x + b); x (..., C), b (C,)."""
    _check("bias_gelu_forward", x, b)
    if _raw_ok(x, b):
        y = require_cupy().empty_like(x)
        _launch("gelu_fwd_raw", x, b, (x, b, y))
        return y
    return _k("bias_gelu_fwd")(x, b)


def bias_gelu_backward(x, b, gy):
    """(gx, gb): gx = gy * gelu'(x + b) (..., C); gb (C,) = gx summed over the leading axes."""
    _check("bias_gelu_backward", x, b, gy)
    if _raw_ok(x, b, gy):
        gx = require_cupy().empty_like(x)
        _launch("gelu_bwd_raw", x, b, (x, b, gy, gx))
    else:
        gx = _k("bias_gelu_bwd")(x, b, gy)
    C = x.shape[-1]
    from .matmul import colsum   # one cuBLAS ones @ gx pass, several times faster than CuPy's axis-0 sum
    gb = colsum(gx.reshape(-1, C), out_dtype=b.dtype)
    return gx, gb


register("gelu_forward", gelu_forward)
register("gelu_backward", gelu_backward)
register("bias_gelu_forward", bias_gelu_forward)
register("bias_gelu_backward", bias_gelu_backward)
