"""Weight shadows (autograd.amp): the low-precision copies of float32 weights, written once per optimizer step.

CPU: training with shadows equals training without, bitwise (the shadow is exactly the cast of the current value);
Linear under autocast takes the shadow instead of casting; every write to a parameter outside the optimizer
(load_state_dict, ``.data =``, in-place Tensor ops, initialisers, ZeRO-1's all-gather) leaves no stale shadow, and
a skipped step keeps the shadow as it is; a resumed mixed-precision run is bitwise the uninterrupted one.
GPU: the AdamW kernels (eager multi-tensor and the graphed device step) store shadows equal to ``param.astype``
for every dtype group, bfloat16 groups follow the float32 formula, and the graphed step with shadows equals eager.
"""
from __future__ import annotations

import numpy as np
import pytest

import autograd as ag
from autograd import amp
from autograd import functional as F
from autograd.dtypes import bfloat16
from tinygrad_llm import nn, optim

gpu = pytest.mark.gpu
F16 = np.dtype(np.float16)
needs_bf16 = pytest.mark.skipif(bfloat16 is None, reason="needs ml_dtypes")


def _params(seed=0):
    rng = np.random.default_rng(seed)
    shapes = [(5, 6), (5,), (3, 5)]
    return [ag.Tensor((rng.standard_normal(s) * 0.5).astype(np.float32), requires_grad=True) for s in shapes]


def _forward(params, x, dtype="float16"):
    w1, b1, w2 = params
    with amp.autocast(dtype):
        h = F.linear(x, w1, b1).tanh()
        y = F.linear(h, w2)
    return (y.astype(np.float32) ** 2).mean()


def _data(seed=1):
    return ag.Tensor(np.random.default_rng(seed).standard_normal((7, 6)).astype(np.float32))


def _step(params, opt, x, dtype="float16") -> float:
    loss = _forward(params, x, dtype)
    loss.backward()
    opt.step()
    opt.zero_grad()
    return loss.item()


def _train(shadows: bool, steps=4, dtype="float16"):
    params = _params()
    opt = optim.AdamW(params, lr=0.05, weight_decay=0.1)
    if not shadows:
        amp.untrack_shadows(params)
    x = _data()
    return params, [_step(params, opt, x, dtype) for _ in range(steps)]


@pytest.mark.parametrize("dtype", ["float16", pytest.param("bfloat16", marks=needs_bf16)])
def test_training_with_shadows_equals_training_without_bitwise(dtype):
    with_s, loss_s = _train(True, dtype=dtype)
    without, loss_n = _train(False, dtype=dtype)
    assert loss_s == loss_n
    for a, b in zip(with_s, without):
        assert a.data.tobytes() == b.data.tobytes()
    w1 = with_s[0]
    s = amp.shadow(w1, amp.autocast(dtype).dtype)
    assert s is not None and s.tobytes() == w1.data.astype(s.dtype).tobytes()   # written by the last step
    assert amp.shadow(without[0], amp.autocast(dtype).dtype) is None


def test_linear_uses_the_shadow_without_casting_and_backward_reads_it():
    params = _params()
    opt = optim.AdamW(params, lr=0.05)
    x = _data()
    _step(params, opt, x)
    w1 = params[0]
    s = amp.shadow(w1, F16)
    assert s is not None and s.tobytes() == w1.data.astype(F16).tobytes()
    xs, xc = (ag.Tensor(x.data, requires_grad=True) for _ in range(2))
    w_cast = ag.Tensor(w1.data.copy(), requires_grad=True)        # not tracked: cast inside the op
    with amp.autocast("float16"):
        y = F.linear(xs, w1, params[1])
        y2 = F.linear(x, w1, params[1])
        yc = F.linear(xc, w_cast, params[1])
    assert y.creator.wc is s and y2.creator.wc is s            # the same array, no cast per call
    assert yc.creator.wc is not s and amp.shadow(w1, F16) is s
    g = ag.Tensor(np.random.default_rng(2).standard_normal(y.shape).astype(np.float16))
    y.backward(g)
    yc.backward(g)
    assert y.numpy().tobytes() == yc.numpy().tobytes()
    assert xs.grad.numpy().tobytes() == xc.grad.numpy().tobytes()      # backward's GEMM read the shadow
    assert w1.grad.numpy().tobytes() == w_cast.grad.numpy().tobytes()


