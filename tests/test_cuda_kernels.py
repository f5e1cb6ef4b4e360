"""autograd.cuda kernels against float64 NumPy references (forward and backward), on the GPU.

Every GPU test is marked ``gpu`` and skipped without CuPy and a GPU. Inputs are fresh random draws (the seed is in the
failure message); outputs are compared by ||out - ref|| / ||ref|| with bounds per dtype; the memory pool is poisoned
with NaN before each test so that an unwritten output element shows up. Odd sizes (T=67, C=129, V=1000) on purpose.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import autograd.cuda as gk
from autograd.backend import cuda_available

# relative-norm error bounds: float64 arithmetic, float32, float16 storage (float32 accumulation)
TOL = {np.float64: 1e-10, np.float32: 2e-5, np.float16: 5e-3}
DTYPES = [np.float32, np.float16, np.float64]
GELU_K, GELU_C = math.sqrt(2 / math.pi), 0.044715


def test_registry_imports_without_gpu():
    assert set(gk.KERNEL_NAMES) >= {"matmul", "adamw_step", "attention_forward", "cross_entropy_backward"}
    assert gk.get_kernel("no_such_kernel") is None
    if not cuda_available():
        assert gk.get_kernel("matmul") is None
    assert isinstance(gk.tf32_enabled(), bool)


# ------------------------------------------------------------------------------------------------ helpers
@pytest.fixture
def cp():
    import cupy
    # poison: freed NaN-filled blocks go back to the pool, so a kernel's unwritten output element reads NaN
    blocks = [cupy.full((n,), np.nan, np.float32) for n in (1 << 10, 1 << 14, 1 << 18, 1 << 21, 1 << 23)]
    del blocks
    return cupy


@pytest.fixture
def rng():
    seed = np.random.SeedSequence().entropy % (2 ** 32)
    return np.random.default_rng(seed), seed


def draw(rng, shape, dtype, scale=1.0):
    """float64 values exactly representable in dtype (so the reference sees the kernel's inputs)."""
    return (rng.standard_normal(shape) * scale).astype(dtype).astype(np.float64)


def rel(out, ref):
    out = np.asarray(out.get() if hasattr(out, "get") else out, np.float64)
    ref = np.asarray(ref, np.float64)
    assert out.shape == ref.shape, (out.shape, ref.shape)
    assert np.isfinite(out).all(), "non-finite output (unwritten element or overflow)"
    den = np.linalg.norm(ref)
    return float(np.linalg.norm(out - ref) / (den if den > 0 else 1.0))


def check(out, ref, dtype, seed, what, tol=None):
    e = rel(out, ref)
    bound = TOL[dtype] if tol is None else tol
    assert e < bound, f"{what} {np.dtype(dtype).name}: rel err {e:.3g} > {bound:g} (seed {seed})"


def dev(cp, a, dtype):
    return cp.asarray(np.asarray(a).astype(dtype))


def dev_at(cp, a, dtype, offset):
    """dev(a) as a C-contiguous array whose data starts ``offset`` elements past an allocation's (16-byte aligned)
    start: rows that the vector kernels must take with a scalar head, or element by element."""
    if not offset:
        return dev(cp, a, dtype)
    a = np.asarray(a).astype(dtype)
    out = cp.asarray(np.concatenate([np.zeros(offset, a.dtype), a.ravel()]))[offset:].reshape(a.shape)
    assert out.flags.c_contiguous and out.data.ptr % 16
    return out


def bf16_or_skip():
    from autograd.dtypes import bfloat16
    if bfloat16 is None:
        pytest.skip("needs ml_dtypes")
    return bfloat16


# ------------------------------------------------------------------------------------------------ matmul
MM_CASES = [
    ((67, 129), (129, 33), None, None),
    ((3, 67, 129), (129, 33), None, None),          # batched @ 2-D: one GEMM
    ((67, 129), (3, 129, 33), None, None),          # 2-D @ batched: stride-0 A
    ((2, 3, 67, 40), (2, 3, 40, 67), None, None),   # attention-like
    ((2, 3, 40, 67), (2, 3, 40, 33), "a", None),    # a is a swapped view (MatMul backward: x^T @ g)
    ((2, 3, 67, 40), (2, 3, 33, 40), None, "b"),    # b is a swapped view (q @ k^T)
    ((2, 3, 40, 67), (2, 3, 33, 40), "a", "b"),
    ((1, 3, 67, 40), (2, 1, 40, 5), None, None),    # broadcast both ways
    ((2, 67, 3, 40), (2, 3, 40, 9), "heads", None),  # (B, T, H, D) -> (B, H, T, D) view: needs a copy
    ((1, 40), (40, 1), None, None),
]


def _view(x, how):
    if how == "a" or how == "b":
        return x.swapaxes(-1, -2)
    if how == "heads":
        return x.swapaxes(1, 2)
    return x


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tf32", [True, False])
@pytest.mark.parametrize("case", MM_CASES)
def test_matmul(cp, rng, dtype, tf32, case):
    (r, seed), (sa, sb, va, vb) = rng, case
    if tf32 and dtype != np.float32:
        pytest.skip("TF32 only changes float32")
    a = draw(r, sa, dtype)
    b = draw(r, sb, dtype)
    A, B = _view(dev(cp, a, dtype), va), _view(dev(cp, b, dtype), vb)
    ref = np.matmul(_view(a, va), _view(b, vb))
    old = gk.tf32_enabled()
    gk.set_tf32(tf32)
    try:
        out = gk.get_kernel("matmul")(A, B)
    finally:
        gk.set_tf32(old)
    assert out.dtype == dtype
    tol = 3e-3 if (tf32 and dtype == np.float32) else (5e-3 if dtype == np.float16 else TOL[dtype] * 10)
    check(out, ref, dtype, seed, f"matmul {sa}@{sb}", tol)


@pytest.mark.gpu
def test_engine_matmul_backward_on_gpu(cp, rng):
    import autograd as ag
    r, seed = rng
    x = draw(r, (3, 5, 7), np.float64)
    w = draw(r, (7, 4), np.float64)
    g = draw(r, (3, 5, 4), np.float64)
    X = ag.Tensor(cp.asarray(x), requires_grad=True)
    Wt = ag.Tensor(cp.asarray(w), requires_grad=True)
    (X @ Wt).backward(ag.Tensor(cp.asarray(g)))
    check(X.grad.data, g @ w.T, np.float64, seed, "MatMul dx")
    check(Wt.grad.data, np.einsum("btc,btn->cn", x, g), np.float64, seed, "MatMul dw")


# ------------------------------------------------------------------------------------------------ gelu
def gelu_ref(h):
    t = np.tanh(GELU_K * (h + GELU_C * h ** 3))
    return 0.5 * h * (1 + t), 0.5 * (1 + t) + 0.5 * h * (1 - t * t) * GELU_K * (1 + 3 * GELU_C * h * h)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_gelu_and_bias_gelu(cp, rng, dtype):
    r, seed = rng
    x = draw(r, (5, 67, 129), dtype, 2.0)
    b = draw(r, (129,), dtype)
    gy = draw(r, (5, 67, 129), dtype)
    X, B, GY = dev(cp, x, dtype), dev(cp, b, dtype), dev(cp, gy, dtype)
    y, d = gelu_ref(x)
    check(gk.get_kernel("gelu_forward")(X), y, dtype, seed, "gelu fwd")
    check(gk.get_kernel("gelu_backward")(X, GY), gy * d, dtype, seed, "gelu bwd")
    y, d = gelu_ref(x + b)
    check(gk.get_kernel("bias_gelu_forward")(X, B), y, dtype, seed, "bias_gelu fwd")
    gx, gb = gk.get_kernel("bias_gelu_backward")(X, B, GY)
    check(gx, gy * d, dtype, seed, "bias_gelu gx")
    check(gb, (gy * d).sum(axis=(0, 1)), dtype, seed, "bias_gelu gb", tol=TOL[dtype] * 4)
    assert gb.dtype == dtype and gb.shape == (129,)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES + ["bfloat16"])
