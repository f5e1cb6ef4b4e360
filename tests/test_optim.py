"""Optimizers, schedules and clipping: closed-form steps, reference implementations, groups, state round trips."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import autograd as ag
from tinygrad_llm import optim
from tinygrad_llm.optim.adam import adamw_update


def make_params(shapes, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return [ag.Tensor(rng.standard_normal(s).astype(dtype), requires_grad=True) for s in shapes]


def set_grads(params, rng):
    for p in params:
        p.grad = ag.Tensor(rng.standard_normal(p.shape).astype(p.dtype))


SHAPES = [(3, 4), (4,), (2, 3, 2), ()]


# ------------------------------------------------------------------ reference implementations (independent forms)
def ref_adam(p, grads, lr, b1, b2, eps, wd, decoupled):
    """torch.optim.Adam/AdamW as in their docs' pseudo-code, one element array at a time."""
    p = p.copy()
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        if decoupled:
            p = p - lr * wd * p
        elif wd:
            g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g ** 2
        m_hat = m / (1 - b1 ** t)
        v_hat = v / (1 - b2 ** t)
        # torch computes lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps); identical to m_hat/(sqrt(v_hat) + eps)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


def ref_sgd(p, grads, lr, momentum, dampening, wd, nesterov):
    p = p.copy()
    buf = None
    for g in grads:
        if wd:
            g = g + wd * p
        if momentum:
            buf = g.copy() if buf is None else momentum * buf + (1 - dampening) * g
            g = g + momentum * buf if nesterov else buf
        p = p - lr * g
    return p


def run(opt_factory, steps=5, seed=0):
    params = make_params(SHAPES, seed)
    init = [p.data.copy() for p in params]
    opt = opt_factory(params)
    rng = np.random.default_rng(seed + 100)
    grads = []
    for _ in range(steps):
        set_grads(params, rng)
        grads.append([p.grad.data.copy() for p in params])
        opt.step()
    return params, init, grads


# ------------------------------------------------------------------ Adam / AdamW
def test_adam_first_step_moves_by_lr_times_sign():
    p = ag.Tensor(np.array([1.0, -2.0, 3.0, 0.5]), requires_grad=True)
    p.grad = ag.Tensor(np.array([0.3, -5.0, 1e-3, -2.0]))
    optim.Adam([p], lr=0.01).step()
    # m_hat = g, v_hat = g^2: the step is lr * g / (|g| + eps) ~= lr * sign(g)
    np.testing.assert_allclose(p.data, np.array([1.0, -2.0, 3.0, 0.5]) - 0.01 * np.sign([0.3, -5.0, 1e-3, -2.0]),
                               rtol=0, atol=1e-7)


@settings(deadline=None)
@given(lr=st.floats(1e-4, 0.5), b1=st.floats(0.0, 0.99), b2=st.floats(0.5, 0.9999), eps=st.floats(1e-10, 1e-3),
       wd=st.sampled_from([0.0, 0.01, 0.3]), decoupled=st.booleans(), seed=st.integers(0, 1000))
def test_adam_adamw_match_reference(lr, b1, b2, eps, wd, decoupled, seed):
    cls = optim.AdamW if decoupled else optim.Adam
    params, init, grads = run(lambda ps: cls(ps, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd), steps=6, seed=seed)
    for i, p in enumerate(params):
        ref = ref_adam(init[i], [g[i] for g in grads], lr, b1, b2, eps, wd, decoupled)
        np.testing.assert_allclose(p.data, ref, rtol=1e-12, atol=1e-12)


def test_adam_l2_differs_from_adamw_decoupled():
    a, _, _ = run(lambda ps: optim.Adam(ps, lr=0.1, weight_decay=0.1))
    w, _, _ = run(lambda ps: optim.AdamW(ps, lr=0.1, weight_decay=0.1))
    assert not np.allclose(a[0].data, w[0].data)


def test_adamw_update_function_is_in_place():
    rng = np.random.default_rng(0)
    p, g = rng.standard_normal(5), rng.standard_normal(5)
    m, v = np.zeros(5), np.zeros(5)
    ids = (id(p), id(m), id(v))
    g0 = g.copy()
    adamw_update(p, g, m, v, lr=0.1, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1, step=1)
    assert (id(p), id(m), id(v)) == ids and np.array_equal(g, g0)
    np.testing.assert_allclose(m, 0.1 * g0)


