"""Model families as configs of one decoder: GPT-2, Llama 3, Qwen3, Qwen3-MoE, Gemma 3. Each family builds, counts
its parameters without weights (the released shapes match the released counts), computes what an independent NumPy
float64 implementation written from the published definitions computes, gradchecks (float64), and generates the
same tokens and logits with the KV cache as without it (sliding-window layers included)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinygrad_llm as tl
from test_nn import gradcheck_module

FAMILY_PRESETS = ["llama-tiny", "qwen3-tiny", "qwen3-moe-tiny", "gemma3-tiny"]
# small enough for float64 references and gradchecks; gemma's window (3) is shorter than the sequences
SMALL = dict(vocab_size=13, context_length=12, n_layer=2, n_embd=8, n_head=2)
CONFIGS = {
    "gpt2": dict(SMALL),
    "llama": dict(SMALL, family="llama", n_kv_heads=1, ffn_hidden=12, tie_weights=False, rope_theta=50.0,
                  rope_scaling=dict(rope_type="llama3", factor=4.0, low_freq_factor=1.0, high_freq_factor=2.0,
                                    original_max_position_embeddings=8)),
    "qwen3": dict(SMALL, family="qwen3", n_kv_heads=1, head_size=6, ffn_hidden=12, rope_theta=30.0),
    "qwen3-moe": dict(SMALL, family="qwen3", n_kv_heads=1, head_size=6, n_experts=3, n_experts_per_tok=2,
                      moe_hidden=5, norm_topk_prob=True, tie_weights=False),
    "gemma3": dict(SMALL, family="gemma3", n_layer=3, n_kv_heads=1, head_size=6, ffn_hidden=12, rope_theta=100.0,
                   rope_local_theta=10.0, layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                   sliding_window=3, query_pre_attn_scalar=5.0, final_logit_softcap=3.0,
                   rope_scaling=dict(rope_type="linear", factor=2.0)),
}


def build(family, seed=0, dtype=np.float64, noise=0.3, **kw):
    """A random model whose norms and biases are not at their initial values (every parameter matters)."""
    m = tl.GPT(tl.GPTConfig(**{**CONFIGS[family], **kw}), seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed + 100)
    for p in m.parameters():
        p.data += rng.normal(0, noise, p.shape).astype(p.dtype)
    return m


def tokens(b, t, v=13, seed=0):
    return np.random.default_rng(seed).integers(0, v, (b, t))


# ---------------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("name,count", [("llama-3.2-1b", 1_235_814_400), ("llama-3.2-3b", 3_212_749_824),
                                        ("llama-3.1-8b", 8_030_261_248), ("qwen3-0.6b", 596_049_920),
                                        ("qwen3-30b-a3b", 30_532_122_624), ("gemma-3-270m", 268_098_176),
                                        ("gemma-3-1b", 999_885_952)])
def test_released_shapes_count_the_released_parameters(name, count):
    assert tl.GPTConfig.preset(name).num_parameters() == count


@pytest.mark.parametrize("name", FAMILY_PRESETS)
def test_tiny_family_presets_build_and_run(name):
    cfg = tl.GPTConfig.preset(name)
    m = tl.GPT(cfg)
    assert m.num_parameters() == cfg.num_parameters()
    logits, loss = m(tokens(2, 9, cfg.vocab_size), tokens(2, 9, cfg.vocab_size, seed=1))
    assert logits.shape == (2, 9, cfg.vocab_size) and np.isfinite(loss.item())
    assert tl.GPTConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_gemma_preset_keeps_its_layer_pattern_at_another_depth():
    cfg = tl.GPTConfig.preset("gemma3-tiny", n_layer=4)
    assert cfg.layer_types == ("sliding_attention", "sliding_attention", "full_attention", "sliding_attention")
    assert tl.GPTConfig.preset("gemma-3-1b").layer_types[5] == "full_attention"
    with pytest.raises(ValueError, match="one per layer"):
        cfg.replace(n_layer=2)


@pytest.mark.parametrize("family", list(CONFIGS))
def test_family_fields_count_agrees_with_the_model(family):
    m = build(family)
    assert m.config.num_parameters() == m.num_parameters()


@settings(deadline=None, max_examples=15)
@given(family=st.sampled_from(["gpt2", "llama", "qwen3", "gemma3"]), heads=st.sampled_from([(2, 1), (2, 2), (4, 2)]),
       head_size=st.sampled_from([None, 2, 6]), bias=st.booleans(), qkv_bias=st.booleans(), tie=st.booleans(),
       norm=st.sampled_from(["layernorm", "rmsnorm"]), qk_norm=st.booleans(), post_norms=st.booleans(),
       mlp=st.sampled_from(["gelu", "swiglu", "geglu"]), experts=st.sampled_from([0, 3]))
def test_count_without_weights_equals_the_model_for_any_combination(family, heads, head_size, bias, qkv_bias, tie,
                                                                    norm, qk_norm, post_norms, mlp, experts):
    if experts and mlp == "gelu":
        mlp = "swiglu"
    kw = dict(vocab_size=7, context_length=5, n_layer=2, n_embd=8, n_head=heads[0], n_kv_heads=heads[1],
              head_size=head_size, bias=bias, qkv_bias=qkv_bias, tie_weights=tie, norm=norm, qk_norm=qk_norm,
              post_norms=post_norms, mlp=mlp, n_experts=experts, moe_hidden=3, family=family,
              norm_unit_offset=family == "gemma3" and norm == "rmsnorm")
    cfg = tl.GPTConfig(**kw)
    m = tl.GPT(cfg)
    assert cfg.num_parameters() == m.num_parameters()
    assert m(tokens(1, 5, v=7)).shape == (1, 5, 7)


def test_family_fills_only_the_fields_left_unset():
    cfg = tl.GPTConfig(family="gemma3", n_embd=8, n_head=2, qk_norm=False)
    assert (cfg.norm, cfg.mlp, cfg.pos, cfg.norm_unit_offset, cfg.post_norms, cfg.embed_scale) == (
        "rmsnorm", "geglu", "rope", True, True, True)
    assert cfg.qk_norm is False                                   # set explicitly: kept
    assert tl.GPTConfig(family="qwen3").qk_norm and not tl.GPTConfig(family="llama").qk_norm
    old = {k: v for k, v in tl.GPTConfig.preset("llama-small").to_dict().items() if k != "family"}
    assert tl.GPTConfig.from_dict(old).family == "llama"          # a dict written before families existed


@pytest.mark.parametrize("bad,match", [
    (dict(family="mamba"), "unknown family"),
    (dict(layer_types=["full_attention"]), "layer_types has 1 entries"),
    (dict(n_layer=1, layer_types=["local"]), "layer_types entries"),
    (dict(n_layer=1, layer_types=["sliding_attention"]), "sliding_window"),
    (dict(pos="rope", rope_scaling=dict(rope_type="llama3", factor=8.0)), "lacks"),
    (dict(pos="rope", rope_scaling=dict(rope_type="yarn", factor=8.0)), "rope_type"),
    (dict(pos="rope", rope_scaling=dict(rope_type="linear", factor="8")), "positive numbers"),
    (dict(pos="rope", rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=4.0, high_freq_factor=1.0,
                                        original_max_position_embeddings=64)), "high_freq_factor"),
    (dict(n_experts=4), "gated MLPs"),
    (dict(mlp="swiglu", n_experts=2, n_experts_per_tok=3), "n_experts_per_tok"),
    (dict(norm_unit_offset=True), "norm_unit_offset"),
    (dict(n_embd=10, n_head=4), "head_size"),
])
def test_bad_family_configs_are_clear_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        tl.GPTConfig(**{**dict(n_layer=2, n_embd=8, n_head=2), **bad})


def test_parameter_names_of_each_family():
    """The names that checkpoints and the Hugging Face mapping rely on (model/gpt.py's docstring)."""
    def names(family, **kw):
        return [n for n, _ in build(family, n_layer=1, **kw).named_parameters()]
    common = ["blocks.0.attn.qkv.weight", "blocks.0.attn.proj.weight"]
    assert names("llama") == ["tok_emb.weight", "blocks.0.norm1.weight", *common, "blocks.0.norm2.weight",
                              "blocks.0.ffn.gate.weight", "blocks.0.ffn.up.weight", "blocks.0.ffn.proj.weight",
                              "final_norm.weight", "lm_head.weight"]
    qk = ["blocks.0.attn.q_norm.weight", "blocks.0.attn.k_norm.weight"]
    assert names("qwen3") == ["tok_emb.weight", "blocks.0.norm1.weight", *common, *qk, "blocks.0.norm2.weight",
                              "blocks.0.ffn.gate.weight", "blocks.0.ffn.up.weight", "blocks.0.ffn.proj.weight",
                              "final_norm.weight"]
    experts = [f"blocks.0.ffn.experts.{e}.{w}.weight" for e in range(3) for w in ("gate", "up", "proj")]
    assert names("qwen3-moe") == ["tok_emb.weight", "blocks.0.norm1.weight", *common, *qk, "blocks.0.norm2.weight",
                                  "blocks.0.ffn.router.weight", *experts, "final_norm.weight", "lm_head.weight"]
    assert names("gemma3", layer_types=None) == [
        "tok_emb.weight", "blocks.0.norm1.weight", *common, *qk, "blocks.0.post_attn_norm.weight",
        "blocks.0.norm2.weight", "blocks.0.ffn.gate.weight", "blocks.0.ffn.up.weight", "blocks.0.ffn.proj.weight",
        "blocks.0.post_ffn_norm.weight", "final_norm.weight"]


def test_head_size_independent_of_width():
    cfg = tl.GPTConfig(family="qwen3", n_embd=8, n_head=3, head_size=4, n_kv_heads=1)
    m = tl.GPT(cfg)
    assert m.blocks[0].attn.qkv.weight.shape == ((3 + 2) * 4, 8) and m.blocks[0].attn.proj.weight.shape == (8, 12)
    assert m.blocks[0].attn.q_norm.weight.shape == (4,)


# ---------------------------------------------------------------------------------------------------- RoPE scaling
def test_llama3_rope_scaling_against_a_hand_computation():
    """Llama 3.1's rule, frequency by frequency: keep short wavelengths, divide long ones by the factor, blend."""
    d, theta = 16, 500000.0
    scaling = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=64)
    got = tl.nn.rope_frequencies(d, theta, scaling)
    for i in range(d // 2):
        f = theta ** (-2 * i / d)
        wavelen = 2 * math.pi / f
        if wavelen < 64 / 4:
            want = f
        elif wavelen > 64 / 1:
            want = f / 8
        else:
            s = (64 / wavelen - 1) / (4 - 1)
            want = (1 - s) * f / 8 + s * f
        assert got[i] == pytest.approx(want, rel=1e-12), i
    kinds = {"keep": 0, "divide": 0, "blend": 0}
    for i, f in enumerate(theta ** (-np.arange(0, d, 2) / d)):
        kinds["keep" if got[i] == f else "divide" if got[i] == pytest.approx(f / 8) else "blend"] += 1
    assert all(kinds.values())                                    # the test's frequencies cover all three bands
    np.testing.assert_allclose(tl.nn.rope_frequencies(d, theta, dict(rope_type="linear", factor=4.0)),
                               theta ** (-np.arange(0, d, 2) / d) / 4, rtol=1e-12)


# ---------------------------------------------------------------------------------------------------- reference
def reference_logits(m, idx):
    """An independent float64 forward of every family, written from the published definitions (Hugging Face's
    modeling_{gpt2,llama,qwen3,qwen3_moe,gemma3}.py) with loops where the library vectorises."""
    cfg = m.config
    sd = {k: np.asarray(v, dtype=np.float64) for k, v in m.state_dict().items()}
    b, t = idx.shape
    h, kv, d, c = cfg.n_head, cfg.kv_heads, cfg.head_dim, cfg.n_embd

    def norm(x, name):
        w = sd[name + ".weight"]
        if cfg.norm == "layernorm":
            y = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + cfg.norm_eps) * w
            return y + sd[name + ".bias"] if name + ".bias" in sd else y
        y = x / np.sqrt((x ** 2).mean(-1, keepdims=True) + cfg.norm_eps)
        return y * (1 + w) if cfg.norm_unit_offset else y * w

    def lin(x, name):
        y = x @ sd[name + ".weight"].T
        return y + sd[name + ".bias"] if name + ".bias" in sd else y

    def gelu(x):
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))

    def silu(x):
        return x / (1 + np.exp(-x))

    def inv_freq(theta, scaling):
        f = np.array([theta ** (-2 * i / d) for i in range(d // 2)])
        if scaling and scaling["rope_type"] == "linear":
            return f / scaling["factor"]
        if scaling:                                              # llama3, as in the hand computation above
            factor, lo, hi = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
            old = scaling["original_max_position_embeddings"]
            out = []
            for fi in f:
                wl = 2 * math.pi / fi
                s = (old / wl - lo) / (hi - lo)
                out.append(fi if wl < old / hi else fi / factor if wl > old / lo else (1 - s) * fi / factor + s * fi)
            return np.array(out)
        return f

    def rope(x, freqs):      # rotate_half: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)
        ang = np.arange(t)[:, None] * freqs[None, :]
        cos, sin = np.concatenate([np.cos(ang)] * 2, -1), np.concatenate([np.sin(ang)] * 2, -1)
        x1, x2 = x[..., :d // 2], x[..., d // 2:]
        return x * cos + np.concatenate([-x2, x1], -1) * sin

    def mlp(x, p):
        if cfg.mlp == "gelu":
            return lin(gelu(lin(x, p + "fc")), p + "proj")
        act = silu if cfg.mlp == "swiglu" else gelu
        return lin(act(lin(x, p + "gate")) * lin(x, p + "up"), p + "proj")

    def moe(x, p):
        out = np.zeros_like(x)
        for bi in range(b):
            for ti in range(t):
                z = lin(x[bi, ti], p + "router")
                probs = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
                top = np.argsort(-probs)[:cfg.n_experts_per_tok]
                w = probs[top] / (probs[top].sum() if cfg.norm_topk_prob else 1.0)
                for e, we in zip(top, w):
                    out[bi, ti] += we * mlp(x[bi, ti], p + f"experts.{e}.")
        return out

    x = sd["tok_emb.weight"][idx]
    if cfg.embed_scale:
        x = x * math.sqrt(c)
    if cfg.pos == "learned":
        x = x + sd["pos_emb.weight"][:t]
    for n in range(cfg.n_layer):
        p = f"blocks.{n}."
        sliding = cfg.layer_type(n) == "sliding_attention"
        qkv = lin(norm(x, p + "norm1"), p + "attn.qkv")
        q = qkv[..., :h * d].reshape(b, t, h, d).transpose(0, 2, 1, 3)
        k = qkv[..., h * d:(h + kv) * d].reshape(b, t, kv, d).transpose(0, 2, 1, 3)
        v = qkv[..., (h + kv) * d:].reshape(b, t, kv, d).transpose(0, 2, 1, 3)
        if cfg.qk_norm:
            q, k = norm(q, p + "attn.q_norm"), norm(k, p + "attn.k_norm")
        if cfg.pos == "rope":
            local = sliding and cfg.rope_local_theta is not None
            freqs = inv_freq(cfg.rope_local_theta, None) if local else inv_freq(cfg.rope_theta, cfg.rope_scaling)
            q, k = rope(q, freqs), rope(k, freqs)
        k, v = np.repeat(k, h // kv, axis=1), np.repeat(v, h // kv, axis=1)
        allowed = np.array([[j <= i and (not sliding or j > i - cfg.sliding_window) for j in range(t)]
                            for i in range(t)])
        s = q @ k.transpose(0, 1, 3, 2) * (cfg.query_pre_attn_scalar or d) ** -0.5
        s = np.where(allowed, s, -np.inf)
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        y = lin((a @ v).transpose(0, 2, 1, 3).reshape(b, t, h * d), p + "attn.proj")
        x = x + (norm(y, p + "post_attn_norm") if cfg.post_norms else y)
        y = norm(x, p + "norm2")
        y = moe(y, p + "ffn.") if cfg.n_experts else mlp(y, p + "ffn.")
        x = x + (norm(y, p + "post_ffn_norm") if cfg.post_norms else y)
    logits = norm(x, "final_norm") @ sd.get("lm_head.weight", sd["tok_emb.weight"]).T
    if cfg.final_logit_softcap:
        logits = np.tanh(logits / cfg.final_logit_softcap) * cfg.final_logit_softcap
    return logits


@pytest.mark.parametrize("family", list(CONFIGS))
def test_forward_matches_the_independent_reference(family):
    m = build(family, seed=3)
    idx = tokens(2, 10, seed=1)
    np.testing.assert_allclose(m(idx).data, reference_logits(m, idx), atol=1e-10, rtol=0)


@pytest.mark.parametrize("family", list(CONFIGS))
def test_gradcheck_every_parameter_of_each_family(family):
    """Small tensors element by element, the others along random directions; gemma's first layer is sliding."""
    kw = dict(n_layer=2, layer_types=["sliding_attention", "full_attention"]) if family == "gemma3" else {}
    m = build(family, seed=5, **kw)
    idx, tgt = tokens(1, 5, seed=2), tokens(1, 5, seed=4)
    assert gradcheck_module(m, [idx], loss_fn=lambda logits: m._loss(logits, tgt, -100), max_elements=16,
                            n_directions=3, atol=1e-6, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------- generation
@pytest.mark.parametrize("family", list(CONFIGS))
@pytest.mark.parametrize("t0,new", [(3, 6), (4, 12)])       # the second runs past the 12-token context window
def test_cached_generation_equals_uncached(family, t0, new):
    m = build(family, seed=1, dtype=np.float32, noise=1.0)
    idx = tokens(2, t0, seed=3)
    a, la = tl.generate(m, idx, new, temperature=1.0, rng=7, use_cache=True, return_logits=True)
    b, lb = tl.generate(m, idx, new, temperature=1.0, rng=7, use_cache=False, return_logits=True)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(la, lb, atol=1e-4, rtol=0)
    assert len(set(a[:, t0:].ravel().tolist())) > 1                # a varied continuation, not one repeated id


def test_cache_positions_fed_in_pieces_equal_one_pass():
    """Prefill, then chunks of several tokens, then single tokens: the sliding-window ring, mask and RoPE offsets
    of the cached path agree with one full pass."""
    m = build("gemma3", seed=2)
    m.eval()
    idx = tokens(2, 11, seed=5)
    full = m(idx).data
    cache = m.new_cache(2)
    w = m.config.sliding_window
    assert [layer.k.shape[2] for layer in cache.layers] == [w, 12, w]     # sliding layers keep a ring of W slots
    parts = [m(idx[:, a:b], cache=cache).data for a, b in [(0, 4), (4, 8), (8, 9), (9, 11)]]
    np.testing.assert_allclose(np.concatenate(parts, axis=1), full, atol=1e-12)
    assert cache.pos == 11


def test_sliding_layers_see_only_their_window():
    """One sliding-window layer of width W: the logits at position i depend on tokens i-W+1 .. i only."""
    m = build("gemma3", n_layer=1, layer_types=["sliding_attention"])
    idx = tokens(1, 8, seed=0)
    other = idx.copy()
    other[0, 0] = (idx[0, 0] + 1) % 13
    a, b = m(idx).data, m(other).data
    w = m.config.sliding_window
    np.testing.assert_allclose(a[:, w:], b[:, w:], atol=1e-12)
    assert not np.allclose(a[:, :w], b[:, :w])
    full = build("gemma3", n_layer=1, layer_types=["full_attention"])
    assert not np.allclose(full(idx).data[:, w:], full(other).data[:, w:])


@pytest.mark.parametrize("family", ["gemma3", "qwen3-moe"])
def test_pipeline_stages_compute_the_family_forward(family):
    """Pipeline stages run the model's own embedding (Gemma's scale) and head (soft-capping)."""
    from tinygrad_llm.distributed.pipeline import PipelineParallel
    ref, m = build(family, seed=4), build(family, seed=4)
    idx = tokens(2, 6, seed=1)
    ref.eval()
    m.eval()
    pipe = PipelineParallel(m, ["cpu", "cpu"], n_micro=2)
    np.testing.assert_allclose(pipe(idx).numpy(), ref(idx).data, atol=1e-12)


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["qwen3", "qwen3-moe", "gemma3"])
def test_family_on_gpu_matches_cpu(family):
    """Loss, every gradient and cached generation on the GPU equal the CPU's (float64)."""
    import cupy as cp
    cpu, gpu = build(family, seed=0), build(family, seed=0).to("cuda")
    idx, tgt = tokens(2, 10), tokens(2, 10, seed=1)
    lc, lg = cpu.loss(idx, tgt), gpu.loss(idx, tgt)
    lc.backward()
    lg.backward()
    assert abs(lc.item() - lg.item()) < 1e-8
    for (n, p), (_, q) in zip(cpu.named_parameters(), gpu.named_parameters()):
        np.testing.assert_allclose(cp.asnumpy(q.grad.data), p.grad.data, rtol=1e-6, atol=1e-9, err_msg=n)
    a = tl.generate(cpu, idx[:, :3], 8)
    np.testing.assert_array_equal(cp.asnumpy(tl.generate(gpu, cp.asarray(idx[:, :3]), 8)), a)
