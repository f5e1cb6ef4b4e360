"""The one-token decode step of generation replayed from a CUDA graph (GPT-2-style models on a GPU).

    decode = graph_decoder(model, cache)          # None when the model or device does not allow it
    logits = decode(ids)                          # ids (B, 1) the newest tokens -> logits (B, 1, V); cache.pos += 1

A decode step with the eager KV cache attends to ``cache.pos + 1`` keys, so its shapes change every token. Here
the step always attends to the whole preallocated cache (B, K, max_len, D) with an additive mask that is 0 for
positions <= pos and -inf after, and the position lives in a device scalar: the same kernels on the same addresses
every token, so the step is captured once per cache and replayed. It writes the new key and value at the device
position (a scatter), reads the position embedding row at it (a gather) and runs the model's own modules for
everything else (norms, projections, MLP, head). The prompt is still run eagerly (``model(..., cache=cache)``).

Where it applies: CuPy parameters, learned positions (GPT-2), no q/k norms, no sliding windows, no mixture of
experts, no embedding scale; else ``graph_decoder`` returns None and generation stays eager.
"""
from __future__ import annotations

import numpy as np

from autograd import Tensor, backend
from autograd import functional as F

__all__ = ["graph_decoder", "decode_unsupported_reason"]


def decode_unsupported_reason(model) -> str | None:
    """None when ``graph_decoder`` can capture this model's decode step, else why not."""
    from autograd.cuda.graph import graphs_enabled
    cfg = getattr(model, "config", None)
    if cfg is None or backend.cupy_module() is None or not graphs_enabled():
        return "no GPU, or CUDA graphs switched off"
    if not all(backend.is_cupy_array(p.data) for p in model.parameters()):
        return "the parameters are not on a GPU"
    if cfg.pos != "learned" or cfg.qk_norm or cfg.post_norms or cfg.n_experts or cfg.embed_scale:
        return "only GPT-2-style blocks (learned positions, no q/k norms, post norms, experts or embedding scale)"
    if any(getattr(b.attn, "window", None) for b in model.blocks):
        return "sliding-window attention"
    return None


class _Decoder:
    def __init__(self, model, cache):
        cp = backend.cupy_module()
        self.model, self.cache = model, cache
        b = cache.layers[0].k.shape[0]
        self.ids = cp.zeros((b, 1), np.int64)
        self.pos = cp.zeros((1,), np.int64)
        self.graph = None
        self.logits = None

    def _region(self):
        cp = backend.cupy_module()
        m, cache = self.model, self.cache
        max_len = cache.max_len
        x = m.tok_emb(self.ids) + Tensor(m.pos_emb.weight.data[self.pos])          # (B, 1, C) + (1, C)
        x = m.drop(x)
        keys = cp.arange(max_len)
        bias = cp.where(keys <= self.pos, 0.0, -np.inf).astype(cache.layers[0].k.dtype).reshape(1, 1, 1, max_len)
        for blk, layer in zip(m.blocks, cache.layers):
            a = blk.attn
            q, k, v = F.split_heads(a.qkv(blk.norm1(x)), a.n_head, a.n_kv_heads)   # (B, H|K, 1, D)
            layer.k[:, :, self.pos] = k.data
            layer.v[:, :, self.pos] = v.data
            y = F.scaled_dot_product_attention(q, Tensor(layer.k), Tensor(layer.v), attn_mask=bias,
                                               scale=a.scale, enable_gqa=True)
            x = x + a.resid_drop(a.proj(F.merge_heads(y)))
            x = x + blk.ffn(blk.norm2(x))
        return m.soft_cap(m.lm_head(m.final_norm(x)))

    def __call__(self, ids) -> Tensor:
        from autograd.cuda.graph import CUDAGraph, copy_into
        from autograd.grad_mode import no_grad
        pos = self.cache.pos
        if pos >= self.cache.max_len:
            raise ValueError(f"KV cache full: {pos} positions cached, max_len {self.cache.max_len}")
        copy_into(self.ids, ids.data if isinstance(ids, Tensor) else ids)
        self.pos.set(np.array([pos], np.int64))
        with no_grad():
            if self.graph is None:
                self._region()                       # warm-up: writes position pos, which the replay rewrites
                g = CUDAGraph(name="decode step")
                with g.capture():
                    self.logits = self._region()
                self.graph = g
            self.graph.replay()
        for layer in self.cache.layers:
            layer.length += 1
        return self.logits


def graph_decoder(model, cache):
    """A callable ``decode(ids (B, 1)) -> logits (B, 1, V)`` replaying the captured decode step against ``cache``
    (a ``KVCache`` whose prompt is already in it), or None where ``decode_unsupported_reason`` says no. The logits
    Tensor is the same every call (overwritten by the next)."""
    if cache is None or decode_unsupported_reason(model) is not None:
        return None
    return _Decoder(model, cache)