def test_adamw_decay_groups_skip_biases_and_norms():
    class Mod:
        def __init__(self):
            self.w = ag.Tensor(np.ones((3, 3)), requires_grad=True)
            self.emb = ag.Tensor(np.ones((5, 3)), requires_grad=True)
            self.b = ag.Tensor(np.ones(3), requires_grad=True)
            self.ln = ag.Tensor(np.ones(3), requires_grad=True)
            self.frozen = ag.Tensor(np.ones((3, 3)), requires_grad=False)

        def named_parameters(self):
            return [("w", self.w), ("emb", self.emb), ("b", self.b), ("ln.weight", self.ln), ("frozen", self.frozen)]

    m = Mod()
    opt = optim.AdamW(m, lr=0.1, weight_decay=0.5)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.5, 0.0]
    assert [len(g["params"]) for g in opt.param_groups] == [2, 2]
    for p in (m.w, m.emb, m.b, m.ln):
        p.grad = ag.Tensor(np.zeros(p.shape))   # zero grad: the Adam part is 0, only decay moves weights
    opt.step()
    np.testing.assert_allclose(m.w.data, 1 - 0.1 * 0.5)
    np.testing.assert_allclose(m.emb.data, 1 - 0.1 * 0.5)
    np.testing.assert_array_equal(m.b.data, 1.0)
    np.testing.assert_array_equal(m.ln.data, 1.0)
    # (name, param) pairs group the same way
    opt2 = optim.AdamW(m.named_parameters(), lr=0.1, weight_decay=0.5)
    assert [len(g["params"]) for g in opt2.param_groups] == [2, 2]
    groups = optim.param_groups_for_weight_decay(m.named_parameters(), 0.1)
    assert groups[0]["params"] == [m.w, m.emb] and groups[1]["params"] == [m.b, m.ln]


def test_float32_params_stay_float32_and_in_place():
    params = make_params(SHAPES, dtype=np.float32)
    arrays = [p.data for p in params]
    opt = optim.AdamW(params, lr=1e-2)
    set_grads(params, np.random.default_rng(1))
    opt.step()
    assert all(p.data is a and p.data.dtype == np.float32 for p, a in zip(params, arrays))
    assert opt.state[0]["exp_avg"].dtype == np.float32


# ------------------------------------------------------------------ SGD
@pytest.mark.parametrize("momentum,dampening,wd,nesterov", [
    (0.0, 0.0, 0.0, False), (0.9, 0.0, 0.0, False), (0.9, 0.1, 0.0, False), (0.9, 0.0, 0.0, True),
    (0.5, 0.0, 0.01, True), (0.0, 0.0, 0.1, False)])
def test_sgd_matches_reference(momentum, dampening, wd, nesterov):
    params, init, grads = run(lambda ps: optim.SGD(ps, lr=0.05, momentum=momentum, dampening=dampening,
                                                   weight_decay=wd, nesterov=nesterov))
    for i, p in enumerate(params):
        ref = ref_sgd(init[i], [g[i] for g in grads], 0.05, momentum, dampening, wd, nesterov)
        np.testing.assert_allclose(p.data, ref, rtol=1e-12, atol=1e-12)


def test_sgd_closed_form_two_momentum_steps():
    p = ag.Tensor(np.array([1.0]), requires_grad=True)
    opt = optim.SGD([p], lr=0.1, momentum=0.9)
    p.grad = ag.Tensor(np.array([1.0])); opt.step()     # buf = 1        -> p = 0.9
    p.grad = ag.Tensor(np.array([1.0])); opt.step()     # buf = 0.9 + 1  -> p = 0.9 - 0.19
    np.testing.assert_allclose(p.data, [0.71])
    q = ag.Tensor(np.array([1.0]), requires_grad=True)
    opt = optim.SGD([q], lr=0.1, momentum=0.9, nesterov=True)
    q.grad = ag.Tensor(np.array([1.0])); opt.step()     # g + 0.9 * 1 = 1.9 -> q = 0.81
    np.testing.assert_allclose(q.data, [0.81])


def test_sgd_rejects_bad_nesterov():
    with pytest.raises(ValueError, match="nesterov"):
        optim.SGD(make_params([(2,)]), lr=0.1, nesterov=True)


