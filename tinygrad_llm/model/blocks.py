"""The parts of a decoder block, each built from the config: Attention, MLP, MoE (mixture of experts), Block.

    Block:  x = x + [post_attn_norm] attn(norm1(x))       post norms only with cfg.post_norms (Gemma)
            x = x + [post_ffn_norm]  ffn(norm2(x))        ffn: MLP, or MoE when cfg.n_experts > 0
    The first add and norm2 run as one op (``add_norm``: s = x + h and norm2(s) from one pass over x and h).

Shapes: B batch, T tokens, C = n_embd, H query heads, K key/value heads (K divides H: grouped-query attention),
D = head_dim (n_embd // n_head unless the config sets head_size).
"""
from __future__ import annotations

import numpy as np

from autograd import Tensor, backend, concatenate
from autograd import functional as F

from ..nn.layers import Dropout, LayerNorm, Linear, RMSNorm
from ..nn.module import Module, ModuleList
from ..nn.rope import RotaryEmbedding, apply_rope
from .config import SLIDING, GPTConfig
from .kv_cache import LayerKVCache

__all__ = ["Attention", "MLP", "MoE", "Block", "make_norm", "add_norm", "window_keys", "load_balancing_loss",
           "routing_counts", "balancing_term"]


def make_norm(cfg: GPTConfig, width: int, dtype=np.float32) -> Module:
    """The config's norm over ``width`` features: LayerNorm (bias when cfg.bias) or RMSNorm (Gemma: 1 + w)."""
    if cfg.norm == "layernorm":
        return LayerNorm(width, eps=cfg.norm_eps, bias=cfg.bias, dtype=dtype)
    return RMSNorm(width, eps=cfg.norm_eps, dtype=dtype, unit_offset=cfg.norm_unit_offset)


def add_norm(norm: Module, x: Tensor, h: Tensor, fused: bool = True) -> tuple[Tensor, Tensor]:
    """(x + h, norm(x + h)): the residual stream after a branch and its norm for the next branch, x, h (B, T, C).
    One fused op (``F.add_layer_norm`` / ``F.add_rms_norm``) for a LayerNorm or RMSNorm; the two steps for another
    module, or with ``fused=False``."""
    if fused and isinstance(norm, LayerNorm):
        return F.add_layer_norm(x, h, norm.weight, norm.bias, eps=norm.eps)
    if fused and isinstance(norm, RMSNorm):
        return F.add_rms_norm(x, h, norm.gain(), eps=norm.eps)
    x = x + h
    return x, norm(x)


def window_keys(start: int, tq: int, window: int | None = None, xp=np):
    """Which keys the queries at positions start .. start+tq-1 see, of the keys at 0 .. start+tq-1: (lo, mask).

    Key j is visible to the query at position i when j <= i and (with a sliding ``window`` W) j > i - W. Keys
    before ``lo`` are outside every query's window: the caller drops them (a decoding step then reads W keys, not
    all of them). ``mask`` is None when, over the keys from lo on, each query sees exactly the keys up to itself
    (``is_causal=True`` says it without a mask), else a (tq, start + tq - lo) bool array, True where allowed.
    """
    tk = start + tq
    if window is None:
        return 0, None
    lo = max(0, start - window + 1)
    if tk - 1 - window < lo:              # even the last query's window begins at or before lo
        return lo, None
    i = xp.arange(start, tk)[:, None]
    j = xp.arange(lo, tk)[None, :]
    return lo, (j <= i) & (j > i - window)


