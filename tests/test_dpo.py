"""DPO: the loss against its formula, its gradient against central differences (float64, a tiny model), the
prompt masking of sequence log-probabilities, the frozen reference, and short runs on generated preference pairs
that raise the reward margin and accuracy above the untrained baseline (also with LoRA, and from the CLI)."""
import json

import numpy as np
import pytest
from hypothesis import given, strategies as st

import autograd as ag
import tinygrad_llm as tl
from tinygrad_llm.finetune import dpo
from tinygrad_llm.finetune.dpo import (collate_preferences, dpo_loss, frozen_copy, preference_metrics,
                                       sequence_logprobs)
from tinygrad_llm.tokenizer import BPETokenizer


def _np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _tiny(dtype=np.float64, vocab=19, seed=0):
    cfg = tl.GPTConfig(vocab_size=vocab, context_length=16, n_layer=1, n_head=2, n_embd=8, dropout=0.0)
    return tl.GPT(cfg, seed=seed, dtype=dtype)


def _pairs():
    # prompt, chosen continuation, rejected continuation (ids < 19; 18 is the pad / end-of-text)
    return [{"prompt": [1, 2, 3], "chosen": [1, 2, 3, 4, 5], "rejected": [1, 2, 3, 6]},
            {"prompt": [7, 8], "chosen": [7, 8, 9], "rejected": [7, 8, 10, 11, 12]}]


