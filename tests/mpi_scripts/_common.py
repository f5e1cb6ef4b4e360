"""Shared pieces of the MPI test scripts: a tiny float64 MLP made of ag.Tensors, deterministic data, one step."""
from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

import autograd as ag  # noqa: E402

D_IN, D_HID, D_OUT = 5, 7, 3


class TinyMLP:
    """x (B, 5) -> tanh(x W1 + b1) W2 + b2 -> (B, 3); plus one parameter no op uses (exercises zero handling)."""

    def __init__(self, seed: int):
        rng = np.random.default_rng(seed)
        self.w1 = ag.Tensor(rng.standard_normal((D_IN, D_HID)) * 0.5, requires_grad=True)
        self.b1 = ag.Tensor(rng.standard_normal(D_HID) * 0.1, requires_grad=True)
        self.w2 = ag.Tensor(rng.standard_normal((D_HID, D_OUT)) * 0.5, requires_grad=True)
        self.b2 = ag.Tensor(rng.standard_normal(D_OUT) * 0.1, requires_grad=True)
        self.unused = ag.Tensor(rng.standard_normal(4), requires_grad=True)

    def parameters(self):
        return [self.w1, self.b1, self.w2, self.b2, self.unused]

    def named_arrays(self) -> dict:
        return {n: p.data for n, p in zip(("w1", "b1", "w2", "b2", "unused"), self.parameters())}

    def __call__(self, x):
        return (ag.Tensor(x) @ self.w1 + self.b1).tanh() @ self.w2 + self.b2


def global_batch(step: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """The global batch of ``step`` (same on every rank): inputs (rows, 5), regression targets (rows, 3)."""
    rng = np.random.default_rng([1234, step])
    return rng.standard_normal((rows, D_IN)), rng.standard_normal((rows, D_OUT))


def mse(model, x, y):
    d = model(x) - ag.Tensor(y)
    return (d * d).mean()


def flat(model) -> np.ndarray:
    return np.concatenate([p.data.ravel() for p in model.parameters()])
