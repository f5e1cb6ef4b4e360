"""Pipeline parallelism on CPU stages: loss and gradients equal single-device training (float64)."""
from __future__ import annotations

import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm.distributed.pipeline import PipelineParallel, balance_by_cost, schedule_ops, split_gpt


def _cfg(**kw):
    base = dict(vocab_size=61, context_length=16, n_layer=3, n_head=2, n_embd=16, dropout=0.0)
    base.update(kw)
    return tl.GPTConfig(**base)


def _batch(b=4, t=8, v=61, seed=0, ignore=False):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v, (b, t))
    tgt = rng.integers(0, v, (b, t))
    if ignore:   # uneven valid-token counts per micro-batch: the weighting must make it exact anyway
        tgt[0, :5] = -100
        tgt[3, 1] = -100
    return idx, tgt


def _grads(model):
    return {n: p.grad.numpy().copy() for n, p in model.named_parameters()}


@pytest.mark.parametrize("n_stages,n_micro,schedule,cfg_kw,ignore", [
    (2, 2, "gpipe", {}, False),
    (3, 4, "1f1b", {}, True),
    (2, 4, "1f1b", {"tie_weights": False, "pos": "rope", "norm": "rmsnorm", "mlp": "swiglu"}, False),
    (1, 2, "gpipe", {}, False),
])
def test_pipeline_matches_single_device(n_stages, n_micro, schedule, cfg_kw, ignore):
    cfg = _cfg(**cfg_kw)
    ref = tl.GPT(cfg, seed=3, dtype=np.float64)
    model = tl.GPT(cfg, seed=3, dtype=np.float64)
    idx, tgt = _batch(ignore=ignore)
    ref_loss = ref.loss(idx, tgt)
    ref_loss.backward()
    pipe = PipelineParallel(model, ["cpu"] * n_stages, n_micro=n_micro, schedule=schedule)
    loss = pipe.train_step(idx, tgt)
    assert abs(loss - ref_loss.item()) < 1e-10
    want, got = _grads(ref), _grads(model)
    assert want.keys() == got.keys()
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-10, err_msg=name)
    np.testing.assert_allclose(pipe(idx).numpy(), ref(idx).numpy(), atol=1e-12)


def test_pipeline_training_steps_follow_single_device():
    cfg = _cfg()
    ref, model = tl.GPT(cfg, seed=1, dtype=np.float64), tl.GPT(cfg, seed=1, dtype=np.float64)
    opt_ref = tl.optim.AdamW(ref, lr=1e-2)
    pipe = PipelineParallel(model, ["cpu", "cpu"], n_micro=2, schedule="1f1b")
    opt = tl.optim.AdamW(model, lr=1e-2)
    for step in range(3):
        idx, tgt = _batch(seed=step)
        ref.loss(idx, tgt).backward()
        opt_ref.step()
        opt_ref.zero_grad()
        pipe.train_step(idx, tgt)
        opt.step()
        opt.zero_grad()
    for (n, a), (_, b) in zip(ref.named_parameters(), model.named_parameters()):
        np.testing.assert_allclose(b.numpy(), a.numpy(), atol=1e-10, err_msg=n)


def test_schedules_have_the_gpipe_bubble_and_1f1b_bounds_activations():
    for p, m in [(2, 4), (4, 8), (3, 3)]:
        for kind in ("gpipe", "1f1b"):
            ticks = schedule_ops(p, m, kind)
            assert len(ticks) == 2 * (m + p - 1)          # ideal: m / (m + p - 1) of the ticks busy per stage
            ops = [op for t in ticks for op in t]
            assert sorted(ops) == sorted((o, s, j) for o in "FB" for s in range(p) for j in range(m))
        # 1F1B: stage s never holds more than p - s micro-batches' activations
        live = [0] * p
        for t in schedule_ops(p, m, "1f1b"):
            for op, s, j in t:
                live[s] += 1 if op == "F" else -1
                assert live[s] <= p - s


def test_split_gpt_errors_and_balance():
    model = tl.GPT(_cfg(n_layer=4), seed=0)
    stages = split_gpt(model, ["cpu"] * 3)
    assert [(s.lo, s.hi) for s in stages] == [(0, 1), (1, 3), (3, 4)]
    # GPT-2 124M: the LM head weighs ~5 blocks, so the last of 2 stages gets fewer blocks
    assert balance_by_cost(tl.GPTConfig.preset("gpt2-124m"), 2) == [8, 4]
    assert sum(balance_by_cost(tl.GPTConfig.preset("gpt2-124m"), 4)) == 12
    with pytest.raises(ValueError, match="balance"):
        split_gpt(model, ["cpu", "cpu"], balance=[1, 1])
    with pytest.raises(ValueError, match="schedule"):
        schedule_ops(2, 2, "zigzag")
    with pytest.raises(ValueError, match="micro-batches"):
        PipelineParallel(model, ["cpu", "cpu"], n_micro=3).train_step(*_batch(b=4))


