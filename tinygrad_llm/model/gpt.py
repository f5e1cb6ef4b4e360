"""GPT: token ids (B, T) -> logits (B, T, V). One decoder for every family (GPT-2, Llama 3, Qwen3, Qwen3-MoE,
Gemma 3), chosen by the config; read it top to bottom with blocks.py (Block, Attention, MLP, MoE).

    idx (B, T) --tok_emb--> (B, T, C) [* sqrt(C)] [+ pos_emb] --drop--> blocks[0..L-1] --final_norm-->
        --lm_head--> (B, T, V) [--soft-cap-->]

Parameter names (stable: checkpoints and the Hugging Face loaders map onto them). C = n_embd, D = head_dim,
H = n_head, K = kv_heads, F = ffn hidden, E = n_experts, V = vocab_size. Weights are (out, in), PyTorch's layout.

    every family
        tok_emb.weight                          (V, C)
        blocks.N.norm1.weight                   (C,)        before attention
        blocks.N.attn.qkv.weight                ((H+2K)D, C) rows [q heads | k heads | v heads]
        blocks.N.attn.proj.weight               (C, H D)    attention output
        blocks.N.norm2.weight                   (C,)        before the MLP
        final_norm.weight                       (C,)
        lm_head.weight                          (V, C)      absent from named_parameters()/state_dict() when tied:
                                                            with tie_weights it IS tok_emb.weight
    gpt2 (LayerNorm, learned positions, GELU MLP, biases)
        pos_emb.weight                          (ctx, C)
        blocks.N.norm1.bias, norm2.bias, final_norm.bias    (C,)
        blocks.N.attn.qkv.bias                  ((H+2K)D,)  when qkv_bias
        blocks.N.attn.proj.bias                 (C,)
        blocks.N.ffn.fc.weight / .bias          (F, C), (F,)
        blocks.N.ffn.proj.weight / .bias        (C, F), (C,)
    llama (RMSNorm, RoPE, gated MLP; no biases)
        blocks.N.ffn.gate.weight                (F, C)      silu(gate x) * up x
        blocks.N.ffn.up.weight                  (F, C)
        blocks.N.ffn.proj.weight                (C, F)      Hugging Face's down_proj
    qwen3 = llama + per-head q/k norms
        blocks.N.attn.q_norm.weight             (D,)
        blocks.N.attn.k_norm.weight             (D,)
    qwen3 with n_experts > 0 (Qwen3-MoE): blocks.N.ffn is a mixture of experts instead of an MLP
        blocks.N.ffn.router.weight              (E, C)      Hugging Face's mlp.gate
        blocks.N.ffn.experts.M.gate.weight      (moe_hidden, C)    for expert M = 0 .. E-1
        blocks.N.ffn.experts.M.up.weight        (moe_hidden, C)
        blocks.N.ffn.experts.M.proj.weight      (C, moe_hidden)    Hugging Face's down_proj
    gemma3 = qwen3's names (GeGLU MLP) + norms on the sublayer outputs; every norm weight w acts as (1 + w)
        blocks.N.post_attn_norm.weight          (C,)        Hugging Face's post_attention_layernorm
        blocks.N.post_ffn_norm.weight           (C,)        Hugging Face's post_feedforward_layernorm
        (norm2 is Gemma's pre_feedforward_layernorm; in Llama and Qwen, norm2 is post_attention_layernorm)

Hugging Face names -> here. GPT-2: wte -> tok_emb, wpe -> pos_emb, h.N.ln_1 -> blocks.N.norm1, h.N.attn.c_attn ->
blocks.N.attn.qkv, h.N.attn.c_proj -> blocks.N.attn.proj, h.N.ln_2 -> blocks.N.norm2, h.N.mlp.c_fc -> blocks.N.ffn.fc,
h.N.mlp.c_proj -> blocks.N.ffn.proj, ln_f -> final_norm (Conv1D weights are (in, out): transpose them). Llama, Qwen3,
Gemma 3: model.embed_tokens -> tok_emb, model.layers.N.input_layernorm -> blocks.N.norm1, self_attn.{q,k,v}_proj ->
attn.qkv (rows concatenated q, k, v), self_attn.o_proj -> attn.proj, self_attn.{q,k}_norm -> attn.{q,k}_norm,
mlp.{gate,up,down}_proj -> ffn.{gate,up,proj}, model.norm -> final_norm, lm_head -> lm_head.
"""
from __future__ import annotations

import math

import numpy as np

import autograd as ag
from autograd import Tensor, backend
from autograd import functional as F

