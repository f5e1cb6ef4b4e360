"""Adam (L2 weight decay) and AdamW (decoupled weight decay), with PyTorch's semantics.

The arithmetic of one update is ``adamw_update`` below, written once. On the GPU the same step can run as one
multi-tensor CUDA kernel for all parameters (``autograd/cuda/adamw.py``, ``fused=True``, or automatically when the
kernel is available); a replaced ``update_fn`` (same signature, per parameter) or a subclass overriding ``step``
still sees per-parameter state in ``self.state[i]``, i in ``self.params`` order.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np

from autograd import amp
from autograd.backend import device_scope, xp_of
from autograd.cuda import kernel_for
from autograd.dtypes import bfloat16, is_bfloat16

from .optimizer import Optimizer, _param_label, grad_array

__all__ = ["Adam", "AdamW", "adamw_update", "param_groups_for_weight_decay"]


def adamw_update(p, g, m, v, *, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
                 step: int) -> None:
    """One AdamW step on arrays, all in place (p, m, v; g is read only). ``step`` counts from 1::

        p *= 1 - lr * weight_decay                     # decoupled decay (0 for Adam)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        p -= lr / (1 - beta1**step) * m / (sqrt(v) / sqrt(1 - beta2**step) + eps)
    """
    xp = xp_of(p)
    if p.dtype.itemsize < 4 or m.dtype.itemsize < 4:
        # 16-bit parameter or moments (bfloat16 keeps bfloat16 moments, as PyTorch): the same arithmetic in float32
        # on copies, each value rounded once on the way back (as the CUDA kernel does)
        p32, m32, v32 = (a if a.dtype == np.float32 else a.astype(np.float32) for a in (p, m, v))
        adamw_update(p32, g, m32, v32, lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                     step=step)
        for a, a32 in ((p, p32), (m, m32), (v, v32)):
            if a32 is not a:
                a[...] = a32
        return
    if g.dtype != m.dtype:                       # e.g. fp16 gradients with fp32 moments: square in fp32
        g = g.astype(m.dtype)
    if weight_decay != 0.0:
        p *= 1.0 - lr * weight_decay
    # one scratch array instead of a temporary per operation (the token embedding alone is 38M floats in GPT-2)
    tmp = xp.empty_like(m)                       # (also keeps 0-d parameters as arrays, not NumPy scalars)
    xp.multiply(g, 1.0 - beta1, out=tmp)
    m *= beta1
    m += tmp
    xp.multiply(g, g, out=tmp)
    tmp *= 1.0 - beta2
    v *= beta2
    v += tmp
    bias1 = 1.0 - beta1 ** step
    bias2 = 1.0 - beta2 ** step
    xp.sqrt(v, out=tmp)                          # denom = sqrt(v) / sqrt(bias2) + eps
    tmp /= math.sqrt(bias2)
    tmp += eps
    xp.divide(m, tmp, out=tmp)
    tmp *= lr / bias1
    p -= tmp


def _kernel_shadow(s) -> bool:
    """Whether the AdamW kernel stores this shadow itself (float16 or bfloat16, C-contiguous)."""
    return (s.dtype == np.float16 or (bfloat16 is not None and s.dtype == bfloat16)) and s.flags.c_contiguous


class Adam(Optimizer):
    """Adam with bias correction and L2 weight decay added to the gradient (``g += weight_decay * p``), exactly as
    torch.optim.Adam. State per parameter: ``step`` (int), ``exp_avg``, ``exp_avg_sq``."""

    decoupled = False
    update_fn = staticmethod(adamw_update)

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, fused: bool | None = None):
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"{type(self).__name__}: betas must be in [0, 1), got {betas}")
        if eps <= 0:
            raise ValueError(f"{type(self).__name__}: eps must be > 0, got {eps}")
        if fused not in (None, True, False):
            raise TypeError(f"{type(self).__name__}: fused must be None, True or False, got {fused!r}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        #: None: the multi-tensor CUDA kernel for GPU parameters when it is available; True: required (a clear error
        #: for a parameter it cannot take); False: always the per-parameter ``update_fn``
        self.fused = fused

    def _kernel_takes(self, group, p, state) -> bool:
        """Whether parameter ``p`` (its moments in ``state``) goes to the multi-tensor kernel this step."""
        if self.fused is False or self.update_fn is not adamw_update:
            return False
        ok = (kernel_for("adamw_step", p) is not None and (self.decoupled or group["weight_decay"] == 0.0)
              and (p.dtype.itemsize >= 4 or is_bfloat16(p.dtype)) and p.flags.c_contiguous
              and all(state[k].dtype == p.dtype and state[k].flags.c_contiguous for k in ("exp_avg", "exp_avg_sq")))
        if not ok and self.fused:
            where = "the CPU" if type(p) is np.ndarray else "the GPU"
            raise RuntimeError(f"{type(self).__name__}(fused=True): the multi-tensor CUDA kernel cannot take a "
                               f"{p.dtype} parameter of shape {tuple(p.shape)} on {where} (it needs CuPy and a GPU, "
                               "a float32/float64/bfloat16 C-contiguous parameter with moments of its dtype, and "
                               "decoupled or no weight decay)")
        return ok

    def step(self) -> None:
        """One update of every parameter with a gradient: GPU parameters the kernel takes (see ``fused``) in one
        launch per (group, step count, dtype, GPU), their float16/bfloat16 shadows written in the same pass; every
        other one through ``update_fn``, then its shadows cast once. Same arithmetic and the same state layout
        either way."""
        if type(self)._update is not Adam._update:
            return super().step()
        batches: dict[tuple, tuple[list, list, list, list, list]] = {}
        late = []                      # parameters whose shadows the kernel cannot write: cast after the launch
        i = 0
        for gi, group in enumerate(self.param_groups):
            for p in group["params"]:
                g = grad_array(p)
                if g is not None and getattr(p, "requires_grad", True):
                    pd = p.data
                    if g.shape != pd.shape:
                        raise ValueError(f"{type(self).__name__}: gradient of shape {tuple(g.shape)} for "
                                         f"{_param_label(p, i)}")
                    state = self.state.setdefault(i, {})
                    if "exp_avg" not in state:
                        self._init_state(pd, state)
                    state["step"] += 1
                    if self._kernel_takes(group, pd, state):
                        sh = amp.shadows_for_update(p)
                        if sh and not (pd.dtype == np.float32 and all(_kernel_shadow(s) for s in sh)):
                            late.append(p)
                            sh = []
                        b = batches.setdefault((gi, state["step"]), ([], [], [], [], []))
                        for lst, a in zip(b, (pd, g, state["exp_avg"], state["exp_avg_sq"], sh)):
                            lst.append(a)
                    else:
                        with device_scope(pd):
                            self._apply(pd, g, state, group)
                        amp.refresh_shadows(p)
                i += 1
        for (gi, t), (ps, gs, ms, vs, shs) in batches.items():
            group = self.param_groups[gi]
            beta1, beta2 = group["betas"]
            wd = group["weight_decay"] if self.decoupled else 0.0
            kernel_for("adamw_step", ps[0])(ps, gs, ms, vs, float(group["lr"]), float(beta1), float(beta2),
                                            float(group["eps"]), float(wd), int(t), shadows=shs)
        for p in late:
            amp.refresh_shadows(p)
        self.step_count += 1

    step.writes_shadows = True

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
                 weight_decay: float = 0.01, fused: bool | None = None):
        if hasattr(params, "named_parameters") and callable(params.named_parameters):
            params = param_groups_for_weight_decay(params.named_parameters(), weight_decay)
        else:
            items = list(params)
            if items and isinstance(items[0], tuple) and len(items[0]) == 2 and isinstance(items[0][0], str):
                items = param_groups_for_weight_decay(items, weight_decay)
            params = items
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=fused)


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
