"""Reductions with ``axis`` (int, tuple or None) and ``keepdims``: sum, mean, max, min, var, std, prod, logsumexp;
the scan cumsum; and the non-differentiable any, all (``any_true``, ``all_true`` here), argmax, argmin.

Over an empty axis, mean and var give nan (0/0) and sum gives 0, as in PyTorch; max and min raise. var with
n - ddof <= 0 divides by 0: nan for n = 1, inf otherwise, in forward and backward alike. Integer and
boolean tensors sum to int64; their mean and var are float32 (PyTorch raises there; NumPy gives float64).
"""
from __future__ import annotations

import numpy as np

from .. import backend, dtypes
from ..function import Function
from ..tensor import Tensor
from .axes import normalize_axes, normalize_axis, torch_keywords
from .elementwise import Exp, Sqrt
from .shape import broadcast_to, reshape


def _keepdims_shape(shape, axes):
    return tuple(1 if i in axes else s for i, s in enumerate(shape))


def _reduced_shape(shape, axes, keepdims):
    return _keepdims_shape(shape, axes) if keepdims else tuple(s for i, s in enumerate(shape) if i not in axes)


def _expand_back(g: Tensor, x_shape, axes) -> Tensor:
    """Broadcast a reduced gradient back over the reduced axes of x."""
    return broadcast_to(reshape(g, _keepdims_shape(x_shape, axes)), x_shape)


def _count(shape, axes) -> int:
    n = 1
    for a in axes:
        n *= shape[a]
    return n


def _ratio(a: float, n: int) -> float:
    """a / n, inf for n = 0 (as PyTorch's float division: the gradients become inf or nan, never an exception)."""
    return a / n if n > 0 else float("inf")


class _Reduction(Function):
    params = ("axis", "keepdims")
    def forward(self, x):
        self.axes = normalize_axes(self.name.lower(), self.axis, x.shape)
        return self.compute(x)


class Sum(_Reduction):
    """y = sum of x over ``axis``; dy/dx = 1, so the gradient broadcasts back."""
    rule = 'd sum(x)/dx = 1  (gradient broadcast back over the summed axes)'
    def compute(self, x):
        return dtypes.widened(lambda a: a.sum(axis=self.axes, keepdims=self.keepdims), x)  # bfloat16: float32 sums

    def backward(self, gy):
        return _expand_back(gy, self.inputs[0].shape, self.axes)


class Mean(_Reduction):
    """y = mean of x over ``axis``; dy/dx = 1/n."""
    rule = 'd mean(x)/dx = 1/n  (gradient broadcast back, divided by n)'
    def compute(self, x):
        x = x.astype(dtypes.float_dtype(x.dtype), copy=False)
        self.count = _count(x.shape, self.axes)
        if self.count == 0:  # 0/0, without NumPy's "mean of empty slice" warning
            return backend.xp_of(x).full(_reduced_shape(x.shape, self.axes, self.keepdims), np.nan, dtype=x.dtype)
        # float16: NumPy accumulates in float32; bfloat16 widens to float32 for the sum
        return dtypes.widened(lambda a: a.mean(axis=self.axes, keepdims=self.keepdims), x)

    def backward(self, gy):
        return _expand_back(gy, self.inputs[0].shape, self.axes) * _ratio(1.0, self.count)


class _Extreme(_Reduction):
    """max/min: the gradient goes to the elements equal to the result, split evenly between ties."""
    save_outputs = True

    def compute(self, x):
        if 0 in [x.shape[a] for a in self.axes]:
            raise ValueError(f"{self.name.lower()}: cannot reduce an empty tensor (shape {x.shape}) over axis "
                             f"{self.axis}: there is no {self.name.lower()} of nothing")
        return getattr(x, self.name.lower())(axis=self.axes, keepdims=self.keepdims)

    def backward(self, gy):
        x = self.inputs[0]
        y = self.output().data.reshape(_keepdims_shape(x.shape, self.axes))
        hit = (x.data == y).astype(gy.dtype)
        hit /= hit.sum(axis=self.axes, keepdims=True)
        return _expand_back(gy, x.shape, self.axes) * Tensor(hit)


