"""LoRA: B = 0 leaves outputs unchanged, only LoRA parameters move, merge = unmerged, gradcheck of LoRALinear."""
import numpy as np
import pytest

import autograd as ag
import tinygrad_llm as tl
from tinygrad_llm.finetune import GPTClassifier, LoRALinear, apply_lora, lora_parameters, merge_lora
from tinygrad_llm.finetune.lora import lora_linear
from tinygrad_llm.nn import Linear


def small_gpt(seed=0, dtype=np.float32):
    cfg = tl.GPTConfig(vocab_size=40, context_length=12, n_layer=2, n_head=2, n_embd=16, qkv_bias=True)
    return tl.GPT(cfg, seed=seed, dtype=dtype)


IDS = np.random.default_rng(0).integers(0, 40, size=(2, 12))


def test_lora_linear_init_and_forward():
    base = Linear(6, 5, rng=0)
    lora = LoRALinear(base, rank=3, alpha=6.0, rng=1)
    assert lora.weight is base.weight and lora.bias is base.bias
    assert lora.lora_A.shape == (6, 3) and lora.lora_B.shape == (3, 5) and lora.scale == 2.0
    assert np.all(lora.lora_B.data == 0) and np.abs(lora.lora_A.data).max() <= 1 / np.sqrt(3)
    x = np.random.default_rng(2).standard_normal((4, 6)).astype(np.float32)
    np.testing.assert_array_equal(lora(x).numpy(), base(x).numpy())        # B = 0: the base output exactly
    lora.lora_B.data[...] = np.random.default_rng(3).standard_normal((3, 5))
    want = x @ base.weight.data.T + base.bias.data + 2.0 * (x @ lora.lora_A.data) @ lora.lora_B.data
    np.testing.assert_allclose(lora(x).numpy(), want, rtol=1e-5, atol=1e-5)


def test_apply_lora_with_zero_B_leaves_model_outputs_unchanged():
    model = small_gpt()
    before = model(IDS).numpy()
    report = apply_lora(model, rank=4, alpha=8)
    assert len(report.replaced) == 2 * 4          # qkv, attn.proj, ffn.fc, ffn.proj per block
    assert "blocks.0.ffn.fc" in report.replaced and "lm_head" not in report.replaced
    assert isinstance(model.blocks[1].ffn.fc, LoRALinear)
    np.testing.assert_array_equal(model(IDS).numpy(), before)
    lora = lora_parameters(model)
    assert report.trainable == sum(p.size for _, p in lora) == model.num_parameters(trainable_only=True)
    assert report.total == model.num_parameters() and report.trainable < report.total
    assert "trainable" in str(report)
    # base names unchanged: the base state dict is a subset of the LoRA model's
    names = {n for n, _ in model.named_parameters()}
    assert set(small_gpt().state_dict()) <= names


def test_only_lora_parameters_change_after_a_step():
    model = small_gpt(seed=1)
    apply_lora(model, rank=2, alpha=4)
    snap = {n: p.data.copy() for n, p in model.named_parameters()}
    opt = tl.optim.AdamW(model, lr=1e-2, weight_decay=0.1)
    y = np.roll(IDS, -1, axis=1)
    for _ in range(2):                               # B moves first, then A gets a gradient too
        model(IDS, y)[1].backward()
        opt.step()
        opt.zero_grad()
    for n, p in model.named_parameters():
        changed = not np.array_equal(p.data, snap[n])
        assert changed == n.endswith(("lora_A", "lora_B")), n


def test_merged_and_unmerged_outputs_agree_and_names_return():
    model = small_gpt(seed=2, dtype=np.float64)
    base_names = list(model.state_dict())
    apply_lora(model, rank=3, alpha=5, target="all")       # includes nothing tied: lm_head skipped
    rng = np.random.default_rng(5)
    for _, p in lora_parameters(model):
        p.data[...] = rng.standard_normal(p.shape) * 0.1
    unmerged = model(IDS).numpy()
    merge_lora(model, unfreeze=True)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert list(model.state_dict()) == base_names
    assert all(p.requires_grad for p in model.parameters())
    np.testing.assert_allclose(model(IDS).numpy(), unmerged, rtol=1e-10, atol=1e-10)


