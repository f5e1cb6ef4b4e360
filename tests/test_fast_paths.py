"""Fast paths of the training step against their composed slow paths.

- autocast ``F.linear``: one Linear op with ``compute_dtype`` (casts inside, gradients in each input's dtype)
  against the composed ``astype`` + Linear graph (CPU, float16 NumPy; and on CuPy);
- ``GradScaler.unscale_and_check``: the multi-tensor CUDA pass against the per-parameter path;
- ``AdamW.step`` on CuPy (multi-tensor kernel) against the per-parameter update on NumPy;
- CUDA ``colsum`` and float16 GEMMs with float32 output against NumPy.
"""
from __future__ import annotations

import numpy as np
import pytest

import autograd as ag
from autograd import functional as F
from autograd.ops.fused.linear import Linear
from tinygrad_llm import optim


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _linear_pair(xp, seed, bias=True, x16=False, k=12, n=7):
    """Gradients of sum(y * r) for the fused autocast linear and for the composed astype graph."""
    rng = np.random.default_rng(seed)
    x0 = rng.standard_normal((2, 5, k)).astype(np.float16 if x16 else np.float32)
    w0 = (rng.standard_normal((n, k)) * 0.3).astype(np.float32)
    b0 = rng.standard_normal(n).astype(np.float32)
    r = rng.standard_normal((2, 5, n)).astype(np.float16)
    out = []
    for fused in (True, False):
        x = ag.Tensor(xp.asarray(x0), requires_grad=True)
        w = ag.Tensor(xp.asarray(w0), requires_grad=True)
        b = ag.Tensor(xp.asarray(b0), requires_grad=True) if bias else None
        if fused:
            with ag.amp.autocast("float16"):
                y = F.linear(x, w, b)
        else:
            args = (x.astype(np.float16), w.astype(np.float16)) + ((b.astype(np.float16),) if bias else ())
            y = Linear.apply(*args)
        (y * ag.Tensor(xp.asarray(r))).sum().backward()
        out.append((y, x, w, b))
    return out


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("x16", [False, True])
def test_autocast_linear_matches_composed_casts(bias, x16):
    (y1, x1, w1, b1), (y2, x2, w2, b2) = _linear_pair(np, 0, bias, x16)
    assert y1.dtype == np.float16 and y1.shape == (2, 5, 7)
    assert x1.grad.dtype == x1.dtype and w1.grad.dtype == np.float32
    assert _rel(y1.numpy(), y2.numpy()) < 2e-3
    assert _rel(x1.grad.numpy(), x2.grad.numpy()) < 2e-3
    assert _rel(w1.grad.numpy(), w2.grad.numpy()) < 2e-3
    if bias:
        assert b1.grad.dtype == np.float32
        assert _rel(b1.grad.numpy(), b2.grad.numpy()) < 2e-3


def test_autocast_linear_double_backward_composes():
    x = ag.Tensor(np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32), requires_grad=True)
    w = ag.Tensor(np.random.default_rng(2).standard_normal((5, 4)).astype(np.float32), requires_grad=True)
    with ag.amp.autocast("float16"):
        y = F.linear(x, w)
    (gx,) = ag.grad([(y.astype(np.float32) ** 2).sum()], [x], create_graph=True)
    gx.sum().backward()          # flows through the composed (create_graph) path of the fused op
    assert gx.dtype == np.float32 and w.grad is not None and np.all(np.isfinite(w.grad.numpy()))


def _cp():
    if not ag.backend.cuda_available():
        pytest.skip("needs CuPy and a GPU")
    import cupy as cp
    return cp


