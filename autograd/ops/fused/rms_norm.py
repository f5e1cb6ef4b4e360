"""RMSNorm over the last axis: y = x / sqrt(mean(x^2) + eps) * w, with w optional (Llama, Qwen, Gemma).

    xhat = x rstd,  rstd = 1 / sqrt(mean(x^2) + eps),  g = gy w
    gx = rstd (g - xhat mean(g xhat)),   gw = sum over rows of gy xhat

- ``rms_norm_reference``: composed from primitive ops; ``F.rms_norm(..., fused=False)``.
- ``RMSNorm``: one node, statistics in float32 at least. NumPy code below (forward keeps rstd per row); CUDA:
  ``rms_norm_forward`` / ``_backward`` (``autograd/cuda/norms.py``, the LayerNorm kernels with the mean left out).
"""
from __future__ import annotations

from ... import backend
from ...cuda import kernel_for
from ...tensor import Tensor
from .base import FusedFunction


# ------------------------------------------------------------------------------------------------ composed reference
def rms_norm_reference(x: Tensor, weight: Tensor | None = None, eps: float = 1e-6) -> Tensor:
    """RMSNorm from primitive ops (statistics in x's dtype); differentiable any number of times."""
    y = x / ((x * x).mean(axis=-1, keepdims=True) + eps).sqrt()
    return y * weight if weight is not None else y


# ------------------------------------------------------------------------------------------------ NumPy
def rms_norm_forward(x, w, eps):
    """(y, rstd): x (..., C), w (C,) or None; rstd (...,) in float32 at least."""
    xp = backend.xp_of(x)
    xf = x.astype(backend.acc_dtype(x.dtype), copy=False)
    rstd = 1.0 / xp.sqrt((xf * xf).mean(axis=-1) + eps)
    y = xf * rstd[..., None]
    if w is not None:
        y *= w
    return y.astype(x.dtype, copy=False), rstd


def rms_norm_backward(gy, x, w, rstd):
    """(gx, gw); gw None without weight. p = gy xhat serves both gw (its column sums) and mean(g xhat) (its row dot
    products with w: a GEMV)."""
    acc = backend.acc_dtype(x.dtype)
    C = x.shape[-1]
    xhat = x.reshape(-1, C).astype(acc, copy=False) * rstd.reshape(-1, 1)
    g = gy.reshape(-1, C).astype(acc, copy=False)
    p = g * xhat
    if w is not None:
        wa = w.astype(acc, copy=False)
        gw = p.sum(axis=0).astype(w.dtype, copy=False)
        proj = p @ wa
        gx = g * wa
    else:
        gw = None
        proj = p.sum(axis=1)
        gx = g.copy()
    proj *= 1.0 / C
    xhat *= proj[:, None]
    gx -= xhat
    gx *= rstd.reshape(-1, 1)
    return gx.astype(x.dtype, copy=False).reshape(x.shape), gw


# ------------------------------------------------------------------------------------------------ the fused op
class RMSNorm(FusedFunction):
    """y = rms_norm(x, w) in one node; inputs x and, when given, w."""
    rule = "d rms_norm: gx = rstd (g - xhat mean(g xhat)), g = gy w, xhat = x rstd; gw = sum gy xhat"
    params = ("eps",)

    def forward(self, x, *w):
        y, self.rstd = (kernel_for("rms_norm_forward", x) or rms_norm_forward)(x, w[0] if w else None, self.eps)
        return y

    def backward_arrays(self, gy):
        x = self.inputs[0]
        w = self.inputs[1].data if len(self.inputs) > 1 else None
        gx, gw = (kernel_for("rms_norm_backward", x.data) or rms_norm_backward)(gy.data, x.data, w, self.rstd)
        return (Tensor(gx), Tensor(gw)) if w is not None else Tensor(gx)

    def reference(self, x, *w):
        return rms_norm_reference(x, w[0] if w else None, self.eps)
