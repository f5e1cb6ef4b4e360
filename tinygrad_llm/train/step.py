"""One optimizer step: ``TrainStep``, the seam between the training loop and the arithmetic of a step.

    step_fn = TrainStep(model, optimizer, schedule, grad_accum=2, grad_clip=1.0)
    out = step_fn(batches, step)        # batches: grad_accum (x, y) pairs of (B, T) int arrays on the model's device
    float(out.loss)                     # the mean loss over the micro-batches: a 0-d array on the device

What a call does, in order: set the learning rate ``schedule(step)``; for each micro-batch forward under autocast,
``(loss / grad_accum)`` (times the loss scale in mixed precision) backward, with the data-parallel gradient
all-reduce held back (``no_sync``) until the last micro-batch; finish the all-reduce; unscale and check the
gradients (mixed precision); global-norm clipping; the optimizer update (skipped when a gradient is not finite);
zero the gradients. It reads and writes only the model's parameters and gradients, the optimizer's state and the
loss scaler: the loop owns the data position, the step counter and logging.

The seam. The loss of every micro-batch is summed on the device and returned as a device array: nothing in here
reads it back to the host, so the loop decides when to pay for that (only when it logs). ``grad_norm`` is a host
float, because the clipping coefficient is computed from it. Any callable with this signature,
``(batches, step) -> StepOutput``, can stand in for a ``TrainStep`` (``Trainer.step_fn``) as long as it keeps the
order above and its result is checked against this one: ``graph_step.GraphTrainStep`` records the step once as a
CUDA graph and replays it, with ``grad_norm`` also left on the device.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import autograd as ag
from autograd import backend
from autograd import functional as F

__all__ = ["TrainStep", "StepOutput", "lm_loss", "precision_setup"]


def lm_loss(model, x, y) -> ag.Tensor:
    """Mean next-token cross-entropy of ``model`` on inputs x (B, T) and targets y (B, T)."""
    if hasattr(model, "loss"):
        return model.loss(x, y)
    return F.cross_entropy(model(x), y)


def precision_setup(precision: str, device: str):
    """(autocast dtype or None, GradScaler or None) for ``precision``; sets TF32 on GPUs.

    "fp32": float32, no TF32; "tf32": float32 weights, TF32 matrix products where the GPU has them; "mixed" /
    "fp16": float16 matrix products under ``ag.amp.autocast``, float32 master weights, dynamic loss scaling (a step
    with inf/NaN gradients is skipped and the scale lowered); "bf16": bfloat16 matrix products under autocast,
    float32 master weights and no loss scaling (bfloat16 has float32's exponent range: gradients do not underflow).
    """
    if backend.parse_device(device)[0] == "cuda":
        from autograd import cuda as agcuda
        agcuda.set_tf32(precision != "fp32")
    if precision in ("mixed", "fp16"):
        return "float16", ag.amp.GradScaler()
    if precision == "bf16":
        ag.dtypes.as_dtype("bfloat16")   # fails here, with a clear message, when ml_dtypes is not installed
        return "bfloat16", None
    return None, None


@dataclass
class StepOutput:
    """What one step reports: ``loss`` a 0-d device array (mean over micro-batches), ``lr`` and ``grad_norm``
    (before clipping; inf when the step was skipped for non-finite gradients): floats, or anything ``float()`` reads
    (a graphed step's device values)."""
    loss: Any
    lr: float
    grad_norm: float


class TrainStep:
    """One optimizer step from ``grad_accum`` micro-batches (see the module doc for what it does, in order).

    model / optimizer / schedule: the module, its optimizer, ``schedule(step) -> lr``. grad_clip: the global-norm
    limit (None: no clipping, the norm is still measured). autocast_dtype / loss_scaler: from ``precision_setup``.
    data_parallel: an object with ``no_sync()`` and ``finish()`` (``tl.distributed.DataParallel``) or None.
    loss_fn: ``loss_fn(model, x, y) -> scalar Tensor`` (default ``lm_loss``).
    """

    def __init__(self, model, optimizer, schedule: Callable[[int], float], *, grad_accum: int = 1,
                 grad_clip: float | None = None, autocast_dtype: str | None = None, loss_scaler=None,
                 data_parallel=None, loss_fn: Callable = lm_loss):
        self.model, self.optimizer, self.schedule = model, optimizer, schedule
        self.grad_accum, self.grad_clip = int(grad_accum), grad_clip
        self.autocast_dtype, self.loss_scaler = autocast_dtype, loss_scaler
        self.data_parallel = data_parallel
        self.loss_fn = loss_fn

    def __call__(self, batches: Sequence[tuple[Any, Any]], step: int) -> StepOutput:
        if len(batches) != self.grad_accum:
            raise ValueError(f"TrainStep: {len(batches)} micro-batches given, grad_accum is {self.grad_accum}")
        lr = float(self.schedule(step))
        self.optimizer.set_lr(lr)
        total = 0.0
        for micro, (x, y) in enumerate(batches):
            last = micro == self.grad_accum - 1
            sync = (self.data_parallel.no_sync() if self.data_parallel is not None and not last
                    else contextlib.nullcontext())
            with sync:
                with ag.amp.autocast(self.autocast_dtype):
                    loss = self.loss_fn(self.model, x, y)
                scaled = loss if self.grad_accum == 1 else loss * (1.0 / self.grad_accum)
                if self.loss_scaler is not None:
                    scaled = self.loss_scaler.scale(scaled)
                scaled.backward()
            total = total + loss.data  # stays on the device
        if self.data_parallel is not None:
            self.data_parallel.finish()
        if hasattr(self.optimizer, "unscale_and_check"):  # ZeRO-1: each rank holds only its shard of the grads
            finite = self.optimizer.unscale_and_check(self.loss_scaler) if self.loss_scaler is not None else True
            gnorm = self.optimizer.clip_grad_norm(self.grad_clip) if finite else float("inf")
        else:
            params = [p for p in self.model.parameters() if p.requires_grad]
            finite = self.loss_scaler.unscale_and_check(params) if self.loss_scaler is not None else True
            gnorm = self._clip(params) if finite else float("inf")
        if self.loss_scaler is not None:
            self.loss_scaler.update()
        if math.isfinite(gnorm):  # a non-finite gradient skips the update (mixed precision overflow)
            self.optimizer.step()
        self.optimizer.zero_grad()
        return StepOutput(loss=total / self.grad_accum, lr=lr, grad_norm=gnorm)

    def _clip(self, params) -> float:
        """Global-norm clipping when ``grad_clip`` is set; returns the norm before clipping."""
        from ..optim import clip_grad_norm, grad_norm
        return clip_grad_norm(params, self.grad_clip) if self.grad_clip else grad_norm(params)