class Max(_Extreme):
    rule = 'd max(x)/dx = 1 at the argmax (ties share), else 0'


class Min(_Extreme):
    rule = 'd min(x)/dx = 1 at the argmin (ties share), else 0'


class Var(_Reduction):
    """y = sum((x - mean(x))**2) / (n - ddof); dy/dx = 2 (x - mean(x)) / (n - ddof). nan when n - ddof <= 0."""
    rule = 'd var(x)/dx = 2 (x - mean(x)) / (n - ddof)'
    params = ("axis", "keepdims", "ddof")
    def compute(self, x):
        x = x.astype(dtypes.float_dtype(x.dtype), copy=False)
        n = _count(x.shape, self.axes)
        self.denominator = max(n - self.ddof, 0)
        if self.denominator > 0:
            return dtypes.widened(lambda a: a.var(axis=self.axes, keepdims=self.keepdims, ddof=self.ddof), x)
        with np.errstate(invalid="ignore", divide="ignore"):  # 0/0 = nan, s/0 = inf, quietly
            centered = x - x.mean(axis=self.axes, keepdims=True) if n else x
            return (centered * centered).sum(axis=self.axes, keepdims=self.keepdims) / x.dtype.type(0)

    def backward(self, gy):
        x = self.inputs[0]
        centered = x - x.mean(axis=self.axes, keepdims=True)
        with np.errstate(invalid="ignore"):  # inf * 0 = nan when n - ddof <= 0
            return _expand_back(gy, x.shape, self.axes) * centered * _ratio(2.0, self.denominator)


class Prod(_Reduction):
    """y = product of x over ``axis``; dy/dx_i = the product of the other elements (exact at zeros: computed from
    prefix and suffix products, never as y / x_i). First-order: that product is a constant of the backward."""
    rule = 'd prod(x)/dx_i = prod_{j != i} x_j'
    differentiable_twice = False

    def compute(self, x):
        return dtypes.widened(lambda a: a.prod(axis=self.axes, keepdims=self.keepdims), x)

    def backward(self, gy):
        x = self.inputs[0].data
        return _expand_back(gy, x.shape, self.axes) * Tensor(_product_of_others(x, self.axes))


def _product_of_others(x, axes):
    """For each element, the product of the other elements of its reduction group (axes ``axes``)."""
    xp = backend.xp_of(x)
    if x.size == 0 or not axes:
        return xp.zeros_like(x) if x.size == 0 else xp.ones_like(x)
    keep = [i for i in range(x.ndim) if i not in axes]
    perm = keep + list(axes)
    moved = x.transpose(perm)
    flat = moved.reshape(moved.shape[:len(keep)] + (-1,))
    ones = xp.ones(flat.shape[:-1] + (1,), dtype=x.dtype)
    before = xp.cumprod(xp.concatenate([ones, flat[..., :-1]], axis=-1), axis=-1)
    after = xp.flip(xp.cumprod(xp.concatenate([ones, xp.flip(flat, -1)[..., :-1]], axis=-1), axis=-1), -1)
    return (before * after).reshape(moved.shape).transpose(tuple(int(i) for i in np.argsort(perm)))


class LogSumExp(_Reduction):
    """y = log(sum(exp(x))) computed stably; dy/dx = exp(x - y) (the softmax of x)."""
    rule = 'd logsumexp(x)/dx = exp(x - logsumexp(x)) = softmax(x)'
    save_outputs = True

    def compute(self, x):
        xp = backend.xp_of(x)
        x = x.astype(dtypes.float_dtype(x.dtype), copy=False)
        m = x.max(axis=self.axes, keepdims=True)
        m = xp.where(xp.isfinite(m), m, 0)
        out = dtypes.widened(lambda a, b: xp.log(xp.exp(a - b).sum(axis=self.axes, keepdims=True)) + b, x, m)
        return out.reshape(_reduced_shape(x.shape, self.axes, self.keepdims))

    def backward(self, gy):
        x = self.inputs[0]
        y = reshape(self.output(), _keepdims_shape(x.shape, self.axes))
        return _expand_back(gy, x.shape, self.axes) * Exp.apply(x - y)


