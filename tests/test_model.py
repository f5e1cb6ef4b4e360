"""tinygrad_llm.model: GPTConfig (presets, counts without weights, dicts), GPT (names, tying, init, loss, causality,
gradcheck of every parameter, dropout seeding, state_dict). The forward against an independent NumPy implementation
of every family is in test_families.py."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import autograd as ag
import tinygrad_llm as tl
from test_nn import gradcheck_module
from tinygrad_llm.model.config import RELEASED

GPT2_TINY = dict(vocab_size=11, context_length=6, n_layer=2, n_head=2, n_embd=8, qkv_bias=True, bias=True,
                 tie_weights=True)
LLAMA_TINY = dict(vocab_size=11, context_length=6, n_layer=2, n_head=4, n_kv_heads=2, n_embd=8, qkv_bias=False,
                  bias=False, tie_weights=False, norm="rmsnorm", mlp="swiglu", pos="rope", ffn_hidden=12)
STYLES = {"gpt2": GPT2_TINY, "llama": LLAMA_TINY}


def tiny(style="gpt2", seed=0, dtype=np.float64, **kw):
    return tl.GPT(tl.GPTConfig(**{**STYLES[style], **kw}), seed=seed, dtype=dtype)


def tokens(b, t, v=11, seed=0):
    return np.random.default_rng(seed).integers(0, v, (b, t))


# ---------------------------------------------------------------------------------------------------- config
def test_gpt2_124m_count_without_weights():
    cfg = tl.GPTConfig.preset("gpt2-124m")
    assert (cfg.vocab_size, cfg.context_length, cfg.n_layer, cfg.n_head, cfg.n_embd) == (50257, 1024, 12, 12, 768)
    assert cfg.qkv_bias and cfg.tie_weights
    assert cfg.num_parameters() == 124_439_808
    assert tl.GPT(cfg, init=False).num_parameters() == 124_439_808      # zeros: allocated lazily, no init
    assert cfg.replace(tie_weights=False).num_parameters() == 124_439_808 + 50257 * 768
    assert cfg.num_parameters(non_embedding=True) == 124_439_808 - 1024 * 768


@pytest.mark.parametrize("name,count", [("gpt2-355m", 354_823_168), ("gpt2-774m", 774_030_080),
                                        ("gpt2-1558m", 1_557_611_200), ("gpt2", 124_439_808),
                                        ("gpt2-xl", 1_557_611_200)])
def test_large_preset_counts_match_released_gpt2(name, count):
    assert tl.GPTConfig.preset(name).num_parameters() == count


@pytest.mark.parametrize("name", [n for n in tl.GPTConfig.presets() if not n.startswith("gpt2") and n not in RELEASED])
def test_small_preset_counts_agree_with_the_model(name):
    cfg = tl.GPTConfig.preset(name)
    assert cfg.num_parameters() == tl.GPT(cfg, init=False).num_parameters()
    assert cfg.num_parameters() < 5_000_000


@pytest.mark.parametrize("overrides", [dict(tie_weights=False), dict(bias=False), dict(qkv_bias=False),
                                       dict(norm="rmsnorm"), dict(mlp="swiglu"), dict(pos="rope"),
                                       dict(n_kv_heads=1), dict(ffn_hidden=20), dict(mlp="swiglu", bias=True)])
def test_counts_agree_for_every_option(overrides):
    cfg = tl.GPTConfig(**{**GPT2_TINY, **overrides})
    assert cfg.num_parameters() == tl.GPT(cfg).num_parameters()


def test_llama_preset_is_llama_style():
    cfg = tl.GPTConfig.preset("llama-tiny")
    assert (cfg.norm, cfg.mlp, cfg.pos) == ("rmsnorm", "swiglu", "rope")
    assert cfg.kv_heads < cfg.n_head and not cfg.tie_weights


def test_config_dict_round_trip_and_errors():
    cfg = tl.GPTConfig.preset("tiny", vocab_size=300, dropout=0.1)
    assert cfg.vocab_size == 300 and cfg.dropout == 0.1
    d = json.loads(json.dumps(cfg.to_dict()))
    assert tl.GPTConfig.from_dict(d) == cfg
    with pytest.raises(ValueError, match="unknown fields"):
        tl.GPTConfig.from_dict({**d, "n_layers": 3})
    with pytest.raises(KeyError, match="available"):
        tl.GPTConfig.preset("gpt5")
    with pytest.raises(ValueError, match="divisible"):
        tl.GPTConfig(n_embd=10, n_head=3)
    with pytest.raises(ValueError, match="norm"):
        tl.GPTConfig(norm="batchnorm")
    with pytest.raises(ValueError, match="n_kv_heads"):
        tl.GPTConfig(n_head=4, n_embd=8, n_kv_heads=3)


# ---------------------------------------------------------------------------------------------------- structure
def test_parameter_names_gpt2_style():
    names = [n for n, _ in tiny("gpt2", n_layer=1).named_parameters()]
    assert names == [
        "tok_emb.weight", "pos_emb.weight",
        "blocks.0.norm1.weight", "blocks.0.norm1.bias", "blocks.0.attn.qkv.weight", "blocks.0.attn.qkv.bias",
        "blocks.0.attn.proj.weight", "blocks.0.attn.proj.bias", "blocks.0.norm2.weight", "blocks.0.norm2.bias",
        "blocks.0.ffn.fc.weight", "blocks.0.ffn.fc.bias", "blocks.0.ffn.proj.weight", "blocks.0.ffn.proj.bias",
        "final_norm.weight", "final_norm.bias"]


def test_parameter_names_llama_style():
    names = [n for n, _ in tiny("llama", n_layer=1).named_parameters()]
    assert names == ["tok_emb.weight", "blocks.0.norm1.weight", "blocks.0.attn.qkv.weight",
                     "blocks.0.attn.proj.weight", "blocks.0.norm2.weight", "blocks.0.ffn.gate.weight",
                     "blocks.0.ffn.up.weight", "blocks.0.ffn.proj.weight", "final_norm.weight", "lm_head.weight"]


def test_tied_head_is_the_embedding_parameter():
    m = tiny("gpt2")
    assert m.lm_head.weight is m.tok_emb.weight
    params = list(m.parameters())
    assert len(params) == len({id(p) for p in params})
    assert "lm_head.weight" not in m.state_dict()
    m(tokens(1, 3)).sum().backward()
    assert m.tok_emb.weight.grad is not None                 # gets both the embedding and the head gradient
    m2 = tiny("gpt2", seed=5)
    sd = dict(m.state_dict())
    sd["lm_head.weight"] = sd["tok_emb.weight"]              # an alias is accepted (e.g. a PyTorch-style dict)
    m2.load_state_dict(sd)
    np.testing.assert_array_equal(m2.lm_head.weight.data, m.tok_emb.weight.data)


def test_gpt2_initialisation():
    cfg = tl.GPTConfig.preset("tiny", n_layer=8)
    m = tl.GPT(cfg, seed=0)
    w = m.blocks[0].ffn.fc.weight.data
    assert abs(w.std() - 0.02) < 0.002 and abs(w.mean()) < 0.002
    resid = np.concatenate([b.attn.proj.weight.data.ravel() for b in m.blocks])
    assert abs(resid.std() - 0.02 / math.sqrt(16)) < 0.0005
    assert not m.blocks[3].attn.proj.bias.data.any() and (m.blocks[2].norm1.weight.data == 1).all()
    again, other = tl.GPT(cfg, seed=0), tl.GPT(cfg, seed=1)
    np.testing.assert_array_equal(again.tok_emb.weight.data, m.tok_emb.weight.data)
    assert not np.array_equal(other.tok_emb.weight.data, m.tok_emb.weight.data)
    m64 = tl.GPT(cfg, seed=0, dtype=np.float64)
    assert m64.dtype == np.float64
    np.testing.assert_allclose(m64.tok_emb.weight.data, m.tok_emb.weight.data, rtol=1e-6)
    assert m.blocks[1].attn.qkv.weight.name == "blocks.1.attn.qkv.weight"


# ---------------------------------------------------------------------------------------------------- forward
def test_loss_is_cross_entropy_and_ignores_minus_100():
    m = tiny("gpt2")
    idx, tgt = tokens(2, 5, seed=1), tokens(2, 5, seed=2)
    tgt[0, :2] = -100
    logits, loss = m(idx, tgt)
    z = logits.data - logits.data.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    keep = tgt != -100
    ref = -logp[keep, tgt[keep]].mean()
    assert abs(loss.item() - ref) < 1e-10
    assert abs(m.loss(idx, tgt).item() - ref) < 1e-10
    with pytest.raises(ValueError, match="targets"):
        m(idx, tgt[:, :3])


def test_inputs_accepted_and_errors():
    m = tiny("gpt2")
    ref = m(tokens(1, 4)).data
    np.testing.assert_array_equal(m(tokens(1, 4).tolist()).data, ref)
    np.testing.assert_array_equal(m(ag.Tensor(tokens(1, 4))).data, ref)
    np.testing.assert_array_equal(m(tokens(1, 4)[0]).data, ref)        # (T,) is one sequence
    with pytest.raises(ValueError, match="exceeds context_length 6"):
        m(tokens(1, 7))
    with pytest.raises(TypeError, match="integers"):
        m(np.zeros((1, 3)))
    with pytest.raises(IndexError, match="out of range"):
        m(np.array([[11]]))
    assert m(tokens(2, 6), last_only=True).shape == (2, 1, 11)


@pytest.mark.parametrize("style", ["gpt2", "llama"])
@settings(deadline=None, max_examples=10)
@given(data=st.data())
def test_causality(style, data):
    """Changing the tokens after position t never changes the logits at positions <= t."""
    m = STYLE_MODELS[style]
    t = data.draw(st.integers(0, 4))
    seed = data.draw(st.integers(0, 10**6))
    idx = tokens(2, 6, seed=seed)
    other = idx.copy()
    other[:, t + 1:] = tokens(2, 6, seed=seed + 1)[:, t + 1:]
    a, b = m(idx).data, m(other).data
    np.testing.assert_allclose(a[:, :t + 1], b[:, :t + 1], atol=1e-12)
    if (other[:, t + 1:] != idx[:, t + 1:]).any():
        assert not np.allclose(a, b)


STYLE_MODELS = {s: tiny(s, seed=11) for s in STYLES}


@pytest.mark.parametrize("style", ["gpt2", "llama"])
@settings(deadline=None, max_examples=3)
@given(b=st.integers(1, 2), t=st.integers(1, 6), n_layer=st.integers(1, 2), seed=st.integers(0, 99))
def test_gradcheck_whole_gpt_every_parameter(style, b, t, n_layer, seed):
    """The loss's gradient w.r.t. every parameter (tied ones included) against central differences, float64."""
    m = tiny(style, seed=seed, n_layer=n_layer)
    for p in m.parameters():        # non-trivial norms/biases so that every gradient is exercised
        p.data += np.random.default_rng(seed).normal(0, 0.3, p.shape)
    idx, tgt = tokens(b, t, seed=seed + 1), tokens(b, t, seed=seed + 2)
    tgt[0, 0] = -100
    assert gradcheck_module(m, [idx], loss_fn=lambda logits: m._loss(logits, tgt, -100), max_elements=64,
                            atol=1e-6, rtol=1e-4)


