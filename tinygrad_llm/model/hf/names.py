"""Which Hugging Face tensors make each of our parameters, per family (the mapping of ``model/gpt.py``'s docstring).

``weight_plan(cfg, files)`` -> ``[Entry(ours, parts)]``: parameter ``ours`` is the row-wise concatenation of its
``parts``; a part is one stored tensor, optionally one slice ``index`` of a stacked tensor (experts stored as one
array), a row range, and transposed (GPT-2's Conv1D keeps weights as (in, out)). Loading copies each part into its
rows of the parameter; exporting cuts the parameter back into the parts (always the released, unstacked names).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..config import GPTConfig

__all__ = ["Part", "Entry", "weight_plan", "skipped", "hf_prefix"]


@dataclass(frozen=True)
class Part:
    name: str                              # the stored tensor
    rows: int                              # rows it gives to our parameter (its first dimension there)
    transpose: bool = False
    index: int | None = None               # stacked tensors: take [index] first
    row_start: int = 0                     # ... then rows row_start : row_start + rows


@dataclass(frozen=True)
class Entry:
    ours: str
    parts: tuple[Part, ...]


def hf_prefix(cfg: GPTConfig, names) -> str:
    """The prefix the file's names carry: "transformer." or "" for GPT-2, "model." or "" for the others."""
    want = "transformer.wte.weight" if cfg.family == "gpt2" else "model.embed_tokens.weight"
    return want.split(".")[0] + "." if want in names else ""


def skipped(name: str) -> bool:
    """Stored tensors that are not weights: GPT-2's causal-mask buffers, old rotary frequency buffers."""
    return name.endswith((".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")) and ".c_attn." not in name


def _gpt2(cfg: GPTConfig, p: str) -> list[Entry]:
    c, f = cfg.n_embd, cfg.ffn_hidden_size
    one = lambda ours, hf, rows, t=False: Entry(ours, (Part(p + hf, rows, t),))   # noqa: E731
    out = [one("tok_emb.weight", "wte.weight", cfg.vocab_size), one("pos_emb.weight", "wpe.weight", cfg.context_length)]
    for i in range(cfg.n_layer):
        b, h = f"blocks.{i}.", f"h.{i}."
        out += [one(b + "norm1.weight", h + "ln_1.weight", c), one(b + "norm1.bias", h + "ln_1.bias", c),
                one(b + "attn.qkv.weight", h + "attn.c_attn.weight", 3 * c, True),
                one(b + "attn.qkv.bias", h + "attn.c_attn.bias", 3 * c),
                one(b + "attn.proj.weight", h + "attn.c_proj.weight", c, True),
                one(b + "attn.proj.bias", h + "attn.c_proj.bias", c),
                one(b + "norm2.weight", h + "ln_2.weight", c), one(b + "norm2.bias", h + "ln_2.bias", c),
                one(b + "ffn.fc.weight", h + "mlp.c_fc.weight", f, True), one(b + "ffn.fc.bias", h + "mlp.c_fc.bias", f),
                one(b + "ffn.proj.weight", h + "mlp.c_proj.weight", c, True),
                one(b + "ffn.proj.bias", h + "mlp.c_proj.bias", c)]
    out += [one("final_norm.weight", "ln_f.weight", c), one("final_norm.bias", "ln_f.bias", c)]
    if not cfg.tie_weights:
        out.append(Entry("lm_head.weight", (Part("lm_head.weight", cfg.vocab_size),)))
    return out


def _decoder(cfg: GPTConfig, p: str, stacked_experts: bool) -> list[Entry]:
    c, d, h, k = cfg.n_embd, cfg.head_dim, cfg.n_head, cfg.kv_heads
    one = lambda ours, hf, rows: Entry(ours, (Part(hf, rows),))      # noqa: E731
    out = [one("tok_emb.weight", p + "embed_tokens.weight", cfg.vocab_size)]
    for i in range(cfg.n_layer):
        b, L = f"blocks.{i}.", f"{p}layers.{i}."
        a = L + "self_attn."
        out.append(one(b + "norm1.weight", L + "input_layernorm.weight", c))
        kinds = ("weight", "bias") if cfg.qkv_bias else ("weight",)
        for kind in kinds:
            out.append(Entry(b + f"attn.qkv.{kind}", (Part(a + f"q_proj.{kind}", h * d), Part(a + f"k_proj.{kind}", k * d),
                                                     Part(a + f"v_proj.{kind}", k * d))))
        out.append(one(b + "attn.proj.weight", a + "o_proj.weight", c))
        if cfg.bias:
            out.append(one(b + "attn.proj.bias", a + "o_proj.bias", c))
        if cfg.qk_norm:
            out += [one(b + "attn.q_norm.weight", a + "q_norm.weight", d), one(b + "attn.k_norm.weight", a + "k_norm.weight", d)]
        if cfg.post_norms:          # Gemma: four norms, the second one before the MLP
            out += [one(b + "post_attn_norm.weight", L + "post_attention_layernorm.weight", c),
                    one(b + "norm2.weight", L + "pre_feedforward_layernorm.weight", c),
                    one(b + "post_ffn_norm.weight", L + "post_feedforward_layernorm.weight", c)]
        else:
            out.append(one(b + "norm2.weight", L + "post_attention_layernorm.weight", c))
        m = L + "mlp."
        if not cfg.n_experts:
            fh = cfg.ffn_hidden_size
            for ours, hf, rows in (("gate", "gate_proj", fh), ("up", "up_proj", fh), ("proj", "down_proj", c)):
                out.append(one(f"{b}ffn.{ours}.weight", f"{m}{hf}.weight", rows))
                if cfg.bias:
                    out.append(one(f"{b}ffn.{ours}.bias", f"{m}{hf}.bias", rows))
            continue
        fh = cfg.moe_hidden_size
        out.append(one(b + "ffn.router.weight", m + "gate.weight", cfg.n_experts))
        for e in range(cfg.n_experts):
            ex = f"{b}ffn.experts.{e}."
            if stacked_experts:     # newer transformers' layout: gate_up_proj (E, 2F, C), down_proj (E, C, F)
                out += [Entry(ex + "gate.weight", (Part(m + "experts.gate_up_proj", fh, index=e),)),
                        Entry(ex + "up.weight", (Part(m + "experts.gate_up_proj", fh, index=e, row_start=fh),)),
                        Entry(ex + "proj.weight", (Part(m + "experts.down_proj", c, index=e),))]
            else:
                out += [one(ex + "gate.weight", f"{m}experts.{e}.gate_proj.weight", fh),
                        one(ex + "up.weight", f"{m}experts.{e}.up_proj.weight", fh),
                        one(ex + "proj.weight", f"{m}experts.{e}.down_proj.weight", c)]
    out.append(one("final_norm.weight", p + "norm.weight", c))
    if not cfg.tie_weights:
        out.append(one("lm_head.weight", "lm_head.weight", cfg.vocab_size))
    return out


def weight_plan(cfg: GPTConfig, names=None) -> list[Entry]:
    """The entries for ``cfg``; ``names`` (the stored tensor names, None when exporting) picks the prefix and the
    experts' layout."""
    names = set(names or ())
    # exporting: the names transformers itself writes (GPT2LMHeadModel prefixes its body with "transformer.")
    p = hf_prefix(cfg, names) if names else ("transformer." if cfg.family == "gpt2" else "model.")
    if cfg.family == "gpt2":
        return _gpt2(cfg, p)
    stacked = any(n.endswith("mlp.experts.gate_up_proj") for n in names)
    return _decoder(cfg, p, stacked)
