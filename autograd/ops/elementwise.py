"""Elementwise ops with NumPy broadcasting. Each backward is written in Tensor ops, so it can be differentiated
again; broadcast gradients are reduced to each input's shape with ``sum_to``."""
from __future__ import annotations

import math

import numpy as np

from .. import backend, dtypes
from ..function import Function
from ..tensor import Tensor
from .shape import sum_to


def _binary_shapes_check(name, x, y):
    try:
        return np.broadcast_shapes(x.shape, y.shape)
    except ValueError:
        raise ValueError(f"{name}: shapes {x.shape} and {y.shape} cannot be broadcast together") from None


def _float(x):
    """x itself when floating, else x as the default float dtype (exp, log ... of an integer tensor)."""
    return x if dtypes.is_float(x.dtype) else x.astype(dtypes.float_dtype(x.dtype))


class _Binary(Function):
    """Two operands, broadcast together and computed in their promoted dtype (``dtypes.result_type``)."""
    def forward(self, x, y):
        if x.dtype != y.dtype:
            dtype = dtypes.result_type(x, y)
            x, y = x.astype(dtype, copy=False), y.astype(dtype, copy=False)
        try:
            return self.compute(x, y)
        except (TypeError, ValueError) as e:  # NumPy's message, with the op and the operands
            _binary_shapes_check(self.name, x, y)
            raise type(e)(f"{self.name}: {e} (operands {x.dtype} {x.shape} and {y.dtype} {y.shape})") from None


class Add(_Binary):
    """z = x + y; dz/dx = 1, dz/dy = 1."""
    rule = 'd(x+y)/dx = 1, d(x+y)/dy = 1  (gradient passes through; broadcast axes summed)'
    def compute(self, x, y):
        return x + y

    def backward(self, gz):
        x, y = self.inputs
        return sum_to(gz, x.shape), sum_to(gz, y.shape)


class Sub(_Binary):
    """z = x - y; dz/dx = 1, dz/dy = -1."""
    rule = 'd(x-y)/dx = 1, d(x-y)/dy = -1'
    def compute(self, x, y):
        return x - y

    def backward(self, gz):
        x, y = self.inputs
        return sum_to(gz, x.shape), sum_to(-gz, y.shape)


class Mul(_Binary):
    """z = x * y; dz/dx = y, dz/dy = x."""
    rule = 'd(x*y)/dx = y, d(x*y)/dy = x'
    def compute(self, x, y):
        return x * y

    def backward(self, gz):
        x, y = self.inputs
        gx = sum_to(gz * y, x.shape) if self.needs_input_grad[0] else None
        gy = sum_to(gz * x, y.shape) if self.needs_input_grad[1] else None
        return gx, gy


class Div(_Binary):
    """z = x / y; dz/dx = 1/y, dz/dy = -x/y**2."""
    rule = 'd(x/y)/dx = 1/y, d(x/y)/dy = -x/y^2'
    def compute(self, x, y):
        with np.errstate(divide="ignore", invalid="ignore"):  # x / 0 is inf or nan, silently, as in PyTorch
            return _float(x) / _float(y)

    def backward(self, gz):
        x, y = self.inputs
        gx = sum_to(gz / y, x.shape) if self.needs_input_grad[0] else None
        gy = sum_to(-gz * x / (y * y), y.shape) if self.needs_input_grad[1] else None
        return gx, gy


class Neg(Function):
    """y = -x; dy/dx = -1."""
    rule = 'd(-x)/dx = -1'
    def forward(self, x):
        return -x

    def backward(self, gy):
        return -gy


class Pow(_Binary):
    """z = x ** y (tensor exponent); dz/dx = y x**(y-1) (0 where y = 0), dz/dy = z log x (0 where x = 0 and
    y >= 0; nan for a negative base, where x**y is not a real function of y), as PyTorch."""
    rule = 'd(x^y)/dx = y x^(y-1), d(x^y)/dy = x^y log(x)'
    save_outputs = True

    def compute(self, x, y):
        with np.errstate(divide="ignore", invalid="ignore"):
            return x ** y

    def backward(self, gz):
        x, y = self.inputs
        gx = gy = None
        with np.errstate(divide="ignore", invalid="ignore"):  # the masked 0 * inf and log(0) of PyTorch's rule
            if self.needs_input_grad[0]:
                gx = sum_to(Where.apply(0.0, gz * y * x ** (y - 1), cond=y.data == 0), x.shape)
            if self.needs_input_grad[1]:
                xp = backend.xp_of(x.data)
                zero_base = (x.data == 0) & (y.data >= 0)
                log_x = Log.apply(x)
                gy = sum_to(Where.apply(0.0, gz * self.output() * log_x, cond=xp.broadcast_to(zero_base, gz.shape)),
                            y.shape)
        return gx, gy


