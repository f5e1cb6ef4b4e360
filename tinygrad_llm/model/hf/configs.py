"""``config.json`` <-> ``GPTConfig`` for each family (GPT-2, Llama, Qwen3, Qwen3-MoE, Gemma 3 text).

Every field of a Hugging Face config is in exactly one of three groups, per ``model_type``:
- honoured: it sets a ``GPTConfig`` field (sizes, norm epsilon, RoPE base and scaling, biases, tying, windows ...);
- inert: it does not change what the model computes from token ids (ids of special tokens, initialisation,
  dropout rates, which we take from ``dropout=``, caching flags, storage dtype, version strings);
- refused when it asks for something the decoder does not compute (``scale_attn_by_inverse_layer_idx: true``, an
  activation other than the family's, rope types we do not implement, ...): ``PretrainedFormatError`` names the
  file and the field.
A field in none of the groups is refused too (it might change the computation); ``ignore_fields`` lets a caller
who knows better vouch for named fields.

Both spellings of RoPE are read: ``rope_theta`` + ``rope_scaling`` (the released files) and ``rope_parameters``
(newer transformers). Export writes the first, which every version reads.
"""
from __future__ import annotations

import json
from typing import Any, Callable

from ..config import FULL, SLIDING, GPTConfig, swiglu_hidden
from .safetensors_io import PretrainedFormatError

__all__ = ["config_from_hf", "hf_from_config", "MODEL_TYPES", "computation_of"]

_INERT = {"architectures", "model_type", "transformers_version", "_name_or_path", "torch_dtype", "dtype",
          "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id",
          "initializer_range", "use_cache", "return_dict", "output_hidden_states", "output_attentions",
          "tie_encoder_decoder", "is_encoder_decoder", "chunk_size_feed_forward", "problem_type", "id2label",
          "label2id", "task_specific_params", "tokenizer_class", "prefix", "finetuning_task", "_attn_implementation",
          "attention_dropout", "cache_implementation", "max_window_layers", "pretraining_tp",
          "_attn_implementation_autoset", "keys_to_ignore_at_inference", "gradient_checkpointing", "output_past",
          "_num_labels", "use_return_dict"}
_INERT_BY_TYPE = {
    "gpt2": {"resid_pdrop", "embd_pdrop", "attn_pdrop", "summary_type", "summary_use_proj", "summary_activation",
             "summary_proj_to_labels", "summary_first_dropout", "n_ctx",
             "predict_special_tokens"},          # a GPT-1 relic in gpt2-medium/large/xl's files
}
_TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


class _Fields:
    """Reads a config dict field by field, remembering which it used; ``finish`` refuses the rest."""

    def __init__(self, hf: dict, where: str, ignore: set[str]):
        self.hf, self.where, self.used = hf, where, set(ignore)

    def get(self, key: str, default: Any = None) -> Any:
        self.used.add(key)
        return self.hf.get(key, default)

    def req(self, key: str) -> Any:
        if self.hf.get(key) is None:
            raise PretrainedFormatError(f"{self.where}: the required field {key!r} is missing")
        return self.get(key)

    def need(self, key: str, ok: Callable[[Any], bool], want: str, default: Any = None) -> Any:
        v = self.get(key, default)
        if not ok(v):
            self.refuse(key, v, want)
        return v

    def refuse(self, key: str, value: Any, why: str) -> None:
        raise PretrainedFormatError(f"{self.where}: field {key!r} = {value!r} is not supported: {why}")

    def finish(self, model_type: str) -> None:
        rest = sorted(set(self.hf) - self.used - _INERT - _INERT_BY_TYPE.get(model_type, set()))
        if rest:
            raise PretrainedFormatError(
                f"{self.where}: unknown {model_type} config fields {rest}; they may change the computation, so "
                "they are not ignored silently (pass ignore_fields=[...] to from_pretrained if they do not)")


