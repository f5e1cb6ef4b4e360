"""User-facing neural-network functions: ``from autograd import functional as F``.

Activations, softmax family, cross-entropy, normalisations, embedding, dropout, masking, linear and attention.
The heavy ones are fused ops (``autograd/ops/fused/``, one file each): one node with a hand-derived backward, its
NumPy code, and its CUDA kernel on the GPU. ``fused=False`` returns the same computation composed from primitive
ops instead (the reference each fused op is tested against). Every op here is differentiable any number of times:
under ``create_graph=True`` a fused op differentiates its composed reference.

Shapes: B batch, T positions, C features, V vocabulary, H heads, D head size.
"""
from __future__ import annotations

import math

import numpy as np

from . import amp as _amp
from . import backend, dtypes
from .checkpoint import note_rng
from .grad_mode import _GradMode
from .ops import axes as _axes
from .ops import elementwise as _ew
from .ops.index import integer_array
from .ops.fused import add_norm as _add_norm
from .ops.fused import attention as _attention
from .ops.fused import cross_entropy as _cross_entropy
from .ops.fused import dropout as _dropout
from .ops.fused import embedding as _embedding
from .ops.fused import gelu as _gelu
from .ops.fused import heads as _heads
from .ops.fused import layer_norm as _layer_norm
from .ops.fused import linear as _linear
from .ops.fused import linear_cross_entropy as _lce
from .ops.fused import rms_norm as _rms_norm
from .ops.fused import softmax as _softmax
from .tensor import Tensor

__all__ = [
    "relu", "gelu", "silu", "sigmoid", "tanh", "bias_gelu", "softmax", "log_softmax", "cross_entropy", "layer_norm",
    "rms_norm", "add_layer_norm", "add_rms_norm", "embedding", "dropout", "masked_fill",
    "scaled_dot_product_attention", "linear",
    "split_heads", "merge_heads", "linear_cross_entropy", "soft_cap",
]


def _t(x) -> Tensor:
    return x if isinstance(x, Tensor) else Tensor(x)


def _check_axis(op: str, axis: int, ndim: int) -> int:
    return _axes.normalize_axis(op, axis, (1,) * ndim)


# ------------------------------------------------------------------------------------------------------ activations
def relu(x: Tensor) -> Tensor:
    """max(x, 0), elementwise."""
    return _ew.Relu.apply(_t(x))


def gelu(x: Tensor, approximate: str = "tanh", fused: bool = True) -> Tensor:
    """GELU. ``approximate='tanh'`` (GPT-2): one fused op (``fused=False``: composed from tanh and arithmetic);
    ``'none'``: the exact x * Phi(x) (erf), a primitive op."""
    if approximate == "tanh":
        return _gelu.GeluTanh.apply(_t(x)) if fused else _gelu.gelu_reference(_t(x))
    if approximate == "none":
        return _ew.Gelu.apply(_t(x))
    raise ValueError(f"gelu: approximate must be 'tanh' or 'none', got {approximate!r}")


def silu(x: Tensor) -> Tensor:
    """x * sigmoid(x) (SwiGLU's gate)."""
    return _ew.Silu.apply(_t(x))


def sigmoid(x: Tensor) -> Tensor:
    return _ew.Sigmoid.apply(_t(x))


def tanh(x: Tensor) -> Tensor:
    return _ew.Tanh.apply(_t(x))


def bias_gelu(x: Tensor, b: Tensor, fused: bool = True) -> Tensor:
    """gelu(x + b) (tanh form) in one op; x (..., C), b (C,). Used by the feed-forward after a bias-free matmul."""
    x, b = _t(x), _t(b)
    if b.ndim != 1 or x.ndim < 1 or b.shape[0] != x.shape[-1]:
        raise ValueError(f"bias_gelu: bias must have shape ({x.shape[-1] if x.ndim else '?'},) to match x of shape "
                         f"{x.shape}, got {b.shape}")
    if b.dtype != x.dtype and _amp.autocast_dtype() is not None:
        b = b.astype(x.dtype)  # float16 activations under autocast: keep the bias from promoting them to float32
    return _gelu.BiasGelu.apply(x, b) if fused else _gelu.bias_gelu_reference(x, b)