@pytest.mark.parametrize("shape,offset", [((3, 50, 264), 0), ((2, 8), 0), ((3, 50, 264), 1)])
def test_gelu_vector_path(cp, rng, dtype, shape, offset):
    """Sizes (and C, for the bias) that are multiples of the 16-byte vector take the vector kernel (a partial last
    block for (3, 50, 264)); offset 1: x starts off a 16-byte boundary, so the element kernel serves."""
    r, seed = rng
    dt = bf16_or_skip() if dtype == "bfloat16" else dtype
    tol = 1e-2 if dtype == "bfloat16" else None
    x = draw(r, shape, dt, 2.0)
    b = draw(r, shape[-1:], dt)
    gy = draw(r, shape, dt)
    X, B, GY = dev_at(cp, x, dt, offset), dev(cp, b, dt), dev(cp, gy, dt)
    for name, out, ref in (("gelu", None, x), ("bias_gelu", B, x + b)):
        y, d = gelu_ref(ref)
        fk, bk = gk.get_kernel(name + "_forward"), gk.get_kernel(name + "_backward")
        fwd = fk(X) if out is None else fk(X, B)
        assert fwd.dtype == dt
        check(fwd, y, dt, seed, f"{name} fwd {shape} offset {offset}", tol)
        bwd = bk(X, GY) if out is None else bk(X, B, GY)[0]
        check(bwd, gy * d, dt, seed, f"{name} bwd {shape} offset {offset}", tol)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_gelu_non_contiguous_inputs(cp, rng, dtype):
    """Views take the ElementwiseKernel path (broadcasting, any strides)."""
    r, seed = rng
    x = draw(r, (129, 67), dtype, 2.0)
    gy = draw(r, (67, 129), dtype)
    b = draw(r, (129,), dtype)
    X = dev(cp, x, dtype).T
    y, d = gelu_ref(x.T)
    check(gk.get_kernel("gelu_forward")(X), y, dtype, seed, "gelu fwd (view)")
    check(gk.get_kernel("gelu_backward")(X, dev(cp, gy, dtype)), gy * d, dtype, seed, "gelu bwd (view)")
    y, d = gelu_ref(x.T + b)
    check(gk.get_kernel("bias_gelu_forward")(X, dev(cp, b, dtype)), y, dtype, seed, "bias_gelu fwd (view)")
    gx, gb = gk.get_kernel("bias_gelu_backward")(X, dev(cp, b, dtype), dev(cp, gy, dtype))
    check(gx, gy * d, dtype, seed, "bias_gelu gx (view)")


