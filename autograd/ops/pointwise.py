"""More elementwise math: sin, cos, log2, log10; the piecewise-constant floor, ceil, round, sign, floor_divide
(zero gradient, as PyTorch gives); remainder; logaddexp; lerp; and the predicates isnan, isinf, isfinite.

Integer inputs of the float functions compute in the default float dtype; rounding an integer tensor returns it
unchanged. Binary ops broadcast and promote like the others (``elementwise._Binary``).
"""
from __future__ import annotations

import math

from .. import backend, dtypes
from ..function import Function
from ..tensor import Tensor, as_tensor
from .elementwise import Exp, _Binary, _float
from .shape import sum_to


def _zeros_like(x: Tensor, like: Tensor) -> Tensor:
    """A zero gradient for ``x``, in the gradient's dtype."""
    return Tensor(backend.xp_of(like.data).zeros(x.shape, dtype=like.dtype))


class Sin(Function):
    """y = sin(x); dy/dx = cos(x)."""
    rule = 'd sin(x)/dx = cos(x)'
    def forward(self, x):
        return backend.xp_of(x).sin(_float(x))

    def backward(self, gy):
        return gy * Cos.apply(self.inputs[0])


class Cos(Function):
    """y = cos(x); dy/dx = -sin(x)."""
    rule = 'd cos(x)/dx = -sin(x)'
    def forward(self, x):
        return backend.xp_of(x).cos(_float(x))

    def backward(self, gy):
        return -(gy * Sin.apply(self.inputs[0]))


class Log2(Function):
    """y = log2(x); dy/dx = 1 / (x ln 2)."""
    rule = 'd log2(x)/dx = 1 / (x ln 2)'
    def forward(self, x):
        return backend.xp_of(x).log2(_float(x))

    def backward(self, gy):
        return gy / (self.inputs[0] * math.log(2.0))


class Log10(Function):
    """y = log10(x); dy/dx = 1 / (x ln 10)."""
    rule = 'd log10(x)/dx = 1 / (x ln 10)'
    def forward(self, x):
        return backend.xp_of(x).log10(_float(x))

    def backward(self, gy):
        return gy / (self.inputs[0] * math.log(10.0))


class _Step(Function):
    """A piecewise-constant function: its derivative is 0 wherever it is defined (PyTorch's choice at the jumps)."""
    rule = 'd step(x)/dx = 0  (piecewise constant)'

    def forward(self, x):
        if not dtypes.is_float(x.dtype) and self.keeps_integers:
            return x.copy()
        return self.compute(backend.xp_of(x), x)

    def backward(self, gy):
        return _zeros_like(self.inputs[0], gy)


class Floor(_Step):
    """y = floor(x) (largest integer <= x); dy/dx = 0."""
    keeps_integers = True
    def compute(self, xp, x):
        return xp.floor(x)


class Ceil(_Step):
    """y = ceil(x) (smallest integer >= x); dy/dx = 0."""
    keeps_integers = True
    def compute(self, xp, x):
        return xp.ceil(x)


class Round(_Step):
    """y = x rounded to ``decimals`` places, halves to even (as NumPy and PyTorch); dy/dx = 0."""
    keeps_integers = True
    params = ("decimals",)
    decimals = 0

    def compute(self, xp, x):
        return xp.round(x, self.decimals)


class Sign(_Step):
    """y = -1, 0 or 1 by the sign of x; dy/dx = 0."""
    keeps_integers = False
    def compute(self, xp, x):
        return xp.sign(x)


class FloorDivide(_Binary):
    """z = floor(x / y) (Python's //, rounding toward minus infinity, as PyTorch); dz/dx = dz/dy = 0."""
    rule = 'd floor(x/y)/dx = 0, d floor(x/y)/dy = 0  (piecewise constant)'
    def compute(self, x, y):
        return backend.xp_of(x, y).floor_divide(x, y)

    def backward(self, gz):
        x, y = self.inputs
        return _zeros_like(x, gz), _zeros_like(y, gz)


class Remainder(_Binary):
    """z = x - floor(x / y) y (Python's %, the sign of y, as PyTorch); dz/dx = 1, dz/dy = -floor(x / y)."""
    rule = 'd(x mod y)/dx = 1, d(x mod y)/dy = -floor(x/y)'
    def compute(self, x, y):
        return backend.xp_of(x, y).remainder(x, y)

    def backward(self, gz):
        x, y = self.inputs
        gx = sum_to(gz, x.shape) if self.needs_input_grad[0] else None
        gy = sum_to(-(gz * Floor.apply(x / y)), y.shape) if self.needs_input_grad[1] else None
        return gx, gy


class LogAddExp(_Binary):
    """z = log(exp(x) + exp(y)), stable; dz/dx = exp(x - z), dz/dy = exp(y - z)."""
    rule = 'd logaddexp(x,y)/dx = exp(x - z), d logaddexp(x,y)/dy = exp(y - z)'
    save_outputs = True

    def compute(self, x, y):
        return backend.xp_of(x, y).logaddexp(_float(x), _float(y))

    def backward(self, gz):
        x, y = self.inputs
        z = self.output()
        gx = sum_to(gz * Exp.apply(x - z), x.shape) if self.needs_input_grad[0] else None
        gy = sum_to(gz * Exp.apply(y - z), y.shape) if self.needs_input_grad[1] else None
        return gx, gy


def lerp(start, end, weight) -> Tensor:
    """start + weight (end - start), broadcasting; ``weight`` a Tensor or a number. Composed from add, sub, mul,
    so its gradients are theirs: (1 - weight), weight and (end - start)."""
    start = as_tensor(start)
    return start + (end - start) * weight


def _predicate(x, fn: str) -> Tensor:
    a = x.data if isinstance(x, Tensor) else x
    return Tensor(getattr(backend.xp_of(a), fn)(a))


def isnan(x) -> Tensor:
    """True where x is nan; a boolean tensor, no gradient."""
    return _predicate(x, "isnan")


def isinf(x) -> Tensor:
    """True where x is +inf or -inf; a boolean tensor, no gradient."""
    return _predicate(x, "isinf")


def isfinite(x) -> Tensor:
    """True where x is neither nan nor infinite; a boolean tensor, no gradient."""
    return _predicate(x, "isfinite")
