"""The residual add fused into the norm that follows it: s = x + r, y = norm(s), both returned.

A pre-norm decoder adds each branch's output r to the residual stream x and normalises the sum for the next
branch. As one node, s and y come out of one pass over x and r, and the backward is one pass too:

    gs_total = gs + norm_backward(gy)        (gs: the gradient that reaches s from the rest of the stream)
    gx = gs_total,  gr = gs_total            (each summed to its input's shape and cast to its dtype)

s has the promoted dtype of x and r (float32 stream + float16/bfloat16 branch under autocast: float32), y has s's.
x and r broadcast as ``x + r`` does (the CUDA kernel takes one shape; broadcasting runs the array code).

- ``add_layer_norm_reference`` / ``add_rms_norm_reference``: ``x + r`` then the norm's composed reference;
  ``F.add_layer_norm(..., fused=False)`` / ``F.add_rms_norm(..., fused=False)``.
- ``AddLayerNorm`` / ``AddRMSNorm``: one node with outputs (s, y). NumPy: the add, then the norm's own array code
  (``layer_norm.py`` / ``rms_norm.py``); CUDA: ``add_layer_norm_forward`` ... ``add_rms_norm_backward`` in
  ``autograd/cuda/norms.py`` (the norm kernels with the residual read, s written, gs added).
"""
from __future__ import annotations

import numpy as np

from ... import dtypes
from ...cuda import kernel_for
from ...tensor import Tensor
from ..shape import sum_to
from .base import FusedFunction
from .layer_norm import layer_norm_backward, layer_norm_forward, layer_norm_reference
from .rms_norm import rms_norm_backward, rms_norm_forward, rms_norm_reference


# ------------------------------------------------------------------------------------------------ composed references
def add_layer_norm_reference(x: Tensor, r: Tensor, weight: Tensor | None = None, bias: Tensor | None = None,
                             eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """(s, y) = (x + r, layer_norm(x + r)) from primitive ops; x, r (..., C), weight and bias (C,) or None."""
    s = x + r
    return s, layer_norm_reference(s, weight, bias, eps)


def add_rms_norm_reference(x: Tensor, r: Tensor, weight: Tensor | None = None,
                           eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """(s, y) = (x + r, rms_norm(x + r)) from primitive ops; x, r (..., C), weight (C,) or None."""
    s = x + r
    return s, rms_norm_reference(s, weight, eps)


# ------------------------------------------------------------------------------------------------ array code
def _residual_sum(x, r):
    """x + r in the dtype the composed add computes in."""
    dt = dtypes.result_type(x, r)
    return x.astype(dt, copy=False) + r.astype(dt, copy=False)


def _kernel(name: str, x, r, *params):
    """The CUDA kernel ``name`` when it takes these arrays: one shape, x already in s's dtype (float32 x with a
    16-bit r, or one dtype), weight/bias in x's dtype; else None (the array code runs)."""
    kernel = kernel_for(name, x)
    if kernel is None or type(r) is np.ndarray or r.shape != x.shape:
        return None
    if r.dtype != x.dtype and (x.dtype != np.float32 or r.dtype.itemsize != 2):
        return None
    if any(p is not None and p.dtype != x.dtype for p in params):
        return None
    return kernel


def _input_grads(fn, g) -> tuple:
    """(gx, gr) from the gradient g of s: each summed to its input's shape (the engine casts the dtype)."""
    x, r = fn.inputs[0], fn.inputs[1]
    gt = Tensor(g)
    need_x, need_r = fn.needs_input_grad[0], fn.needs_input_grad[1]
    return (sum_to(gt, x.shape) if need_x else None, sum_to(gt, r.shape) if need_r else None)


# ------------------------------------------------------------------------------------------------ the fused ops
class AddLayerNorm(FusedFunction):
    """(s, y) = (x + r, layer_norm(x + r, w, b)) in one node; inputs x, r and, when given, w then b."""
    rule = ("d add_layer_norm: gs_total = gs + layer_norm'(gy) (gx = rstd (g - mean(g) - xhat mean(g xhat)), "
            "g = gy w); gx = gr = gs_total; gw = sum gy xhat; gb = sum gy")
    params = ("has_w", "has_b", "eps")

    def forward(self, x, r, *wb):
        w = wb[0] if self.has_w else None
        b = wb[-1] if self.has_b else None
        kernel = _kernel("add_layer_norm_forward", x, r, w, b)
        if kernel is not None:
            s, y, self.mean, self.rstd = kernel(x, r, w, b, self.eps)
            self.s, self.xhat = s, None
            return s, y
        s = _residual_sum(x, r)
        y, self.rstd, self.xhat = layer_norm_forward(s, w, b, self.eps)
        return s, y

    def backward_arrays(self, gs, gy):
        w = self.inputs[2].data if self.has_w else None
        if self.xhat is None:
            r = self.inputs[1].data
            gx, gr, gw, gb = kernel_for("add_layer_norm_backward", self.s)(
                gs.data, gy.data, self.s, w, self.mean, self.rstd, r.dtype)
            out = [Tensor(gx), Tensor(gr)]
        else:
            g, gw, gb = layer_norm_backward(gy.data, self.xhat, w, self.rstd, self.has_b)
            g = g + gs.data
            out = list(_input_grads(self, g))
        if self.has_w:
            out.append(Tensor(gw))
        if self.has_b:
            out.append(Tensor(gb))
        return tuple(out)

    def reference(self, x, r, *wb):
        return add_layer_norm_reference(x, r, wb[0] if self.has_w else None, wb[-1] if self.has_b else None,
                                        self.eps)


class AddRMSNorm(FusedFunction):
    """(s, y) = (x + r, rms_norm(x + r, w)) in one node; inputs x, r and, when given, w."""
    rule = ("d add_rms_norm: gs_total = gs + rms_norm'(gy) (gx = rstd (g - xhat mean(g xhat)), g = gy w); "
            "gx = gr = gs_total; gw = sum gy xhat")
    params = ("eps",)

    def forward(self, x, r, *w):
        w = w[0] if w else None
        kernel = _kernel("add_rms_norm_forward", x, r, w)
        self.on_device = kernel is not None
        if kernel is not None:
            self.s, y, self.rstd = kernel(x, r, w, self.eps)
            return self.s, y
        self.s = _residual_sum(x, r)
        y, self.rstd = rms_norm_forward(self.s, w, self.eps)
        return self.s, y

    def backward_arrays(self, gs, gy):
        w = self.inputs[2].data if len(self.inputs) > 2 else None
        if self.on_device:
            r = self.inputs[1].data
            gx, gr, gw = kernel_for("add_rms_norm_backward", self.s)(gs.data, gy.data, self.s, w, self.rstd,
                                                                        r.dtype)
            out = (Tensor(gx), Tensor(gr))
        else:
            g, gw = rms_norm_backward(gy.data, self.s, w, self.rstd)
            out = _input_grads(self, g + gs.data)
        return out + (Tensor(gw),) if w is not None else out

    def reference(self, x, r, *w):
        return add_rms_norm_reference(x, r, w[0] if w else None, self.eps)
