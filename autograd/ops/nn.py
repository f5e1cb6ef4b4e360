"""Fused ops: one Function per layer-sized computation, with a hand-derived backward on arrays.

Each forward/backward calls the array kernels of ``nn_kernels`` (xp-generic, or a CUDA kernel when one is registered).

Twice differentiable where it is cheap: when backward runs with ``create_graph=True`` the engine enables grad mode,
and the ops below that set ``differentiable_twice = True`` then compute the same local rule in Tensor ops (so a
higher-order gradient flows); in a plain backward (grad mode off) they take the single array-kernel path.
LayerNorm, RMSNorm and Attention are first-order only (``differentiable_twice = False``): a double backward through
them raises a clear error naming the op; compose them from primitive ops if you need higher-order gradients.
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ..function import Function
from ..grad_mode import _GradMode
from ..tensor import Tensor
from . import nn_kernels as K
from .elementwise import Tanh
from .shape import ScatterAdd, concatenate, reshape, sum_to


#: Largest array (bytes) a fused op keeps from forward for a cheaper backward on NumPy (GELU's sigmoid factor,
#: LayerNorm's xhat, cross-entropy's exp(x - max), attention's probabilities). Above it, or on CuPy, backward
#: recomputes from the inputs instead, so a large model on the CPU does not hold several extra copies per layer.
SAVE_FOR_BACKWARD_LIMIT_BYTES = 64 << 20


def _save_on_cpu(a, n_elements: int) -> bool:
    """True when ``a`` is a NumPy array and an n_elements array of its accumulation dtype fits the limit."""
    return type(a) is np.ndarray and n_elements * max(a.itemsize, 4) <= SAVE_FOR_BACKWARD_LIMIT_BYTES


def _last_axis(axis: int, ndim: int) -> bool:
    return axis == -1 or axis == ndim - 1


# ------------------------------------------------------------------------------------------------------ GELU
def gelu_tanh_local(h: Tensor) -> Tensor:
    """d gelu(h) / dh in Tensor ops (used for double backward): (1 + t)/2 + h/2 (1 - t**2) k (1 + 3c h**2)."""
    t = Tanh.apply((h + h * h * h * K._GELU_C) * K._GELU_K)
    return (t + 1.0) * 0.5 + h * 0.5 * (1.0 - t * t) * ((h * h * (3 * K._GELU_C) + 1.0) * K._GELU_K)


class GeluTanh(Function):
    """y = gelu(x), tanh approximation, in one kernel; backward one kernel (Tensor ops under create_graph).

    On NumPy, forward keeps the sigmoid factor s for backward, which then needs half the passes over the data (CPU
    memory is cheap, passes are not); on CuPy nothing extra is kept and backward recomputes (a CUDA kernel, or the
    generic code), because GPU memory is the scarcer resource."""

    def forward(self, x):
        if _save_on_cpu(x, x.size):
            y, _, self.s = K.gelu_forward_saving(x)
            return y
        self.s = None
        return K.gelu_forward(x)

    def backward(self, gy):
        x = self.inputs[0]
        if not _GradMode.enabled:
            if self.s is not None:
                return Tensor(K.gelu_backward_saved(x.data, self.s, gy.data))
            return Tensor(K.gelu_backward(x.data, gy.data))
        return gy * gelu_tanh_local(x)


class BiasGelu(Function):
    """y = gelu(x + b) (tanh form); x (..., C), b (C,). The FeedForward's first layer.

    NumPy: forward keeps h = x + b and the sigmoid factor s (see GeluTanh); CuPy: nothing, backward recomputes."""

    def forward(self, x, b):
        if _save_on_cpu(x, x.size):
            y, self.h, self.s = K.gelu_forward_saving(x, b)
            return y
        self.h = self.s = None
        return K.bias_gelu_forward(x, b)

    def backward(self, gy):
        x, b = self.inputs
        if not _GradMode.enabled:
            if self.s is not None:
                gx = K.gelu_backward_saved(self.h, self.s, gy.data)
                gb = gx.reshape(-1, gx.shape[-1]).sum(axis=0) if self.needs_input_grad[1] else None
            else:
                gx, gb = K.bias_gelu_backward(x.data, b.data, gy.data)
            return (Tensor(gx) if self.needs_input_grad[0] else None,
                    Tensor(gb) if self.needs_input_grad[1] else None)
        gh = gy * gelu_tanh_local(x + b)
        return sum_to(gh, x.shape), sum_to(gh, b.shape)


# ------------------------------------------------------------------------------------------------------ softmax
class Softmax(Function):
    """y = exp(x - max) / sum(exp(x - max)) over ``axis``; dx = y (gy - sum(gy y))."""
    save_outputs = True

    def forward(self, x):
        if _last_axis(self.axis, x.ndim):
            return K.softmax_forward(x)
        xp = backend.xp_of(x)
        return xp.moveaxis(K.softmax_forward(xp.moveaxis(x, self.axis, -1)), -1, self.axis)

    def backward(self, gy):
        y = self.output()
        if not _GradMode.enabled:
            if _last_axis(self.axis, y.ndim):
                return Tensor(K.softmax_backward(y.data, gy.data))
            xp = backend.xp_of(y.data)
            mv = lambda a: xp.moveaxis(a, self.axis, -1)  # noqa: E731
            return Tensor(xp.moveaxis(K.softmax_backward(mv(y.data), mv(gy.data)), -1, self.axis))
        return y * (gy - (gy * y).sum(axis=self.axis, keepdims=True))


class LogSoftmax(Function):
    """y = x - logsumexp(x) over ``axis``; dx = gy - exp(y) sum(gy)."""
    save_outputs = True

    def forward(self, x):
        if _last_axis(self.axis, x.ndim):
            return K.log_softmax_forward(x)
        xp = backend.xp_of(x)
        return xp.moveaxis(K.log_softmax_forward(xp.moveaxis(x, self.axis, -1)), -1, self.axis)

    def backward(self, gy):
        y = self.output()
        if not _GradMode.enabled:
            if _last_axis(self.axis, y.ndim):
                return Tensor(K.log_softmax_backward(y.data, gy.data))
            xp = backend.xp_of(y.data)
            mv = lambda a: xp.moveaxis(a, self.axis, -1)  # noqa: E731
            return Tensor(xp.moveaxis(K.log_softmax_backward(mv(y.data), mv(gy.data)), -1, self.axis))
        return gy - y.exp() * gy.sum(axis=self.axis, keepdims=True)


# ------------------------------------------------------------------------------------------------------ cross-entropy
class CrossEntropy(Function):
    """loss = mean (or sum) over non-ignored rows of lse(logits) - logits[target]; logits (..., V), targets (...,).

    Backward: dlogits = g/count * (softmax - onehot), one (N, V) array, ignored rows zero. With no non-ignored target
    the mean is defined as 0 (and the gradient is 0), so an all-padding micro-batch cannot poison training with NaN.
    Params: targets (int array, same device), ignore_index, reduction ('mean' | 'sum' | 'none').
    """

    def forward(self, logits):
        V = logits.shape[-1]
        l2 = logits.reshape(-1, V)
        t = self.targets.reshape(-1)
        xp = backend.xp_of(logits)
        if self.reduction == "none":
            lse = K._logsumexp_last(xp, l2)
            valid = t != self.ignore_index
            picked = l2[xp.arange(l2.shape[0]), xp.where(valid, t, 0)].astype(lse.dtype)
            self.lse, self.count = lse, None
            return ((lse - picked) * valid).astype(logits.dtype).reshape(self.targets.shape)
        if _save_on_cpu(l2, l2.size):  # NumPy: keep exp(x - max) so backward is a single pass
            loss_sum, count, self.e, self.inv_sum = K.cross_entropy_forward_saving(l2, t, self.ignore_index)
            self.lse = None
        else:
            loss_sum, self.lse, count = K.cross_entropy_forward(l2, t, self.ignore_index)
            self.e = None
        self.count = count
        if self.reduction == "mean":
            loss_sum = loss_sum / count if count else loss_sum * 0
        # a float16 loss would overflow once a GradScaler multiplies it: reduced-precision logits give a float32 loss
        return xp.asarray(loss_sum, dtype=np.float32 if logits.dtype.itemsize < 4 else logits.dtype)

    def backward(self, g):
        logits = self.inputs[0]
        V = logits.shape[-1]
        if not _GradMode.enabled:
            if self.reduction == "none":
                scale = g.data.reshape(-1)
            elif self.reduction == "mean":
                scale = g.data / self.count if self.count else g.data * 0
            else:
                scale = g.data
            if self.reduction == "none":
                d = K.cross_entropy_backward.generic(logits.data.reshape(-1, V), self.targets.reshape(-1), self.lse,
                                                     1.0, self.ignore_index)
                d *= scale.astype(d.dtype)[:, None]
            elif self.e is not None:
                d = K.cross_entropy_backward_saved(self.e, self.inv_sum, self.targets.reshape(-1), scale,
                                                   self.ignore_index, logits.dtype)
            else:
                d = K.cross_entropy_backward(logits.data.reshape(-1, V), self.targets.reshape(-1), self.lse, scale,
                                             self.ignore_index)
            return Tensor(d.reshape(logits.shape))
        # create_graph: the same rule in Tensor ops, so the gradient is differentiable again
        xp = backend.xp_of(logits.data)
        t = self.targets
        valid = t != self.ignore_index
        onehot = (xp.arange(V) == t[..., None]).astype(logits.dtype)  # ignored rows are masked by weight below
        weight = valid.astype(logits.dtype)
        if self.reduction == "mean":
            weight = weight / self.count if self.count else weight * 0
        p = Softmax.apply(logits, axis=-1)
        d = (p - Tensor(onehot)) * Tensor(weight[..., None])
        gb = reshape(g, tuple(g.shape) + (1,)) if self.reduction == "none" else g
        return d * gb


# ------------------------------------------------------------------------------------------------------ norms
class LayerNorm(Function):
    """y = (x - mean) / sqrt(var + eps) * w + b over the last axis; w, b optional (inputs only when given).

    First-order fused op: the backward is one array kernel (float32 statistics at least)."""
    differentiable_twice = False

    def forward(self, x, *wb):
        w = wb[0] if self.has_w else None
        b = wb[-1] if self.has_b else None
        if _save_on_cpu(x, x.size):  # NumPy: keep xhat for a cheaper backward (CPU memory is cheap)
            y, self.rstd, self.xhat = K.layer_norm_forward_saving(x, w, b, self.eps)
            return y
        self.xhat = None
        y, self.mean, self.rstd = K.layer_norm_forward(x, w, b, self.eps)
        return y

    def backward(self, gy):
        x = self.inputs[0]
        w = self.inputs[1].data if self.has_w else None
        if self.xhat is not None:
            gx, gw, gb = K.layer_norm_backward_saved(gy.data, self.xhat, w, self.rstd, self.has_b)
        else:
            gx, gw, gb = K.layer_norm_backward(gy.data, x.data, w, self.mean, self.rstd)
        out = [Tensor(gx)]
        if self.has_w:
            out.append(Tensor(gw))
        if self.has_b:
            out.append(Tensor(gb))
        return tuple(out)


class RMSNorm(Function):
    """y = x / sqrt(mean(x**2) + eps) * w over the last axis (w optional). First-order fused op."""
    differentiable_twice = False

    def forward(self, x, *w):
        y, self.rstd = K.rms_norm_forward(x, w[0] if w else None, self.eps)
        return y

    def backward(self, gy):
        x = self.inputs[0]
        w = self.inputs[1].data if len(self.inputs) > 1 else None
        gx, gw = K.rms_norm_backward(gy.data, x.data, w, self.rstd)
        return (Tensor(gx), Tensor(gw)) if w is not None else Tensor(gx)


# ------------------------------------------------------------------------------------------------------ lookup, masks
class Embedding(Function):
    """y = weight[ids]; weight (V, C), ids (...) int -> (..., C). Backward scatter-adds rows (repeats add up)."""

    def forward(self, weight):
        return weight.take(self.ids, axis=0)

    def backward(self, gy):
        w = self.inputs[0]
        if _GradMode.enabled:
            return ScatterAdd.apply(gy, index=self.ids, shape=w.shape, basic=False)
        C = w.shape[-1]
        return Tensor(K.embedding_backward(self.ids.reshape(-1), gy.data.reshape(-1, C), w.shape[0]))


class Dropout(Function):
    """y = x * mask with mask = keep / (1 - p) (inverted dropout); the mask (param) is kept for backward."""

    def forward(self, x):
        return x * self.mask

    def backward(self, gy):
        if not _GradMode.enabled:
            return Tensor(gy.data * self.mask)
        return gy * Tensor(self.mask)


# ------------------------------------------------------------------------------------------------------ linear
class Linear(Function):
    """y = x @ w.T + b; x (..., in), w (out, in) (PyTorch / GPT-2 layout), b (out,) optional -> (..., out).

    The leading axes are folded into one so each product is a single 2-D GEMM (no batched weight gradient to sum).

    ``compute_dtype`` (autocast, e.g. float16): x and w are cast inside the op and the product runs in that dtype;
    the output has that dtype. Backward hands each input its gradient in the input's own dtype straight from the
    GEMM (cuBLAS float32 output for float32 master weights: no float16 weight gradient and no cast node), and the
    bias gradient is one column sum. Same values as ``Linear(x.astype(cd), w.astype(cd), b.astype(cd))`` followed
    by the astype backward casts, with fewer passes and launches."""

    compute_dtype = None

    def forward(self, x, w, *b):
        cd = self.compute_dtype
        if cd is not None:
            x = x if x.dtype == cd else x.astype(cd)
            w = w if w.dtype == cd else w.astype(cd)
            self.xc, self.wc = x, w           # what backward's GEMMs read (the cast copies, as astype nodes kept)
        x2 = x.reshape(-1, x.shape[-1])
        y = K.matmul(x2, w.T)
        if b:
            y += b[0]                          # a float32 bias is added in float32 and rounded once into y
        return y.reshape(x.shape[:-1] + (w.shape[0],))

    def backward(self, gy):
        x, w = self.inputs[0], self.inputs[1]
        has_b = len(self.inputs) > 2
        need = self.needs_input_grad
        cd = self.compute_dtype
        if not _GradMode.enabled:
            xa, wa = (self.xc, self.wc) if cd is not None else (x.data, w.data)
            g2 = gy.data.reshape(-1, w.shape[0])
            if cd is not None and g2.dtype != cd:
                g2 = g2.astype(cd)
            gx = gw = gb = None
            if need[0]:
                gx = K.matmul(g2, wa, out_dtype=None if x.dtype == g2.dtype else x.dtype)
                gx = Tensor(gx.reshape(x.shape))
            if need[1]:
                gw = Tensor(K.matmul(g2.T, xa.reshape(-1, x.shape[-1]),
                                     out_dtype=None if w.dtype == g2.dtype else w.dtype))
            out = (gx, gw)
            if has_b:
                if need[2]:
                    bdt = self.inputs[2].dtype
                    if type(g2) is np.ndarray:
                        gb = g2.sum(axis=0)
                        gb = gb if gb.dtype == bdt else gb.astype(bdt)
                    else:
                        gb = K.colsum(g2, out_dtype=bdt)
                    gb = Tensor(gb)
                out += (gb,)
            return out
        if cd is not None:   # create_graph: the composed ops (casts included), differentiable again
            g2 = reshape(gy, (-1, w.shape[0]))
            g2 = g2 if g2.dtype == cd else g2.astype(cd)
            gx = reshape(g2 @ w.astype(cd), x.shape).astype(x.dtype) if need[0] else None
            gw = (g2.T @ reshape(x.astype(cd), (-1, x.shape[-1]))).astype(w.dtype) if need[1] else None
            out = (gx, gw)
            if has_b:
                out += (g2.sum(axis=0).astype(self.inputs[2].dtype) if need[2] else None,)
            return out
        g2 = reshape(gy, (-1, w.shape[0]))
        gx = reshape(g2 @ w, x.shape) if need[0] else None
        gw = g2.T @ reshape(x, (-1, x.shape[-1])) if need[1] else None
        out = (gx, gw)
        if has_b:
            out += (g2.sum(axis=0) if need[2] else None,)
        return out


# ------------------------------------------------------------------------------------------------------ attention
class Attention(Function):
    """o = softmax(q k^T * scale + causal mask) v in one op; q (B, H, Tq, D), k, v (B, H, Tk, D) -> (B, H, Tq, D).

    On CuPy only q, k, v, o and the per-row log-sum-exp are saved and backward recomputes the probabilities
    (flash-attention's recipe; the CUDA kernel never holds a (Tq, Tk) matrix). On NumPy the (B, H, Tq, Tk)
    probabilities are saved instead, as eager PyTorch's math path does: CPU memory is cheap and recomputing
    q k^T would cost a third more time. First-order fused op."""
    differentiable_twice = False
    save_outputs = True

    def forward(self, q, k, v):
        if _save_on_cpu(q, q.size // q.shape[-1] * k.shape[-2]):
            o, self.lse, self.p = K.attention_probs_forward(q, k, v, self.causal, self.scale)
        else:
            o, self.lse = K.attention_forward(q, k, v, self.causal, self.scale)
            self.p = None
        return o

    def backward(self, do):
        q, k, v = self.inputs
        o = self._out_arrays[0]
        if self.p is not None:
            dq, dk, dv = K.attention_probs_backward(q.data, k.data, v.data, o, self.p, do.data, self.scale)
        else:
            dq, dk, dv = K.attention_backward(q.data, k.data, v.data, o, self.lse, do.data, self.causal, self.scale)
        need = self.needs_input_grad
        return (Tensor(dq) if need[0] else None, Tensor(dk) if need[1] else None, Tensor(dv) if need[2] else None)


# ------------------------------------------------------------------------------------------------------ head layout
class SplitHeads(Function):
    """qkv (B, T, (H + 2K) D) -> q (B, H, T, D), k (B, K, T, D), v (B, K, T, D).

    One op for the reshape + transpose + split (three ops and their backward before). Backward writes d(qkv) with
    one strided copy per gradient (no concatenate, no transposed copy). Params: n_head, n_kv_heads, head_dim,
    contiguous. ``contiguous=False``: strided views of qkv (the node keeps qkv alive anyway, so copies add a second
    (B, T, 3C) activation per layer: +0.9 GB for GPT-2 at 8 x 1024 in float32; the GEMM attention reads views).
    ``contiguous=True``: C-contiguous heads, for the flash kernel (it reads contiguous rows; else it copies q, k, v
    in its forward AND again in its backward); with K == H all three come from ONE copy into a (3, B, H, T, D)
    buffer.
    """

    contiguous = False

    def forward(self, x):
        b, t, _ = x.shape
        h, kv, d = self.n_head, self.n_kv_heads, self.head_dim
        if self.contiguous:
            xp = backend.xp_of(x)
            if h == kv:
                buf = xp.ascontiguousarray(x.reshape(b, t, 3, h, d).transpose(2, 0, 3, 1, 4))
                return buf[0], buf[1], buf[2]
            xt = x.reshape(b, t, h + 2 * kv, d).transpose(0, 2, 1, 3)
            return (xp.ascontiguousarray(xt[:, :h]), xp.ascontiguousarray(xt[:, h:h + kv]),
                    xp.ascontiguousarray(xt[:, h + kv:]))
        xt = x.reshape(b, t, h + 2 * kv, d).transpose(0, 2, 1, 3)
        return xt[:, :h], xt[:, h:h + kv], xt[:, h + kv:]

    def backward(self, dq, dk, dv):
        x = self.inputs[0]
        b, t, c = x.shape
        h, kv, d = self.n_head, self.n_kv_heads, self.head_dim
        if not _GradMode.enabled:
            xp = backend.xp_of(dq.data)
            g = xp.empty((b, t, h + 2 * kv, d), dtype=x.dtype)
            gt = g.transpose(0, 2, 1, 3)
            gt[:, :h] = dq.data
            gt[:, h:h + kv] = dk.data
            gt[:, h + kv:] = dv.data
            return Tensor(g.reshape(b, t, c))
        return concatenate([dq, dk, dv], axis=1).transpose(0, 2, 1, 3).reshape(b, t, c)


class MergeHeads(Function):
    """y (B, H, T, D) -> (B, T, H D), C-contiguous: the transpose + reshape copy in one op; backward hands the
    attention op a contiguous (B, H, T, D) gradient (its kernels read contiguous rows)."""

    def forward(self, y):
        xp = backend.xp_of(y)
        b, h, t, d = y.shape
        return xp.ascontiguousarray(y.transpose(0, 2, 1, 3)).reshape(b, t, h * d)

    def backward(self, g):
        b, h, t, d = self.inputs[0].shape
        if not _GradMode.enabled:
            xp = backend.xp_of(g.data)
            return Tensor(xp.ascontiguousarray(g.data.reshape(b, t, h, d).transpose(0, 2, 1, 3)))
        return g.reshape(b, t, h, d).transpose(0, 2, 1, 3)
