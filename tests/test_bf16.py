"""bfloat16 end to end: promotion (PyTorch's rule, and torch.result_type itself), ops forward and backward against
the float32 computation, float32 accumulation of sums, autocast, bf16 training with float32 master weights and
exact resume, Hugging Face BF16 files; on a GPU the cuBLAS bf16 GEMMs and the bf16 train step, eager and graphed."""
from __future__ import annotations

import argparse

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("ml_dtypes")

import autograd as ag  # noqa: E402
from autograd import dtypes  # noqa: E402
from autograd import functional as F  # noqa: E402

from strategies import arrays, broadcastable_pair, shapes  # noqa: E402

BF = ag.bfloat16
gpu = pytest.mark.gpu
DT = {"bf": BF, "f2": np.dtype(np.float16), "f4": np.dtype(np.float32), "f8": np.dtype(np.float64),
      "i8": np.dtype(np.int64), "i4": np.dtype(np.int32), "b1": np.dtype(bool)}

# (operand, operand, result): an operand is (group, dtype name), group 0 a (2,) tensor, 1 a 0-d tensor, 2 a scalar
PROMOTIONS = [
    ((0, "bf"), (2, "f4"), "bf"),      # bf16 (n,) * 2.5
    ((0, "bf"), (2, "i8"), "bf"),
    ((0, "bf"), (0, "f2"), "f4"),      # neither holds the other
    ((0, "bf"), (0, "f4"), "f4"),
    ((0, "bf"), (0, "f8"), "f8"),
    ((0, "bf"), (0, "bf"), "bf"),
    ((0, "bf"), (1, "f4"), "bf"),      # a 0-d tensor of the same category does not promote
    ((0, "bf"), (1, "f8"), "bf"),
    ((0, "f2"), (1, "bf"), "f2"),
    ((0, "f4"), (1, "bf"), "f4"),
    ((0, "i8"), (1, "bf"), "bf"),      # a higher category raises it
    ((0, "b1"), (0, "bf"), "bf"),
    ((0, "i4"), (0, "bf"), "bf"),
    ((1, "bf"), (1, "f2"), "f4"),
    ((1, "bf"), (2, "f4"), "bf"),
    ((1, "i8"), (1, "bf"), "bf"),
]


def _operand(group, name):
    if group == 2:
        return {"f4": 2.5, "i8": 3, "b1": True}[name]
    return ag.Tensor(np.ones((2,) if group == 0 else (), DT[name]))


@pytest.mark.parametrize("a,b,want", PROMOTIONS)
def test_promotion_follows_the_rule(a, b, want):
    x, y = _operand(*a), _operand(*b)
    assert dtypes.result_type(x, y) == DT[want]
    assert dtypes.result_type(y, x) == DT[want]
    if a[0] < 2 and DT[want] != bool:
        assert (x + y).dtype == DT[want]
        assert (x * y).dtype == DT[want]


@pytest.mark.parametrize("a,b,want", PROMOTIONS)
def test_promotion_equals_torch_result_type(a, b, want):
    torch = pytest.importorskip("torch")
    tdt = {"bf": torch.bfloat16, "f2": torch.float16, "f4": torch.float32, "f8": torch.float64, "i8": torch.int64,
           "i4": torch.int32, "b1": torch.bool}

    def t(group, name):
        return _operand(group, name) if group == 2 else torch.ones((2,) if group == 0 else (), dtype=tdt[name])

    assert torch.result_type(t(*a), t(*b)) == tdt[want]


def test_bfloat16_is_a_float_by_every_name():
    assert dtypes.is_float(BF) and dtypes.is_bfloat16("bfloat16") and not dtypes.is_float(np.int64)
    assert dtypes.category(BF) == 2 and dtypes.float_dtype(BF) == BF
    assert dtypes.as_dtype("bfloat16") == BF == dtypes.as_dtype(BF)
    for t in (ag.tensor([1.0, 2.5], dtype="bfloat16"), ag.zeros(3, dtype="bfloat16"), ag.randn(2, 3).astype("bfloat16"),
              ag.tensor([1, 2]).astype(BF), ag.full((2,), 1.5, dtype=BF), ag.arange(3, dtype="bfloat16")):
        assert t.dtype == BF
    x = ag.tensor([1.0, 2.0], dtype=BF, requires_grad=True)     # floats may require grad
    assert ag.zeros(2, dtype=BF).requires_grad_().requires_grad
    with pytest.raises(TypeError, match="needs boolean or integer"):
        x & x
    assert (x.astype(np.float32) + 0).dtype == np.float32
    assert ag.tensor([1, 2]).astype("bfloat16").astype(np.int64).tolist() == [1, 2]


