"""tinygrad_llm.nn: the Module system (registration, names, modes, freezing, devices, state_dict with strict errors)
and gradchecks of every layer (float64, hypothesis shapes) with respect to its inputs and all its parameters."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import autograd as ag
import tinygrad_llm as tl
from tinygrad_llm import nn

F64 = np.float64


# ---------------------------------------------------------------------------------------------------- helpers
def param_groups(module):
    """[(param, [(owner module, attribute name), ...])]: each parameter once, with every slot that holds it."""
    groups: dict[int, tuple] = {}
    for m in module.modules():
        for name, p in m._parameters.items():
            if p is not None:
                groups.setdefault(id(p), (p, []))[1].append((m, name))
    return list(groups.values())


def gradcheck_module(module, inputs, loss_fn=None, **kw):
    """ag.gradcheck of ``module(*inputs)`` (or ``loss_fn(output)``) w.r.t. the float inputs and every parameter.

    The parameters are swapped, slot by slot, for gradcheck's float64 copies while the check runs (a shared
    parameter gets one copy in all its slots), then restored.
    """
    groups = param_groups(module)
    n_in = len(inputs)

    def fn(*ts):
        for (_, slots), t in zip(groups, ts[n_in:]):
            for m, name in slots:
                m._parameters[name] = t
        out = module(*ts[:n_in])
        return loss_fn(out) if loss_fn is not None else out

    try:
        return ag.gradcheck(fn, list(inputs) + [p.data for p, _ in groups], **kw)
    finally:
        for p, slots in groups:
            for m, name in slots:
                m._parameters[name] = p


def rand(shape, seed=0, scale=1.0):
    return np.random.default_rng(seed).standard_normal(shape) * scale


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(np.ones(3, dtype=np.float32))
        self.fc = nn.Linear(4, 3, rng=0)
        self.layers = nn.ModuleList([nn.Linear(3, 3, rng=i) for i in range(2)])
        self.drop = nn.Dropout(0.5, seed=0)

    def forward(self, x):
        x = self.fc(x) * self.scale
        for layer in self.layers:
            x = layer(x)
        return self.drop(x)


# ---------------------------------------------------------------------------------------------------- Module
def test_registration_and_dotted_names():
    net = Net()
    names = [n for n, _ in net.named_parameters()]
    assert names == ["scale", "fc.weight", "fc.bias", "layers.0.weight", "layers.0.bias",
                     "layers.1.weight", "layers.1.bias"]
    assert net.fc.weight.shape == (3, 4) and isinstance(net.fc.weight, nn.Parameter)
    assert [type(m).__name__ for m in net.children()] == ["Linear", "ModuleList", "Dropout"]
    assert len(list(net.modules())) == 6
    assert net.num_parameters() == 3 + 12 + 3 + 2 * 12
    assert len(net.layers) == 2 and net.layers[-1] is net.layers[1]
    net.scale = None                             # a parameter slot may be emptied
    assert "scale" not in dict(net.named_parameters())
    with pytest.raises(TypeError, match="Parameter"):
        net.fc.weight = ag.Tensor(np.zeros((3, 4)))   # a plain Tensor is not silently registered


def test_forgetting_super_init_is_a_clear_error():
    class Bad(nn.Module):
        def __init__(self):
            self.fc = nn.Linear(2, 2)

    with pytest.raises(AttributeError, match="super"):
        Bad()


def test_parameter_is_a_slotted_tensor():
    p = nn.Parameter(np.zeros(3))
    assert isinstance(p, ag.Tensor) and p.requires_grad and p.is_leaf
    assert not hasattr(p, "__dict__")
    with pytest.raises(TypeError):
        nn.Parameter(np.zeros(3, dtype=np.int64))
    y = (p * 2.0).sum()
    y.backward()
    np.testing.assert_allclose(p.grad.data, 2.0)


def test_shared_parameter_listed_once():
    a, b = nn.Linear(3, 3), nn.Linear(3, 3)
    b.weight = a.weight
    seq = nn.Sequential(a, b)
    assert [n for n, _ in seq.named_parameters()] == ["0.weight", "0.bias", "1.bias"]
    assert len(list(seq.named_parameters(remove_duplicate=False))) == 4
    assert seq.num_parameters() == 9 + 3 + 3
    assert "1.weight" not in seq.state_dict()


def test_train_eval_zero_grad_freeze_apply():
    net = Net()
    assert all(m.training for m in net.modules())
    assert net.eval() is net and not any(m.training for m in net.modules())
    net.train()
    assert net.drop.training
    x = ag.Tensor(rand((2, 4)).astype(np.float32))
    net(x).sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())
    net.fc.requires_grad_(False)
    assert net.num_parameters(trainable_only=True) == net.num_parameters() - 15
    net(x).sum().backward()
    assert net.fc.weight.grad is None and net.layers[0].weight.grad is not None
    seen = []
    net.apply(lambda m: seen.append(type(m).__name__))
    assert seen[-1] == "Net" and seen.count("Linear") == 3


def test_to_dtype_keeps_parameter_objects():
    net = Net()
    before = list(net.parameters())
    net.to(dtype=np.float64)
    assert all(p is q for p, q in zip(before, net.parameters()))
    assert all(p.dtype == np.float64 for p in net.parameters()) and net.dtype == np.float64
    assert net.to("cpu") is net and net.device == "cpu"
    with pytest.raises(ValueError, match="device"):
        net.to("tpu")


def test_state_dict_round_trip_and_conversion():
    a, b = Net(), Net()
    for p in b.parameters():
        p.data[...] = 0
    sd = {k: v.astype(np.float64) for k, v in a.state_dict().items()}      # dtype converted on load
    sd["scale"] = ag.Tensor(sd["scale"])                                    # Tensors accepted too
    res = b.load_state_dict(sd)
    assert res.missing_keys == [] and res.unexpected_keys == []
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert q.dtype == np.float32
        np.testing.assert_array_equal(p.data, q.data, err_msg=n)
    snap = a.state_dict(copy=True)
    live = a.state_dict()
    a.fc.weight.data += 1
    assert not np.array_equal(snap["fc.weight"], a.fc.weight.data)
    assert live["fc.weight"] is a.fc.weight.data


def test_load_state_dict_strict_errors_list_everything_and_write_nothing():
    net = Net()
    before = {k: v.copy() for k, v in net.state_dict().items()}
    sd = {k: v + 1 for k, v in net.state_dict().items()}
    del sd["fc.bias"]
    sd["extra.weight"] = np.zeros(2)
    sd["layers.0.weight"] = np.zeros((2, 2))
    with pytest.raises(nn.StateDictError) as e:
        net.load_state_dict(sd)
    msg = str(e.value)
    assert "missing (1): fc.bias" in msg and "unexpected (1): extra.weight" in msg
    assert "layers.0.weight: checkpoint has shape (2, 2), model has (3, 3)" in msg
    for k, v in net.state_dict().items():                    # nothing was written
        np.testing.assert_array_equal(v, before[k])
    # a shape mismatch is an error even when not strict
    with pytest.raises(nn.StateDictError, match="mis-shaped"):
        net.load_state_dict(sd, strict=False)
    sd["layers.0.weight"] = before["layers.0.weight"]
    res = net.load_state_dict(sd, strict=False)
    assert res.missing_keys == ["fc.bias"] and res.unexpected_keys == ["extra.weight"]
    np.testing.assert_array_equal(net.scale.data, before["scale"] + 1)


def test_buffers_move_but_are_not_parameters():
    m = nn.Module()
    m.register_buffer("table", np.arange(3.0))
    m.register_buffer("scratch", np.zeros(2), persistent=False)
    assert list(m.parameters()) == []
    assert list(m.state_dict()) == ["table"]
    m.to(dtype=np.float32)
    assert m.table.dtype == np.float32
    m.load_state_dict({"table": np.ones(3)})
    np.testing.assert_array_equal(m.table, 1.0)
    attn = nn.MultiHeadAttention(8, 2, rope=True, context_length=4)
    assert "rope_cos" not in attn.state_dict() and len(list(attn.buffers())) == 2


# ---------------------------------------------------------------------------------------------------- layers
def test_linear_matches_numpy_and_pytorch_layout():
    lin = nn.Linear(3, 5, rng=0)
    assert lin.weight.shape == (5, 3) and lin.bias.shape == (5,)
    bound = 1 / np.sqrt(3)
    assert np.abs(lin.weight.data).max() <= bound
    x = rand((2, 4, 3)).astype(np.float32)
    np.testing.assert_allclose(lin(x).data, x @ lin.weight.data.T + lin.bias.data, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="expected 3"):
        lin(np.zeros((2, 4)))
    with nn.skip_init():
        z = nn.Linear(3, 5)
    assert not z.weight.data.any()


def test_embedding_errors():
    emb = nn.Embedding(5, 3, rng=0)
    assert emb(np.array([[0, 4]])).shape == (1, 2, 3)
    with pytest.raises(IndexError, match="out of range"):
        emb(np.array([5]))
    with pytest.raises(TypeError, match="integer"):
        emb(np.array([0.5]))


@settings(deadline=None, max_examples=6)
@given(st.integers(1, 2), st.integers(1, 3), st.integers(1, 4), st.integers(1, 3), st.booleans(), st.integers(0, 99))
def test_gradcheck_linear(b, t, fin, fout, bias, seed):
    lin = nn.Linear(fin, fout, bias=bias, dtype=F64, rng=seed)
    assert gradcheck_module(lin, [rand((b, t, fin), seed)])


@settings(deadline=None, max_examples=5)
@given(st.integers(1, 2), st.integers(1, 4), st.integers(2, 5), st.integers(0, 99))
def test_gradcheck_embedding(b, t, c, seed):
    emb = nn.Embedding(4, c, dtype=F64, rng=seed)
    idx = np.random.default_rng(seed).integers(0, 4, (b, t))   # repeats collect summed gradients
    assert gradcheck_module(emb, [idx])


@settings(deadline=None, max_examples=6)
@given(st.integers(1, 2), st.integers(1, 3), st.integers(2, 6), st.sampled_from(["ln", "ln-nobias", "rms"]),
       st.integers(0, 99))
def test_gradcheck_norms(b, t, c, kind, seed):
    layer = nn.RMSNorm(c, dtype=F64) if kind == "rms" else nn.LayerNorm(c, bias=kind == "ln", dtype=F64)
    rng = np.random.default_rng(seed)
    for p in layer.parameters():
        p.data[...] = rng.uniform(0.5, 1.5, p.shape)
    assert gradcheck_module(layer, [rand((b, t, c), seed)])


def test_norms_match_numpy():
    x = rand((2, 3, 6))
    ln = nn.LayerNorm(6, dtype=F64)
    ln.weight.data[...] = rand(6, 1)
    ln.bias.data[...] = rand(6, 2)
    ref = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * ln.weight.data + ln.bias.data
    np.testing.assert_allclose(ln(x).data, ref, atol=1e-12)
    rms = nn.RMSNorm(6, eps=1e-6, dtype=F64)
    np.testing.assert_allclose(rms(x).data, x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6), atol=1e-12)


@pytest.mark.parametrize("layer", [nn.GELU(), nn.SiLU()])
def test_gradcheck_activations(layer):
    assert gradcheck_module(layer, [rand((2, 3, 4))])


def test_gelu_silu_values():
    x = np.linspace(-3, 3, 13)
    gelu = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    np.testing.assert_allclose(nn.GELU()(x).data, gelu, atol=1e-12)
    np.testing.assert_allclose(nn.SiLU()(x).data, x / (1 + np.exp(-x)), atol=1e-12)


def test_dropout_seed_eval_and_gradcheck():
    x = np.ones((4, 50))
    d1, d2 = nn.Dropout(0.5, seed=3), nn.Dropout(0.5, seed=3)
    y1, y2 = d1(x).data, d2(x).data
    np.testing.assert_array_equal(y1, y2)                      # same seed, same mask
    assert set(np.unique(y1)) <= {0.0, 2.0} and 0 < (y1 == 0).mean() < 1
    assert not np.array_equal(d1(x).data, y1)                  # the mask changes call after call
    assert not np.array_equal(nn.Dropout(0.5, seed=4)(x).data, y1)
    d1.eval()
    np.testing.assert_array_equal(d1(x).data, x)
    with pytest.raises(ValueError):
        nn.Dropout(1.0)
    d = nn.Dropout(0.3, seed=0)

    class Reseeded(nn.Module):                                 # one fixed mask for every gradcheck evaluation
        def forward(self, x):
            d.reseed(0)
            return d(x)

    assert gradcheck_module(Reseeded(), [rand((3, 4))])


@settings(deadline=None, max_examples=5)
@given(st.integers(1, 2), st.integers(1, 3), st.sampled_from([2, 4]), st.booleans(), st.integers(0, 99))
def test_gradcheck_feedforward(b, t, c, bias, seed):
    ffn = nn.FeedForward(c, hidden=3, bias=bias, dtype=F64, rng=seed)
    assert gradcheck_module(ffn, [rand((b, t, c), seed)])
    glu = nn.SwiGLUFeedForward(c, hidden=3, bias=bias, dtype=F64, rng=seed)
    assert gradcheck_module(glu, [rand((b, t, c), seed)])


@settings(deadline=None, max_examples=8)
@given(st.integers(1, 2), st.integers(1, 4), st.sampled_from([(2, 2), (4, 2), (4, 1), (2, 1)]),
       st.booleans(), st.booleans(), st.integers(0, 99))
def test_gradcheck_attention(b, t, heads, qkv_bias, rope, seed):
    n_head, n_kv = heads
    attn = nn.MultiHeadAttention(8, n_head, n_kv, context_length=4, qkv_bias=qkv_bias, rope=rope, dtype=F64,
                                 rng=seed)
    assert gradcheck_module(attn, [rand((b, t, 8), seed)])


@settings(deadline=None, max_examples=4)
@given(st.sampled_from([("layernorm", "gelu", False), ("rmsnorm", "swiglu", True)]), st.integers(0, 99))
def test_gradcheck_transformer_block(kind, seed):
    norm, mlp, rope = kind
    block = nn.TransformerBlock(4, 2, n_kv_heads=1 if rope else None, context_length=3, norm=norm, mlp=mlp,
                                ffn_hidden=6, rope=rope, qkv_bias=True, dtype=F64, rng=seed)
    assert gradcheck_module(block, [rand((2, 3, 4), seed)])


def test_attention_dropout_follows_seed_and_eval():
    x = ag.Tensor(rand((2, 5, 8)).astype(np.float32))
    a1 = nn.MultiHeadAttention(8, 2, dropout=0.3, rng=0, seed=7)
    a2 = nn.MultiHeadAttention(8, 2, dropout=0.3, rng=0, seed=7)
    np.testing.assert_array_equal(a1(x).data, a2(x).data)
    a1.eval()
    np.testing.assert_array_equal(a1(x).data, a1(x).data)
    assert not np.allclose(a1(x).data, a2(x).data)


def test_gqa_equals_attention_with_repeated_heads():
    """GQA with K kv heads = plain attention whose k/v weights repeat each kv head H/K times."""
    c, h, kv, d = 8, 4, 2, 2
    gqa = nn.MultiHeadAttention(c, h, kv, rope=True, context_length=5, dtype=F64, rng=0)
    mha = nn.MultiHeadAttention(c, h, h, rope=True, context_length=5, dtype=F64, rng=1)
    w = gqa.qkv.weight.data
    q_w, k_w, v_w = w[:h * d], w[h * d:(h + kv) * d], w[(h + kv) * d:]
    rep = lambda m: np.repeat(m.reshape(kv, d, c), h // kv, axis=0).reshape(h * d, c)
    mha.qkv.weight.data[...] = np.concatenate([q_w, rep(k_w), rep(v_w)])
    mha.proj.weight.data[...] = gqa.proj.weight.data
    mha.proj.bias.data[...] = gqa.proj.bias.data
    x = rand((2, 5, c))
    np.testing.assert_allclose(gqa(x).data, mha(x).data, atol=1e-12)


def test_rope_is_a_rotation_and_matches_complex_form():
    d, t = 6, 5
    cos, sin = nn.rope_tables(d, t, dtype=F64)
    x = rand((1, 1, t, d))
    y = nn.apply_rope(ag.Tensor(x), cos, sin).data
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), atol=1e-12)
    z = (x[..., :3] + 1j * x[..., 3:]) * np.exp(1j * np.arange(t)[:, None] * 10000.0 ** (-np.arange(0, d, 2) / d))
    np.testing.assert_allclose(y, np.concatenate([z.real, z.imag], -1), atol=1e-12)
    assert ag.gradcheck(lambda a: nn.apply_rope(a, cos, sin), [x])
    assert ag.gradgradcheck(lambda a: nn.apply_rope(a * a, cos, sin) * a, [x])   # its backward is differentiable
    with pytest.raises(ValueError, match="exceed"):
        nn.apply_rope(ag.Tensor(x), cos, sin, start=1)


def test_attention_cache_matches_full_pass():
    attn = nn.MultiHeadAttention(8, 4, 2, rope=True, context_length=6, dtype=F64, rng=0)
    x = rand((2, 6, 8))
    full = attn(x).data
    cache = nn.LayerKVCache(2, 2, 6, 2, dtype=F64)
    parts = [attn(x[:, :3], cache=cache).data, attn(x[:, 3:4], cache=cache).data, attn(x[:, 4:], cache=cache).data]
    np.testing.assert_allclose(np.concatenate(parts, axis=1), full, atol=1e-12)
    with pytest.raises(ValueError, match="cache full|exceed"):
        attn(x[:, :1], cache=cache)


def test_bad_configurations_are_clear_errors():
    with pytest.raises(ValueError, match="divisible"):
        nn.MultiHeadAttention(10, 4)
    with pytest.raises(ValueError, match="divide"):
        nn.MultiHeadAttention(12, 4, n_kv_heads=3)
    with pytest.raises(ValueError, match="unknown norm"):
        nn.make_norm("batchnorm", 4)
    with pytest.raises(ValueError, match="mlp"):
        nn.TransformerBlock(4, 2, mlp="relu")


def test_package_exports():
    assert tl.nn is nn and tl.GPT is tl.model.GPT
    for name in ["Module", "Parameter", "Linear", "Embedding", "LayerNorm", "RMSNorm", "Dropout", "GELU", "SiLU",
                 "FeedForward", "SwiGLUFeedForward", "MultiHeadAttention", "TransformerBlock", "ModuleList"]:
        assert hasattr(tl.nn, name), name


def test_gradcheck_module_helper_catches_a_detached_parameter():
    class Leaky(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(rand(3))

        def forward(self, x):
            return x * ag.Tensor(self.w.data) + self.w * 0.0   # the gradient w.r.t. w is wrongly zero

    with pytest.raises(ag.GradcheckError):
        gradcheck_module(Leaky(), [rand((2, 3))])


def test_example_02_attention_step_by_step_runs():
    import subprocess
    import sys
    from pathlib import Path
    script = Path(__file__).resolve().parents[1] / "examples" / "02_attention_step_by_step.py"
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "They agree" in out.stdout and "[0.4419 0.6515 0.5683]" in out.stdout


def test_replacing_a_child_keeps_its_place():
    net = Net()
    before = [n for n, _ in net.named_parameters()]
    net.fc = nn.Linear(4, 3)                     # e.g. a LoRA wrapper swapped in for a Linear
    assert [n for n, _ in net.named_parameters()] == before
    net.layers[0] = nn.Linear(3, 3)
    assert [n for n, _ in net.named_parameters()] == before
