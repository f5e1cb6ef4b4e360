"""Losses composed from primitive ops (their gradients are those ops' gradients, and they differentiate twice):
mse_loss, l1_loss, nll_loss, binary_cross_entropy, binary_cross_entropy_with_logits, and the cross-entropy paths
the fused op does not cover: label smoothing and probability (soft) targets.

Layout: the class axis is the LAST axis, (N, C) or (B, T, C), as everywhere in this engine (PyTorch puts it at
axis 1 for inputs with more than two axes). ``reduction`` is 'mean', 'sum' or 'none' (per-element losses). A
mean over class-index targets counts the targets that are not ``ignore_index``; when every target is ignored the
loss is 0 (PyTorch: nan), as in ``F.cross_entropy``.
"""
from __future__ import annotations

import numpy as np

from .. import backend, dtypes
from ..tensor import Tensor, as_tensor
from .activation import LogSigmoid
from .index import gather, integer_array


def _reduce(op: str, losses: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return losses.mean()
    if reduction == "sum":
        return losses.sum()
    if reduction == "none":
        return losses
    raise ValueError(f"{op}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _same_shape(op: str, x: Tensor, target: Tensor) -> None:
    if x.shape != target.shape:
        raise ValueError(f"{op}: input of shape {x.shape} and target of shape {target.shape} must have one shape")


def mse_loss(input: Tensor, target, reduction: str = "mean") -> Tensor:
    """(input - target)**2, reduced; input and target of one shape."""
    x, t = as_tensor(input), as_tensor(target)
    _same_shape("mse_loss", x, t)
    d = x - t
    return _reduce("mse_loss", d * d, reduction)


def l1_loss(input: Tensor, target, reduction: str = "mean") -> Tensor:
    """|input - target|, reduced; input and target of one shape."""
    x, t = as_tensor(input), as_tensor(target)
    _same_shape("l1_loss", x, t)
    return _reduce("l1_loss", (x - t).abs(), reduction)


def _class_targets(op: str, scores: Tensor, target):
    """Integer targets (...,) matching scores (..., C), as an array on scores' device."""
    t = integer_array(op, target, scores, "targets (class indices)")
    if scores.ndim < 1 or t.shape != scores.shape[:-1]:
        raise ValueError(f"{op}: targets of shape {t.shape} do not match input of shape {scores.shape} "
                         f"(expected targets of shape {scores.shape[:-1]}; classes on the last axis)")
    return t


def _masked_mean(op: str, losses: Tensor, valid, reduction: str, weights=None) -> Tensor:
    """Reduce per-target losses (already 0 at ignored targets); a mean divides by the summed weights (count)."""
    if reduction != "mean":
        return _reduce(op, losses, reduction)
    xp = backend.xp_of(valid)
    w = valid.astype(losses.dtype) if weights is None else weights
    total = w.sum()
    return losses.sum() / Tensor(xp.where(total == 0, 1, total).astype(losses.dtype))


def nll_loss(log_probs: Tensor, target, weight=None, ignore_index: int = -100, reduction: str = "mean") -> Tensor:
    """-log_probs[..., target], optionally weighted per class (``weight`` (C,)); log_probs (..., C), target (...,).
    The weighted mean divides by the summed weights of the targets, as PyTorch."""
    lp = as_tensor(log_probs)
    t = _class_targets("nll_loss", lp, target)
    xp = backend.xp_of(t)
    valid = t != ignore_index
    safe = xp.where(valid, t, 0)
    if type(t) is np.ndarray and t.size and ((safe < 0) | (safe >= lp.shape[-1])).any():
        raise IndexError(f"nll_loss: a target is out of range [0, {lp.shape[-1]}) (ignore_index={ignore_index})")
    picked = gather(lp, -1, safe[..., None]).reshape(t.shape)
    w = valid.astype(lp.dtype)
    if weight is not None:
        cw = weight.data if isinstance(weight, Tensor) else xp.asarray(weight, dtype=lp.dtype)
        if cw.shape != (lp.shape[-1],):
            raise ValueError(f"nll_loss: weight must have shape ({lp.shape[-1]},), got {cw.shape}")
        w = w * cw[safe]
    return _masked_mean("nll_loss", -picked * Tensor(w), valid, reduction, weights=w)


def binary_cross_entropy(input: Tensor, target, weight=None, reduction: str = "mean") -> Tensor:
    """-(t log p + (1 - t) log(1 - p)) for probabilities p = ``input``; each log is clamped at -100 (PyTorch's
    guard, so p = 0 or 1 gives a finite loss)."""
    p, t = as_tensor(input), as_tensor(target)
    _same_shape("binary_cross_entropy", p, t)
    log_p = p.log().clip(-100.0, None)
    log_q = (1.0 - p).log().clip(-100.0, None)
    losses = -(t * log_p + (1.0 - t) * log_q)
    return _reduce("binary_cross_entropy", losses if weight is None else losses * weight, reduction)


def binary_cross_entropy_with_logits(input: Tensor, target, weight=None, pos_weight=None,
                                     reduction: str = "mean") -> Tensor:
    """binary_cross_entropy(sigmoid(x), t), stable for any x: (1 - t) x - (1 + (pos_weight - 1) t) logsigmoid(x)."""
    x, t = as_tensor(input), as_tensor(target)
    _same_shape("binary_cross_entropy_with_logits", x, t)
    log_sig = LogSigmoid.apply(x)
    scale = 1.0 if pos_weight is None else (pos_weight - 1.0) * t + 1.0
    losses = (1.0 - t) * x - log_sig * scale
    return _reduce("binary_cross_entropy_with_logits", losses if weight is None else losses * weight, reduction)


def is_probability_target(target, logits: Tensor) -> bool:
    """True for float targets of the logits' shape: class probabilities (..., C), not class indices."""
    dtype = getattr(target, "dtype", None)
    return dtype is not None and dtypes.is_float(dtype) and tuple(target.shape) == logits.shape


def cross_entropy_composed(logits: Tensor, target, ignore_index: int = -100, reduction: str = "mean",
                           label_smoothing: float = 0.0) -> Tensor:
    """Softmax cross-entropy with PyTorch's label smoothing and probability targets, composed.

    Class-index targets (...,): (1 - s) nll + s mean_c(-log p_c) per target (s = ``label_smoothing``).
    Probability targets (..., C), same shape as logits: -sum_c q_c log p_c with q = (1 - s) target + s / C; the mean
    is over all rows (``ignore_index`` does not apply)."""
    x = as_tensor(logits)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    if x.ndim < 1:
        raise ValueError(f"cross_entropy: logits need a class axis, got shape {x.shape}")
    log_p = x - x.logsumexp(axis=-1, keepdims=True)
    n_classes = x.shape[-1]
    if is_probability_target(target, x):
        q = as_tensor(target)
        if label_smoothing:
            q = q * (1.0 - label_smoothing) + label_smoothing / n_classes
        return _reduce("cross_entropy", -(q * log_p).sum(axis=-1), reduction)
    t = _class_targets("cross_entropy", x, target)
    xp = backend.xp_of(t)
    valid = t != ignore_index
    safe = xp.where(valid, t, 0)
    mask = Tensor(valid.astype(log_p.dtype))
    nll = -gather(log_p, -1, safe[..., None]).reshape(t.shape)
    per_target = (nll * (1.0 - label_smoothing) - log_p.mean(axis=-1) * label_smoothing) * mask
    return _masked_mean("cross_entropy", per_target, valid, reduction)