class Attention(Module):
    """Causal self-attention with a fused q|k|v projection, optional q/k norms, RoPE, GQA and a KV cache.

        x (B, T, C) --qkv--> (B, T, (H + 2K) D) --F.split_heads--> q (B, H, T, D), k, v (B, K, T, D)
          --q_norm/k_norm (qk_norm)--> --RoPE (pos="rope")--> k, v appended to the cache (decoding; a ring of
            W positions for a sliding-window layer)
          --F.scaled_dot_product_attention (causal, or the sliding-window mask; K kv heads serve H queries)
          --F.merge_heads--> (B, T, H D) --proj--> (B, T, C)

    The qkv weight's rows are [q heads | k heads | v heads], each head's D rows together (GPT-2's c_attn layout;
    Hugging Face's separate q_proj, k_proj, v_proj concatenate onto it). Scores are scaled by ``cfg.attn_scale``.
    A layer of type "sliding_attention" sees only the last ``cfg.sliding_window`` positions and rotates with
    ``cfg.rope_local_theta`` when set (Gemma 3), unscaled; full layers with ``cfg.rope_theta`` and
    ``cfg.rope_scaling``. Dropout: on the attention probabilities and on the output, each with its own seeded
    generator (``seed``, ``seed + 1``).
    """

    def __init__(self, cfg: GPTConfig, layer_idx: int = 0, dtype=np.float32, seed: int | None = None):
        super().__init__()
        h, kv, d = cfg.n_head, cfg.kv_heads, cfg.head_dim
        self.n_head, self.n_kv_heads, self.head_dim, self.d_model = h, kv, d, cfg.n_embd
        self.qkv = Linear(cfg.n_embd, (h + 2 * kv) * d, bias=cfg.qkv_bias, dtype=dtype)
        self.proj = Linear(h * d, cfg.n_embd, bias=cfg.bias, dtype=dtype)
        self.q_norm = make_norm(cfg, d, dtype) if cfg.qk_norm else None
        self.k_norm = make_norm(cfg, d, dtype) if cfg.qk_norm else None
        self.layer_type = cfg.layer_type(layer_idx)
        self.window = cfg.sliding_window if self.layer_type == SLIDING else None
        self.rope = None
        if cfg.pos == "rope":
            local = self.window is not None and cfg.rope_local_theta is not None
            self.rope = (RotaryEmbedding(d, cfg.rope_local_theta) if local
                         else RotaryEmbedding(d, cfg.rope_theta, cfg.rope_scaling))
        self.scale = cfg.attn_scale
        self.dropout = cfg.dropout
        self.attn_drop = Dropout(cfg.dropout, seed=seed)
        self.resid_drop = Dropout(cfg.dropout, seed=None if seed is None else seed + 1)

    def forward(self, x: Tensor, cache: LayerKVCache | None = None) -> Tensor:
        """x (B, T, C) -> (B, T, C). With ``cache`` (inference), x holds the T positions after the cached ones."""
        if x.ndim != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"Attention: expected input (B, T, {self.d_model}), got shape {x.shape}")
        t = x.shape[1]
        q, k, v = F.split_heads(self.qkv(x), self.n_head, self.n_kv_heads)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        start = cache.length if cache is not None else 0
        if self.rope is not None:
            cos, sin = self.rope.tables(start, t, q.data)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        first = 0
        if cache is not None:
            k_all, v_all, first = cache.append(k.data, v.data)      # positions first .. start+t-1
            k, v = Tensor(k_all), Tensor(v_all)
        lo, mask = window_keys(start, t, self.window, backend.xp_of(q.data))
        if lo > first:
            k, v = k[:, :, lo - first:], v[:, :, lo - first:]
        p = self.dropout if self.attn_drop.active else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=mask is None,
                                           scale=self.scale, enable_gqa=True, rng=self.attn_drop.rng)
        return self.resid_drop(self.proj(F.merge_heads(y)))

    def extra_repr(self) -> str:
        extra = f", n_kv_heads={self.n_kv_heads}" if self.n_kv_heads != self.n_head else ""
        window = f", sliding_window={self.window}" if self.window else ""
        return f"d_model={self.d_model}, n_head={self.n_head}{extra}, head_dim={self.head_dim}{window}"


