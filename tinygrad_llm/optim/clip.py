"""Global-norm gradient clipping, and the rule for gradient accumulation.

Gradient accumulation (the trainer does it): to train with an effective batch of k micro-batches,
run ``(loss_i / k).backward()`` for each micro-batch i without zeroing gradients in between; leaves accumulate
(sum) into ``.grad``, so the result equals the gradient of the mean loss over the big batch (when the loss is a
mean over equally sized micro-batches). Then clip, step and ``zero_grad()`` once. tests/test_optim.py checks it.
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np

from autograd import backend

from autograd.backend import device_scope

from .optimizer import grad_array

__all__ = ["clip_grad_norm", "grad_norm"]

_CHUNK = 1 << 18   # elements per float64 partial sum on the CPU (2 MB: stays in cache)


def grad_norm(params: Iterable) -> float:
    """The global L2 norm of all gradients (parameters with ``grad is None`` are skipped), accumulated in float64.

    On CuPy the per-parameter sums stay on the GPU and are summed there: one host sync per device, not per tensor.
    """
    per_device: dict[str, list] = {}
    for p in params:
        g = grad_array(p)
        if g is None:
            continue
        xp = backend.xp_of(g)
        flat = g.reshape(-1)
        # float64 in cache-sized chunks: exact enough, without a float64 copy of the largest gradient
        step = _CHUNK if xp is np else _CHUNK * 16
        sums = per_device.setdefault(backend.device_of(g), [])
        with device_scope(g):
            for i in range(0, flat.size, step):
                c = flat[i:i + step].astype(xp.float64)
                sums.append(xp.dot(c, c))
    total = 0.0
    for sums in per_device.values():
        if not sums:                             # only zero-size gradients on this device
            continue
        xp = backend.xp_of(sums[0])
        with device_scope(sums[0]):
            total += float(xp.sum(xp.stack(sums)))
    return math.sqrt(total)


def clip_grad_norm(params: Iterable, max_norm: float, norm: float | None = None) -> float:
    """Scale all gradients in place so their global L2 norm is at most ``max_norm``; returns the norm BEFORE clipping.

    Scaling factor ``max_norm / (norm + 1e-6)`` is applied only when it is < 1 (PyTorch's clip_grad_norm_). A
    non-finite norm (inf/nan gradients) is returned unchanged and nothing is scaled: the caller should skip the step.
    ``norm``: the global norm when these gradients are one shard of it (ZeRO-1 measures it over every rank).
    """
    params = list(params)
    if max_norm <= 0:
        raise ValueError(f"clip_grad_norm: max_norm must be > 0, got {max_norm}")
    total = grad_norm(params) if norm is None else norm
    if not math.isfinite(total):
        return total
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:
        for p in params:
            g = grad_array(p)
            if g is not None:
                with device_scope(g):
                    g *= coef                   # in place: the Tensor in p.grad keeps the same array
    return total