def test_gradcheck_takes_bf16_inputs_in_float64():
    x = np.array([[0.5, 1.25], [-0.75, 2.0]], np.float32).astype(BF)
    assert ag.gradcheck(lambda t: (t * t).exp().sum(axis=0), [x])
    with pytest.raises(ag.GradcheckError):       # a wrong backward is still caught
        ag.gradcheck(lambda t: _WrongSquare.apply(t), [x])


class _WrongSquare(ag.Function):
    def forward(self, x):
        return x * x

    def backward(self, gy):
        return gy * self.inputs[0] * 3.0


def test_printing_and_python_values():
    x = ag.tensor([[1.5, -2.25], [3.0, 4.0]], dtype=BF)
    assert x.tolist() == [[1.5, -2.25], [3.0, 4.0]]
    assert x[0, 1].item() == -2.25 and float(x[1, 1]) == 4.0 and isinstance(x[0, 0].item(), float)
    assert "bfloat16" in repr(x) and "2.25" in repr(x)
    assert "-2.25" in ag.trace.format_array(x)


def test_sums_accumulate_in_float32():
    """1 + 1 + ... in bfloat16 stops at 256 (257 is not representable); accumulated in float32 the sum is exact."""
    x = ag.ones(1000, dtype=BF)
    assert x.sum().item() == 1000.0
    assert x.reshape(10, 100).sum(axis=1).tolist() == [100.0] * 10
    assert x.mean().item() == 1.0 and x.cumsum(0)[-1].item() == 1000.0
    assert ag.einsum("i,i->", x, x).item() == 1000.0 and (x @ x).item() == 1000.0
    w = ag.zeros((2, 3), dtype=BF, requires_grad=True)
    F.embedding(ag.tensor(np.zeros(1000, np.int64)), w).sum().backward()     # 1000 rows into one
    assert w.grad.dtype == BF and w.grad.tolist() == [[1000.0] * 3, [0.0] * 3]


# ------------------------------------------------------------------------------------------------ ops vs float32
def _pair(data):
    """The same values as a bf16 and a float32 leaf (rounded to bf16 first, so only the op's rounding differs)."""
    v = np.asarray(data, np.float32).astype(BF)
    return ag.Tensor(v, requires_grad=True), ag.Tensor(v.astype(np.float32), requires_grad=True)


def _close(out, ref, what, rtol=3e-2):
    """max |out - ref| within rtol of max(max |ref|, 1): the inputs are of size ~1, so terms of that size cancel
    in the results near 0 (log near 1, softmax's backward), where bfloat16's 8 bits leave absolute errors."""
    out, ref = np.asarray(out.numpy(), np.float64), np.asarray(ref.numpy(), np.float64)
    scale = max(float(np.max(np.abs(ref))) if ref.size else 0.0, 1.0)
    err = float(np.max(np.abs(out - ref))) / scale if ref.size else 0.0
    assert err <= rtol, f"{what}: error {err:.3g} relative to max(max |ref|, 1) > {rtol}"


