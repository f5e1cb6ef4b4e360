"""LayerNorm over the last axis: y = (x - mean) / sqrt(var + eps) * w + b, with w and b optional.

    xhat = (x - mean) rstd,  rstd = 1 / sqrt(var + eps),  g = gy w
    gx = rstd (g - mean(g) - xhat mean(g xhat)),   gw = sum over rows of gy xhat,   gb = sum over rows of gy

- ``layer_norm_reference``: composed from mean, subtraction, sqrt ...; ``F.layer_norm(..., fused=False)``.
- ``LayerNorm``: one node, statistics in float32 at least (float16 in, float16 out). NumPy: forward keeps xhat, and
  backward's row means are GEMVs; CUDA (``layer_norm_forward`` / ``_backward`` in ``autograd/cuda/norms.py``): keeps
  mean and rstd per row and recomputes xhat in the kernel.
"""
from __future__ import annotations

import numpy as np

from ... import backend
from ...cuda import kernel_for
from ...tensor import Tensor
from .base import FusedFunction


# ------------------------------------------------------------------------------------------------ composed reference
def layer_norm_reference(x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None,
                         eps: float = 1e-5) -> Tensor:
    """LayerNorm from primitive ops (statistics in x's dtype); differentiable any number of times."""
    xc = x - x.mean(axis=-1, keepdims=True)
    y = xc / ((xc * xc).mean(axis=-1, keepdims=True) + eps).sqrt()
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


# ------------------------------------------------------------------------------------------------ NumPy
def layer_norm_forward(x, w, b, eps):
    """(y, rstd, xhat): x (..., C); w, b (C,) or None; rstd (N,) and xhat (N, C) in float32 at least."""
    xp = backend.xp_of(x)
    acc = backend.acc_dtype(x.dtype)
    C = x.shape[-1]
    x2 = x.reshape(-1, C)
    if x2.dtype != acc:
        x2 = x2.astype(acc)
    xhat = x2 - (x2.sum(axis=1) * (1.0 / C))[:, None]
    var = np.einsum("ij,ij->i", xhat, xhat) if xp is np else (xhat * xhat).sum(axis=1)
    var *= 1.0 / C
    var += eps
    rstd = xp.reciprocal(xp.sqrt(var, out=var), out=var)
    xhat *= rstd[:, None]
    if w is not None:
        y = xhat * w
        if b is not None:
            y += b
    elif b is not None:
        y = xhat + b
    else:
        y = xhat.copy()
    return y.astype(x.dtype, copy=False).reshape(x.shape), rstd, xhat


def layer_norm_backward(gy, xhat, w, rstd, has_b):
    """(gx, gw, gb) from the saved xhat (N, C) and rstd (N,); gw / gb None without weight / bias."""
    C = xhat.shape[-1]
    g2 = gy.reshape(-1, C)
    if g2.dtype != xhat.dtype:
        g2 = g2.astype(xhat.dtype)
    p = g2 * xhat
    gw = p.sum(axis=0) if w is not None else None
    gb = g2.sum(axis=0) if has_b else None
    if w is not None:
        wa = w.astype(xhat.dtype, copy=False)
        proj = p @ wa                       # row dot products: one GEMV each instead of a product and a sum
        gmean = g2 @ wa
        gx = g2 * wa
    else:
        proj = p.sum(axis=1)
        gmean = g2.sum(axis=1)
        gx = g2.copy()
    proj *= 1.0 / C
    gmean *= 1.0 / C
    gx -= gmean[:, None]
    backend.xp_of(xhat).multiply(xhat, proj[:, None], out=p)
    gx -= p
    gx *= rstd[:, None]
    gx = gx.astype(gy.dtype, copy=False).reshape(gy.shape)
    if w is not None:
        gw = gw.astype(w.dtype, copy=False)
    if gb is not None:
        gb = gb.astype(gy.dtype if w is None else w.dtype, copy=False)
    return gx, gw, gb


# ------------------------------------------------------------------------------------------------ the fused op
class LayerNorm(FusedFunction):
    """y = layer_norm(x, w, b) in one node; inputs x and, when given, w then b."""
    rule = "d layer_norm: gx = rstd (g - mean(g) - xhat mean(g xhat)), g = gy w; gw = sum gy xhat; gb = sum gy"
    params = ("has_w", "has_b", "eps")

    def forward(self, x, *wb):
        w = wb[0] if self.has_w else None
        b = wb[-1] if self.has_b else None
        kernel = kernel_for("layer_norm_forward", x)
        if kernel is not None:
            y, self.mean, self.rstd = kernel(x, w, b, self.eps)
            self.xhat = None
            return y
        y, self.rstd, self.xhat = layer_norm_forward(x, w, b, self.eps)
        return y

    def backward_arrays(self, gy):
        x = self.inputs[0]
        w = self.inputs[1].data if self.has_w else None
        if self.xhat is None:
            gx, gw, gb = kernel_for("layer_norm_backward", x.data)(gy.data, x.data, w, self.mean, self.rstd)
        else:
            gx, gw, gb = layer_norm_backward(gy.data, self.xhat, w, self.rstd, self.has_b)
        out = [Tensor(gx)]
        if self.has_w:
            out.append(Tensor(gw))
        if self.has_b:
            out.append(Tensor(gb))
        return tuple(out)

    def reference(self, x, *wb):
        return layer_norm_reference(x, wb[0] if self.has_w else None, wb[-1] if self.has_b else None, self.eps)