# ------------------------------------------------------------------------------------------------------ softmax family
def softmax(x: Tensor, axis: int = -1, fused: bool = True) -> Tensor:
    """exp(x) / sum(exp(x)) over ``axis``, stable (max subtracted), float32 statistics for float16 inputs."""
    x = _t(x)
    axis = _check_axis("softmax", axis, x.ndim)
    if x.ndim == 0:  # PyTorch accepts a 0-d tensor: its softmax is 1
        return softmax(x.reshape(1), 0, fused).reshape(())
    return _softmax.Softmax.apply(x, axis=axis) if fused else _softmax.softmax_reference(x, axis)


def log_softmax(x: Tensor, axis: int = -1, fused: bool = True) -> Tensor:
    """x - logsumexp(x) over ``axis``, stable."""
    x = _t(x)
    axis = _check_axis("log_softmax", axis, x.ndim)
    if x.ndim == 0:
        return log_softmax(x.reshape(1), 0, fused).reshape(())
    return _softmax.LogSoftmax.apply(x, axis=axis) if fused else _softmax.log_softmax_reference(x, axis)


def cross_entropy(logits: Tensor, targets, ignore_index: int = -100, reduction: str = "mean",
                  fused: bool = True, label_smoothing: float = 0.0) -> Tensor:
    """Softmax cross-entropy of ``logits`` (N, V) or (B, T, V) against integer ``targets`` (N,) or (B, T).

    ``reduction='mean'`` averages over targets that are not ``ignore_index``; if every target is ignored the loss
    is 0 with a zero gradient (PyTorch gives NaN; 0 keeps an all-padding micro-batch harmless). ``'sum'`` sums them,
    ``'none'`` returns the per-target losses (0 at ignored ones) with ``targets``' shape. One fused op: logsumexp
    based, the backward writes softmax - onehot into a single (N, V) array.
    """
    logits = _t(logits)
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"cross_entropy: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if label_smoothing or _loss.is_probability_target(targets, logits):  # composed: see ops/loss.py
        return _loss.cross_entropy_composed(logits, targets, ignore_index, reduction, label_smoothing)
    if logits.ndim < 2:
        raise ValueError(f"cross_entropy: logits must be (N, V) or (B, T, V), got shape {logits.shape}")
    t = _class_targets("cross_entropy", targets, logits, logits.shape, ignore_index, reduction != "none")
    if not fused:
        return _cross_entropy.cross_entropy_reference(logits, t, ignore_index, reduction)
    return _cross_entropy.CrossEntropy.apply(logits, targets=t, ignore_index=ignore_index, reduction=reduction)


def _class_targets(op: str, targets, like: Tensor, logits_shape: tuple, ignore_index: int, flat_ok: bool):
    """Integer targets of shape ``logits_shape[:-1]`` on ``like``'s device (flat ones reshaped when ``flat_ok``);
    a clear error for other shapes and, on the CPU, for classes outside [0, V)."""
    t = integer_array(op, targets, like, "targets (class indices)")
    lead, V = tuple(logits_shape[:-1]), logits_shape[-1]
    if t.shape != lead:
        if t.ndim == 1 and t.size == math.prod(lead) and flat_ok:
            t = t.reshape(lead)
        else:
            raise ValueError(f"{op}: targets of shape {t.shape} do not match logits of shape "
                             f"{tuple(logits_shape)} (expected targets of shape {lead})")
    if type(t) is np.ndarray and t.size:  # on the GPU this check would cost a host sync per step: skipped there
        bad = (t != ignore_index) & ((t < 0) | (t >= V))
        if bad.any():
            raise ValueError(f"{op}: target {int(t[bad][0])} is out of range [0, {V}) (ignore_index={ignore_index})")
    return t


