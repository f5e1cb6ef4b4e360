"""tl.generate: KV cache against recomputation (tokens and logits, GPT-2, Llama, Qwen3-MoE and Gemma 3 with
sliding-window layers, across the context window), greedy / top-k / top-p / temperature / eos semantics, batching, modes, and the GPU path."""
from __future__ import annotations

import numpy as np
import pytest

import autograd as ag
import tinygrad_llm as tl
from tinygrad_llm.model import sample_next

GPT2 = dict(vocab_size=37, context_length=16, n_layer=2, n_head=4, n_embd=32, qkv_bias=True)
LLAMA = dict(vocab_size=37, context_length=16, n_layer=2, n_head=4, n_kv_heads=2, n_embd=32, bias=False,
             qkv_bias=False, tie_weights=False, norm="rmsnorm", mlp="swiglu", pos="rope")
QWEN3_MOE = dict(vocab_size=37, context_length=16, n_layer=2, n_head=4, n_kv_heads=2, n_embd=32, family="qwen3",
                 head_size=12, n_experts=4, n_experts_per_tok=2, moe_hidden=16, norm_topk_prob=True)
GEMMA3 = dict(vocab_size=37, context_length=16, n_layer=3, n_head=4, n_kv_heads=1, n_embd=32, family="gemma3",
              head_size=8, layer_types=["sliding_attention", "sliding_attention", "full_attention"], sliding_window=5,
              rope_local_theta=10000.0, query_pre_attn_scalar=8.0, final_logit_softcap=20.0)
STYLES = {"gpt2": GPT2, "llama": LLAMA, "qwen3-moe": QWEN3_MOE, "gemma3": GEMMA3}


def model(style="gpt2", seed=0, scale=5.0, **kw):
    """A random float32 model; ``scale`` > 1 enlarges GPT-2's small initial weights so that logits differ clearly
    between tokens (varied greedy continuations)."""
    m = tl.GPT(tl.GPTConfig(**{**STYLES[style], **kw}), seed=seed)
    for p in m.parameters():
        p.data *= scale
    return m


def prompt(b=3, t=4, seed=0, v=37):
    return np.random.default_rng(seed).integers(0, v, (b, t))


@pytest.mark.parametrize("style", list(STYLES))
@pytest.mark.parametrize("t0,new", [(4, 8), (5, 20)])         # the second one runs past the 16-token window
@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_cache_equals_recompute(style, t0, new, scale):
    m = model(style, scale=scale)
    idx = prompt(3, t0)
    a, la = tl.generate(m, idx, new, use_cache=True, return_logits=True)
    b, lb = tl.generate(m, idx, new, use_cache=False, return_logits=True)
    assert a.shape == (3, t0 + new) and a.dtype == np.int64
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[:, :t0], idx)
    assert la.shape == (3, new, 37) and la.dtype == np.float32
    np.testing.assert_allclose(la, lb, atol=1e-5, rtol=0)


@pytest.mark.parametrize("style", list(STYLES))
def test_cache_equals_recompute_when_sampling(style):
    m = model(style)
    kw = dict(temperature=0.9, top_k=10, top_p=0.95)
    a = tl.generate(m, prompt(), 10, use_cache=True, rng=7, **kw)
    b = tl.generate(m, prompt(), 10, use_cache=False, rng=np.random.default_rng(7), **kw)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, tl.generate(m, prompt(), 10, rng=8, **kw))


def test_greedy_is_argmax_of_the_full_forward():
    m = model("gpt2")
    seq = prompt(2, 3)
    out = tl.generate(m, seq, 6)
    m.eval()
    with ag.no_grad():
        for _ in range(6):
            nxt = m(seq).data[:, -1].argmax(-1)
            seq = np.concatenate([seq, nxt[:, None]], axis=1)
    np.testing.assert_array_equal(out, seq)


