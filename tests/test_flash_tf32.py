"""The TF32 flash-attention kernels (autograd/cuda/flash_attention_tf32.py) and their dispatch for float32.

GPU tests compare (o, lse) and (dq, dk, dv) with the float64 NumPy reference by relative norm (TF32 rounds the
operands to 10 mantissa bits, so ~3e-4 .. 1e-3 is expected), on fresh random inputs with the memory pool poisoned
with NaN (the `cp` fixture), over head sizes 32/64/128, lengths that are not multiples of the tiles, causal or not,
and fewer queries than keys (KV cache). CPU tests check which version the dispatch picks.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import autograd.cuda as gk
from autograd.cuda import attention as at, flash_attention_tf32 as ft
from test_cuda_kernels import attn_ref, cp, dev, draw, rng  # noqa: F401  (cp, rng: fixtures)

TOL = 2e-3

# (B, H, Tq, Tk, D, causal)
CASES = ([(1, 3, t, t, d, c) for d in (32, 64, 128) for t in (1, 17, 64, 67, 200) for c in (True, False)]
         + [(1, 2, 1024, 1024, 64, True), (1, 2, 1024, 1024, 64, False), (1, 1, 1024, 1024, 128, True),
            (1, 1, 1024, 1024, 32, True)]
         + [(2, 2, 5, 67, 64, True), (1, 2, 1, 200, 32, True), (1, 2, 17, 200, 128, True),
            (1, 2, 64, 1024, 64, True), (2, 1, 33, 70, 64, False), (1, 2, 67, 130, 128, False)])


@pytest.fixture
def tf32_on():
    old = gk.tf32_enabled()
    gk.set_tf32(True)
    yield
    gk.set_tf32(old)


def _inputs(r, case):
    B, H, Tq, Tk, D, _ = case
    f32 = np.float32
    return (draw(r, (B, H, Tq, D), f32), draw(r, (B, H, Tk, D), f32), draw(r, (B, H, Tk, D), f32),
            draw(r, (B, H, Tq, D), f32))


def _close(got, ref, seed, what, floor=0.0):
    """||got - ref|| / max(||ref||, floor) < TOL."""
    got = np.asarray(got.get(), np.float64)
    assert got.shape == ref.shape and np.isfinite(got).all(), f"{what}: shape {got.shape} or non-finite values"
    err = np.linalg.norm(got - ref) / max(np.linalg.norm(ref), floor)
    assert err < TOL, f"{what}: rel err {err:.3g} > {TOL:g} (seed {seed})"


def _check_all(cp, rng, case, fwd, bwd):
    r, seed = rng
    causal, D, Tk = case[5], case[4], case[3]
    scale = 1 / math.sqrt(D)
    q, k, v, do = _inputs(r, case)
    o, lse, dq, dk, dv = attn_ref(q, k, v, do, causal, scale)
    Q, K, V, dO = (dev(cp, a, np.float32) for a in (q, k, v, do))
    O, LSE = fwd(Q, K, V, causal, scale)
    assert O.dtype == np.float32 and LSE.dtype == np.float32
    _close(O, o, seed, f"o {case}")
    _close(LSE, lse, seed, f"lse {case}", math.sqrt(lse.size))   # log space: absolute where |lse| < 1
    grads = bwd(Q, K, V, O, LSE, dO, causal, scale)
    # one key: the softmax is constant, dq = dk = 0 exactly, and the kernel's dq, dk are the TF32 rounding of
    # dP - rowsum(dO * O); that is measured against the size of dv
    floor = np.linalg.norm(dv) if Tk == 1 else 0.0
    for name, got, ref in zip(("dq", "dk", "dv"), grads, (dq, dk, dv)):
        assert got.dtype == np.float32
        _close(got, ref, seed, f"{name} {case}", floor)


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:5])) + ("-causal" if c[5] else ""))
def test_flash_tf32_matches_float64(cp, rng, tf32_on, case):
    _check_all(cp, rng, case, ft.flash_forward, ft.flash_backward)


@pytest.mark.gpu
def test_flash_tf32_strided_and_unaligned_inputs(cp, rng, tf32_on):
    """A swapped-axes view and an array starting 4 bytes into its buffer take a contiguous, aligned copy."""
    r, seed = rng
    case = (1, 2, 67, 67, 64, True)
    q, k, v, do = _inputs(r, case)
    o, lse, dq, dk, dv = attn_ref(q, k, v, do, True, 0.125)
    Q = cp.ascontiguousarray(dev(cp, q, np.float32).swapaxes(-1, -2)).swapaxes(-1, -2)   # a view, not contiguous
    buf = cp.empty(k.size + 1, np.float32)
    K = buf[1:].reshape(k.shape)   # contiguous, 4-byte offset
    K[...] = dev(cp, k, np.float32)
    V, dO = dev(cp, v, np.float32), dev(cp, do, np.float32)
    O, LSE = ft.flash_forward(Q, K, V, True, 0.125)
    _close(O, o, seed, "o (views)")
    for name, got, ref in zip(("dq", "dk", "dv"), ft.flash_backward(Q, K, V, O, LSE, dO, True, 0.125), (dq, dk, dv)):
        _close(got, ref, seed, f"{name} (views)")


@pytest.mark.gpu
@pytest.mark.parametrize("tf32", [True, False])
def test_dispatch_float32_on_gpu(cp, rng, monkeypatch, tf32):
    """get_kernel's attention serves the TF32 kernel with TF32 on, the GEMM version with it off; both correct."""
    calls = []
    for name in ("flash_forward", "flash_backward"):
        orig = getattr(ft, name)
        monkeypatch.setattr(ft, name, lambda *a, _f=orig, _n=name: (calls.append(_n), _f(*a))[1])
    old = gk.tf32_enabled()
    gk.set_tf32(tf32)
    try:
        _check_all(cp, rng, (2, 2, 67, 67, 64, True), gk.get_kernel("attention_forward"),
                   gk.get_kernel("attention_backward"))
    finally:
        gk.set_tf32(old)
    assert calls == (["flash_forward", "flash_backward"] if tf32 else [])


