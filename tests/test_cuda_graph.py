"""CUDA graphs: the eager fallback, error naming and the Philox generator on the CPU; on a GPU (marker gpu) capture and
replay against eager code, capture errors, dropout masks per replay, and the graphed training step against
TrainStep (float32 with TF32 off, mixed precision, overflow skips, clipping, gradient accumulation, evaluation)."""
from __future__ import annotations

import importlib

import numpy as np
import pytest

import autograd as ag
from autograd.cuda.philox import keep_mask_reference, philox4x32

G = importlib.import_module("autograd.cuda.graph")   # the module (the package attribute `graph` is the function)


# ------------------------------------------------------------------------------------------------ CPU
def test_philox_known_answers():
    """Random123's known-answer vectors for Philox4x32-10."""
    z = philox4x32(np.zeros((1, 4), np.uint32), (0, 0))[0]
    assert [int(v) for v in z] == [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
    f = philox4x32(np.full((1, 4), 0xFFFFFFFF, np.uint32), (0xFFFFFFFF, 0xFFFFFFFF))[0]
    assert [int(v) for v in f] == [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
    pi = philox4x32(np.array([[0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344]], np.uint32), (0xa4093822, 0x299f31d0))
    assert [int(v) for v in pi[0]] == [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_philox_mask_reference(p):
    n = 40001
    m = keep_mask_reference(1234, 17, n, p)
    assert m.shape == (n,) and m.dtype == np.bool_
    assert abs(m.mean() - (1 - p)) < 4 * np.sqrt(p * (1 - p) / n)
    # offsets count blocks of 4: a draw from offset 17 + k/4 is the tail of the draw from 17
    tail = keep_mask_reference(1234, 17 + 1000, n - 4000, p)
    assert np.array_equal(tail, m[4000:])
    assert not np.array_equal(keep_mask_reference(1235, 17, n, p), m)


def test_graph_eager_fallback_numpy():
    calls = []

    def fn(x, y):
        calls.append(1)
        return x @ y + 1.0

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((4, 2))
    f = G.graph(fn, a, b)
    assert not f.graphed
    a2 = rng.standard_normal((3, 4))
    np.testing.assert_array_equal(f(a2, b), a2 @ b + 1.0)
    assert len(calls) == 1                       # no warm-up or capture call on the eager path


def test_graph_switch_env(monkeypatch):
    monkeypatch.setenv("TINYGRAD_LLM_CUDA_GRAPHS", "0")
    assert not G.graphs_enabled()
    monkeypatch.setenv("TINYGRAD_LLM_CUDA_GRAPHS", "1")
    assert G.graphs_enabled()


class _FakeCudaError(RuntimeError):
    def __init__(self, status, msg):
        super().__init__(msg)
        self.status = status


@pytest.mark.parametrize("err, words", [
    (_FakeCudaError(900, "cudaErrorStreamCaptureUnsupported"), "host synchronisation"),
    (_FakeCudaError(906, "cudaErrorStreamCaptureImplicit"), "legacy default stream"),
    (NotImplementedError("calling cuBLAS API during stream capture is currently unsupported"), "autograd.cuda.matmul"),
    (ValueError("something else"), "ValueError: something else"),
])
def test_capture_errors_are_named(err, words):
    e = G._explain(err, "training step")
    assert isinstance(e, G.GraphCaptureError)
    assert str(e).startswith("training step: cannot capture")
    assert words in str(e)


def test_graph_step_unsupported_on_cpu():
    import tinygrad_llm as tl
    from tinygrad_llm.train.graph_step import unsupported_reason
    cfg = tl.GPTConfig(vocab_size=32, context_length=8, n_layer=1, n_head=2, n_embd=16)
    model = tl.GPT(cfg)
    opt = tl.optim.AdamW(model, lr=1e-3)
    reason = unsupported_reason(model, opt)
    assert reason is not None and ("GPU" in reason or "CuPy" in reason)


def test_train_step_for_falls_back_to_eager_on_cpu():
    import tinygrad_llm as tl
    from tinygrad_llm.train.graph_step import train_step_for
    from tinygrad_llm.train.step import TrainStep
    cfg = tl.GPTConfig(vocab_size=32, context_length=8, n_layer=1, n_head=2, n_embd=16)
    model = tl.GPT(cfg)
    opt = tl.optim.AdamW(model, lr=1e-3)
    logs = []
    step = train_step_for(model, opt, lambda s: 1e-3, cuda_graphs=True, log=logs.append, grad_clip=1.0)
    assert isinstance(step, TrainStep) and logs == []       # no GPU: the eager step, nothing to announce
    x = np.random.default_rng(0).integers(0, 32, (2, 8))
    out = step([(x, x)], 0)
    assert np.isfinite(float(out.loss)) and np.isfinite(out.grad_norm)


def test_decode_graph_unsupported_on_cpu():
    import tinygrad_llm as tl
    from tinygrad_llm.model.graph_decode import decode_unsupported_reason, graph_decoder
    model = tl.GPT(tl.GPTConfig(vocab_size=32, context_length=8, n_layer=1, n_head=2, n_embd=16))
    assert decode_unsupported_reason(model) is not None
    assert graph_decoder(model, model.new_cache(1, 8)) is None


# ------------------------------------------------------------------------------------------------ GPU
gpu = pytest.mark.gpu


def _cp():
    import cupy as cp
    return cp


@gpu
def test_capture_replay_matches_eager():
    cp = _cp()
    from autograd.cuda.matmul import matmul
    rng = np.random.default_rng(1)

    def fn(a, b):
        return cp.tanh(matmul(a, b)) * 2.0 + a.sum()

    a, b = (cp.asarray(rng.standard_normal(s).astype(np.float32)) for s in ((33, 17), (17, 9)))
    f = G.graph(fn, a, b)
    assert f.graphed
    for _ in range(3):
        a2, b2 = (cp.asarray(rng.standard_normal(s).astype(np.float32)) for s in ((33, 17), (17, 9)))
        out = f(a2, b2)
        np.testing.assert_allclose(out.get(), fn(a2, b2).get(), rtol=1e-5, atol=1e-5)
    with pytest.raises(G.GraphCaptureError, match=r"input 0 was \(33, 17\) float32 at capture, got \(32, 17\)"):
        f(a2[:32], b2)


@gpu
def test_capture_errors_on_gpu():
    cp = _cp()
    x = cp.ones((8,), np.float32)
    g = G.CUDAGraph(name="probe")
    with pytest.raises(G.GraphCaptureError, match="host synchronisation"):
        with g.capture():
            float((x * 2).sum())                      # .item()-like read inside the region
    with pytest.raises(G.GraphCaptureError, match="cuBLAS"):
        with g.capture():
            cp.matmul(cp.ones((4, 4), np.float32), cp.ones((4, 4), np.float32))
    with pytest.raises(G.GraphCaptureError, match="inside another capture"):
        with g.capture():
            with G.CUDAGraph(name="inner").capture():
                pass
    with g.capture():                                 # the graph still works after the failures
        x *= 3
    g.replay()
    assert float(x[0].get()) == 3.0
    with pytest.raises(G.GraphCaptureError, match="nothing captured"):
        G.CUDAGraph(name="empty").replay()


@gpu
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_philox_kernel_and_new_mask_per_replay(p):
    cp = _cp()
    from autograd.cuda.philox import PhiloxGenerator
    gen = PhiloxGenerator(987654321)
    n = 3001
    m0 = gen.keep_mask((n,), p).get()
    assert np.array_equal(m0, keep_mask_reference(987654321, 0, n, p))
    assert gen.offset == (n + 3) // 4
    out = cp.zeros((n,), np.bool_)

    def draw():
        out[...] = gen.keep_mask((n,), p)

    g = G.CUDAGraph(name="dropout")
    with g.capture():
        draw()
    masks = []
    for _ in range(3):
        g.replay()
        masks.append(out.get())
    for k, m in enumerate(masks):       # replay k draws what an eager draw k+1 would: offsets advance inside
        assert np.array_equal(m, keep_mask_reference(987654321, (k + 1) * ((n + 3) // 4), n, p))
    assert not np.array_equal(masks[0], masks[1])


def _tiny(dropout=0.0, seed=0, checkpointing=0):
    import tinygrad_llm as tl
    cfg = tl.GPTConfig(vocab_size=96, context_length=32, n_layer=2, n_head=4, n_embd=64, dropout=dropout,
                       activation_checkpointing=checkpointing)
    return tl.GPT(cfg, seed=seed, device="cuda")


def _batches(n, accum, B=4, T=32, V=96, seed=3):
    cp = _cp()
    rng = np.random.default_rng(seed)
    return [[(cp.asarray(rng.integers(0, V, (B, T))), cp.asarray(rng.integers(0, V, (B, T)))) for _ in range(accum)]
            for _ in range(n)]


def _run(graphed, *, steps=5, accum=2, clip=1.0, precision="fp32", dropout=0.0, init_scale=2.0 ** 16, lr=3e-3,
         checkpointing=0):
    import tinygrad_llm as tl
    from autograd import cuda as agcuda
    from tinygrad_llm.train.graph_step import GraphTrainStep
    from tinygrad_llm.train.step import TrainStep
    agcuda.set_tf32(False)
    model = _tiny(dropout, checkpointing=checkpointing)
    opt = tl.optim.AdamW(model, lr=lr, weight_decay=0.1, betas=(0.9, 0.95))
    scaler = ag.amp.GradScaler(init_scale=init_scale, growth_interval=3) if precision == "mixed" else None
    kw = dict(grad_accum=accum, grad_clip=clip, autocast_dtype="float16" if scaler else None, loss_scaler=scaler)
    schedule = lambda s: lr * (s + 1) / steps          # noqa: E731  (lr changes every step: device lr must follow)
    step_fn = (GraphTrainStep if graphed else TrainStep)(model, opt, schedule, **kw)
    losses, norms = [], []
    for i, batches in enumerate(_batches(steps, accum)):
        out = step_fn(batches, i)
        losses.append(float(out.loss))
        norms.append(float(out.grad_norm))
    if graphed:
        step_fn.sync_to_host()
        assert step_fn.captures == 1
    params = {n: p.data.get() for n, p in model.named_parameters()}
    return params, losses, norms, opt, scaler


def _close(a, b, rtol):
    """All parameters together within rtol (relative L2 norm). Elementwise equality is not the test: the eager step
    itself is not bitwise repeatable (the embedding gradient is an atomic scatter-add), and Adam turns the last-bit
    noise of near-zero gradients (the key bias's is zero in exact arithmetic) into updates of size lr."""
    x = np.concatenate([a[k].ravel() for k in sorted(a)]).astype(np.float64)
    y = np.concatenate([b[k].ravel() for k in sorted(a)]).astype(np.float64)
    err = np.linalg.norm(x - y) / np.linalg.norm(x)
    assert err <= rtol, f"parameters differ: relative L2 error {err:.3g} > {rtol:g}"


@gpu
@pytest.mark.parametrize("clip", [None, 1.0, 0.05])
def test_graphed_steps_equal_eager_fp32(clip):
    pe, le, ne, oe, _ = _run(False, clip=clip)
    pg, lg, ng, og, _ = _run(True, clip=clip)
    _close(pe, pg, 1e-5)
    np.testing.assert_allclose(lg, le, rtol=1e-6)
    np.testing.assert_allclose(ng, ne, rtol=1e-6)         # the norm the clip used, step by step
    assert og.step_count == oe.step_count == 5
    assert all(s["step"] == 5 for s in og.state.values())


@gpu
def test_graphed_steps_with_dropout_equal_eager():
    pe, le, *_ = _run(False, dropout=0.2, accum=1)
    pg, lg, *_ = _run(True, dropout=0.2, accum=1)
    _close(pe, pg, 1e-5)
    np.testing.assert_allclose(lg, le, rtol=1e-6)


@gpu
def test_graphed_steps_with_activation_checkpointing_equal_plain_eager():
    """Every block recomputed in backward inside the graph (dropout's Philox state replayed on the device) trains
    as the plain eager step does."""
    pe, le, *_ = _run(False, dropout=0.2, accum=2)
    pg, lg, *_ = _run(True, dropout=0.2, accum=2, checkpointing=1)
    _close(pe, pg, 1e-5)
    np.testing.assert_allclose(lg, le, rtol=1e-6)


@gpu
def test_graphed_steps_equal_eager_mixed():
    pe, le, ne, _, se = _run(False, precision="mixed", steps=6)
    pg, lg, ng, _, sg = _run(True, precision="mixed", steps=6)
    _close(pe, pg, 3e-3)       # two eager runs differ by ~2.4e-4 here (H200): float16 atomics in attention's backward
    np.testing.assert_allclose(lg, le, rtol=1e-3)
    assert (sg.scale_value, sg._clean_steps, sg.skipped_steps) == (se.scale_value, se._clean_steps, se.skipped_steps)
    assert sg.skipped_steps == 0 and sg.scale_value == 2.0 ** 18   # grown after steps 3 and 6 (growth_interval 3)


@gpu
def test_overflow_steps_skipped_on_device():
    """A loss scale of 2^126 overflows float16 gradients: every step is skipped on the device (no update, step count
    unchanged) while the scale halves, exactly as the eager step does."""
    pe, _, ne, oe, se = _run(False, precision="mixed", steps=4, init_scale=2.0 ** 126)
    pg, _, ng, og, sg = _run(True, precision="mixed", steps=4, init_scale=2.0 ** 126)
    fresh = {n: p.data.get() for n, p in _tiny().named_parameters()}
    assert all(np.array_equal(fresh[k], pg[k]) for k in fresh)      # untouched
    assert sg.skipped_steps == se.skipped_steps == 4 and sg.scale_value == se.scale_value == 2.0 ** 122
    assert og.step_count == oe.step_count == 0 and all(s["step"] == 0 for s in og.state.values())
    assert all(np.isinf(n) for n in ng) and all(np.isinf(n) for n in ne)


@gpu
def test_graph_eval_equals_eager():
    from tinygrad_llm.train.graph_step import GraphEval
    from tinygrad_llm.train.step import lm_loss
    model = _tiny()
    batches = [b[0] for b in _batches(4, 1, seed=9)]
    with ag.no_grad():
        model.eval()
        ref = np.mean([float(lm_loss(model, x, y).item()) for x, y in batches])
        model.train()
    ev = GraphEval(model)
    got = ev.mean_loss(batches)
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    np.testing.assert_allclose(ev.mean_loss(batches[:2]), np.mean([float(lm_loss(model, x, y).item())
                                                                   for x, y in batches[:2]]), rtol=1e-6)
    assert model.training


@gpu
@pytest.mark.parametrize("batch", [1, 3])
def test_graphed_decode_equals_eager(batch, monkeypatch):
    """Greedy generation with the decode step replayed from a graph gives the eager tokens and logits."""
    import tinygrad_llm as tl
    from autograd import cuda as agcuda
    agcuda.set_tf32(False)     # the graph's products run over the whole cache: TF32 would round them differently
    model = _tiny()
    idx = np.random.default_rng(5).integers(0, 96, (batch, 7))
    monkeypatch.setenv("TINYGRAD_LLM_CUDA_GRAPHS", "0")
    ids_e, log_e = tl.generate(model, idx, 20, return_logits=True)
    monkeypatch.setenv("TINYGRAD_LLM_CUDA_GRAPHS", "1")
    from tinygrad_llm.model.graph_decode import decode_unsupported_reason
    assert decode_unsupported_reason(model) is None
    ids_g, log_g = tl.generate(model, idx, 20, return_logits=True)
    assert np.array_equal(ids_g, ids_e)
    np.testing.assert_allclose(log_g, log_e, rtol=1e-4, atol=1e-4)


@gpu
def test_trainer_graphs_its_steps_and_checkpoints_the_device_state(tmp_path):
    """The trainer on a GPU captures its step once (dropout, gradient accumulation, clipping, mixed precision) and
    replays it; evaluation replays too; the checkpoint holds the device's step count and loss scale; the result is
    the eager trainer's (cuda_graphs=False) within the eager run's own spread."""
    from tinygrad_llm.train import Trainer, TrainConfig
    from tinygrad_llm.train.graph_step import is_graphed
    rng = np.random.default_rng(0)
    text = "\n".join(" ".join(rng.choice(["the cat", "a dog", "sees", "eats", "the moon."], 4)) for _ in range(300))
    kw = dict(preset="micro", model={"n_layer": 1, "n_head": 2, "n_embd": 32, "dropout": 0.1}, tokenizer="char",
              block_size=16, batch_size=4, max_steps=6, lr=3e-3, warmup=2, eval_every=3, eval_iters=2,
              sample_every=0, sample_tokens=0, checkpoint_every=3, grad_accum=2, progress=False, seed=3,
              device="cuda", precision="mixed")
    logs = []
    g = Trainer(TrainConfig(out_dir=str(tmp_path / "g"), **kw), text=text, log=logs.append)
    assert is_graphed(g.step_fn)
    g.train()
    assert not [m for m in logs if "CUDA graph off" in m], logs
    assert g.step_fn.graphed.captures == 1 and g._graph_eval.failed is None
    e = Trainer(TrainConfig(out_dir=str(tmp_path / "e"), cuda_graphs=False, **kw), text=text, log=lambda m: None)
    assert not is_graphed(e.step_fn)
    e.train()
    assert g.optimizer.step_count == e.optimizer.step_count
    assert g.loss_scaler.state_dict() == e.loss_scaler.state_dict()
    _close({k: v.get() for k, v in e.model.state_dict().items()}, {k: v.get() for k, v in g.model.state_dict().items()},
           3e-3)
    np.testing.assert_allclose(g.last_val["val_loss"], e.last_val["val_loss"], rtol=1e-2)
    back = Trainer(TrainConfig(out_dir=str(tmp_path / "g"), resume="auto", **kw), text=text, log=lambda m: None)
    assert back.step == 6 and back.optimizer.step_count == g.optimizer.step_count
    assert back.loss_scaler.state_dict() == g.loss_scaler.state_dict()