def soft_cap(x: Tensor, cap: float | None) -> Tensor:
    """cap tanh(x / cap), the soft cap Gemma applies to its final logits; x unchanged for cap None."""
    return _lce.soft_cap_reference(_t(x), cap)


def linear_cross_entropy(x: Tensor, weight: Tensor, targets, bias: Tensor | None = None, ignore_index: int = -100,
                         reduction: str = "mean", softcap: float | None = None, chunk_size: int | None = None,
                         fused: bool = True) -> Tensor:
    """``cross_entropy(soft_cap(linear(x, weight, bias), softcap), targets)`` without the logits: x (..., C), weight
    (V, C) (a language model's head, tied to the embedding or not), bias (V,) or None, targets (...,) integers.

    One op that walks the rows in chunks of ``chunk_size`` (default: about 256 MiB of float32 logits each), so
    the (N, V) float32 logits and their gradient never exist whole (``ops/fused/linear_cross_entropy.py``).
    ``reduction``: 'mean' (over targets != ignore_index; 0 when all are ignored) or 'sum'. Under autocast the
    products run in its dtype, as ``linear``'s do, and the loss accumulates in float32."""
    x, weight = _t(x), _t(weight)
    if weight.ndim != 2 or x.ndim < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"linear_cross_entropy: x of shape {x.shape} does not fit weight of shape {weight.shape} "
                         "(expected x (..., C) and weight (V, C))")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"linear_cross_entropy: reduction must be 'mean' or 'sum', got {reduction!r} (per-target "
                         "losses: cross_entropy on the logits)")
    if softcap is not None and not softcap > 0:
        raise ValueError(f"linear_cross_entropy: softcap must be a positive number or None, got {softcap!r}")
    if chunk_size is not None and (int(chunk_size) != chunk_size or chunk_size < 1):
        raise ValueError(f"linear_cross_entropy: chunk_size must be a positive integer or None, got {chunk_size!r}")
    V = weight.shape[0]
    if bias is not None:
        bias = _t(bias)
        if bias.shape != (V,):
            raise ValueError(f"linear_cross_entropy: bias must have shape ({V},) for weight {weight.shape}, "
                             f"got {bias.shape}")
    t = _class_targets("linear_cross_entropy", targets, x, x.shape[:-1] + (V,), ignore_index, True)
    compute_dtype = _compute_dtype(weight)
    if not fused:
        return _lce.linear_cross_entropy_reference(x, weight, bias, t, ignore_index, reduction, softcap,
                                                   compute_dtype)
    ins = (x, weight) if bias is None else (x, weight, bias)
    grads = tuple(_GradMode.enabled and i.requires_grad for i in ins)
    return _lce.LinearCrossEntropy.apply(*ins, targets=t, ignore_index=ignore_index, reduction=reduction,
                                         softcap=None if softcap is None else float(softcap),
                                         compute_dtype=compute_dtype, chunk_size=chunk_size, grads=grads)


# ------------------------------------------------------------------------------------------------------ norms
def _check_param(op: str, name: str, p: Tensor, x: Tensor) -> None:
    if p.shape != (x.shape[-1],):
        raise ValueError(f"{op}: {name} must have shape ({x.shape[-1]},) to match x of shape {x.shape}, got {p.shape}")


def layer_norm(x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-5,
               fused: bool = True) -> Tensor:
    """(x - mean) / sqrt(var + eps) * weight + bias over the last axis; x (..., C), weight and bias (C,) or None.
    Statistics in float32 at least (``fused=False``: in x's dtype)."""
    x = _t(x)
    ins = [x]
    if weight is not None:
        weight = _t(weight)
        _check_param("layer_norm", "weight", weight, x)
        ins.append(weight)
    if bias is not None:
        bias = _t(bias)
        _check_param("layer_norm", "bias", bias, x)
        ins.append(bias)
    if not fused:
        return _layer_norm.layer_norm_reference(x, weight, bias, float(eps))
    return _layer_norm.LayerNorm.apply(*ins, has_w=weight is not None, has_b=bias is not None, eps=float(eps))


