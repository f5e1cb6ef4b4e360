"""Attention head layouts: the fused qkv projection into heads and back.

    split_heads: qkv (B, T, (H + 2K) D) -> q (B, H, T, D), k (B, K, T, D), v (B, K, T, D)
    merge_heads: y (B, H, T, D) -> (B, T, H D), C-contiguous

Each is a reshape + transpose (+ split) in one node whose backward writes the other layout with one strided copy
per gradient (no concatenate, no transposed copy). ``split_heads_reference`` / ``merge_heads_reference`` compose
them from reshape, transpose and slicing.

``SplitHeads(contiguous=False)`` gives strided views of qkv: the node keeps qkv alive anyway, so copies would add a
second (B, T, 3C) activation per layer (the GEMM attention reads views). ``contiguous=True`` gives C-contiguous
heads, for the flash kernel (it reads contiguous rows, else it copies q, k, v in its forward AND its backward);
with K == H all three come from ONE copy into a (3, B, H, T, D) buffer.
"""
from __future__ import annotations

from ... import backend
from ...tensor import Tensor
from .base import FusedFunction


# ------------------------------------------------------------------------------------------------ composed references
def split_heads_reference(qkv: Tensor, n_head: int, n_kv_heads: int, head_dim: int) -> tuple[Tensor, Tensor, Tensor]:
    b, t, _ = qkv.shape
    x = qkv.reshape(b, t, n_head + 2 * n_kv_heads, head_dim).transpose(0, 2, 1, 3)
    return x[:, :n_head], x[:, n_head:n_head + n_kv_heads], x[:, n_head + n_kv_heads:]


def merge_heads_reference(y: Tensor) -> Tensor:
    b, h, t, d = y.shape
    return y.transpose(0, 2, 1, 3).reshape(b, t, h * d)


# ------------------------------------------------------------------------------------------------ the fused ops
class SplitHeads(FusedFunction):
    """qkv (B, T, (H + 2K) D) -> q, k, v heads in one node."""
    rule = "d split_heads: the three head gradients written back into one (B, T, (H + 2K) D) gradient"
    params = ("n_head", "n_kv_heads", "head_dim", "contiguous")
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

    def backward_arrays(self, dq, dk, dv):
        x = self.inputs[0]
        b, t, c = x.shape
        h, kv, d = self.n_head, self.n_kv_heads, self.head_dim
        g = backend.xp_of(dq.data).empty((b, t, h + 2 * kv, d), dtype=x.dtype)
        gt = g.transpose(0, 2, 1, 3)
        gt[:, :h] = dq.data
        gt[:, h:h + kv] = dk.data
        gt[:, h + kv:] = dv.data
        return Tensor(g.reshape(b, t, c))

    def reference(self, x):
        return split_heads_reference(x, self.n_head, self.n_kv_heads, self.head_dim)


class MergeHeads(FusedFunction):
    """y (B, H, T, D) -> (B, T, H D) in one node; backward hands attention a contiguous (B, H, T, D) gradient."""
    rule = "d merge_heads: the gradient reshaped to (B, T, H, D) and transposed back to (B, H, T, D)"

    def forward(self, y):
        b, h, t, d = y.shape
        return backend.xp_of(y).ascontiguousarray(y.transpose(0, 2, 1, 3)).reshape(b, t, h * d)

    def backward_arrays(self, g):
        b, h, t, d = self.inputs[0].shape
        return Tensor(backend.xp_of(g.data).ascontiguousarray(g.data.reshape(b, t, h, d).transpose(0, 2, 1, 3)))

    def reference(self, y):
        return merge_heads_reference(y)
