"""The language-model head and its cross-entropy as one op over chunks of rows: the (N, V) logits never exist whole.

    z = h W^T + b,  [z = cap tanh(z / cap)]            h (N, C), W (V, C), b (V,) optional, targets t (N,)
    loss = sum_i (logsumexp(z_i) - z_i[t_i]) / count    (mean over the rows with t_i != ignore_index; 'sum': no /)
    dz_i = softmax(z_i) - onehot(t_i)  [* (1 - (z_i / cap)^2)]
    dh = s dz W,   dW = s dz^T h,   db = s sum_i dz_i,   s = g / count (mean) or g (sum)

Forward walks the rows in chunks: a chunk's logits (rows, V) in float32, its loss rows and, when a gradient is
wanted, its dz; from dz the chunk's rows of dh and its share of dW and db, then the chunk's arrays are dropped.
So forward does backward's products as well (Liger-Kernel's fused linear cross-entropy does the same): the loss
is a scalar, and backward only multiplies dh, dW, db by the incoming gradient. The head costs the three GEMMs of
the composed path (no recomputation); between forward and backward it keeps dh (N, C), dW (V, C) and db in
float32 instead of the logits and their gradient (N, V).

Chunks of rows, not of the vocabulary: a row chunk holds whole rows, so its log-sum-exp is final after one pass
and dz follows at once; vocabulary chunks would need every chunk's log-sum-exp before the first gradient, which
costs the head's product twice. What the row chunks pay instead is one pass over dW per chunk (accumulation).

Under autocast (``compute_dtype`` float16 or bfloat16) h and W are rounded to it once and the products run in it
with float32 accumulation (logits straight out in float32); dz is stored in the compute dtype, for float16
multiplied by 2^14 (|dz| <= 1, so no overflow, and probabilities near 1/V stay normal float16 numbers instead of
subnormals; with the mean's 1/count they would flush to zero), and that scale is divided out of the float32
products. On NumPy the rounded operands are widened to float32, which gives the same products.

- ``linear_cross_entropy_reference``: linear, soft cap and cross-entropy from primitive ops
  (``F.linear_cross_entropy(..., fused=False)``).
- ``LinearCrossEntropy``: the op; per chunk, ``cross_entropy_rows`` (NumPy below, CUDA kernel of that name in
  ``autograd/cuda/softmax.py``) turns the chunk's logits into loss rows and dz.
"""
from __future__ import annotations

import math

import numpy as np

from ... import backend
from ...cuda import kernel_for
from ...tensor import Tensor
from .base import FusedFunction
from .cross_entropy import cross_entropy_backward, cross_entropy_forward, cross_entropy_reference
from .linear import _column_sum, linear_reference, matmul, weight_cast

CHUNK_BYTES = 256 * 2 ** 20        # float32 logits of one chunk: about 1/6 of them at GPT-2 124M's B 8 x T 1024
FLOAT16_GRAD_SCALE = 2.0 ** 14


# ------------------------------------------------------------------------------------------------ composed reference
def soft_cap_reference(z: Tensor, cap: float | None) -> Tensor:
    """cap tanh(z / cap) (Gemma's final-logit soft cap); z itself for cap None."""
    return z if cap is None else (z / cap).tanh() * cap


def linear_cross_entropy_reference(h: Tensor, weight: Tensor, bias: Tensor | None, targets, ignore_index: int = -100,
                                   reduction: str = "mean", softcap: float | None = None,
                                   compute_dtype=None) -> Tensor:
    """cross_entropy(soft_cap(linear(h, weight, bias))) from primitive ops; h (..., C), targets (...,) an integer
    array on h's device. Reduced-precision logits are widened to float32 before the soft cap and the loss."""
    z = linear_reference(h, weight, bias, compute_dtype)
    if z.dtype.itemsize < 4:
        z = z.astype(np.float32)
    return cross_entropy_reference(soft_cap_reference(z, softcap), targets, ignore_index, reduction)


# ------------------------------------------------------------------------------------------------ NumPy (one chunk)
def cross_entropy_rows(z, targets, ignore_index, softcap, grad_scale, grad_dtype):
    """(losses, dz) for logits z (n, V) in float32/float64 before the soft cap, targets (n,): losses (n,) (0 at
    ignored rows); dz (n, V) in ``grad_dtype`` = grad_scale (softmax - onehot) [* (1 - (z/cap)^2)] with zero rows at
    ignored targets, or None when ``grad_dtype`` is None. The CUDA kernel may write dz over z."""
    xp = backend.xp_of(z)
    capped = None
    if softcap is not None:
        capped = xp.tanh(z / softcap)
        z = capped * softcap
    losses, _, e, inv_sum = cross_entropy_forward(z, targets, ignore_index)
    if grad_dtype is None:
        return losses, None
    d = cross_entropy_backward(e, inv_sum, targets, grad_scale, ignore_index, e.dtype)
    if capped is not None:
        capped *= capped
        d *= 1 - capped
    return losses, d.astype(grad_dtype, copy=False)


