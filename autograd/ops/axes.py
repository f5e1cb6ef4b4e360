"""Axis arguments, validated in one place: every op that takes an axis calls these, so a wrong axis is an error
naming the op, the axis and the shape, never a silent wrap-around.

A 0-d tensor accepts axis 0 and -1 (as PyTorch does): a reduction over it is the identity, softmax of it is 1.
"""
from __future__ import annotations

import functools
import operator


class AxisError(IndexError, ValueError):
    """An axis that does not exist (both an IndexError, as in PyTorch, and a ValueError, as NumPy's AxisError)."""


def _as_int(op: str, axis):
    try:
        return operator.index(axis)  # ints and NumPy integers; rejects floats, None, strings
    except TypeError:
        raise TypeError(f"{op}: axis must be an int, got {axis!r} ({type(axis).__name__})") from None


def normalize_axis(op: str, axis, shape, extra: int = 0) -> int:
    """``axis`` as a non-negative int for a tensor of ``shape``. ``extra=1`` for ops that add an axis (unsqueeze,
    stack), whose axis may also name the new last position. 0-d tensors accept 0 and -1 (they give 0)."""
    a = _as_int(op, axis)
    n = max(len(shape) + extra, 1)
    if not -n <= a < n:
        raise AxisError(f"{op}: axis {a} is out of range for a tensor of shape {tuple(shape)} "
                         f"(expected an axis in [{-n}, {n - 1}])")
    return a % n


def normalize_axes(op: str, axis, shape) -> tuple[int, ...]:
    """``axis`` (None = all, an int, or a sequence of distinct ints) as a sorted tuple of non-negative axes of
    ``shape``. On a 0-d tensor every valid axis gives ``()``: there is no axis to reduce."""
    if axis is None:
        return tuple(range(len(shape)))
    many = isinstance(axis, (tuple, list))
    axes = [normalize_axis(op, a, shape) for a in (axis if many else (axis,))]
    if len(set(axes)) != len(axes):
        raise ValueError(f"{op}: axis {tuple(axis)} names an axis twice (tensor of shape {tuple(shape)})")
    return () if not shape else tuple(sorted(axes))


def normalize_permutation(op: str, axes, shape) -> tuple[int, ...]:
    """``axes`` as a permutation of the axes of ``shape`` (negative axes allowed), else a clear error."""
    axes = tuple(axes)
    if len(axes) != len(shape):
        raise ValueError(f"{op}: axes {axes} do not match the {len(shape)} axes of shape {tuple(shape)}")
    out = tuple(normalize_axis(op, a, shape) for a in axes)
    if len(set(out)) != len(out):
        raise ValueError(f"{op}: axes {axes} are not a permutation of the axes of shape {tuple(shape)}")
    return out


#: PyTorch's keyword names for the same arguments: x.sum(dim=1, keepdim=True), x.flatten(start_dim=1) ...
TORCH_KEYWORDS = {"dim": "axis", "dims": "axis", "keepdim": "keepdims", "start_dim": "start_axis",
                  "end_dim": "end_axis", "correction": "ddof"}


def torch_keywords(fn):
    """Let ``fn`` also take PyTorch's keyword names (``TORCH_KEYWORDS``) for its NumPy-named arguments."""
    @functools.wraps(fn)
    def call(*args, **kwargs):
        for torch_name in TORCH_KEYWORDS.keys() & kwargs.keys():
            name = TORCH_KEYWORDS[torch_name]
            if name in kwargs:
                raise TypeError(f"{fn.__name__}: got both {name}= and {torch_name}= (they are one argument)")
            kwargs[name] = kwargs.pop(torch_name)
        return fn(*args, **kwargs)
    return call