# ------------------------------------------------------------------------------------------------ norms
def ln_ref(x, w, b, gy, eps, rms=False):
    mean = np.zeros(x.shape[:-1] + (1,)) if rms else x.mean(-1, keepdims=True)
    xc = x - mean
    var = (xc * xc).mean(-1, keepdims=True)
    rstd = 1 / np.sqrt(var + eps)
    xh = xc * rstd
    y = xh * (w if w is not None else 1) + (b if b is not None else 0)
    g = gy * (w if w is not None else 1)
    gx = g - (g * xh).mean(-1, keepdims=True) * xh
    if not rms:
        gx -= g.mean(-1, keepdims=True)
    gx *= rstd
    C = x.shape[-1]
    gw = (gy * xh).reshape(-1, C).sum(0)
    gb = gy.reshape(-1, C).sum(0)
    return y, mean[..., 0], rstd[..., 0], gx, gw, gb


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,affine", [((2, 67, 129), True), ((3, 1000), False), ((4, 768), True),
                                          ((3, 7000), True)])   # 7000: gw/gb too wide for shared memory
def test_layer_norm(cp, rng, dtype, shape, affine):
    r, seed = rng
    x = draw(r, shape, dtype, 3.0) + 1.5
    C = shape[-1]
    w = draw(r, (C,), dtype) if affine else None
    b = draw(r, (C,), dtype) if affine else None
    gy = draw(r, shape, dtype)
    y, mean, rstd, gx, gw, gb = ln_ref(x, w, b, gy, 1e-5)
    W = dev(cp, w, dtype) if affine else None
    Bb = dev(cp, b, dtype) if affine else None
    Y, M, R = gk.get_kernel("layer_norm_forward")(dev(cp, x, dtype), W, Bb, 1e-5)
    check(Y, y, dtype, seed, "layer_norm y")
    check(M, mean, dtype, seed, "layer_norm mean")
    check(R, rstd, dtype, seed, "layer_norm rstd")
    assert M.dtype == (np.float64 if dtype == np.float64 else np.float32)
    GX, GW, GB = gk.get_kernel("layer_norm_backward")(dev(cp, gy, dtype), dev(cp, x, dtype), W, M, R)
    check(GX, gx, dtype, seed, "layer_norm gx", tol=TOL[dtype] * 4)
    check(GB, gb, dtype, seed, "layer_norm gb", tol=TOL[dtype] * 4)
    if affine:
        check(GW, gw, dtype, seed, "layer_norm gw", tol=TOL[dtype] * 4)
        assert GW.dtype == dtype
    else:
        assert GW is None


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,affine", [((2, 67, 129), True), ((3, 1000), False), ((3, 7000), True)])
def test_rms_norm(cp, rng, dtype, shape, affine):
    r, seed = rng
    x = draw(r, shape, dtype, 2.0)
    C = shape[-1]
    w = draw(r, (C,), dtype) if affine else None
    gy = draw(r, shape, dtype)
    y, _, rstd, gx, gw, _ = ln_ref(x, w, None, gy, 1e-6, rms=True)
    W = dev(cp, w, dtype) if affine else None
    Y, R = gk.get_kernel("rms_norm_forward")(dev(cp, x, dtype), W, 1e-6)
    check(Y, y, dtype, seed, "rms_norm y")
    check(R, rstd, dtype, seed, "rms_norm rstd")
    GX, GW = gk.get_kernel("rms_norm_backward")(dev(cp, gy, dtype), dev(cp, x, dtype), W, R)
    check(GX, gx, dtype, seed, "rms_norm gx", tol=TOL[dtype] * 4)
    if affine:
        check(GW, gw, dtype, seed, "rms_norm gw", tol=TOL[dtype] * 4)
    else:
        assert GW is None