@pytest.mark.gpu
@pytest.mark.parametrize("x16", [False, True])
@pytest.mark.parametrize("k,n", [(12, 7), (16, 24)])   # (16, 24): the bias goes into the GEMM's epilogue
def test_autocast_linear_gpu_matches_composed(x16, k, n):
    cp = _cp()
    (y1, x1, w1, b1), (y2, x2, w2, b2) = _linear_pair(cp, 3, True, x16, k, n)
    assert w1.grad.dtype == np.float32 and b1.grad.dtype == np.float32
    for a, b in ((y1, y2), (x1.grad, x2.grad), (w1.grad, w2.grad), (b1.grad, b2.grad)):
        assert _rel(a.numpy(), b.numpy()) < 2e-3


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1), (67, 129), (8192, 768), (3, 5000)])
def test_cuda_colsum(dtype, shape):
    cp = _cp()
    from autograd.cuda import get_kernel
    colsum = get_kernel("colsum")
    seed = int(np.random.default_rng().integers(1 << 30))
    x = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    ref = x.astype(np.float64).sum(0)
    tol = {np.float16: 5e-3, np.float32: 1e-5, np.float64: 1e-12}[dtype]
    r = colsum(cp.asarray(x))
    assert r.dtype == dtype and r.shape == (shape[1],)
    assert _rel(r.get(), ref) < tol, seed
    if dtype == np.float16:
        r32 = colsum(cp.asarray(x), out_dtype=np.float32)
        assert r32.dtype == np.float32 and _rel(r32.get(), ref) < 1e-5, seed


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [((64, 96), (96, 80)), ((3, 33, 17), (17, 9)), ((8192, 768), (768, 300))])
def test_cuda_matmul_f16_float32_out(shape):
    cp = _cp()
    from autograd.cuda import get_kernel
    mm = get_kernel("matmul")
    rng = np.random.default_rng(int(np.random.default_rng().integers(1 << 30)))
    a = rng.standard_normal(shape[0]).astype(np.float16)
    b = rng.standard_normal(shape[1]).astype(np.float16)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    r = mm(cp.asarray(a), cp.asarray(b), out_dtype=np.float32)
    assert r.dtype == np.float32 and _rel(r.get(), ref) < 1e-5
    bt = cp.asarray(np.ascontiguousarray(b.T)).T          # a swapped view goes in with the transpose flag
    assert _rel(mm(cp.asarray(a), bt, out_dtype=np.float32).get(), ref) < 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("shape", [(64, 96, 80), (8192, 768, 2304), (5, 40, 24)])
def test_cuda_linear_bias_epilogue(dtype, shape):
    """The bias added inside the GEMM (cuBLASLt's epilogue) gives x @ w^T + b; a layout it does not take gives None
    (the caller adds the bias itself)."""
    cp = _cp()
    from autograd.cuda import get_kernel
    if dtype == "bfloat16" and ag.bfloat16 is None:
        pytest.skip("needs ml_dtypes")
    dt = ag.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    linear_bias = get_kernel("linear_bias")
    M, K, N = shape
    seed = int(np.random.default_rng().integers(1 << 30))
    rng = np.random.default_rng(seed)
    x = cp.asarray(rng.standard_normal((M, K)).astype(np.float32)).astype(dt)
    w = cp.asarray((rng.standard_normal((N, K)) * 0.3).astype(np.float32)).astype(dt)
    b = cp.asarray(rng.standard_normal(N).astype(np.float32))          # float32, cast to x's dtype inside
    ref = x.astype(cp.float64) @ w.astype(cp.float64).T + b.astype(dt).astype(cp.float64)
    y = linear_bias(x, w, b)
    assert y is not None and y.dtype == dt and y.shape == (M, N)
    tol = {"float16": 2e-3, "bfloat16": 1e-2, "float32": 2e-3}[dtype]   # float32: TF32 products
    assert _rel(y.astype(cp.float64).get(), ref.get()) < tol, seed
    ragged = cp.ascontiguousarray(x[:, : K - 1])                         # rows of K - 1 values: not 16-byte multiples
    assert linear_bias(ragged, cp.ascontiguousarray(w[:, : K - 1]), b) is None
    assert linear_bias(cp.asfortranarray(x), w, b) is None


@pytest.mark.gpu
@pytest.mark.parametrize("bad", [None, "inf", "nan"])
def test_grad_scaler_multi_tensor_matches_per_param(bad):
    cp = _cp()
    rng = np.random.default_rng(4)
    shapes = [(3,), (17, 5), (70000,), (1,), (0,), (129, 130)]
    dts = [np.float32, np.float16, np.float32, np.float64, np.float32, np.float16]
    arrays = [rng.standard_normal(s).astype(d) * 1000 for s, d in zip(shapes, dts)]
    if bad:
        arrays[2][12345] = np.inf if bad == "inf" else np.nan
    ps = []
    for a in arrays:
        p = ag.Tensor(cp.asarray(a), requires_grad=True)
        p.grad = ag.Tensor(cp.asarray(a))
        ps.append(p)
    ps.append(ag.Tensor(cp.zeros(3, np.float32), requires_grad=True))       # grad None: skipped
    ref_params = [ag.Tensor(a.copy(), requires_grad=True) for a in arrays]
    for p, a in zip(ref_params, arrays):
        p.grad = ag.Tensor(a.copy())
    s1, s2 = ag.amp.GradScaler(init_scale=1024.0), ag.amp.GradScaler(init_scale=1024.0)
    ok1, ok2 = s1.unscale_and_check(ps), s2.unscale_and_check(ref_params)
    assert ok1 == ok2 == (bad is None)
    for p, q in zip(ps, ref_params):
        np.testing.assert_allclose(p.grad.numpy().astype(np.float64), q.grad.numpy().astype(np.float64),
                                   rtol=1e-3, equal_nan=True)
    s1.update()
    assert s1.scale_value == (512.0 if bad else 1024.0)


