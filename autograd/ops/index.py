"""Indexing along an axis, as PyTorch's ``gather``, ``scatter``, ``scatter_add`` and ``F.one_hot``.

``index`` has as many axes as x; along ``axis`` it holds positions, elsewhere its size may be smaller than x's
(only the leading part is used). gather picks ``x[..., index[i, j], ...]``; its gradient scatter-adds back (a
position picked twice collects both gradients). All of them are built on the engine's indexing ops (GetItem /
ScatterAdd), whose backward passes are each other.
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ..function import Function
from ..tensor import Tensor, as_tensor
from .axes import normalize_axis, torch_keywords
from .shape import GetItem, ScatterAdd


def integer_array(op: str, index, like: Tensor, what: str = "index"):
    """An integer array (from a Tensor, ndarray or list) on ``like``'s device; a clear error for other dtypes."""
    a = index.data if isinstance(index, Tensor) else index
    if not hasattr(a, "dtype"):
        a = np.asarray(a)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{op}: {what} must be an integer tensor, got dtype {a.dtype}")
    if backend.device_of(a) != like.device:
        a = backend.to_device(a, like.device)
    return a


def _along_axis(op: str, x: Tensor, axis, index) -> tuple:
    """The advanced-index tuple that picks ``x[..., index, ...]`` along ``axis`` (PyTorch's gather indexing)."""
    idx = integer_array(op, index, x)
    axis = normalize_axis(op, axis, x.shape)
    if idx.ndim != max(x.ndim, 1) and not (x.ndim == 0 and idx.ndim == 0):
        raise ValueError(f"{op}: index needs as many axes as the tensor ({x.ndim}), got index shape {idx.shape} "
                         f"for shape {x.shape}")
    if x.ndim == 0:
        return idx, ()
    for d, (n, m) in enumerate(zip(idx.shape, x.shape)):
        if d != axis and n > m:
            raise ValueError(f"{op}: index shape {idx.shape} is larger than the tensor's shape {x.shape} at axis {d}")
    if type(idx) is np.ndarray and idx.size:  # on the GPU this check would cost a host sync: skipped there
        lo, hi = int(idx.min()), int(idx.max())
        if lo < -x.shape[axis] or hi >= x.shape[axis]:
            raise IndexError(f"{op}: index {lo if lo < -x.shape[axis] else hi} is out of range for axis {axis} of "
                             f"size {x.shape[axis]} (tensor shape {x.shape})")
    xp = backend.xp_of(idx)
    parts = []
    for d in range(x.ndim):
        if d == axis:
            parts.append(idx)
        else:
            shape = [1] * x.ndim
            shape[d] = idx.shape[d]
            parts.append(xp.arange(idx.shape[d]).reshape(shape))
    return tuple(parts), idx.shape


@torch_keywords
def gather(x: Tensor, axis: int, index) -> Tensor:
    """out[i][j] = x[index[i][j]][j] for axis 0 (and so on); out has index's shape. Gradient: scatter-add."""
    x = as_tensor(x)
    full, _ = _along_axis("gather", x, axis, index)
    if x.ndim == 0:
        return GetItem.apply(x, index=())
    return GetItem.apply(x, index=full)


def _source(op: str, src, shape, like: Tensor) -> Tensor:
    """``src`` cut to index's shape (PyTorch uses its leading part), or a number broadcast to it."""
    if not isinstance(src, Tensor):
        xp = backend.xp_of(like.data)
        return Tensor(xp.full(shape, src, dtype=like.dtype))
    if src.ndim != len(shape) or any(s < n for s, n in zip(src.shape, shape)):
        raise ValueError(f"{op}: src of shape {src.shape} must be at least as large as index {shape} on every axis")
    return src if src.shape == tuple(shape) else src[tuple(slice(0, n) for n in shape)]


@torch_keywords
def scatter_add(x: Tensor, axis: int, index, src) -> Tensor:
    """A copy of x with src[i][j] added at x[index[i][j]][j] (axis 0; repeated positions add up).
    Gradients: dx = g, dsrc = g gathered at index."""
    x = as_tensor(x)
    full, shape = _along_axis("scatter_add", x, axis, index)
    src = _source("scatter_add", src, shape, x)
    return x + ScatterAdd.apply(src, index=full, shape=x.shape, basic=False)


class Scatter(Function):
    """y = x with y[index[i][j]][j] = src[i][j] (axis 0); dx = g where nothing was written, dsrc = g at index.
    A position written twice keeps one of the values (which one is unspecified, as in PyTorch)."""
    rule = "d scatter(x, src)/dx = 1 where not written, d/dsrc = the gradient gathered at the index"
    params = ("index",)
    def forward(self, x, src):
        out = x.copy()
        out[self.index] = src
        return out

    def backward(self, gy):
        xp = backend.xp_of(gy.data)
        written = xp.zeros(gy.shape, dtype=bool)
        written[self.index] = True
        gx = gy * Tensor((~written).astype(gy.dtype)) if self.needs_input_grad[0] else None
        gsrc = GetItem.apply(gy, index=self.index) if self.needs_input_grad[1] else None
        return gx, gsrc


@torch_keywords
def scatter(x: Tensor, axis: int, index, src) -> Tensor:
    """A copy of x with x[index[i][j]][j] = src[i][j] (axis 0); ``src`` a Tensor or a number."""
    x = as_tensor(x)
    full, shape = _along_axis("scatter", x, axis, index)
    return Scatter.apply(x, _source("scatter", src, shape, x), index=full)


def one_hot(index, num_classes: int = -1) -> Tensor:
    """(..., ) integer class ids -> (..., num_classes) int64 with a 1 at each id (``num_classes=-1``: max + 1)."""
    a = index.data if isinstance(index, Tensor) else index
    if not hasattr(a, "dtype"):
        a = np.asarray(a)
    if a.dtype.kind not in "iu":
        raise TypeError(f"one_hot: class ids must be integers, got dtype {a.dtype}")
    xp = backend.xp_of(a)
    if num_classes < 0:
        num_classes = int(a.max()) + 1 if a.size else 0
    if a.size and (int(a.min()) < 0 or int(a.max()) >= num_classes):
        raise ValueError(f"one_hot: class ids must lie in [0, {num_classes}), got values in "
                         f"[{int(a.min())}, {int(a.max())}]")
    return Tensor((a[..., None] == xp.arange(num_classes)).astype(np.int64))
