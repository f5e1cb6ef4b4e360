"""Softmax and log-softmax over one axis.

    softmax:      y = exp(x - max) / sum(exp(x - max)),   dx = y (gy - sum(gy y))
    log_softmax:  y = x - logsumexp(x),                   dx = gy - exp(y) sum(gy)

- ``softmax_reference`` / ``log_softmax_reference``: composed from exp, sum and logsumexp; ``F.softmax(x,
  fused=False)``, ``F.log_softmax(x, fused=False)``.
- ``Softmax`` / ``LogSoftmax``: one node each, statistics in float32 at least (float16 input gives float16 output).
  NumPy code below; CUDA: ``softmax_forward`` / ``softmax_backward`` (``autograd/cuda/softmax.py``); log-softmax
  has no kernel of its own. A fully masked row (all -inf) gives NaN, not an error.
"""
from __future__ import annotations

from ... import backend
from ...cuda import kernel_for
from ...tensor import Tensor
from .base import FusedFunction


# ------------------------------------------------------------------------------------------------ composed reference
def softmax_reference(x: Tensor, axis: int = -1) -> Tensor:
    """exp(x - max) / sum(exp(x - max)); the max is a constant (softmax does not change under a shift)."""
    e = (x - x.detach().max(axis=axis, keepdims=True)).exp()
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax_reference(x: Tensor, axis: int = -1) -> Tensor:
    """x - logsumexp(x) over ``axis``."""
    return x - x.logsumexp(axis=axis, keepdims=True)


# ------------------------------------------------------------------------------------------------ NumPy (last axis)
def softmax_forward(x):
    """Softmax over the last axis, stable, computed in float32 at least; x's dtype back."""
    xp = backend.xp_of(x)
    acc = backend.acc_dtype(x.dtype)
    e = x.astype(acc) if x.dtype != acc else x.copy()
    m = e.max(axis=-1, keepdims=True)
    m = xp.where(xp.isfinite(m), m, 0)   # an all -inf row gives NaN, and no host sync on the GPU
    e -= m
    xp.exp(e, out=e)
    e /= e.sum(axis=-1, keepdims=True)
    return e.astype(x.dtype, copy=False)


def softmax_backward(y, gy):
    """gx = y (gy - sum(gy y)) over the last axis."""
    acc = backend.acc_dtype(y.dtype)
    yf = y.astype(acc, copy=False)
    gx = gy.astype(acc) if gy.dtype != acc else gy.copy()
    gx -= (gx * yf).sum(axis=-1, keepdims=True)
    gx *= yf
    return gx.astype(y.dtype, copy=False)


def logsumexp_last(x):
    """log(sum(exp(x))) over the last axis, (...,) in float32 at least; an all -inf row gives -inf."""
    xp = backend.xp_of(x)
    xf = x.astype(backend.acc_dtype(x.dtype), copy=False)
    m = xf.max(axis=-1)
    m = xp.where(xp.isfinite(m), m, 0)
    e = xf - m[..., None]
    xp.exp(e, out=e)
    return xp.log(e.sum(axis=-1)) + m


def log_softmax_forward(x):
    """x - logsumexp(x) over the last axis."""
    lse = logsumexp_last(x)
    return (x.astype(lse.dtype) - lse[..., None]).astype(x.dtype, copy=False)


def log_softmax_backward(y, gy):
    """gx = gy - exp(y) sum(gy) over the last axis."""
    xp = backend.xp_of(y)
    acc = backend.acc_dtype(y.dtype)
    g = gy.astype(acc, copy=False)
    p = xp.exp(y.astype(acc, copy=False))
    p *= g.sum(axis=-1, keepdims=True)
    return (g - p).astype(y.dtype, copy=False)


def _on_last_axis(fn, axis: int, *arrays):
    """fn over the last axis applied along ``axis``: moved there and back (views, no copies)."""
    if axis == -1 or axis == arrays[0].ndim - 1:
        return fn(*arrays)
    xp = backend.xp_of(arrays[0])
    return xp.moveaxis(fn(*(xp.moveaxis(a, axis, -1) for a in arrays)), -1, axis)


# ------------------------------------------------------------------------------------------------ the fused ops
class Softmax(FusedFunction):
    """y = softmax(x) over ``axis`` in one node."""
    rule = "d softmax(x)/dx: gx = y (gy - sum(gy y))"
    params = ("axis",)
    save_outputs = True

    def forward(self, x):
        return _on_last_axis(kernel_for("softmax_forward", x) or softmax_forward, self.axis, x)

    def backward_arrays(self, gy):
        y = self._out_arrays[0]
        return Tensor(_on_last_axis(kernel_for("softmax_backward", y) or softmax_backward, self.axis, y, gy.data))

    def reference(self, x):
        return softmax_reference(x, self.axis)


class LogSoftmax(FusedFunction):
    """y = log_softmax(x) over ``axis`` in one node."""
    rule = "d log_softmax(x)/dx: gx = gy - exp(y) sum(gy)"
    params = ("axis",)
    save_outputs = True

    def forward(self, x):
        return _on_last_axis(log_softmax_forward, self.axis, x)

    def backward_arrays(self, gy):
        return Tensor(_on_last_axis(log_softmax_backward, self.axis, self._out_arrays[0], gy.data))

    def reference(self, x):
        return log_softmax_reference(x, self.axis)