def rms_norm(x: Tensor, weight: Tensor | None = None, eps: float = 1e-6, fused: bool = True) -> Tensor:
    """x / sqrt(mean(x**2) + eps) * weight over the last axis; x (..., C), weight (C,) or None."""
    x = _t(x)
    if weight is not None:
        weight = _t(weight)
        _check_param("rms_norm", "weight", weight, x)
    if not fused:
        return _rms_norm.rms_norm_reference(x, weight, float(eps))
    ins = (x,) if weight is None else (x, weight)
    return _rms_norm.RMSNorm.apply(*ins, eps=float(eps))


def _residual_operands(op: str, x, r, **params) -> tuple:
    """x, r and the given parameters as Tensors (None stays None), checked: x and r floating and broadcastable,
    each parameter of shape (C,) for the C of x + r."""
    x, r = _t(x), _t(r)
    try:
        shape = np.broadcast_shapes(x.shape, r.shape)
    except ValueError:
        raise ValueError(f"{op}: residual x {x.shape} and branch output r {r.shape} do not broadcast") from None
    if not (dtypes.is_float(x.dtype) and dtypes.is_float(r.dtype)):
        raise TypeError(f"{op}: x and r must be floating, got {x.dtype} and {r.dtype}")
    out = [x, r]
    for name, p in params.items():
        if p is not None:
            p = _t(p)
            if not shape or p.shape != (shape[-1],):
                raise ValueError(f"{op}: {name} must have shape ({shape[-1] if shape else ''},) to match x + r of "
                                 f"shape {shape}, got {p.shape}")
        out.append(p)
    return tuple(out)


def add_layer_norm(x: Tensor, r: Tensor, weight: Tensor | None = None, bias: Tensor | None = None,
                   eps: float = 1e-5, fused: bool = True) -> tuple[Tensor, Tensor]:
    """(s, y): the residual stream s = x + r and y = layer_norm(s, weight, bias), in one op (one kernel each way
    on the GPU). x, r (..., C), broadcasting as x + r; weight and bias (C,) or None."""
    x, r, weight, bias = _residual_operands("add_layer_norm", x, r, weight=weight, bias=bias)
    if not fused:
        return _add_norm.add_layer_norm_reference(x, r, weight, bias, float(eps))
    ins = [t for t in (x, r, weight, bias) if t is not None]
    return _add_norm.AddLayerNorm.apply(*ins, has_w=weight is not None, has_b=bias is not None, eps=float(eps))


def add_rms_norm(x: Tensor, r: Tensor, weight: Tensor | None = None, eps: float = 1e-6,
                 fused: bool = True) -> tuple[Tensor, Tensor]:
    """(s, y): the residual stream s = x + r and y = rms_norm(s, weight), in one op. x, r (..., C), broadcasting
    as x + r; weight (C,) or None."""
    x, r, weight = _residual_operands("add_rms_norm", x, r, weight=weight)
    if not fused:
        return _add_norm.add_rms_norm_reference(x, r, weight, float(eps))
    ins = (x, r) if weight is None else (x, r, weight)
    return _add_norm.AddRMSNorm.apply(*ins, eps=float(eps))


# ------------------------------------------------------------------------------------------------------ embedding
def embedding(ids, weight: Tensor, fused: bool = True) -> Tensor:
    """Rows of ``weight`` (V, C) picked by integer ``ids`` (B, T) -> (B, T, C). Backward scatter-adds rows, so a
    repeated id collects the sum of its gradients. Out-of-range ids raise on the CPU (on the GPU the check would
    cost a host sync per call, so it is skipped)."""
    weight = _t(weight)
    if weight.ndim != 2:
        raise ValueError(f"embedding: weight must be 2-D (num_embeddings, dim), got shape {weight.shape}")
    ids = integer_array("embedding", ids, weight, "ids (token indices)")
    if type(ids) is np.ndarray and ids.size:
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= weight.shape[0]:
            raise IndexError(f"embedding: id {lo if lo < 0 else hi} is out of range [0, {weight.shape[0]}) for "
                             f"weight of shape {weight.shape}")
    if not fused:
        return _embedding.embedding_reference(ids, weight)
    return _embedding.Embedding.apply(weight, ids=ids)