UNARY = {
    "exp": lambda x: x.exp(), "tanh": lambda x: x.tanh(), "sigmoid": lambda x: x.sigmoid(),
    "relu": lambda x: x.relu(), "sin": lambda x: x.sin(), "abs": lambda x: x.abs(), "square": lambda x: x * x,
    "log": lambda x: (x.abs() + 0.5).log(), "sqrt": lambda x: (x.abs() + 0.5).sqrt(), "clip": lambda x: x.clip(-0.5, 1.0),
    "scale": lambda x: x * 2.5 - 1.0, "pow": lambda x: (x.abs() + 0.5) ** 1.5, "div": lambda x: 1.0 / (x.abs() + 0.5),
    "gelu": F.gelu, "silu": F.silu, "softmax": lambda x: x.softmax(-1), "log_softmax": lambda x: x.log_softmax(-1),
    "sum": lambda x: x.sum(-1), "mean": lambda x: x.mean(), "var": lambda x: x.var(-1), "max": lambda x: x.max(-1),
    "logsumexp": lambda x: x.logsumexp(-1), "cumsum": lambda x: x.cumsum(-1), "flip": lambda x: x.flip(-1),
    "layer_norm": lambda x: F.layer_norm(x), "rms_norm": lambda x: F.rms_norm(x),
    "gram": lambda x: x @ x.swapaxes(-1, -2), "einsum": lambda x: ag.einsum("...ij,...kj->...ik", x, x),
}


@pytest.mark.parametrize("name", sorted(UNARY))
@given(data=st.data())
def test_unary_ops_match_float32(name, data):
    shape = data.draw(shapes(min_dims=2 if name in ("gram", "einsum") else 1, max_dims=3, max_side=5))
    xb, xf = _pair(data.draw(arrays(shape, unique=name == "max")))
    fn = UNARY[name]
    yb, yf = fn(xb), fn(xf)
    assert yb.dtype == BF, (name, yb.dtype)
    _close(yb, yf, f"{name} forward")
    g = np.asarray(data.draw(arrays(yf.shape)), np.float32).astype(BF)
    yb.backward(ag.Tensor(g))
    yf.backward(ag.Tensor(g.astype(np.float32)))
    assert xb.grad.dtype == BF
    _close(xb.grad, xf.grad, f"{name} backward", rtol=8e-2)


BINARY = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
          "div": lambda a, b: a / (b.abs() + 0.5), "maximum": lambda a, b: a.maximum(b),
          "where": lambda a, b: ag.where(a.data > 0, a, b)}


@pytest.mark.parametrize("name", sorted(BINARY))
@given(data=st.data())
def test_binary_ops_match_float32_with_broadcasting(name, data):
    sa, sb = data.draw(broadcastable_pair())
    (ab, af), (bb, bf) = _pair(data.draw(arrays(sa))), _pair(data.draw(arrays(sb, unique=name == "maximum")))
    yb, yf = BINARY[name](ab, bb), BINARY[name](af, bf)
    assert yb.dtype == BF
    _close(yb, yf, f"{name} forward")
    yb.sum().backward()
    yf.sum().backward()
    for gb, gf, which in ((ab.grad, af.grad, "x"), (bb.grad, bf.grad, "y")):
        assert gb.dtype == BF and gb.shape == gf.shape
        _close(gb, gf, f"{name} backward {which}", rtol=8e-2)


@given(data=st.data())
def test_matmul_batched_and_broadcast_match_float32(data):
    batch = data.draw(st.sampled_from([(), (2,), (3, 1)]))
    n, k, m = (data.draw(st.integers(1, 5)) for _ in range(3))
    (ab, af), (bb, bf) = _pair(data.draw(arrays(batch + (n, k)))), _pair(data.draw(arrays((k, m))))
    yb, yf = ab @ bb, af @ bf
    assert yb.dtype == BF
    _close(yb, yf, "matmul")
    yb.sum().backward()
    yf.sum().backward()
    _close(ab.grad, af.grad, "matmul gx")
    _close(bb.grad, bf.grad, "matmul gw")
    assert ab.grad.dtype == bb.grad.dtype == BF


def test_mixed_dtypes_send_each_input_its_own_gradient_dtype():
    a = ag.tensor([1.0, 2.0], dtype=BF, requires_grad=True)
    h = ag.tensor([3.0, 4.0], dtype=np.float16, requires_grad=True)
    y = a * h
    assert y.dtype == np.float32
    y.sum().backward()
    assert a.grad.dtype == BF and h.grad.dtype == np.float16
    assert a.grad.tolist() == [3.0, 4.0] and h.grad.tolist() == [1.0, 2.0]


