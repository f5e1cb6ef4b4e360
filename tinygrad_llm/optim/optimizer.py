"""Optimizer base: parameter groups, zero_grad, step, state_dict / load_state_dict.

A parameter is any object with ``.data`` (a NumPy or CuPy ndarray, updated IN PLACE so that references held by
the model, hooks or communicators stay valid), ``.grad`` (an autograd Tensor, a bare ndarray, or None: skipped)
and ``.requires_grad``; ``.name`` is used in error messages when present. Update code asks
``autograd.backend.xp_of(p.data)`` for its array module, so the same optimizer runs on NumPy and CuPy.
``step`` (marked ``writes_shadows``) also rewrites the parameters' low-precision shadows from their new values
(``autograd.amp``: what ``F.linear`` reads under autocast); a subclass that replaces ``step`` keeps none.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from autograd import amp, backend, dtypes

__all__ = ["Optimizer", "grad_array", "split_state_dict", "merge_state_dict"]


def grad_array(p):
    """The gradient of ``p`` as an ndarray (``p.grad.data`` for a Tensor), or None."""
    g = p.grad
    if g is None:
        return None
    if isinstance(g, np.ndarray) or backend.is_cupy_array(g):
        return g
    return g.data


def _param_label(p, index: int) -> str:
    name = getattr(p, "name", None)
    return f"parameter {index}" + (f" ({name})" if name else "") + f" of shape {tuple(p.data.shape)}"


def _as_param_list(params) -> list:
    """Accept a module (``.parameters()``), (name, param) pairs, params, or param-group dicts."""
    if hasattr(params, "named_parameters") and callable(params.named_parameters):
        return [p for _, p in params.named_parameters()]
    if hasattr(params, "parameters") and callable(params.parameters):
        return list(params.parameters())
    items = list(params)
    if items and isinstance(items[0], tuple) and len(items[0]) == 2 and isinstance(items[0][0], str):
        return [p for _, p in items]
    return items


class Optimizer:
    """Base class. Subclasses set ``defaults`` and implement ``_update(p, g, state, group)`` for one parameter.

    ``param_groups``: a list of dicts ``{"params": [...], <hyperparameter>: value, ...}``; keys missing from a group
    come from ``defaults``. Change a group's learning rate with ``group["lr"] = ...`` (or ``set_lr`` for all).
    ``state[i]``: the per-parameter state (dict of arrays and scalars) of the i-th parameter in group order.

    ``state_dict()`` layout (arrays are NumPy, everything else JSON-able; ``split_state_dict`` separates the two so
    a trainer can write the arrays with safetensors and the rest as JSON)::

        {"step": int,                                    # number of step() calls
         "groups": [{"lr": .., "betas": [..], ..., "params": [0, 1, 2]}, ...],   # hyperparameters + param indices
         "state": {0: {"step": 3, "exp_avg": ndarray, "exp_avg_sq": ndarray}, ...}}   # by param index
    """

    def __init__(self, params, defaults: dict[str, Any]):
        self.defaults = dict(defaults)
        items = _as_param_list(params)
        if not items:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        groups = items if isinstance(items[0], dict) else [{"params": items}]
        self.param_groups: list[dict[str, Any]] = []
        self.state: dict[int, dict[str, Any]] = {}
        self.step_count = 0
        seen: set[int] = set()
        for g in groups:
            self.add_param_group(g, _seen=seen)

    def add_param_group(self, group: dict[str, Any], _seen: set[int] | None = None) -> None:
        """Add a group ``{"params": [...], **overrides}``; a parameter may belong to only one group."""
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError(f"{type(self).__name__}: a parameter group must be a dict with a 'params' list")
        group = dict(group)
        group["params"] = _as_param_list(group["params"])
        seen = _seen if _seen is not None else {id(p) for p in self.params}
        for p in group["params"]:
            if not hasattr(p, "data") or not hasattr(p.data, "shape"):
                raise TypeError(f"{type(self).__name__}: parameters must have an ndarray .data, got {type(p).__name__}")
            if id(p) in seen:
                raise ValueError(f"{type(self).__name__}: a parameter appears twice ({_param_label(p, len(seen))}); "
                                 "tied weights must be passed once")
            seen.add(id(p))
        for k, v in self.defaults.items():
            group.setdefault(k, v)
        unknown = set(group) - set(self.defaults) - {"params", "lr_scale", "name"}
        if unknown:
            raise ValueError(f"{type(self).__name__}: unknown hyperparameters {sorted(unknown)} in a parameter group")
        self._check_hyper(group)
        self.param_groups.append(group)
        if getattr(type(self).step, "writes_shadows", False):   # a step that keeps the shadows fresh (autograd.amp)
            amp.track_shadows(group["params"])

    def _check_hyper(self, group: dict[str, Any]) -> None:
        if group["lr"] < 0:
            raise ValueError(f"{type(self).__name__}: lr must be >= 0, got {group['lr']}")
        if group.get("weight_decay", 0.0) < 0:
            raise ValueError(f"{type(self).__name__}: weight_decay must be >= 0, got {group['weight_decay']}")

    @property
    def params(self) -> list:
        """All parameters, in group order (the index used by ``state`` and ``state_dict``)."""
        return [p for g in self.param_groups for p in g["params"]]

    # ------------------------------------------------------------------ learning rate
    @property
    def lr(self) -> float:
        """The first group's learning rate."""
        return self.param_groups[0]["lr"]

    def set_lr(self, lr: float) -> None:
        """Set every group's lr to ``lr * group.get("lr_scale", 1.0)``."""
        for g in self.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)

    # ------------------------------------------------------------------ stepping
    def zero_grad(self) -> None:
        """Drop every gradient (``p.grad = None``): the next backward writes fresh ones, no memset needed."""
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        """Apply one update to every parameter that has a gradient (parameters with ``grad is None`` are skipped)."""
        i = 0
        for group in self.param_groups:
            for p in group["params"]:
                g = grad_array(p)
                if g is not None and getattr(p, "requires_grad", True):
                    if g.shape != p.data.shape:
                        raise ValueError(f"{type(self).__name__}: gradient of shape {tuple(g.shape)} for "
                                         f"{_param_label(p, i)}")
                    with backend.device_scope(p.data):
                        self._update(p.data, g, self.state.setdefault(i, {}), group)
                    amp.refresh_shadows(p)     # the low-precision copies of the new value: one cast each
                i += 1
        self.step_count += 1

    step.writes_shadows = True

    def _update(self, p, g, state: dict[str, Any], group: dict[str, Any]) -> None:
        raise NotImplementedError

    @staticmethod
    def _state_dtype(p):
        """Optimizer state is kept in the parameter's dtype, but float32 for float16 (its moments underflow);
        bfloat16 has float32's range and keeps bfloat16 state, as PyTorch's optimizers do."""
        return p.dtype if p.dtype.itemsize >= 4 or dtypes.is_bfloat16(p.dtype) else np.float32

    # ------------------------------------------------------------------ save / restore
    def state_dict(self) -> dict[str, Any]:
        """A copy of the optimizer state: NumPy arrays + JSON-able scalars (layout in the class docstring)."""
        groups, start = [], 0
        for g in self.param_groups:
            h = {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items() if k != "params"}
            h["params"] = list(range(start, start + len(g["params"])))
            start += len(g["params"])
            groups.append(h)
        state = {i: {k: (backend.to_numpy(v).copy() if hasattr(v, "shape") else v) for k, v in s.items()}
                 for i, s in sorted(self.state.items())}
        return {"step": self.step_count, "groups": groups, "state": state}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Restore ``state_dict()`` output; arrays are copied to each parameter's device.

        The parameters must be the same in number, grouping and shape (a clear ValueError otherwise); group
        hyperparameters (lr, betas, ...) are restored too.
        """
        name = type(self).__name__
        if len(sd["groups"]) != len(self.param_groups):
            raise ValueError(f"{name}.load_state_dict: saved state has {len(sd['groups'])} parameter groups, "
                             f"this optimizer has {len(self.param_groups)}")
        for gi, (saved, group) in enumerate(zip(sd["groups"], self.param_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"{name}.load_state_dict: group {gi} has {len(saved['params'])} parameters saved, "
                                 f"{len(group['params'])} here")
        params = self.params
        new_state: dict[int, dict[str, Any]] = {}
        for key, s in sd["state"].items():
            i = int(key)
            if not 0 <= i < len(params):
                raise ValueError(f"{name}.load_state_dict: state for parameter {i}, but there are {len(params)}")
            p, entry = params[i], {}
            for k, v in s.items():
                if isinstance(v, np.ndarray) or backend.is_cupy_array(v):
                    if tuple(v.shape) != tuple(p.data.shape):
                        raise ValueError(f"{name}.load_state_dict: state '{k}' has shape {tuple(v.shape)} for "
                                         f"{_param_label(p, i)}")
                    # a copy on the parameter's device: the caller's dict must not alias live optimizer state
                    v = backend.to_device(v, backend.device_of(p.data)).copy()
                elif isinstance(v, np.generic):
                    v = v.item()
                entry[k] = v
            new_state[i] = entry
        for saved, group in zip(sd["groups"], self.param_groups):
            for k, v in saved.items():
                if k != "params":
                    group[k] = tuple(v) if isinstance(group.get(k), tuple) else v
        self.state = new_state
        self.step_count = int(sd.get("step", 0))


def split_state_dict(sd: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Split ``Optimizer.state_dict()`` into ``(arrays, meta)``: arrays keyed ``"state.<i>.<name>"`` (for
    safetensors) and a JSON-able ``meta`` (step, groups, per-parameter scalars)."""
    arrays: dict[str, np.ndarray] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for i, s in sd["state"].items():
        for k, v in s.items():
            if isinstance(v, np.ndarray):
                arrays[f"state.{int(i)}.{k}"] = v if v.flags.c_contiguous else v.copy()  # keeps 0-d shapes
            else:
                scalars.setdefault(str(int(i)), {})[k] = v
        scalars.setdefault(str(int(i)), {})
    return arrays, {"step": sd["step"], "groups": sd["groups"], "scalars": scalars}


def merge_state_dict(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> dict[str, Any]:
    """Inverse of ``split_state_dict``."""
    state: dict[int, dict[str, Any]] = {int(i): dict(s) for i, s in meta["scalars"].items()}
    for key, v in arrays.items():
        _, i, k = key.split(".", 2)
        state.setdefault(int(i), {})[k] = v
    return {"step": meta["step"], "groups": meta["groups"], "state": state}