# ------------------------------------------------------------------------------------------------------ dropout
_default_rng = np.random.default_rng()


def _keep_mask(shape, p: float, rng, like):
    """Boolean keep-mask (True with probability 1 - p) on ``like``'s device.

    NumPy: drawn from ``rng`` (a ``numpy.random.Generator``; a module default when None). CuPy: a counter-based
    Philox generator with its state in device memory (``autograd/cuda/philox.py``), seeded once from ``rng`` (one
    draw) and kept for that Generator, so a freshly seeded rng reproduces the masks and a CUDA graph draws a new
    mask at every replay.
    """
    r = rng if rng is not None else _default_rng
    if type(like) is np.ndarray:
        note_rng(r)                              # activation checkpointing replays this draw
        return r.random(shape, dtype=np.float32) >= p
    from .cuda.philox import generator_for
    gen = generator_for(r)
    note_rng(gen)
    return gen.keep_mask(shape, p)


def dropout(x: Tensor, p: float, training: bool = True, rng: np.random.Generator | None = None) -> Tensor:
    """Inverted dropout: zero each element with probability ``p`` and scale the rest by 1/(1-p); identity when
    ``p == 0`` or not ``training``. The mask is saved for backward; pass a seeded ``numpy.random.Generator`` for
    reproducible masks (see ``_keep_mask`` for CuPy)."""
    x = _t(x)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be in [0, 1], got {p}")
    if p == 0.0 or not training:
        return x
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise TypeError(f"dropout: rng must be a numpy.random.Generator (np.random.default_rng(seed)), "
                        f"got {type(rng).__name__}")
    keep = _keep_mask(x.shape, p, rng, x.data)
    scale = 0.0 if p == 1.0 else 1.0 / (1.0 - p)
    mask = keep.astype(x.dtype)
    mask *= x.dtype.type(scale)
    return _dropout.Dropout.apply(x, mask=mask)


# ------------------------------------------------------------------------------------------------------ masking
def masked_fill(x: Tensor, mask, value: float) -> Tensor:
    """``value`` where the boolean ``mask`` (broadcastable to x) is True, else x; no gradient flows where masked."""
    x = _t(x)
    m = mask.data if isinstance(mask, Tensor) else mask
    if not hasattr(m, "dtype"):
        m = np.asarray(m)
    if m.dtype != bool:
        raise TypeError(f"masked_fill: mask must be boolean, got dtype {m.dtype}")
    try:
        shape = np.broadcast_shapes(m.shape, x.shape)
    except ValueError:
        raise ValueError(f"masked_fill: mask of shape {m.shape} does not broadcast with x of shape {x.shape}") from None
    if shape != x.shape:
        raise ValueError(f"masked_fill: mask of shape {m.shape} would grow x of shape {x.shape} to {shape}")
    if backend.device_of(m) != x.device:
        m = backend.to_device(m, x.device)
    return _ew.Where.apply(float(value), x, cond=m)