@pytest.mark.parametrize("bias", [False, True])
def test_autocast_bf16_linear_keeps_float32_master_gradients(bias):
    rng = np.random.default_rng(0)
    x = ag.Tensor(rng.standard_normal((2, 3, 8)).astype(np.float32), requires_grad=True)
    w = ag.Tensor(rng.standard_normal((5, 8)).astype(np.float32), requires_grad=True)
    b = ag.Tensor(rng.standard_normal(5).astype(np.float32), requires_grad=True) if bias else None
    with ag.amp.autocast("bfloat16"):
        y = F.linear(x, w, b)
    assert y.dtype == BF
    ref = F.linear(x.detach(), w.detach(), None if b is None else b.detach())
    _close(y, ref, "autocast linear")
    y.astype(np.float32).sum().backward()
    assert x.grad.dtype == w.grad.dtype == np.float32
    # float32 gradients of the bf16 operands, accumulated and written in float32 (no bf16 rounding of the result)
    g = np.ones((6, 5))
    xb, wb = (a.astype(BF).astype(np.float64) for a in (x.data.reshape(6, 8), w.data))
    np.testing.assert_allclose(w.grad.numpy(), g.T @ xb, rtol=1e-6)
    np.testing.assert_allclose(x.grad.numpy().reshape(6, 8), g @ wb, rtol=1e-6)
    if bias:
        assert b.grad.dtype == np.float32 and b.grad.tolist() == [6.0] * 5


def test_widened_runs_bf16_in_float32_and_leaves_other_dtypes():
    a = np.arange(6, dtype=np.float32).reshape(2, 3).astype(BF)
    out = dtypes.widened(lambda u, v: np.einsum("ij,kj->ik", u, v), a, a)
    assert out.dtype == BF and out.tolist() == [[5.0, 14.0], [14.0, 50.0]]
    f = np.ones(3, np.float16)
    assert dtypes.widened(lambda u: u * 2, f).dtype == np.float16
    big = np.full(4, 257.0, np.float32).astype(BF)      # 257 is not a bfloat16: 256
    assert dtypes.widened(lambda u: u + 1, big, out_dtype=np.float32).tolist() == [257.0] * 4


