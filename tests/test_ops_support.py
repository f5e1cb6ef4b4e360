"""Shared checks for the op tests (no tests here): forward against NumPy, then gradcheck (and gradgradcheck).

``check_op(ag_fn, np_fn, *arrays)`` runs ``ag_fn`` on float64 Tensors and ``np_fn`` on the same arrays, compares
values and shapes, then compares backward with central differences through ``ag.gradcheck``.
"""
from __future__ import annotations

import math

import numpy as np

import autograd as ag

from autograd import gradcheck, gradgradcheck  # noqa: F401  (re-exported for the op test files)


def check_forward(ag_fn, np_fn, *arrays, rtol: float = 1e-10, atol: float = 1e-12):
    """``ag_fn(*Tensors)`` equals ``np_fn(*arrays)`` in value, shape and (float64) dtype."""
    tensors = [ag.Tensor(a) for a in arrays]
    out = ag_fn(*tensors)
    expected = np.asarray(np_fn(*arrays))
    assert out.shape == expected.shape, f"shape {out.shape} != NumPy's {expected.shape}"
    np.testing.assert_allclose(out.numpy(), expected, rtol=rtol, atol=atol)
    if expected.dtype.kind == "f":
        assert out.dtype == expected.dtype, f"dtype {out.dtype} != NumPy's {expected.dtype}"
    return out


def check_op(ag_fn, np_fn, *arrays, grad: bool = True, gradgrad: bool = False, rtol: float = 1e-10,
             atol: float = 1e-12, **gc_kwargs) -> None:
    """Forward vs NumPy, then gradcheck of every float input (and gradgradcheck when asked)."""
    if np_fn is not None:
        check_forward(ag_fn, np_fn, *arrays, rtol=rtol, atol=atol)
    if grad:
        assert gradcheck(ag_fn, list(arrays), **gc_kwargs)
    if gradgrad:
        assert gradgradcheck(ag_fn, list(arrays), **gc_kwargs)


np_erf = np.vectorize(math.erf, otypes=[np.float64])


def np_gelu(x, approximate: str = "tanh"):
    if approximate == "tanh":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1 + np_erf(x / math.sqrt(2)))


def np_sigmoid(x):
    return 1 / (1 + np.exp(-x))


def away_from(x: np.ndarray, points, gap: float = 0.05) -> np.ndarray:
    """Move elements of ``x`` that lie within ``gap`` of any of ``points`` (kinks) to ``point + 2 gap``."""
    x = x.copy()
    for p in points:
        near = np.abs(x - p) < gap
        x[near] = p + 2 * gap
    return x