# ------------------------------------------------------------------------------------------------ softmax
def softmax_ref(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,offset", [((2, 67, 129), 0), ((5, 1000), 0), ((3, 5000), 0), ((4, 1037), 0),
                                          ((3, 5001), 0), ((3, 5000), 1), ((4, 1037), 3)])
def test_softmax(cp, rng, dtype, shape, offset):
    """Rows over 1024 take the block kernel: odd lengths (a scalar head and tail on each row), and inputs off a
    16-byte boundary (offset: x and gy, not y, so the rows go element by element)."""
    r, seed = rng
    x = draw(r, shape, dtype, 3.0)
    x[..., 1] = -np.inf   # masked entries
    gy = draw(r, shape, dtype)
    y = softmax_ref(x)
    Y = gk.get_kernel("softmax_forward")(dev_at(cp, x, dtype, offset))
    check(Y, y, dtype, seed, "softmax y")
    gx = y * (gy - (gy * y).sum(-1, keepdims=True))
    # the backward is checked on the reference y rounded to dtype (what the op saves)
    GX = gk.get_kernel("softmax_backward")(dev(cp, y, dtype), dev_at(cp, gy, dtype, offset))
    yq = y.astype(dtype).astype(np.float64)
    check(GX, yq * (gy - (gy * yq).sum(-1, keepdims=True)), dtype, seed, "softmax gx", tol=TOL[dtype] * 4)
    assert rel(GX, gx) < max(TOL[dtype] * 4, 1e-2 if dtype == np.float16 else 0)


# ------------------------------------------------------------------------------------------------ cross-entropy
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,V,offset", [(67, 1000, 0), (5, 50304, 0), (33, 129, 0), (9, 50257, 0), (13, 7, 0),
                                        (5, 50304, 1), (9, 50257, 5)])
@pytest.mark.parametrize("device_scale", [False, True])
def test_cross_entropy(cp, rng, dtype, N, V, offset, device_scale):
    """Row lengths that are not multiples of the vector width (each row starts at another offset: scalar head and
    tail), logits off a 16-byte boundary (offset: dlogits is a fresh array at another offset, so the backward goes
    element by element), a target at the first and at the last column."""
    r, seed = rng
    x = draw(r, (N, V), dtype, 4.0)
    t = r.integers(0, V, N)
    t[1], t[-1] = 0, V - 1
    t[::5] = -100
    valid = t != -100
    lse = np.log(np.exp(x - x.max(1, keepdims=True)).sum(1)) + x.max(1)
    loss = ((lse - x[np.arange(N), np.where(valid, t, 0)]) * valid).sum()
    X, T = dev_at(cp, x, dtype, offset), cp.asarray(t)
    L, LSE, count = gk.get_kernel("cross_entropy_forward")(X, T, -100)
    assert count == int(valid.sum()) and isinstance(count, int)
    assert L.shape == () and LSE.shape == (N,)
    check(L, loss, dtype, seed, "xent loss", tol=max(TOL[dtype], 1e-6))
    check(LSE, lse, dtype, seed, "xent lse", tol=max(TOL[dtype], 1e-6))
    scale = 1.7 / count
    sc = cp.asarray(np.array(scale, np.float32 if dtype != np.float64 else np.float64)) if device_scale else scale
    D = gk.get_kernel("cross_entropy_backward")(X, T, LSE, sc, -100)
    p = np.exp(x - lse[:, None])
    p[np.arange(N), np.where(valid, t, 0)] -= 1
    d = scale * p * valid[:, None]
    assert D.dtype == dtype
    check(D, d, dtype, seed, "xent dlogits", tol=TOL[dtype] * 4)
    assert not cp.any(D[~cp.asarray(valid)]), "ignored rows must be zero"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES + ["bfloat16"])