# ------------------------------------------------------------------ base behaviour
def test_zero_grad_and_none_grads_skipped():
    params = make_params([(2,), (3,)])
    opt = optim.Adam(params, lr=0.1)
    before = params[1].data.copy()
    params[0].grad = ag.Tensor(np.ones(2))
    opt.step()
    np.testing.assert_array_equal(params[1].data, before)
    assert 1 not in opt.state and opt.state[0]["step"] == 1
    opt.zero_grad()
    assert all(p.grad is None for p in params)


def test_duplicate_param_and_unknown_hyper_errors():
    p = make_params([(2,)])[0]
    with pytest.raises(ValueError, match="twice"):
        optim.SGD([p, p], lr=0.1)
    with pytest.raises(ValueError, match="unknown hyperparameters"):
        optim.SGD([{"params": [p], "betas": (0.9, 0.9)}], lr=0.1)
    with pytest.raises(ValueError, match="empty"):
        optim.AdamW([], lr=0.1)


def test_param_group_overrides_and_set_lr():
    a, b = make_params([(2,), (2,)])
    opt = optim.SGD([{"params": [a]}, {"params": [b], "lr": 1.0, "lr_scale": 0.5}], lr=0.1)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 1.0]
    opt.set_lr(0.2)
    assert [g["lr"] for g in opt.param_groups] == [0.2, 0.1]
    opt.param_groups[0]["lr"] = 0.0
    a0 = a.data.copy()
    a.grad = ag.Tensor(np.ones(2)); b.grad = ag.Tensor(np.ones(2))
    opt.step()
    np.testing.assert_array_equal(a.data, a0)


@pytest.mark.parametrize("factory", [
    lambda ps: optim.AdamW(ps, lr=0.01, weight_decay=0.1),
    lambda ps: optim.Adam(ps, lr=0.01, betas=(0.8, 0.95)),
    lambda ps: optim.SGD(ps, lr=0.01, momentum=0.9, nesterov=True)])
def test_state_dict_round_trip_continues_identically(factory):
    rng = np.random.default_rng(3)
    params = make_params(SHAPES, seed=1)
    opt = factory(params)
    for _ in range(3):
        set_grads(params, rng); opt.step()
    # save through the safetensors/JSON split, then restore into fresh params/optimizer
    arrays, meta = optim.split_state_dict(opt.state_dict())
    meta = json.loads(json.dumps(meta))
    assert all(isinstance(a, np.ndarray) for a in arrays.values())
    clones = [ag.Tensor(p.data.copy(), requires_grad=True) for p in params]
    opt2 = factory(clones)
    opt2.load_state_dict(optim.merge_state_dict({k: v.copy() for k, v in arrays.items()}, meta))
    assert opt2.step_count == 3
    for _ in range(3):
        set_grads(params, rng)
        for c, p in zip(clones, params):
            c.grad = ag.Tensor(p.grad.data.copy())
        opt.step(); opt2.step()
    for c, p in zip(clones, params):
        np.testing.assert_array_equal(c.data, p.data)


def test_state_dict_is_a_copy_and_load_checks_shapes():
    params = make_params([(2, 2)])
    opt = optim.Adam(params, lr=0.1)
    params[0].grad = ag.Tensor(np.ones((2, 2))); opt.step()
    sd = opt.state_dict()
    sd["state"][0]["exp_avg"][:] = 123.0
    assert not np.any(opt.state[0]["exp_avg"] == 123.0)
    other = optim.Adam(make_params([(3, 2)]), lr=0.1)
    with pytest.raises(ValueError, match="shape"):
        other.load_state_dict(opt.state_dict())
    with pytest.raises(ValueError, match="groups"):
        optim.Adam([{"params": make_params([(2, 2)])}, {"params": make_params([(1,)])}]).load_state_dict(sd)


# ------------------------------------------------------------------ schedules
def test_warmup_cosine_values():
    f = lambda s: optim.warmup_cosine(s, max_lr=1.0, warmup_steps=10, max_steps=110, min_lr=0.1)  # noqa: E731
    assert f(0) == pytest.approx(0.1)
    assert f(4) == pytest.approx(0.5)
    assert f(9) == pytest.approx(1.0) and f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.55)            # half way through the cosine
    assert f(110) == pytest.approx(0.1) and f(10_000) == pytest.approx(0.1)
    vals = [f(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))
    assert optim.warmup_cosine(5, 1.0, 0, 0, 0.2) == 0.2
    with pytest.raises(ValueError):
        optim.warmup_cosine(0, 1.0, 10, 5)


