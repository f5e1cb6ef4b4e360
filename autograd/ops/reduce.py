"""Reductions with ``axis`` (int, tuple or None) and ``keepdims``: sum, mean, max, min, var, logsumexp."""
from __future__ import annotations

from .. import backend
from ..function import Function
from ..tensor import Tensor
from .elementwise import Exp
from .shape import broadcast_to, reshape


def _axes(axis, ndim):
    """Normalise ``axis`` to a sorted tuple of non-negative axes (None means all)."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    out = []
    for a in axes:
        if not -ndim <= a < max(ndim, 1):
            raise ValueError(f"axis {a} is out of range for a tensor with {ndim} dimensions")
        out.append(a % max(ndim, 1))
    return tuple(sorted(set(out)))


def _keepdims_shape(shape, axes):
    return tuple(1 if i in axes else s for i, s in enumerate(shape))


def _expand_back(g: Tensor, x_shape, axes) -> Tensor:
    """Broadcast a reduced gradient back over the reduced axes of x."""
    return broadcast_to(reshape(g, _keepdims_shape(x_shape, axes)), x_shape)


class _Reduction(Function):
    def forward(self, x):
        self.axes = _axes(self.axis, x.ndim)
        return self.compute(x)


class Sum(_Reduction):
    """y = sum of x over ``axis``; dy/dx = 1, so the gradient broadcasts back."""
    rule = 'd sum(x)/dx = 1  (gradient broadcast back over the summed axes)'
    def compute(self, x):
        return x.sum(axis=self.axes, keepdims=self.keepdims)

    def backward(self, gy):
        return _expand_back(gy, self.inputs[0].shape, self.axes)


class Mean(_Reduction):
    """y = mean of x over ``axis``; dy/dx = 1/n."""
    rule = 'd mean(x)/dx = 1/n  (gradient broadcast back, divided by n)'
    def compute(self, x):
        self.count = 1
        for a in self.axes:
            self.count *= x.shape[a]
        return x.mean(axis=self.axes, keepdims=self.keepdims)

    def backward(self, gy):
        return _expand_back(gy, self.inputs[0].shape, self.axes) * (1.0 / self.count)


class _Extreme(_Reduction):
    """max/min: the gradient goes to the elements equal to the result, split evenly between ties."""
    save_outputs = True

    def backward(self, gy):
        x = self.inputs[0]
        y = self.output().data.reshape(_keepdims_shape(x.shape, self.axes))
        hit = (x.data == y).astype(gy.dtype)
        hit /= hit.sum(axis=self.axes, keepdims=True)
        return _expand_back(gy, x.shape, self.axes) * Tensor(hit)


class Max(_Extreme):
    rule = 'd max(x)/dx = 1 at the argmax (ties share), else 0'
    def compute(self, x):
        return x.max(axis=self.axes, keepdims=self.keepdims)


class Min(_Extreme):
    rule = 'd min(x)/dx = 1 at the argmin (ties share), else 0'
    def compute(self, x):
        return x.min(axis=self.axes, keepdims=self.keepdims)


class Var(_Reduction):
    """y = mean((x - mean(x))**2) * n / (n - ddof); dy/dx = 2 (x - mean(x)) / (n - ddof)."""
    rule = 'd var(x)/dx = 2 (x - mean(x)) / (n - ddof)'
    def compute(self, x):
        n = 1
        for a in self.axes:
            n *= x.shape[a]
        self.denominator = n - self.ddof
        return x.var(axis=self.axes, keepdims=self.keepdims, ddof=self.ddof)

    def backward(self, gy):
        x = self.inputs[0]
        centered = x - x.mean(axis=self.axes, keepdims=True)
        return _expand_back(gy, x.shape, self.axes) * centered * (2.0 / self.denominator)


class LogSumExp(_Reduction):
    """y = log(sum(exp(x))) computed stably; dy/dx = exp(x - y) (the softmax of x)."""
    rule = 'd logsumexp(x)/dx = exp(x - logsumexp(x)) = softmax(x)'
    save_outputs = True

    def compute(self, x):
        xp = backend.xp_of(x)
        m = x.max(axis=self.axes, keepdims=True)
        m = xp.where(xp.isfinite(m), m, 0)
        out = xp.log(xp.exp(x - m).sum(axis=self.axes, keepdims=True)) + m
        return out if self.keepdims else out.reshape([s for i, s in enumerate(x.shape) if i not in self.axes])

    def backward(self, gy):
        x = self.inputs[0]
        y = reshape(self.output(), _keepdims_shape(x.shape, self.axes))
        return _expand_back(gy, x.shape, self.axes) * Exp.apply(x - y)
