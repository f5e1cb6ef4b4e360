"""Array kernels of the fused ops: xp-generic code (NumPy and CuPy) behind a CUDA-kernel dispatch.

The fused Functions in ``autograd/ops/nn.py`` call only these functions (the contract is
``docs/KERNELS.md``). Each one, when its main input is a CuPy array, first asks
``autograd.cuda.get_kernel(name)`` for a hand-written CUDA kernel of the same name and signature; when there is none
(or ``autograd.cuda`` is missing) the generic code below runs. For NumPy arrays the dispatch costs one type check.

Conventions: the last axis is the feature axis; statistics (mean, rstd, lse) are computed in float32 at least, also
for float16 inputs (``_acc`` gives the accumulation dtype: float32 for float16/float32, float64 for float64), and the
main outputs come back in the input's dtype.
"""
from __future__ import annotations

import math

import numpy as np

_UNSET = object()
_get_kernel = _UNSET   # autograd.cuda.get_kernel once looked up, or None when autograd.cuda is unusable


def _lookup_get_kernel():
    global _get_kernel
    try:
        from autograd.cuda import get_kernel  # written by the GPU helper; optional
    except Exception:  # missing package, missing name, or CuPy import trouble: fall back to generic code
        get_kernel = None
    _get_kernel = get_kernel
    return get_kernel


def cuda_kernel(name: str, main):
    """The CUDA kernel registered as ``name`` when ``main`` is a CuPy array, else None (generic code runs)."""
    if type(main) is np.ndarray:
        return None
    gk = _get_kernel if _get_kernel is not _UNSET else _lookup_get_kernel()
    if gk is None:
        return None
    try:
        return gk(name)
    except Exception:
        return None


def _dispatch(fn):
    """Decorate a generic kernel: CuPy inputs go to ``autograd.cuda.get_kernel(fn.__name__)`` when registered."""
    name = fn.__name__

    def wrapper(*args, **kwargs):
        main = args[0]
        if isinstance(main, (list, tuple)):
            main = main[0] if main else None
        if type(main) is not np.ndarray:
            k = cuda_kernel(name, main)
            if k is not None:
                return k(*args, **kwargs)
        return fn(*args, **kwargs)

    wrapper.__name__ = name
    wrapper.__qualname__ = fn.__qualname__
    wrapper.__doc__ = fn.__doc__
    wrapper.generic = fn  # the xp-generic version, for tests and for comparing with a CUDA kernel
    return wrapper


def _xp(a):
    if type(a) is np.ndarray:
        return np
    from ..backend import xp_of
    return xp_of(a)


def _acc(dtype):
    """Accumulation dtype: float32 at least (float16 statistics overflow and lose precision)."""
    return np.float64 if dtype == np.float64 else np.float32


_GELU_K = math.sqrt(2.0 / math.pi)
_GELU_C = 0.044715


# ------------------------------------------------------------------------------------------------------ GELU
# Written with in-place ufuncs (out=...): on NumPy every fresh (..., C) temporary costs page faults, and an
# expression like ``d *= 1 - t * t`` is several times slower than the same work done in place.
def _gelu_tanh(xp, h, h2):
    """t = tanh(k (h + c h**3)) given h2 = h*h: the shared piece of the forward and backward."""
    t = h2 * _GELU_C
    t += 1
    t *= h
    t *= _GELU_K
    return xp.tanh(t, out=t)


@_dispatch
def gelu_forward(x):
    """y = x/2 (1 + tanh(k (x + c x**3))), the tanh approximation of GPT-2; same shape and dtype as x."""
    xp = _xp(x)
    t = _gelu_tanh(xp, x, x * x)
    t += 1
    t *= x
    t *= 0.5
    return t


def _gelu_grad_local(xp, h):
    """dgelu/dh = (1 + t)/2 + h/2 (1 - t**2) k (1 + 3c h**2), in three arrays."""
    d = h * h
    t = _gelu_tanh(xp, h, d)
    d *= 3 * _GELU_C * _GELU_K
    d += _GELU_K
    d *= h
    d *= 0.5
    s = xp.multiply(t, t)
    xp.subtract(1, s, out=s)
    d *= s
    t += 1
    t *= 0.5
    d += t
    return d


