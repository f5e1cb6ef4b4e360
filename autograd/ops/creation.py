"""Tensor creation: zeros, ones, full, arange, eye, the ``*_like`` forms, and random tensors (rand, randn, randint)
drawn from the engine's generator, which ``manual_seed`` resets.

Shapes are given as PyTorch and NumPy allow: ``zeros(2, 3)`` or ``zeros((2, 3))``. Dtypes follow PyTorch: float
values give float32, Python ints int64, bools bool, unless ``dtype`` says otherwise. Random values are drawn on the
CPU (so a seed gives the same numbers on every device) and copied to ``device``.
"""
from __future__ import annotations

import numpy as np

from .. import backend, dtypes
from ..tensor import Tensor

_generator = np.random.default_rng()


def manual_seed(seed: int) -> np.random.Generator:
    """Reset the generator behind rand, randn and randint; returns it."""
    global _generator
    _generator = np.random.default_rng(seed)
    return _generator


def _shape(size) -> tuple[int, ...]:
    if len(size) == 1 and isinstance(size[0], (tuple, list)):
        size = size[0]
    try:
        shape = tuple(int(s) for s in size)
    except (TypeError, ValueError):
        raise TypeError(f"a shape must be ints, got {size!r}") from None
    if any(s < 0 for s in shape):
        raise ValueError(f"a shape cannot have negative sizes, got {shape}")
    return shape


def _make(array: np.ndarray, device, requires_grad: bool) -> Tensor:
    return Tensor(array, requires_grad=requires_grad, device=None if device in (None, "cpu") else device)


def zeros(*size, dtype=np.float32, device: str = "cpu", requires_grad: bool = False) -> Tensor:
    return Tensor(backend.get_xp(device).zeros(_shape(size), dtype=dtype), requires_grad=requires_grad, device=device)


def ones(*size, dtype=np.float32, device: str = "cpu", requires_grad: bool = False) -> Tensor:
    return Tensor(backend.get_xp(device).ones(_shape(size), dtype=dtype), requires_grad=requires_grad, device=device)


def full(size, fill_value, dtype=None, device: str = "cpu", requires_grad: bool = False) -> Tensor:
    """A tensor of ``size`` filled with ``fill_value`` (dtype from the value, as PyTorch: 2 -> int64, 2.0 ->
    float32)."""
    size = _shape(size if isinstance(size, (tuple, list)) else (size,))
    dtype = dtypes.scalar_dtype(fill_value) if dtype is None else dtype
    return Tensor(backend.get_xp(device).full(size, fill_value, dtype=dtype), requires_grad=requires_grad,
                  device=device)


def full_like(x: Tensor, fill_value, dtype=None, requires_grad: bool = False) -> Tensor:
    """A tensor of x's shape, device and (unless given) dtype, filled with ``fill_value``."""
    xp = backend.xp_of(x.data)
    with backend.device_scope(x.data):
        data = xp.full(x.shape, fill_value, dtype=x.dtype if dtype is None else dtype)
    return Tensor(data, requires_grad=requires_grad)


def zeros_like(x: Tensor, dtype=None, requires_grad: bool = False) -> Tensor:
    return full_like(x, 0, dtype=dtype, requires_grad=requires_grad)


def ones_like(x: Tensor, dtype=None, requires_grad: bool = False) -> Tensor:
    return full_like(x, 1, dtype=dtype, requires_grad=requires_grad)


def arange(start, end=None, step=1, dtype=None, device: str = "cpu", requires_grad: bool = False) -> Tensor:
    """Values from ``start`` (0 when only one bound is given) up to ``end`` (excluded) by ``step``; int64 when all
    three are integers, else float32 (PyTorch's rule)."""
    if end is None:
        start, end = 0, start
    if step == 0:
        raise ValueError("arange: step must not be 0")
    if dtype is None:
        dtype = dtypes.result_type(start, end, step)
        dtype = np.int64 if dtype.kind in "iub" else dtype
    values = np.arange(start, end, step, dtype=np.float64 if dtypes.is_float(dtype) else None)
    return _make(values.astype(dtype), device, requires_grad)


def eye(n: int, m: int | None = None, dtype=np.float32, device: str = "cpu", requires_grad: bool = False) -> Tensor:
    """The (n, m) identity matrix (m defaults to n)."""
    return Tensor(backend.get_xp(device).eye(n, m, dtype=dtype), requires_grad=requires_grad, device=device)


def rand(*size, dtype=np.float32, device: str = "cpu", requires_grad: bool = False,
         seed: int | None = None) -> Tensor:
    """Uniform samples in [0, 1) from the engine's generator (or a fresh one seeded by ``seed``)."""
    rng = _generator if seed is None else np.random.default_rng(seed)
    return _make(rng.random(_shape(size)).astype(dtype), device, requires_grad)


def randn(*size, dtype=np.float32, device: str = "cpu", requires_grad: bool = False,
          seed: int | None = None) -> Tensor:
    """Standard-normal samples from the engine's generator (or a fresh one seeded by ``seed``)."""
    rng = _generator if seed is None else np.random.default_rng(seed)
    return _make(rng.standard_normal(_shape(size)).astype(dtype), device, requires_grad)


def randint(low: int, high: int | None = None, size=(), dtype=np.int64, device: str = "cpu",
            seed: int | None = None) -> Tensor:
    """Integers uniform in [low, high) (``randint(high, size)`` starts at 0), from the engine's generator."""
    if high is None:
        low, high = 0, low
    if high <= low:
        raise ValueError(f"randint: needs low < high, got low={low}, high={high}")
    rng = _generator if seed is None else np.random.default_rng(seed)
    size = _shape(size if isinstance(size, (tuple, list)) else (size,))
    return _make(rng.integers(low, high, size=size).astype(dtype), device, False)