# ------------------------------------------------------------------------------------------------ CPU: dispatch
def _spy(monkeypatch):
    calls = []
    monkeypatch.setattr(ft, "flash_forward", lambda *a: calls.append("tf32 fwd") or ("tf32",))
    monkeypatch.setattr(ft, "flash_backward", lambda *a: calls.append("tf32 bwd") or ("tf32",))
    monkeypatch.setattr(at, "attention_forward_matmul", lambda *a: calls.append("gemm fwd") or ("gemm",))
    monkeypatch.setattr(at, "attention_backward_matmul", lambda *a: calls.append("gemm bwd") or ("gemm",))
    return calls


@pytest.mark.parametrize("tf32", [True, False])
def test_dispatch_picks_tf32_kernel_only_with_tf32_on(monkeypatch, tf32):
    calls = _spy(monkeypatch)
    monkeypatch.delenv("TINYGRAD_LLM_FLASH", raising=False)
    q = np.ones((2, 3, 5, 64), np.float32)
    old = gk.tf32_enabled()
    gk.set_tf32(tf32)
    try:
        at.attention_forward(q, q, q, True, 0.125)
        at.attention_backward(q, q, q, q, q[..., 0], q, True, 0.125)
    finally:
        gk.set_tf32(old)
    assert calls == (["tf32 fwd", "tf32 bwd"] if tf32 else ["gemm fwd", "gemm bwd"])


@pytest.mark.parametrize("what", ["float64", "float16", "D=16", "D=80", "Tq=0", "B=0", "k/v shapes", "flash off"])
def test_supports_rejects(monkeypatch, tf32_on, what):
    shape = {"D=16": (2, 5, 16), "D=80": (2, 5, 80), "Tq=0": (2, 0, 64), "B=0": (0, 5, 64)}.get(what, (2, 5, 64))
    dtype = {"float64": np.float64, "float16": np.float16}.get(what, np.float32)
    q = np.ones(shape, dtype)
    k = np.ones(((0 if what == "B=0" else 2), 5, 64), dtype) if what in ("Tq=0", "B=0") else q
    v = np.ones((2, 6, shape[-1]), dtype) if what == "k/v shapes" else k
    assert ft.supports(np.ones((2, 5, 64), np.float32), np.ones((2, 7, 64), np.float32),
                       np.ones((2, 7, 64), np.float32))
    if what == "flash off":
        monkeypatch.setenv("TINYGRAD_LLM_FLASH", "0")
    assert not ft.supports(q, k, v)


def test_kernel_configurations_cover_supported_head_sizes():
    """Every head size supports() admits has a forward and a backward instantiation in the compiled module."""
    for d in (32, 64, 128):
        bq, st = ft._BWD_CFG[d]
        assert f"flash_tf32_fwd<{d},{ft._FWD_BN[d]}>" in ft._mod.names
        assert f"flash_tf32_bwd<{d},{bq},{st}>" in ft._mod.names
        assert ft._fwd_smem(d) <= 227 * 1024 and 2 * ft._bwd_smem(d) <= 227 * 1024   # two blocks fit per SM
