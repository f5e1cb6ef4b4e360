"""Inverted dropout with a given mask: y = x * mask, mask = keep / (1 - p); dx = gy * mask.

- ``dropout_reference``: one multiplication by the mask as a constant; ``F.dropout`` draws the mask.
- ``Dropout``: one node that keeps the mask (a parameter) for backward.
"""
from __future__ import annotations

from ...tensor import Tensor
from .base import FusedFunction


def dropout_reference(x: Tensor, mask) -> Tensor:
    """x * mask, the mask a constant array of x's shape and dtype."""
    return x * Tensor(mask)


class Dropout(FusedFunction):
    """y = x * mask in one node."""
    rule = "d(x * mask)/dx = mask"
    params = ("mask",)

    def forward(self, x):
        return x * self.mask

    def backward_arrays(self, gy):
        return Tensor(gy.data * self.mask)

    def reference(self, x):
        return dropout_reference(x, self.mask)