@pytest.mark.gpu
@pytest.mark.parametrize("grad16", [False, True])
def test_adamw_multi_tensor_matches_per_param(grad16):
    cp = _cp()
    rng = np.random.default_rng(5)
    shapes = [(40, 30), (30,), (70000,), (5, 5, 5), (1,)]
    datas = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    cpu = [ag.Tensor(d.copy(), requires_grad=True) for d in datas]
    gpu = [ag.Tensor(cp.asarray(d), requires_grad=True) for d in datas]
    groups = lambda ps: [{"params": ps[:3], "weight_decay": 0.1}, {"params": ps[3:], "weight_decay": 0.0, "lr": 0.02}]
    o1 = optim.AdamW(groups(cpu), lr=0.01, betas=(0.9, 0.95))
    o2 = optim.AdamW(groups(gpu), lr=0.01, betas=(0.9, 0.95))
    for step in range(4):
        for c, g in zip(cpu, gpu):
            gr = rng.standard_normal(c.shape).astype(np.float16 if grad16 else np.float32)
            c.grad = ag.Tensor(gr.astype(np.float32))
            g.grad = ag.Tensor(cp.asarray(gr))
        if step == 2:                         # a parameter without a gradient is skipped (its step count too)
            cpu[1].grad = gpu[1].grad = None
        o1.step()
        o2.step()
    for c, g in zip(cpu, gpu):
        np.testing.assert_allclose(g.numpy(), c.numpy(), rtol=2e-5, atol=2e-6)
    sd1, sd2 = o1.state_dict(), o2.state_dict()
    assert sd1["step"] == sd2["step"] and sd1["groups"] == sd2["groups"]
    for i in sd1["state"]:
        assert sd1["state"][i]["step"] == sd2["state"][i]["step"]
        np.testing.assert_allclose(sd2["state"][i]["exp_avg_sq"], sd1["state"][i]["exp_avg_sq"], rtol=1e-5)


def _split_composed(x, h, kv):
    b, t, c = x.shape
    d = c // (h + 2 * kv)
    qkv = x.reshape(b, t, h + 2 * kv, d).transpose(0, 2, 1, 3)
    return qkv.split([h, h + kv], axis=1)


@pytest.mark.parametrize("contiguous", [False, True])
@pytest.mark.parametrize("h,kv", [(4, 4), (4, 2), (2, 1)])
def test_split_and_merge_heads_match_composed_ops(h, kv, contiguous):
    rng = np.random.default_rng(h * 10 + kv)
    b, t, d = 2, 5, 3
    x0 = rng.standard_normal((b, t, (h + 2 * kv) * d))
    rs = [rng.standard_normal((b, n, t, d)) for n in (h, kv, kv)]
    ry = rng.standard_normal((b, t, h * d))
    outs = []
    for fused in (True, False):
        x = ag.Tensor(x0.copy(), requires_grad=True)
        q, k, v = F.split_heads(x, h, kv, contiguous) if fused else _split_composed(x, h, kv)
        if fused and contiguous:
            assert all(a.data.flags.c_contiguous for a in (q, k, v))
        y = F.merge_heads(q) if fused else q.transpose(0, 2, 1, 3).reshape(b, t, h * d)
        assert y.shape == (b, t, h * d)
        loss = (y * ag.Tensor(ry)).sum() + sum((a * ag.Tensor(r)).sum() for a, r in zip((q, k, v), rs))
        loss.backward()
        outs.append(([a.numpy() for a in (q, k, v, y)], x.grad.numpy()))
    for a, b_ in zip(outs[0][0], outs[1][0]):
        np.testing.assert_array_equal(a, b_)
    np.testing.assert_allclose(outs[0][1], outs[1][1], rtol=1e-12)


def test_split_and_merge_heads_gradcheck_and_double_backward():
    rng = np.random.default_rng(7)
    x = ag.Tensor(rng.standard_normal((1, 3, 8)), requires_grad=True)
    assert ag.gradcheck(lambda x: F.merge_heads(F.split_heads(x, 2, 1)[0] * F.split_heads(x, 2, 1)[2]), [x])
    q, k, v = F.split_heads(x, 2, 1)
    (gx,) = ag.grad([(q ** 2).sum() + (F.merge_heads(v) ** 3).sum()], [x], create_graph=True)
    gx.sum().backward()
    assert x.grad is not None and np.all(np.isfinite(x.grad.numpy()))
    with pytest.raises(ValueError, match="split_heads"):
        F.split_heads(x, 3, 1)
