"""F.linear_cross_entropy: the language-model head and its cross-entropy over chunks of rows (the (N, V) logits never
exist whole). CPU: float64 gradchecks on drawn shapes and chunk sizes, the fused op against its composed reference
(linear, soft cap, cross-entropy) in float64/float32 and under float16/bfloat16 autocast, and GPT's loss (fused)
against its forward's (composed) for GPT-2 (tied head), Llama (RMSNorm), Gemma 3 (soft cap) and a mixture of
experts (aux loss). GPU (marker gpu): the same comparisons on CuPy in every dtype, the `cross_entropy_rows` kernel
and the bfloat16 softmax / cross-entropy kernels against float64 NumPy, and the peak memory of both paths."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import autograd as ag
import tinygrad_llm as tl
from autograd import functional as F
from autograd.dtypes import bfloat16
from autograd.ops.fused.linear_cross_entropy import default_chunk_rows
from test_families import build, tokens

needs_bf16 = pytest.mark.skipif(bfloat16 is None, reason="needs ml_dtypes")


def draw_case(seed, N, C, V, dtype=np.float64, bias=True, ignored=0.25):
    rng = np.random.default_rng(seed)
    h = ag.Tensor(rng.normal(size=(N, C)).astype(dtype), requires_grad=True)
    w = ag.Tensor((rng.normal(size=(V, C)) * 0.7).astype(dtype), requires_grad=True)
    b = ag.Tensor(rng.normal(size=(V,)).astype(dtype), requires_grad=True) if bias else None
    t = rng.integers(0, V, N)
    t[rng.random(N) < ignored] = -100
    return h, w, b, t


def loss_and_grads(fn, inputs, scale=1.0):
    """[loss, each input's gradient]; ``scale``: backward from loss * scale, gradients divided by it (GradScaler's
    way of keeping float16 gradients normal)."""
    for x in inputs:
        x.grad = None
    loss = fn()
    (loss * scale if scale != 1.0 else loss).backward()
    return [loss.numpy()] + [x.grad.numpy() / scale for x in inputs]


def composed(h, w, t, b=None, softcap=None, **kw):
    """What GPT.forward computes: the logits whole, then cross_entropy."""
    return F.cross_entropy(F.soft_cap(F.linear(h, w, b), softcap), t.reshape(h.shape[:-1]), **kw)


def assert_close(got, want, rtol, atol=0.0, what=""):
    for i, (g, r) in enumerate(zip(got, want)):
        g, r = np.asarray(g, np.float64), np.asarray(r, np.float64)
        assert g.shape == r.shape, (what, i, g.shape, r.shape)
        assert np.isfinite(g).all(), (what, i)
        err = np.linalg.norm(g - r) / max(np.linalg.norm(r), 1e-30)
        assert err <= rtol or np.abs(g - r).max() <= atol, f"{what} output {i}: rel err {err:.3g} > {rtol}"


# ---------------------------------------------------------------------------------------------------- CPU
@given(seed=st.integers(0, 2 ** 31), N=st.integers(1, 9), C=st.integers(1, 5), V=st.integers(2, 9),
       chunk=st.integers(1, 11), bias=st.booleans(), cap=st.sampled_from([None, 2.5]),
       reduction=st.sampled_from(["mean", "sum"]))
def test_gradcheck_float64(seed, N, C, V, chunk, bias, cap, reduction):
    h, w, b, t = draw_case(seed, N, C, V, bias=bias)
    ins = [h, w] + ([b] if bias else [])

    def fn(h, w, *b):
        return F.linear_cross_entropy(h, w, t, b[0] if b else None, reduction=reduction, softcap=cap, chunk_size=chunk)
    assert ag.gradcheck(fn, ins)


@given(seed=st.integers(0, 2 ** 31), B=st.integers(1, 3), T=st.integers(1, 5), chunk=st.integers(1, 7))
def test_gradcheck_tied_weight(seed, B, T, chunk):
    """The head's weight is also the embedding its input came from: both gradients reach it."""
    V, C = 7, 4
    rng = np.random.default_rng(seed)
    w = ag.Tensor(rng.normal(size=(V, C)), requires_grad=True)
    ids, t = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))

    def fn(w):
        return F.linear_cross_entropy(F.embedding(ids, w).tanh(), w, t, chunk_size=chunk)
    assert ag.gradcheck(fn, [w])
    assert_close(loss_and_grads(lambda: fn(w), [w]),
                 loss_and_grads(lambda: composed(F.embedding(ids, w).tanh(), w, t), [w]), 1e-12)


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-12), (np.float32, 2e-6)])
@pytest.mark.parametrize("chunk", [None, 1, 5, 64])
@pytest.mark.parametrize("cap", [None, 4.0])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_fused_equals_composed(dtype, rtol, chunk, cap, reduction):
    h, w, b, t = draw_case(1, 23, 6, 17, dtype)
    ins = [h, w, b]
    fused = loss_and_grads(lambda: F.linear_cross_entropy(h, w, t, b, reduction=reduction, softcap=cap,
                                                          chunk_size=chunk), ins)
    ref = loss_and_grads(lambda: composed(h, w, t, b, cap, reduction=reduction), ins)
    assert fused[0].dtype == dtype and fused[2].dtype == dtype
    assert_close(fused, ref, rtol)
    ref2 = loss_and_grads(lambda: F.linear_cross_entropy(h, w, t, b, reduction=reduction, softcap=cap, fused=False),
                          ins)
    assert_close(fused, ref2, rtol)