class PowScalar(Function):
    """y = x ** c for a Python number c; dy/dx = c x**(c-1)."""
    rule = 'd(x^c)/dx = c x^(c-1)'
    params = ("exponent",)
    def forward(self, x):
        dtype = dtypes.result_type(x, self.exponent)  # int_tensor ** 2 stays integer, ** 0.5 is float32
        try:
            return x.astype(dtype, copy=False) ** dtype.type(self.exponent)
        except ValueError as e:  # an integer to a negative power
            raise ValueError(f"pow: {e} (a {x.dtype} tensor ** {self.exponent!r}; use a float tensor)") from None

    def backward(self, gy):
        (x,) = self.inputs
        c = self.exponent
        if c == 0:
            return gy * 0.0
        if c == 1:
            return gy
        if c == 2:
            return gy * (x * 2.0)
        return gy * (PowScalar.apply(x, exponent=c - 1) * float(c))


class Exp(Function):
    """y = exp(x); dy/dx = y."""
    rule = 'd exp(x)/dx = exp(x)'
    save_outputs = True

    def forward(self, x):
        return backend.xp_of(x).exp(_float(x))

    def backward(self, gy):
        return gy * self.output()


class Log(Function):
    """y = log(x); dy/dx = 1/x."""
    rule = 'd log(x)/dx = 1/x'
    def forward(self, x):
        with np.errstate(divide="ignore", invalid="ignore"):  # log(0) = -inf, log(-1) = nan
            return backend.xp_of(x).log(_float(x))

    def backward(self, gy):
        return gy / self.inputs[0]


class Sqrt(Function):
    """y = sqrt(x); dy/dx = 1 / (2 y)."""
    rule = 'd sqrt(x)/dx = 1 / (2 sqrt(x))'
    save_outputs = True

    def forward(self, x):
        with np.errstate(invalid="ignore"):
            return backend.xp_of(x).sqrt(_float(x))

    def backward(self, gy):
        return gy / (self.output() * 2.0)


class Tanh(Function):
    """y = tanh(x); dy/dx = 1 - y**2."""
    rule = 'd tanh(x)/dx = 1 - tanh(x)^2'
    save_outputs = True

    def forward(self, x):
        return backend.xp_of(x).tanh(_float(x))

    def backward(self, gy):
        y = self.output()
        return gy * (1.0 - y * y)


def _sigmoid_array(x):
    xp = backend.xp_of(x)
    x = _float(x)
    # 0.5 * (1 + tanh(x / 2)) is sigmoid without overflow in exp for large |x|
    return x.dtype.type(0.5) * (xp.tanh(x * x.dtype.type(0.5)) + 1)


class Sigmoid(Function):
    """y = 1 / (1 + exp(-x)); dy/dx = y (1 - y)."""
    rule = 'd sigmoid(x)/dx = sigmoid(x) (1 - sigmoid(x))'
    save_outputs = True

    def forward(self, x):
        return _sigmoid_array(x)

    def backward(self, gy):
        y = self.output()
        return gy * y * (1.0 - y)


class Relu(Function):
    """y = max(x, 0); dy/dx = 1 where x > 0, else 0."""
    rule = 'd relu(x)/dx = 1 if x > 0 else 0'
    def forward(self, x):
        return backend.xp_of(x).maximum(x, 0)

    def backward(self, gy):
        x = self.inputs[0]
        return gy * Tensor((x.data > 0).astype(gy.dtype))


def _erf_array(x):
    xp = backend.xp_of(x)
    if xp is not np:
        import cupyx.scipy.special
        return cupyx.scipy.special.erf(x)
    # NumPy has no erf: Python's math.erf elementwise (exact; only the non-default exact GELU uses it). asarray
    # because frompyfunc gives a bare Python float for a 0-d input.
    return np.asarray(np.frompyfunc(math.erf, 1, 1)(x), dtype=x.dtype)


class Erf(Function):
    """y = erf(x); dy/dx = 2/sqrt(pi) exp(-x**2)."""
    rule = 'd erf(x)/dx = 2/sqrt(pi) exp(-x^2)'
    def forward(self, x):
        return _erf_array(_float(x))

    def backward(self, gy):
        x = self.inputs[0]
        return gy * (Exp.apply(-(x * x)) * (2.0 / math.sqrt(math.pi)))


class Gelu(Function):
    """The exact GELU: y = x Phi(x), Phi the standard normal CDF; dy/dx = Phi(x) + x phi(x). GPT-2's tanh form is the
    fused op of ``autograd/ops/fused/gelu.py`` (``F.gelu(x)``)."""
    rule = 'd gelu(x)/dx = Phi(x) + x phi(x)'
    def forward(self, x):
        x = _float(x)
        return x.dtype.type(0.5) * x * (1 + _erf_array(x * x.dtype.type(1 / math.sqrt(2.0))))

    def backward(self, gy):
        x = self.inputs[0]
        cdf = (Erf.apply(x * (1 / math.sqrt(2.0))) + 1.0) * 0.5
        pdf = Exp.apply(x * x * -0.5) * (1 / math.sqrt(2 * math.pi))
        return gy * (cdf + x * pdf)


