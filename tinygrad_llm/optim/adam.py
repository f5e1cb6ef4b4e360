"""Adam (L2 weight decay) and AdamW (decoupled weight decay), with PyTorch's semantics.

The whole per-parameter update is one function, ``_adamw_update``, so a fused (multi-tensor) GPU kernel can replace
it: ``AdamW.update_fn = staticmethod(fused_fn)`` (same signature, per parameter) or a subclass overriding
``step`` (all parameters at once; per-parameter state is ``self.state[i]``, i in ``self.params`` order).
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from autograd.backend import xp_of
from autograd.ops import nn_kernels as _K

from autograd.backend import device_scope

from .optimizer import Optimizer, _param_label, grad_array

__all__ = ["Adam", "AdamW", "param_groups_for_weight_decay"]


# the per-parameter update lives beside the multi-tensor one in the engine's kernels (one copy of the arithmetic)
_adamw_update = _K.adamw_update


class Adam(Optimizer):
    """Adam with bias correction and L2 weight decay added to the gradient (``g += weight_decay * p``), exactly as
    torch.optim.Adam. State per parameter: ``step`` (int), ``exp_avg``, ``exp_avg_sq``."""

    decoupled = False
    update_fn = staticmethod(_adamw_update)

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"{type(self).__name__}: betas must be in [0, 1), got {betas}")
        if eps <= 0:
            raise ValueError(f"{type(self).__name__}: eps must be > 0, got {eps}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    def step(self) -> None:
        """One update of every parameter with a gradient. On CuPy, AdamW-rule updates (decoupled decay, or no decay)
        go to the multi-tensor kernel ``nn_kernels.adamw_step``: one launch per (group, step count, dtype, GPU)
        instead of a dozen CuPy launches per parameter. Everything else (NumPy, a replaced ``update_fn``, L2 decay,
        float16 parameters) takes the per-parameter path. Same arithmetic and the same state layout either way."""
        if self.update_fn is not _adamw_update:
            return super().step()
        batches: dict[tuple, tuple[list, list, list, list]] = {}
        i = 0
        for gi, group in enumerate(self.param_groups):
            fused_group = self.decoupled or group["weight_decay"] == 0.0
            for p in group["params"]:
                g = grad_array(p)
                if g is not None and getattr(p, "requires_grad", True):
                    pd = p.data
                    if g.shape != pd.shape:
                        raise ValueError(f"{type(self).__name__}: gradient of shape {tuple(g.shape)} for "
                                         f"{_param_label(p, i)}")
                    state = self.state.setdefault(i, {})
                    if fused_group and type(pd) is not np.ndarray and pd.dtype.itemsize >= 4:
                        if "exp_avg" not in state:
                            self._init_state(pd, state)
                        state["step"] += 1
                        m, v = state["exp_avg"], state["exp_avg_sq"]
                        if m.dtype == pd.dtype and v.dtype == pd.dtype:
                            b = batches.setdefault((gi, state["step"]), ([], [], [], []))
                            b[0].append(pd); b[1].append(g); b[2].append(m); b[3].append(v)
                        else:                                     # e.g. moments loaded in another dtype
                            with device_scope(pd):
                                self._apply(pd, g, state, group)
                    else:
                        with device_scope(pd):
                            self._update(pd, g, state, group)
                i += 1
        for (gi, t), (ps, gs, ms, vs) in batches.items():
            group = self.param_groups[gi]
            beta1, beta2 = group["betas"]
            wd = group["weight_decay"] if self.decoupled else 0.0
            _K.adamw_step(ps, gs, ms, vs, float(group["lr"]), float(beta1), float(beta2), float(group["eps"]),
                          float(wd), int(t))
        self.step_count += 1

    def _init_state(self, p, state: dict[str, Any]) -> None:
        xp, dt = xp_of(p), self._state_dtype(p)
        state["step"] = 0
        state["exp_avg"] = xp.zeros(p.shape, dtype=dt)
        state["exp_avg_sq"] = xp.zeros(p.shape, dtype=dt)

    def _apply(self, p, g, state: dict[str, Any], group: dict[str, Any]) -> None:
        """The update of one parameter whose state["step"] is already counted."""
        wd = group["weight_decay"]
        if wd != 0.0 and not self.decoupled:
            g = g + wd * p                      # L2: new array, the gradient itself is left alone
            wd = 0.0
        beta1, beta2 = group["betas"]
        self.update_fn(p, g, state["exp_avg"], state["exp_avg_sq"], lr=group["lr"], beta1=beta1,
                        beta2=beta2, eps=group["eps"], weight_decay=wd, step=state["step"])

    def _update(self, p, g, state: dict[str, Any], group: dict[str, Any]) -> None:
        if "exp_avg" not in state:
            self._init_state(p, state)
        state["step"] += 1
        self._apply(p, g, state, group)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): ``p -= lr * weight_decay * p`` before the Adam step.

    params: a list of parameters or of group dicts as for any optimizer; or a module (``named_parameters()``) or
    (name, param) pairs, which are split by ``param_groups_for_weight_decay``: >= 2-D weights decay, biases, norm
    gains and other < 2-D parameters do not (nanoGPT's rule).
    """

    decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01):
        if hasattr(params, "named_parameters") and callable(params.named_parameters):
            params = param_groups_for_weight_decay(params.named_parameters(), weight_decay)
        else:
            items = list(params)
            if items and isinstance(items[0], tuple) and len(items[0]) == 2 and isinstance(items[0][0], str):
                items = param_groups_for_weight_decay(items, weight_decay)
            params = items
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def param_groups_for_weight_decay(named_params: Iterable[tuple[str, Any]], weight_decay: float) -> list[dict]:
    """Two groups: ``{"params": >=2-D, "weight_decay": wd}`` and ``{"params": <2-D, "weight_decay": 0.0}``.

    Matrices (Linear weights, embeddings) decay; biases and LayerNorm/RMSNorm gains (1-D) do not. Parameters with
    ``requires_grad=False`` (frozen, e.g. under LoRA) are left out; empty groups are dropped. Each group also gets
    ``"name"`` ("decay" / "no_decay") for logs.
    """
    decay, no_decay = [], []
    for _, p in named_params:
        if not getattr(p, "requires_grad", True):
            continue
        (decay if p.data.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
              {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]
    return [g for g in groups if g["params"]]