def test_leading_axes_and_only_some_inputs_need_grad():
    h, w, b, t = draw_case(2, 12, 5, 9, bias=True)
    h3 = ag.Tensor(h.numpy().reshape(3, 4, 5), requires_grad=True)
    w.requires_grad = False
    loss = F.linear_cross_entropy(h3, w, t.reshape(3, 4), b, chunk_size=5)
    loss.backward()
    ref_h = ag.Tensor(h.numpy().reshape(3, 4, 5), requires_grad=True)
    ref_b = ag.Tensor(b.numpy(), requires_grad=True)
    ref = composed(ref_h, w, t.reshape(3, 4), ref_b)
    ref.backward()
    assert w.grad is None and h3.grad.shape == (3, 4, 5)
    assert_close([loss.numpy(), h3.grad.numpy(), b.grad.numpy()], [ref.numpy(), ref_h.grad.numpy(),
                                                                   ref_b.grad.numpy()], 1e-12)


def test_every_target_ignored_gives_zero_loss_and_gradients():
    h, w, b, t = draw_case(3, 6, 4, 5, ignored=1.0)
    out = loss_and_grads(lambda: F.linear_cross_entropy(h, w, t, b, chunk_size=4), [h, w, b])
    assert out[0] == 0 and not any(np.any(g) for g in out[1:])


def test_no_grad_gives_the_loss_without_a_graph():
    h, w, b, t = draw_case(4, 10, 4, 6)
    with ag.no_grad():
        loss = F.linear_cross_entropy(h, w, t, b, chunk_size=3)
    assert loss.creator is None
    assert_close([loss.numpy()], [composed(h, w, t, b).numpy()], 1e-12)


def test_second_order_through_the_reference():
    h, w, b, t = draw_case(5, 5, 3, 4)
    assert ag.gradgradcheck(lambda h, w: F.linear_cross_entropy(h, w, t, softcap=3.0, chunk_size=2), [h, w])


@pytest.mark.parametrize("amp", ["float16", pytest.param("bfloat16", marks=needs_bf16)])
@pytest.mark.parametrize("cap", [None, 5.0])
def test_autocast_matches_composed(amp, cap):
    """Products in the autocast dtype (float32 accumulation); float32 loss and master-weight gradients. Large V
    and a mean over many rows: float16's dz would be subnormal without the op's internal scale."""
    h, w, b, t = draw_case(6, 70, 16, 300, np.float32)
    with ag.amp.autocast(amp):
        fused = loss_and_grads(lambda: F.linear_cross_entropy(h, w, t, b, softcap=cap, chunk_size=32), [h, w, b])
    exact = loss_and_grads(lambda: composed(h, w, t, b, cap), [h, w, b])    # float32, no rounding
    assert fused[0].dtype == np.float32 and all(g.dtype == np.float32 for g in fused[1:])
    tol = 2e-3 if amp == "float16" else 1.5e-2
    assert_close(fused, exact, tol, what=amp)


