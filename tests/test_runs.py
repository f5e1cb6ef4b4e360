"""Run folders a user can trust: no run overwrites another, one run per folder at a time, resume finds the newest
complete checkpoint, changed settings on resume are refused or announced, signals save, stale temporaries go,
every config field is validated."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tinygrad_llm.train import CheckpointError, ConfigError, Trainer, TrainConfig, load_checkpoint, read_metrics

ROOT = Path(__file__).resolve().parents[1]


def _text(n_lines: int = 300, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    words = ["the cat", "a dog", "sees", "eats", "the mat.", "a bone.", "my bird", "the moon."]
    return "\n".join(" ".join(rng.choice(words, 3)) for _ in range(n_lines))


def _cfg(out, **kw) -> TrainConfig:
    base = dict(preset="micro", model={"n_layer": 1, "n_head": 2, "n_embd": 32, "dropout": 0.1},
                tokenizer="char", block_size=16, batch_size=4, max_steps=6, lr=3e-3, warmup=2, eval_every=0,
                eval_iters=2, sample_every=0, sample_tokens=0, checkpoint_every=2, keep_last=5,
                out_dir=str(out), progress=False, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def _quiet(msg: str) -> None:
    pass


def _params(trainer) -> dict[str, bytes]:
    return {k: np.asarray(v).tobytes() for k, v in trainer.model.state_dict().items()}


# ---------------------------------------------------------------------------------------------- 1: fresh run
def test_a_fresh_run_does_not_write_into_a_folder_holding_another_run(tmp_path):
    text = _text()
    Trainer(_cfg(tmp_path, max_steps=6), text=text, log=_quiet).train()
    old_metrics = (tmp_path / "metrics.jsonl").read_text()
    with pytest.raises(ValueError, match="--resume.*--overwrite"):
        Trainer(_cfg(tmp_path, max_steps=2), text=text, log=_quiet)
    assert (tmp_path / "metrics.jsonl").read_text() == old_metrics          # nothing touched
    assert load_checkpoint(tmp_path).step == 6


def test_overwrite_replaces_the_old_run_entirely(tmp_path):
    text = _text()
    Trainer(_cfg(tmp_path, max_steps=6), text=text, log=_quiet).train()
    Trainer(_cfg(tmp_path, max_steps=2, overwrite=True), text=text, log=_quiet).train()
    steps = sorted(p.name for p in tmp_path.glob("step_*"))
    assert steps == ["step_000002"]                                           # none of the old run's left
    assert load_checkpoint(tmp_path).step == 2
    assert max(r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")) == 2


def test_resume_auto_into_a_new_folder_starts_a_fresh_run(tmp_path):
    summary = Trainer(_cfg(tmp_path / "new", max_steps=2, resume="auto"), text=_text(), log=_quiet).train()
    assert summary["step"] == 2 and load_checkpoint(tmp_path / "new").step == 2


def test_resume_and_overwrite_together_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="overwrite"):
        _cfg(tmp_path, resume="auto", overwrite=True).validate()


# ---------------------------------------------------------------------------------------------- 2: lock
def test_two_runs_in_one_folder_at_once_are_refused_naming_the_other(tmp_path):
    text = _text()
    first = Trainer(_cfg(tmp_path), text=text, log=_quiet)
    with pytest.raises(ValueError) as e:
        Trainer(_cfg(tmp_path, overwrite=True), text=text, log=_quiet)
    msg = str(e.value)
    assert f"pid {os.getpid()}" in msg and socket.gethostname() in msg
    first.train()                                     # the first run is unharmed and releases the folder
    Trainer(_cfg(tmp_path, resume="auto", max_steps=7), text=text, log=_quiet).train()


def test_the_lock_is_released_when_a_trainer_cannot_be_built(tmp_path):
    with pytest.raises(ValueError, match="too short"):
        Trainer(_cfg(tmp_path, block_size=64), text="abc " * 20, log=_quiet)
    Trainer(_cfg(tmp_path, max_steps=1, overwrite=True), text=_text(), log=_quiet).train()


# ---------------------------------------------------------------------------------------------- 3: dangling latest
def test_resume_with_a_dangling_latest_takes_the_newest_complete_checkpoint(tmp_path):
    import shutil
    text = _text()
    Trainer(_cfg(tmp_path, max_steps=6), text=text, log=_quiet).train()
    shutil.rmtree(tmp_path / "step_000006")                # the user deleted a damaged checkpoint
    said: list[str] = []
    tr = Trainer(_cfg(tmp_path, resume="auto"), text=text, log=said.append)
    assert tr.step == 4
    assert any("step_000006" in m and "step_000004" in m for m in said), said
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl") if "loss" in r] == [1, 2, 3, 4]
    tr.train()
    assert load_checkpoint(tmp_path).step == 6


# ---------------------------------------------------------------------------------------------- 4: resume changes
@pytest.mark.parametrize("change", [dict(model={"n_layer": 2, "n_head": 2, "n_embd": 32, "dropout": 0.1}),
                                    dict(model={"n_layer": 1, "n_head": 2, "n_embd": 32, "dropout": 0.2}),
                                    dict(preset="tiny"), dict(tokenizer="bpe"), dict(vocab_size=300),
                                    dict(batch_size=2), dict(seed=4)])
def test_resume_refuses_a_changed_architecture_tokenizer_or_data(tmp_path, change):
    text = _text()
    Trainer(_cfg(tmp_path, max_steps=2), text=text, log=_quiet).train()
    field = next(iter(change))
    with pytest.raises(ConfigError, match=f"{field}.*cannot change on resume"):
        Trainer(_cfg(tmp_path, resume="auto", **change), text=text, log=_quiet)


def test_resume_announces_a_changed_schedule_and_allows_the_documented_fields(tmp_path):
    text = _text()
    Trainer(_cfg(tmp_path, max_steps=4), text=text, log=_quiet).train()
    said: list[str] = []
    tr = Trainer(_cfg(tmp_path, resume="auto", max_steps=8, eval_every=3, keep_last=2), text=text,
                 log=said.append)
    assert tr.step == 4
    assert any("schedule" in m and "max_steps 4 -> 8" in m for m in said), said
    tr.train()
    assert load_checkpoint(tmp_path).step == 8


# ---------------------------------------------------------------------------------------------- 5: signals
_SIGNAL_SCRIPT = r"""
import signal, sys
import numpy as np
from tinygrad_llm.train import Trainer, TrainConfig
sig = getattr(signal, sys.argv[2])
words = ["the cat", "a dog", "sees", "eats", "the mat.", "a bone."]
rng = np.random.default_rng(0)
text = "\n".join(" ".join(rng.choice(words, 3)) for _ in range(300))
cfg = TrainConfig(preset="micro", model={"n_layer": 1, "n_head": 2, "n_embd": 32}, tokenizer="char", block_size=16,
                  batch_size=4, max_steps=50, eval_every=0, eval_iters=2, sample_tokens=0, checkpoint_every=0,
                  out_dir=sys.argv[1], progress=False)