@_dispatch
def gelu_backward(x, gy):
    """gx = gy * gelu'(x)."""
    d = _gelu_grad_local(_xp(x), x)
    d *= gy
    return d


@_dispatch
def bias_gelu_forward(x, b):
    """y = gelu(x + b); x (..., C), b (C,)."""
    return gelu_forward(x + b)


@_dispatch
def bias_gelu_backward(x, b, gy):
    """(gx, gb): gx = gy * gelu'(x + b) (..., C); gb = gx summed over the leading axes (C,)."""
    gx = gelu_backward(x + b, gy)
    gb = gx.reshape(-1, gx.shape[-1]).sum(axis=0, dtype=_acc(gx.dtype)).astype(b.dtype, copy=False)
    return gx, gb


# ------------------------------------------------------------------------------------------------------ norms
@_dispatch
def layer_norm_forward(x, w, b, eps):
    """(y, mean, rstd): y = (x - mean) * rstd * w + b over the last axis; mean, rstd (...,) in float32 at least."""
    xp = _xp(x)
    acc = _acc(x.dtype)
    xf = x if x.dtype == acc else x.astype(acc)
    mean = xf.mean(axis=-1)
    xc = xf - mean[..., None]
    var = (xc * xc).mean(axis=-1)
    rstd = 1.0 / xp.sqrt(var + eps)
    xc *= rstd[..., None]
    if w is not None:
        xc *= w
    if b is not None:
        xc += b
    return xc.astype(x.dtype, copy=False), mean, rstd


@_dispatch
def layer_norm_backward(gy, x, w, mean, rstd):
    """(gx, gw, gb) for layer_norm_forward; gw is None when w is None (gb is always returned, the caller drops it)."""
    acc = _acc(x.dtype)
    C = x.shape[-1]
    xhat = (x.astype(acc, copy=False) - mean[..., None])
    xhat *= rstd[..., None]
    g = gy.astype(acc, copy=False)
    g2 = g.reshape(-1, C)
    gb = g2.sum(axis=0)
    gw = (g2 * xhat.reshape(-1, C)).sum(axis=0) if w is not None else None
    if w is not None:
        g = g * w
    # gx = rstd * (g - mean(g) - xhat * mean(g * xhat))
    proj = (g * xhat).mean(axis=-1, keepdims=True)
    gx = g - g.mean(axis=-1, keepdims=True)
    xhat *= proj
    gx -= xhat
    gx *= rstd[..., None]
    gx = gx.astype(x.dtype, copy=False)
    if w is not None:
        gw = gw.astype(w.dtype, copy=False)
    return gx, gw, gb.astype(x.dtype if w is None else w.dtype, copy=False)


@_dispatch
def rms_norm_forward(x, w, eps):
    """(y, rstd): y = x * rstd * w with rstd = 1/sqrt(mean(x**2) + eps) over the last axis (float32 at least)."""
    xp = _xp(x)
    acc = _acc(x.dtype)
    xf = x if x.dtype == acc else x.astype(acc)
    rstd = 1.0 / xp.sqrt((xf * xf).mean(axis=-1) + eps)
    y = xf * rstd[..., None]
    if w is not None:
        y *= w
    return y.astype(x.dtype, copy=False), rstd


@_dispatch
def rms_norm_backward(gy, x, w, rstd):
    """(gx, gw): gx = rstd (g - xhat mean(g xhat)) with g = gy w, xhat = x rstd; gw = sum(gy xhat).

    p = gy * xhat serves both gw (its column sums) and mean(g xhat) (its row dot products with w: a GEMV)."""
    acc = _acc(x.dtype)
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


# ------------------------------------------------------------------------------------------------------ softmax
@_dispatch
def softmax_forward(x):
    """Softmax over the last axis, stable (max subtracted), computed in float32 at least; x's dtype back."""
    xp = _xp(x)
    acc = _acc(x.dtype)
    e = x.astype(acc) if x.dtype != acc else x.copy()
    m = e.max(axis=-1, keepdims=True)
    m = xp.where(xp.isfinite(m), m, 0)  # a row of all -inf (fully masked) gives NaN, not an error; no host sync
    e -= m
    xp.exp(e, out=e)
    e /= e.sum(axis=-1, keepdims=True)
    return e.astype(x.dtype, copy=False)