@pytest.mark.parametrize("V", [1003, 50304])
def test_cross_entropy_bad_targets_and_nan_logits(cp, rng, dtype, V):
    """A target outside [0, V) (not ignore_index) gives a NaN loss row, as does a NaN logit (its lse is NaN too); the
    other rows are unchanged. Per-row losses through cross_entropy_rows (float32 logits), the sum through
    cross_entropy_forward."""
    r, seed = rng
    dt = bf16_or_skip() if dtype == "bfloat16" else dtype
    x = draw(r, (6, V), dt, 4.0)
    x[5, 11] = np.nan
    t = np.array([0, V, -5, V - 1, -100, 7])
    good = np.array([True, False, False, True, True, False])
    lse = np.log(np.exp(x - x.max(1, keepdims=True)).sum(1)) + x.max(1)
    L, LSE, count = gk.get_kernel("cross_entropy_forward")(dev(cp, x, dt), cp.asarray(t), -100)
    assert count == 5 and np.isnan(float(L)), f"loss {float(L)} (seed {seed})"
    lse_k = LSE.get()
    assert np.isnan(lse_k[5]) and np.isfinite(lse_k[:5]).all()
    check(lse_k[:5], lse[:5], np.float64 if dt == np.float64 else np.float32, seed, "lse of the good rows",
          tol=1e-10 if dt == np.float64 else 1e-6)
    if dt in (np.float32, np.float64):
        loss, _ = gk.get_kernel("cross_entropy_rows")(dev(cp, x, dt), cp.asarray(t), -100, None, 1.0, None)
        loss = loss.get()
        assert np.isnan(loss[~good]).all() and loss[4] == 0, f"{loss} (seed {seed})"
        ref = lse[[0, 3]] - x[[0, 3], [0, V - 1]]
        assert np.allclose(loss[[0, 3]], ref, rtol=1e-5), f"{loss[[0, 3]]} vs {ref} (seed {seed})"


# ------------------------------------------------------------------------------------------------ AdamW
@pytest.mark.gpu
@pytest.mark.parametrize("pdt,gdt", [(np.float32, np.float32), (np.float64, np.float64),
                                     (np.float32, np.float16), (np.float16, np.float16)])
def test_adamw_multi_tensor(cp, rng, pdt, gdt):
    r, seed = rng
    shapes = [(129,), (67, 129), (40000,), (3, 5, 7), (1,), (16384,), (16385,)]
    P = [draw(r, s, pdt) for s in shapes]
    M = [np.zeros(s) for s in shapes]
    Vv = [np.zeros(s) for s in shapes]
    dP = [dev(cp, p, pdt) for p in P]
    dM = [cp.zeros(s, pdt) for s in shapes]
    dV = [cp.zeros(s, pdt) for s in shapes]
    lr, b1, b2, wd = 1e-2, 0.9, 0.95, 0.1
    eps = 1e-3 if pdt == np.float16 else 1e-8   # float16 v underflows for tiny grads; keep the update bounded
    for step in range(1, 4):
        G = [draw(r, s, gdt) for s in shapes]
        gk.get_kernel("adamw_step")(dP, [dev(cp, g, gdt) for g in G], dM, dV, lr, b1, b2, eps, wd, step)
        for i in range(len(shapes)):
            P[i] *= 1 - lr * wd
            M[i] = b1 * M[i] + (1 - b1) * G[i]
            Vv[i] = b2 * Vv[i] + (1 - b2) * G[i] ** 2
            P[i] -= lr / (1 - b1 ** step) * M[i] / (np.sqrt(Vv[i] / (1 - b2 ** step)) + eps)
    tol = {np.float64: 1e-10, np.float32: 1e-5, np.float16: 2e-3}[pdt]
    for i, s in enumerate(shapes):
        check(dP[i], P[i], pdt, seed, f"adamw param {s}", tol)
        if pdt == np.float16:   # m of a tiny tensor can nearly cancel: bound the error by the size of the grads
            err = np.linalg.norm(dM[i].get().astype(np.float64) - M[i]) / (0.1 * math.sqrt(M[i].size))
            assert err < 2e-2, f"adamw m {s} float16: scaled err {err:.3g} (seed {seed})"
        else:
            check(dM[i], M[i], pdt, seed, f"adamw m {s}", tol)