# ------------------------------------------------------------------------------------------------ trainer (CPU)
def _text(n_lines: int = 200, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    words = ["the cat", "a dog", "sees", "eats", "the mat.", "a bone."]
    return "\n".join(" ".join(rng.choice(words, 3)) for _ in range(n_lines))


def _cfg(tmp_path, **kw):
    from tinygrad_llm.train import TrainConfig
    base = dict(preset="micro", model={"n_layer": 1, "n_head": 2, "n_embd": 32, "dropout": 0.0}, tokenizer="char",
                block_size=16, batch_size=4, max_steps=12, lr=1e-2, warmup=2, eval_every=0, eval_iters=2,
                sample_every=0, sample_tokens=0, checkpoint_every=0, out_dir=str(tmp_path), progress=False, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def test_precision_bf16_is_validated_and_offered():
    from tinygrad_llm import bench
    from tinygrad_llm.train import TrainConfig
    from tinygrad_llm.train.config import ConfigError
    from tinygrad_llm.train.step import precision_setup
    with pytest.raises(ConfigError, match="bf16"):
        TrainConfig(precision="bf17").validate()
    assert TrainConfig(precision="bf16").validate().precision == "bf16"
    assert precision_setup("bf16", "cpu") == ("bfloat16", None)      # autocast in bf16, no loss scaler
    parser = argparse.ArgumentParser()
    bench._configure(parser)
    assert parser.parse_args(["--precision", "bf16"]).precision == "bf16"


def test_bf16_training_on_the_cpu_learns_like_fp32_and_checkpoints_float32(tmp_path):
    from tinygrad_llm.train import Trainer, load_checkpoint
    text = _text()
    runs = {}
    for precision in ("bf16", "fp32"):
        tr = Trainer(_cfg(tmp_path / precision, precision=precision), text=text, log=lambda m: None)
        first = tr.evaluate()["val_loss"]
        runs[precision] = (first, tr.train(), tr)
    first, summary, tr = runs["bf16"]
    assert tr.loss_scaler is None and tr.autocast_dtype == "bfloat16"
    assert np.isfinite(summary["train_loss"]) and summary["val_loss"] < first - 0.3
    assert abs(summary["val_loss"] - runs["fp32"][1]["val_loss"]) < 0.05
    assert all(p.dtype == np.float32 for p in tr.model.parameters())      # master weights
    ck = load_checkpoint(tmp_path / "bf16")
    assert ck.model and all(np.asarray(v).dtype == np.float32 for v in ck.model.values())


def test_bf16_run_resumes_exactly(tmp_path):
    from tinygrad_llm.train import Trainer
    text = _text()
    kw = dict(precision="bf16", max_steps=6, grad_accum=2, model={"n_layer": 1, "n_head": 2, "n_embd": 32,
                                                                  "dropout": 0.1})
    a = Trainer(_cfg(tmp_path / "a", checkpoint_every=3, **kw), text=text, log=lambda m: None)
    a.train()
    b = Trainer(_cfg(tmp_path / "b", resume=str(tmp_path / "a" / "step_000003"), **kw), text=text,
                log=lambda m: None)
    assert b.step == 3
    b.train()
    pa, pb = a.model.state_dict(), b.model.state_dict()
    assert pa.keys() == pb.keys()
    for k in pa:
        assert np.asarray(pa[k]).tobytes() == np.asarray(pb[k]).tobytes(), k


# ------------------------------------------------------------------------------------------------ Hugging Face
def test_bf16_safetensors_load_without_widening_and_export_bf16(tmp_path):
    from tinygrad_llm.model import GPT, GPTConfig
    from tinygrad_llm.model.hf import from_pretrained, save_pretrained
    from tinygrad_llm.model.hf.safetensors_io import TensorFiles, weight_files
    model = GPT(GPTConfig.preset("micro"), seed=0)
    save_pretrained(model, tmp_path / "bf", dtype="bfloat16")
    wide = from_pretrained(tmp_path / "bf")                        # default: float32, as before
    narrow = from_pretrained(tmp_path / "bf", dtype="bfloat16")
    original = dict(model.named_parameters())
    for (name, p), (_, q) in zip(wide.named_parameters(), narrow.named_parameters()):
        assert p.dtype == np.float32 and q.dtype == BF, name
        assert np.array_equal(q.numpy().astype(np.float32), p.numpy()), name
        ref = original[name].numpy() if name in original else np.zeros(p.shape)   # absent biases are zeros
        np.testing.assert_allclose(p.numpy(), ref, rtol=1e-2, atol=1e-6, err_msg=name)
    save_pretrained(narrow, tmp_path / "again")                    # bf16 parameters write BF16 by default
    files = TensorFiles(weight_files(tmp_path / "again"))
    assert {files.dtype(n) for n in files.names()} == {"BF16"}
    files.close()
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (tmp_path / "bf" / "model.safetensors").read_bytes()
    logits = narrow(np.array([[1, 2, 3]]))
    logits = logits[0] if isinstance(logits, tuple) else logits
    assert logits.dtype == BF and np.isfinite(logits.numpy().astype(np.float32)).all()


# ------------------------------------------------------------------------------------------------ GPU
def _cp():
    import cupy
    return cupy


def _rel(out, ref):
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-30))


MM_CASES = [   # (a shape, b shape, which operand is a swapped view)
    ((67, 129), (129, 33), None), ((3, 67, 129), (129, 33), None), ((67, 129), (3, 129, 33), None),
    ((2, 3, 67, 40), (2, 3, 40, 67), None), ((2, 3, 40, 67), (2, 3, 40, 33), "a"),
    ((2, 3, 67, 40), (2, 3, 33, 40), "b"), ((2, 3, 40, 67), (2, 3, 33, 40), "ab"),
    ((1, 3, 67, 40), (2, 1, 40, 5), None), ((40, 129), (33, 129), "b"), ((1, 40), (40, 1), None),
]


