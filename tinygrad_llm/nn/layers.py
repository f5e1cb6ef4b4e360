"""Basic layers: Linear, Embedding, LayerNorm, RMSNorm, Dropout, GELU, SiLU.

Every layer computes through the fused Functions of ``autograd.functional`` (one graph node, hand-derived backward)
where one exists. Shapes follow PyTorch: Linear's weight is (out_features, in_features).
"""
from __future__ import annotations

import numpy as np

from autograd import Tensor
from autograd import functional as F

from .module import Module
from .parameter import Parameter, init_enabled, kaiming_uniform_linear_, normal_, as_generator

__all__ = ["Linear", "Embedding", "LayerNorm", "RMSNorm", "Dropout", "GELU", "SiLU", "Identity"]


def _as_tensor(x) -> Tensor:
    return x if isinstance(x, Tensor) else Tensor(x)


class Linear(Module):
    """y = x W^T + b. x (..., in_features) -> y (..., out_features); weight (out, in), bias (out,) or None.

    Initialisation (PyTorch's default): weight and bias ~ U(-1/sqrt(in), 1/sqrt(in)) from ``rng`` (a Generator,
    seed or None). GPT re-initialises its layers with the GPT-2 scheme.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype=np.float32, rng=None):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.weight = Parameter(np.zeros((out_features, in_features), dtype=dtype))
        self.bias = Parameter(np.zeros((out_features,), dtype=dtype)) if bias else None
        if init_enabled():
            rng = as_generator(rng)
            kaiming_uniform_linear_(self.weight, in_features, rng)
            if self.bias is not None:
                kaiming_uniform_linear_(self.bias, in_features, rng)

    def forward(self, x) -> Tensor:
        x = _as_tensor(x)
        if x.shape[-1] != self.in_features:
            raise ValueError(f"Linear({self.in_features}, {self.out_features}): input's last axis has "
                             f"{x.shape[-1]} features, expected {self.in_features} (input shape {x.shape})")
        return F.linear(x, self.weight, self.bias)

    def project(self, x) -> Tensor:
        """x W^T without the bias, for callers that fuse the bias into the next op (GPT-2's MLP: F.bias_gelu).
        Subclasses that change the product (LoRA) override both this and ``forward``."""
        return F.linear(_as_tensor(x), self.weight, None)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Embedding(Module):
    """Rows of a (num_embeddings, embedding_dim) table: idx (...) int -> (..., embedding_dim). Init N(0, 1)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype=np.float32, rng=None):
        super().__init__()
        self.num_embeddings, self.embedding_dim = int(num_embeddings), int(embedding_dim)
        self.weight = Parameter(np.zeros((num_embeddings, embedding_dim), dtype=dtype))
        if init_enabled():
            normal_(self.weight, 1.0, as_generator(rng))

    def forward(self, idx) -> Tensor:
        # F.embedding checks the dtype and (on the CPU) the range, and moves the ids to the weight's device
        return F.embedding(idx, self.weight)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}"


class LayerNorm(Module):
    """(x - mean) / sqrt(var + eps) * weight + bias over the last axis (fused). x (..., C) -> (..., C)."""

    def __init__(self, normalized_shape: int, eps: float = 1e-5, bias: bool = True, dtype=np.float32):
        super().__init__()
        self.normalized_shape, self.eps = int(normalized_shape), float(eps)
        self.weight = Parameter(np.ones((normalized_shape,), dtype=dtype))
        self.bias = Parameter(np.zeros((normalized_shape,), dtype=dtype)) if bias else None

    def forward(self, x) -> Tensor:
        return F.layer_norm(_as_tensor(x), self.weight, self.bias, eps=self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, bias={self.bias is not None}"


class RMSNorm(Module):
    """x / sqrt(mean(x^2) + eps) * weight over the last axis (fused), as in Llama. x (..., C) -> (..., C).

    ``unit_offset=True`` (Gemma): the gain is (1 + weight) and the weight starts at 0."""

    def __init__(self, normalized_shape: int, eps: float = 1e-5, dtype=np.float32, unit_offset: bool = False):
        super().__init__()
        self.normalized_shape, self.eps, self.unit_offset = int(normalized_shape), float(eps), bool(unit_offset)
        self.weight = Parameter((np.zeros if unit_offset else np.ones)((normalized_shape,), dtype=dtype))

    def gain(self) -> Tensor:
        """The (C,) factor the normalised x is multiplied by: weight, or 1 + weight with ``unit_offset``."""
        return self.weight + 1.0 if self.unit_offset else self.weight

    def forward(self, x) -> Tensor:
        return F.rms_norm(_as_tensor(x), self.gain(), eps=self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}" + (", unit_offset=True" if self.unit_offset else "")


class Dropout(Module):
    """Zero each element with probability p and scale the rest by 1/(1-p) in training mode; identity in eval mode
    or when p == 0. The mask comes from this layer's own generator, seeded by ``seed``: two layers built with the
    same seed drop the same elements, call after call."""

    def __init__(self, p: float = 0.0, seed: int | None = None):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p = float(p)
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def reseed(self, seed: int | None) -> None:
        """Restart the mask sequence from ``seed``."""
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    @property
    def active(self) -> bool:
        return self.training and self.p > 0.0

    def forward(self, x) -> Tensor:
        x = _as_tensor(x)
        if not self.active:
            return x
        return F.dropout(x, self.p, training=True, rng=self.rng)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class GELU(Module):
    """GELU, tanh approximation (GPT-2's), fused."""

    def forward(self, x) -> Tensor:
        return F.gelu(_as_tensor(x))


class SiLU(Module):
    """SiLU / swish: x * sigmoid(x), fused."""

    def forward(self, x) -> Tensor:
        return F.silu(_as_tensor(x))


class Identity(Module):
    def forward(self, x):
        return x