@_dispatch
def softmax_backward(y, gy):
    """gx = y * (gy - sum(gy * y)) over the last axis."""
    acc = _acc(y.dtype)
    yf = y.astype(acc, copy=False)
    gx = gy.astype(acc) if gy.dtype != acc else gy.copy()
    gx -= (gx * yf).sum(axis=-1, keepdims=True)
    gx *= yf
    return gx.astype(y.dtype, copy=False)


def _logsumexp_last(xp, x):
    """log(sum(exp(x))) over the last axis, (...,) in float32 at least; -inf rows give -inf."""
    acc = _acc(x.dtype)
    xf = x.astype(acc, copy=False)
    m = xf.max(axis=-1)
    m = xp.where(xp.isfinite(m), m, 0)
    e = xf - m[..., None]
    xp.exp(e, out=e)
    s = e.sum(axis=-1)
    return xp.log(s) + m


def log_softmax_forward(x):
    """x - logsumexp(x) over the last axis (generic only; no CUDA kernel is asked for)."""
    xp = _xp(x)
    lse = _logsumexp_last(xp, x)
    out = x.astype(lse.dtype) - lse[..., None]
    return out.astype(x.dtype, copy=False)


def log_softmax_backward(y, gy):
    """gx = gy - exp(y) * sum(gy) over the last axis."""
    xp = _xp(y)
    acc = _acc(y.dtype)
    g = gy.astype(acc, copy=False)
    p = xp.exp(y.astype(acc, copy=False))
    p *= g.sum(axis=-1, keepdims=True)
    return (g - p).astype(y.dtype, copy=False)


# ------------------------------------------------------------------------------------------------------ cross-entropy
@_dispatch
def cross_entropy_forward(logits, targets, ignore_index):
    """(loss_sum, lse, count): logits (N, V), targets (N,) int. loss_sum is a 0-d array (float32 at least) summed
    over rows whose target is not ``ignore_index``; lse (N,); count = number of such rows (Python int)."""
    xp = _xp(logits)
    n = logits.shape[0]
    lse = _logsumexp_last(xp, logits)
    valid = targets != ignore_index
    safe = xp.where(valid, targets, 0)
    picked = logits[xp.arange(n), safe].astype(lse.dtype, copy=False)
    per_row = lse - picked
    per_row *= valid
    count = int(valid.sum())
    return per_row.sum(), lse, count


@_dispatch
def cross_entropy_backward(logits, targets, lse, scale, ignore_index):
    """dlogits (N, V) = scale * (softmax(logits) - onehot(targets)), zero rows where the target is ignored.

    ``scale`` is a number or a 0-d array (grad of the loss / count for the mean). The softmax is built in one array
    and the one-hot is subtracted in place, so only one (N, V) array is ever made."""
    xp = _xp(logits)
    n = logits.shape[0]
    acc = lse.dtype
    d = logits.astype(acc) if logits.dtype != acc else logits.copy()
    d -= lse[:, None]
    xp.exp(d, out=d)
    valid = targets != ignore_index
    safe = xp.where(valid, targets, 0)
    d[xp.arange(n), safe] -= 1
    row_scale = valid.astype(acc)
    row_scale *= xp.asarray(scale, dtype=acc)
    d *= row_scale[:, None]
    return d.astype(logits.dtype, copy=False)