def test_bad_arguments_raise_clear_errors():
    h, w, b, t = draw_case(7, 4, 3, 5)
    with pytest.raises(ValueError, match="linear_cross_entropy: reduction must be 'mean' or 'sum'"):
        F.linear_cross_entropy(h, w, t, reduction="none")
    with pytest.raises(ValueError, match=r"linear_cross_entropy: x of shape \(4, 3\) does not fit weight"):
        F.linear_cross_entropy(h, ag.Tensor(np.ones((5, 2))), t)
    with pytest.raises(ValueError, match=r"linear_cross_entropy: targets of shape \(3,\) do not match"):
        F.linear_cross_entropy(h, w, t[:3])
    with pytest.raises(ValueError, match=r"linear_cross_entropy: target 5 is out of range \[0, 5\)"):
        F.linear_cross_entropy(h, w, np.array([0, 1, 5, 2]))
    with pytest.raises(ValueError, match="softcap must be a positive number"):
        F.linear_cross_entropy(h, w, t, softcap=0.0)
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        F.linear_cross_entropy(h, w, t, chunk_size=0)
    with pytest.raises(ValueError, match=r"bias must have shape \(5,\)"):
        F.linear_cross_entropy(h, w, t, ag.Tensor(np.ones(4)))
    with pytest.raises(TypeError, match="targets .* must be an integer tensor"):
        F.linear_cross_entropy(h, w, t.astype(np.float64))