def test_backward_reaches_every_parameter_without_loops_over_heads():
    m = tiny("llama")
    m.loss(tokens(2, 6), tokens(2, 6, seed=1)).backward()
    assert all(p.grad is not None and np.isfinite(p.grad.data).all() for p in m.parameters())


# ---------------------------------------------------------------------------------------------------- modes, dicts
def test_eval_is_deterministic_and_train_dropout_follows_seed():
    kw = dict(dropout=0.3, dtype=np.float32)
    a, b, c = tiny("gpt2", seed=0, **kw), tiny("gpt2", seed=0, **kw), tiny("gpt2", seed=1, **kw)
    c.load_state_dict(a.state_dict())                       # same weights, different dropout seeds
    idx = tokens(2, 6)
    ya, yb, yc = a(idx).data, b(idx).data, c(idx).data
    np.testing.assert_array_equal(ya, yb)
    assert not np.allclose(ya, yc)
    assert not np.allclose(a(idx).data, ya)                 # new masks on the next call
    for m in (a, b, c):
        m.eval()
    e = a(idx).data
    np.testing.assert_array_equal(e, a(idx).data)
    np.testing.assert_array_equal(e, c(idx).data)
    assert not np.allclose(e, ya)


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_state_dict_round_trip(style):
    a, b = tiny(style, seed=0, dtype=np.float32), tiny(style, seed=1, dtype=np.float32)
    idx = tokens(2, 6)
    assert not np.allclose(a(idx).data, b(idx).data)
    b.load_state_dict({k: np.array(v) for k, v in a.state_dict().items()})
    np.testing.assert_array_equal(a(idx).data, b(idx).data)
    small = tiny(style, n_embd=4, n_head=2, n_kv_heads=None)
    with pytest.raises(tl.nn.StateDictError, match="mis-shaped"):
        small.load_state_dict(a.state_dict())