@pytest.mark.gpu
def test_adamw_refuses_non_contiguous_params(cp, rng):
    """The kernel takes C-contiguous tensors only (the optimizer sends others through its per-parameter update)."""
    r, _ = rng
    dp = cp.asarray(draw(r, (6, 8), np.float32).astype(np.float32).T.copy()).T      # F-order param view
    assert not dp.flags.c_contiguous
    m, v = cp.zeros((6, 8), np.float32), cp.zeros((6, 8), np.float32)
    with pytest.raises(ValueError, match="C-contiguous"):
        gk.get_kernel("adamw_step")([dp], [cp.ones((6, 8), np.float32)], [m], [v], 1e-2, 0.9, 0.999, 1e-8, 0.0, 1)


@pytest.mark.gpu
def test_adamw_casts_an_odd_gradient_dtype(cp, rng):
    """A float64 parameter with a float16 gradient: the gradient is cast, the update matches float64 NumPy."""
    r, seed = rng
    p, g = draw(r, (5, 7), np.float64), draw(r, (5, 7), np.float16)
    dp = cp.asarray(p)
    m, v = cp.zeros((5, 7)), cp.zeros((5, 7))
    gk.get_kernel("adamw_step")([dp], [cp.asarray(g.astype(np.float16))], [m], [v], 1e-2, 0.9, 0.999, 1e-8, 0.0, 1)
    check(dp, p - 1e-2 * g / (np.abs(g) + 1e-8), np.float64, seed, "adamw cast grad", 1e-9)


