"""GELU in GPT-2's tanh form, and bias + GELU: y = gelu(x) or gelu(x + b).

    gelu(h) = h s,  s = (1 + tanh(u)) / 2 = sigmoid(2u),  u = k (h + c h^3),  k = sqrt(2 / pi),  c = 0.044715
    gelu'(h) = s (1 + 2k h (1 - s) (1 + 3c h^2))

- ``gelu_reference`` / ``bias_gelu_reference``: the composed reference (tanh and arithmetic ops); ``F.gelu(x,
  fused=False)`` and ``F.bias_gelu(x, b, fused=False)``.
- ``GeluTanh`` / ``BiasGelu``: one node each. NumPy (and CuPy without kernels): forward keeps h and s, so backward
  is one pass over them; CUDA (``gelu_forward`` ... ``bias_gelu_backward`` in ``autograd/cuda/elementwise.py``):
  nothing extra is kept, the kernel recomputes s from x (GPU memory is the scarcer resource).
"""
from __future__ import annotations

import math

from ... import backend
from ...cuda import kernel_for
from ...tensor import Tensor
from .base import FusedFunction

GELU_K = math.sqrt(2.0 / math.pi)
GELU_C = 0.044715


# ------------------------------------------------------------------------------------------------ composed reference
def gelu_reference(x: Tensor) -> Tensor:
    """gelu(x) = x/2 (1 + tanh(k (x + c x^3))) from primitive ops; differentiable any number of times."""
    return x * 0.5 * ((x + x * x * x * GELU_C) * GELU_K).tanh() + x * 0.5


def bias_gelu_reference(x: Tensor, b: Tensor) -> Tensor:
    """gelu(x + b) from primitive ops; x (..., C), b (C,)."""
    return gelu_reference(x + b)


# ------------------------------------------------------------------------------------------------ NumPy
# In-place ufuncs (out=...): on NumPy every fresh (..., C) temporary costs page faults, and ``a *= b`` chains are
# several times faster than the same expression building temporaries.
def gelu_forward(h):
    """(y, s): y = gelu(h) and the factor s = sigmoid(2u) that backward reads; same shape and dtype as h."""
    xp = backend.xp_of(h)
    s = xp.multiply(h, h, out=xp.empty_like(h))   # out=: an array also for 0-d h (h * h would be a scalar)
    s *= GELU_C * GELU_K
    s += GELU_K
    s *= h                        # u = k (h + c h^3)
    xp.tanh(s, out=s)             # tanh is about twice as fast as exp in NumPy's float32 loops
    s += 1
    s *= 0.5                      # s = (1 + tanh(u)) / 2
    return h * s, s


def gelu_backward(h, s, gy):
    """gx = gy * gelu'(h) from the saved h and s: gelu'(h) = s (1 + 2k h (1 - s) (1 + 3c h^2))."""
    xp = backend.xp_of(h)
    a = xp.multiply(h, h, out=xp.empty_like(h))
    a *= 6 * GELU_K * GELU_C
    a += 2 * GELU_K
    a *= h
    a *= xp.subtract(1, s)
    a += 1
    a *= s
    a *= gy
    return a


# ------------------------------------------------------------------------------------------------ the fused ops
class GeluTanh(FusedFunction):
    """y = gelu(x), tanh form, in one node."""
    rule = "d gelu(x)/dx = s (1 + 2k x (1 - s)(1 + 3c x^2)),  s = (1 + tanh(k (x + c x^3))) / 2"

    def forward(self, x):
        kernel = kernel_for("gelu_forward", x)
        if kernel is not None:
            self.s = None
            return kernel(x)
        y, self.s = gelu_forward(x)
        return y

    def backward_arrays(self, gy):
        x = self.inputs[0].data
        if self.s is None:
            return Tensor(kernel_for("gelu_backward", x)(x, gy.data))
        return Tensor(gelu_backward(x, self.s, gy.data))

    def reference(self, x):
        return gelu_reference(x)


class BiasGelu(FusedFunction):
    """y = gelu(x + b), tanh form; x (..., C), b (C,). The feed-forward's first activation after a bias-free GEMM."""
    rule = "d gelu(x+b)/dx = gelu'(x+b),  d/db = the sum of gy gelu'(x+b) over the leading axes"

    def forward(self, x, b):
        kernel = kernel_for("bias_gelu_forward", x)
        if kernel is not None:
            self.h = self.s = None
            return kernel(x, b)
        self.h = x + b
        y, self.s = gelu_forward(self.h)
        return y

    def backward_arrays(self, gy):
        x, b = self.inputs
        need_x, need_b = self.needs_input_grad
        if self.s is None:
            gx, gb = kernel_for("bias_gelu_backward", x.data)(x.data, b.data, gy.data)
        else:
            gx = gelu_backward(self.h, self.s, gy.data)
            gb = None
            if need_b:   # float32 sums at least: a float16 column sum would overflow
                gb = gx.reshape(-1, gx.shape[-1]).sum(axis=0, dtype=backend.acc_dtype(gx.dtype)).astype(b.dtype)
        return (Tensor(gx) if need_x else None, Tensor(gb) if need_b else None)

    def reference(self, x, b):
        return bias_gelu_reference(x, b)