def _operands(cp, rng, sa, sb, views):
    a = rng.standard_normal(sa).astype(np.float32).astype(BF)
    b = rng.standard_normal(sb).astype(np.float32).astype(BF)
    A, B = cp.asarray(a), cp.asarray(b)
    if "a" in (views or ""):
        A, a = A.swapaxes(-1, -2), a.swapaxes(-1, -2)
    if "b" in (views or ""):
        B, b = B.swapaxes(-1, -2), b.swapaxes(-1, -2)
    return A, B, np.matmul(a.astype(np.float64), b.astype(np.float64))


@gpu
@pytest.mark.parametrize("case", MM_CASES)
def test_gpu_bf16_matmul_every_layout(case):
    cp = _cp()
    from autograd.cuda import get_kernel
    mm = get_kernel("matmul")
    seed = int(np.random.default_rng().integers(1 << 30))
    A, B, ref = _operands(cp, np.random.default_rng(seed), *case)
    out = mm(A, B)
    assert out.dtype == BF and out.shape == ref.shape
    assert _rel(out.get().astype(np.float64), ref) < 1e-2, seed
    poisoned = cp.full(ref.shape, np.nan, dtype=np.float32).astype(BF)     # unwritten elements stay NaN
    mm(A, B, out=poisoned)
    assert _rel(poisoned.get().astype(np.float64), ref) < 1e-2, seed
    f32 = mm(A, B, out_dtype=np.float32)                                  # float32 accumulator written out
    assert f32.dtype == np.float32 and _rel(f32.get(), ref) < 1e-5, seed


@gpu
@pytest.mark.parametrize("name", sorted(UNARY) + [f"binary_{n}" for n in sorted(BINARY)])
def test_gpu_bf16_ops_match_float32(name):
    """Every op of the CPU tables on CuPy bfloat16 arrays, forward and backward, against float32 on the CPU."""
    rng = np.random.default_rng(int(np.random.default_rng().integers(1 << 30)))
    binary = name.startswith("binary_")
    fn = BINARY[name[7:]] if binary else UNARY[name]
    pairs = [_pair(rng.uniform(-2, 2, s) + (np.arange(15).reshape(3, 5) * 0.05 if name == "max" else 0))
             for s in ([(3, 5), (5,)] if binary else [(3, 5)])]
    yb = fn(*[b.to("cuda") for b, _ in pairs])
    yf = fn(*[f for _, f in pairs])
    assert yb.dtype == BF and yb.device.startswith("cuda")
    _close(yb.cpu(), yf, f"{name} forward")
    g = rng.uniform(-2, 2, yf.shape).astype(np.float32).astype(BF)
    yb.backward(ag.Tensor(g, device="cuda"))
    yf.backward(ag.Tensor(g.astype(np.float32)))
    for b, f in pairs:
        assert b.grad.dtype == BF
        _close(b.grad, f.grad, f"{name} backward", rtol=8e-2)


@gpu
def test_gpu_bf16_colsum_and_engine_matmul_backward():
    cp = _cp()
    from autograd.cuda import get_kernel
    rng = np.random.default_rng(int(np.random.default_rng().integers(1 << 30)))
    x = rng.standard_normal((300, 129)).astype(np.float32).astype(BF)
    ref = x.astype(np.float64).sum(axis=0)
    r = get_kernel("colsum")(cp.asarray(x))
    assert r.dtype == BF and _rel(r.get(), ref) < 1e-2
    r32 = get_kernel("colsum")(cp.asarray(x), out_dtype=np.float32)
    assert r32.dtype == np.float32 and _rel(r32.get(), ref) < 1e-5
    (ab, af), (bb, bf) = _pair(rng.standard_normal((2, 17, 33))), _pair(rng.standard_normal((33, 9)))
    ag_ = [t.to("cuda") for t in (ab, bb)]
    y = ag_[0] @ ag_[1]
    assert y.dtype == BF
    y.sum().backward()
    yf = af @ bf
    yf.sum().backward()
    _close(y.cpu(), yf, "gpu matmul")
    _close(ab.grad, af.grad, "gpu matmul gx")
    _close(bb.grad, bf.grad, "gpu matmul gw")