from ..nn.layers import Dropout, Embedding, Linear, RMSNorm
from ..nn.module import Module, ModuleList
from ..nn.parameter import normal_, ones_, skip_init, zeros_
from .blocks import Block, load_balancing_loss, make_norm
from .config import GPTConfig
from .kv_cache import KVCache

__all__ = ["GPT"]


class GPT(Module):
    """The decoder. ``GPT(cfg, seed=0, dtype=np.float32, device=None, init=True)``; parameter names: see the
    module docstring.

    Initialisation (GPT-2 / nanoGPT), from ``numpy.random.default_rng(seed)`` in ``named_parameters()`` order:
    weights N(0, 0.02), the residual projections (``*.proj.weight``) N(0, 0.02/sqrt(2L)), biases 0, norm weights 1
    (0 for Gemma's 1 + w norms). ``init=False`` leaves every parameter at zero (for loaders that overwrite them).
    Dropout layers get distinct seeds derived from ``seed``, so training runs repeat exactly.

    Calling: ``model(idx)`` -> logits (B, T, V); ``model(idx, targets)`` -> (logits, loss) where loss is the mean
    cross-entropy over targets != -100, plus ``router_aux_loss_coef`` times the load-balancing loss for a
    mixture of experts in training mode; ``model.loss(idx, targets)`` -> loss only. ``idx`` is an int array
    (NumPy/CuPy), a list or an int Tensor, moved to the model's device when needed.
    """

    def __init__(self, cfg: GPTConfig, seed: int | None = 0, dtype=np.float32, device: str | None = None,
                 init: bool = True):
        super().__init__()
        if not isinstance(cfg, GPTConfig):
            raise TypeError(f"GPT needs a GPTConfig, got {type(cfg).__name__} (try GPTConfig.preset('tiny'))")
        dtype = ag.dtypes.as_dtype(dtype)
        if not ag.dtypes.is_float(dtype):
            raise TypeError(f"GPT: dtype must be floating point, got {dtype}")
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
            self.blocks = ModuleList([Block(cfg, i, dtype, seed=drop_seed(1 + 4 * i)) for i in range(cfg.n_layer)])
            self.final_norm = make_norm(cfg, c, dtype)
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
        offset_gains = {id(m.weight) for m in self.modules() if isinstance(m, RMSNorm) and m.unit_offset}
        for name, p in self.named_parameters():
            if name.endswith(".bias"):
                zeros_(p)
            elif p.ndim == 1:  # norm gains: 1, or 0 where the norm scales by 1 + w
                zeros_(p) if id(p) in offset_gains else ones_(p)
            elif name.endswith(".proj.weight"):
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

    def embed(self, idx, start: int = 0) -> Tensor:
        """Token ids (B, T) at positions start .. start+T-1 -> the blocks' input (B, T, C)."""
        cfg = self.config
        x = self.tok_emb(idx)
        if cfg.embed_scale:
            x = x * math.sqrt(cfg.n_embd)          # a Python float: applied in the embedding's dtype
        if cfg.pos == "learned":
            x = x + self.pos_emb.weight[start:start + idx.shape[1]]
        return self.drop(x)

    def forward_hidden(self, idx, cache: KVCache | None = None, router_log: list | None = None) -> Tensor:
        """The final-normed hidden states (B, T, C), before the LM head (classification heads start here).
        ``router_log``: a list that each mixture-of-experts layer appends its routing to."""
        start = cache.pos if cache is not None else 0
        x = self.embed(self._check_idx(idx, start), start)
        for i, block in enumerate(self.blocks):
            x = self._run_block(i, block, x, cache[i] if cache is not None else None, router_log)
        return self.final_norm(x)

    def _run_block(self, i: int, block: Block, x: Tensor, layer_cache, router_log: list | None) -> Tensor:
        """One block; in training with ``activation_checkpointing = k``, every k-th block keeps only its input and is
        recomputed in backward (``ag.checkpoint``). A mixture of experts hands its routing out through the
        checkpoint so the load-balancing loss still has its gradient."""
        every = self.config.activation_checkpointing
        if not every or i % every or layer_cache is not None or not self.training:
            return block(x, layer_cache, router_log)
        if router_log is None:
            return ag.checkpoint(block, x)
        chosen: list = []

        def run(h: Tensor):
            log: list = []
            out = block(h, None, log)
            chosen[:] = [c for _, c in log]
            return (out, *[probs for probs, _ in log])

        out, *probs = _as_tuple(ag.checkpoint(run, x, params=block.parameters()))
        router_log.extend(zip(probs, chosen))
        return out

    def forward(self, idx, targets=None, cache: KVCache | None = None, last_only: bool = False,
                ignore_index: int = -100):
        """idx (B, T) -> logits (B, T, V), or (logits, loss) when ``targets`` (B, T) is given.

        ``cache``: a ``KVCache`` from ``new_cache`` (inference): idx holds the positions after the cached ones.
        ``last_only``: compute the head only at the last position (logits (B, 1, V)), as generation needs.
        """
        cfg = self.config
        router_log = [] if cfg.n_experts and targets is not None and self.training else None
        x = self.forward_hidden(idx, cache, router_log)
        if last_only:
            x = x[:, -1:]
        logits = self.soft_cap(self.lm_head(x))
        if targets is None:
            return logits
        return logits, self._with_aux_loss(self._loss(logits, targets, ignore_index), router_log)

    def soft_cap(self, logits: Tensor) -> Tensor:
        """c tanh(logits / c) with c = ``final_logit_softcap`` (Gemma 2 style); the logits unchanged without it."""
        return F.soft_cap(logits, self.config.final_logit_softcap)

    def loss(self, idx, targets, ignore_index: int = -100) -> Tensor:
        """The training objective of ``forward(idx, targets)`` without the logits: idx, targets (B, T) -> scalar.

        The head, its soft cap and the cross-entropy are one op over chunks of rows (``F.linear_cross_entropy``),
        so the (B, T, V) float32 logits and their gradient never exist whole; the tied head's gradient reaches
        ``tok_emb.weight`` as in ``forward``. A head that changes the product (LoRA's) goes through ``forward``."""
        if type(self.lm_head) is not Linear:
            return self.forward(idx, targets, ignore_index=ignore_index)[1]
        cfg = self.config
        router_log = [] if cfg.n_experts and self.training else None
        x = self.forward_hidden(idx, None, router_log)
        head = self.lm_head
        loss = F.linear_cross_entropy(x, head.weight, self._targets(targets, x), head.bias, ignore_index=ignore_index,
                                      softcap=cfg.final_logit_softcap)
        return self._with_aux_loss(loss, router_log)

    def _loss(self, logits: Tensor, targets, ignore_index: int) -> Tensor:
        """The mean cross-entropy of logits (B, T, V) against targets (B, T)."""
        return F.cross_entropy(logits, self._targets(targets, logits), ignore_index=ignore_index)

    def _with_aux_loss(self, loss: Tensor, router_log: list | None) -> Tensor:
        """loss + router_aux_loss_coef x the load-balancing loss (a mixture of experts in training)."""
        cfg = self.config
        if router_log and cfg.router_aux_loss_coef:
            loss = loss + load_balancing_loss(router_log, cfg.n_experts) * cfg.router_aux_loss_coef
        return loss

    def _targets(self, targets, like: Tensor):
        """targets (B, T) (or (T,) for one sequence) as an array on ``like``'s device; ``like`` (B, T, ...)."""
        t = targets.data if isinstance(targets, Tensor) else targets
        if not hasattr(t, "dtype"):
            t = np.asarray(t)
        if t.ndim == 1 and like.shape[0] == 1:
            t = t[None, :]
        if tuple(t.shape) != tuple(like.shape[:2]):
            raise ValueError(f"GPT: targets of shape {tuple(t.shape)} do not match the positions {like.shape[:2]}")
        if backend.device_of(t) != like.device:
            t = backend.to_device(t, like.device)
        return t

    # ------------------------------------------------------------------ inference
    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty KV cache for ``batch_size`` sequences of up to ``max_len`` (default context_length) tokens."""
        cfg = self.config
        max_len = cfg.context_length if max_len is None else min(int(max_len), cfg.context_length)
        return KVCache(cfg.n_layer, batch_size, cfg.kv_heads, max_len, cfg.head_dim, self.dtype, self.device,
                       windows=[block.attn.window for block in self.blocks])

    def save_pretrained(self, path, tokenizer=None, dtype: str | None = None, max_shard_size: int | None = None):
        """Write this model (and ``tokenizer``) as a Hugging Face folder; see ``model.hf.save_pretrained``."""
        from .hf import save_pretrained
        return save_pretrained(self, path, tokenizer=tokenizer, dtype=dtype, max_shard_size=max_shard_size)

    def extra_repr(self) -> str:
        c = self.config
        return (f"family={c.family}, n_layer={c.n_layer}, n_head={c.n_head}, n_embd={c.n_embd}, "
                f"vocab_size={c.vocab_size}, context_length={c.context_length}, params={self.num_parameters():,}")


def _as_tuple(out) -> tuple:
    return out if isinstance(out, tuple) else (out,)
