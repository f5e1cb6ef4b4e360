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
    np.testing.assert_allclose(lin.project(x).data, x @ lin.weight.data.T, rtol=1e-5, atol=1e-6)   # no bias
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
@given(st.integers(1, 2), st.integers(1, 3), st.integers(2, 6),
       st.sampled_from(["ln", "ln-nobias", "rms", "rms1p"]), st.integers(0, 99))
def test_gradcheck_norms(b, t, c, kind, seed):
    layer = (nn.RMSNorm(c, dtype=F64, unit_offset=kind == "rms1p") if kind.startswith("rms")
             else nn.LayerNorm(c, bias=kind == "ln", dtype=F64))
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
    gemma = nn.RMSNorm(6, eps=1e-6, dtype=F64, unit_offset=True)          # Gemma: x_hat * (1 + w), w starts at 0
    assert not gemma.weight.data.any()
    gemma.weight.data[...] = np.arange(6) / 10
    np.testing.assert_allclose(gemma(x).data, rms(x).data * (1 + np.arange(6) / 10), atol=1e-12)


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


def test_rotary_embedding_tables_follow_positions_and_dtype():
    rope = nn.RotaryEmbedding(8, theta=100.0)
    cos, sin = nn.rope_tables(8, 7, 100.0, dtype=np.float64)
    c, s = rope.tables(3, 4, np.zeros(1, dtype=np.float32))
    assert c.dtype == np.float32 and c.shape == (4, 4)
    np.testing.assert_allclose(c, cos[3:], rtol=1e-6)
    np.testing.assert_allclose(s, sin[3:], rtol=1e-6)
    assert rope.tables(3, 4, np.zeros(1, dtype=np.float32))[0] is c          # the same positions: kept
    assert rope.tables(0, 2, np.zeros(1))[0].dtype == np.float64 and rope.state_dict() == {}


def test_package_exports():
    assert tl.nn is nn and tl.GPT is tl.model.GPT
    for name in ["Module", "Parameter", "Linear", "Embedding", "LayerNorm", "RMSNorm", "Dropout", "GELU", "SiLU",
                 "ModuleList", "RotaryEmbedding"]:
        assert hasattr(tl.nn, name), name
    for name in ["GPT", "GPTConfig", "Block", "Attention", "MLP", "MoE", "KVCache", "generate"]:
        assert hasattr(tl.model, name), name


def test_gradcheck_module_helper_catches_a_detached_parameter():
    class Leaky(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(rand(3))

        def forward(self, x):
            return x * ag.Tensor(self.w.data) + self.w * 0.0   # the gradient w.r.t. w is wrongly zero

    with pytest.raises(ag.GradcheckError):
        gradcheck_module(Leaky(), [rand((2, 3))])


def test_replacing_a_child_keeps_its_place():
    net = Net()
    before = [n for n, _ in net.named_parameters()]
    net.fc = nn.Linear(4, 3)                     # e.g. a LoRA wrapper swapped in for a Linear
    assert [n for n, _ in net.named_parameters()] == before
    net.layers[0] = nn.Linear(3, 3)
    assert [n for n, _ in net.named_parameters()] == before
