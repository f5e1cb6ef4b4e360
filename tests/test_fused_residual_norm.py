"""The residual add fused into LayerNorm / RMSNorm (F.add_layer_norm, F.add_rms_norm -> (s, y)): gradchecked in
float64 on hypothesis-drawn shapes (broadcasting included), fused equal to composed on the CPU, the decoder with the
fusion equal to the decoder without it (logits and every gradient) for each family, clear errors; on the GPU
(marker gpu) the kernels against float64 NumPy in every dtype and the autocast pairs, plus bfloat16 of the plain
norm and GELU kernels."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import autograd as ag
from autograd import functional as F
from autograd.dtypes import bfloat16
from strategies import broadcastable_pair
from test_families import CONFIGS, build, tokens
from tinygrad_llm.model import Block

OPS = {"layer": lambda x, r, w, b, fused=True: F.add_layer_norm(x, r, w, b, eps=1e-5, fused=fused),
       "rms": lambda x, r, w, b, fused=True: F.add_rms_norm(x, r, w, eps=1e-6, fused=fused)}


def _t(a):
    return ag.Tensor(a, requires_grad=True)


@settings(deadline=None, max_examples=25)
@given(broadcastable_pair(min_dims=1, max_dims=3), st.sampled_from(sorted(OPS)), st.booleans(), st.integers(0, 99))
def test_gradcheck_add_norm(shapes, kind, affine, seed):
    xs, rs = shapes
    c = np.broadcast_shapes(xs, rs)[-1]
    gen = np.random.default_rng(seed)
    ins = [_t(gen.normal(size=xs)), _t(gen.normal(size=rs))]
    if affine:
        ins += [_t(gen.normal(size=c)), _t(gen.normal(size=c))]
    op = OPS[kind]
    fn = (lambda x, r, w, b: op(x, r, w, b)) if affine else (lambda x, r: op(x, r, None, None))
    assert ag.gradcheck(fn, ins)


@pytest.mark.parametrize("kind", sorted(OPS))
@pytest.mark.parametrize("xdt,rdt", [(np.float32, np.float32), (np.float64, np.float64), (np.float16, np.float16),
                                     (np.float32, np.float16), (np.float32, "bf16"), ("bf16", "bf16")])
def test_fused_equals_composed(kind, xdt, rdt):
    if "bf16" in (xdt, rdt) and bfloat16 is None:
        pytest.skip("needs ml_dtypes")
    xdt, rdt = (bfloat16 if d == "bf16" else d for d in (xdt, rdt))
    gen = np.random.default_rng(1)
    shape = (2, 5, 12)
    x = (gen.normal(size=shape) * 2).astype(xdt)
    r = gen.normal(size=shape).astype(rdt)
    w, b = gen.normal(size=12).astype(x.dtype), gen.normal(size=12).astype(x.dtype)
    gs, gy = gen.normal(size=shape), gen.normal(size=shape)
    got = []
    for fused in (True, False):
        ts = [_t(a) for a in (x, r, w, b)]
        s, y = OPS[kind](*ts, fused=fused)
        ((s.astype(np.float64) * gs).sum() + (y.astype(np.float64) * gy).sum()).backward()
        got.append([s, y] + [t.grad for t in (ts if kind == "layer" else ts[:3])])
    # relative norm: the composed op keeps 16-bit statistics in 16 bits, the fused one in float32
    tol = {8: 1e-13, 4: 1e-6, 2: 3e-2 if x.dtype == bfloat16 else 5e-3}[np.dtype(x.dtype).itemsize]
    for a, e in zip(*got):
        assert a.dtype == e.dtype and a.shape == e.shape
        a, e = a.data.astype(np.float64), e.data.astype(np.float64)
        assert np.linalg.norm(a - e) <= tol * np.linalg.norm(e)
    s, y, gx, gr = got[0][:4]
    assert s.dtype == y.dtype == ag.dtypes.result_type(x, r)
    assert gx.dtype == x.dtype and gr.dtype == r.dtype


def test_second_order_goes_through_the_reference():
    gen = np.random.default_rng(2)
    ins = [_t(gen.normal(size=(3, 4))) for _ in range(2)] + [_t(gen.normal(size=4))]
    assert ag.gradgradcheck(lambda x, r, w: F.add_rms_norm(x, r, w)[1], ins)


@pytest.mark.parametrize("call,match", [
    (lambda: F.add_layer_norm(np.ones((2, 3)), np.ones((2, 4))), "do not broadcast"),
    (lambda: F.add_layer_norm(np.ones((2, 3)), np.ones((2, 3)), np.ones(4)), r"weight must have shape \(3,\)"),
    (lambda: F.add_rms_norm(np.ones((2, 3)), np.ones((2, 3), np.int64)), "must be floating"),
])
def test_bad_inputs_are_clear_errors(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


@pytest.mark.parametrize("family", list(CONFIGS))
def test_decoder_with_fusion_equals_without(family, monkeypatch):
    """Logits and every parameter's gradient, the block's first add + norm2 fused or as two ops."""
    m = build(family, seed=3)
    idx, tgt = tokens(2, 6, seed=1), tokens(2, 6, seed=2)
    out = []
    for fused in (True, False):
        monkeypatch.setattr(Block, "fuse_add_norm", fused)
        m.zero_grad()
        logits = m(idx)
        m._loss(logits, tgt, -100).backward()
        out.append((logits.data.copy(), {n: p.grad.data.copy() for n, p in m.named_parameters()}))
    np.testing.assert_allclose(out[0][0], out[1][0], rtol=0, atol=1e-12)
    assert out[0][1].keys() == out[1][1].keys()
    for n in out[0][1]:
        np.testing.assert_allclose(out[0][1][n], out[1][1][n], rtol=0, atol=1e-10, err_msg=n)


# ------------------------------------------------------------------------------------------------ GPU kernels
from test_cuda_kernels import TOL, check, cp, draw, ln_ref, rng  # noqa: E402,F401  (fixtures and helpers)

BF = [bfloat16] if bfloat16 is not None else []
DT_PAIRS = [(np.float32, np.float32), (np.float16, np.float16), (np.float64, np.float64),
            (np.float32, np.float16)] + [(bfloat16, bfloat16), (np.float32, bfloat16)] * bool(BF)
GPU_SHAPES = [(2, 67, 129), (3, 1000), (37, 768), (5, 7000), (6, 1024), (3, 8)]


def _tol(dt):
    return 1e-2 if dt == bfloat16 else TOL[dt]


def _dev(cp, a, dt):
    return cp.asarray(np.asarray(a).astype(dt))


@pytest.mark.gpu
@pytest.mark.parametrize("xdt,rdt", DT_PAIRS)
@pytest.mark.parametrize("shape", GPU_SHAPES)
@pytest.mark.parametrize("rms", [False, True])
def test_add_norm_kernels(cp, rng, xdt, rdt, shape, rms):
    import autograd.cuda as gk
    r_, seed = rng
    C = shape[-1]
    x, r = draw(r_, shape, xdt, 2.0) + 0.5, draw(r_, shape, rdt)
    s_ref = np.asarray(x + r).astype(xdt).astype(np.float64)     # s rounded to x's dtype, as the kernel stores it
    w, b = draw(r_, (C,), xdt), draw(r_, (C,), xdt)
    gy, gs = draw(r_, shape, xdt), draw(r_, shape, xdt)
    eps = 1e-6 if rms else 1e-5
    y, _, _, gn, gw, gb = ln_ref(s_ref, w, None if rms else b, gy, eps, rms=rms)
    X, R, W, B = (_dev(cp, a, d) for a, d in ((x, xdt), (r, rdt), (w, xdt), (b, xdt)))
    if rms:
        S, Y, RS = gk.get_kernel("add_rms_norm_forward")(X, R, W, eps)
        GX, GR, GW = gk.get_kernel("add_rms_norm_backward")(_dev(cp, gs, xdt), _dev(cp, gy, xdt), S, W, RS, R.dtype)
    else:
        S, Y, M, RS = gk.get_kernel("add_layer_norm_forward")(X, R, W, B, eps)
        GX, GR, GW, GB = gk.get_kernel("add_layer_norm_backward")(_dev(cp, gs, xdt), _dev(cp, gy, xdt), S, W, M, RS,
                                                                   R.dtype)
        check(GB, gb, xdt, seed, "gb", tol=_tol(xdt) * 4)
    assert S.dtype == xdt and Y.dtype == xdt and GX.dtype == xdt and GR.dtype == rdt
    check(S, s_ref, xdt, seed, "s", tol=_tol(xdt))
    check(Y, y, xdt, seed, "y", tol=_tol(xdt))
    check(GX, gn + gs, xdt, seed, "gx", tol=_tol(xdt) * 4)
    check(GR, gn + gs, rdt, seed, "gr", tol=_tol(rdt) * 4)
    check(GW, gw, xdt, seed, "gw", tol=_tol(xdt) * 4)


@pytest.mark.gpu
@pytest.mark.parametrize("xdt,rdt", [(np.float32, np.float16)] + [(np.float32, bfloat16)] * bool(BF))
@pytest.mark.parametrize("kind", sorted(OPS))
def test_add_norm_op_on_gpu_equals_composed(cp, xdt, rdt, kind):
    """Through the engine: F.add_*_norm on CuPy (kernel) against the composed op on NumPy, autocast dtypes."""
    g = np.random.default_rng(7)
    x, r = (g.normal(size=(4, 33, 256)) * 2).astype(xdt), g.normal(size=(4, 33, 256)).astype(rdt)
    w, b = g.normal(size=256).astype(xdt), g.normal(size=256).astype(xdt)
    gs, gy = g.normal(size=x.shape).astype(xdt), g.normal(size=x.shape).astype(xdt)
    res = []
    for xp, fused in ((cp, True), (np, False)):
        ts = [_t(xp.asarray(a)) for a in (x, r, w, b)]
        s, y = OPS[kind](*ts, fused=fused)
        wrt = ts if kind == "layer" else ts[:3]
        grads = ag.grad([s, y], wrt, [ag.Tensor(xp.asarray(gs)), ag.Tensor(xp.asarray(gy))])
        res.append([s.data, y.data] + [g.data for g in grads])
    for name, a, e in zip(["s", "y", "gx", "gr", "gw", "gb"], *res):
        a = cp.asnumpy(a)
        assert a.dtype == e.dtype, name
        check(a.astype(np.float64), e.astype(np.float64), np.float16, 0, name)


@pytest.mark.gpu
@pytest.mark.skipif(not BF, reason="needs ml_dtypes")
@pytest.mark.parametrize("shape,affine", [((2, 67, 129), True), ((37, 768), True), ((3, 1000), False),
                                          ((3, 7000), True)])
@pytest.mark.parametrize("rms", [False, True])
def test_norm_kernels_bfloat16(cp, rng, shape, affine, rms):
    import autograd.cuda as gk
    r_, seed = rng
    C = shape[-1]
    x, gy = draw(r_, shape, bfloat16, 2.0) + 0.5, draw(r_, shape, bfloat16)
    w = draw(r_, (C,), bfloat16) if affine else None
    b = draw(r_, (C,), bfloat16) if affine and not rms else None
    eps = 1e-6 if rms else 1e-5
    y, _, _, gx, gw, _ = ln_ref(x, w, b, gy, eps, rms=rms)
    W = _dev(cp, w, bfloat16) if w is not None else None
    Bb = _dev(cp, b, bfloat16) if b is not None else None
    X, GY = _dev(cp, x, bfloat16), _dev(cp, gy, bfloat16)
    if rms:
        Y, R = gk.get_kernel("rms_norm_forward")(X, W, eps)
        GX, GW = gk.get_kernel("rms_norm_backward")(GY, X, W, R)
    else:
        Y, M, R = gk.get_kernel("layer_norm_forward")(X, W, Bb, eps)
        GX, GW, _ = gk.get_kernel("layer_norm_backward")(GY, X, W, M, R)
    assert Y.dtype == bfloat16 and GX.dtype == bfloat16
    check(Y, y, bfloat16, seed, "y", tol=_tol(bfloat16))
    check(GX, gx, bfloat16, seed, "gx", tol=_tol(bfloat16) * 4)
    if affine:
        check(GW, gw, bfloat16, seed, "gw", tol=_tol(bfloat16) * 4)


def _gelu64(h):
    k = np.sqrt(2 / np.pi)
    t = np.tanh(k * (h + 0.044715 * h ** 3))
    return 0.5 * h * (1 + t), 0.5 * (1 + t) + 0.5 * h * (1 - t * t) * k * (1 + 3 * 0.044715 * h * h)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64] + BF)
@pytest.mark.parametrize("shape", [(8, 3072), (3, 67, 129), (5, 7)])   # vector path; odd C and n: element path
def test_gelu_kernels_vector_and_element_paths(cp, rng, dtype, shape):
    import autograd.cuda as gk
    r_, seed = rng
    x, gy, b = draw(r_, shape, dtype, 2.0), draw(r_, shape, dtype), draw(r_, shape[-1:], dtype)
    tol = _tol(dtype)
    for bias in (False, True):
        h = x + b if bias else x
        y, d = _gelu64(h)
        X, GY, B = (_dev(cp, a, dtype) for a in (x, gy, b))
        Y = gk.get_kernel("bias_gelu_forward")(X, B) if bias else gk.get_kernel("gelu_forward")(X)
        check(Y, y, dtype, seed, f"gelu y bias={bias}", tol=tol)
        if bias:
            GX, GB = gk.get_kernel("bias_gelu_backward")(X, B, GY)
            check(GB, (gy * d).reshape(-1, shape[-1]).sum(0), dtype, seed, "gb", tol=tol * 4)
        else:
            GX = gk.get_kernel("gelu_backward")(X, GY)
        check(GX, gy * d, dtype, seed, f"gelu gx bias={bias}", tol=tol * 2)