def test_top_k_one_and_tiny_top_p_are_greedy():
    m = model("llama")
    greedy = tl.generate(m, prompt(), 8)
    np.testing.assert_array_equal(tl.generate(m, prompt(), 8, temperature=1.5, top_k=1, rng=0), greedy)
    np.testing.assert_array_equal(tl.generate(m, prompt(), 8, temperature=1.5, top_p=1e-9, rng=0), greedy)


def test_eos_stops_each_row_and_pads():
    m = model("gpt2")
    idx = prompt(3, 4)
    free = tl.generate(m, idx, 10)
    eos = int(free[0, 6])                 # row 0 emits it as its third new token
    out = tl.generate(m, idx, 10, eos_id=eos)
    for r in range(3):
        new = free[r, 4:]
        hits = np.flatnonzero(new == eos)
        n = out.shape[1] - 4
        if hits.size:
            stop = hits[0]
            np.testing.assert_array_equal(out[r, 4:4 + stop + 1], new[:stop + 1])
            assert (out[r, 4 + stop:] == eos).all()        # finished rows keep padding with eos
        else:
            np.testing.assert_array_equal(out[r, 4:], new[:n])
    # one row: generation stops at the eos token
    one = tl.generate(m, idx[:1], 10, eos_id=eos)
    assert one.shape[1] == 4 + 3 and one[0, -1] == eos


def test_modes_shapes_and_no_graph():
    m = model("gpt2", dropout=0.2)
    m.train()
    out = tl.generate(m, prompt(1, 3)[0], 5)               # a 1-D prompt gives a 1-D result
    assert out.shape == (8,) and m.training                 # training mode restored
    assert all(p.grad is None for p in m.parameters())
    np.testing.assert_array_equal(tl.generate(m, prompt(1, 3)[0], 5), out)   # eval inside: deterministic
    np.testing.assert_array_equal(tl.generate(m, prompt(2, 3), 0), prompt(2, 3))
    assert tl.generate(m, prompt(2, 3).tolist(), 2).shape == (2, 5)
    long = prompt(2, 20)                                    # longer than the context: cropped, not an error
    np.testing.assert_array_equal(tl.generate(m, long, 3), tl.generate(m, long, 3, use_cache=False))
    with pytest.raises(ValueError, match="temperature"):
        tl.generate(m, prompt(), 2, temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        tl.generate(m, prompt(), 2, temperature=1, top_p=0)


def test_sample_next_respects_top_k_and_top_p():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]] * 2000))
    rng = np.random.default_rng(0)
    assert set(np.unique(sample_next(logits, 1.0, top_k=2, rng=rng))) == {0, 1}
    assert set(np.unique(sample_next(logits, 1.0, top_p=0.7, rng=rng))) == {0, 1}   # 0.5 < 0.7 <= 0.8
    assert set(np.unique(sample_next(logits, 1.0, top_p=0.5, rng=rng))) == {0}
    draws = sample_next(logits, 1.0, rng=rng)
    np.testing.assert_allclose(np.bincount(draws, minlength=4) / 2000, [0.5, 0.3, 0.15, 0.05], atol=0.04)
    np.testing.assert_array_equal(sample_next(logits[:3], 0.0), [0, 0, 0])
    hot = sample_next(logits, 100.0, rng=rng)               # high temperature flattens the distribution
    assert np.bincount(hot, minlength=4)[3] > 300


@pytest.mark.gpu
@pytest.mark.parametrize("style", ["llama", "qwen3-moe", "gemma3"])
def test_generate_on_gpu_matches_cpu(style):
    import cupy as cp
    m = model(style, scale=1.0 if style != "llama" else 5.0)
    cpu = tl.generate(m, prompt(), 6, temperature=0.8, top_k=5, rng=1)
    m.to("cuda")
    gpu = tl.generate(m, cp.asarray(prompt()), 6, temperature=0.8, top_k=5, rng=1)
    assert isinstance(gpu, cp.ndarray)
    np.testing.assert_array_equal(cp.asnumpy(gpu), cpu)