def at_3(trainer, record):
    if record["step"] == 3:
        signal.raise_signal(sig)
s = Trainer(cfg, text=text, callbacks=[at_3], log=print).train()
print("summary", s["step"], s["interrupted"])
"""


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_save_a_checkpoint_like_ctrl_c(tmp_path, sig):
    r = subprocess.run([sys.executable, "-c", _SIGNAL_SCRIPT, str(tmp_path / "run"), sig], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "summary 3 True" in r.stdout
    assert load_checkpoint(tmp_path / "run").step == 3


def test_real_sigterm_in_process_restores_the_handlers(tmp_path):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}

    def term_at_2(trainer, record):
        if record["step"] == 2:
            signal.raise_signal(signal.SIGINT)

    summary = Trainer(_cfg(tmp_path), text=_text(), callbacks=[term_at_2], log=_quiet).train()
    assert summary["interrupted"] and summary["step"] == 2 and summary["signal"] == "SIGINT"
    assert {s: signal.getsignal(s) for s in before} == before


# ---------------------------------------------------------------------------------------------- 6: stale temporaries
def test_stale_partial_checkpoints_are_removed_at_start(tmp_path):
    text = _text()
    Trainer(_cfg(tmp_path, max_steps=2), text=text, log=_quiet).train()
    stale = tmp_path / ".step_000004.k2j3.tmp"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"\0" * 1000)
    (tmp_path / ".latest.abc.tmp").write_text("step_000004\n")
    said: list[str] = []
    Trainer(_cfg(tmp_path, resume="auto", max_steps=3), text=text, log=said.append)
    assert not stale.exists() and not (tmp_path / ".latest.abc.tmp").exists()
    assert any(".step_000004.k2j3.tmp" in m for m in said), said


# ---------------------------------------------------------------------------------------------- 7: validation
@pytest.mark.parametrize("field,value", [
    ("min_lr", -1.0), ("epochs", 0), ("epochs", -3), ("checkpoint_every", -1), ("eval_every", -2),
    ("sample_every", -1), ("stride", 0), ("sample_tokens", -5), ("grad_clip", -1.0), ("weight_decay", -0.1),
    ("eps", 0.0), ("betas", (0.9, 1.5)), ("seed", -1), ("vocab_size", 0), ("device", "tpu"), ("dtype", "int8"),
    ("tokenizer", ""), ("out_dir", ""), ("preset", "gpt-mini"), ("progress", "yes"), ("min_lr", 1.0),
    ("data", 5), ("model", {"n_layer": 0}), ("model", {"n_lyer": 2}), ("sample_prompt", None),
])
def test_every_config_field_is_validated_with_one_clear_message(field, value):
    with pytest.raises(ConfigError, match=field):
        TrainConfig(**{field: value}).validate()


def test_epochs_sets_the_steps(tmp_path):
    tr = Trainer(_cfg(tmp_path, epochs=1), text=_text(), log=_quiet)
    assert tr.config.max_steps == len(tr.train_loader)
    assert tr.config.max_steps != 6


def test_a_hand_edited_checkpoint_with_a_negative_step_is_refused(tmp_path):
    text = _text()
    Trainer(_cfg(tmp_path, max_steps=2), text=text, log=_quiet).train()
    meta_path = tmp_path / "step_000002" / "checkpoint.json"
    meta = json.loads(meta_path.read_text())
    meta["step"] = -7
    meta["state"]["step"] = -7
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="step"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="step"):
        Trainer(_cfg(tmp_path, resume="auto"), text=text, log=_quiet)
    assert not list(tmp_path.glob("step_-*"))


def test_state_step_must_match_the_checkpoint_step(tmp_path):
    text = _text()
    Trainer(_cfg(tmp_path, max_steps=2), text=text, log=_quiet).train()
    meta_path = tmp_path / "step_000002" / "checkpoint.json"
    meta = json.loads(meta_path.read_text())
    meta["state"]["step"] = 9
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="step"):
        Trainer(_cfg(tmp_path, resume="auto"), text=text, log=_quiet)


# ---------------------------------------------------------------------------------------------- 10: smaller
def test_mixed_precision_on_the_cpu_warns(tmp_path):
    said: list[str] = []
    Trainer(_cfg(tmp_path, precision="mixed"), text=_text(), log=said.append)
    assert any("mixed" in m and "CPU" in m for m in said), said


def test_a_folder_corpus_is_read_recursively_and_listed(tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "b" / "c").mkdir(parents=True)
    (corpus / "a.txt").write_text(_text(150, seed=1))
    (corpus / "b" / "c" / "deep.txt").write_text(_text(150, seed=2) + "\nzebra zebra")
    (corpus / "b" / "notes.md").write_text("not a text file")
    said: list[str] = []
    tr = Trainer(_cfg(tmp_path / "out", data=str(corpus)), log=said.append)
    assert tr.tokenizer.encode("zebra")                # a character only the nested file has
    assert any("a.txt" in m and os.path.join("b", "c", "deep.txt") in m for m in said), said


def test_a_bpe_vocabulary_shortfall_is_noted(tmp_path):
    said: list[str] = []
    tr = Trainer(_cfg(tmp_path, tokenizer="bpe", vocab_size=4096), text=_text(), log=said.append)
    assert tr.tokenizer.vocab_size < 4096
    assert any(f"{tr.tokenizer.vocab_size}" in m and "4096" in m for m in said), said


def test_the_final_evaluation_covers_the_whole_validation_split(tmp_path):
    """`tinygrad-llm eval` reads every validation window; so does training's final evaluation (same number)."""
    said: list[str] = []
    tr = Trainer(_cfg(tmp_path, max_steps=2, eval_iters=1), text=_text(), log=said.append)
    summary = tr.train()
    assert len(tr.val_loader) > 1
    assert summary["val_loss"] == pytest.approx(tr.evaluate(iters=len(tr.val_loader))["val_loss"], rel=1e-9)
    assert any("final" in m and f"{len(tr.val_loader.dataset)} windows" in m for m in said), said