def _rope(f: _Fields, family: str) -> dict:
    """rope_theta, rope_scaling, rope_local_theta from either spelling (absent: transformers' defaults)."""
    params = f.get("rope_parameters")
    out: dict[str, Any] = {"rope_theta": 1e6 if family == "gemma3" else 10000.0}
    if family == "gemma3":
        out["rope_local_theta"] = 10000.0
    if params is not None:
        per_type = params if FULL in params or SLIDING in params else {FULL: params}
        for layer_type, p in per_type.items():
            kind = p.get("rope_type", "default")
            scaling = None if kind == "default" else {"rope_type": kind, **{k: v for k, v in p.items()
                                                                            if k not in ("rope_type", "rope_theta")}}
            if layer_type == SLIDING:
                if scaling is not None:
                    f.refuse("rope_parameters", params, "scaled RoPE on sliding-window layers is not implemented")
                out["rope_local_theta"] = float(p["rope_theta"])
            else:
                out["rope_theta"], out["rope_scaling"] = float(p.get("rope_theta", 10000.0)), scaling
    else:
        if "rope_theta" in f.hf:
            out["rope_theta"] = float(f.get("rope_theta"))
        scaling = f.get("rope_scaling")
        if scaling is not None:
            scaling = dict(scaling)
            scaling["rope_type"] = scaling.pop("type", None) or scaling.get("rope_type")
        out["rope_scaling"] = None if scaling is None or scaling["rope_type"] == "default" else scaling
        if family == "gemma3" and "rope_local_base_freq" in f.hf:
            out["rope_local_theta"] = float(f.get("rope_local_base_freq"))
    s = out.get("rope_scaling")
    if s is not None and s["rope_type"] not in ("llama3", "linear"):
        f.refuse("rope_scaling", s, "only the 'llama3' and 'linear' RoPE scalings are implemented")
    return out


def _gpt2(f: _Fields) -> dict:
    f.need("activation_function", lambda v: v in _TANH_GELU, f"GPT-2's MLP computes GELU's tanh form "
           f"({', '.join(_TANH_GELU)})", "gelu_new")
    f.need("scale_attn_by_inverse_layer_idx", lambda v: not v, "per-layer 1/(layer+1) attention scaling is not "
           "implemented", False)
    f.need("add_cross_attention", lambda v: not v, "cross-attention is not part of a decoder-only model", False)
    f.need("n_special", lambda v: not v, "extra special-token embeddings (GPT-1's) are not part of GPT-2", 0)
    # upcasting attention to float32 is what a float32 model computes anyway (from_pretrained refuses it otherwise)
    f.get("reorder_and_upcast_attn")
    c = int(f.get("n_embd", 768))
    n_inner = f.get("n_inner")
    out = dict(family="gpt2", vocab_size=int(f.get("vocab_size", 50257)),
               context_length=int(f.get("n_positions", f.hf.get("n_ctx", 1024))), n_layer=int(f.get("n_layer", 12)),
               n_head=int(f.get("n_head", 12)), n_embd=c, qkv_bias=True, bias=True,
               tie_weights=bool(f.get("tie_word_embeddings", True)),
               norm_eps=float(f.get("layer_norm_epsilon", 1e-5)),
               ffn_hidden=None if n_inner in (None, 4 * c) else int(n_inner))
    if not f.get("scale_attn_weights", True):
        out["query_pre_attn_scalar"] = 1.0           # scores q k^T unscaled: 1 ** -0.5
    return out


