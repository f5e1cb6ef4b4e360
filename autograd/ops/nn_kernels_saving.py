"""NumPy fast paths of the fused ops that keep one intermediate from forward for a cheaper backward.

GELU keeps its sigmoid factor, LayerNorm the normalised x, cross-entropy exp(x - max). The fused ops in ``nn.py``
use them on NumPy while the array stays under ``nn.SAVE_FOR_BACKWARD_LIMIT_BYTES``; CuPy and larger arrays take the
recomputing contract functions of ``nn_kernels`` instead, and the tests check that both agree.
"""
from __future__ import annotations

import numpy as np

from .nn_kernels import _GELU_C, _GELU_K, _acc, _xp

def gelu_forward_saving(x, b=None):
    """(y, h, s): y = gelu(h) with h = x (+ b), written as y = h * s, s = sigmoid(2k (h + c h**3)) (the same tanh
    approximation: (1 + tanh(u)) / 2 = sigmoid(2u)). Used on NumPy: saving h and s lets the backward take 9
    passes over the data instead of about 20 (on CuPy the ops recompute instead, to save GPU memory)."""
    xp = _xp(x)
    h = x + b if b is not None else x
    s = h * h
    s *= _GELU_C * _GELU_K
    s += _GELU_K
    s *= h                        # u = k (h + c h**3)
    xp.tanh(s, out=s)             # tanh is about twice as fast as exp in NumPy's float32 SIMD loops
    s += 1
    s *= 0.5                      # s = (1 + tanh(u)) / 2 = sigmoid(2u)
    return h * s, h, s


def gelu_backward_saved(h, s, gy):
    """gx = gy * gelu'(h) from the saved h and s: gelu'(h) = s (1 + h (1 - s) 2k (1 + 3c h**2))."""
    xp = _xp(h)
    a = h * h
    a *= 6 * _GELU_K * _GELU_C
    a += 2 * _GELU_K
    a *= h
    a *= xp.subtract(1, s)
    a += 1
    a *= s
    a *= gy
    return a


def layer_norm_forward_saving(x, w, b, eps):
    """(y, rstd, xhat): layer_norm_forward that also returns xhat = (x - mean) * rstd (float32 at least), for the
    NumPy path, whose backward then skips recomputing it and uses row dot products (GEMV) for the row means."""
    acc = _acc(x.dtype)
    C = x.shape[-1]
    x2 = x.reshape(-1, C)
    if x2.dtype != acc:
        x2 = x2.astype(acc)
    xhat = x2 - (x2.sum(axis=1) * (1.0 / C))[:, None]
    var = np.einsum("ij,ij->i", xhat, xhat) if type(xhat) is np.ndarray else (xhat * xhat).sum(axis=1)
    var *= 1.0 / C
    var += eps
    rstd = _xp(x).sqrt(var, out=var)
    rstd = _xp(x).reciprocal(rstd, out=rstd)
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


def layer_norm_backward_saved(gy, xhat, w, rstd, has_b):
    """(gx, gw, gb) from the saved xhat (N, C) and rstd (N,): gx = rstd (g - mean(g) - xhat mean(g xhat)), g = gy w;
    gw = sum(gy xhat), gb = sum(gy) (None when there is no weight / bias)."""
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
    _xp(xhat).multiply(xhat, proj[:, None], out=p)
    gx -= p
    gx *= rstd[:, None]
    gx = gx.astype(gy.dtype, copy=False).reshape(gy.shape)
    if w is not None:
        gw = gw.astype(w.dtype, copy=False)
    if gb is not None:
        gb = gb.astype(gy.dtype if w is None else w.dtype, copy=False)
    return gx, gw, gb


def cross_entropy_forward_saving(logits, targets, ignore_index):
    """(loss_sum, count, e, inv_sum): cross_entropy_forward for the NumPy path, which also keeps e = exp(x - max)
    (N, V) and 1/sum(e) (N,), so the backward is one pass: dlogits = scale * (e / sum - onehot)."""
    xp = _xp(logits)
    acc = _acc(logits.dtype)
    n = logits.shape[0]
    x = logits if logits.dtype == acc else logits.astype(acc)
    m = x.max(axis=-1)
    m = xp.where(xp.isfinite(m), m, 0)
    e = x - m[:, None]
    valid = targets != ignore_index
    safe = xp.where(valid, targets, 0)
    picked = e[xp.arange(n), safe]         # x[target] - max, read before exp overwrites e
    xp.exp(e, out=e)
    ssum = e.sum(axis=-1)
    per_row = xp.log(ssum)
    per_row -= picked
    per_row *= valid
    count = int(valid.sum())
    return per_row.sum(), count, e, xp.reciprocal(ssum, out=ssum)


def cross_entropy_backward_saved(e, inv_sum, targets, scale, ignore_index, dtype):
    """dlogits (N, V) from the saved e and 1/sum(e): scale * (e / sum - onehot), zero rows for ignored targets."""
    xp = _xp(e)
    n = e.shape[0]
    valid = targets != ignore_index
    row = valid.astype(e.dtype)
    row *= xp.asarray(scale, dtype=e.dtype)
    d = e * (inv_sum * row)[:, None]
    d[xp.arange(n), xp.where(valid, targets, 0)] -= row
    return d.astype(dtype, copy=False)
