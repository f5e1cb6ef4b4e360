"""SGD with momentum, dampening, Nesterov and L2 weight decay (PyTorch's semantics)."""
from __future__ import annotations

from typing import Any

from autograd.backend import xp_of

from .optimizer import Optimizer

__all__ = ["SGD"]


class SGD(Optimizer):
    """Stochastic gradient descent, per parameter p with gradient g (PyTorch's torch.optim.SGD)::

        g = g + weight_decay * p                       # L2 penalty, when weight_decay != 0
        buf = g                     (first step)       # when momentum != 0
        buf = momentum * buf + (1 - dampening) * g     (later steps)
        g = g + momentum * buf  if nesterov else buf
        p -= lr * g

    State per parameter: ``momentum_buffer`` (only with momentum).
    """

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: nesterov=True needs momentum > 0 and dampening = 0")
        if momentum < 0:
            raise ValueError(f"SGD: momentum must be >= 0, got {momentum}")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov))

    def _update(self, p, g, state: dict[str, Any], group: dict[str, Any]) -> None:
        lr, mom, damp, wd = group["lr"], group["momentum"], group["dampening"], group["weight_decay"]
        if wd != 0.0:
            g = g + wd * p                          # new array: the caller's gradient stays untouched
        if mom != 0.0:
            buf = state.get("momentum_buffer")
            if buf is None:
                # xp.array, not astype: a 0-d parameter's arithmetic yields NumPy scalars, and state must be an array
                buf = state["momentum_buffer"] = xp_of(p).array(g, dtype=self._state_dtype(p), copy=True)
            else:
                buf *= mom
                buf += (1.0 - damp) * g
            g = g + mom * buf if group["nesterov"] else buf
        p -= lr * g
