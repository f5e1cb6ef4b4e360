"""Numerical gradient checks: backward against float64 central differences.

``gradcheck(fn, inputs)`` projects the output(s) of ``fn`` on a fixed random direction r (so any output shape
works: L = sum(out * r)), takes the analytic gradient of L by backward, and compares it, element by element, with
(L(x + eps) - L(x - eps)) / (2 eps). Inputs larger than ``max_elements`` are checked along random directions
instead of element by element. ``gradgradcheck`` does the same for the gradient itself (second order).
A failure raises ``GradcheckError`` naming the input, the worst element, and both values.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from . import backend, dtypes
from .backward import grad as _grad
from .grad_mode import enable_grad, no_grad
from .tensor import Tensor


class GradcheckError(AssertionError):
    """The analytic gradient disagrees with central differences (or a value was not finite)."""


def _prepare_inputs(inputs) -> list[Tensor]:
    """float64 leaf copies of the inputs; float inputs require grad unless given as Tensors that do not."""
    out = []
    for x in inputs:
        if isinstance(x, Tensor):
            data, wants = x.data, x.requires_grad
        else:
            data = x if hasattr(x, "dtype") else np.asarray(x, dtype=np.float64)
            wants = dtypes.is_float(data.dtype)
        if dtypes.is_float(data.dtype):
            data = data.astype(np.float64, copy=True)
            out.append(Tensor(data, requires_grad=wants))
        else:
            out.append(Tensor(data))
    return out


def _outputs(fn, tensors) -> list[Tensor]:
    out = fn(*tensors)
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    for i, o in enumerate(outs):
        if not isinstance(o, Tensor):
            raise TypeError(f"gradcheck: fn must return Tensors, output {i} is {type(o).__name__}")
    return outs


def _projection(outs, seed) -> list:
    rng = np.random.default_rng(seed)
    return [backend.to_device(rng.standard_normal(o.shape), o.device) for o in outs]


def _scalar(outs, weights) -> float:
    total = 0.0
    for o, w in zip(outs, weights):
        value = float((backend.to_numpy(o.data).astype(np.float64) * backend.to_numpy(w)).sum())
        total += value
    return total


def _check_finite(outs, what):
    for i, o in enumerate(outs):
        if dtypes.is_float(o.data.dtype) and not bool(backend.xp_of(o.data).isfinite(o.data).all()):
            raise GradcheckError(f"gradcheck: output {i} of fn is not finite at {what}; "
                                 "choose inputs where the function is defined (and away from kinks)")


def numerical_grad(fn: Callable, inputs: Sequence[Tensor], weights, eps: float, index: int, direction=None):
    """Central-difference gradient of L = sum(fn(*inputs) * weights) w.r.t. ``inputs[index]``.

    With ``direction`` given, returns the directional derivative along it (a float) instead of every element.
    """
    x = inputs[index]
    flat = x.data.reshape(-1)  # a view: the inputs are our own contiguous copies

    def value():
        with no_grad():
            outs = _outputs(fn, inputs)
        _check_finite(outs, f"a perturbed point of input {index}")
        return _scalar(outs, weights)

    if direction is not None:
        original = x.data.copy()
        x.data[...] = original + eps * direction
        plus = value()
        x.data[...] = original - eps * direction
        minus = value()
        x.data[...] = original
        return (plus - minus) / (2 * eps)

    g = np.zeros(x.size, dtype=np.float64)
    for i in range(x.size):
        old = flat[i].item()
        flat[i] = old + eps
        plus = value()
        flat[i] = old - eps
        minus = value()
        flat[i] = old
        g[i] = (plus - minus) / (2 * eps)
    return g.reshape(x.shape)


def gradcheck(fn: Callable, inputs: Sequence, eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-3,
              max_elements: int = 4096, n_directions: int = 6, seed: int = 0) -> bool:
    """Check ``fn``'s backward against float64 central differences for every float input that requires grad.

    ``fn(*tensors)`` returns a Tensor or a tuple of Tensors. Inputs are copied to float64. Returns True, or raises
    ``GradcheckError`` naming the input, the worst element's index and the analytic and numeric values.
    """
    tensors = _prepare_inputs(inputs)
    checked = [i for i, t in enumerate(tensors) if t.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input requires grad (pass float arrays or Tensors with requires_grad=True)")
    outs = _outputs(fn, tensors)
    _check_finite(outs, "the given inputs")
    weights = _projection(outs, seed)
    loss = None
    for o, w in zip(outs, weights):
        if o.requires_grad:
            term = (o.astype(np.float64) * Tensor(w)).sum()
            loss = term if loss is None else loss + term
    if loss is None:  # no output depends on a checked input: the analytic gradient is zero everywhere
        analytic = [None] * len(checked)
    else:
        analytic = _grad(loss, [tensors[i] for i in checked], allow_unused=True)

    rng = np.random.default_rng(seed + 1)
    for i, g in zip(checked, analytic):
        x = tensors[i]
        a = np.zeros(x.shape) if g is None else backend.to_numpy(g.data).astype(np.float64)
        if not np.all(np.isfinite(a)):
            bad = tuple(int(j) for j in np.argwhere(~np.isfinite(a))[0])
            raise GradcheckError(f"gradcheck: the analytic gradient of input {i} (shape {x.shape}) is not finite "
                                 f"at index {bad}: {a[bad]}")
        if x.size <= max_elements:
            n = numerical_grad(fn, tensors, weights, eps, i)
            err = np.abs(a - n) - (atol + rtol * np.abs(n))
            if err.size and err.max() > 0:
                worst = np.unravel_index(int(np.argmax(err)), err.shape)
                raise GradcheckError(
                    f"gradcheck failed for input {i} (shape {x.shape}): at index {tuple(int(j) for j in worst)} "
                    f"analytic {a[worst]:.8g} vs numeric {n[worst]:.8g} (|diff| {abs(a[worst] - n[worst]):.3g}, "
                    f"allowed {atol + rtol * abs(n[worst]):.3g})")
        else:
            for d_i in range(n_directions):
                d = rng.standard_normal(x.shape)
                d_dev = backend.to_device(d, x.device)
                n = numerical_grad(fn, tensors, weights, eps, i, direction=d_dev)
                an = float((a * d).sum())
                if abs(an - n) > atol * np.sqrt(x.size) + rtol * abs(n):
                    raise GradcheckError(
                        f"gradcheck failed for input {i} (shape {x.shape}) along random direction {d_i}: "
                        f"analytic {an:.8g} vs numeric {n:.8g}")
    return True


def gradgradcheck(fn: Callable, inputs: Sequence, eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-3,
                  seed: int = 0) -> bool:
    """Check second derivatives: gradcheck of ``x -> d(sum(fn(x) * r))/dx`` built with ``create_graph=True``."""
    tensors = _prepare_inputs(inputs)
    checked = [i for i, t in enumerate(tensors) if t.requires_grad]
    outs = _outputs(fn, tensors)
    weights = _projection(outs, seed)

    def first_grads(*xs):
        with enable_grad():  # gradcheck evaluates this under no_grad; the first derivative still needs a graph
            return _first_grads(xs)

    def _first_grads(xs):
        outs = _outputs(fn, xs)
        loss = None
        for o, w in zip(outs, weights):
            term = (o * Tensor(w)).sum()
            loss = term if loss is None else loss + term
        grads = _grad(loss, [xs[i] for i in checked], create_graph=True, allow_unused=True)
        return tuple(g if g is not None else Tensor(backend.xp_of(xs[i].data).zeros(xs[i].shape))
                     for g, i in zip(grads, checked))

    return gradcheck(first_grads, tensors, eps=eps, atol=atol, rtol=rtol, seed=seed + 7)
