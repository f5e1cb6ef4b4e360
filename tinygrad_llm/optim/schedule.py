"""Learning-rate schedules: plain functions of the step, and ``LRScheduler`` to apply one to an optimizer.

The one way to use them: the trainer calls ``scheduler.apply(step)`` before each optimizer step, with the number of
optimizer steps already taken (0 for the first). The schedule is a pure function of that number, so a resumed run
needs no scheduler state: it calls ``apply`` with the step it resumed at.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Callable

__all__ = ["constant_lr", "warmup_cosine", "make_schedule", "LRScheduler"]


def constant_lr(step: int, lr: float) -> float:
    """``lr`` at every step."""
    return lr


def warmup_cosine(step: int, max_lr: float, warmup_steps: int, max_steps: int, min_lr: float = 0.0) -> float:
    """Linear warmup then cosine decay to ``min_lr`` (nanoGPT's get_lr).

    - step < warmup_steps: ``max_lr * (step + 1) / warmup_steps`` (step 0 already learns; step warmup_steps-1 and
      step warmup_steps are both at max_lr)
    - warmup_steps <= step <= max_steps: ``min_lr + (max_lr - min_lr) * (1 + cos(pi * t)) / 2`` with
      ``t = (step - warmup_steps) / (max_steps - warmup_steps)``
    - step > max_steps: ``min_lr``
    """
    if warmup_steps < 0 or max_steps < warmup_steps:
        raise ValueError(f"warmup_cosine: need 0 <= warmup_steps <= max_steps, got {warmup_steps} and {max_steps}")
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= max_steps:
        return min_lr
    t = (step - warmup_steps) / (max_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * t)) * (max_lr - min_lr)


def make_schedule(name: str, lr: float, warmup_steps: int = 0, max_steps: int = 0,
                  min_lr: float | None = None) -> Callable[[int], float]:
    """A schedule ``step -> lr`` by name, for configs and the command line: ``"constant"`` or ``"cosine"``
    (warmup_cosine with ``min_lr`` defaulting to ``lr / 10``, as nanoGPT/Chinchilla do)."""
    if name == "constant":
        return partial(constant_lr, lr=lr)
    if name in ("cosine", "warmup_cosine"):
        return partial(warmup_cosine, max_lr=lr, warmup_steps=warmup_steps, max_steps=max_steps,
                       min_lr=lr / 10 if min_lr is None else min_lr)
    raise ValueError(f"unknown lr schedule {name!r}: expected 'constant' or 'cosine'")


class LRScheduler:
    """Sets an optimizer's learning rate from a schedule: ``apply(step)`` sets every group's lr to
    ``schedule(step) * group.get("lr_scale", 1.0)`` and returns ``schedule(step)``."""

    def __init__(self, optimizer, schedule: Callable[[int], float]):
        self.optimizer = optimizer
        self.schedule = schedule

    def apply(self, step: int) -> float:
        lr = float(self.schedule(step))
        self.optimizer.set_lr(lr)
        return lr