# ------------------------------------------------------------------------------------------------ attention
def attn_ref(q, k, v, do, causal, scale, keep=None, p=0.0):
    """o, lse, dq, dk, dv in float64; k, v may have fewer heads (each serving H / Hk query heads); keep: the dropout
    mask of the probabilities (dropped with probability p)."""
    rep = q.shape[1] // k.shape[1]
    kf, vf = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
    Tq, Tk = q.shape[-2], k.shape[-2]
    s = np.einsum("bhid,bhjd->bhij", q, kf) * scale
    if causal:
        s = np.where(np.triu(np.ones((Tq, Tk), bool), k=1 + Tk - Tq), -np.inf, s)
    m = s.max(-1, keepdims=True)
    P = np.exp(s - m)
    den = P.sum(-1, keepdims=True)
    P /= den
    lse = (np.log(den) + m)[..., 0]
    mask = np.ones_like(P) if keep is None else keep / (1.0 - p)
    Pd = P * mask
    o = Pd @ vf
    dvf = Pd.swapaxes(-1, -2) @ do
    dP = (do @ vf.swapaxes(-1, -2)) * mask
    ds = P * (dP - (do * o).sum(-1, keepdims=True)) * scale
    dkf = ds.swapaxes(-1, -2) @ q
    b, h, t, d = dkf.shape
    return (o, lse, ds @ kf, dkf.reshape(b, h // rep, rep, t, d).sum(2),
            dvf.reshape(b, h // rep, rep, t, d).sum(2))


ATTN_CASES = [(2, 3, 67, 67, 16, True), (2, 3, 67, 67, 64, False), (1, 2, 5, 67, 32, True),
              (1, 2, 130, 130, 128, True), (2, 2, 33, 70, 80, False)]


def _attention_case(cp, rng, dtype, case, fwd, bwd):
    r, seed = rng
    B, H, Tq, Tk, D, causal = case
    q, k, v = draw(r, (B, H, Tq, D), dtype), draw(r, (B, H, Tk, D), dtype), draw(r, (B, H, Tk, D), dtype)
    do = draw(r, (B, H, Tq, D), dtype)
    scale = 1 / math.sqrt(D)
    o, lse, dq, dk, dv = attn_ref(q, k, v, do, causal, scale)
    Q, K, V = dev(cp, q, dtype), dev(cp, k, dtype), dev(cp, v, dtype)
    O, LSE = fwd(Q, K, V, causal, scale)
    tol = {np.float64: 1e-9, np.float32: 3e-3 if gk.tf32_enabled() else 2e-4, np.float16: 1e-2}[dtype]
    check(O, o, dtype, seed, f"attention o {case}", tol)
    check(LSE, lse, dtype, seed, f"attention lse {case}", max(tol, 1e-6) if dtype != np.float64 else 1e-9)
    dQ, dK, dV = bwd(Q, K, V, O, LSE, dev(cp, do, dtype), causal, scale)
    for name, got, ref in (("dq", dQ, dq), ("dk", dK, dk), ("dv", dV, dv)):
        check(got, ref, dtype, seed, f"attention {name} {case}", tol * 2)
        assert got.dtype == dtype


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ATTN_CASES)
def test_attention_matmul_version(cp, rng, dtype, case):
    from autograd.cuda import attention as at
    _attention_case(cp, rng, dtype, case, at.attention_forward_matmul, at.attention_backward_matmul)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ATTN_CASES)
def test_attention_dispatch(cp, rng, dtype, case):
    """What get_kernel serves (the flash kernel where it applies)."""
    _attention_case(cp, rng, dtype, case, gk.get_kernel("attention_forward"), gk.get_kernel("attention_backward"))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_flash_matches_matmul_version(cp, rng, dtype):
    from autograd.cuda import attention as at, flash_attention as fa
    r, seed = rng
    q = dev(cp, draw(r, (2, 4, 200, 64), dtype), dtype)
    k = dev(cp, draw(r, (2, 4, 200, 64), dtype), dtype)
    v = dev(cp, draw(r, (2, 4, 200, 64), dtype), dtype)
    do = dev(cp, draw(r, (2, 4, 200, 64), dtype), dtype)
    if not fa.supports(q, k, v):
        pytest.skip("flash kernel does not handle this case")
    old = gk.tf32_enabled()
    gk.set_tf32(False)
    try:
        o1, l1 = fa.flash_forward(q, k, v, True, 0.125)
        o2, l2 = at.attention_forward_matmul(q, k, v, True, 0.125)
        g1 = fa.flash_backward(q, k, v, o1, l1, do, True, 0.125)
        g2 = at.attention_backward_matmul(q, k, v, o2, l2, do, True, 0.125)
    finally:
        gk.set_tf32(old)
    tol = 1e-5 if dtype == np.float32 else 1e-2
    check(o1, o2.get(), dtype, seed, "flash vs matmul o", tol)
    check(l1, l2.get(), dtype, seed, "flash vs matmul lse", tol)
    for a, b, n in zip(g1, g2, ("dq", "dk", "dv")):
        check(a, b.get(), dtype, seed, f"flash vs matmul {n}", tol * 2)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float16, "bfloat16"])
def test_matmul_accumulate_adds_the_product(cp, rng, dtype):
    """out += a @ b in one GEMM (beta = 1), a a transposed view as the chunked head's dW = dz^T h takes it."""
    from autograd.cuda.matmul import matmul_accumulate
    from autograd.dtypes import as_dtype
    r, seed = rng
    dt = as_dtype(dtype)
    a = draw(r, (67, 129), dt)            # used as a.T: (129, 67)
    b = draw(r, (67, 33), dt)
    out0 = r.standard_normal((129, 33)).astype(np.float32)
    out = cp.asarray(out0)
    matmul_accumulate(cp.asarray(a.astype(dt)).T, cp.asarray(b.astype(dt)), out)
    tol = 2e-5 if dt == np.float32 and not gk.tf32_enabled() else 3e-3
    e = rel(out, out0 + a.T @ b)
    assert e < tol, f"matmul_accumulate {dt}: {e:.3g} (seed {seed})"
    with pytest.raises(ValueError, match="matmul_accumulate"):
        matmul_accumulate(cp.asarray(a.astype(dt)).T, cp.asarray(b.astype(dt)), out[:, :5])
