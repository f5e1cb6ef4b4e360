"""Mixed precision: ``autocast`` (compute matrix products in float16) and ``GradScaler`` (dynamic loss scaling).

Inside ``with ag.amp.autocast("float16"):`` the matrix-product ops (``F.linear``) cast their float32 operands to
float16 with the differentiable ``astype`` op, so cuBLAS runs them on tensor cores while the parameters stay
float32 master weights: the gradient flowing back through ``astype`` arrives in float32. Everything else follows
the dtypes it is given: the residual stream stays float32 (float32 + float16 gives float32), LayerNorm and
cross-entropy accumulate in float32 inside their kernels, attention runs in the dtype of q, k and v.

Loss scaling keeps small float16 gradients from flushing to zero: the loss is multiplied by ``scale`` before
backward; before the optimizer step the gradients are divided by it and checked: a non-finite gradient skips the
step and halves the scale; after ``growth_interval`` clean steps the scale doubles.
"""
from __future__ import annotations

import math

import numpy as np

from . import backend
from . import dtypes as _dtypes
from .cuda import kernel_for


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
