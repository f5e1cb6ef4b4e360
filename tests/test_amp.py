"""Mixed precision: autocast's float16 matrix products with float32 master weights, GradScaler, the trainer."""
from __future__ import annotations

import numpy as np

import autograd as ag
from autograd import functional as F
from tinygrad_llm.train import Trainer, TrainConfig, load_checkpoint


def _leaf(shape, seed):
    return ag.Tensor(np.random.default_rng(seed).standard_normal(shape).astype(np.float32), requires_grad=True)


def test_autocast_linear_computes_in_float16_and_keeps_float32_gradients():
    x, w, b = _leaf((4, 8), 0), _leaf((3, 8), 1), _leaf((3,), 2)
    with ag.amp.autocast("float16"):
        y = F.linear(x, w, b)
    assert y.dtype == np.float16
    y.astype(np.float32).sum().backward()
    assert x.grad.dtype == w.grad.dtype == b.grad.dtype == np.float32
    ref = x.numpy() @ w.numpy().T + b.numpy()
    np.testing.assert_allclose(y.numpy().astype(np.float32), ref, rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(w.grad.numpy(), np.ones((4, 3)).T @ x.numpy(), rtol=1e-2, atol=1e-2)


def test_autocast_is_off_outside_and_nests():
    x, w = _leaf((2, 4), 3), _leaf((5, 4), 4)
    with ag.amp.autocast("float16"):
        with ag.amp.autocast(None):
            assert F.linear(x, w).dtype == np.float32
        assert F.linear(x, w).dtype == np.float16
    assert F.linear(x, w).dtype == np.float32


def test_float16_logits_give_a_float32_loss_that_survives_scaling():
    logits = ag.Tensor(np.random.default_rng(5).standard_normal((6, 11)).astype(np.float16), requires_grad=True)
    loss = F.cross_entropy(logits, np.arange(6))
    assert loss.dtype == np.float32
    (loss * 65536.0).backward()
    assert logits.grad.dtype == np.float16 and np.isfinite(logits.grad.numpy()).all()


def test_grad_scaler_skips_overflow_lowers_then_grows_the_scale():
    p = _leaf((3,), 6)
    scaler = ag.amp.GradScaler(init_scale=8.0, growth_interval=2)
    p.grad = ag.Tensor(np.array([8.0, 16.0, np.inf], dtype=np.float32))
    assert not scaler.unscale_and_check([p])
    scaler.update()
    assert scaler.scale_value == 4.0 and scaler.skipped_steps == 1
    for _ in range(2):
        p.grad = ag.Tensor(np.array([4.0, 8.0, 12.0], dtype=np.float32))
        assert scaler.unscale_and_check([p])
        np.testing.assert_allclose(p.grad.numpy(), [1.0, 2.0, 3.0])
        scaler.update()
    assert scaler.scale_value == 8.0
    fresh = ag.amp.GradScaler()
    fresh.load_state_dict(scaler.state_dict())
    assert fresh.state_dict() == scaler.state_dict()


def test_trainer_mixed_precision_trains_and_checkpoints_its_scaler(tmp_path):
    text = "\n".join(f"the cat {w} the mat." for w in ["sees", "eats", "likes"] * 60)
    cfg = TrainConfig(preset="micro", model={"n_layer": 1, "n_head": 2, "n_embd": 32}, tokenizer="char",
                      block_size=16, batch_size=4, max_steps=12, lr=1e-2, warmup=2, eval_every=0, eval_iters=2,
                      sample_every=0, sample_tokens=0, checkpoint_every=0, out_dir=str(tmp_path), progress=False,
                      precision="mixed")
    tr = Trainer(cfg, text=text, log=lambda m: None)
    first = tr.evaluate()["val_loss"]
    summary = tr.train()
    assert np.isfinite(summary["val_loss"]) and summary["val_loss"] < first
    assert all(p.dtype == np.float32 for p in tr.model.parameters())   # master weights stay float32
    state = load_checkpoint(tmp_path).state
    assert state["loss_scaler"]["scale"] == tr.loss_scaler.scale_value