# ---------------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_gpt_on_gpu_matches_cpu(style):
    """to('cuda') keeps the Parameter objects; loss and every gradient match the CPU (float64); state_dicts
    cross devices both ways."""
    import cupy as cp
    cpu, gpu = tiny(style, seed=0), tiny(style, seed=0)
    params = list(gpu.parameters())
    assert gpu.to("cuda") is gpu and gpu.device.startswith("cuda")
    assert all(p is q for p, q in zip(params, gpu.parameters()))
    idx, tgt = tokens(2, 6), tokens(2, 6, seed=1)
    lc, lg = cpu.loss(idx, tgt), gpu.loss(idx, tgt)         # NumPy ids are moved to the model's device
    lc.backward()
    lg.backward()
    assert abs(lc.item() - lg.item()) < 1e-8
    for (n, p), (_, q) in zip(cpu.named_parameters(), gpu.named_parameters()):
        assert isinstance(q.data, cp.ndarray) and isinstance(q.grad.data, cp.ndarray)
        np.testing.assert_allclose(cp.asnumpy(q.grad.data), p.grad.data, rtol=1e-6, atol=1e-9, err_msg=n)
    other = tiny(style, seed=5)
    other.load_state_dict(gpu.state_dict())                # CuPy arrays into a CPU model
    np.testing.assert_allclose(other(idx).data, cpu(idx).data, atol=1e-10)
    gpu2 = tiny(style, seed=5).to("cuda")
    gpu2.load_state_dict(cpu.state_dict())                 # NumPy arrays into a GPU model
    np.testing.assert_allclose(cp.asnumpy(gpu2(cp.asarray(idx)).data), cpu(idx).data, rtol=1e-6, atol=1e-9)
    assert isinstance(gpu.cpu().tok_emb.weight.data, np.ndarray)


def test_deepcopy_keeps_the_tie_and_copies_the_weights():
    import copy
    m = tiny("gpt2")
    c = copy.deepcopy(m)
    assert c.lm_head.weight is c.tok_emb.weight and c.tok_emb.weight is not m.tok_emb.weight
    np.testing.assert_array_equal(c(tokens(1, 4)).data, m(tokens(1, 4)).data)
    c.tok_emb.weight.data *= 3      # (adding a constant would not do: LayerNorm removes it)
    assert not np.allclose(c(tokens(1, 4)).data, m(tokens(1, 4)).data)