def test_constant_make_schedule_and_scheduler():
    assert optim.constant_lr(123, 0.3) == 0.3
    cos = optim.make_schedule("cosine", 1.0, warmup_steps=2, max_steps=10)
    assert cos(1) == 1.0 and cos(10) == pytest.approx(0.1)
    assert optim.make_schedule("constant", 0.5)(99) == 0.5
    with pytest.raises(ValueError, match="unknown lr schedule"):
        optim.make_schedule("step", 1.0)
    a, b = make_params([(2,), (2,)])
    opt = optim.AdamW([{"params": [a]}, {"params": [b], "lr_scale": 0.1}], lr=9.0)
    sched = optim.LRScheduler(opt, cos)
    assert sched.apply(0) == 0.5
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.5, 0.05])


# ------------------------------------------------------------------ clipping and accumulation
def test_clip_grad_norm_scales_above_and_leaves_below():
    params = make_params([(3,), (4,), (2,)])
    params[0].grad = ag.Tensor(np.array([3.0, 0.0, 0.0]))
    params[1].grad = ag.Tensor(np.array([0.0, 4.0, 0.0, 0.0]))   # global norm 5; params[2] has no grad
    g0 = params[0].grad.data
    total = optim.clip_grad_norm(params, 1.0)
    assert isinstance(total, float) and total == pytest.approx(5.0)
    assert params[0].grad.data is g0                              # scaled in place
    assert optim.grad_norm(params) == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(params[0].grad.data, [0.6, 0, 0], rtol=1e-5)
    before = params[1].grad.data.copy()
    assert optim.clip_grad_norm(params, 10.0) == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_array_equal(params[1].grad.data, before)


def test_grad_norm_large_and_empty_grads():
    rng = np.random.default_rng(0)
    big = ag.Tensor(np.zeros(700_001, dtype=np.float32), requires_grad=True)     # spans several float64 chunks
    big.grad = ag.Tensor(rng.standard_normal(700_001).astype(np.float32))
    empty = ag.Tensor(np.zeros((0, 3)), requires_grad=True)
    empty.grad = ag.Tensor(np.zeros((0, 3)))
    ref = math.sqrt(float(np.sum(big.grad.data.astype(np.float64) ** 2)))
    assert optim.grad_norm([big, empty]) == pytest.approx(ref, rel=1e-12)
    assert optim.grad_norm([empty]) == 0.0


def test_clip_grad_norm_float32_and_nonfinite():
    p = ag.Tensor(np.zeros(1000, dtype=np.float32), requires_grad=True)
    p.grad = ag.Tensor(np.full(1000, 1e-3, dtype=np.float32))
    assert optim.clip_grad_norm([p], 1.0) == pytest.approx(math.sqrt(1000) * 1e-3, rel=1e-6)
    p.grad = ag.Tensor(np.array([np.inf] + [1.0] * 999, dtype=np.float32))
    assert math.isinf(optim.clip_grad_norm([p], 1.0))
    assert p.grad.data[1] == 1.0                                  # not scaled: the caller skips the step


def test_gradient_accumulation_equals_big_batch():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 3)), rng.standard_normal((8, 2))
    w0 = rng.standard_normal((3, 2))

    def loss(w, xs, ys):
        d = ag.Tensor(xs) @ w - ag.Tensor(ys)
        return (d * d).mean()

    big = ag.Tensor(w0.copy(), requires_grad=True)
    loss(big, x, y).backward()
    acc = ag.Tensor(w0.copy(), requires_grad=True)
    k = 4
    for i in range(k):                                            # loss / k per micro-batch, grads sum in .grad
        (loss(acc, x[2 * i:2 * i + 2], y[2 * i:2 * i + 2]) / k).backward()
    np.testing.assert_allclose(acc.grad.data, big.grad.data, rtol=1e-12, atol=1e-14)


def test_adamw_fused_switch():
    """fused=False is the per-parameter update; fused=True on CPU parameters is a clear error; other values refused."""
    params = make_params([(3, 2)], seed=2)
    ref = make_params([(3, 2)], seed=2)
    for opt, ps in ((optim.AdamW(params, lr=0.1, fused=False), params), (optim.AdamW(ref, lr=0.1), ref)):
        ps[0].grad = ag.Tensor(np.full((3, 2), 0.5))
        opt.step()
    np.testing.assert_array_equal(params[0].data, ref[0].data)
    opt = optim.AdamW(make_params([(4,)]), lr=0.1, fused=True)
    opt.params[0].grad = ag.Tensor(np.ones(4))
    with pytest.raises(RuntimeError, match=r"fused=True.*float64 parameter of shape \(4,\) on the CPU"):
        opt.step()
    with pytest.raises(TypeError, match="fused must be None, True or False"):
        optim.Adam(make_params([(4,)]), fused="yes")


