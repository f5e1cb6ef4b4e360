"""Type promotion: which dtype an op computes in when its operands differ (PyTorch's rule, ``torch.result_type``).

Dtypes fall in three categories, bool < integer < floating. Operands come in three groups: tensors with at least
one dimension, 0-d tensors, and Python (or NumPy) scalars. The result is decided by the highest group that holds
the highest category:

- within the same category, dimensioned tensors win: ``float16 (n,) * float32 ()`` is float16, ``int32 (n,) +
  int64 ()`` is int32, ``float32 (n,) * 2.0`` is float32, ``int32 (n,) * 2`` is int32;
- an operand of a higher category raises the category: ``int64 (n,) + 1.5`` and ``int32 (n,) + float64 ()`` are
  float (a Python float gives the default float dtype, float32; a 0-d tensor gives its own dtype), ``bool (n,) + 1``
  is int64 (the dtype of a Python int);
- two operands of one group promote as NumPy does inside a category (int8 + uint8 -> int16, float16 + float32 ->
  float32); across categories the floating type wins (``int64 (n,) + float16 (n,)`` is float16, where NumPy would
  give float64).

True division and the float functions (exp, log, sin ...) of integer tensors give the default float dtype.

bfloat16 (ml_dtypes' dtype; NumPy reports its kind as 'V') is a float: ``bfloat16 + float16`` is float32 (neither
holds the other), ``bfloat16 + float32`` float32, ``bfloat16 + float64`` float64, and ``bfloat16 (n,) * 2.0`` stays
bfloat16 by the category rule. ``as_dtype("bfloat16")`` resolves the name, with a clear error without ml_dtypes.
"""
from __future__ import annotations

import numpy as np

from . import backend

try:  # bfloat16 is not a NumPy dtype: ml_dtypes (optional, `pip install ml_dtypes`) provides it, CuPy 14 uses it
    import ml_dtypes as _ml_dtypes
    bfloat16: np.dtype | None = np.dtype(_ml_dtypes.bfloat16)
except ImportError:
    bfloat16 = None

_CATEGORY = {"b": 0, "u": 1, "i": 1, "f": 2}


def is_bfloat16(dtype) -> bool:
    """True for ml_dtypes' bfloat16 (NumPy reports its kind as 'V', so kind checks alone miss it)."""
    return bfloat16 is not None and np.dtype(dtype) == bfloat16


def is_float(dtype) -> bool:
    """True for the floating dtypes: float16/32/64 and bfloat16."""
    dtype = np.dtype(dtype)
    return dtype.kind == "f" or is_bfloat16(dtype)


def as_dtype(dtype) -> np.dtype:
    """``np.dtype(dtype)``, also for the name ``"bfloat16"`` (a clear error when ml_dtypes is not installed)."""
    if isinstance(dtype, str) and dtype.strip().lower() in ("bfloat16", "bf16"):
        if bfloat16 is None:
            raise TypeError("dtype bfloat16 needs the ml_dtypes package (pip install ml_dtypes)")
        return bfloat16
    return np.dtype(dtype)


def widened(fn, *arrays, out_dtype=None):
    """``fn(*arrays)`` with bfloat16 operands computed in float32 and a float32 result cast back to bfloat16 (or to
    ``out_dtype``: float32 keeps the float32 result as it is).

    The one place for what NumPy (through ml_dtypes) does not do in bfloat16: einsum has no bfloat16 loop, matmul
    and clip return float32, and sums would accumulate in bfloat16. Operands share one dtype (the ops promote
    first); without a bfloat16 operand ``fn`` runs as it is."""
    if bfloat16 is None or not any(a.dtype == bfloat16 for a in arrays):
        out = fn(*arrays)
        return out if out_dtype is None else out.astype(out_dtype, copy=False)
    out = fn(*(a.astype(np.float32) if a.dtype == bfloat16 else a for a in arrays))
    if out.dtype != np.float32:
        return out
    return out.astype(bfloat16 if out_dtype is None else out_dtype, copy=False)


def category(dtype) -> int:
    """0 for bool, 1 for integers, 2 for floats; a clear error for other dtypes (complex, strings, objects)."""
    kind = np.dtype(dtype).kind
    if is_bfloat16(dtype):
        return 2
    if kind not in _CATEGORY:
        raise TypeError(f"dtype {np.dtype(dtype)} is not supported: tensors hold bool, integer or float values")
    return _CATEGORY[kind]


def promote_types(a, b) -> np.dtype:
    """The dtype of an op on two operands of one group: the higher category's dtype, NumPy's rule within one."""
    a, b = np.dtype(a), np.dtype(b)
    ca, cb = category(a), category(b)
    if ca != cb:
        return a if ca > cb else b
    if a == b:
        return a
    if is_bfloat16(a) or is_bfloat16(b):  # NumPy has no common type for bfloat16 and float16: float32 holds both
        other = b if is_bfloat16(a) else a
        return np.promote_types(np.float32, other)
    out = np.promote_types(a, b)
    if category(out) != ca:  # uint64 with a signed integer: NumPy would give float64
        raise TypeError(f"no integer dtype holds both {a} and {b}; cast one of them first")
    return out


def is_scalar(x) -> bool:
    """Python and NumPy scalars: they take part in promotion only through their category."""
    return isinstance(x, (bool, int, float, np.generic))


def scalar_dtype(x) -> np.dtype:
    """The dtype a scalar stands for: bool, int64, or the default float dtype."""
    if isinstance(x, (bool, np.bool_)):
        return np.dtype(bool)
    if isinstance(x, (int, np.integer)):
        return np.dtype(np.int64)
    if isinstance(x, (float, np.floating)):
        return np.dtype(backend.default_float_dtype())
    raise TypeError(f"unsupported scalar {x!r} of type {type(x).__name__}: expected bool, int or float")


def _group(dtypes):
    out = None
    for d in dtypes:
        out = d if out is None else promote_types(out, d)
    return out


def _combine(higher, lower):
    """PyTorch's combine_categories: ``higher`` (the more dimensioned group) wins unless ``lower`` is of a higher
    category."""
    if higher is None:
        return lower
    if lower is None or category(higher) >= category(lower):
        return higher
    return lower


def result_type(*operands) -> np.dtype:
    """The dtype an op on ``operands`` (Tensors, arrays, Python or NumPy scalars) computes in; see the module doc."""
    if len(operands) == 2 and is_scalar(operands[0]) != is_scalar(operands[1]):
        # the common case, one tensor and one scalar: the scalar counts only when its category is higher
        scalar, t = operands if is_scalar(operands[0]) else operands[::-1]
        s = scalar_dtype(scalar)
        return t.dtype if category(t.dtype) >= _CATEGORY[s.kind] else s
    dims, zeros, scalars = [], [], []
    for x in operands:
        if is_scalar(x):
            scalars.append(scalar_dtype(x))
        else:
            dtype = np.dtype(x.dtype)
            category(dtype)
            (dims if x.ndim else zeros).append(dtype)
    return _combine(_group(dims), _combine(_group(zeros), _group(scalars)))


def float_dtype(dtype) -> np.dtype:
    """``dtype`` itself when floating, else the default float dtype (what exp, log, division ... of ints give)."""
    dtype = np.dtype(dtype)
    return dtype if is_float(dtype) else np.dtype(backend.default_float_dtype())
