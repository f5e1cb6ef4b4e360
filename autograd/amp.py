"""Mixed precision: ``autocast`` (compute matrix products in float16) and ``GradScaler`` (dynamic loss scaling).

Inside ``with ag.amp.autocast("float16"):`` (or "bfloat16") the matrix-product ops (``F.linear``) compute in float16
on their float32 operands (x cast inside the op, the weight as its shadow, below), so cuBLAS runs them on tensor
cores while the parameters stay float32 master weights: their gradients arrive in float32. Everything else follows
the dtypes it is given: the residual stream stays float32 (float32 + float16 gives float32), LayerNorm and
cross-entropy accumulate in float32 inside their kernels, attention runs in the dtype of q, k and v.

Loss scaling keeps small float16 gradients from flushing to zero: the loss is multiplied by ``scale`` before
backward; before the optimizer step the gradients are divided by it and checked: a non-finite gradient skips the
step and halves the scale; after ``growth_interval`` clean steps the scale doubles.

Weight shadows: the low-precision copy of a float32 weight is made once per optimizer step, not at every use. An
optimizer registers its parameters (``track_shadows``); ``F.linear`` under autocast asks ``cast_weight(w, dtype)``,
which returns the parameter's shadow of that dtype when it was cast from exactly the current values, and otherwise
casts into it (creating it the first time). The optimizer writes ``cast(new value)`` into every shadow in the same
pass that updates the parameter (the AdamW kernel stores both), so the next forward finds it valid. Validity rules:
- a shadow is valid for the master array it was cast from (``t.data is master``): ``t.data = other`` makes it
  stale by itself;
- whatever writes into a tracked parameter's array outside the optimizer calls ``refresh_shadows(t)`` right after
  (in-place Tensor ops, ``x[...] = v``, ``Module.load_state_dict``, initialisers, data parallel's broadcast and
  ZeRO's all-gather, LoRA's merge): the shadows are recast in place, so their buffers (and the addresses a CUDA
  graph recorded) stay the same;
- a skipped step (GradScaler overflow) changes neither the parameter nor its shadows.
Inside a CUDA-graph capture no shadow is created (the buffer would live in the graph's pool): the captured step
uses the shadows made by its eager warm-up, and the captured optimizer writes them on every replay.
"""
from __future__ import annotations

import math
import weakref

import numpy as np

from . import backend
from . import dtypes as _dtypes
from .cuda import kernel_for
from .cuda.graph import is_capturing


class _AmpState:
    dtype = None  # numpy dtype matrix products compute in, or None (off)


def autocast_dtype():
    """The float dtype matrix products compute in under ``autocast``, or None."""
    return _AmpState.dtype


class autocast:
    """Context manager: matrix products compute in ``dtype`` ('float16' by default; None turns it off inside)."""

    def __init__(self, dtype="float16"):
        self.dtype = None if dtype is None else _dtypes.as_dtype(dtype)
        if self.dtype is not None and not _dtypes.is_float(self.dtype):
            raise ValueError(f"autocast: dtype must be a float type, got {self.dtype}")

    def __enter__(self):
        self._previous = _AmpState.dtype
        _AmpState.dtype = self.dtype
        return self

    def __exit__(self, *exc):
        _AmpState.dtype = self._previous
        return False


class _Shadows:
    """A tracked parameter's low-precision copies: ``arrays`` (dtype -> array), valid while ``master`` is the
    parameter's array (the one they were cast from; None: not cast yet). ``locked``: a captured CUDA graph writes
    exactly these copies on each replay, so no copy of another dtype may be added (the graph would not update it)."""

    __slots__ = ("ref", "master", "arrays", "locked")

    def __init__(self, ref):
        self.ref, self.master, self.arrays, self.locked = ref, None, {}, False


# id(tensor) -> _Shadows, dropped when the tensor dies (a WeakKeyDictionary would compare keys with Tensor's
# elementwise ==)
_shadows: dict[int, _Shadows] = {}


def _forget(key: int, ref) -> None:
    e = _shadows.get(key)
    if e is not None and e.ref is ref:
        del _shadows[key]


def track_shadows(params) -> None:
    """Let ``cast_weight`` keep shadows of these parameters (Tensors that require grad; other objects are skipped).
    Called by the optimizers whose step writes the shadows."""
    from .tensor import Tensor
    for p in params:
        if isinstance(p, Tensor) and p.requires_grad and _entry(p) is None:
            key = id(p)
            ref = weakref.ref(p, lambda r, key=key: _forget(key, r))
            _shadows[key] = _Shadows(ref)


def untrack_shadows(params) -> None:
    """Drop the shadows of these parameters and stop keeping them (``cast_weight`` then casts at every use)."""
    for p in params:
        if _entry(p) is not None:
            del _shadows[id(p)]


def _entry(t):
    e = _shadows.get(id(t))
    return e if e is not None and e.ref() is t else None


def shadow(t, dtype):
    """The valid shadow of ``t`` in ``dtype`` (an array cast from exactly ``t.data``), or None."""
    e = _entry(t)
    if e is None or e.master is not t.data:
        return None
    return e.arrays.get(np.dtype(dtype))


def _fits(a, master) -> bool:
    return a.shape == master.shape and type(a) is type(master) and backend.device_of(a) == backend.device_of(master)


def _cast_into(dst, src) -> None:
    with backend.device_scope(src):
        dst[...] = src          # one cast pass, round to nearest even (as astype)


