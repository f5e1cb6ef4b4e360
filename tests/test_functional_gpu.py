"""The fused functional ops on CuPy (float32 and float16) against the NumPy float64 result: forward and backward.

Whatever runs there (a registered CUDA kernel or the xp-generic code) must give the CPU's numbers. Skipped without
CuPy and a GPU (marker ``gpu``)."""
from __future__ import annotations

import math

import numpy as np
import pytest

import autograd as ag
from autograd import functional as F

pytestmark = pytest.mark.gpu

RNG = np.random.default_rng(0)
IDS = RNG.integers(0, 11, (2, 5))
TARGETS = np.where(RNG.random((2, 5)) < 0.2, -100, RNG.integers(0, 11, (2, 5)))
MASK = RNG.random((5, 7)) < 0.3
ATTN_MASK = RNG.random((1, 3, 5, 5)) < 0.7       # True = may attend; the first key always allowed
ATTN_MASK[..., 0] = True


@pytest.fixture(autouse=True)
def _no_tf32():
    """Compare full float32 products (TF32 would need looser tolerances)."""
    try:
        from autograd import cuda as agcuda
        before = agcuda.tf32_enabled()
        agcuda.set_tf32(False)
    except Exception:  # autograd.cuda not there: CuPy's default products are float32
        yield
        return
    yield
    agcuda.set_tf32(before)


def _attn(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


CASES = {
    "gelu": (F.gelu, [(2, 5, 7)]),
    "gelu_exact": (lambda x: F.gelu(x, approximate="none"), [(2, 5, 7)]),
    "bias_gelu": (F.bias_gelu, [(2, 5, 7), (7,)]),
    "softmax": (F.softmax, [(2, 5, 7)]),
    "softmax_axis1": (lambda x: F.softmax(x, axis=1), [(2, 5, 7)]),
    "log_softmax": (F.log_softmax, [(2, 5, 7)]),
    "layer_norm": (F.layer_norm, [(2, 5, 7), (7,), (7,)]),
    "layer_norm_plain": (lambda x: F.layer_norm(x), [(2, 5, 7)]),
    "rms_norm": (F.rms_norm, [(2, 5, 7), (7,)]),
    "cross_entropy": (lambda z: F.cross_entropy(z, TARGETS), [(2, 5, 11)]),
    "cross_entropy_sum": (lambda z: F.cross_entropy(z, TARGETS, reduction="sum"), [(2, 5, 11)]),
    "embedding": (lambda w: F.embedding(IDS, w), [(11, 6)]),
    "linear": (F.linear, [(2, 5, 7), (3, 7), (3,)]),
    "masked_fill": (lambda x: F.masked_fill(x, MASK, -2.0), [(2, 5, 7)]),
    "attention": (_attn, [(2, 3, 5, 8)] * 3),
    "attention_kv_cache": (_attn, [(2, 3, 2, 8), (2, 3, 5, 8), (2, 3, 5, 8)]),
    "attention_noncausal": (lambda q, k, v: F.scaled_dot_product_attention(q, k, v),
                            [(1, 2, 3, 4), (1, 2, 6, 4), (1, 2, 6, 4)]),
    "attention_bool_mask": (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=ATTN_MASK),
                            [(2, 3, 5, 8)] * 3),
    "attention_additive_mask": (lambda q, k, v: F.scaled_dot_product_attention(
        q, k, v, attn_mask=np.where(ATTN_MASK, 0.5, -np.inf), is_causal=True), [(2, 3, 5, 8)] * 3),
    "split_merge_heads": (lambda x: (F.merge_heads(F.split_heads(x, 2, 1)[0]) * 2).sum(axis=-1), [(2, 5, 16)]),
    "layer_norm_composed": (lambda x, w, b: F.layer_norm(x, w, b, fused=False), [(2, 5, 7), (7,), (7,)]),
}


def _run(fn, arrays, device, dtype, gseed=1):
    xs = [ag.Tensor(a.astype(dtype), requires_grad=True, device=device) for a in arrays]
    y = fn(*xs)
    g = np.random.default_rng(gseed).standard_normal(y.shape)
    y.backward(ag.Tensor(g.astype(y.dtype), device=device))
    return y, xs


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("dtype,tol", [(np.float32, 2e-4), (np.float16, 3e-2)])
def test_op_on_gpu_matches_cpu_float64(name, dtype, tol):
    fn, shapes = CASES[name]
    if dtype == np.float16 and name in ("gelu_exact",):
        pytest.skip("erf on float16 is not needed by the models")
    arrays = [np.random.default_rng(i + 10).standard_normal(s) for i, s in enumerate(shapes)]
    y_ref, xs_ref = _run(fn, arrays, "cpu", np.float64)
    y, xs = _run(fn, arrays, "cuda", dtype)
    # a float16 cross-entropy gives a float32 loss (a scaled float16 loss would overflow under loss scaling)
    want = np.float32 if name.startswith("cross_entropy") and dtype == np.float16 else dtype
    assert y.device.startswith("cuda") and y.dtype == want
    scale = max(1.0, float(np.abs(y_ref.numpy()).max()))
    np.testing.assert_allclose(y.numpy().astype(np.float64), y_ref.numpy(), atol=tol * scale, rtol=tol,
                               err_msg=f"{name} forward")
    for i, (a, b) in enumerate(zip(xs, xs_ref)):
        ref = b.grad.numpy()
        scale = max(1.0, float(np.abs(ref).max()))
        assert a.grad.device.startswith("cuda")
        np.testing.assert_allclose(a.grad.numpy().astype(np.float64), ref, atol=tol * scale, rtol=tol,
                                   err_msg=f"{name} grad of input {i}")


def test_cross_entropy_large_vocab_float32_on_gpu():
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((64, 5003)) * 4
    t = rng.integers(0, 5003, 64)
    t[::7] = -100
    y_ref, (z_ref,) = _run(lambda z: F.cross_entropy(z, t), [logits], "cpu", np.float64)
    y, (z,) = _run(lambda z: F.cross_entropy(z, t), [logits], "cuda", np.float32)
    assert abs(y.item() - y_ref.item()) < 1e-4 * max(1, abs(y_ref.item()))
    np.testing.assert_allclose(z.grad.numpy(), z_ref.grad.numpy(), atol=1e-6)


def test_attention_longer_sequence_on_gpu():
    """Lengths past one kernel tile (64/128) and a head size of 64, as GPT-2 uses."""
    rng = np.random.default_rng(4)
    arrays = [rng.standard_normal((1, 2, 200, 64)) for _ in range(3)]
    y_ref, xs_ref = _run(_attn, arrays, "cpu", np.float64)
    y, xs = _run(_attn, arrays, "cuda", np.float32)
    np.testing.assert_allclose(y.numpy(), y_ref.numpy(), atol=2e-4)
    for a, b in zip(xs, xs_ref):
        np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), atol=5e-4 * max(1, np.abs(b.grad.numpy()).max()))


def test_dropout_on_gpu_reproducible_with_seed():
    x = ag.ones((300, 200), device="cuda")
    a = F.dropout(x, 0.25, rng=np.random.default_rng(5)).numpy()
    b = F.dropout(x, 0.25, rng=np.random.default_rng(5)).numpy()
    np.testing.assert_array_equal(a, b)
    kept = a != 0
    assert abs(kept.mean() - 0.75) < 0.01
    np.testing.assert_allclose(a[kept], 1 / 0.75, rtol=1e-6)
    y = F.dropout(ag.ones((300, 200), device="cuda", requires_grad=True), 0.25, rng=np.random.default_rng(5))
    assert math.isfinite(y.sum().item())