def test_untracked_weights_are_cast_at_each_use():
    w = ag.Tensor(np.ones((2, 3), np.float32), requires_grad=True)     # no optimizer: no shadow
    with amp.autocast("float16"):
        y1, y2 = F.linear(np.ones((1, 3), np.float32), w), F.linear(np.ones((1, 3), np.float32), w)
    assert y1.creator.wc is not y2.creator.wc and amp.shadow(w, F16) is None


def _tracked_linear():
    lin = nn.Linear(6, 5, rng=0)
    optim.AdamW(lin.parameters(), lr=0.01)
    x = _data()
    with amp.autocast("float16"):
        lin(x)                                       # creates the shadow
    assert amp.shadow(lin.weight, F16) is not None
    return lin, x


def _assert_fresh(lin, x):
    """The shadow is the cast of the current weight, and the layer computes with the current weight."""
    s = amp.shadow(lin.weight, F16)
    if s is not None:
        assert s.tobytes() == lin.weight.data.astype(F16).tobytes()
    with amp.autocast("float16"):
        y = lin(x).numpy()
    w16 = lin.weight.data.astype(F16)
    ref = (x.data.astype(F16) @ w16.T).astype(np.float32) + lin.bias.data
    np.testing.assert_allclose(y.astype(np.float32), ref, rtol=2e-3, atol=2e-3)
    assert amp.shadow(lin.weight, F16).tobytes() == w16.tobytes()


def _changes():
    rng = np.random.default_rng(9)
    new = lambda lin: rng.standard_normal(lin.weight.shape).astype(np.float32)   # noqa: E731

    def load(lin):
        lin.load_state_dict({"weight": new(lin), "bias": lin.bias.data.copy()})

    def assign(lin):
        lin.weight.data = new(lin)

    def iadd(lin):
        with ag.no_grad():
            lin.weight += 1.0

    def setitem(lin):
        with ag.no_grad():
            lin.weight[1] = 3.0

    def zero(lin):
        with ag.no_grad():
            lin.weight.zero_()

    def fill(lin):
        with ag.no_grad():
            lin.weight.fill_(0.25)

    def init(lin):
        nn.parameter.normal_(lin.weight, 0.5, rng=4)

    return {f.__name__: f for f in (load, assign, iadd, setitem, zero, fill, init)}


@pytest.mark.parametrize("change", sorted(_changes()))
def test_writes_outside_the_optimizer_leave_no_stale_shadow(change):
    lin, x = _tracked_linear()
    before = lin.weight.data.copy()
    _changes()[change](lin)
    assert not np.array_equal(lin.weight.data, before)
    _assert_fresh(lin, x)


def test_a_skipped_step_keeps_the_shadow_valid_and_unchanged():
    params = _params()
    opt = optim.AdamW(params, lr=0.05)
    x = _data()
    _step(params, opt, x)
    s = amp.shadow(params[0], F16)
    saved = s.copy()
    scaler = amp.GradScaler(init_scale=2.0 ** 15)
    with np.errstate(all="ignore"):
        scaler.scale(_forward(params, x) * float("inf")).backward()
        assert not scaler.unscale_and_check(params)      # overflow: the step is skipped
    scaler.update()
    opt.zero_grad()
    assert amp.shadow(params[0], F16) is s and np.array_equal(s, saved)
    assert s.tobytes() == params[0].data.astype(F16).tobytes()


def test_zero1_step_refreshes_the_shadows_after_the_all_gather():
    from tinygrad_llm.distributed import DataParallel, ShardedOptimizer, SingleProcess
    params = _params()
    dp = DataParallel(params, SingleProcess(), bucket_mb=0.0001, shard_optimizer=True)
    opt = ShardedOptimizer(optim.AdamW(params, lr=0.05, weight_decay=0.1), dp)
    x = _data()
    for _ in range(2):
        _forward(params, x).backward()
        dp.finish()
        opt.step()
        opt.zero_grad()
        for p in (params[0], params[2]):
            s = amp.shadow(p, F16)
            assert s is not None and s.tobytes() == p.data.astype(F16).tobytes()
    ref, _ = _train(False, steps=2)
    for a, b in zip(params, ref):
        np.testing.assert_allclose(a.data, b.data, rtol=1e-6, atol=1e-7)


