"""Tensor methods as functions, PyTorch's ``torch.exp(x)`` spelling: ``ag.exp(x)`` is ``x.exp()``, and a
non-Tensor first argument (a list, an ndarray, a number) becomes a Tensor first."""
from __future__ import annotations

from .tensor import Tensor, as_tensor

NAMES = (
    "exp", "log", "sqrt", "tanh", "sigmoid", "relu", "abs", "sin", "cos", "log2", "log10", "floor", "ceil",
    "round", "sign", "clip", "clamp", "maximum", "minimum", "logaddexp", "remainder", "floor_divide", "pow",
    "sum", "mean", "prod", "max", "min", "var", "logsumexp", "cumsum", "reshape", "permute", "swapaxes",
    "broadcast_to", "astype",
)


def _function(name: str):
    method = getattr(Tensor, name)

    def call(x, *args, **kwargs):
        return method(as_tensor(x), *args, **kwargs)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = f"``ag.{name}(x, ...)`` is ``x.{name}(...)``."
    return call


FUNCTIONS = {name: _function(name) for name in NAMES}
