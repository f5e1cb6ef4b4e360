"""Linear layer: y = x @ w^T + b; x (..., in), w (out, in) (PyTorch / GPT-2 layout), b (out,) optional.

    gx = gy @ w,   gw = gy^T @ x,   gb = the sum of gy over rows

- ``linear_reference``: matmul, transpose and add (with the casts under autocast); ``F.linear(..., fused=False)``.
- ``Linear``: one node whose leading axes are folded into one, so each product is a single 2-D GEMM (no batched
  weight gradient to sum). ``compute_dtype`` (autocast, e.g. float16): x is cast inside the op, w comes as the
  parameter's shadow (``amp.cast_weight``: cast once per optimizer step, not per call), the product runs in that
  dtype and backward's GEMMs read the same low-precision w; backward hands each input its gradient in the input's
  own dtype straight from the GEMM (cuBLAS writes float32 for float32 master weights: no float16 weight gradient,
  no cast node). Products go to the ``matmul`` kernel on CuPy (``autograd/cuda/matmul.py``) and to NumPy's matmul
  on the CPU; on the GPU the bias is added inside the forward GEMM (``linear_bias``: cuBLASLt's BIAS epilogue, where
  the layout allows it) and its gradient is the ``colsum`` kernel (one cuBLAS product).
"""
from __future__ import annotations

import numpy as np

from ... import amp as _amp
from ... import backend, dtypes
from ...cuda import kernel_for
from ...tensor import Tensor
from .base import FusedFunction


def linear_reference(x: Tensor, weight: Tensor, bias: Tensor | None = None, compute_dtype=None) -> Tensor:
    """x @ weight^T + bias from primitive ops; with ``compute_dtype`` x and weight are cast first (autocast)."""
    if compute_dtype is not None:
        x, weight = x.astype(compute_dtype), weight.astype(compute_dtype)
    y = x @ weight.T
    if bias is None:
        return y
    y = y + bias
    return y if compute_dtype is None else y.astype(compute_dtype)


def weight_cast(w, compute_dtype):
    """The copy of the weight ``w`` that a product in ``compute_dtype`` (autocast's) reads: the parameter's shadow
    (``amp.cast_weight``, cast once per optimizer step), or None when no cast is needed."""
    if compute_dtype is not None and isinstance(w, Tensor) and w.dtype != compute_dtype:
        return _amp.cast_weight(w, compute_dtype)
    return None


def matmul(a, b, out_dtype=None):
    """a @ b on arrays; ``out_dtype`` (float32 for float16/bfloat16 operands): the result in that dtype (the CUDA kernel
    writes it from the GEMM itself)."""
    kernel = kernel_for("matmul", a)
    if kernel is not None:
        return kernel(a, b, out_dtype=out_dtype)
    return dtypes.widened(backend.xp_of(a).matmul, a, b, out_dtype=out_dtype)


def _column_sum(g2, dtype):
    """g2 (M, N) summed over rows in float32 at least, as ``dtype`` (a bias gradient)."""
    kernel = kernel_for("colsum", g2)
    if kernel is not None:
        return kernel(g2, out_dtype=dtype)
    if type(g2) is np.ndarray and g2.dtype == dtype:
        return g2.sum(axis=0)
    return g2.sum(axis=0, dtype=backend.acc_dtype(g2.dtype)).astype(dtype, copy=False)


class Linear(FusedFunction):
    """y = linear(x, w, b) in one node; inputs x, w and, when given, b."""
    rule = "d(x W^T + b): gx = g @ W, gW = g^T @ x, gb = sum of g over rows"
    params = ("compute_dtype", "weight_cast")
    compute_dtype = None
    weight_cast = None      # w as compute_dtype, made before the call (the parameter's shadow, ``amp.cast_weight``)

    @classmethod
    def apply(cls, x, w, *b, compute_dtype=None):
        """Under autocast the weight's low-precision copy comes from ``amp.cast_weight``: the parameter's shadow,
        written by the optimizer once per step, when it holds the current values; one cast otherwise."""
        return super().apply(x, w, *b, compute_dtype=compute_dtype, weight_cast=weight_cast(w, compute_dtype))

    def forward(self, x, w, *b):
        cd = self.compute_dtype
        if cd is not None:
            x = x if x.dtype == cd else x.astype(cd)
            w = self.weight_cast if self.weight_cast is not None else (w if w.dtype == cd else w.astype(cd))
            self.xc, self.wc = x, w           # what backward's GEMMs read (the cast copies, as astype nodes keep)
        x2 = x.reshape(-1, x.shape[-1])
        if b:
            kernel = kernel_for("linear_bias", x2)   # the bias inside the GEMM (CUDA: cuBLASLt's epilogue)
            y = kernel(x2, w, b[0]) if kernel is not None else None
            if y is not None:
                return y.reshape(x.shape[:-1] + (w.shape[0],))
        y = matmul(x2, w.T)
        if b:
            y += b[0]                          # a float32 bias is added in float32 and rounded once into y
        return y.reshape(x.shape[:-1] + (w.shape[0],))

    def backward_arrays(self, gy):
        x, w = self.inputs[0], self.inputs[1]
        need = self.needs_input_grad
        cd = self.compute_dtype
        xa, wa = (self.xc, self.wc) if cd is not None else (x.data, w.data)
        g2 = gy.data.reshape(-1, w.shape[0])
        if cd is not None and g2.dtype != cd:
            g2 = g2.astype(cd)
        gx = gw = None
        if need[0]:
            gx = Tensor(matmul(g2, wa, out_dtype=None if x.dtype == g2.dtype else x.dtype).reshape(x.shape))
        if need[1]:
            gw = Tensor(matmul(g2.T, xa.reshape(-1, x.shape[-1]), out_dtype=None if w.dtype == g2.dtype else w.dtype))
        if len(self.inputs) == 2:
            return gx, gw
        return gx, gw, (Tensor(_column_sum(g2, self.inputs[2].dtype)) if need[2] else None)

    def reference(self, x, w, *b):
        return linear_reference(x, w, b[0] if b else None, self.compute_dtype)