def test_tied_embedding_path_used_across_gpus_matches(monkeypatch):
    """The path taken when the tied embedding and the head are on different GPUs (a per-step copy whose gradient
    is added back at the end), forced here on CPU stages."""
    cfg = _cfg()
    ref, model = tl.GPT(cfg, seed=4, dtype=np.float64), tl.GPT(cfg, seed=4, dtype=np.float64)
    idx, tgt = _batch(seed=5)
    ref.loss(idx, tgt).backward()
    pipe = PipelineParallel(model, ["cpu", "cpu"], n_micro=2, schedule="1f1b")
    monkeypatch.setattr(pipe, "_tied_across_devices", lambda: True)
    pipe.train_step(idx, tgt)
    assert pipe.stages[-1].head_weight is None
    for (n, a), b in zip(ref.named_parameters(), model.parameters()):
        np.testing.assert_allclose(b.grad.numpy(), a.grad.numpy(), atol=1e-10, err_msg=n)


def test_last_stage_never_builds_the_logits(monkeypatch):
    """The last stage's loss is the chunked head + cross-entropy (as GPT.loss): F.cross_entropy on (B, T, V) logits
    is never called in a training step, and a LoRA head (which changes the product) still trains through them."""
    import autograd.functional as F
    from tinygrad_llm.finetune.lora import apply_lora
    cfg = _cfg(tie_weights=False)
    ref, model = tl.GPT(cfg, seed=5, dtype=np.float64), tl.GPT(cfg, seed=5, dtype=np.float64)
    idx, tgt = _batch(seed=4)
    ref_loss = ref.loss(idx, tgt)
    real = F.cross_entropy
    calls = []
    monkeypatch.setattr(F, "cross_entropy", lambda *a, **k: calls.append(a[0].shape) or real(*a, **k))
    loss = PipelineParallel(model, ["cpu", "cpu"], n_micro=2).train_step(idx, tgt)
    assert calls == [] and abs(loss - ref_loss.item()) < 1e-10
    apply_lora(model, rank=2, alpha=4.0, target="lm_head", freeze=False, seed=0)
    loss = PipelineParallel(model, ["cpu", "cpu"], n_micro=2).train_step(idx, tgt)
    assert len(calls) == 2 and calls[0][-1] == cfg.vocab_size   # one per micro-batch, on the logits
    assert abs(loss - ref_loss.item()) < 1e-10                    # LoRA's B starts at zero: the same function


def test_frozen_first_stage_trains_the_later_ones():
    """LoRA on the head only (everything else frozen): stage 0 has nothing to differentiate, the head's LoRA
    gradients equal single-device training's."""
    from tinygrad_llm.finetune.lora import apply_lora
    cfg = _cfg(tie_weights=False)
    ref, model = tl.GPT(cfg, seed=6, dtype=np.float64), tl.GPT(cfg, seed=6, dtype=np.float64)
    for m in (ref, model):
        apply_lora(m, rank=2, alpha=4.0, target="lm_head", seed=1)
        m.lm_head.lora_B.data[...] = np.random.default_rng(2).standard_normal(m.lm_head.lora_B.shape)
    idx, tgt = _batch(seed=7)
    ref.loss(idx, tgt).backward()
    PipelineParallel(model, ["cpu", "cpu"], n_micro=2).train_step(idx, tgt)
    for name in ("lm_head.lora_A", "lm_head.lora_B"):
        a, b = dict(ref.named_parameters())[name], dict(model.named_parameters())[name]
        np.testing.assert_allclose(b.grad.numpy(), a.grad.numpy(), atol=1e-10, err_msg=name)
    assert all(p.grad is None for n, p in model.named_parameters() if "lora" not in n)


@pytest.mark.parametrize("n_stages,schedule", [(2, "gpipe"), (3, "1f1b")])
def test_pipeline_moe_adds_the_load_balancing_loss_of_every_stage(n_stages, schedule):
    """A mixture of experts split over stages: each micro-batch's load-balancing loss spans the MoE layers of all
    stages (their routing counts are summed before any stage's backward) and equals gradient accumulation over the
    same micro-batches: the mean of the per-micro-batch losses."""
    cfg = _cfg(family="qwen3", n_experts=4, n_experts_per_tok=2, moe_hidden=8, router_aux_loss_coef=0.5)
    ref = tl.GPT(cfg, seed=5, dtype=np.float64)
    model = tl.GPT(cfg, seed=5, dtype=np.float64)
    idx, tgt = _batch(b=4)
    m = 2
    ref_loss = sum(ref.loss(idx[j * 2:(j + 1) * 2], tgt[j * 2:(j + 1) * 2]) * (1.0 / m) for j in range(m))
    ref_loss.backward()
    pipe = PipelineParallel(model, ["cpu"] * n_stages, n_micro=m, schedule=schedule)
    loss = pipe.train_step(idx, tgt)
    assert abs(loss - ref_loss.item()) < 1e-10
    want, got = _grads(ref), _grads(model)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-10, err_msg=name)
    assert np.abs(got["blocks.0.ffn.router.weight"]).max() > 0
