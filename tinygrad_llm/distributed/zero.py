"""ZeRO stage 1: the optimizer's state sharded over data-parallel ranks.

Plain data parallelism keeps a full copy of AdamW's two moments on every rank: 8 bytes per float32 parameter, twice
the model itself. ZeRO-1 (Rajbhandari et al., 2020) gives each rank the state of 1/world_size of the parameters:

    dp = DataParallel(model, comm, shard_optimizer=True)
    opt = ShardedOptimizer(AdamW(model, lr=3e-4), dp)
    loss.backward(); dp.finish()      # gradients reduce-scattered: each rank holds the average of its shard only
    opt.clip_grad_norm(1.0)           # the global norm from every rank's shard (one scalar all-reduce)
    opt.step()                        # each rank updates its shard, then the parameters are all-gathered
    opt.zero_grad()

Shards follow DataParallel's buckets: a bucket's flat buffer of n elements is cut into world_size equal chunks
(padded), and rank r owns chunk r of every bucket. A parameter may straddle two ranks; each updates its own slice
(AdamW is elementwise, so the slices' updates are the whole update). The wrapped optimizer's arithmetic is used
unchanged, on "segment" parameters whose ``.data`` are views into the real parameters.

The same communication as an all-reduce (a reduce-scatter and an all-gather move the same bytes), a rank's
optimizer state divided by world_size, and the same result as unsharded training up to the order of the float
sums in the reduction. ``state_dict()`` gathers the full state in the wrapped optimizer's own layout (every rank
must call it), so a checkpoint resumes on any number of ranks, sharded or not.
"""
from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np

from autograd import Tensor, backend

from ..optim.clip import clip_grad_norm, grad_norm
from .data_parallel import DataParallel

__all__ = ["ShardedOptimizer"]


class _Segment:
    """A slice of one parameter that this rank updates: ``data`` is a flat view into the parameter's array."""

    __slots__ = ("data", "grad", "requires_grad", "name", "index", "start")

    def __init__(self, data, name: str | None, index: int, start: int):
        self.data, self.grad, self.requires_grad = data, None, True
        self.name, self.index, self.start = name, index, start


