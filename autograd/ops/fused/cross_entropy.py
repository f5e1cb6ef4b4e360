"""Softmax cross-entropy against integer targets, with ``ignore_index`` and a mean / sum / per-target reduction.

    loss_i = logsumexp(logits_i) - logits_i[t_i]     (0 where t_i == ignore_index)
    d loss_i / d logits_i = softmax(logits_i) - onehot(t_i)

The mean is over the targets that are not ignored; with none it is defined as 0 with a zero gradient (PyTorch gives
NaN), so an all-padding micro-batch cannot poison training.

- ``cross_entropy_reference``: composed from logsumexp, indexing and sums; ``F.cross_entropy(..., fused=False)``.
- ``CrossEntropy``: one node; its backward writes softmax - onehot into a single (N, V) array. NumPy: forward keeps
  e = exp(x - max) and 1/sum(e), so backward is one pass. CUDA (``cross_entropy_forward`` / ``_backward`` in
  ``autograd/cuda/softmax.py``): forward keeps the per-row log-sum-exp only and the kernel recomputes the softmax.
"""
from __future__ import annotations

import numpy as np

from ... import backend
from ...cuda import kernel_for
from ...tensor import Tensor
from .base import FusedFunction
from .softmax import logsumexp_last


# ------------------------------------------------------------------------------------------------ composed reference
def cross_entropy_reference(logits: Tensor, targets, ignore_index: int = -100, reduction: str = "mean") -> Tensor:
    """The loss from primitive ops; logits (..., V), targets (...,) an integer array on logits' device."""
    xp = backend.xp_of(logits.data)
    V = logits.shape[-1]
    rows = logits.reshape(-1, V)
    t = targets.reshape(-1)
    valid = t != ignore_index
    picked = rows[xp.arange(t.shape[0]), xp.where(valid, t, 0)]
    per_target = (rows.logsumexp(axis=-1) - picked) * Tensor(valid.astype(logits.dtype))
    if reduction == "none":
        return per_target.reshape(targets.shape)
    total = per_target.sum()
    if reduction == "sum":
        return total
    count = int(valid.sum())
    return total / count if count else total * 0.0


# ------------------------------------------------------------------------------------------------ NumPy
def cross_entropy_forward(logits, targets, ignore_index):
    """(losses, count, e, inv_sum): logits (N, V), targets (N,). losses (N,) in float32 at least, 0 where the
    target is ``ignore_index``; count the other rows (int); e = exp(x - max) (N, V); 1/sum(e) (N,)."""
    xp = backend.xp_of(logits)
    acc = backend.acc_dtype(logits.dtype)
    n = logits.shape[0]
    x = logits if logits.dtype == acc else logits.astype(acc)
    m = x.max(axis=-1)
    m = xp.where(xp.isfinite(m), m, 0)
    e = x - m[:, None]
    valid = targets != ignore_index
    safe = xp.where(valid, targets, 0)
    picked = e[xp.arange(n), safe]         # x[target] - max, read before exp overwrites e
    xp.exp(e, out=e)
    ssum = e.sum(axis=-1)
    per_row = xp.log(ssum)
    per_row -= picked
    per_row *= valid
    return per_row, int(valid.sum()), e, xp.reciprocal(ssum, out=ssum)


def cross_entropy_backward(e, inv_sum, targets, scale, ignore_index, dtype):
    """dlogits (N, V) = scale * (e / sum - onehot), zero rows for ignored targets; ``scale`` a number, a 0-d array
    (the mean's g / count) or (N,) per-row weights (reduction 'none')."""
    xp = backend.xp_of(e)
    valid = targets != ignore_index
    row = valid.astype(e.dtype)
    row *= xp.asarray(scale, dtype=e.dtype)
    d = e * (inv_sum * row)[:, None]
    d[xp.arange(e.shape[0]), xp.where(valid, targets, 0)] -= row
    return d.astype(dtype, copy=False)


# ------------------------------------------------------------------------------------------------ the fused op
class CrossEntropy(FusedFunction):
    """loss = cross_entropy(logits, targets) in one node; logits (..., V), targets (...,) int (a parameter)."""
    rule = "d loss/d logits = g (softmax(logits) - onehot(targets)) / count  (0 at ignored targets)"
    params = ("targets", "ignore_index", "reduction")

    def forward(self, logits):
        V = logits.shape[-1]
        l2, t = logits.reshape(-1, V), self.targets.reshape(-1)
        xp = backend.xp_of(logits)
        kernel = kernel_for("cross_entropy_forward", logits) if self.reduction != "none" else None
        if kernel is not None:
            loss_sum, self.lse, self.count = kernel(l2, t, self.ignore_index)
            self.e = self.inv_sum = None
        else:
            losses, self.count, self.e, self.inv_sum = cross_entropy_forward(l2, t, self.ignore_index)
            if self.reduction == "none":
                return losses.astype(logits.dtype, copy=False).reshape(self.targets.shape)
            loss_sum = losses.sum()
        if self.reduction == "mean":
            # count: an int, or a device value >= 1 while a CUDA graph is captured (ignored rows add 0 anyway)
            loss_sum = loss_sum / self.count if not isinstance(self.count, int) or self.count else loss_sum * 0
        # a float16 loss would overflow once a GradScaler multiplies it: reduced-precision logits give a float32 loss
        return xp.asarray(loss_sum, dtype=np.float32 if logits.dtype.itemsize < 4 else logits.dtype)

    def backward_arrays(self, g):
        logits = self.inputs[0]
        V = logits.shape[-1]
        if self.reduction == "none":
            scale = g.data.reshape(-1)
        elif self.reduction == "mean":
            scale = g.data / self.count if not isinstance(self.count, int) or self.count else g.data * 0
        else:
            scale = g.data
        t = self.targets.reshape(-1)
        if self.e is None:
            d = kernel_for("cross_entropy_backward", logits.data)(logits.data.reshape(-1, V), t, self.lse, scale,
                                                                  self.ignore_index)
        else:
            d = cross_entropy_backward(self.e, self.inv_sum, t, scale, self.ignore_index, logits.dtype)
        return Tensor(d.reshape(logits.shape))

    def reference(self, logits):
        return cross_entropy_reference(logits, self.targets, self.ignore_index, self.reduction)