def test_optimizer_that_replaces_step_keeps_no_shadows():
    class Plain(optim.SGD):
        def step(self):
            for p in self.params:
                if p.grad is not None:
                    p.data -= 0.1 * p.grad.data

    params = _params()
    opt = Plain(params, lr=0.1)
    x = _data()
    _forward(params, x).backward()
    opt.step()
    assert amp.shadow(params[0], F16) is None
    with amp.autocast("float16"):
        y = F.linear(x, params[0])
    assert y.creator.wc.tobytes() == params[0].data.astype(F16).tobytes()


def test_sgd_writes_shadows_too_and_they_die_with_their_tensor():
    params = _params()
    opt = optim.SGD(params, lr=0.1, momentum=0.9)
    x = _data()
    for _ in range(2):
        _step(params, opt, x)
    s = amp.shadow(params[0], F16)
    assert s is not None and s.tobytes() == params[0].data.astype(F16).tobytes()
    n = len(amp._shadows)
    del opt, params, s
    import gc
    gc.collect()
    assert len(amp._shadows) <= n - 2


@needs_bf16
def test_bfloat16_parameters_keep_bfloat16_moments_and_the_float32_formula():
    rng = np.random.default_rng(3)
    p0 = rng.standard_normal((4, 9)).astype(np.float32).astype(bfloat16)
    p = ag.Tensor(p0.copy(), requires_grad=True)
    opt = optim.AdamW([p], lr=0.01, weight_decay=0.1, betas=(0.9, 0.95))
    ref_p, ref_m, ref_v = p0.astype(np.float32), np.zeros((4, 9), np.float32), np.zeros((4, 9), np.float32)
    for t in range(1, 4):
        g = rng.standard_normal((4, 9)).astype(np.float32).astype(bfloat16)
        p.grad = ag.Tensor(g)
        opt.step()
        # the float32 arithmetic on the stored (bfloat16) values, each result rounded once
        g32 = g.astype(np.float32)
        ref_p = ref_p * np.float32(1 - 0.01 * 0.1)
        ref_m = np.float32(0.9) * ref_m + np.float32(0.1) * g32
        ref_v = np.float32(0.95) * ref_v + np.float32(0.05) * g32 * g32
        denom = np.sqrt(ref_v) / np.float32(np.sqrt(1 - 0.95 ** t)) + np.float32(1e-8)
        ref_p = ref_p - np.float32(0.01 / (1 - 0.9 ** t)) * ref_m / denom
        ref_p, ref_m, ref_v = (a.astype(bfloat16).astype(np.float32) for a in (ref_p, ref_m, ref_v))
    st = opt.state[0]
    assert p.dtype == st["exp_avg"].dtype == st["exp_avg_sq"].dtype == bfloat16
    np.testing.assert_allclose(p.data.astype(np.float32), ref_p, rtol=1e-2, atol=1e-3)
    np.testing.assert_allclose(st["exp_avg"].astype(np.float32), ref_m, rtol=1e-2, atol=1e-3)


def test_mixed_precision_resume_is_bitwise(tmp_path):
    from tinygrad_llm.train import Trainer, TrainConfig
    text = "\n".join(f"the cat {w} the mat." for w in ["sees", "eats", "likes"] * 40)

    def cfg(out, **kw):
        return TrainConfig(preset="micro", model={"n_layer": 1, "n_head": 2, "n_embd": 32}, tokenizer="char",
                           block_size=16, batch_size=4, max_steps=4, lr=1e-2, warmup=1, eval_every=0,
                           eval_iters=1, sample_every=0, sample_tokens=0, checkpoint_every=2, out_dir=str(out),
                           progress=False, precision="mixed", seed=5, **kw)

    a = Trainer(cfg(tmp_path / "a"), text=text, log=lambda m: None)
    a.train()
    b = Trainer(cfg(tmp_path / "b", resume=str(tmp_path / "a" / "step_000002")), text=text, log=lambda m: None)
    assert b.step == 2
    b.train()
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert np.asarray(va).tobytes() == np.asarray(vb).tobytes(), k
    w = a.model.blocks[0].attn.qkv.weight
    s = amp.shadow(w, F16)
    assert s is not None and s.tobytes() == w.data.astype(F16).tobytes()


# --------------------------------------------------------------------------------------------------------- GPU
def _cp():
    import cupy
    return cupy


def _poisoned(cp, shape, dtype):
    a = cp.empty(shape, dtype)
    a.view(np.uint16)[...] = 0x7E00 if np.dtype(dtype) == F16 else 0x7FC0       # NaN in both formats
    return a


