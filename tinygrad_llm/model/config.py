"""GPTConfig: the hyperparameters of the decoder, its model families and presets, and its parameter count.

One decoder serves GPT-2, Llama 3, Qwen3 (dense and mixture-of-experts) and Gemma 3: a family is a set of
architecture choices (norm, MLP, positions, biases ...), and every choice is a field of this config.

    cfg = GPTConfig.preset("gpt2-124m")                 # GPT-2 small, as released (qkv bias, tied head)
    cfg = GPTConfig.preset("tiny", vocab_size=1000)     # a preset with overrides
    cfg = GPTConfig(family="qwen3", n_layer=2, n_head=4, n_kv_heads=2, n_embd=64)   # unset fields: Qwen3's
    cfg.num_parameters()                                # 124_439_808 for gpt2-124m, no arrays allocated
    GPTConfig.from_dict(cfg.to_dict()) == cfg           # JSON-able, for checkpoints
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

__all__ = ["GPTConfig", "PRESETS", "FAMILIES", "RELEASED", "swiglu_hidden"]

FULL, SLIDING = "full_attention", "sliding_attention"   # layer_types entries (Hugging Face's names)

# The architecture of each family: the value a field takes when the constructor leaves it at None.
FAMILIES: dict[str, dict] = {
    "gpt2": dict(qkv_bias=True, bias=True, tie_weights=True, norm="layernorm", norm_eps=1e-5, mlp="gelu",
                 pos="learned", rope_theta=10000.0, qk_norm=False, post_norms=False, norm_unit_offset=False,
                 embed_scale=False),
    "llama": dict(qkv_bias=False, bias=False, tie_weights=False, norm="rmsnorm", norm_eps=1e-5, mlp="swiglu",
                  pos="rope", rope_theta=500000.0, qk_norm=False, post_norms=False, norm_unit_offset=False,
                  embed_scale=False),
    "qwen3": dict(qkv_bias=False, bias=False, tie_weights=True, norm="rmsnorm", norm_eps=1e-6, mlp="swiglu",
                  pos="rope", rope_theta=1000000.0, qk_norm=True, post_norms=False, norm_unit_offset=False,
                  embed_scale=False),
    "gemma3": dict(qkv_bias=False, bias=False, tie_weights=True, norm="rmsnorm", norm_eps=1e-6, mlp="geglu",
                   pos="rope", rope_theta=1000000.0, qk_norm=True, post_norms=True, norm_unit_offset=True,
                   embed_scale=True),
}
_ROPE_SCALING_KEYS = {"linear": {"factor"},
                      "llama3": {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}}


def swiglu_hidden(d_model: int, multiple_of: int = 64) -> int:
    """The default hidden width of a gated MLP: 8 d_model / 3 rounded up to a multiple of ``multiple_of`` (three
    matrices then hold about as many weights as GPT-2's two 4 d_model ones)."""
    h = (8 * d_model + 2) // 3
    return multiple_of * ((h + multiple_of - 1) // multiple_of)


@dataclass
class GPTConfig:
    """Hyperparameters of the decoder. The defaults are GPT-2 124M's.

    Sizes. vocab_size, context_length (longest sequence); n_layer blocks, n_head query heads, n_embd the width C;
        n_kv_heads key/value heads for grouped-query attention (None: n_head); head_size the width D of one head
        (None: n_embd // n_head; Qwen3 and Gemma 3 set it, then n_head * D need not equal C); dropout one rate for
        embedding, attention and residual dropout.
    family: "gpt2" | "llama" | "qwen3" | "gemma3". The architecture fields of ``FAMILIES`` (qkv_bias, bias,
        tie_weights, norm, norm_eps, norm_unit_offset, post_norms, qk_norm, mlp, pos, rope_theta, embed_scale) take
        the family's value when left at None, at construction; ``replace(family=...)`` changes only the label.
    Biases. qkv_bias: in the q/k/v projection; bias: in the attention output projection, the MLP and LayerNorm.
    tie_weights: the LM head reuses the token embedding matrix.
    Norms. norm "layernorm" | "rmsnorm", norm_eps; norm_unit_offset: RMSNorm scales by (1 + weight), weights start
        at 0 (Gemma); post_norms: also normalise the attention and MLP outputs before each residual add (Gemma's
        four norms per block); qk_norm: RMSNorm over each query and key head before RoPE (Qwen3, Gemma 3).
    mlp: "gelu" (GPT-2: proj(gelu(fc x))) | "swiglu" (Llama, Qwen: proj(silu(gate x) * up x)) | "geglu" (Gemma:
        proj(gelu_tanh(gate x) * up x)); ffn_hidden its width (None: 4 C for gelu, ``swiglu_hidden(C)`` otherwise).
    Positions. pos "learned" (GPT-2) | "rope"; rope_theta the RoPE base; rope_scaling None or Hugging Face's dict:
        {"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}
        or {"rope_type": "linear", "factor"}; rope_local_theta the base of sliding-window layers (Gemma 3: 10000,
        unscaled; None: those layers use the global tables).
    Attention. layer_types: None (every layer full causal attention) or one "full_attention" / "sliding_attention"
        per layer; sliding_window W: a sliding layer's query at position i sees keys i - W < j <= i;
        query_pre_attn_scalar s: scores are scaled by s ** -0.5 (None: head_size ** -0.5).
    embed_scale: multiply token embeddings by sqrt(n_embd) (Gemma). final_logit_softcap c: logits = c tanh(z / c).
    Mixture of experts (n_experts > 0: every block's MLP is a router plus n_experts gated MLPs): n_experts_per_tok
        experts per token (top-k), moe_hidden each expert's width (None: ffn_hidden's default), norm_topk_prob
        renormalises the k chosen probabilities to sum to 1 (Qwen3-MoE), router_aux_loss_coef the weight of the
        load-balancing loss that ``GPT.forward`` adds to the training loss.
    Training memory. activation_checkpointing k: in training, every k-th block keeps only its input and recomputes
        its activations in backward (0: off, 1: every block). It changes no weight, so it may change on resume;
        ``memory_estimate`` says what it saves.
    """

    vocab_size: int = 50257
    context_length: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    n_kv_heads: int | None = None
    head_size: int | None = None
    dropout: float = 0.0
    family: str = "gpt2"
    qkv_bias: bool | None = None
    bias: bool | None = None
    tie_weights: bool | None = None
    norm: str | None = None
    norm_eps: float | None = None
    norm_unit_offset: bool | None = None
    post_norms: bool | None = None
    qk_norm: bool | None = None
    mlp: str | None = None
    ffn_hidden: int | None = None
    pos: str | None = None
    rope_theta: float | None = None
    rope_scaling: dict | None = None
    rope_local_theta: float | None = None
    layer_types: tuple | None = None
    sliding_window: int | None = None
    query_pre_attn_scalar: float | None = None
    embed_scale: bool | None = None
    final_logit_softcap: float | None = None
    n_experts: int = 0
    n_experts_per_tok: int = 2
    moe_hidden: int | None = None
    norm_topk_prob: bool = False
    router_aux_loss_coef: float = 0.001
    activation_checkpointing: int = 0

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"GPTConfig: unknown family {self.family!r}; known: {', '.join(FAMILIES)}")
        for name, value in FAMILIES[self.family].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.layer_types is not None:
            self.layer_types = tuple(self.layer_types)
        self._validate()

    def _validate(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(f"GPTConfig: {msg}")

        for name in ("vocab_size", "context_length", "n_layer", "n_head", "n_embd"):
            need(int(getattr(self, name)) >= 1, f"{name} must be a positive integer, got {getattr(self, name)!r}")
        need(self.head_size is not None or self.n_embd % self.n_head == 0,
             f"n_embd {self.n_embd} must be divisible by n_head {self.n_head} (or set head_size)")
        need(self.head_size is None or int(self.head_size) >= 1, f"head_size must be >= 1, got {self.head_size!r}")
        need(self.n_kv_heads is None or (self.n_kv_heads >= 1 and self.n_head % self.n_kv_heads == 0),
             f"n_kv_heads {self.n_kv_heads} must divide n_head {self.n_head}")
        need(self.ffn_hidden is None or int(self.ffn_hidden) >= 1,
             f"ffn_hidden must be a positive integer or None, got {self.ffn_hidden!r}")
        need(self.norm_eps > 0 and self.rope_theta > 0,
             f"norm_eps and rope_theta must be > 0, got {self.norm_eps}, {self.rope_theta}")
        need(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        need(self.norm in ("layernorm", "rmsnorm"), f"norm must be 'layernorm' or 'rmsnorm', got {self.norm!r}")
        need(not self.norm_unit_offset or self.norm == "rmsnorm", "norm_unit_offset needs norm='rmsnorm'")
        need(self.mlp in ("gelu", "swiglu", "geglu"), f"mlp must be 'gelu', 'swiglu' or 'geglu', got {self.mlp!r}")
        need(self.pos in ("learned", "rope"), f"pos must be 'learned' or 'rope', got {self.pos!r}")
        need(self.pos != "rope" or self.head_dim % 2 == 0, f"RoPE needs an even head size, got {self.head_dim}")
        if self.rope_scaling is not None:
            kind = self.rope_scaling.get("rope_type")
            need(kind in _ROPE_SCALING_KEYS, f"rope_scaling's rope_type must be one of {sorted(_ROPE_SCALING_KEYS)},"
                                             f" got {kind!r}")
            missing = _ROPE_SCALING_KEYS[kind] - set(self.rope_scaling)
            need(not missing, f"rope_scaling of type {kind!r} lacks {sorted(missing)}")
            bad = sorted(k for k in _ROPE_SCALING_KEYS[kind] if not isinstance(self.rope_scaling[k], (int, float))
                         or self.rope_scaling[k] <= 0)
            need(not bad, f"rope_scaling's {bad} must be positive numbers, got {self.rope_scaling}")
            need(kind != "llama3" or self.rope_scaling["high_freq_factor"] > self.rope_scaling["low_freq_factor"],
                 "rope_scaling: high_freq_factor must exceed low_freq_factor")
            need(self.pos == "rope", "rope_scaling needs pos='rope'")
        if self.layer_types is not None:
            need(len(self.layer_types) == self.n_layer,
                 f"layer_types has {len(self.layer_types)} entries for {self.n_layer} layers (give one per layer; "
                 "GPTConfig.preset(name, n_layer=...) derives them for a Gemma preset)")
            bad = sorted(set(self.layer_types) - {FULL, SLIDING})
            need(not bad, f"layer_types entries must be {FULL!r} or {SLIDING!r}, got {bad}")
            need(SLIDING not in self.layer_types or (self.sliding_window or 0) >= 1,
                 "sliding_attention layers need sliding_window >= 1")
        need(self.sliding_window is None or self.sliding_window >= 1,
             f"sliding_window must be >= 1 or None, got {self.sliding_window!r}")
        need(self.query_pre_attn_scalar is None or self.query_pre_attn_scalar > 0, "query_pre_attn_scalar must be > 0")
        need(self.final_logit_softcap is None or self.final_logit_softcap > 0, "final_logit_softcap must be > 0")
        need(int(self.activation_checkpointing) >= 0, "activation_checkpointing must be >= 0 (0: off, k: every k-th "
                                                      f"block), got {self.activation_checkpointing!r}")
        need(self.n_experts >= 0, f"n_experts must be >= 0, got {self.n_experts}")
        if self.n_experts:
            need(1 <= self.n_experts_per_tok <= self.n_experts,
                 f"n_experts_per_tok {self.n_experts_per_tok} must be in [1, n_experts={self.n_experts}]")
            need(self.mlp != "gelu", "experts are gated MLPs: a mixture of experts needs mlp 'swiglu' or 'geglu'")
            need(self.router_aux_loss_coef >= 0, "router_aux_loss_coef must be >= 0")

    # ------------------------------------------------------------------ derived sizes
    @property
    def head_dim(self) -> int:
        """D, the width of one attention head."""
        return int(self.head_size) if self.head_size is not None else self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_head if self.n_kv_heads is None else self.n_kv_heads

    @property
    def ffn_hidden_size(self) -> int:
        if self.ffn_hidden is not None:
            return int(self.ffn_hidden)
        return 4 * self.n_embd if self.mlp == "gelu" else swiglu_hidden(self.n_embd)

    @property
    def moe_hidden_size(self) -> int:
        return int(self.moe_hidden) if self.moe_hidden is not None else self.ffn_hidden_size

    def layer_type(self, i: int) -> str:
        """"full_attention" or "sliding_attention" for layer i."""
        return FULL if self.layer_types is None else self.layer_types[i]

    @property
    def attn_scale(self) -> float:
        """The factor of the attention scores q k^T."""
        return float(self.query_pre_attn_scalar or self.head_dim) ** -0.5

    def memory_estimate(self, batch: int, precision: str = "tf32", checkpointing: bool | int | None = None,
                        world_size: int = 1, shard_optimizer: bool = False, seq: int | None = None):
        """One rank's peak training memory, split into parameters, gradients, optimizer state and activations,
        before allocating anything (``model/memory.py`` says what is counted). checkpointing: None takes
        ``activation_checkpointing``."""
        from .memory import memory_estimate
        every = self.activation_checkpointing if checkpointing is None else checkpointing
        return memory_estimate(self, batch, precision, every, world_size, shard_optimizer, seq)

    def num_parameters(self, trainable_only: bool = False, non_embedding: bool = False) -> int:
        """Parameter count of ``GPT(self)``, computed from the sizes alone (no arrays are allocated).

        ``non_embedding=True`` leaves out the position embedding (and the token embedding unless it is tied to
        the head, which still needs it), the convention of the scaling-law papers and nanoGPT. ``trainable_only``
        is accepted for symmetry with ``Module.num_parameters`` (a fresh model trains everything).
        """
        c, v, d = self.n_embd, self.vocab_size, self.head_dim
        h, kv = self.n_head, self.kv_heads

        def norm(width: int) -> int:
            return width * (2 if self.norm == "layernorm" and self.bias else 1)

        def mlp(hidden: int) -> int:
            n_in = 1 if self.mlp == "gelu" else 2
            return (n_in + 1) * c * hidden + ((n_in * hidden + c) if self.bias else 0)

        attn = c * (h + 2 * kv) * d + ((h + 2 * kv) * d if self.qkv_bias else 0) + h * d * c + (c if self.bias else 0)
        attn += 2 * norm(d) if self.qk_norm else 0
        ffn = self.n_experts * (c + mlp(self.moe_hidden_size)) if self.n_experts else mlp(self.ffn_hidden_size)
        block = (4 if self.post_norms else 2) * norm(c) + attn + ffn
        tok = v * c
        pos = self.context_length * c if self.pos == "learned" else 0
        head = 0 if self.tie_weights else v * c
        total = tok + pos + self.n_layer * block + norm(c) + head
        if non_embedding:
            total -= pos + (0 if self.tie_weights else tok)
        return int(total)

    # ------------------------------------------------------------------ presets and (de)serialisation
    @classmethod
    def preset(cls, name: str, **overrides) -> "GPTConfig":
        """A named configuration (see ``GPTConfig.presets()``), with fields replaced by ``overrides``. A Gemma
        preset given another ``n_layer`` keeps its pattern of sliding and global layers."""
        key = _ALIASES.get(name, name)
        if key not in PRESETS:
            raise KeyError(f"unknown GPT preset {name!r}; available: {', '.join(cls.presets())}")
        d = copy.deepcopy({**PRESETS[key], **overrides})
        if key in _LAYER_PATTERNS and "layer_types" not in overrides:
            d["layer_types"] = gemma3_layer_types(d["n_layer"], _LAYER_PATTERNS[key])
        return cls.from_dict(d)

    @staticmethod
    def presets() -> list[str]:
        return list(PRESETS) + list(_ALIASES)

    def to_dict(self) -> dict:
        """A JSON-able dict of every field."""
        d = dataclasses.asdict(self)
        if d["layer_types"] is not None:
            d["layer_types"] = list(d["layer_types"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        """Inverse of ``to_dict``; unknown keys are an error (they would be silently ignored otherwise). A dict
        without ``family`` (written before families existed) is GPT-2, or Llama when it has rotary positions."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"GPTConfig.from_dict: unknown fields {unknown}; known fields: {sorted(names)}")
        if "family" not in d and d.get("pos") == "rope":
            d = {**d, "family": "llama"}
        return cls(**d)

    def replace(self, **changes) -> "GPTConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def gemma3_layer_types(n_layer: int, pattern: int = 6) -> list[str]:
    """Gemma 3's layout: every ``pattern``-th layer (1-based) is global, the others sliding-window."""
    return [FULL if (i + 1) % pattern == 0 else SLIDING for i in range(n_layer)]


_GPT2 = dict(vocab_size=50257, context_length=1024, qkv_bias=True, bias=True, tie_weights=True, dropout=0.0)
# Small presets train from scratch on a laptop CPU in minutes (vocab 512 suits a small BPE or a char tokenizer;
# override vocab_size to match yours). "small" is the CPU benchmark configuration.
_SMALL = dict(vocab_size=512, context_length=128, qkv_bias=False, bias=True, tie_weights=True, dropout=0.0)
_LLAMA = dict(family="llama", vocab_size=512, context_length=128, tie_weights=False, rope_theta=10000.0)
_LLAMA3_SCALING = dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                       original_max_position_embeddings=8192)   # Llama 3.2's (3.1: factor 8)
# tiny random configs of each family (tests, and checks against the reference implementations)
_TINY = dict(vocab_size=512, context_length=128, n_layer=4, n_embd=64)

PRESETS: dict[str, dict] = {
    "gpt2-124m": dict(_GPT2, n_layer=12, n_head=12, n_embd=768),
    "gpt2-355m": dict(_GPT2, n_layer=24, n_head=16, n_embd=1024),
    "gpt2-774m": dict(_GPT2, n_layer=36, n_head=20, n_embd=1280),
    "gpt2-1558m": dict(_GPT2, n_layer=48, n_head=25, n_embd=1600),
    "micro": dict(_SMALL, context_length=64, n_layer=2, n_head=2, n_embd=64),
    "tiny": dict(_SMALL, n_layer=4, n_head=4, n_embd=128),
    "small": dict(_SMALL, n_layer=4, n_head=4, n_embd=256),
    "llama-tiny": dict(_LLAMA, n_layer=4, n_head=4, n_kv_heads=2, n_embd=128,
                       rope_scaling=dict(_LLAMA3_SCALING, original_max_position_embeddings=32)),
    "llama-small": dict(_LLAMA, n_layer=4, n_head=8, n_kv_heads=2, n_embd=256),
    "qwen3-tiny": dict(_TINY, family="qwen3", n_head=4, n_kv_heads=2, head_size=32, ffn_hidden=160),
    "qwen3-moe-tiny": dict(_TINY, family="qwen3", n_head=4, n_kv_heads=2, head_size=32, tie_weights=False,
                           n_experts=4, n_experts_per_tok=2, moe_hidden=48, norm_topk_prob=True),
    "gemma3-tiny": dict(_TINY, family="gemma3", n_layer=6, n_head=4, n_kv_heads=1, head_size=32, ffn_hidden=160,
                        layer_types=gemma3_layer_types(6, 3), sliding_window=8, rope_local_theta=10000.0,
                        query_pre_attn_scalar=32),
    # the released models' shapes (num_parameters() equals the released counts; weights come from their folders)
    "llama-3.2-1b": dict(family="llama", vocab_size=128256, context_length=131072, n_layer=16, n_head=32,
                         n_kv_heads=8, n_embd=2048, ffn_hidden=8192, tie_weights=True, rope_scaling=_LLAMA3_SCALING),
    "llama-3.2-3b": dict(family="llama", vocab_size=128256, context_length=131072, n_layer=28, n_head=24,
                         n_kv_heads=8, n_embd=3072, ffn_hidden=8192, tie_weights=True, rope_scaling=_LLAMA3_SCALING),
    "llama-3.1-8b": dict(family="llama", vocab_size=128256, context_length=131072, n_layer=32, n_head=32,
                         n_kv_heads=8, n_embd=4096, ffn_hidden=14336, tie_weights=False,
                         rope_scaling=dict(_LLAMA3_SCALING, factor=8.0)),
    "qwen3-0.6b": dict(family="qwen3", vocab_size=151936, context_length=40960, n_layer=28, n_head=16, n_kv_heads=8,
                       n_embd=1024, head_size=128, ffn_hidden=3072),
    "qwen3-30b-a3b": dict(family="qwen3", vocab_size=151936, context_length=40960, n_layer=48, n_head=32,
                          n_kv_heads=4, n_embd=2048, head_size=128, ffn_hidden=6144, tie_weights=False, n_experts=128,
                          n_experts_per_tok=8, moe_hidden=768, norm_topk_prob=True),
    "gemma-3-270m": dict(family="gemma3", vocab_size=262144, context_length=32768, n_layer=18, n_head=4, n_kv_heads=1,
                         n_embd=640, head_size=256, ffn_hidden=2048, layer_types=gemma3_layer_types(18),
                         sliding_window=512, rope_local_theta=10000.0, query_pre_attn_scalar=256),
    "gemma-3-1b": dict(family="gemma3", vocab_size=262144, context_length=32768, n_layer=26, n_head=4, n_kv_heads=1,
                       n_embd=1152, head_size=256, ffn_hidden=6912, layer_types=gemma3_layer_types(26),
                       sliding_window=512, rope_local_theta=10000.0, query_pre_attn_scalar=256),
}
# every k-th layer global, the others sliding (Gemma 3's interleaving), kept when a preset's n_layer is overridden
_LAYER_PATTERNS = {"gemma3-tiny": 3, "gemma-3-270m": 6, "gemma-3-1b": 6}
# presets with the released models' shapes: too large to build in a test
RELEASED = ("llama-3.2-1b", "llama-3.2-3b", "llama-3.1-8b", "qwen3-0.6b", "qwen3-30b-a3b", "gemma-3-270m",
            "gemma-3-1b")
# Hugging Face model names of the released GPT-2 checkpoints
_ALIASES = {"gpt2": "gpt2-124m", "gpt2-medium": "gpt2-355m", "gpt2-large": "gpt2-774m", "gpt2-xl": "gpt2-1558m",
            "mini": "small"}