def default_chunk_rows(n: int, v: int) -> int:
    """Rows per chunk: chunks of about ``CHUNK_BYTES`` of float32 logits, equal in size, a multiple of 64 rows."""
    chunks = max(1, math.ceil(n * v * 4 / CHUNK_BYTES))
    rows = math.ceil(n / chunks)
    return max(1, min(n, -(-rows // 64) * 64))


def _accumulate_product(out, a, b) -> None:
    """out += a @ b: one GEMM with beta = 1 on the GPU (no temporary of the weight's size per chunk)."""
    kernel = kernel_for("matmul_accumulate", a)
    if kernel is not None and a.dtype == b.dtype:
        kernel(a, b, out)
    else:
        out += matmul(a, b, out_dtype=out.dtype)


def _operand(x, dtype):
    """x rounded to the product dtype, as the product takes it: that dtype on the GPU (tensor cores), widened to
    float32 on NumPy (exactly the same products, accumulated in float32 as cuBLAS does)."""
    if dtype is not None and x.dtype != dtype:
        x = x.astype(dtype)
    if type(x) is np.ndarray and x.dtype.itemsize < 4:
        x = x.astype(np.float32)
    return x


# ------------------------------------------------------------------------------------------------ the fused op
class LinearCrossEntropy(FusedFunction):
    """loss = cross_entropy(soft_cap(h W^T + b), targets) in one node; inputs h (..., C), W (V, C) [, b (V,)].

    Parameters: targets (...,) int array; ignore_index; reduction 'mean' | 'sum'; softcap (a float or None);
    compute_dtype (autocast's, or None); chunk_size (rows, or None for ``default_chunk_rows``); grads (which
    inputs get a gradient: forward computes them, see the module docstring)."""
    rule = "dh = s dz W, dW = s dz^T h, db = s sum dz; dz = softmax(z) - onehot(t) (times the soft cap's slope)"
    params = ("targets", "ignore_index", "reduction", "softcap", "compute_dtype", "chunk_size", "grads", "weight_cast")
    weight_cast = None      # W as compute_dtype, made before the call (the parameter's shadow, ``amp.cast_weight``)

    @classmethod
    def apply(cls, h, w, *b, compute_dtype=None, **params):
        """Under autocast W's low-precision copy is the parameter's shadow (``amp.cast_weight``): written by the
        optimizer once per step, not cast at every call."""
        return super().apply(h, w, *b, compute_dtype=compute_dtype, weight_cast=weight_cast(w, compute_dtype),
                             **params)

    def forward(self, h, w, *b):
        xp = backend.xp_of(h)
        C, V = h.shape[-1], w.shape[0]
        h2, t = h.reshape(-1, C), self.targets.reshape(-1)
        N = h2.shape[0]
        cd = self.compute_dtype
        acc = np.dtype(backend.acc_dtype(cd if cd is not None else h.dtype))
        want = self.grads
        wm = _operand(w if self.weight_cast is None else self.weight_cast, cd)
        bias = b[0].astype(acc, copy=False) if b else None
        grad_dtype = np.dtype(cd if cd is not None else w.dtype) if any(want) else None
        scale = FLOAT16_GRAD_SCALE if grad_dtype == np.float16 else 1.0
        rows_of = kernel_for("cross_entropy_rows", h) or cross_entropy_rows
        dh = xp.empty((N, C), acc) if want[0] else None
        dw = db = None
        loss = xp.zeros((), acc)
        step = self.chunk_size or default_chunk_rows(N, V)
        for r0 in range(0, N, step):
            hc, tc = _operand(h2[r0:r0 + step], cd), t[r0:r0 + step]
            z = matmul(hc, wm.T, out_dtype=acc)
            if bias is not None:
                z += bias
            losses, dz = rows_of(z, tc, self.ignore_index, self.softcap, scale, grad_dtype)
            loss += losses.sum()
            del z, losses
            if dz is None:
                continue
            dz = _operand(dz, None)
            if want[0]:
                dh[r0:r0 + step] = matmul(dz, wm, out_dtype=acc)
            if want[1]:
                if dw is None:
                    dw = matmul(dz.T, hc, out_dtype=acc)
                else:
                    _accumulate_product(dw, dz.T, hc)
            if len(want) > 2 and want[2]:
                part = _column_sum(dz, acc)
                db = part if db is None else db + part
        count = (t != self.ignore_index).sum()
        if type(h) is np.ndarray:
            count = max(int(count), 1)
        else:   # a device value: no host sync (with every row ignored the sums are 0 anyway)
            count = xp.maximum(count, 1).astype(acc)
        inv = 1.0 / count if self.reduction == "mean" else 1.0
        if want[1] and dw is None:                       # no rows at all
            dw = xp.zeros(w.shape, acc)
        if len(want) > 2 and want[2] and db is None:
            db = xp.zeros((V,), acc)
        self.grads_out = []
        for d, x in zip((dh, dw, db), (h, w) + b):
            if d is not None:
                d *= inv / scale                         # the float16 scale and the mean's 1/count, once
                d = d.astype(x.dtype, copy=False).reshape(x.shape)
            self.grads_out.append(d)
        out_dtype = np.float32 if h.dtype.itemsize < 4 else acc
        return xp.asarray(loss * inv, dtype=out_dtype)

    def backward_arrays(self, g):
        grads = []
        for d in self.grads_out:
            grads.append(None if d is None else Tensor(d * g.data.astype(d.dtype, copy=False)))
        return tuple(grads)

    def reference(self, h, w, *b):
        return linear_cross_entropy_reference(h, w, b[0] if b else None, self.targets, self.ignore_index,
                                              self.reduction, self.softcap, self.compute_dtype)