def _adamw_reference(p, g, m, v, t, lr=0.01, b1=0.9, b2=0.95, eps=1e-8, wd=0.1):
    """PyTorch's AdamW in float64 on the given float arrays (one step t)."""
    p, g, m, v = (np.asarray(a, np.float64) for a in (p, g, m, v))
    p = p * (1 - lr * wd)
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    p = p - lr / (1 - b1 ** t) * m / (np.sqrt(v) / np.sqrt(1 - b2 ** t) + eps)
    return p, m, v


@gpu
@pytest.mark.parametrize("gdt", ["float32", "float16", pytest.param("bfloat16", marks=needs_bf16)])
def test_kernel_shadows_equal_astype_for_every_group(gdt):
    """Float32 parameters (odd sizes, several chunks) with float16 and bfloat16 shadows poisoned with NaN: after
    two steps every shadow is bitwise param.astype, and the parameters follow the float64 formula."""
    from autograd.cuda.adamw import adamw_step
    cp = _cp()
    gdt = np.dtype(bfloat16 if gdt == "bfloat16" else gdt)
    rng = np.random.default_rng(0)
    shapes = [(129,), (33, 517), (16384 + 7,)]
    ps = [cp.asarray(rng.standard_normal(s).astype(np.float32)) for s in shapes]
    ms = [cp.zeros(s, np.float32) for s in shapes]
    vs = [cp.zeros(s, np.float32) for s in shapes]
    sdts = [F16] + ([bfloat16] if bfloat16 is not None else [])
    shadows = [[_poisoned(cp, s, d) for d in sdts] for s in shapes]
    shadows[1] = shadows[1][:1]                               # a tensor with one shadow
    host = [(p.get().astype(np.float64), np.zeros(s), np.zeros(s)) for p, s in zip(ps, shapes)]
    for t in (1, 2):
        gs = [cp.asarray(rng.standard_normal(s).astype(np.float32).astype(gdt)) for s in shapes]
        adamw_step(ps, gs, ms, vs, 0.01, 0.9, 0.95, 1e-8, 0.1, t, shadows=shadows)
        host = [_adamw_reference(hp, g.get().astype(np.float64), hm, hv, t) for (hp, hm, hv), g in zip(host, gs)]
    for p, (hp, _, _), ss in zip(ps, host, shadows):
        np.testing.assert_allclose(p.get(), hp, rtol=1e-5, atol=1e-6)
        for s in ss:
            assert s.get().tobytes() == p.astype(s.dtype).get().tobytes()


@gpu
@needs_bf16
@pytest.mark.parametrize("pdt", ["float16", "bfloat16"])
def test_kernel_sixteen_bit_parameter_groups_match_the_float32_formula(pdt):
    """param float16/bfloat16 with grad and moments of the same dtype (bfloat16: PyTorch's AdamW state layout):
    the kernel computes in float32 and rounds once, as the NumPy path does."""
    from autograd.cuda.adamw import adamw_step
    from tinygrad_llm.optim.adam import adamw_update
    cp = _cp()
    dt = np.dtype(bfloat16 if pdt == "bfloat16" else pdt)
    rng = np.random.default_rng(1)
    shapes = [(129,), (3, 16389)]
    hp = [rng.standard_normal(s).astype(np.float32).astype(dt) for s in shapes]
    hm = [np.zeros(s, dt) for s in shapes]
    hv = [np.zeros(s, dt) for s in shapes]
    ps, ms, vs = ([cp.asarray(a) for a in arrs] for arrs in (hp, hm, hv))
    for t in (1, 2, 3):
        hg = [rng.standard_normal(s).astype(np.float32).astype(dt) for s in shapes]
        adamw_step(ps, [cp.asarray(g) for g in hg], ms, vs, 0.01, 0.9, 0.95, 1e-8, 0.1, t)
        for a, g, m, v in zip(hp, hg, hm, hv):
            adamw_update(a, g, m, v, lr=0.01, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1, step=t)
    # float32 arithmetic rounded once to 16 bits on both sides; FMA contraction in the kernel may round a value the
    # other way at some step, which later steps carry: allow two 16-bit steps of each array's largest magnitude
    for d, h in ((ps, hp), (ms, hm), (vs, hv)):
        for a, b in zip(d, h):
            b32 = b.astype(np.float32)
            ulp = float(np.finfo(np.float16).eps if pdt == "float16" else 2.0 ** -7) * float(np.abs(b32).max())
            np.testing.assert_allclose(a.get().astype(np.float32), b32, rtol=1e-2, atol=2 * ulp)