# ------------------------------------------------------------------------------------------------------ linear
def _compute_dtype(weight: Tensor):
    """The dtype a product with ``weight`` computes in: autocast's when it is on and differs from the weight's
    (mixed precision: compute in float16 inside the op, keep float32 master weights; backward gives each input its
    gradient in its own dtype, the GEMMs write float32 weight gradients directly), else None."""
    amp_dtype = _amp.autocast_dtype()
    if amp_dtype is not None and weight.dtype != amp_dtype and dtypes.is_float(weight.dtype):
        return amp_dtype
    return None


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, fused: bool = True) -> Tensor:
    """x @ weight.T + bias; x (..., in), weight (out, in) as PyTorch and GPT-2 checkpoints store it (HF's Conv1D
    weights are (in, out): transpose them when loading), bias (out,) or None -> (..., out)."""
    x, weight = _t(x), _t(weight)
    if weight.ndim != 2 or x.ndim < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"linear: x of shape {x.shape} does not fit weight of shape {weight.shape} "
                         "(expected x (..., in) and weight (out, in))")
    compute_dtype = _compute_dtype(weight)
    if bias is not None:
        bias = _t(bias)
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"linear: bias must have shape ({weight.shape[0]},) for weight {weight.shape}, "
                             f"got {bias.shape}")
    if not fused:
        return _linear.linear_reference(x, weight, bias, compute_dtype)
    ins = (x, weight) if bias is None else (x, weight, bias)
    return _linear.Linear.apply(*ins, compute_dtype=compute_dtype)


# ------------------------------------------------------------------------------------------------------ attention
def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, attn_mask=None, dropout_p: float = 0.0,
                                 is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False,
                                 rng: np.random.Generator | None = None, fused: bool = True) -> Tensor:
    """softmax(q k^T * scale + mask) v, PyTorch's signature. q (B, H, Tq, D), k and v (B, Hk, Tk, D) -> (B, H, Tq, D).

    ``attn_mask``: boolean (True = may attend) or additive float, broadcastable to (B, H, Tq, Tk); a float mask that
    requires grad gets its gradient through the composed path. ``is_causal``: query i attends to keys
    j <= i + (Tk - Tq), so with a KV cache (Tq < Tk) the last query sees all keys; needs Tq <= Tk. ``scale``
    defaults to 1/sqrt(D). ``dropout_p > 0`` (attention dropout; pass 0 in eval) drops probabilities with ``rng``
    (a ``numpy.random.Generator``) on the composed path. ``enable_gqa``: Hk may divide H (grouped-query attention);
    each k/v head serves H/Hk query heads. Otherwise one fused op (``fused=False``: the composed reference).
    """
    q, k, v = _t(q), _t(k), _t(v)
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"scaled_dot_product_attention: q, k, v must be (B, H, T, D), got shapes {q.shape}, "
                         f"{k.shape}, {v.shape}")
    rep = 1
    if enable_gqa and k.shape == v.shape and k.shape[1] != q.shape[1] and q.shape[1] % max(k.shape[1], 1) == 0:
        rep = q.shape[1] // k.shape[1]    # the fused op reads each k/v head for its rep query heads in place
    if (k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[1] != k.shape[1] * rep
            or q.shape[3] != k.shape[3]):
        raise ValueError(f"scaled_dot_product_attention: shapes do not fit: q {q.shape}, k {k.shape}, v {v.shape} "
                         "(need q (B, H, Tq, D) and k, v (B, H, Tk, D); enable_gqa=True for fewer k/v heads)")
    tq, tk = q.shape[2], k.shape[2]
    if is_causal and tq > tk:
        raise ValueError(f"scaled_dot_product_attention: causal attention needs Tq <= Tk, got Tq={tq}, Tk={tk}")
    scale = 1.0 / math.sqrt(q.shape[3]) if scale is None else float(scale)
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"scaled_dot_product_attention: dropout_p must be in [0, 1), got {dropout_p}")
    mask = _attention.checked_mask(attn_mask, q, (q.shape[0], q.shape[1], tq, tk))
    in_kernel = dropout_p > 0.0 and fused and mask is None and _kernel_drops(q.data, k.data, v.data)
    if not fused or (dropout_p > 0.0 and not in_kernel) or (isinstance(mask, Tensor) and mask.requires_grad):
        if rep > 1:
            k, v = _attention.repeat_heads(k, rep), _attention.repeat_heads(v, rep)
        drop = (lambda p: dropout(p, dropout_p, training=True, rng=rng)) if dropout_p > 0.0 else None
        return _attention.attention_reference(q, k, v, mask, bool(is_causal), scale, dropout=drop)
    bias = None if mask is None else _attention.additive_mask(mask, q.dtype)
    state = _drop_state(dropout_p, rng, (q.shape[0], q.shape[1], tq, tk)) if in_kernel else None
    return _attention.Attention.apply(q, k, v, causal=bool(is_causal), scale=scale, bias=bias,
                                      dropout_p=float(dropout_p) if in_kernel else 0.0, drop_state=state)