# ------------------------------------------------------------------ GPU
@pytest.mark.gpu
def test_adamw_non_contiguous_gpu_param_takes_the_per_parameter_update():
    """An F-order parameter view is not the kernel's: it goes through adamw_update, and matches NumPy."""
    cp = ag.backend.cupy_module()
    w0 = np.random.default_rng(3).standard_normal((6, 8)).astype(np.float32)
    gpu = ag.Tensor(cp.asarray(w0.T.copy()).T, requires_grad=True)          # an F-order view on the GPU
    assert not gpu.data.flags.c_contiguous
    cpu = ag.Tensor(w0.copy(), requires_grad=True)
    o1, o2 = optim.AdamW([cpu], lr=0.01), optim.AdamW([gpu], lr=0.01)
    for _ in range(2):
        g = np.random.default_rng(4).standard_normal((6, 8)).astype(np.float32)
        cpu.grad, gpu.grad = ag.Tensor(g), ag.Tensor(cp.asarray(g))
        o1.step(); o2.step()
    np.testing.assert_allclose(cp.asnumpy(gpu.data), cpu.data, rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match="fused=True"):
        o3 = optim.AdamW([gpu], lr=0.01, fused=True)
        o3.step()


@pytest.mark.gpu
def test_adamw_and_clip_on_cupy_match_numpy():
    cp = ag.backend.cupy_module()
    cpu = make_params(SHAPES, seed=5, dtype=np.float32)
    gpu = [ag.Tensor(cp.asarray(p.data), requires_grad=True) for p in cpu]
    o1, o2 = optim.AdamW(cpu, lr=0.01, weight_decay=0.1), optim.AdamW(gpu, lr=0.01, weight_decay=0.1)
    rng = np.random.default_rng(0)
    for _ in range(3):
        set_grads(cpu, rng)
        for c, g in zip(cpu, gpu):
            g.grad = ag.Tensor(cp.asarray(c.grad.data))
        assert optim.clip_grad_norm(gpu, 0.5) == pytest.approx(optim.clip_grad_norm(cpu, 0.5), rel=1e-6)
        o1.step(); o2.step()
    for c, g in zip(cpu, gpu):
        np.testing.assert_allclose(cp.asnumpy(g.data), c.data, rtol=1e-5, atol=1e-6)
    sd = o2.state_dict()
    assert isinstance(sd["state"][0]["exp_avg"], np.ndarray)


@settings(deadline=None)
@given(scale=st.floats(1e-3, 1e3), max_norm=st.floats(0.1, 10.0), seed=st.integers(0, 100))
def test_clip_keeps_direction_and_bounds_norm(scale, max_norm, seed):
    params = make_params(SHAPES, seed)
    set_grads(params, np.random.default_rng(seed))
    before = [p.grad.data.copy() * scale for p in params]
    for p, b in zip(params, before):
        p.grad.data[...] = b
    total = optim.clip_grad_norm(params, max_norm)
    after = optim.grad_norm(params)
    assert after <= max_norm * (1 + 1e-9)
    k = min(1.0, max_norm / (total + 1e-6))
    for p, b in zip(params, before):
        np.testing.assert_allclose(p.grad.data, b * k, rtol=1e-12, atol=0)


def test_adamw_trains_an_nn_module():
    nn = pytest.importorskip("tinygrad_llm.nn")

    class Reg(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 1)

        def forward(self, x):
            return self.lin(x)

    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 4)).astype(np.float32)
    y = (x @ np.array([[1.0], [-2.0], [0.5], [3.0]]) + 0.7).astype(np.float32)
    model = Reg()
    opt = optim.AdamW(model, lr=0.05, weight_decay=0.01)
    assert [g["name"] for g in opt.param_groups] == ["decay", "no_decay"]
    weight = model.lin.weight.data
    losses = []
    for _ in range(150):
        d = model(ag.Tensor(x)) - ag.Tensor(y)
        loss = (d * d).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert model.lin.weight.data is weight                 # updated in place
    assert losses[-1] < 0.05 * losses[0]