@gpu
def test_adamw_on_gpu_writes_shadows_and_trains_as_without():
    cp = _cp()
    params = [ag.Tensor(cp.asarray(p.data), requires_grad=True) for p in _params()]
    ref = [ag.Tensor(cp.asarray(p.data), requires_grad=True) for p in _params()]
    o1, o2 = optim.AdamW(params, lr=0.05, fused=True), optim.AdamW(ref, lr=0.05, fused=True)
    amp.untrack_shadows(ref)
    x = ag.Tensor(cp.asarray(_data().data))
    for _ in range(3):
        for ps, o in ((params, o1), (ref, o2)):
            _step(ps, o, x)
    for a, b in zip(params, ref):
        np.testing.assert_allclose(a.data.get(), b.data.get(), rtol=1e-6, atol=1e-7)
    s = amp.shadow(params[0], F16)
    assert s is not None and s.get().tobytes() == params[0].data.astype(F16).get().tobytes()


@gpu
def test_device_step_writes_shadows():
    from autograd.cuda.device_step import DeviceAdamW
    cp = _cp()
    rng = np.random.default_rng(4)
    shapes = [(129,), (70, 301)]
    ps = [cp.asarray(rng.standard_normal(s).astype(np.float32)) for s in shapes]
    ms, vs = [cp.zeros(s, np.float32) for s in shapes], [cp.zeros(s, np.float32) for s in shapes]
    sdts = [F16] + ([bfloat16] if bfloat16 is not None else [])
    sh = {id(p): [_poisoned(cp, p.shape, d) for d in sdts] for p in ps}
    hyper = {"betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1}
    ds = DeviceAdamW([(ps, ms, vs, hyper)], max_norm=None)
    ds.set_lr([0.01])
    host = [(p.get().astype(np.float64), np.zeros(s), np.zeros(s)) for p, s in zip(ps, shapes)]
    gs = {id(p): cp.asarray(rng.standard_normal(p.shape).astype(np.float32)) for p in ps}
    ds.step(lambda a: gs[id(a)], lambda a: sh[id(a)])
    host = [_adamw_reference(hp, gs[id(p)].get(), hm, hv, 1) for p, (hp, hm, hv) in zip(ps, host)]
    for p, (hp, _, _) in zip(ps, host):
        np.testing.assert_allclose(p.get(), hp, rtol=1e-5, atol=1e-6)
        for s in sh[id(p)]:
            assert s.get().tobytes() == p.astype(s.dtype).get().tobytes()


@gpu
def test_graphed_mixed_step_with_shadows_equals_eager_and_keeps_them_fresh():
    import tinygrad_llm as tl
    from autograd import cuda as agcuda
    from tinygrad_llm.train.graph_step import GraphTrainStep
    from tinygrad_llm.train.step import TrainStep
    cp = _cp()
    agcuda.set_tf32(False)
    rng = np.random.default_rng(3)
    batches = [[(cp.asarray(rng.integers(0, 96, (4, 32))), cp.asarray(rng.integers(0, 96, (4, 32))))]
               for _ in range(4)]
    out = []
    for graphed in (False, True):
        cfg = tl.GPTConfig(vocab_size=96, context_length=32, n_layer=2, n_head=4, n_embd=64)
        model = tl.GPT(cfg, seed=0, device="cuda")
        opt = tl.optim.AdamW(model, lr=3e-3, weight_decay=0.1)
        kw = dict(grad_accum=1, grad_clip=1.0, autocast_dtype="float16", loss_scaler=ag.amp.GradScaler())
        fn = (GraphTrainStep if graphed else TrainStep)(model, opt, lambda s: 3e-3, **kw)
        losses = [float(fn(b, i).loss) for i, b in enumerate(batches)]
        w = model.blocks[0].attn.qkv.weight
        s = amp.shadow(w, F16)
        assert s is not None and s.get().tobytes() == w.data.astype(F16).get().tobytes()
        out.append(({n: p.data.get() for n, p in model.named_parameters()}, losses))
        if graphed:
            assert fn.captures == 1
    (pe, le), (pg, lg) = out
    np.testing.assert_allclose(lg, le, rtol=1e-3)
    x = np.concatenate([pe[k].ravel() for k in sorted(pe)])
    y = np.concatenate([pg[k].ravel() for k in sorted(pe)])
    assert np.linalg.norm(x - y) / np.linalg.norm(x) <= 3e-3
