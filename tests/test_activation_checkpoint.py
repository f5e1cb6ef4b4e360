"""ag.checkpoint: the recomputed backward equals the plain one (float64), dropout masks and the random sequence are
the same, parameters are found, autocast is replayed, and the graph keeps only the checkpoint node."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import autograd as ag
from autograd import functional as F


class TinyBlock:
    """x (B, D) -> x + tanh(x W1 + b1) W2, with optional dropout on the hidden layer: a residual MLP block."""

    def __init__(self, d: int, h: int, seed: int, p: float = 0.0):
        rng = np.random.default_rng(seed)
        self.w1 = ag.Tensor(rng.standard_normal((d, h)) * 0.5, requires_grad=True)
        self.b1 = ag.Tensor(rng.standard_normal(h) * 0.1, requires_grad=True)
        self.w2 = ag.Tensor(rng.standard_normal((h, d)) * 0.5, requires_grad=True)
        self.p, self.rng = p, np.random.default_rng(seed + 100)

    def parameters(self):
        return [self.w1, self.b1, self.w2]

    def __call__(self, x):
        hidden = (x @ self.w1 + self.b1).tanh()
        if self.p:
            hidden = F.dropout(hidden, self.p, rng=self.rng)
        return x + hidden @ self.w2


def _grads(blocks, x, use_checkpoint: bool):
    for b in blocks:
        for p in b.parameters():
            p.grad = None
    xt = ag.Tensor(x, requires_grad=True)
    h = xt
    for b in blocks:
        h = ag.checkpoint(b, h) if use_checkpoint else b(h)
    loss = (h * h).sum()
    loss.backward()
    return loss.data, xt.grad.data, [p.grad.data.copy() for b in blocks for p in b.parameters()]


@settings(deadline=None)
@given(rows=st.integers(1, 4), d=st.integers(1, 5), h=st.integers(1, 6), depth=st.integers(1, 3),
       p=st.sampled_from([0.0, 0.4]))
def test_checkpointed_blocks_give_the_plain_gradients(rows, d, h, depth, p):
    x = np.random.default_rng(rows * 31 + d).standard_normal((rows, d))
    plain = [TinyBlock(d, h, seed=i, p=p) for i in range(depth)]
    ckpt = [TinyBlock(d, h, seed=i, p=p) for i in range(depth)]
    loss_a, gx_a, gp_a = _grads(plain, x, use_checkpoint=False)
    loss_b, gx_b, gp_b = _grads(ckpt, x, use_checkpoint=True)
    np.testing.assert_array_equal(loss_a, loss_b)
    np.testing.assert_allclose(gx_a, gx_b, rtol=1e-12, atol=1e-12)
    for a, b in zip(gp_a, gp_b):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    # the generators continue exactly where the plain run's did: later draws are unchanged by the recomputation
    for a, b in zip(plain, ckpt):
        assert a.rng.random() == b.rng.random()


def test_gradcheck_through_checkpoint():
    block = TinyBlock(3, 4, seed=1)
    ag.gradcheck(lambda x: ag.checkpoint(block, x), [np.random.default_rng(0).standard_normal((2, 3))])
    ag.gradcheck(lambda w: ag.checkpoint(lambda x: (x @ w).tanh(), ag.Tensor(np.ones((2, 3)))),
                 [np.random.default_rng(1).standard_normal((3, 2))])


def test_closure_parameters_are_found_and_get_gradients():
    rng = np.random.default_rng(2)
    w = ag.Tensor(rng.standard_normal((3, 3)), requires_grad=True)
    x = ag.Tensor(rng.standard_normal((2, 3)), requires_grad=True)
    y = ag.checkpoint(lambda t: (t @ w).sin() if hasattr(ag.Tensor, "sin") else (t @ w).tanh(), x)
    y.sum().backward()
    gw, gx = w.grad.data.copy(), x.grad.data.copy()
    w.grad = x.grad = None
    ((x @ w).sin() if hasattr(ag.Tensor, "sin") else (x @ w).tanh()).sum().backward()
    np.testing.assert_allclose(gw, w.grad.data, rtol=1e-12)
    np.testing.assert_allclose(gx, x.grad.data, rtol=1e-12)


def test_several_outputs_one_unused():
    rng = np.random.default_rng(3)
    w = ag.Tensor(rng.standard_normal((2, 2)), requires_grad=True)
    x = ag.Tensor(rng.standard_normal((2, 2)), requires_grad=True)
    a, b = ag.checkpoint(lambda t: (t @ w, (t * t).sum()), x, params=[w])
    (a * 3).sum().backward()                     # b never reaches the loss: its gradient is zero
    np.testing.assert_allclose(w.grad.data, 3 * x.data.T @ np.ones((2, 2)), rtol=1e-12)
    assert b.shape == ()


def test_graph_keeps_one_node_and_no_grad_is_a_plain_call():
    block = TinyBlock(4, 8, seed=0)
    x = ag.Tensor(np.ones((2, 4)), requires_grad=True)
    y = ag.checkpoint(block, x)
    assert type(y.creator).__name__ == "Checkpoint"
    assert [t is x for t in y.creator.inputs[:1]] == [True]
    assert len(y.creator.inputs) == 1 + len(block.parameters())
    with ag.no_grad():
        z = ag.checkpoint(block, x)
    assert z.creator is None
    np.testing.assert_array_equal(y.data, z.data)


def test_autocast_is_replayed_in_the_recomputation():
    block = TinyBlock(4, 4, seed=0)
    x = ag.Tensor(np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32), requires_grad=True)
    for p in block.parameters():
        p.data = p.data.astype(np.float32)
    grads = []
    for use in (False, True):
        for p in block.parameters():
            p.grad = None
        x.grad = None
        with ag.amp.autocast("float16"):
            y = ag.checkpoint(block, x) if use else block(x)
        y.sum().backward()               # backward runs outside autocast: the recomputation must re-enter it
        grads.append([x.grad.data.copy()] + [p.grad.data.copy() for p in block.parameters()])
    for a, b in zip(*grads):
        np.testing.assert_array_equal(a, b)


def test_non_tensor_output_is_a_clear_error():
    x = ag.Tensor(np.ones(2), requires_grad=True)
    with pytest.raises(TypeError, match="checkpoint: the function must return a Tensor"):
        ag.checkpoint(lambda t: 3.0, x)


@pytest.mark.gpu
def test_checkpoint_on_gpu_float32_matches_plain():
    pytest.importorskip("cupy")
    if not ag.cuda_available():
        pytest.skip("needs CuPy and an NVIDIA GPU")
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    results = []
    for use in (False, True):
        block = TinyBlock(8, 16, seed=0)
        for p in block.parameters():
            p.data = ag.backend.to_device(p.data.astype(np.float32), "cuda")
        xt = ag.Tensor(ag.backend.to_device(x, "cuda"), requires_grad=True)
        y = ag.checkpoint(block, xt) if use else block(xt)
        (y * y).sum().backward()
        results.append([ag.backend.to_numpy(xt.grad.data)] +
                       [ag.backend.to_numpy(p.grad.data) for p in block.parameters()])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------- the GPT
def _gpt_grads(family: str, every: int, dtype=np.float64, lora: bool = False, autocast=None, **extra):
    import tinygrad_llm as tl
    cfg = tl.GPTConfig(family=family, vocab_size=40, context_length=16, n_layer=3, n_head=2, n_embd=16,
                       activation_checkpointing=every, **extra)
    model = tl.GPT(cfg, seed=0, dtype=dtype)
    if lora:
        from tinygrad_llm.finetune.lora import apply_lora
        apply_lora(model, rank=2)
    fired: dict[str, int] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            p.register_post_accumulate_grad_hook(lambda t, n=name: fired.__setitem__(n, fired.get(n, 0) + 1))
    idx = np.random.default_rng(0).integers(0, 40, (2, 9))
    with ag.amp.autocast(autocast):
        _, loss = model(idx, idx)
    loss.backward()
    grads = {n: p.grad.data.copy() for n, p in model.named_parameters() if p.grad is not None}
    return loss.item(), grads, fired


@pytest.mark.parametrize("family,extra", [
    ("gpt2", dict(dropout=0.2)),                                   # dropout masks replayed
    ("llama", dict(n_kv_heads=1)),
    ("qwen3", dict(n_experts=4, n_experts_per_tok=2)),              # the router's aux loss keeps its gradient
    ("gemma3", dict(layer_types=("sliding_attention", "sliding_attention", "full_attention"), sliding_window=4)),
])
@pytest.mark.parametrize("every", [1, 2])
def test_gpt_checkpointing_gives_the_plain_gradients(family, extra, every):
    loss0, g0, fired0 = _gpt_grads(family, 0, **extra)
    loss1, g1, fired1 = _gpt_grads(family, every, **extra)
    assert loss0 == loss1
    assert g0.keys() == g1.keys()
    for k in g0:
        np.testing.assert_allclose(g1[k], g0[k], rtol=1e-10, atol=1e-12, err_msg=k)
    # every parameter's accumulate hook fires once, as data parallel's bucketed all-reduce needs
    assert fired1 == fired0 and set(fired1.values()) == {1}


def test_gpt_checkpointing_with_lora_and_autocast():
    for kw in (dict(lora=True), dict(dtype=np.float32, autocast="float16")):
        loss0, g0, _ = _gpt_grads("gpt2", 0, **kw)
        loss1, g1, _ = _gpt_grads("gpt2", 1, **kw)
        assert loss0 == loss1 and g0.keys() == g1.keys()
        for k in g0:
            np.testing.assert_array_equal(g1[k], g0[k], err_msg=k)


def test_activation_checkpointing_is_validated_and_the_estimate_shrinks():
    import tinygrad_llm as tl
    with pytest.raises(ValueError, match="activation_checkpointing must be >= 0"):
        tl.GPTConfig.preset("tiny", activation_checkpointing=-1)
    cfg = tl.GPTConfig.preset("gpt2-774m")
    plain, ckpt = cfg.memory_estimate(8, "mixed"), cfg.memory_estimate(8, "mixed", checkpointing=True)
    assert ckpt.activations < plain.activations / 3
    assert ckpt.parameters == plain.parameters == 4 * cfg.num_parameters()
    zero = cfg.memory_estimate(8, "mixed", world_size=4, shard_optimizer=True)
    assert zero.optimizer == plain.optimizer // 4


def test_trainer_activation_checkpointing_trains_the_same(tmp_path):
    from tinygrad_llm.train import TrainConfig, Trainer
    finals = []
    for k in (0, 1):
        cfg = TrainConfig(preset="micro", tokenizer="char", block_size=32, batch_size=4, max_steps=3, eval_every=0,
                          eval_iters=1, sample_tokens=1, dtype="float64", progress=False,
                          out_dir=str(tmp_path / f"run{k}"), activation_checkpointing=k, model={"dropout": 0.1})
        tr = Trainer(cfg, text="the quick brown fox jumps over the lazy dog.\n" * 40)
        assert tr.model.config.activation_checkpointing == k
        tr.train()
        finals.append({n: p.data.copy() for n, p in tr.model.named_parameters()})
    for n in finals[0]:
        np.testing.assert_array_equal(finals[0][n], finals[1][n], err_msg=n)
