"""The KV cache of generation: each attention layer's keys and values, preallocated and filled in place.

Inference only: the cached arrays carry no graph, so gradients do not flow through earlier positions. Every layer
keeps all positions, sliding-window layers included (their mask hides the keys that left the window).
"""
from __future__ import annotations

import numpy as np

from autograd import backend

__all__ = ["LayerKVCache", "KVCache"]


class LayerKVCache:
    """Keys and values of one attention layer, (B, K, max_len, D) each; ``length`` positions are filled."""

    def __init__(self, batch_size: int, n_kv_heads: int, max_len: int, head_dim: int, dtype=np.float32,
                 device: str = "cpu"):
        xp = backend.get_xp(device)
        shape = (batch_size, n_kv_heads, max_len, head_dim)
        with backend.device_scope(device):
            self.k = xp.zeros(shape, dtype=dtype)
            self.v = xp.zeros(shape, dtype=dtype)
        self.length = 0
        self.max_len = max_len

    def append(self, k, v):
        """Write k, v (B, K, T, D arrays) at the current end; return views of all cached keys and values."""
        t = k.shape[2]
        if self.length + t > self.max_len:
            raise ValueError(f"KV cache full: {self.length} cached + {t} new positions > max_len {self.max_len}")
        if k.shape[0] != self.k.shape[0]:
            raise ValueError(f"KV cache was made for batch size {self.k.shape[0]}, got {k.shape[0]}")
        self.k[:, :, self.length:self.length + t] = k
        self.v[:, :, self.length:self.length + t] = v
        self.length += t
        return self.k[:, :, :self.length], self.v[:, :, :self.length]


class KVCache:
    """The caches of all layers of a model, plus the number of positions already processed (``pos``)."""

    def __init__(self, n_layer: int, batch_size: int, n_kv_heads: int, max_len: int, head_dim: int,
                 dtype=np.float32, device: str = "cpu"):
        self.layers = [LayerKVCache(batch_size, n_kv_heads, max_len, head_dim, dtype, device)
                       for _ in range(n_layer)]
        self.max_len = max_len

    @property
    def pos(self) -> int:
        """How many positions are cached (the position of the next token)."""
        return self.layers[0].length if self.layers else 0

    def __getitem__(self, i: int) -> LayerKVCache:
        return self.layers[i]

    def __len__(self) -> int:
        return len(self.layers)
