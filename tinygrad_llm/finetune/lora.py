"""LoRA (low-rank adaptation, Hu et al. 2021; the book's appendix E): train a small update B·A beside frozen weights.

    report = apply_lora(model, rank=8, alpha=16)      # qkv, proj, fc, gate, up Linears -> LoRALinear; rest frozen
    print(report)                                     # LoRA: 24 layers, trainable 294,912 of 124,734,720 (0.24%)
    ... train: only lora_A / lora_B get gradients and updates ...
    merge_lora(model)                                 # W += (alpha/r) (A B)^T; LoRALinear -> Linear again

A ``LoRALinear`` is a Linear (a subclass: every layer that calls a Linear, or its bias-free ``project``, runs the
update without knowing about it). It keeps the wrapped Linear's own ``weight`` and ``bias`` Parameter objects (so
parameter names, tied weights and checkpoints of the base are unchanged) and adds ``lora_A`` (in, r) and ``lora_B``
(r, out):

    y = x W^T + b + (alpha / r) * (x A) B          x (..., in) -> y (..., out)

B starts at zero, so a freshly wrapped model computes exactly what it computed before. A starts as the book's
``kaiming_uniform_(A, a=sqrt(5))`` on an (in, r) matrix, i.e. U(-1/sqrt(r), 1/sqrt(r)) (PyTorch takes fan_in from
the second axis).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from autograd import Tensor, amp, backend
from autograd import functional as F

from ..nn.layers import Linear
from ..nn.module import Module
from ..nn.parameter import Parameter, as_generator

__all__ = ["LoRALinear", "lora_linear", "apply_lora", "merge_lora", "lora_parameters", "LoRAReport", "DEFAULT_TARGETS"]

DEFAULT_TARGETS = ("qkv", "proj", "fc", "gate", "up")   # attention and MLP projections of every family


def lora_linear(x: Tensor, weight: Tensor, bias: Tensor | None, lora_A: Tensor, lora_B: Tensor,
                scale: float) -> Tensor:
    """x W^T + b + scale (x A) B: x (..., in), W (out, in), b (out,), A (in, r), B (r, out) -> (..., out)."""
    return F.linear(x, weight, bias) + ((x @ lora_A) @ lora_B) * scale


class LoRALinear(Linear):
    """A Linear plus a trainable low-rank update: x (..., in) -> (..., out). See the module docstring.

    ``weight`` (out, in) and ``bias`` (out,) are the wrapped layer's Parameters (frozen by ``apply_lora``);
    ``lora_A`` (in, rank), ``lora_B`` (rank, out); ``scale = alpha / rank``.
    """

    def __init__(self, base: Linear, rank: int, alpha: float, rng=None):
        Module.__init__(self)   # not Linear.__init__: the base's Parameters are reused, nothing is allocated
        if not isinstance(base, Linear):
            raise TypeError(f"LoRALinear wraps a Linear, got {type(base).__name__}")
        if int(rank) < 1:
            raise ValueError(f"LoRALinear: rank must be >= 1, got {rank}")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank, self.alpha = int(rank), float(alpha)
        self.scale = self.alpha / self.rank
        self.weight = base.weight
        self.bias = base.bias
        dt, dev = base.weight.dtype, base.weight.device
        bound = 1.0 / math.sqrt(self.rank)
        a = as_generator(rng).uniform(-bound, bound, size=(self.in_features, self.rank)).astype(dt)
        self.lora_A = Parameter(backend.to_device(a, dev))
        self.lora_B = Parameter(backend.to_device(np.zeros((self.rank, self.out_features), dtype=dt), dev))

    def forward(self, x) -> Tensor:
        return lora_linear(self._checked(x), self.weight, self.bias, self.lora_A, self.lora_B, self.scale)

    def project(self, x) -> Tensor:
        """The update without the bias (see ``Linear.project``)."""
        return lora_linear(self._checked(x), self.weight, None, self.lora_A, self.lora_B, self.scale)

    def _checked(self, x) -> Tensor:
        x = x if isinstance(x, Tensor) else Tensor(x)
        if x.shape[-1] != self.in_features:
            raise ValueError(f"LoRALinear({self.in_features}, {self.out_features}): input's last axis has "
                             f"{x.shape[-1]} features (input shape {x.shape})")
        return x

    def delta_weight(self):
        """The update folded into ``weight`` by merging: scale * (A B)^T, an (out, in) array."""
        return (self.lora_A.data @ self.lora_B.data).T * self.scale

    def merged(self) -> Linear:
        """A plain Linear holding W + scale (A B)^T (the same weight/bias Parameter objects, updated in place)."""
        self.weight.data += self.delta_weight().astype(self.weight.dtype, copy=False)
        amp.refresh_shadows(self.weight)    # its low-precision copies (autocast) follow the merged values
        lin = Linear.__new__(Linear)
        Module.__init__(lin)
        lin.in_features, lin.out_features = self.in_features, self.out_features
        lin.weight, lin.bias = self.weight, self.bias
        return lin

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"rank={self.rank}, alpha={self.alpha}")


@dataclass
class LoRAReport:
    """What ``apply_lora`` did: the wrapped layers' names and the parameter counts after freezing."""
    replaced: list[str] = field(default_factory=list)
    trainable: int = 0
    total: int = 0

    def __str__(self) -> str:
        pct = 100.0 * self.trainable / max(self.total, 1)
        return (f"LoRA: {len(self.replaced)} layers, trainable {self.trainable:,} of {self.total:,} parameters "
                f"({pct:.2f}%)")


