"""The decoder's parts, built from a config: Attention (GQA, RoPE, q/k norms, sliding window, KV cache, dropout),
MLP (gelu / swiglu / geglu), MoE (router, top-k, norm_topk_prob, the load-balancing loss) and Block; each
gradchecked in float64 on hypothesis-drawn shapes."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import autograd as ag
import tinygrad_llm as tl
from test_nn import gradcheck_module, rand
from tinygrad_llm.model import MLP, Attention, Block, MoE
from tinygrad_llm.model.blocks import load_balancing_loss, window_keys

F64 = np.float64


def cfg(**kw):
    return tl.GPTConfig(**{**dict(vocab_size=7, context_length=8, n_layer=1, n_embd=8, n_head=2), **kw})


def randomise(module, seed=0, scale=0.5):
    rng = np.random.default_rng(seed)
    for p in module.parameters():
        p.data[...] = rng.normal(0, scale, p.shape)
    return module


# ---------------------------------------------------------------------------------------------------- attention
@settings(deadline=None, max_examples=8)
@given(st.integers(1, 2), st.integers(1, 5), st.sampled_from([(2, 2), (4, 2), (4, 1)]), st.booleans(),
       st.sampled_from(["gpt2", "llama", "qwen3", "gemma3"]), st.integers(0, 99))
def test_gradcheck_attention(b, t, heads, qkv_bias, family, seed):
    n_head, n_kv = heads
    kw = dict(layer_types=["sliding_attention"], sliding_window=2) if family == "gemma3" else {}
    attn = randomise(Attention(cfg(family=family, n_head=n_head, n_kv_heads=n_kv, qkv_bias=qkv_bias, **kw),
                               dtype=F64), seed)
    assert gradcheck_module(attn, [rand((b, t, 8), seed)])


def test_gqa_equals_attention_with_repeated_heads():
    """GQA with K kv heads = plain attention whose k/v weights repeat each kv head H/K times."""
    c, h, kv, d = 8, 4, 2, 2
    gqa = randomise(Attention(cfg(family="llama", n_head=h, n_kv_heads=kv), dtype=F64), 0)
    mha = Attention(cfg(family="llama", n_head=h), dtype=F64)
    w = gqa.qkv.weight.data
    q_w, k_w, v_w = w[:h * d], w[h * d:(h + kv) * d], w[(h + kv) * d:]
    rep = lambda m: np.repeat(m.reshape(kv, d, c), h // kv, axis=0).reshape(h * d, c)
    mha.qkv.weight.data[...] = np.concatenate([q_w, rep(k_w), rep(v_w)])
    mha.proj.weight.data[...] = gqa.proj.weight.data
    x = rand((2, 5, c))
    np.testing.assert_allclose(gqa(x).data, mha(x).data, atol=1e-12)


@pytest.mark.parametrize("family,kw", [("llama", {}), ("qwen3", dict(head_size=6)),
                                       ("gemma3", dict(layer_types=["sliding_attention"], sliding_window=3))])
def test_attention_cache_matches_full_pass(family, kw):
    attn = randomise(Attention(cfg(family=family, n_head=4, n_kv_heads=2, **kw), dtype=F64), 1)
    x = rand((2, 8, 8))
    full = attn(x).data
    cache = tl.model.LayerKVCache(2, 2, 8, attn.head_dim, dtype=F64)
    parts = [attn(x[:, a:b], cache=cache).data for a, b in [(0, 3), (3, 4), (4, 7), (7, 8)]]
    np.testing.assert_allclose(np.concatenate(parts, axis=1), full, atol=1e-12)
    with pytest.raises(ValueError, match="cache full"):
        attn(x[:, :1], cache=cache)


@pytest.mark.parametrize("chunks", [[1] * 9, [4, 1, 1, 3, 1], [2, 5, 2], [7, 2]])
def test_ring_cache_returns_the_positions_a_window_needs(chunks):
    """A sliding layer's cache holds W slots; each append hands back positions first .. length-1 (the newest W
    for one new token in a full ring, in slot order), first never later than the oldest key the window needs."""
    w, cache = 3, tl.model.LayerKVCache(1, 1, 16, 1, dtype=F64, window=3)
    assert cache.k.shape == (1, 1, 3, 1)
    pos = 0
    for t in chunks:
        new = np.arange(pos, pos + t, dtype=F64).reshape(1, 1, t, 1)       # each key holds its position
        keys, values, first = cache.append(new, -new)
        got = keys[0, 0, :, 0]
        assert first <= max(0, pos - w + 1) and cache.length == pos + t
        if t == 1 and pos >= w:
            assert sorted(got) == list(range(pos + 1 - w, pos + 1)) and first == pos + 1 - w
        else:
            np.testing.assert_array_equal(got, np.arange(first, pos + t))
        np.testing.assert_array_equal(values, -keys)
        pos += t


@pytest.mark.parametrize("start,tq,w", [(0, 6, 2), (3, 2, 3), (5, 1, 2), (0, 5, 1), (2, 3, 5), (0, 4, 9),
                                        (7, 3, 2), (9, 1, 4)])
def test_sliding_window_keys_by_brute_force(start, tq, w):
    """The keys kept and the mask (or bottom-right causal attention when None) give exactly j <= i, i - j < w."""
    lo, mask = window_keys(start, tq, w)
    tk = start + tq
    want = np.array([[j <= i and i - j < w for j in range(tk)] for i in range(start, tk)])
    assert not want[:, :lo].any()                                      # nothing dropped is visible
    if mask is None:                                                   # causal over keys lo.. (is_causal's rule)
        mask = np.array([[j - lo <= qi + (tk - lo - tq) for j in range(lo, tk)] for qi in range(tq)])
    np.testing.assert_array_equal(mask, want[:, lo:])
    assert window_keys(5, 1, 2)[0] == 4 and window_keys(0, 5, None) == (0, None)


def test_attention_dropout_follows_seed_and_eval():
    x = ag.Tensor(rand((2, 5, 8)).astype(np.float32))
    a1, a2 = (randomise(Attention(cfg(dropout=0.3), seed=7)) for _ in range(2))
    np.testing.assert_array_equal(a1(x).data, a2(x).data)
    a1.eval()
    np.testing.assert_array_equal(a1(x).data, a1(x).data)
    assert not np.allclose(a1(x).data, a2(x).data)


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match=r"expected input \(B, T, 8\)"):
        Attention(cfg())(rand((2, 3, 4)))


# ---------------------------------------------------------------------------------------------------- MLP, block
@settings(deadline=None, max_examples=6)
@given(st.integers(1, 2), st.integers(1, 3), st.sampled_from(["gelu", "swiglu", "geglu"]), st.booleans(),
       st.integers(0, 99))
def test_gradcheck_mlp(b, t, kind, bias, seed):
    mlp = randomise(MLP(cfg(mlp=kind, bias=bias, ffn_hidden=5), dtype=F64), seed)
    assert gradcheck_module(mlp, [rand((b, t, 8), seed)])


def test_mlp_kinds_compute_their_formulas():
    x = rand((2, 3, 8))
    gelu = lambda z: 0.5 * z * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z ** 3)))
    for kind, act in [("swiglu", lambda z: z / (1 + np.exp(-z))), ("geglu", gelu)]:
        m = randomise(MLP(cfg(mlp=kind, ffn_hidden=5, bias=False), dtype=F64), 3)
        want = (act(x @ m.gate.weight.data.T) * (x @ m.up.weight.data.T)) @ m.proj.weight.data.T
        np.testing.assert_allclose(m(x).data, want, atol=1e-12)
    m = randomise(MLP(cfg(ffn_hidden=5), dtype=F64), 4)
    want = gelu(x @ m.fc.weight.data.T + m.fc.bias.data) @ m.proj.weight.data.T + m.proj.bias.data
    np.testing.assert_allclose(m(x).data, want, atol=1e-12)


@settings(deadline=None, max_examples=4)
@given(st.sampled_from(["gpt2", "llama", "qwen3", "gemma3"]), st.integers(0, 99))
def test_gradcheck_block(family, seed):
    block = randomise(Block(cfg(family=family, n_kv_heads=1, ffn_hidden=6), dtype=F64), seed)
    assert gradcheck_module(block, [rand((2, 3, 8), seed)])


def test_gemma_block_has_four_norms_and_names():
    names = [n for n, _ in Block(cfg(family="gemma3", n_kv_heads=1)).named_parameters()]
    assert names == ["norm1.weight", "attn.qkv.weight", "attn.proj.weight", "attn.q_norm.weight",
                     "attn.k_norm.weight", "post_attn_norm.weight", "norm2.weight", "ffn.gate.weight",
                     "ffn.up.weight", "ffn.proj.weight", "post_ffn_norm.weight"]


# ---------------------------------------------------------------------------------------------------- MoE
def moe_cfg(**kw):
    return cfg(family="qwen3", n_experts=4, n_experts_per_tok=2, moe_hidden=3, **kw)


@pytest.mark.parametrize("norm_topk", [False, True])
def test_moe_equals_a_token_by_token_loop(norm_topk):
    moe = randomise(MoE(moe_cfg(norm_topk_prob=norm_topk), dtype=F64), 2, scale=1.0)
    x = rand((2, 5, 8), 1)
    log: list = []
    y = moe(x, log).data
    probs, chosen = log[0]
    silu = lambda z: z / (1 + np.exp(-z))
    for n, row in enumerate(x.reshape(10, 8)):
        z = moe.router.weight.data @ row
        p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        top = np.argsort(-p)[:2]
        np.testing.assert_array_equal(chosen[n], top)
        w = p[top] / (p[top].sum() if norm_topk else 1)
        want = sum(wi * (moe.experts[e].proj.weight.data @ (silu(moe.experts[e].gate.weight.data @ row) *
                                                            (moe.experts[e].up.weight.data @ row)))
                   for e, wi in zip(top, w))
        np.testing.assert_allclose(y.reshape(10, 8)[n], want, atol=1e-12)
    np.testing.assert_allclose(probs.data.sum(-1), 1.0, atol=1e-12)


@settings(deadline=None, max_examples=5)
@given(st.integers(1, 2), st.integers(1, 4), st.booleans(), st.integers(0, 99))
def test_gradcheck_moe_and_its_router(b, t, norm_topk, seed):
    moe = randomise(MoE(moe_cfg(norm_topk_prob=norm_topk), dtype=F64), seed, scale=1.0)
    assert gradcheck_module(moe, [rand((b, t, 8), seed)])


def test_load_balancing_loss_value_and_gradient():
    """Qwen-MoE's formula by hand: E * sum_e (fraction of choices for e) * (mean probability of e), over layers."""
    e, k = 4, 2
    moes = [randomise(MoE(moe_cfg(), dtype=F64), s, scale=1.0) for s in (0, 1)]
    x = rand((3, 5, 8), 2)
    log: list = []
    for m in moes:
        m(x, log)
    probs = np.concatenate([p.data for p, _ in log])
    picks = np.concatenate([c for _, c in log])
    frac = np.array([(picks == i).sum() for i in range(e)]) / len(probs)
    assert load_balancing_loss(log, e).item() == pytest.approx(e * (frac * probs.mean(0)).sum(), rel=1e-12)
    assert frac.sum() == pytest.approx(k)

    def loss_of(router_w, xin):             # the router weight of the first layer and the input, as leaves
        moes[0].router._parameters["weight"] = router_w
        lg: list = []
        for m in moes:
            m(xin, lg)
        return load_balancing_loss(lg, e)

    w0 = moes[0].router.weight
    try:
        assert ag.gradcheck(loss_of, [w0.data, x])
    finally:
        moes[0].router._parameters["weight"] = w0


def test_aux_loss_is_added_to_the_training_loss_only():
    m = tl.GPT(tl.GPTConfig.preset("qwen3-moe-tiny", router_aux_loss_coef=0.5), dtype=F64)
    idx = np.random.default_rng(0).integers(0, 512, (2, 6))
    tgt = np.random.default_rng(1).integers(0, 512, (2, 6))
    logits, train_loss = m(idx, tgt)
    ce = m._loss(logits, tgt, -100).item()
    log: list = []
    m.forward_hidden(idx, router_log=log)
    aux = load_balancing_loss(log, 4).item()
    assert len(log) == m.config.n_layer and aux > 0
    assert train_loss.item() == pytest.approx(ce + 0.5 * aux, rel=1e-12)
    m.eval()
    assert m(idx, tgt)[1].item() == pytest.approx(ce, rel=1e-12)
    m.train()
    m.loss(idx, tgt).backward()
    assert all(p.grad is not None for p in m.parameters())