class MLP(Module):
    """The feed-forward network of a block, (B, T, C) -> (B, T, C), then residual dropout.

    cfg.mlp "gelu" (GPT-2): proj(gelu(fc x)), hidden 4 C; the fc bias and the GELU run as one fused op
    (``F.bias_gelu`` after ``fc.project``, which a LoRA layer also provides). "swiglu" (Llama, Qwen):
    proj(silu(gate x) * up x); "geglu" (Gemma): proj(gelu_tanh(gate x) * up x). ``hidden`` and ``dropout``
    override the config's (a mixture of experts builds its experts with its own width and no dropout).
    """

    def __init__(self, cfg: GPTConfig, dtype=np.float32, seed: int | None = None, hidden: int | None = None,
                 dropout: float | None = None):
        super().__init__()
        c, f = cfg.n_embd, cfg.ffn_hidden_size if hidden is None else int(hidden)
        self.kind = cfg.mlp
        if self.kind == "gelu":
            self.fc = Linear(c, f, bias=cfg.bias, dtype=dtype)
        else:
            self.gate = Linear(c, f, bias=cfg.bias, dtype=dtype)
            self.up = Linear(c, f, bias=cfg.bias, dtype=dtype)
        self.proj = Linear(f, c, bias=cfg.bias, dtype=dtype)
        self.drop = Dropout(cfg.dropout if dropout is None else dropout, seed=seed)

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "gelu":
            fc = self.fc
            h = F.bias_gelu(fc.project(x), fc.bias) if fc.bias is not None else F.gelu(fc(x))
        elif self.kind == "swiglu":
            h = F.silu(self.gate(x)) * self.up(x)
        else:
            h = F.gelu(self.gate(x), approximate="tanh") * self.up(x)
        return self.drop(self.proj(h))

    def extra_repr(self) -> str:
        return f"kind={self.kind}"