def cast_weight(t, dtype):
    """``t.data`` as ``dtype``: the shadow when it is valid; else one cast, kept as the shadow when ``t`` is tracked
    (outside a CUDA-graph capture), so the optimizer keeps it fresh from then on."""
    dtype = np.dtype(dtype)
    master = t.data
    e = _entry(t)
    if e is None:
        with backend.device_scope(master):
            return master.astype(dtype)
    a = e.arrays.get(dtype)
    if a is not None and e.master is master:
        return a
    if is_capturing() or (a is None and e.locked):
        with backend.device_scope(master):
            return master.astype(dtype)
    stale = {d: s for d, s in e.arrays.items() if d != dtype}
    if e.master is not master:             # t.data was replaced: the other copies are of the old values
        for d, s in stale.items():
            if _fits(s, master):
                _cast_into(s, master)
            else:
                del e.arrays[d]
    if a is None or not _fits(a, master):
        with backend.device_scope(master):
            a = e.arrays[dtype] = master.astype(dtype)
    else:
        _cast_into(a, master)
    e.master = master
    return a


def shadows_for_update(t) -> list:
    """The shadows the optimizer must overwrite with ``cast(t.data)`` in the update it is about to run (their
    buffers fit ``t.data``); they count as valid for ``t.data`` from then on. An empty list when none is kept.
    Asked inside a CUDA-graph capture, the set is frozen: the replays write exactly these."""
    e = _entry(t)
    if e is None:
        return []
    if is_capturing():
        e.locked = True
    if not e.arrays:
        return []
    master = t.data
    for d in [d for d, s in e.arrays.items() if not _fits(s, master)]:
        del e.arrays[d]
    e.master = master
    return list(e.arrays.values())


def refresh_shadows(t) -> None:
    """Recast ``t``'s shadows from its array after something wrote into that array outside the optimizer."""
    e = _entry(t)
    if e is None or not e.arrays:
        return
    master = t.data
    for d, s in list(e.arrays.items()):
        if _fits(s, master):
            _cast_into(s, master)
        else:
            del e.arrays[d]
    e.master = master


class GradScaler:
    """Dynamic loss scaling for float16 training.

        scaler = GradScaler()
        loss_scaled = scaler.scale(loss); loss_scaled.backward()
        if scaler.unscale_and_check(params): optimizer.step()     # skipped (and scale halved) on overflow
        scaler.update()
    """

    def __init__(self, init_scale: float = 2.0 ** 16, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 1000, enabled: bool = True):
        self.scale_value = float(init_scale)
        self.growth_factor = growth_factor
        self.backoff_factor = backoff_factor
        self.growth_interval = growth_interval
        self.enabled = enabled
        self._clean_steps = 0
        self._found_inf = False
        self.skipped_steps = 0

    def scale(self, loss):
        return loss * self.scale_value if self.enabled else loss

    def unscale_and_check(self, params) -> bool:
        """Divide every ``.grad`` by the scale in place; return False (skip the step) if any is inf or NaN."""
        if not self.enabled:
            self._found_inf = False
            return True
        inv = 1.0 / self.scale_value
        params = list(params)
        gpu = [p.grad.data for p in params if p.grad is not None and type(p.grad.data) is not np.ndarray]
        if gpu:
            kern = kernel_for("scale_and_check", gpu[0])
            if kern is not None:     # one multi-tensor launch per (dtype, GPU), one host sync per GPU
                finite = not any(int(f.get()[0]) for f in kern(gpu, inv))
                cpu = [p for p in params if p.grad is not None and type(p.grad.data) is np.ndarray]
                if cpu:
                    finite = self._unscale_arrays(cpu, inv) and finite
                self._found_inf = not finite
                return finite
        finite = self._unscale_arrays(params, inv)
        self._found_inf = not finite
        return finite

    @staticmethod
    def _unscale_arrays(params, inv: float) -> bool:
        """The per-parameter path: g *= inv, then one float32 sum per gradient (inf/NaN make the total non-finite)."""
        total = None
        for p in params:
            g = p.grad
            if g is None:
                continue
            g.data *= inv
            s = g.data.sum(dtype=np.float32)  # inf/NaN anywhere makes the sum non-finite
            total = s if total is None else total + s
        return True if total is None else bool(math.isfinite(float(backend.to_numpy(total))))

    def skip_step(self) -> None:
        """Count this step as overflowed although this process's gradients were finite (another data-parallel rank
        found inf or NaN): ``update()`` then backs off like every other rank."""
        self._found_inf = True

    def update(self) -> None:
        """Lower the scale after an overflow; raise it after ``growth_interval`` clean steps."""
        if not self.enabled:
            return
        if self._found_inf:
            self.scale_value *= self.backoff_factor
            self._clean_steps = 0
            self.skipped_steps += 1
        else:
            self._clean_steps += 1
            if self._clean_steps >= self.growth_interval:
                self.scale_value *= self.growth_factor
                self._clean_steps = 0

    def state_dict(self) -> dict:
        return {"scale": self.scale_value, "clean_steps": self._clean_steps, "skipped_steps": self.skipped_steps}

    def load_state_dict(self, d: dict) -> None:
        self.scale_value = float(d["scale"])
        self._clean_steps = int(d["clean_steps"])
        self.skipped_steps = int(d.get("skipped_steps", 0))
