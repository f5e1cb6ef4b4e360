"""Sorting: sort, argsort, topk along an axis. The values are gathered from x by the sorting indices, so their
gradient is scattered back to where each value came from (the gather's backward); the indices are int64 and carry
no gradient. Sorting is stable: equal elements keep their order (also when descending)."""
from __future__ import annotations

import numpy as np

from .. import backend
from ..tensor import Tensor
from .axes import normalize_axis, torch_keywords
from .index import gather


def _argsort(a, axis: int, descending: bool):
    xp = backend.xp_of(a)
    if descending:  # negating keeps the sort stable, where reversing an ascending order would not
        a = -(a.astype(np.int64) if a.dtype.kind in "bu" else a)
    return xp.argsort(a, axis=axis, **({"kind": "stable"} if xp is np else {})).astype(np.int64, copy=False)


@torch_keywords
def argsort(x: Tensor, axis: int = -1, descending: bool = False) -> Tensor:
    """The int64 indices that sort x along ``axis`` (stable); no gradient."""
    ax = normalize_axis("argsort", axis, x.shape)
    if x.ndim == 0:
        return Tensor(backend.xp_of(x.data).zeros((), dtype=np.int64))
    return Tensor(_argsort(x.data, ax, descending))


@torch_keywords
def sort(x: Tensor, axis: int = -1, descending: bool = False) -> tuple[Tensor, Tensor]:
    """(values, indices): x sorted along ``axis`` (stable) and the int64 positions the values came from."""
    normalize_axis("sort", axis, x.shape)
    idx = argsort(x, axis, descending)
    return (x if x.ndim == 0 else gather(x, axis, idx)), idx


@torch_keywords
def topk(x: Tensor, k: int, axis: int = -1, largest: bool = True) -> tuple[Tensor, Tensor]:
    """(values, indices) of the ``k`` largest (``largest=False``: smallest) elements along ``axis``, in sorted
    order."""
    ax = normalize_axis("topk", axis, x.shape)
    size = x.shape[ax] if x.ndim else 1
    if not 0 <= k <= size:
        raise ValueError(f"topk: k={k} is out of range for axis {axis} of size {size} (tensor shape {x.shape})")
    if x.ndim == 0:
        return x, Tensor(backend.xp_of(x.data).zeros((), dtype=np.int64))
    order = _argsort(x.data, ax, largest)
    idx = Tensor(order[(slice(None),) * ax + (slice(0, k),)])
    return gather(x, ax, idx), idx