class MoE(Module):
    """A mixture of experts in place of the MLP (Qwen3-MoE, Mixtral): x (B, T, C) -> (B, T, C).

        p = softmax(router x)                   (N, E) over the E experts, N = B T tokens
        chosen = the k most probable experts    (N, k)  (cfg.n_experts_per_tok)
        w = p[chosen]  (/ their sum when cfg.norm_topk_prob: then w is the softmax over the chosen logits only)
        y = sum over the k chosen e of  w_e * expert_e(x)       each expert a gated MLP of width cfg.moe_hidden

    Only the chosen experts run, each on the rows routed to it (one Python step per expert, none per token):
    the rows are sorted by expert, gathered once, cut into one slice per expert, and the weighted results are
    gathered back into token order and summed over the k choices. Gradients reach the router through w; the
    choice itself is discrete. Parameters: ``router.weight`` (E, C), ``experts.M.{gate,up,proj}.weight``.
    """

    def __init__(self, cfg: GPTConfig, dtype=np.float32, seed: int | None = None):
        super().__init__()
        self.n_experts, self.top_k, self.norm_topk_prob = cfg.n_experts, cfg.n_experts_per_tok, cfg.norm_topk_prob
        self.router = Linear(cfg.n_embd, cfg.n_experts, bias=False, dtype=dtype)
        self.experts = ModuleList([MLP(cfg, dtype, hidden=cfg.moe_hidden_size, dropout=0.0)
                                   for _ in range(cfg.n_experts)])
        self.drop = Dropout(cfg.dropout, seed=seed)

    def forward(self, x: Tensor, router_log: list | None = None) -> Tensor:
        """``router_log``: when a list, (probabilities (N, E) Tensor, chosen (N, k) int array) is appended."""
        b, t, c = x.shape
        n, k = b * t, self.top_k
        xf = x.reshape(n, c)
        probs = F.softmax(self.router(xf), axis=-1)                            # (N, E)
        xp = backend.xp_of(probs.data)
        chosen = xp.argsort(-probs.data, axis=-1, kind="stable")[:, :k]         # (N, k), most probable first
        w = probs[xp.arange(n)[:, None], chosen]                                # (N, k)
        if self.norm_topk_prob:
            w = w / w.sum(axis=-1, keepdims=True)
        flat = chosen.reshape(-1)                                               # assignment a = token * k + slot
        order = xp.argsort(flat, kind="stable")                                 # assignments grouped by expert
        counts = backend.to_numpy(xp.bincount(flat, minlength=self.n_experts))
        xs = xf[order // k]                                                     # (N k, C), expert by expert
        outs, lo = [], 0
        for e, count in enumerate(counts.tolist()):
            if count:
                outs.append(self.experts[e](xs[lo:lo + count]))
                lo += count
        ys = concatenate(outs, axis=0) if len(outs) > 1 else outs[0]
        ys = ys * w.reshape(n * k)[order].reshape(n * k, 1)
        y = ys[xp.argsort(order)].reshape(n, k, c).sum(axis=1)                  # back to token order, sum k
        if router_log is not None:
            router_log.append((probs, chosen))
        return self.drop(y.reshape(b, t, c))

    def extra_repr(self) -> str:
        return f"n_experts={self.n_experts}, top_k={self.top_k}, norm_topk_prob={self.norm_topk_prob}"


def load_balancing_loss(router_log: list, n_experts: int) -> Tensor:
    """The Switch Transformer / Qwen-MoE auxiliary loss over the routing of all MoE layers of one forward:

        E * sum_e f_e P_e     f_e = the fraction of (token, slot) choices that picked expert e, over all layers
                              P_e = the mean router probability of expert e, over all tokens of all layers

    It is E * k / E = k when routing is uniform and grows as it concentrates. Gradients flow through P only.
    """
    counts, rows = routing_counts(router_log, n_experts)
    return balancing_term(router_log, counts / rows, rows, n_experts)


def routing_counts(router_log: list, n_experts: int):
    """(counts, rows): how many (token, slot) choices of the logged MoE layers picked each expert (an (E,) array on
    their device) and the number of router rows (tokens) over those layers."""
    xp = backend.xp_of(router_log[0][1])
    counts = sum(xp.bincount(chosen.reshape(-1), minlength=n_experts) for _, chosen in router_log)
    return counts, sum(p.shape[0] for p, _ in router_log)


def balancing_term(router_log: list, frac, rows: int, n_experts: int) -> Tensor:
    """E / rows * sum_e frac_e S_e, with S_e the logged layers' router probabilities of expert e summed over their
    rows, frac (E,) the choice fractions and rows the router rows of *all* layers: the logged layers' share of the
    load-balancing loss. The loss is linear in the probabilities, so the shares of layers that live on different
    devices (pipeline stages) add up to it."""
    prob_sum = router_log[0][0].sum(axis=0)
    for p, _ in router_log[1:]:
        prob_sum = prob_sum + p.sum(axis=0)
    return (prob_sum * Tensor(frac.astype(prob_sum.dtype))).sum() * (n_experts / rows)


class Block(Module):
    """One decoder layer, (B, T, C) -> (B, T, C): pre-norm attention and feed-forward, each added to the
    residual stream (see the module docstring). Children: ``norm1``, ``attn``, [``post_attn_norm``], ``norm2``,
    ``ffn`` (MLP or MoE), [``post_ffn_norm``]. ``fuse_add_norm = False`` runs the first add and norm2 as two
    ops (the composed path the fused one is checked against)."""
    fuse_add_norm = True

    def __init__(self, cfg: GPTConfig, layer_idx: int = 0, dtype=np.float32, seed: int | None = None):
        super().__init__()
        s = (lambda i: None) if seed is None else (lambda i: seed + i)
        c = cfg.n_embd
        self.norm1 = make_norm(cfg, c, dtype)
        self.attn = Attention(cfg, layer_idx, dtype, seed=s(0))
        self.post_attn_norm = make_norm(cfg, c, dtype) if cfg.post_norms else None
        self.norm2 = make_norm(cfg, c, dtype)
        self.routed = cfg.n_experts > 0
        self.ffn = MoE(cfg, dtype, seed=s(2)) if self.routed else MLP(cfg, dtype, seed=s(2))
        self.post_ffn_norm = make_norm(cfg, c, dtype) if cfg.post_norms else None

    def forward(self, x: Tensor, cache: LayerKVCache | None = None, router_log: list | None = None) -> Tensor:
        """``router_log``: a list a mixture of experts appends its routing to (for the load-balancing loss)."""
        h = self.attn(self.norm1(x), cache)
        if self.post_attn_norm is not None:
            h = self.post_attn_norm(h)
        x, h = add_norm(self.norm2, x, h, self.fuse_add_norm)     # x = x + h, h = norm2(x)
        h = self.ffn(h, router_log) if self.routed else self.ffn(h)
        if self.post_ffn_norm is not None:
            h = self.post_ffn_norm(h)
        return x + h
