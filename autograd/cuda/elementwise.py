"""Fused elementwise kernels: GELU (tanh approximation, GPT-2) and bias + GELU, forward and backward.

One pass over memory each: the forward reads x (and b) and writes y; the backward reads x (b) and gy and writes gx.
Arithmetic runs in float32 for float16/float32 and in float64 for float64. The bias gradient gb is a column sum of
gx, done by CuPy's reduction with float32 accumulation.
"""
from __future__ import annotations

import numpy as np

from ._common import acc_dtype, require_cupy

_PRE = r"""
template <typename U> struct Acc { typedef float type; };
template <> struct Acc<double> { typedef double type; };
#define GELU_K 0.7978845608028654
#define GELU_C 0.044715
"""

# h = x (or x + b, in the accumulation type A)
_H = "typedef Acc<T>::type A;\nA h = (A)x;\n"
_HB = "typedef Acc<T>::type A;\nA h = (A)x + (A)b;\n"

# y = h/2 (1 + t), t = tanh(k (x + c x^3))
_FWD = r"""
A t = tanh((A)GELU_K * (h + (A)GELU_C * h * h * h));
y = (T)((A)0.5 * h * ((A)1 + t));
"""
# gelu'(h) = (1 + t)/2 + h/2 (1 - t^2) k (1 + 3 c h^2)
_BWD = r"""
A t = tanh((A)GELU_K * (h + (A)GELU_C * h * h * h));
A d = (A)0.5 * ((A)1 + t) + (A)0.5 * h * ((A)1 - t * t) * (A)GELU_K * ((A)1 + (A)(3 * GELU_C) * h * h);
gx = (T)((A)gy * d);
"""

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
    return _k("gelu_fwd")(x)


def gelu_backward(x, gy):
    """gx = gy * gelu'(x)."""
    _check("gelu_backward", x, gy)
    return _k("gelu_bwd")(x, gy)


def bias_gelu_forward(x, b):
    """y = gelu(x + b); x (..., C), b (C,)."""
    _check("bias_gelu_forward", x, b)
    return _k("bias_gelu_fwd")(x, b)


def bias_gelu_backward(x, b, gy):
    """(gx, gb): gx = gy * gelu'(x + b) (..., C); gb (C,) = gx summed over the leading axes."""
    _check("bias_gelu_backward", x, b, gy)
    gx = _k("bias_gelu_bwd")(x, b, gy)
    C = x.shape[-1]
    gb = gx.reshape(-1, C).sum(axis=0, dtype=acc_dtype(gx.dtype)).astype(b.dtype, copy=False)
    return gx, gb