class Silu(Function):
    """y = x sigmoid(x); dy/dx = s (1 + x (1 - s)) with s = sigmoid(x)."""
    rule = 'd silu(x)/dx = s (1 + x (1 - s)),  s = sigmoid(x)'
    def forward(self, x):
        return _float(x) * _sigmoid_array(x)

    def backward(self, gy):
        x = self.inputs[0]
        s = Sigmoid.apply(x)
        return gy * (s * (x * (1.0 - s) + 1.0))


class Abs(Function):
    """y = |x|; dy/dx = sign(x) (0 at 0)."""
    rule = 'd|x|/dx = sign(x)'
    def forward(self, x):
        return backend.xp_of(x).abs(x)

    def backward(self, gy):
        x = self.inputs[0]
        return gy * Tensor(backend.xp_of(x.data).sign(x.data).astype(gy.dtype))


def _share_by_wins(gz: Tensor, x: Tensor, y: Tensor, x_wins):
    """Send gz to x where ``x_wins``, to y elsewhere, half to each at ties (as the max/min reductions split ties)."""
    xd, yd = x.data, y.data
    share = x_wins.astype(gz.dtype) + (xd == yd).astype(gz.dtype) * gz.dtype.type(0.5)
    share = Tensor(share)
    return sum_to(gz * share, x.shape), sum_to(gz * (1.0 - share), y.shape)


class Maximum(_Binary):
    """z = max(x, y) elementwise; the gradient goes to the larger input, half to each at ties (as PyTorch)."""
    rule = 'd max(x,y)/dx = 1 where x > y, 1/2 where x = y, else 0 (and the rest to y)'
    def compute(self, x, y):
        return backend.xp_of(x, y).maximum(x, y)

    def backward(self, gz):
        x, y = self.inputs
        return _share_by_wins(gz, x, y, x.data > y.data)


class Minimum(_Binary):
    """z = min(x, y) elementwise; the gradient goes to the smaller input, half to each at ties (as PyTorch)."""
    rule = 'd min(x,y)/dx = 1 where x < y, 1/2 where x = y, else 0 (and the rest to y)'
    def compute(self, x, y):
        return backend.xp_of(x, y).minimum(x, y)

    def backward(self, gz):
        x, y = self.inputs
        return _share_by_wins(gz, x, y, x.data < y.data)


class Clip(Function):
    """y = clip(x, low, high); dy/dx = 1 inside [low, high], else 0."""
    rule = 'd clip(x)/dx = 1 inside [low, high], else 0'
    params = ("low", "high")
    def forward(self, x):
        bounds = [b for b in (self.low, self.high) if b is not None]
        dtype = dtypes.result_type(x, *bounds) if bounds else x.dtype  # int_tensor.clip(0.5) is float32
        return dtypes.widened(lambda a: backend.xp_of(a).clip(a, self.low, self.high), x.astype(dtype, copy=False))

    def backward(self, gy):
        x = self.inputs[0].data
        inside = backend.xp_of(x).ones((), dtype=bool)  # the inputs' array module: a NumPy bool & CuPy fails
        if self.low is not None:
            inside = inside & (x >= self.low)
        if self.high is not None:
            inside = inside & (x <= self.high)
        return gy * Tensor(inside.astype(gy.dtype))


class Where(_Binary):
    """z = x where cond else y (cond is a boolean array, not differentiated)."""
    rule = 'd where(c,x,y)/dx = 1 where c, d where(c,x,y)/dy = 1 where not c'
    params = ("cond",)
    def compute(self, x, y):
        z = backend.xp_of(x, y).where(self.cond, x, y)
        return z if z.dtype == x.dtype else z.astype(x.dtype)   # CuPy's where widens bfloat16 to float32

    def backward(self, gz):
        x, y = self.inputs
        gx = sum_to(Where.apply(gz, 0.0, cond=self.cond), x.shape) if self.needs_input_grad[0] else None
        gy = sum_to(Where.apply(0.0, gz, cond=self.cond), y.shape) if self.needs_input_grad[1] else None
        return gx, gy


def where(cond, x, y) -> Tensor:
    """Elementwise choice: x where ``cond`` (a boolean Tensor or array) is true, else y."""
    if isinstance(cond, Tensor):
        cond = cond.data
    if getattr(cond, "dtype", None) is None or cond.dtype != bool:
        raise TypeError(f"where: cond must be a boolean array or Tensor, got {getattr(cond, 'dtype', type(cond))}")
    if not isinstance(x, Tensor) and not isinstance(y, Tensor):
        x = Tensor(x)
    shapes = [cond.shape] + [np.shape(v.data if isinstance(v, Tensor) else v) for v in (x, y)]
    try:
        np.broadcast_shapes(*shapes)
    except ValueError:
        raise ValueError(f"where: cond, x and y of shapes {shapes[0]}, {shapes[1]} and {shapes[2]} cannot be "
                         "broadcast together") from None
    return Where.apply(x, y, cond=cond)