def _decoder(f: _Fields, family: str, model_type: str) -> dict:
    """Llama, Qwen3 (dense and MoE), Gemma 3 text: the fields they share, then each one's own."""
    act_key = "hidden_activation" if family == "gemma3" and "hidden_activation" in f.hf else "hidden_act"
    act = ("gelu_pytorch_tanh",) if family == "gemma3" else ("silu",)
    f.need(act_key, lambda v: v in act, f"the {family} MLP computes {act[0]}", act[0])
    if family == "gemma3":
        f.get("hidden_act")
    attn_bias = bool(f.get("attention_bias", False))
    mlp_bias = bool(f.get("mlp_bias", attn_bias if family == "llama" else False))
    if attn_bias != mlp_bias:
        f.refuse("attention_bias", attn_bias, f"biases in attention but not the MLP (mlp_bias {mlp_bias}), or "
                 "the reverse, are not implemented")
    heads = int(f.req("num_attention_heads"))
    c = int(f.req("hidden_size"))
    head_dim = f.get("head_dim")
    out: dict[str, Any] = dict(
        family=family, vocab_size=int(f.req("vocab_size")), context_length=int(f.req("max_position_embeddings")),
        n_layer=int(f.req("num_hidden_layers")), n_head=heads, n_embd=c,
        n_kv_heads=int(f.get("num_key_value_heads", heads)),
        head_size=None if head_dim in (None, c // heads) and c % heads == 0 else int(head_dim),
        qkv_bias=attn_bias, bias=attn_bias, tie_weights=bool(f.get("tie_word_embeddings", family == "gemma3")),
        norm_eps=float(f.get("rms_norm_eps", 1e-6)), ffn_hidden=int(f.req("intermediate_size")))
    if out["ffn_hidden"] == swiglu_hidden(c):
        out["ffn_hidden"] = None                    # the default width: keep the config as one would write it
    out.update(_rope(f, family))
    n = out["n_layer"]
    layer_types = f.get("layer_types")
    if layer_types is not None and (len(layer_types) != n or set(layer_types) - {FULL, SLIDING}):
        f.refuse("layer_types", layer_types, f"expected {n} entries of {FULL!r} / {SLIDING!r}")
    if family == "llama" and layer_types is not None and SLIDING in layer_types:
        f.refuse("layer_types", layer_types, "Llama has no sliding-window layers")
    if family == "qwen3":
        f.need("use_sliding_window", lambda v: not v, "Qwen's sliding-window layers are not implemented", False)
        f.get("sliding_window")                     # only read when use_sliding_window is true
        if layer_types is not None and SLIDING in layer_types:
            f.refuse("layer_types", layer_types, "Qwen's sliding-window layers are not implemented")
    if family == "gemma3":
        f.need("attn_logit_softcapping", lambda v: v is None, "attention-score soft-capping is not implemented")
        f.need("use_bidirectional_attention", lambda v: not v, "bidirectional attention is not implemented", False)
        pattern = f.get("sliding_window_pattern", f.get("_sliding_window_pattern", 6))
        if layer_types is None:
            layer_types = [FULL if (i + 1) % int(pattern) == 0 else SLIDING for i in range(n)]
        window = f.get("sliding_window")
        out.update(layer_types=list(layer_types), sliding_window=int(window) if window else None,
                   query_pre_attn_scalar=float(f.get("query_pre_attn_scalar", out.get("head_size") or c // heads)),
                   final_logit_softcap=f.get("final_logit_softcapping"))
        if SLIDING not in out["layer_types"]:
            out.pop("rope_local_theta", None)
    if model_type == "qwen3_moe":
        f.need("decoder_sparse_step", lambda v: v == 1, "only every layer being a mixture of experts is "
               "implemented", 1)
        f.need("mlp_only_layers", lambda v: not v, "dense layers between expert layers are not implemented", [])
        f.need("shared_expert_intermediate_size", lambda v: not v, "shared experts are not implemented", 0)
        experts = f.get("num_experts", f.get("num_local_experts"))
        if experts is None:
            raise PretrainedFormatError(f"{f.where}: the required field 'num_experts' is missing")
        coef = float(f.get("router_aux_loss_coef", 0.001))
        out.update(n_experts=int(experts), n_experts_per_tok=int(f.req("num_experts_per_tok")),
                   moe_hidden=int(f.req("moe_intermediate_size")), norm_topk_prob=bool(f.get("norm_topk_prob")),
                   # Hugging Face adds the load-balancing loss only when asked to return the router logits
                   router_aux_loss_coef=coef if f.get("output_router_logits", False) else 0.0)
        out.pop("ffn_hidden")                       # intermediate_size: the size of dense layers, which it has none
    return out


MODEL_TYPES = {"gpt2": "gpt2", "llama": "llama", "qwen3": "qwen3", "qwen3_moe": "qwen3", "gemma3_text": "gemma3"}


def config_from_hf(hf: dict, where: str = "config.json", dropout: float = 0.0,
                   ignore_fields: tuple[str, ...] = ()) -> GPTConfig:
    """Our ``GPTConfig`` for a Hugging Face ``config.json`` dict; ``PretrainedFormatError`` names any field that
    we cannot honour. ``dropout`` sets the model's dropout (the file's rates are for its pretraining)."""
    model_type = hf.get("model_type")
    if model_type == "gemma3":
        raise PretrainedFormatError(f"{where}: model_type 'gemma3' is the multimodal Gemma 3 (4B and larger, with a "
                                    "vision tower); only the text models (model_type 'gemma3_text': gemma-3-270m, "
                                    "gemma-3-1b) are supported")
    if model_type not in MODEL_TYPES:
        raise PretrainedFormatError(f"{where}: model_type {model_type!r} is not supported; supported: "
                                    f"{', '.join(MODEL_TYPES)}")
    f = _Fields(hf, where, set(ignore_fields))
    family = MODEL_TYPES[model_type]
    fields = _gpt2(f) if family == "gpt2" else _decoder(f, family, model_type)
    f.finish(model_type)
    try:
        return GPTConfig(dropout=dropout, **fields)
    except ValueError as e:
        raise PretrainedFormatError(f"{where}: {e}") from None


def _refuse_export(cfg: GPTConfig, field: str, why: str) -> None:
    raise ValueError(f"save_pretrained: a {cfg.family} model with {field}={getattr(cfg, field)!r} has no "
                     f"Hugging Face equivalent ({why})")


def hf_from_config(cfg: GPTConfig, dtype_name: str = "float32") -> dict[str, Any]:
    """The ``config.json`` dict of ``cfg`` (the model type of its family). Raises ``ValueError`` naming the field
    when the family's Hugging Face architecture cannot express the config; reading the result back must give a
    config that computes the same (``computation_of``), so a field this function does not know is refused too."""
    out = _hf_from_config(cfg, dtype_name)
    want, got = computation_of(cfg), computation_of(config_from_hf(json.loads(json.dumps(out))))
    zero_biases = ("qkv_bias", "bias") if cfg.family == "gpt2" else ()    # written as zeros: the same function
    lost = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k) and k not in zero_biases)
    if lost:
        raise ValueError(f"save_pretrained: a {cfg.family} model's config.json cannot express "
                         + ", ".join(f"{k}={getattr(cfg, k, None)!r}" for k in lost))
    return out


def _hf_from_config(cfg: GPTConfig, dtype_name: str) -> dict[str, Any]:
    fam = cfg.family
    fixed = {"gpt2": dict(norm="layernorm", mlp="gelu", pos="learned"),
             "llama": dict(norm="rmsnorm", mlp="swiglu", pos="rope", qk_norm=False),
             "qwen3": dict(norm="rmsnorm", mlp="swiglu", pos="rope", qk_norm=True),
             "gemma3": dict(norm="rmsnorm", mlp="geglu", pos="rope", qk_norm=True)}[fam]
    fixed.update(post_norms=fam == "gemma3", norm_unit_offset=fam == "gemma3", embed_scale=fam == "gemma3")
    for k, v in fixed.items():
        if getattr(cfg, k) != v:
            _refuse_export(cfg, k, f"{fam} has {k}={v!r}")
    if fam != "gemma3":
        for k in ("layer_types", "final_logit_softcap", "rope_local_theta"):
            if getattr(cfg, k) is not None and not (k == "layer_types" and SLIDING not in cfg.layer_types):
                _refuse_export(cfg, k, f"{fam} has no such option")
    if cfg.n_experts and fam != "qwen3":
        _refuse_export(cfg, "n_experts", "mixtures of experts are written as Qwen3-MoE only")
    common = {"torch_dtype": dtype_name, "transformers_version": "4.56.0"}
    if fam == "gpt2":
        if cfg.kv_heads != cfg.n_head or cfg.head_dim * cfg.n_head != cfg.n_embd:
            _refuse_export(cfg, "n_kv_heads", "GPT-2 has neither grouped-query attention nor a separate head size")
        scalar = cfg.query_pre_attn_scalar
        if scalar not in (None, 1.0, float(cfg.head_dim)):
            _refuse_export(cfg, "query_pre_attn_scalar", "GPT-2 scales scores by 1/sqrt(D) or not at all")
        return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": cfg.vocab_size,
                "n_positions": cfg.context_length, "n_ctx": cfg.context_length, "n_embd": cfg.n_embd,
                "n_layer": cfg.n_layer, "n_head": cfg.n_head,
                "n_inner": None if cfg.ffn_hidden_size == 4 * cfg.n_embd else cfg.ffn_hidden_size,
                "activation_function": "gelu_new", "layer_norm_epsilon": cfg.norm_eps,
                "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout,
                "scale_attn_weights": scalar != 1.0, "scale_attn_by_inverse_layer_idx": False,
                "reorder_and_upcast_attn": False, "tie_word_embeddings": cfg.tie_weights, **common}
    if cfg.qkv_bias != cfg.bias:
        _refuse_export(cfg, "qkv_bias", f"{fam} has one attention_bias flag for q/k/v and the output projection")
    if fam != "llama" and cfg.bias:
        _refuse_export(cfg, "bias", f"{fam}'s MLP has no biases")
    if fam != "gemma3" and cfg.query_pre_attn_scalar not in (None, float(cfg.head_dim)):
        _refuse_export(cfg, "query_pre_attn_scalar", f"{fam} scales scores by 1/sqrt(head_dim)")
    out: dict[str, Any] = {
        "vocab_size": cfg.vocab_size, "max_position_embeddings": cfg.context_length, "hidden_size": cfg.n_embd,
        "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head, "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim, "intermediate_size": cfg.ffn_hidden_size, "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta, "rope_scaling": cfg.rope_scaling, "attention_bias": bool(cfg.bias),
        "tie_word_embeddings": cfg.tie_weights, "attention_dropout": 0.0, **common}
    if fam == "llama":
        out.update(architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu", mlp_bias=bool(cfg.bias))
    elif fam == "qwen3" and not cfg.n_experts:
        out.update(architectures=["Qwen3ForCausalLM"], model_type="qwen3", hidden_act="silu", use_sliding_window=False,
                   sliding_window=None)
    elif fam == "qwen3":
        out.update(architectures=["Qwen3MoeForCausalLM"], model_type="qwen3_moe", hidden_act="silu",
                   use_sliding_window=False, sliding_window=None, num_experts=cfg.n_experts,
                   num_experts_per_tok=cfg.n_experts_per_tok, moe_intermediate_size=cfg.moe_hidden_size,
                   norm_topk_prob=cfg.norm_topk_prob, decoder_sparse_step=1, mlp_only_layers=[],
                   router_aux_loss_coef=cfg.router_aux_loss_coef, output_router_logits=cfg.router_aux_loss_coef > 0)
    else:
        layer_types = list(cfg.layer_types) if cfg.layer_types is not None else [FULL] * cfg.n_layer
        out.update(architectures=["Gemma3ForCausalLM"], model_type="gemma3_text", hidden_activation="gelu_pytorch_tanh",
                   layer_types=layer_types, sliding_window=cfg.sliding_window or 4096,
                   query_pre_attn_scalar=cfg.query_pre_attn_scalar or cfg.head_dim,
                   rope_local_base_freq=cfg.rope_local_theta if cfg.rope_local_theta is not None else cfg.rope_theta,
                   final_logit_softcapping=cfg.final_logit_softcap, attn_logit_softcapping=None,
                   use_bidirectional_attention=False)
    return out


# fields that do not change what the model computes from token ids
_NOT_COMPUTATION = ("dropout", "activation_checkpointing", "router_aux_loss_coef", "family")


def computation_of(cfg: GPTConfig) -> dict[str, Any]:
    """Every field of ``cfg`` that changes the computation, with defaults resolved (None -> the value it stands
    for) and options that cannot act dropped (a sliding window without sliding layers, expert settings without
    experts, RoPE settings with learned positions): two configs with equal results compute the same function."""
    d = {k: v for k, v in cfg.to_dict().items() if k not in _NOT_COMPUTATION}
    layer_types = list(cfg.layer_types) if cfg.layer_types is not None else [FULL] * cfg.n_layer
    d.update(n_kv_heads=cfg.kv_heads, head_size=cfg.head_dim, ffn_hidden=cfg.ffn_hidden_size,
             query_pre_attn_scalar=cfg.attn_scale, layer_types=layer_types)
    if SLIDING not in layer_types:
        d.pop("sliding_window"), d.pop("rope_local_theta")
    elif d["rope_local_theta"] is None:
        d["rope_local_theta"] = cfg.rope_theta
    if cfg.n_experts:
        d["moe_hidden"] = cfg.moe_hidden_size
        d.pop("ffn_hidden")
    else:
        for k in ("n_experts_per_tok", "moe_hidden", "norm_topk_prob"):
            d.pop(k)
    if cfg.pos != "rope":
        for k in ("rope_theta", "rope_scaling", "rope_local_theta"):
            d.pop(k, None)
    return d