@gpu
def test_gpu_autocast_bf16_linear_float32_weight_gradient():
    rng = np.random.default_rng(1)
    x = ag.Tensor(rng.standard_normal((4, 33, 64)).astype(np.float32), device="cuda", requires_grad=True)
    w = ag.Tensor(rng.standard_normal((96, 64)).astype(np.float32) * 0.1, device="cuda", requires_grad=True)
    b = ag.Tensor(rng.standard_normal(96).astype(np.float32), device="cuda", requires_grad=True)
    with ag.amp.autocast("bfloat16"):
        y = F.linear(x, w, b)
    assert y.dtype == BF
    g = rng.standard_normal(y.shape).astype(np.float32).astype(BF)
    y.backward(ag.Tensor(g, device="cuda"))
    assert w.grad.dtype == x.grad.dtype == b.grad.dtype == np.float32
    xb, wb, g64 = (a.astype(BF).astype(np.float64) for a in (x.numpy(), w.numpy(), g.astype(np.float32)))
    g2 = g64.reshape(-1, 96)
    assert _rel(w.grad.numpy(), g2.T @ xb.reshape(-1, 64)) < 1e-5
    assert _rel(x.grad.numpy(), (g2 @ wb).reshape(x.shape)) < 1e-2
    assert _rel(b.grad.numpy(), g2.sum(axis=0)) < 1e-5


def _gpu_steps(graphed, precision, steps=4, accum=2):
    import tinygrad_llm as tl
    from autograd import cuda as agcuda
    from tinygrad_llm.train.graph_step import GraphTrainStep
    from tinygrad_llm.train.step import TrainStep, precision_setup
    cp = _cp()
    amp_dtype, scaler = precision_setup(precision, "cuda")
    agcuda.set_tf32(False)
    cfg = tl.GPTConfig(vocab_size=96, context_length=32, n_layer=2, n_head=4, n_embd=64, dropout=0.0)
    model = tl.GPT(cfg, seed=0, device="cuda")
    opt = tl.optim.AdamW(model, lr=3e-3, weight_decay=0.1, betas=(0.9, 0.95))
    step_fn = (GraphTrainStep if graphed else TrainStep)(model, opt, lambda s: 3e-3, grad_accum=accum,
                                                          grad_clip=1.0, autocast_dtype=amp_dtype, loss_scaler=scaler)
    rng = np.random.default_rng(3)
    losses = []
    for i in range(steps):
        batches = [(cp.asarray(rng.integers(0, 96, (4, 32))), cp.asarray(rng.integers(0, 96, (4, 32))))
                   for _ in range(accum)]
        losses.append(float(step_fn(batches, i).loss))
    if graphed:
        step_fn.sync_to_host()
    params = np.concatenate([p.numpy().ravel() for p in model.parameters()]).astype(np.float64)
    assert all(p.dtype == np.float32 for p in model.parameters())
    return params, np.array(losses)


@gpu
def test_gpu_bf16_step_eager_equals_graphed_and_is_close_to_fp32():
    pe, le = _gpu_steps(False, "bf16")
    pg, lg = _gpu_steps(True, "bf16")
    pf, lf = _gpu_steps(False, "fp32")
    assert np.isfinite(le).all() and le[-1] < le[0]
    assert _rel(pg, pe) < 3e-3, "graphed bf16 step differs from eager"
    np.testing.assert_allclose(lg, le, rtol=5e-3)
    assert _rel(pe, pf) < 3e-2, "bf16 training drifts from fp32"
    np.testing.assert_allclose(le, lf, rtol=3e-2)


@gpu
def test_gpu_trainer_precision_bf16(tmp_path):
    from tinygrad_llm.train import Trainer, load_checkpoint
    tr = Trainer(_cfg(tmp_path, precision="bf16", device="cuda", max_steps=20), text=_text(), log=lambda m: None)
    first = tr.evaluate()["val_loss"]
    summary = tr.train()
    assert tr.loss_scaler is None and np.isfinite(summary["train_loss"]) and summary["val_loss"] < first - 0.3
    assert all(np.asarray(v).dtype == np.float32 for v in load_checkpoint(tmp_path).model.values())