def _matches(name: str, targets) -> bool:
    if targets == "all":
        return True
    return any(name == t or name.endswith("." + t) for t in targets)


def apply_lora(model: Module, rank: int = 8, alpha: float = 16.0, target: Iterable[str] | str = DEFAULT_TARGETS,
               freeze: bool = True, keep_trainable: Iterable[str] = (), seed: int | None = 0) -> LoRAReport:
    """Swap ``model``'s Linear layers named in ``target`` for LoRALinear layers, in place.

    target: names matched against each Linear's dotted path by its last parts: ``"qkv"``, ``"proj"`` (both the
        attention and the MLP output projections), ``"fc"``, ``"attn.proj"``, ``"lm_head"``, ``"head"`` (a
        classifier's head) ... or ``"all"`` for every Linear. GPT's tied ``lm_head`` is skipped unless named.
    freeze: set ``requires_grad=False`` on every parameter except the LoRA ones and those whose name starts with
        one of ``keep_trainable`` (e.g. ``("head",)`` to also train a new classification head fully).
    Returns a ``LoRAReport`` (wrapped layer names, trainable and total parameter counts).
    """
    targets = target if target == "all" else tuple([target] if isinstance(target, str) else target)
    rng = np.random.default_rng(seed)
    report = LoRAReport()
    for mod_name, parent in list(model.named_modules()):
        for attr, child in list(parent._modules.items()):
            full = f"{mod_name}.{attr}" if mod_name else attr
            if not isinstance(child, Linear) or isinstance(child, LoRALinear) or not _matches(full, targets):
                continue
            if targets == "all" and attr == "lm_head" and model_has_tied_head(model, child):
                continue
            parent._modules[attr] = LoRALinear(child, rank, alpha, rng)   # same slot: parameter order is kept
            report.replaced.append(full)
    if not report.replaced:
        raise ValueError(f"apply_lora: no Linear layer matches target {target!r} "
                         f"(Linear layers: {[n for n, m in model.named_modules() if isinstance(m, Linear)][:6]} ...)")
    if freeze:
        keep = tuple(keep_trainable)
        for name, p in model.named_parameters():
            p.requires_grad = name.rsplit(".", 1)[-1] in ("lora_A", "lora_B") or (bool(keep) and name.startswith(keep))
    report.trainable = model.num_parameters(trainable_only=True)
    report.total = model.num_parameters()
    return report


def model_has_tied_head(model: Module, layer: Linear) -> bool:
    emb = getattr(model, "tok_emb", None) or getattr(getattr(model, "gpt", None), "tok_emb", None)
    return emb is not None and emb.weight is layer.weight


def lora_parameters(model: Module) -> list[tuple[str, Parameter]]:
    """(name, parameter) of every LoRA matrix in ``model``."""
    return [(n, p) for n, p in model.named_parameters() if n.rsplit(".", 1)[-1] in ("lora_A", "lora_B")]


def merge_lora(model: Module, unfreeze: bool = False) -> Module:
    """Fold every LoRALinear's update into its base weight and put plain Linear layers back, in place; returns
    ``model``, whose parameter names are then those of the original model (ready for ``save_pretrained`` or a
    checkpoint). ``unfreeze`` sets ``requires_grad=True`` on every parameter afterwards."""
    for _, parent in list(model.named_modules()):
        for attr, child in list(parent._modules.items()):
            if isinstance(child, LoRALinear):
                parent._modules[attr] = child.merged()
    if unfreeze:
        model.requires_grad_(True)
    return model