class ShardedOptimizer:
    """Wrap an optimizer (AdamW, Adam, SGD ...) built over the model's parameters so that each rank of ``dp`` keeps
    and updates only its shard of the state (see the module docstring)."""

    def __init__(self, optimizer, dp: DataParallel):
        if not isinstance(dp, DataParallel):
            raise TypeError(f"ShardedOptimizer: dp must be a DataParallel, got {type(dp).__name__}")
        self.optimizer, self.dp, self.comm = optimizer, dp, dp.comm
        dp.shard_optimizer = True
        index = {id(p): i for i, p in enumerate(optimizer.params)}
        trainable = {id(p) for b in dp.buckets for p in b.params}
        missing = [i for p, i in index.items() if p not in trainable]
        if missing:
            raise ValueError(f"ShardedOptimizer: optimizer parameters {sorted(missing)} are not trainable parameters "
                             "of the DataParallel model")
        # per group, in the inner optimizer's order: inner.state[j] belongs to self.segments[j]
        group_of = {id(p): gi for gi, g in enumerate(optimizer.param_groups) for p in g["params"]}
        by_group: list[list[tuple[_Segment, Any, int, int]]] = [[] for _ in optimizer.param_groups]
        for b in dp.buckets:
            for slot, p, start, stop, pos in b.owned_slices(self.comm.rank, self.comm.world_size):
                if id(p) in index:
                    seg = _Segment(p.data.reshape(-1)[start:stop], getattr(p, "name", None), index[id(p)], start)
                    by_group[group_of[id(p)]].append((seg, b, pos, slot))   # bucket, offset in chunk, slot
        self.segments = [entry for entries in by_group for entry in entries]
        inner_groups = [[seg for seg, *_ in entries] for entries in by_group]
        # the same optimizer class and hyperparameters over this rank's segments (its arithmetic is untouched)
        inner = copy.copy(optimizer)
        inner.param_groups = [dict(g, params=segs) for g, segs in zip(optimizer.param_groups, inner_groups)]
        inner.state, inner.step_count = {}, 0
        self.inner = inner
        if optimizer.state:              # wrapped after a checkpoint was loaded into it: keep this rank's slices
            self.load_state_dict(optimizer.state_dict())

    # ------------------------------------------------------------------ the optimizer's face
    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    @property
    def params(self) -> list:
        return self.optimizer.params

    @property
    def lr(self) -> float:
        return self.optimizer.lr

    @property
    def step_count(self) -> int:
        return self.inner.step_count

    def set_lr(self, lr: float) -> None:
        self.optimizer.set_lr(lr)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad()
        for seg, *_ in self.segments:
            seg.grad = None

    # ------------------------------------------------------------------ gradients of this rank's shard
    def _attach_grads(self) -> None:
        """Point every segment's grad at its slice of the reduce-scattered chunk (None where no rank had one)."""
        for seg, b, pos, slot in self.segments:
            if b.shard_grad is None:
                raise RuntimeError("ShardedOptimizer: no reduced gradients: call dp.finish() after backward and "
                                   "before clipping or step()")
            seg.grad = Tensor(b.shard_grad[pos:pos + seg.data.size]) if b.param_flags[slot] else None

    def grad_norm(self) -> float:
        """The global L2 norm of the averaged gradients: each rank's shard norm, squared and summed by one
        all-reduce."""
        self._attach_grads()
        local = grad_norm([seg for seg, *_ in self.segments])
        return math.sqrt(self.comm.all_reduce_scalars([local * local], "sum")[0])

    def clip_grad_norm(self, max_norm: float | None) -> float:
        """``optim.clip_grad_norm`` over the shard with the global norm (None or 0: measure only); returns the norm
        before clipping."""
        total = self.grad_norm()
        if max_norm:
            clip_grad_norm([seg for seg, *_ in self.segments], max_norm, norm=total)
        return total

    def unscale_and_check(self, scaler) -> bool:
        """``scaler.unscale_and_check`` over this rank's shard, with every rank agreeing: False (skip the step, and
        the scaler backs off) when any rank's shard holds inf or NaN."""
        self._attach_grads()
        local = scaler.unscale_and_check([seg for seg, *_ in self.segments])
        finite = self.comm.all_reduce_scalars([0.0 if local else 1.0], "max")[0] == 0.0
        if not finite:
            scaler.skip_step()
        return finite

    # ------------------------------------------------------------------ the step
    def step(self) -> None:
        """Update this rank's shard with the wrapped optimizer's arithmetic, then all-gather the parameters."""
        self._attach_grads()
        for outer, inner in zip(self.optimizer.param_groups, self.inner.param_groups):
            for k, v in outer.items():
                if k != "params":
                    inner[k] = v
        self.inner.step()
        self.optimizer.step_count = self.inner.step_count
        for b in self.dp.buckets:
            b.gather_data(self.comm)

    # ------------------------------------------------------------------ state
    def state_bytes(self) -> tuple[int, int]:
        """(bytes of optimizer state on this rank, bytes over all ranks)."""
        local = sum(v.nbytes for s in self.inner.state.values() for v in s.values() if hasattr(v, "nbytes"))
        return local, int(self.comm.all_reduce_scalars([local], "sum")[0])

    def state_dict(self) -> dict[str, Any]:
        """The full state in the wrapped optimizer's layout (collective: every rank must call it; all get it)."""
        sd = self.optimizer.state_dict()          # groups and step; its own state is empty
        sd["step"] = self.inner.step_count
        params = self.optimizer.params
        arrays, scalars = self._state_layout()
        full = {i: {k: np.zeros(p.size, dtype=dt) for k, dt in arrays.items()} for i, p in enumerate(params)}
        # column 0: "this parameter has state"; then one column per scalar (value + 1, so 0 means absent)
        owned = np.zeros((len(params), 1 + len(scalars)))
        for j, (seg, *_) in enumerate(self.segments):
            entry = self.inner.state.get(j)
            if not entry:
                continue
            owned[seg.index, 0] = 1.0
            for c, key in enumerate(scalars, start=1):
                if key in entry:
                    owned[seg.index, c] = float(entry[key]) + 1.0
            for key in arrays:
                full[seg.index][key][seg.start:seg.start + seg.data.size] = backend.to_numpy(entry[key]).reshape(-1)
        self.comm.all_reduce(owned.reshape(-1), "max")
        state: dict[int, dict[str, Any]] = {}
        for i, p in enumerate(params):
            if owned[i, 0] == 0:
                continue
            entry = {}
            for c, key in enumerate(scalars, start=1):
                if owned[i, c] > 0:
                    v = owned[i, c] - 1.0
                    entry[key] = int(v) if v == int(v) else v
            for key, arr in full[i].items():          # each element lives on exactly one rank: sum = gather
                self.comm.all_reduce(arr, "sum")
                entry[key] = arr.reshape(p.shape)
            state[i] = entry
        sd["state"] = state
        return sd

    def _state_layout(self) -> tuple[dict[str, Any], list[str]]:
        """The inner state's array keys (with dtypes) and scalar keys, merged over ranks (a rank may own none)."""
        mine: dict[str, str] = {}
        for s in self.inner.state.values():
            for k, v in s.items():
                mine[k] = str(np.dtype(v.dtype)) if hasattr(v, "shape") else "scalar"
        merged: dict[str, str] = {}
        for r in range(self.comm.world_size):
            merged.update(self.comm.broadcast_object(mine if self.comm.rank == r else None, r))
        arrays = {k: np.dtype(d) for k, d in sorted(merged.items()) if d != "scalar"}
        return arrays, sorted(k for k, d in merged.items() if d == "scalar")

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Restore a full state (from ``state_dict()`` here, or from an unsharded optimizer): each rank keeps its
        slices. Works for any number of ranks."""
        self.optimizer.load_state_dict(sd)                     # checks groups and shapes, restores hyperparameters
        full, self.optimizer.state = self.optimizer.state, {}
        self.inner.state = {}
        for j, (seg, *_) in enumerate(self.segments):
            entry = full.get(seg.index)
            if entry is None:
                continue
            self.inner.state[j] = {
                k: (v.reshape(-1)[seg.start:seg.start + seg.data.size].copy() if hasattr(v, "shape") else v)
                for k, v in entry.items()}
        self.inner.step_count = int(sd.get("step", 0))
        self.optimizer.step_count = self.inner.step_count
