"""Parameter: a leaf Tensor that a Module registers as trainable, and the initialisers that fill them.

Initialisers write into ``param.data`` in place and draw from a NumPy ``Generator`` (float64 draws cast to the
parameter's dtype, so a float32 and a float64 model built from one seed hold the same values up to rounding).
``skip_init()`` makes layers built inside it allocate zeros and skip their random draws: GPT uses it so that a
124M model is not initialised twice (once by each layer, once by GPT's own scheme), and weight loaders use
``GPT(cfg, init=False)`` to skip initialisation entirely.
"""
from __future__ import annotations

import contextlib
import math

import numpy as np

from autograd import Tensor, amp, backend, dtypes

__all__ = ["Parameter", "skip_init", "init_enabled", "normal_", "uniform_", "zeros_", "ones_", "as_generator"]


class Parameter(Tensor):
    """A Tensor that requires grad by default and that Module attributes register as a parameter.

    >>> w = Parameter(np.zeros((3, 4), dtype=np.float32))   # requires_grad=True
    """

    __slots__ = ()  # Tensor uses __slots__; an empty one keeps Parameter as light as Tensor (no __dict__)

    def __init__(self, data, requires_grad: bool = True, dtype=None, device: str | None = None,
                 name: str | None = None):
        super().__init__(data, requires_grad=requires_grad, dtype=dtype, device=device, name=name)
        if not dtypes.is_float(self.dtype):
            raise TypeError(f"Parameter needs a floating-point dtype, got {self.dtype}")

    def __repr__(self) -> str:
        return "Parameter" + super().__repr__()[len("Tensor"):]


_INIT = {"enabled": True}


def init_enabled() -> bool:
    """False inside ``skip_init()``: layers then leave their parameters at zero."""
    return _INIT["enabled"]


@contextlib.contextmanager
def skip_init():
    """Build layers without drawing random initial values (their parameters start at zero)."""
    previous = _INIT["enabled"]
    _INIT["enabled"] = False
    try:
        yield
    finally:
        _INIT["enabled"] = previous


def as_generator(rng) -> np.random.Generator:
    """A NumPy Generator from a Generator, an int seed, or None (fresh OS entropy)."""
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def _fill(p: Tensor, values) -> None:
    if isinstance(values, np.ndarray):
        values = values.astype(p.dtype, copy=False)
        values = backend.to_device(values, p.device) if p.device != "cpu" else values
    p.data[...] = values
    amp.refresh_shadows(p)          # its low-precision copies (autocast) follow the new values


def normal_(p: Tensor, std: float, rng=None, mean: float = 0.0) -> Tensor:
    """Fill ``p`` in place with N(mean, std^2) draws from ``rng``."""
    _fill(p, as_generator(rng).normal(mean, std, size=p.shape))
    return p


def uniform_(p: Tensor, low: float, high: float, rng=None) -> Tensor:
    """Fill ``p`` in place with U(low, high) draws from ``rng``."""
    _fill(p, as_generator(rng).uniform(low, high, size=p.shape))
    return p


def zeros_(p: Tensor) -> Tensor:
    _fill(p, 0)
    return p


def ones_(p: Tensor) -> Tensor:
    _fill(p, 1)
    return p


def kaiming_uniform_linear_(p: Tensor, fan_in: int, rng=None) -> Tensor:
    """PyTorch's default Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return uniform_(p, -bound, bound, rng)