# ------------------------------------------------------------------------------------------------ the loss
@given(st.lists(st.tuples(*[st.floats(-30, 30)] * 4), min_size=1, max_size=6), st.floats(0.01, 2.0))
def test_dpo_loss_matches_the_formula(rows, beta):
    pc, pr, rc, rr = (np.array(c, dtype=np.float64) for c in zip(*rows))
    loss, r_c, r_r = dpo_loss(ag.tensor(pc), ag.tensor(pr), rc, rr, beta)
    z = beta * ((pc - rc) - (pr - rr))
    np.testing.assert_allclose(loss.item(), np.mean(np.logaddexp(0.0, -z)), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(r_c, beta * (pc - rc))
    np.testing.assert_allclose(r_r, beta * (pr - rr))


def test_dpo_loss_is_finite_for_extreme_margins():
    loss, _, _ = dpo_loss(ag.tensor([1e4, -1e4]), ag.tensor([0.0, 0.0]), np.zeros(2), np.zeros(2), beta=1.0)
    assert np.isfinite(loss.item()) and abs(loss.item() - 1e4 / 2) < 1e-6
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(ag.tensor([0.0]), ag.tensor([0.0]), np.zeros(1), np.zeros(1), beta=0.0)


def test_dpo_loss_gradient_where_training_starts():
    # policy == reference: z = 0, d loss / d pi_c = -beta sigmoid(0) / B (a kink here would stall training)
    pc, pr = ag.tensor([0.3, -1.0], requires_grad=True), ag.tensor([0.1, 2.0], requires_grad=True)
    dpo_loss(pc, pr, pc.data.copy(), pr.data.copy(), beta=0.2)[0].backward()
    np.testing.assert_allclose(pc.grad.data, [-0.05, -0.05], rtol=1e-6)
    np.testing.assert_allclose(pr.grad.data, [0.05, 0.05], rtol=1e-6)
    assert ag.gradcheck(lambda c, r: dpo_loss(c, r, [0.3, -1.0], [0.1, 2.0], 0.2)[0], [pc.data, pr.data])


@given(st.integers(1, 4), st.floats(0.05, 3.0))
def test_dpo_loss_gradcheck_on_log_probs(b, beta):
    rng = np.random.default_rng(b)
    pc, pr, rc, rr = (rng.normal(size=b) * 3 for _ in range(4))
    assert ag.gradcheck(lambda c, r: dpo_loss(c, r, rc, rr, beta)[0], [pc, pr])


def test_dpo_loss_gradcheck_through_logits_of_a_tiny_model():
    model = _tiny()
    batch = collate_preferences(_pairs(), pad_id=18)
    with ag.no_grad():
        ref = sequence_logprobs(frozen_copy(model), batch["inputs"], batch["targets"]).data
        logits = model(batch["inputs"]).data + np.random.default_rng(1).normal(size=(4, 5, 19))
    b = batch["pairs"]

    def fn(lg):
        pi = sequence_logprobs(None, None, batch["targets"], logits=lg)
        return dpo_loss(pi[:b], pi[b:], ref[:b], ref[b:], beta=0.5)[0]
    assert ag.gradcheck(fn, [logits])


def test_dpo_gradient_of_model_parameters_matches_central_differences():
    model = _tiny()
    reference = frozen_copy(model)
    rng = np.random.default_rng(0)
    for p in model.parameters():                      # move the policy away from the reference
        p.data += rng.normal(scale=0.05, size=p.shape)
    batch = collate_preferences(_pairs(), pad_id=18)
    objective = dpo._Objective(model, reference, beta=0.3, average=False)
    loss = objective(batch)[0]
    loss.backward()
    for name, p in list(model.named_parameters())[::3]:
        d = rng.normal(size=p.shape)
        analytic = float((p.grad.data * d).sum())
        eps, base = 1e-6, p.data.copy()
        p.data[...] = base + eps * d
        up = objective(batch)[0].item()
        p.data[...] = base - eps * d
        down = objective(batch)[0].item()
        p.data[...] = base
        numeric = (up - down) / (2 * eps)
        assert abs(analytic - numeric) <= 1e-6 + 1e-4 * abs(numeric), (name, analytic, numeric)


# ------------------------------------------------------------------------------------------------ masking
def test_sequence_logprobs_count_only_response_tokens():
    model = _tiny()
    pairs = _pairs()
    batch = collate_preferences(pairs, pad_id=18)
    x, y = batch["inputs"], batch["targets"]
    assert x.shape == (4, 5) and batch["pairs"] == 2
    got = sequence_logprobs(model, x, y).data
    with ag.no_grad():
        lp = _np_log_softmax(model(x).data)
    rows = [pairs[0]["chosen"], pairs[1]["chosen"], pairs[0]["rejected"], pairs[1]["rejected"]]
    prompts = [3, 2, 3, 2]
    for i, (seq, n_prompt) in enumerate(zip(rows, prompts)):
        full = seq + [18]                              # the end-of-text after the response counts
        want = sum(lp[i, t - 1, full[t]] for t in range(n_prompt, len(full)))
        np.testing.assert_allclose(got[i], want, rtol=1e-10)
    avg = sequence_logprobs(model, x, y, average=True).data
    np.testing.assert_allclose(avg, got / np.array([3, 2, 2, 4]), rtol=1e-10)


def test_frozen_reference_is_a_copy_without_gradients():
    model = _tiny(np.float32)
    ref = frozen_copy(model)
    assert ref.num_parameters(trainable_only=True) == 0 and not ref.training
    x = np.array([[1, 2, 3]])
    np.testing.assert_array_equal(ref(x).data, model(x).data)
    next(iter(model.parameters())).data += 1.0           # training the policy does not move the reference
    assert not np.array_equal(ref(x).data, model(x).data)


def test_preference_metrics():
    m = preference_metrics(np.array([1.0, 0.0, 2.0]), np.array([0.0, 1.0, 1.0]))
    assert m["reward_margin"] == pytest.approx(1 / 3) and m["reward_accuracy"] == pytest.approx(2 / 3)
    assert m["chosen_reward"] == pytest.approx(1.0) and m["rejected_reward"] == pytest.approx(2 / 3)


def test_preference_dataset_uses_the_instruction_prompt():
    tok = BPETokenizer.train("Describe the word. apple is good. bad", 300)
    rec = {"instruction": "Describe the word.", "input": "apple", "chosen": "apple is good.",
           "rejected": "apple is bad."}
    item = dpo.PreferenceDataset([rec], tok)[0]
    prompt = tl.finetune.format_input(rec) + tl.finetune.instruct.RESPONSE_HEADER
    assert item["prompt"] == tok.encode(prompt)
    assert tok.decode(item["chosen"]) == prompt + "apple is good."
    assert tok.decode(item["rejected"]) == prompt + "apple is bad."


def test_load_preference_data_errors(tmp_path):
    p = tmp_path / "p.json"
    p.write_text(json.dumps([{"instruction": "x", "chosen": "a"}]))
    with pytest.raises(ValueError, match="record 0 needs string fields \\['rejected'\\]"):
        dpo.load_preference_data(p)
    p.write_text("{not json")
    with pytest.raises(ValueError, match="neither a JSON list"):
        dpo.load_preference_data(p)
    with pytest.raises(FileNotFoundError, match="not found"):
        dpo.load_preference_data(tmp_path / "missing.json")
    p.write_text("\n".join(json.dumps(r) for r in dpo.demo_preferences(3)))      # JSON Lines
    assert len(dpo.load_preference_data(p)) == 3


# ------------------------------------------------------------------------------------------------ training
@pytest.fixture(scope="module")
def prefs(tmp_path_factory):
    return dpo.write_demo_preferences(tmp_path_factory.mktemp("dpo") / "prefs.json", n=48)


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_dpo_raises_margin_and_accuracy_above_the_untrained_baseline(prefs, tmp_path, lora_rank):
    logs = []
    res = dpo.run_dpo(prefs, preset="micro", out_dir=str(tmp_path / "out"), epochs=2, batch_size=8,
                      lr=3e-3 if lora_rank else 1e-3, beta=0.5, context_length=64, lora_rank=lora_rank,
                      log=logs.append)
    before, after = res["before"], res["after"]
    assert before["val_reward_margin"] == 0.0 and before["val_reward_accuracy"] == 0.0   # policy == reference
    assert after["val_reward_margin"] > 0.1 and after["val_reward_accuracy"] > 0.5
    assert after["val_loss"] < before["val_loss"]
    assert any("reward_margin" in line and line.startswith("step 1:") for line in logs)
    assert {"loss", "reward_margin", "reward_accuracy", "chosen_reward", "rejected_reward"} <= set(res["steps"][0])
    # the checkpoint is a fine-tuning checkpoint (LoRA merged) that loads back to the same model
    model, tok = tl.finetune.load_base(checkpoint=res["path"], log=lambda s: None)
    assert not any("lora" in n for n, _ in model.named_parameters())
    x = np.array([tok.encode("Describe the word.")])
    np.testing.assert_allclose(model(x).data, res["model"](x).data, rtol=1e-5, atol=1e-6)
    ck = tl.train.checkpoint.load_checkpoint(res["path"]) if hasattr(tl, "train") else None
    if ck is not None:
        assert ck["dpo"]["beta"] == 0.5 and ck["dpo"]["lora_rank"] == lora_rank


def test_dpo_cli_demo(tmp_path, capsys):
    from tinygrad_llm.cli import main
    code = main(["finetune", "dpo", "--demo", "--out-dir", str(tmp_path / "o"), "--steps", "3",
                 "--batch-size", "4", "--log-every", "0", "--context-length", "64"])
    assert code == 0
    assert "validation reward margin" in capsys.readouterr().out
    assert main(["finetune", "dpo", "--data", str(tmp_path / "missing.json"), "--preset", "micro"]) == 2
    # --init-from also takes a fine-tuning output folder (the instruction-tuned checkpoint the book starts from)
    data = dpo.write_demo_preferences(tmp_path / "p.json", n=16)
    assert main(["finetune", "dpo", "--data", data, "--init-from", str(tmp_path / "o"), "--steps", "1",
                 "--batch-size", "4", "--out-dir", str(tmp_path / "o2"), "--log-every", "0"]) == 0