def test_default_chunks_are_equal_multiples_of_64_rows_of_about_256_mib():
    rows = default_chunk_rows(8192, 50304)
    assert rows % 64 == 0 and rows * 50304 * 4 <= 260 * 2 ** 20 and -(-8192 // rows) == 7
    assert default_chunk_rows(10, 7) == 10 and default_chunk_rows(1, 1) == 1


# ---------------------------------------------------------------------------------------------------- GPT
def gpt_loss_and_grads(m, fn):
    m.zero_grad()
    loss = fn()
    loss.backward()
    return [loss.numpy()] + [p.grad.numpy() for p in m.parameters()]


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma3", "qwen3-moe"])
def test_gpt_loss_is_the_fused_head_and_equals_forward(family, monkeypatch):
    m = build(family)
    m.train()
    x, y = tokens(2, 7), tokens(2, 7, seed=1)
    y[0, :3] = -100
    calls = []
    real = F.linear_cross_entropy
    monkeypatch.setattr(F, "linear_cross_entropy", lambda *a, **k: calls.append(k) or real(*a, **k))
    fused = gpt_loss_and_grads(m, lambda: m.loss(x, y))
    assert calls and calls[0]["softcap"] == m.config.final_logit_softcap
    ref = gpt_loss_and_grads(m, lambda: m(x, y)[1])
    assert_close(fused, ref, 1e-10, what=family)
    if m.config.tie_weights:
        assert m.lm_head.weight is m.tok_emb.weight


def test_gpt_loss_with_a_lora_head_goes_through_forward(monkeypatch):
    from tinygrad_llm.finetune.lora import apply_lora
    m = build("llama")
    apply_lora(m, 2, 4.0, target=["lm_head"], seed=0)
    m.lm_head.lora_B.data += np.random.default_rng(0).normal(size=m.lm_head.lora_B.shape)   # changes the logits
    monkeypatch.setattr(F, "linear_cross_entropy", None)   # would fail if called
    x, y = tokens(1, 5), tokens(1, 5, seed=2)
    plain = F.cross_entropy(F.linear(m.forward_hidden(x), m.lm_head.weight), y)
    loss = m.loss(x, y)
    assert_close([loss.numpy()], [m(x, y)[1].numpy()], 0.0)
    assert abs(loss.item() - plain.item()) > 1e-3


# ---------------------------------------------------------------------------------------------------- GPU
@pytest.fixture
def cp():
    import cupy
    blocks = [cupy.full((n,), np.nan, np.float32) for n in (1 << 14, 1 << 20, 1 << 24, 1 << 26)]
    del blocks            # NaN-filled blocks back in the pool: unwritten outputs read NaN
    return cupy


def to_gpu(cp, xs):
    return [None if x is None else ag.Tensor(cp.asarray(x.numpy()), requires_grad=True) for x in xs]


GPU_CASES = [(300, 64, 1000, 128, None), (257, 96, 50304, 100, None), (130, 32, 1000, None, 3.0)]


@pytest.mark.gpu
@pytest.mark.parametrize("amp", [None, "float16", pytest.param("bfloat16", marks=needs_bf16)])
@pytest.mark.parametrize("N,C,V,chunk,cap", GPU_CASES)
def test_gpu_fused_equals_composed(cp, amp, N, C, V, chunk, cap):
    from autograd.cuda import set_tf32, tf32_enabled
    before = tf32_enabled()
    set_tf32(False)
    try:
        h, w, b, t = draw_case(10 + N, N, C, V, np.float32)
        exact = loss_and_grads(lambda: composed(h, w, t, b, cap), [h, w, b])   # float32 on the CPU
        hg, wg, bg = to_gpu(cp, [h, w, b])
        tg = cp.asarray(t)
        scale = 2.0 ** 12 if amp == "float16" else 1.0    # the composed float16 dlogits need a loss scale
        with ag.amp.autocast(amp):
            fused = loss_and_grads(lambda: F.linear_cross_entropy(hg, wg, tg, bg, softcap=cap, chunk_size=chunk),
                                   [hg, wg, bg])
            ref = loss_and_grads(lambda: composed(hg, wg, tg, bg, cap), [hg, wg, bg], scale)
    finally:
        set_tf32(before)
    tol = {None: 1e-5, "float16": 3e-3, "bfloat16": 2e-2}[amp]
    assert all(g.dtype == np.float32 for g in fused)
    assert_close(fused, exact, tol, what=f"fused {amp}")
    assert_close(ref, exact, 3 * tol, what=f"composed {amp}")     # it rounds the logits to the autocast dtype


def rows_ref(z, t, cap, scale):
    zc = z if cap is None else cap * np.tanh(z / cap)
    m = zc.max(1, keepdims=True)
    lse = np.log(np.exp(zc - m).sum(1)) + m[:, 0]
    valid = t != -100
    loss = (lse - zc[np.arange(len(t)), np.where(valid, t, 0)]) * valid
    p = np.exp(zc - lse[:, None])
    p[np.arange(len(t)), np.where(valid, t, 0)] -= 1
    if cap is not None:
        p *= 1 - (zc / cap) ** 2
    return loss, scale * p * valid[:, None]


@pytest.mark.gpu
@pytest.mark.parametrize("grad_dtype", ["float32", "float16", pytest.param("bfloat16", marks=needs_bf16), None])
@pytest.mark.parametrize("V,cap", [(1000, None), (50304, 2.0), (129, 30.0), (50257, None), (7, 2.0)])
def test_cross_entropy_rows_kernel(cp, grad_dtype, V, cap):
    from autograd.cuda import get_kernel
    rng = np.random.default_rng(V)
    N = 37
    z = rng.normal(size=(N, V)).astype(np.float32) * 4
    t = rng.integers(0, V, N)
    t[::4] = -100
    scale = 2.0 ** 14 if grad_dtype == "float16" else 1.0
    loss_ref, d_ref = rows_ref(z.astype(np.float64), t, cap, scale)
    gd = None if grad_dtype is None else (bfloat16 if grad_dtype == "bfloat16" else np.dtype(grad_dtype))
    Z = cp.asarray(z)
    loss, d = get_kernel("cross_entropy_rows")(Z, cp.asarray(t), -100, cap, scale, gd)
    assert_close([loss.get()], [loss_ref], 1e-6, what="loss rows")
    if gd is None:
        assert d is None
        return
    assert d.dtype == gd and (d is Z) == (gd == np.float32)
    tol = {np.dtype(np.float32): 1e-5, np.dtype(np.float16): 2e-3}.get(np.dtype(gd), 1e-2)
    assert_close([d.astype(np.float32).get()], [d_ref], tol, what=f"dz {grad_dtype}")


@pytest.mark.gpu
@needs_bf16
@pytest.mark.parametrize("C", [300, 1000, 50304, 5001])
def test_bfloat16_softmax_and_cross_entropy_kernels(cp, C):
    from autograd.cuda import get_kernel
    rng = np.random.default_rng(C)
    N = 19
    x = (rng.normal(size=(N, C)) * 3).astype(bfloat16)
    gy = rng.normal(size=(N, C)).astype(bfloat16)
    xf, gf = x.astype(np.float64), gy.astype(np.float64)
    y = np.exp(xf - xf.max(1, keepdims=True))
    y /= y.sum(1, keepdims=True)
    Y = get_kernel("softmax_forward")(cp.asarray(x))
    assert Y.dtype == bfloat16
    assert_close([Y.astype(np.float32).get()], [y], 1e-2, what="softmax bf16")
    GX = get_kernel("softmax_backward")(Y, cp.asarray(gy))
    yb = Y.astype(np.float32).get().astype(np.float64)
    assert_close([GX.astype(np.float32).get()], [yb * (gf - (gf * yb).sum(1, keepdims=True))], 2e-2,
                 what="softmax backward bf16")
    t = rng.integers(0, C, N)
    t[1] = -100
    loss_ref, d_ref = rows_ref(xf, t, None, 1.0)
    L, LSE, count = get_kernel("cross_entropy_forward")(cp.asarray(x), cp.asarray(t), -100)
    assert count == N - 1
    assert_close([float(L)], [loss_ref.sum()], 1e-5, what="xent bf16")
    D = get_kernel("cross_entropy_backward")(cp.asarray(x), cp.asarray(t), LSE, 1.0, -100)
    assert D.dtype == bfloat16
    assert_close([D.astype(np.float32).get()], [d_ref], 1e-2, what="xent backward bf16")


@pytest.mark.gpu
@pytest.mark.parametrize("amp", [None, "float16"])
def test_gpu_peak_memory_is_well_below_the_composed_path(cp, amp):
    """GPT-2 124M's head at N 8192: the composed path holds the (N, V) logits and their gradient."""
    from tinygrad_llm.bench import PeakMemory
    N, C, V = 8192, 768, 50304
    rng = np.random.default_rng(0)
    h = ag.Tensor(cp.asarray(rng.normal(size=(N, C)).astype(np.float32)), requires_grad=True)
    w = ag.Tensor(cp.asarray(rng.normal(size=(V, C)).astype(np.float32) * 0.02), requires_grad=True)
    t = cp.asarray(rng.integers(0, V, N))
    extra = {}
    for name, fn in (("fused", lambda: F.linear_cross_entropy(h, w, t)), ("composed", lambda: composed(h, w, t))):
        h.grad = w.grad = None
        cp.get_default_memory_pool().free_all_blocks()
        peak = PeakMemory(True)
        base = peak.max_used
        with ag.amp.autocast(amp):
            loss = fn()
        loss.backward()
        del loss
        extra[name] = peak.close() - base
        assert np.isfinite(float(w.grad.data.sum()))
    logits = N * V * (2 if amp else 4)
    assert extra["composed"] > 2 * logits * 0.9, extra      # the logits and their gradient
    # fused: one chunk's float32 logits (+ their 16-bit gradient), the 16-bit weight, dW with one chunk's share
    chunk = default_chunk_rows(N, V) * V * (6 if amp else 4) + (2 * V * C if amp else 0) + 3 * 4 * V * C
    assert extra["fused"] < chunk + 4 * 4 * N * C + 2 ** 24, extra
    assert extra["fused"] < 0.6 * extra["composed"], extra


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["gpt2", "gemma3"])
@pytest.mark.parametrize("amp", [None, "float16"])
def test_gpu_gpt_loss_equals_forward(cp, family, amp):
    from autograd.cuda import set_tf32, tf32_enabled
    before = tf32_enabled()
    set_tf32(False)
    try:
        m = build(family, dtype=np.float32)
        m.to("cuda")
        x, y = tokens(2, 9), tokens(2, 9, seed=3)
        y[1, 4:] = -100
        with ag.amp.autocast(amp):
            fused = gpt_loss_and_grads(m, lambda: m.loss(x, y))
            ref = gpt_loss_and_grads(m, lambda: m(x, y)[1] * 1024.0)
    finally:
        set_tf32(before)
    ref = [ref[0] / 1024.0] + [g / 1024.0 for g in ref[1:]]
    assert_close(fused, ref, 1e-5 if amp is None else 1e-2, what=f"{family} {amp}")
