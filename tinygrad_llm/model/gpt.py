"""GPT: token ids (B, T) -> logits (B, T, V), GPT-2 style or Llama style, read top to bottom as nanoGPT's model.py.

    idx (B, T) --tok_emb--> (B, T, C) [+ pos_emb] --drop--> blocks[0..L-1] --final_norm--> --lm_head--> (B, T, V)
"""
from __future__ import annotations

import math

import numpy as np

from autograd import Tensor, backend
from autograd import functional as F

from ..nn.attention import KVCache
from ..nn.layers import Dropout, Embedding, Linear
from ..nn.module import Module, ModuleList
from ..nn.parameter import normal_, ones_, skip_init, zeros_
from ..nn.transformer import TransformerBlock, make_norm
from .config import GPTConfig

__all__ = ["GPT"]


class GPT(Module):
    """A decoder-only transformer. ``GPT(cfg, seed=0, dtype=np.float32, device=None, init=True)``.

    Parameter names (stable: the GPT-2 weight loader maps Hugging Face names onto them), for block N:

        tok_emb.weight                  (V, C)          token embedding
        pos_emb.weight                  (ctx, C)        learned positions (absent with pos="rope")
        blocks.N.norm1.weight / .bias   (C,)            LayerNorm before attention (no .bias with RMSNorm/bias=False)
        blocks.N.attn.qkv.weight        ((H+2K)D, C)    fused q|k|v projection, PyTorch (out, in) layout
        blocks.N.attn.qkv.bias          ((H+2K)D,)      when qkv_bias
        blocks.N.attn.proj.weight       (C, C)          attention output projection (+ .bias when bias)
        blocks.N.norm2.weight / .bias   (C,)
        blocks.N.ffn.fc.weight / .bias  (4C, C), (4C,)  GELU MLP in  (mlp="gelu")
        blocks.N.ffn.proj.weight / .bias (C, 4C), (C,)  GELU MLP out
        blocks.N.ffn.gate/.up/.proj.weight              SwiGLU MLP (mlp="swiglu": proj(silu(gate x) * up x))
        final_norm.weight / .bias       (C,)
        lm_head.weight                  (V, C)          no bias; with tie_weights it IS tok_emb.weight (the same
                                                        Parameter, listed once, under tok_emb.weight)

    GPT-2 mapping (Hugging Face -> here): wte -> tok_emb, wpe -> pos_emb, h.N.ln_1 -> blocks.N.norm1,
    h.N.attn.c_attn -> blocks.N.attn.qkv, h.N.attn.c_proj -> blocks.N.attn.proj, h.N.ln_2 -> blocks.N.norm2,
    h.N.mlp.c_fc -> blocks.N.ffn.fc, h.N.mlp.c_proj -> blocks.N.ffn.proj, ln_f -> final_norm; HF's Conv1D weights
    are (in, out): transpose them.

    Initialisation (GPT-2 / nanoGPT), from ``numpy.random.default_rng(seed)`` in ``named_parameters()`` order:
    weights N(0, 0.02), the residual projections (``attn.proj.weight``, ``ffn.proj.weight``) N(0, 0.02/sqrt(2L)),
    biases 0, norm weights 1. ``init=False`` leaves every parameter at zero (for loaders that overwrite them).
    Dropout layers get distinct seeds derived from ``seed``, so training runs repeat exactly.

    Calling: ``model(idx)`` -> logits (B, T, V); ``model(idx, targets)`` -> (logits, loss) where loss is the mean
    cross-entropy over targets != -100; ``model.loss(idx, targets)`` -> loss only. ``idx`` is an int array
    (NumPy/CuPy), a list or an int Tensor, moved to the model's device when needed.
    """

    def __init__(self, cfg: GPTConfig, seed: int | None = 0, dtype=np.float32, device: str | None = None,
                 init: bool = True):
        super().__init__()
        if not isinstance(cfg, GPTConfig):
            raise TypeError(f"GPT needs a GPTConfig, got {type(cfg).__name__} (try GPTConfig.preset('tiny'))")
        if np.dtype(dtype).kind != "f":
            raise TypeError(f"GPT: dtype must be floating point, got {np.dtype(dtype)}")
        self.config = cfg
        self.seed = seed
        base = int(np.random.SeedSequence(seed).generate_state(1)[0]) if seed is not None else None
        drop_seed = (lambda i: None) if base is None else (lambda i: base + i)
        c = cfg.n_embd
        with skip_init():  # layers allocate zeros; init_weights below draws every value once
            self.tok_emb = Embedding(cfg.vocab_size, c, dtype=dtype)
            if cfg.pos == "learned":
                self.pos_emb = Embedding(cfg.context_length, c, dtype=dtype)
            self.drop = Dropout(cfg.dropout, seed=drop_seed(0))
            self.blocks = ModuleList([
                TransformerBlock(c, cfg.n_head, cfg.n_kv_heads, cfg.context_length, cfg.dropout, cfg.qkv_bias,
                                 cfg.bias, cfg.norm, cfg.norm_eps, cfg.mlp, cfg.ffn_hidden, cfg.pos == "rope",
                                 cfg.rope_theta, dtype, seed=drop_seed(1 + 4 * i))
                for i in range(cfg.n_layer)])
            self.final_norm = make_norm(cfg.norm, c, cfg.norm_eps, cfg.bias, dtype)
            self.lm_head = Linear(c, cfg.vocab_size, bias=False, dtype=dtype)
        if cfg.tie_weights:
            self.lm_head.weight = self.tok_emb.weight
        if init:
            self.init_weights(seed)
        for name, p in self.named_parameters():
            p.name = name
        if device is not None:
            self.to(device)

    def init_weights(self, seed: int | None = 0) -> None:
        """(Re)draw every parameter with the GPT-2 scheme (see the class docstring)."""
        rng = np.random.default_rng(seed)
        resid_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, p in self.named_parameters():
            if name.endswith(".bias"):
                zeros_(p)
            elif p.ndim == 1:  # LayerNorm / RMSNorm gains
                ones_(p)
            elif name.endswith(("attn.proj.weight", "ffn.proj.weight")):
                normal_(p, resid_std, rng)
            else:
                normal_(p, 0.02, rng)

    # ------------------------------------------------------------------ forward
    def _check_idx(self, idx, start: int):
        data = idx.data if isinstance(idx, Tensor) else idx
        if not hasattr(data, "dtype"):
            data = np.asarray(data)
        if data.dtype.kind not in "iu":
            raise TypeError(f"GPT: token ids must be integers, got dtype {data.dtype}")
        if data.ndim == 1:
            data = data[None, :]
        if data.ndim != 2 or data.shape[1] == 0:
            raise ValueError(f"GPT: expected token ids of shape (B, T) with T >= 1, got {tuple(data.shape)}")
        ctx = self.config.context_length
        if start + data.shape[1] > ctx:
            cached = f" after {start} cached positions" if start else ""
            raise ValueError(f"GPT: a sequence of {data.shape[1]} tokens{cached} exceeds context_length {ctx}; "
                             f"crop it to the last {ctx - start} tokens (tl.generate crops for you)")
        dev = self.device
        if backend.device_of(data) != dev:
            data = backend.to_device(data, dev)
        return data

    def forward_hidden(self, idx, cache: KVCache | None = None) -> Tensor:
        """The final-normed hidden states (B, T, C), before the LM head (classification heads start here)."""
        start = cache.pos if cache is not None else 0
        idx = self._check_idx(idx, start)
        t = idx.shape[1]
        x = self.tok_emb(idx)
        if self.config.pos == "learned":
            x = x + self.pos_emb.weight[start:start + t]
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, cache=cache[i] if cache is not None else None)
        return self.final_norm(x)

    def forward(self, idx, targets=None, cache: KVCache | None = None, last_only: bool = False,
                ignore_index: int = -100):
        """idx (B, T) -> logits (B, T, V), or (logits, loss) when ``targets`` (B, T) is given.

        ``cache``: a ``KVCache`` from ``new_cache`` (inference): idx holds the positions after the cached ones.
        ``last_only``: compute the head only at the last position (logits (B, 1, V)), as generation needs.
        """
        x = self.forward_hidden(idx, cache)
        if last_only:
            x = x[:, -1:]
        logits = self.lm_head(x)
        if targets is None:
            return logits
        return logits, self._loss(logits, targets, ignore_index)

    def loss(self, idx, targets, ignore_index: int = -100) -> Tensor:
        """Mean cross-entropy of next-token predictions: idx, targets (B, T) -> scalar Tensor."""
        return self._loss(self.forward(idx), targets, ignore_index)

    def _loss(self, logits: Tensor, targets, ignore_index: int) -> Tensor:
        t = targets.data if isinstance(targets, Tensor) else targets
        if not hasattr(t, "dtype"):
            t = np.asarray(t)
        if t.ndim == 1 and logits.shape[0] == 1:
            t = t[None, :]
        if tuple(t.shape) != tuple(logits.shape[:2]):
            raise ValueError(f"GPT: targets of shape {tuple(t.shape)} do not match logits {logits.shape[:2]}")
        if backend.device_of(t) != logits.device:
            t = backend.to_device(t, logits.device)
        return F.cross_entropy(logits, t, ignore_index=ignore_index)

    # ------------------------------------------------------------------ inference helpers
    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty KV cache for ``batch_size`` sequences of up to ``max_len`` (default context_length) tokens."""
        cfg = self.config
        max_len = cfg.context_length if max_len is None else min(int(max_len), cfg.context_length)
        return KVCache(cfg.n_layer, batch_size, cfg.kv_heads, max_len, cfg.head_dim, self.dtype, self.device)

    def extra_repr(self) -> str:
        c = self.config
        return (f"n_layer={c.n_layer}, n_head={c.n_head}, n_embd={c.n_embd}, vocab_size={c.vocab_size}, "
                f"context_length={c.context_length}, params={self.num_parameters():,}")
