"""Activations beyond relu/gelu/silu: leaky_relu, elu, softplus, logsigmoid, mish, hardswish (PyTorch's
definitions and defaults). Each backward is in Tensor ops, so they are differentiable twice; at a kink the
derivative takes PyTorch's side."""
from __future__ import annotations

from .. import backend
from ..function import Function
from ..tensor import Tensor, as_tensor
from .elementwise import Sigmoid, Tanh, Where, _float


class LeakyRelu(Function):
    """y = x for x > 0, else slope x; dy/dx = 1 or slope."""
    rule = 'd leaky_relu(x)/dx = 1 if x > 0 else negative_slope'
    params = ("negative_slope",)
    def forward(self, x):
        x = _float(x)
        return backend.xp_of(x).where(x > 0, x, x * x.dtype.type(self.negative_slope))

    def backward(self, gy):
        x = self.inputs[0]
        return Where.apply(gy, gy * self.negative_slope, cond=x.data > 0)


class Elu(Function):
    """y = x for x > 0, else alpha (exp(x) - 1); dy/dx = 1 or alpha exp(x)."""
    rule = 'd elu(x)/dx = 1 if x > 0 else alpha exp(x)'
    params = ("alpha",)
    def forward(self, x):
        x = _float(x)
        xp = backend.xp_of(x)
        return xp.where(x > 0, x, x.dtype.type(self.alpha) * xp.expm1(xp.minimum(x, 0)))

    def backward(self, gy):
        x = self.inputs[0]
        return Where.apply(gy, gy * (x.exp() * self.alpha), cond=x.data > 0)


class Softplus(Function):
    """y = log(1 + exp(beta x)) / beta, and y = x where beta x > threshold; dy/dx = sigmoid(beta x) (1 there)."""
    rule = 'd softplus(x)/dx = sigmoid(beta x)'
    params = ("beta", "threshold")
    beta, threshold = 1.0, 20.0
    def forward(self, x):
        x = _float(x)
        xp = backend.xp_of(x)
        bx = x * x.dtype.type(self.beta)
        return xp.where(bx > self.threshold, x, xp.logaddexp(x.dtype.type(0), bx) / x.dtype.type(self.beta))

    def backward(self, gy):
        x = self.inputs[0]
        linear = x.data * self.beta > self.threshold
        return Where.apply(gy, gy * Sigmoid.apply(x * self.beta), cond=linear)


class LogSigmoid(Function):
    """y = log(sigmoid(x)) = -softplus(-x), stable; dy/dx = sigmoid(-x) = 1 - sigmoid(x)."""
    rule = 'd log(sigmoid(x))/dx = 1 - sigmoid(x)'
    def forward(self, x):
        x = _float(x)
        return -backend.xp_of(x).logaddexp(x.dtype.type(0), -x)

    def backward(self, gy):
        return gy * Sigmoid.apply(-self.inputs[0])


class Mish(Function):
    """y = x tanh(softplus(x)); dy/dx = t + x sigmoid(x) (1 - t**2) with t = tanh(softplus(x))."""
    rule = 'd mish(x)/dx = t + x sigmoid(x) (1 - t^2),  t = tanh(softplus(x))'
    def forward(self, x):
        x = _float(x)
        xp = backend.xp_of(x)
        return x * xp.tanh(xp.logaddexp(x.dtype.type(0), x))

    def backward(self, gy):
        x = self.inputs[0]
        t = Tanh.apply(Softplus.apply(x, beta=1.0, threshold=20.0))
        return gy * (t + x * Sigmoid.apply(x) * (1.0 - t * t))


class Hardswish(Function):
    """y = x relu6(x + 3) / 6: 0 for x <= -3, x for x >= 3, x (x + 3) / 6 between; dy/dx = 0, 1, (2x + 3) / 6."""
    rule = 'd hardswish(x)/dx = 0 if x < -3, 1 if x > 3, else (2x + 3)/6'
    def forward(self, x):
        x = _float(x)
        xp = backend.xp_of(x)
        return x * xp.clip(x + 3, 0, 6) / x.dtype.type(6)

    def backward(self, gy):
        x = self.inputs[0]
        middle = gy * (x * (1.0 / 3.0) + 0.5)
        inside = Where.apply(middle, gy, cond=x.data <= 3)
        return Where.apply(0.0, inside, cond=x.data < -3)


def leaky_relu(x: Tensor, negative_slope: float = 0.01) -> Tensor:
    """x for x > 0, else negative_slope * x."""
    return LeakyRelu.apply(as_tensor(x), negative_slope=float(negative_slope))


def elu(x: Tensor, alpha: float = 1.0) -> Tensor:
    """x for x > 0, else alpha * (exp(x) - 1)."""
    return Elu.apply(as_tensor(x), alpha=float(alpha))


def softplus(x: Tensor, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    """log(1 + exp(beta x)) / beta, linear where beta x > threshold (PyTorch's defaults)."""
    return Softplus.apply(as_tensor(x), beta=float(beta), threshold=float(threshold))


def logsigmoid(x: Tensor) -> Tensor:
    """log(sigmoid(x)), stable for large |x|."""
    return LogSigmoid.apply(as_tensor(x))


def mish(x: Tensor) -> Tensor:
    """x * tanh(softplus(x))."""
    return Mish.apply(as_tensor(x))


def hardswish(x: Tensor) -> Tensor:
    """x * relu6(x + 3) / 6 (MobileNetV3's cheap swish)."""
    return Hardswish.apply(as_tensor(x))
