"""The KV cache of generation: each attention layer's keys and values, preallocated and filled in place.

Inference only: the cached arrays carry no graph, so gradients do not flow through earlier positions. A full
attention layer keeps every position; a sliding-window layer of width W keeps the last W only, in a ring: position
p lives in slot p % W, so its memory does not grow with the sequence.
"""
from __future__ import annotations

import numpy as np

from autograd import backend

__all__ = ["LayerKVCache", "KVCache"]


class LayerKVCache:
    """Keys and values of one attention layer, (B, K, slots, D) each, slots = max_len, or ``window`` for a
    sliding-window layer (a ring); ``length`` positions have been appended."""

    def __init__(self, batch_size: int, n_kv_heads: int, max_len: int, head_dim: int, dtype=np.float32,
                 device: str = "cpu", window: int | None = None):
        xp = backend.get_xp(device)
        self.slots = max_len if window is None else min(int(window), max_len)
        shape = (batch_size, n_kv_heads, self.slots, head_dim)
        with backend.device_scope(device):
            self.k = xp.zeros(shape, dtype=dtype)
            self.v = xp.zeros(shape, dtype=dtype)
        self.length = 0
        self.max_len = max_len

    def append(self, k, v):
        """Store k, v (B, K, T, D arrays) for the next T positions; return (keys, values, first): the keys and
        values of positions first .. length-1, oldest first, where first = 0 unless a ring dropped older ones.
        (One new position in a full ring: the whole ring, whose order does not matter to a query that sees all.)"""
        start, t = self.length, k.shape[2]
        if start + t > self.max_len:
            raise ValueError(f"KV cache full: {start} cached + {t} new positions > max_len {self.max_len}")
        if k.shape[0] != self.k.shape[0]:
            raise ValueError(f"KV cache was made for batch size {self.k.shape[0]}, got {k.shape[0]}")
        self.length = start + t
        w = self.slots
        if start + t <= w:                                   # no slot reused yet: positions are slots
            self.k[:, :, start:start + t] = k
            self.v[:, :, start:start + t] = v
            return self.k[:, :, :start + t], self.v[:, :, :start + t], 0
        xp = backend.xp_of(k)
        if t == 1:                                           # overwrite the one position that left the window
            self.k[:, :, start % w] = k[:, :, 0]
            self.v[:, :, start % w] = v[:, :, 0]
            return self.k, self.v, start + 1 - w
        kept = min(start, w - 1)                             # older positions still in the first query's window
        slots = xp.arange(start - kept, start) % w
        keys = xp.concatenate([self.k[:, :, slots], k], axis=2)
        values = xp.concatenate([self.v[:, :, slots], v], axis=2)
        last = xp.arange(start + t - w, start + t)           # the ring keeps the newest w positions
        self.k[:, :, last % w] = keys[:, :, -w:]
        self.v[:, :, last % w] = values[:, :, -w:]
        return keys, values, start - kept


class KVCache:
    """The caches of all layers of a model, plus the number of positions already processed (``pos``)."""

    def __init__(self, n_layer: int, batch_size: int, n_kv_heads: int, max_len: int, head_dim: int,
                 dtype=np.float32, device: str = "cpu", windows: list | None = None):
        """``windows``: each layer's sliding window (None: full attention, the default for every layer)."""
        windows = [None] * n_layer if windows is None else list(windows)
        self.layers = [LayerKVCache(batch_size, n_kv_heads, max_len, head_dim, dtype, device, w) for w in windows]
        self.max_len = max_len

    @property
    def pos(self) -> int:
        """How many positions are cached (the position of the next token)."""
        return self.layers[0].length if self.layers else 0

    def __getitem__(self, i: int) -> LayerKVCache:
        return self.layers[i]

    def __len__(self) -> int:
        return len(self.layers)
