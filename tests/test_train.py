"""Trainer: loss goes down, bitwise exact resume, Ctrl-C saves, metrics log, bad checkpoints change nothing."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tinygrad_llm.train import CheckpointError, Trainer, TrainConfig, load_checkpoint, read_metrics
from tinygrad_llm.train.metrics import MetricsLog


def _text(n_lines: int = 300, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    subjects, verbs, objects = ["the cat", "a dog", "my bird", "one fox"], ["sees", "eats", "likes"], \
        ["the mat.", "a bone.", "some seed.", "the moon."]
    return "\n".join(f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}" for _ in range(n_lines))


def _cfg(tmp_path, **kw) -> TrainConfig:
    base = dict(preset="micro", model={"n_layer": 1, "n_head": 2, "n_embd": 32, "dropout": 0.1},
                tokenizer="char", block_size=16, batch_size=4, max_steps=6, lr=3e-3, warmup=2, eval_every=3,
                eval_iters=2, sample_every=0, sample_tokens=0, checkpoint_every=0, keep_last=5,
                out_dir=str(tmp_path), progress=False, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def _params(trainer) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in trainer.model.state_dict().items()}


def _assert_bitwise(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), f"{k} differs"


def test_loss_goes_down(tmp_path):
    text = _text()
    tr = Trainer(_cfg(tmp_path, max_steps=40, eval_every=0, model={"n_layer": 1, "n_head": 2, "n_embd": 32},
                      lr=1e-2), text=text, log=lambda m: None)
    first = tr.evaluate()["val_loss"]
    summary = tr.train()
    assert summary["val_loss"] < first - 0.5
    assert summary["step"] == 40 and not summary["interrupted"]


def test_exact_resume_bitwise(tmp_path):
    text = _text()
    a = Trainer(_cfg(tmp_path / "a", checkpoint_every=3, grad_accum=2), text=text, log=lambda m: None)
    a.train()
    # resume from the step-3 checkpoint of run a, in a fresh trainer, and run to the end
    b = Trainer(_cfg(tmp_path / "b", grad_accum=2, resume=str(tmp_path / "a" / "step_000003")), text=text,
                log=lambda m: None)
    assert b.step == 3
    b.train()
    _assert_bitwise(_params(a), _params(b))
    sa = load_checkpoint(tmp_path / "a").state["optimizer"]["state"]
    sb = load_checkpoint(tmp_path / "b").state["optimizer"]["state"]
    for i in sa:
        for k, v in sa[i].items():
            assert np.asarray(v).tobytes() == np.asarray(sb[i][k]).tobytes()


def test_ctrl_c_saves_and_resume_matches(tmp_path):
    text = _text()
    full = Trainer(_cfg(tmp_path / "full"), text=text, log=lambda m: None)
    full.train()

    def stop_at_2(trainer, record):
        if record["step"] == 2:
            raise KeyboardInterrupt

    cut = Trainer(_cfg(tmp_path / "cut"), text=text, callbacks=[stop_at_2], log=lambda m: None)
    summary = cut.train()
    assert summary["interrupted"] and summary["step"] == 2
    assert load_checkpoint(tmp_path / "cut").step == 2
    resumed = Trainer(_cfg(tmp_path / "cut", resume="auto"), text=text, log=lambda m: None)
    assert resumed.step == 2
    resumed.train()
    _assert_bitwise(_params(full), _params(resumed))
    # the resumed log reads as one history: steps 1..6, each once
    steps = [r["step"] for r in read_metrics(tmp_path / "cut" / "metrics.jsonl") if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_interrupt_inside_a_step_rolls_back(tmp_path, monkeypatch):
    text = _text()
    full = Trainer(_cfg(tmp_path / "full"), text=text, log=lambda m: None)
    full.train()
    tr = Trainer(_cfg(tmp_path / "mid"), text=text, log=lambda m: None)
    real = tr.optimizer.step
    calls = {"n": 0}

    def step_then_interrupt():
        calls["n"] += 1
        if calls["n"] == 4:  # Ctrl-C after the 4th step's backward, before its update
            raise KeyboardInterrupt
        real()
    monkeypatch.setattr(tr.optimizer, "step", step_then_interrupt)
    assert tr.train()["step"] == 3
    resumed = Trainer(_cfg(tmp_path / "mid", resume="auto"), text=text, log=lambda m: None)
    resumed.train()
    _assert_bitwise(_params(full), _params(resumed))


def test_metrics_log_lines(tmp_path):
    Trainer(_cfg(tmp_path), text=_text(), log=lambda m: None).train()
    recs = read_metrics(tmp_path / "metrics.jsonl")
    train = [r for r in recs if "loss" in r]
    assert [r["step"] for r in train] == list(range(1, 7))
    for r in train:
        assert {"step", "loss", "lr", "tokens_per_s", "time"} <= r.keys()
    evals = [r for r in recs if "val_loss" in r]
    assert [r["step"] for r in evals] == [3, 6]
    assert all(abs(r["val_ppl"] - np.exp(r["val_loss"])) < 1e-6 * r["val_ppl"] for r in evals)


def test_metrics_log_torn_line_and_resume(tmp_path):
    p = tmp_path / "m.jsonl"
    with MetricsLog(p) as log:
        for s in range(1, 5):
            log.log(step=s, loss=1.0 / s, lr=0.1, val_loss=float("nan") if s == 4 else None)
    with open(p, "a") as f:
        f.write('{"step": 5, "lo')  # a crash mid-write
    assert [r["step"] for r in read_metrics(p)] == [1, 2, 3, 4]
    assert json.loads(p.read_text().splitlines()[3])["val_loss"] == "nan"
    MetricsLog(p, resume_step=2).close()
    assert [r["step"] for r in read_metrics(p)] == [1, 2]


def test_bad_checkpoint_changes_nothing(tmp_path):
    text = _text()
    tr = Trainer(_cfg(tmp_path, max_steps=2), text=text, log=lambda m: None)
    tr.train()
    before, step = _params(tr), tr.step
    ck = tmp_path / "step_000002"
    data = (ck / "optimizer.safetensors").read_bytes()
    (ck / "optimizer.safetensors").write_bytes(data[:-10])
    with pytest.raises(CheckpointError, match="optimizer.safetensors"):
        tr.load_state(str(ck))
    # a checkpoint of a different model: refused before anything is written
    other = Trainer(_cfg(tmp_path / "other", max_steps=1, model={"n_layer": 1, "n_head": 2, "n_embd": 16}),
                    text=text, log=lambda m: None)
    other.train()
    with pytest.raises(CheckpointError, match="do not match"):
        tr.load_state(str(tmp_path / "other"))
    _assert_bitwise(before, _params(tr))
    assert tr.step == step


def test_too_short_corpus(tmp_path):
    with pytest.raises(ValueError, match="too short"):
        Trainer(_cfg(tmp_path, block_size=64), text="abc " * 20, log=lambda m: None)


def test_real_sigint_stops_after_the_step(tmp_path):
    import signal

    def ctrl_c_at_2(trainer, record):
        if record["step"] == 2:
            signal.raise_signal(signal.SIGINT)  # the trainer's handler only sets a flag

    before = signal.getsignal(signal.SIGINT)
    tr = Trainer(_cfg(tmp_path), text=_text(), callbacks=[ctrl_c_at_2], log=lambda m: None)
    summary = tr.train()
    assert summary["interrupted"] and summary["step"] == 2
    assert load_checkpoint(tmp_path).step == 2
    assert signal.getsignal(signal.SIGINT) is before  # handler restored


@pytest.mark.gpu
def test_training_steps_on_the_gpu_match_the_cpu(tmp_path):
    """Three trainer steps (forward, backward, clipping, AdamW) on CuPy give the CPU's parameters (float32, TF32
    off: only the order of float32 sums differs), and the GPU run's checkpoint loads into a CPU trainer."""
    text = _text()
    kw = dict(max_steps=3, eval_every=0, model={"n_layer": 1, "n_head": 2, "n_embd": 32, "dropout": 0.0},
              precision="fp32")
    cpu = Trainer(_cfg(tmp_path / "cpu", **kw), text=text, log=lambda m: None)
    gpu = Trainer(_cfg(tmp_path / "gpu", device="cuda", **kw), text=text, log=lambda m: None)
    cpu.train()
    gpu.train()
    for (name, p), (_, q) in zip(cpu.model.named_parameters(), gpu.model.named_parameters()):
        np.testing.assert_allclose(q.numpy(), p.numpy(), rtol=1e-4, atol=1e-5, err_msg=name)
    back = Trainer(_cfg(tmp_path / "back", resume=str(tmp_path / "gpu"), **kw), text=text, log=lambda m: None)
    assert back.step == 3
    _assert_bitwise(_params(back), {k: np.asarray(v) for k, v in
                                    ((k, gpu.model.state_dict()[k].get()) for k in gpu.model.state_dict())})
