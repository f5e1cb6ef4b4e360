"""The float16 / bfloat16 flash-attention kernels on the GPU against float64 NumPy: strided (B, T, H, D) inputs,
grouped-query heads read in place, dropout drawn inside the kernels, and the Attention node on top of them.

Every test is marked ``gpu`` and skipped without CuPy and a GPU. Fresh random inputs (seed in the message), the
memory pool poisoned with NaN so that unwritten outputs fail.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import autograd as ag
import autograd.functional as F
from autograd.dtypes import bfloat16
from test_cuda_kernels import attn_ref as reference
from test_cuda_kernels import cp, rng  # noqa: F401  (fixtures: the NaN-poisoned pool, a seeded generator)

pytestmark = pytest.mark.gpu

DTYPES = [np.float16] + ([bfloat16] if bfloat16 is not None else [])
TOL = {np.dtype(np.float16): 1e-2}
if bfloat16 is not None:
    TOL[np.dtype(bfloat16)] = 3e-2




@pytest.fixture(params=["wgmma", "mma"])
def family(request, monkeypatch, cp):
    """Runs a test on the Hopper warpgroup kernels and on the mma.sync kernels (the first only on sm_90)."""
    from autograd.cuda import flash_attention as fa
    monkeypatch.setenv("TINYGRAD_LLM_WGMMA", "1" if request.param == "wgmma" else "0")
    if request.param == "wgmma" and not fa._hopper():
        pytest.skip("the warpgroup kernels need a compute capability 9.0 GPU")
    return request.param


def draw(r, shape, dtype):
    """float64 values exactly representable in dtype."""
    return r.standard_normal(shape).astype(dtype).astype(np.float64)


def rel(out, ref):
    out = np.asarray(out.get() if hasattr(out, "get") else out).astype(np.float64)
    assert out.shape == ref.shape, (out.shape, ref.shape)
    assert np.isfinite(out).all(), "non-finite output (unwritten element?)"
    return float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-30))


def _run(cp, q, k, v, do, causal, scale, dtype, p=0.0, state=None):
    from autograd.cuda import attention as at
    Q, K, V, dO = (cp.asarray(x.astype(dtype)) for x in (q, k, v, do))
    O, L = at.attention_forward(Q, K, V, causal, scale, p, state)
    grads = at.attention_backward(Q, K, V, O, L, dO, causal, scale, p, state)
    return O, L, grads


CASES = [  # B, H, Hk, Tq, Tk, D, causal
    (2, 3, 3, 67, 67, 64, True),
    (1, 4, 4, 130, 130, 32, False),
    (2, 2, 2, 5, 67, 64, True),        # KV cache: Tq < Tk
    (1, 6, 2, 200, 200, 64, True),     # grouped-query: 3 query heads per k/v head
    (1, 4, 1, 70, 70, 32, False),      # multi-query
    (1, 2, 2, 131, 131, 128, True),    # D 128: K/V fragments from shared memory, 32-query tiles
    (1, 4, 2, 45, 99, 96, True),       # D 96, grouped, Tq < Tk
    (2, 2, 2, 64, 64, 128, False),
    (1, 2, 2, 300, 1000, 64, False),   # Tq < Tk, neither a multiple of a tile
    (2, 4, 4, 130, 130, 64, False),
    (1, 3, 3, 200, 200, 128, False),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", CASES)
def test_flash_against_float64(cp, rng, family, dtype, case):
    r, seed = rng
    B, H, Hk, Tq, Tk, D, causal = case
    q, k, v, do = draw(r, (B, H, Tq, D), dtype), draw(r, (B, Hk, Tk, D), dtype), \
        draw(r, (B, Hk, Tk, D), dtype), draw(r, (B, H, Tq, D), dtype)
    scale = 1 / math.sqrt(D)
    ref = reference(q, k, v, do, causal, scale)
    O, L, (dQ, dK, dV) = _run(cp, q, k, v, do, causal, scale, dtype)
    tol = TOL[np.dtype(dtype)]
    for name, got, want in zip(("o", "lse", "dq", "dk", "dv"), (O, L, dQ, dK, dV), ref):
        e = rel(got, want)
        assert e < (tol if name != "lse" else 1e-3), f"{name} {case} {np.dtype(dtype).name}: {e:.3g} (seed {seed})"
    assert dK.shape == (B, Hk, Tk, D) and dQ.dtype == np.dtype(dtype)


def test_hopper_takes_the_warpgroup_kernels(cp):
    from autograd.cuda import flash_attention as fa
    if not fa._hopper():
        pytest.skip("the warpgroup kernels need a compute capability 9.0 GPU")
    assert fa.kernel_family(64) == "wgmma" and fa.kernel_family(64, backward=True) == "wgmma"
    assert fa.kernel_family(128) == "wgmma" and fa.kernel_family(128, backward=True) == "wgmma"
    assert fa.kernel_family(64, backward=True, dropout=True) == "wgmma"
    assert fa.kernel_family(32) == "mma" and fa.kernel_family(96, backward=True) == "mma"
    assert fa.kernel_family(128, backward=True, dropout=True) == "mma"


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_flash_reads_head_views_in_place(cp, rng, family, dtype):
    """q, k, v as (B, H, T, D) views of one packed (B, T, 3, H, D) projection: the same results as copies."""
    from autograd.cuda import attention as at
    r, seed = rng
    B, T, H, D = 2, 77, 4, 64
    qkv = cp.asarray(draw(r, (B, T, 3, H, D), dtype).astype(dtype))
    q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
    assert not q.flags.c_contiguous
    do = cp.asarray(draw(r, (B, H, T, D), dtype).astype(dtype))
    o1, l1 = at.attention_forward(q, k, v, True, 0.125)
    do_view = do.transpose(0, 2, 1, 3).copy().transpose(0, 2, 1, 3)      # (B, H, T, D) over (B, T, H, D) memory
    g1 = at.attention_backward(q, k, v, o1, l1, do_view, True, 0.125)
    qc, kc, vc = (cp.ascontiguousarray(x) for x in (q, k, v))
    o2, l2 = at.attention_forward(qc, kc, vc, True, 0.125)
    g2 = at.attention_backward(qc, kc, vc, o2, l2, do, True, 0.125)
    assert cp.array_equal(o1, o2) and cp.array_equal(l1, l2), f"seed {seed}"
    assert rel(g1[0], g2[0].get().astype(np.float64)) < 1e-3, f"dq, seed {seed}"   # float32 atomics: any order
    for a, b in zip(g1[1:], g2[1:]):
        assert cp.array_equal(a, b), f"seed {seed}"
    # the output is stored (B, T, H, D): merging the heads needs no copy
    assert o1.transpose(0, 2, 1, 3).flags.c_contiguous


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", [(2, 3, 3, 67, 67, 64, True), (1, 4, 2, 33, 100, 32, True),
                                  (1, 2, 2, 64, 64, 64, False), (1, 2, 2, 61, 61, 64, True),
                                  (2, 2, 2, 128, 128, 64, True), (1, 2, 1, 40, 72, 128, True),
                                  (1, 2, 2, 130, 130, 128, False)])
def test_flash_dropout_matches_the_mask_of_its_state(cp, rng, family, dtype, case):
    """Dropout inside the kernels: the mask is what PhiloxGenerator.keep_mask would draw from the same state."""
    from autograd.cuda.philox import PhiloxGenerator, keep_mask_at
    r, seed = rng
    B, H, Hk, Tq, Tk, D, causal = case
    p = 0.2
    q, k, v, do = draw(r, (B, H, Tq, D), dtype), draw(r, (B, Hk, Tk, D), dtype), \
        draw(r, (B, Hk, Tk, D), dtype), draw(r, (B, H, Tq, D), dtype)
    gen = PhiloxGenerator(int(r.integers(0, 2 ** 62)))
    gen.reserve(int(r.integers(0, 1000)))            # start from an offset that is not a multiple of anything
    state = gen.reserve(B * H * Tq * Tk)
    keep = keep_mask_at(state, (B, H, Tq, Tk), p).get()
    assert 0.7 < keep.mean() < 0.9
    scale = 1 / math.sqrt(D)
    ref = reference(q, k, v, do, causal, scale, keep.astype(np.float64), p)
    O, L, (dQ, dK, dV) = _run(cp, q, k, v, do, causal, scale, dtype, p, state)
    tol = TOL[np.dtype(dtype)]
    for name, got, want in zip(("o", "lse", "dq", "dk", "dv"), (O, L, dQ, dK, dV), ref):
        e = rel(got, want)
        assert e < (tol if name != "lse" else 1e-3), f"{name} {case} p={p}: {e:.3g} (seed {seed})"


def test_sdpa_dropout_in_kernel_equals_composed_path(cp, rng, family):
    """F.scaled_dot_product_attention with dropout: the fused node (mask drawn in the kernels) and the composed
    path (mask drawn by F.dropout) give the same output and gradients from equally seeded generators."""
    r, seed = rng
    B, H, T, D = 2, 4, 96, 64
    arrays = [cp.asarray(draw(r, (B, H, T, D), np.float16).astype(np.float16)) for _ in range(4)]
    outs = []
    for fused in (True, False):
        q, k, v = (ag.Tensor(a.copy(), requires_grad=True) for a in arrays[:3])
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=0.25, is_causal=True,
                                           rng=np.random.default_rng(seed), fused=fused)
        y.backward(ag.Tensor(arrays[3]))
        outs.append([y.data.get().astype(np.float64)] + [t.grad.data.get().astype(np.float64) for t in (q, k, v)])
    for name, a, b in zip(("o", "dq", "dk", "dv"), *outs):
        e = float(np.linalg.norm(a - b) / np.linalg.norm(b))
        assert e < 1e-2, f"{name}: fused vs composed {e:.3g} (seed {seed})"


def test_sdpa_dropout_draws_a_new_mask_each_call(cp, rng):
    r, seed = rng
    q = ag.Tensor(cp.asarray(draw(r, (1, 2, 64, 64), np.float16).astype(np.float16)))
    gen = np.random.default_rng(seed)
    y1 = F.scaled_dot_product_attention(q, q, q, dropout_p=0.3, is_causal=True, rng=gen)
    y2 = F.scaled_dot_product_attention(q, q, q, dropout_p=0.3, is_causal=True, rng=gen)
    assert not cp.array_equal(y1.data, y2.data)
    y3 = F.scaled_dot_product_attention(q, q, q, dropout_p=0.3, is_causal=True, rng=np.random.default_rng(seed))
    assert cp.array_equal(y1.data, y3.data)


def test_sdpa_grouped_query_heads_without_repeating(cp, rng):
    """enable_gqa: the fused node takes k, v with fewer heads; gradients equal the composed (repeated) path."""
    r, seed = rng
    B, H, Hk, T, D = 1, 6, 2, 50, 32
    arrays = [draw(r, s, np.float16) for s in ((B, H, T, D), (B, Hk, T, D), (B, Hk, T, D), (B, H, T, D))]
    outs = []
    for fused in (True, False):
        q, k, v = (ag.Tensor(cp.asarray(a.astype(np.float16)), requires_grad=True) for a in arrays[:3])
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True, fused=fused)
        y.backward(ag.Tensor(cp.asarray(arrays[3].astype(np.float16))))
        outs.append([y.data.get().astype(np.float64)] + [t.grad.data.get().astype(np.float64) for t in (q, k, v)])
        assert k.grad.shape == (B, Hk, T, D)
    for name, a, b in zip(("o", "dq", "dk", "dv"), *outs):
        e = float(np.linalg.norm(a - b) / np.linalg.norm(b))
        assert e < 1e-2, f"{name}: {e:.3g} (seed {seed})"


def test_dropout_attention_in_a_cuda_graph_draws_new_masks(cp, rng):
    """A captured attention with dropout redraws its mask at every replay (the Philox offset advances inside)."""
    from autograd.cuda.graph import CUDAGraph
    r, seed = rng
    x = cp.asarray(draw(r, (1, 2, 64, 64), np.float16).astype(np.float16))
    gen = np.random.default_rng(seed)
    q = ag.Tensor(x)
    out = cp.empty_like(x)

    def step():
        out[...] = F.scaled_dot_product_attention(q, q, q, dropout_p=0.3, is_causal=True, rng=gen).data

    step()                                     # compiles the kernels; the generator exists before capture
    g = CUDAGraph()
    with g.capture():
        step()
    g.replay()
    a = out.copy()
    g.replay()
    assert not cp.array_equal(a, out), f"seed {seed}"