def test_lora_on_classifier_keeps_head_trainable():
    clf = GPTClassifier(small_gpt(), num_classes=3)
    report = apply_lora(clf, rank=2, alpha=4, keep_trainable=("head",))
    trainable = {n for n, p in clf.named_parameters() if p.requires_grad}
    assert {"head.weight", "head.bias"} <= trainable
    assert all(n.startswith("head.") or "lora_" in n for n in trainable)
    assert report.trainable == clf.num_parameters(trainable_only=True)


def test_no_matching_target_is_an_error():
    with pytest.raises(ValueError, match="no Linear layer matches"):
        apply_lora(small_gpt(), target=("nonexistent",))
    with pytest.raises(ValueError, match="rank"):
        LoRALinear(Linear(3, 3), rank=0, alpha=1)


def test_gradcheck_lora_linear():
    rng = np.random.default_rng(3)
    base = Linear(5, 4, dtype=np.float64, rng=0)
    lora = LoRALinear(base, rank=2, alpha=3.0, rng=1)
    lora.lora_B.data[...] = rng.standard_normal((2, 4))
    x = rng.standard_normal((2, 3, 5))
    np.testing.assert_allclose(lora(x).numpy(), lora_linear(ag.Tensor(x), lora.weight, lora.bias, lora.lora_A,
                                                            lora.lora_B, lora.scale).numpy())
    inputs = [ag.Tensor(a.copy(), requires_grad=True)
              for a in (x, lora.weight.data, lora.bias.data, lora.lora_A.data, lora.lora_B.data)]
    assert ag.gradcheck(lambda x, w, b, a, bb: lora_linear(x, w, b, a, bb, lora.scale), inputs)


@pytest.mark.parametrize("family,extra", [("llama", {}), ("qwen3", dict(n_experts=3, moe_hidden=8)),
                                          ("gemma3", {})])
def test_lora_wraps_the_projections_of_every_family(family, extra):
    cfg = tl.GPTConfig(family=family, vocab_size=40, context_length=12, n_layer=2, n_head=2, n_kv_heads=1,
                       n_embd=16, ffn_hidden=24, **extra)
    model = tl.GPT(cfg, seed=0, dtype=np.float64)
    before = model(IDS).numpy()
    report = apply_lora(model, rank=2, alpha=4)
    names = set(report.replaced)
    assert {"blocks.0.attn.qkv", "blocks.0.attn.proj"} <= names
    mlp = [f"blocks.1.ffn.experts.2.{n}" for n in ("gate", "up", "proj")] if extra else ["blocks.1.ffn.gate",
                                                                                         "blocks.1.ffn.up"]
    assert set(mlp) <= names and not any("router" in n for n in names)
    np.testing.assert_array_equal(model(IDS).numpy(), before)
    for _, p in lora_parameters(model):
        p.data[...] = np.random.default_rng(1).normal(0, 0.3, p.shape)
    tuned = model(IDS).numpy()
    assert not np.allclose(tuned, before)
    merge_lora(model)
    np.testing.assert_allclose(model(IDS).numpy(), tuned, atol=1e-10)


def test_lora_on_gpt2_fc_runs_through_the_fused_bias_gelu():
    """GPT-2's MLP fuses fc's bias into the GELU (fc.project): a LoRA fc changes the output through that path."""
    model = small_gpt(dtype=np.float64)
    before = model(IDS).numpy()
    apply_lora(model, rank=2, alpha=4, target=("fc",))
    model.blocks[0].ffn.fc.lora_B.data[...] = 0.5
    assert not np.allclose(model(IDS).numpy(), before)