# ------------------------------------------------------------------------------------------------------ embedding
@_dispatch
def embedding_backward(ids, gy, num_embeddings):
    """gw (V, C): row ids[i] collects gy[i] (repeated ids add up); ids (N,) int, gy (N, C).

    NumPy: sort the ids and sum each run with ``add.reduceat`` (about 3x faster than ``np.add.at``); CuPy: atomic
    scatter-add."""
    xp = _xp(gy)
    gw = xp.zeros((num_embeddings, gy.shape[-1]), dtype=gy.dtype)
    if ids.size == 0:
        return gw
    if xp is np:
        order = np.argsort(ids, kind="stable")
        s = ids[order]
        starts = np.flatnonzero(np.concatenate(([True], s[1:] != s[:-1])))
        gw[s[starts]] = np.add.reduceat(gy[order], starts, axis=0)
    else:
        if gy.dtype == np.float16:  # accumulate repeated rows in float32 (and atomics on half are not everywhere)
            acc = xp.zeros(gw.shape, dtype=np.float32)
            xp.add.at(acc, ids, gy.astype(np.float32))
            return acc.astype(np.float16)
        xp.add.at(gw, ids, gy)  # atomic scatter-add (cupyx.scatter_add is deprecated for this in CuPy 14)
    return gw


# ------------------------------------------------------------------------------------------------------ misc
@_dispatch
def matmul(a, b, out_dtype=None):
    """a @ b with batch broadcasting (CuPy: cuBLAS with TF32 / float16 tensor cores when the GPU kernel exists).
    ``out_dtype`` (float32 for float16 operands): the result in that dtype (CUDA: written by the GEMM itself)."""
    r = _xp(a).matmul(a, b)
    return r if out_dtype is None else r.astype(out_dtype, copy=False)


@_dispatch
def colsum(x, out_dtype=None):
    """x (M, N) summed over rows -> (N,) (a bias gradient), accumulated in float32 at least; result in
    ``out_dtype`` (default x's dtype). CUDA: one cuBLAS ones(M) @ x product."""
    r = x.sum(axis=0, dtype=_acc(x.dtype))
    return r.astype(out_dtype or x.dtype, copy=False)


def adamw_update(p, g, m, v, *, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
                 step: int) -> None:
    """One AdamW step on arrays, all in place (p, m, v; g is read only). ``step`` counts from 1::

        p *= 1 - lr * weight_decay                     # decoupled decay (0 for Adam)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        p -= lr / (1 - beta1**step) * m / (sqrt(v) / sqrt(1 - beta2**step) + eps)
    """
    xp = _xp(p)
    if g.dtype != m.dtype:                       # e.g. fp16 gradients with fp32 moments: square in fp32
        g = g.astype(m.dtype)
    if weight_decay != 0.0:
        p *= 1.0 - lr * weight_decay
    # one scratch array instead of a temporary per operation (the token embedding alone is 38M floats in GPT-2)
    tmp = xp.empty_like(m)                       # (also keeps 0-d parameters as arrays, not NumPy scalars)
    xp.multiply(g, 1.0 - beta1, out=tmp)
    m *= beta1
    m += tmp
    xp.multiply(g, g, out=tmp)
    tmp *= 1.0 - beta2
    v *= beta2
    v += tmp
    bias1 = 1.0 - beta1 ** step
    bias2 = 1.0 - beta2 ** step
    xp.sqrt(v, out=tmp)                          # denom = sqrt(v) / sqrt(bias2) + eps
    tmp /= math.sqrt(bias2)
    tmp += eps
    xp.divide(m, tmp, out=tmp)
    tmp *= lr / bias1
    p -= tmp


@_dispatch
def adamw_step(params, grads, exp_avgs, exp_avg_sqs, lr, beta1, beta2, eps, weight_decay, step) -> None:
    """One AdamW update of every (param, grad, m, v) quadruple, in place (decoupled weight decay)."""
    for p, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs):
        adamw_update(p, g, m, v, lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, step=step)


# The attention array code and the NumPy fast paths that keep an intermediate for backward live in their own files;
# they are part of this contract and re-exported here, so callers use one module (``K``).
from .attention_kernels import (attention_backward, attention_forward, attention_probs_backward,  # noqa: E402
                                attention_probs_forward, causal_bias)
from .nn_kernels_saving import (cross_entropy_backward_saved, cross_entropy_forward_saving,  # noqa: E402
                                gelu_backward_saved, gelu_forward_saving, layer_norm_backward_saved,
                                layer_norm_forward_saving)