@torch_keywords
def std(x: Tensor, axis=None, keepdims: bool = False, ddof: int = 0) -> Tensor:
    """sqrt(var(x)) over ``axis`` (NumPy's ``ddof``; PyTorch's default is ``correction=1``: pass ddof=1)."""
    normalize_axes("std", axis, x.shape)
    return Sqrt.apply(Var.apply(x, axis=axis, keepdims=keepdims, ddof=ddof))


# ---------------------------------------------------------------------------------------------------- scan
class Cumsum(Function):
    """y_i = sum_{j <= i} x_j along ``axis``; dx_i = sum_{j >= i} gy_j (a reversed cumulative sum)."""
    rule = 'd cumsum(x)_j/dx_i = 1 for j >= i  (gradient: reversed cumulative sum)'
    params = ("axis",)
    def forward(self, x):
        self.axis = normalize_axis("cumsum", self.axis, x.shape)
        if x.ndim == 0:
            return x.astype(np.int64) if x.dtype.kind in "biu" else x.copy()
        dtype = np.int64 if x.dtype.kind in "biu" else None
        return dtypes.widened(lambda a: backend.xp_of(a).cumsum(a, axis=self.axis, dtype=dtype), x)

    def backward(self, gy):
        if gy.ndim == 0:
            return gy
        total = Sum.apply(gy, axis=self.axis, keepdims=True)
        return total - Cumsum.apply(gy, axis=self.axis) + gy


# ---------------------------------------------------------------------------------------------------- no gradient
def _index_reduction(x: Tensor, axis, keepdims: bool, op: str) -> Tensor:
    a = x.data
    xp = backend.xp_of(a)
    if a.size == 0:
        raise ValueError(f"{op}: cannot take the {op} of an empty tensor (shape {x.shape})")
    if axis is None:
        out = xp.asarray(getattr(xp, op)(a.reshape(-1)), dtype=np.int64)
        return Tensor(out.reshape((1,) * a.ndim) if keepdims else out)
    ax = normalize_axis(op, axis, x.shape)
    if a.ndim == 0:
        return Tensor(xp.zeros((), dtype=np.int64))
    out = getattr(xp, op)(a, axis=ax).astype(np.int64, copy=False)
    return Tensor(xp.expand_dims(out, ax) if keepdims else out)


@torch_keywords
def argmax(x: Tensor, axis=None, keepdims: bool = False) -> Tensor:
    """Index of the largest element (flat index when ``axis`` is None); int64, no gradient."""
    return _index_reduction(x, axis, keepdims, "argmax")


@torch_keywords
def argmin(x: Tensor, axis=None, keepdims: bool = False) -> Tensor:
    """Index of the smallest element (flat index when ``axis`` is None); int64, no gradient."""
    return _index_reduction(x, axis, keepdims, "argmin")


def _truth_reduction(x: Tensor, axis, keepdims: bool, op: str) -> Tensor:
    axes = normalize_axes(op, axis, x.shape)
    return Tensor(getattr(x.data.astype(bool, copy=False), op)(axis=axes, keepdims=keepdims))


@torch_keywords
def any_true(x: Tensor, axis=None, keepdims: bool = False) -> Tensor:
    """True where any element over ``axis`` is nonzero; a boolean tensor, no gradient."""
    return _truth_reduction(x, axis, keepdims, "any")


@torch_keywords
def all_true(x: Tensor, axis=None, keepdims: bool = False) -> Tensor:
    """True where every element over ``axis`` is nonzero; a boolean tensor, no gradient."""
    return _truth_reduction(x, axis, keepdims, "all")