def _kernel_drops(q, k, v) -> bool:
    """Whether the GPU attention kernels can drop probabilities themselves for these arrays."""
    from .cuda import kernel_for
    check = kernel_for("attention_supports_dropout", q)
    return check is not None and check(q, k, v)


def _drop_state(p: float, rng, shape):
    """The Philox state ([seed, offset], on the device) a dropout mask of ``shape`` is drawn from inside a kernel;
    the generator advances past the draw, as ``_keep_mask`` would."""
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise TypeError(f"dropout: rng must be a numpy.random.Generator (np.random.default_rng(seed)), "
                        f"got {type(rng).__name__}")
    from .cuda.philox import generator_for
    gen = generator_for(rng if rng is not None else _default_rng)
    note_rng(gen)
    return gen.reserve(int(np.prod(shape)))


# ------------------------------------------------------------------------------------------------------ head layout
def split_heads(qkv: Tensor, n_head: int, n_kv_heads: int | None = None, contiguous: bool = False,
                fused: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """qkv (B, T, (H + 2K) D) -> q (B, H, T, D), k (B, K, T, D), v (B, K, T, D), in one op: the same as reshape +
    transpose + split, and its backward writes d(qkv) directly. Strided views, or C-contiguous copies with
    ``contiguous=True`` (what the flash attention kernel reads; costs one more (B, T, 3C) activation)."""
    qkv = _t(qkv)
    kv = n_head if n_kv_heads is None else n_kv_heads
    if qkv.ndim != 3 or qkv.shape[-1] % (n_head + 2 * kv):
        raise ValueError(f"split_heads: expected (B, T, (n_head + 2 n_kv_heads) * D) with n_head {n_head}, "
                         f"n_kv_heads {kv}, got shape {qkv.shape}")
    d = qkv.shape[-1] // (n_head + 2 * kv)
    if not fused:
        return _heads.split_heads_reference(qkv, n_head, kv, d)
    return _heads.SplitHeads.apply(qkv, n_head=n_head, n_kv_heads=kv, head_dim=d, contiguous=bool(contiguous))


def merge_heads(y: Tensor, fused: bool = True) -> Tensor:
    """y (B, H, T, D) -> (B, T, H D) contiguous, in one op (transpose + reshape)."""
    y = _t(y)
    if y.ndim != 4:
        raise ValueError(f"merge_heads: expected (B, H, T, D), got shape {y.shape}")
    return _heads.MergeHeads.apply(y) if fused else _heads.merge_heads_reference(y)


# ------------------------------------------------------------------------------------------------------ more ops
from .ops import loss as _loss  # noqa: E402
from .ops.activation import elu, hardswish, leaky_relu, logsigmoid, mish, softplus  # noqa: E402,F401
from .ops.index import one_hot  # noqa: E402,F401
from .ops.loss import (binary_cross_entropy, binary_cross_entropy_with_logits, l1_loss, mse_loss,  # noqa: E402,F401
                       nll_loss)
from .ops.movement import pad  # noqa: E402,F401

softmax = _axes.torch_keywords(softmax)  # F.softmax(x, dim=-1) as in PyTorch
log_softmax = _axes.torch_keywords(log_softmax)

__all__ += ["elu", "hardswish", "leaky_relu", "logsigmoid", "mish", "softplus", "one_hot", "binary_cross_entropy",
            "binary_cross_entropy_with_logits", "l1_loss", "mse_loss", "nll_loss", "pad"]
