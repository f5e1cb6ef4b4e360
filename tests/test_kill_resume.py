"""kill -9 at random moments and during checkpoint writes, then resume: the run ends bitwise equal to one that was
never interrupted, and its metrics log holds every step once.

Each try starts ``tinygrad-llm``'s Trainer in a child process with ``resume="auto"`` and kills it with SIGKILL
while it starts, at a random point of a random step, or while it writes a checkpoint file (the child announces
each step and each write, and slows writes slightly, so the kill lands inside). ``TINYGRAD_LLM_KILL_TRIES`` sets the number of tries (default 2 here; the
full check is 20: ``TINYGRAD_LLM_KILL_TRIES=20 python -m pytest tests/test_kill_resume.py``).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tinygrad_llm.train import load_checkpoint, read_metrics

ROOT = Path(__file__).resolve().parents[1]
TRIES = int(os.environ.get("TINYGRAD_LLM_KILL_TRIES", "2"))
STEPS = 60

_CHILD = r"""
import sys, time
import numpy as np
from tinygrad_llm.train import Trainer, TrainConfig, checkpoint
out, steps, announce = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
if announce:  # say when a checkpoint file is being written, and make the write take a little while
    real = checkpoint._save_safetensors
    def slow_save(arrays, path):
        print("WRITING", path, flush=True)
        time.sleep(0.01)
        real(arrays, path)
        time.sleep(0.01)
    checkpoint._save_safetensors = slow_save
rng = np.random.default_rng(0)
words = ["the cat", "a dog", "sees", "eats", "the mat.", "a bone.", "my bird", "the moon."]
text = "\n".join(" ".join(rng.choice(words, 3)) for _ in range(300))
cfg = TrainConfig(preset="micro", model={"n_layer": 1, "n_head": 2, "n_embd": 32, "dropout": 0.1}, tokenizer="char",
                  block_size=16, batch_size=4, grad_accum=2, max_steps=steps, lr=3e-3, warmup=3, eval_every=5,
                  eval_iters=2, sample_tokens=0, checkpoint_every=2, keep_last=2, out_dir=out, progress=False,
                  seed=5, resume="auto")
def progress(trainer, record):
    print("STEP", record["step"], flush=True)
Trainer(cfg, text=text, callbacks=[progress], log=lambda m: None).train()
print("DONE", flush=True)
"""


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = env["OPENBLAS_NUM_THREADS"] = "1"
    return env


def _start(out: Path, announce: bool) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _CHILD, str(out), str(STEPS), "1" if announce else "0"],
                            cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _kill_after(p: subprocess.Popen, marker: str, nth: int, delay: float = 0.0) -> bool:
    """Kill the child ``delay`` s after its ``nth`` line starting with ``marker`` (WRITING: inside a checkpoint
    file write; STEP: somewhere in the following step); False when it finished first."""
    seen = 0
    for line in p.stdout:
        if line.startswith(marker):
            seen += 1
            if seen == nth:
                time.sleep(delay)
                p.send_signal(signal.SIGKILL)
                return True
        if line.startswith("DONE"):
            return False
    return False


@pytest.mark.slow
def test_kill_9_at_random_moments_and_during_checkpoint_writes_resumes_bitwise(tmp_path):
    ref = _start(tmp_path / "ref", announce=False)
    assert ref.wait(timeout=300) == 0, ref.stderr.read()
    rng = np.random.default_rng(1234)
    out = tmp_path / "killed"
    kills, in_writes = 0, 0
    for i in range(TRIES):
        during_write = i % 2 == 1
        p = _start(out, announce=during_write)
        if during_write:
            killed = _kill_after(p, "WRITING", int(rng.integers(1, 5)))
        elif i % 4 == 2:  # while starting: importing, reading the checkpoint, building the model
            try:
                p.wait(timeout=float(rng.uniform(0.05, 1.5)))
                killed = False
            except subprocess.TimeoutExpired:
                p.send_signal(signal.SIGKILL)
                killed = True
        else:             # at a random point of a step
            killed = _kill_after(p, "STEP", int(rng.integers(1, 4)), float(rng.uniform(0.0, 0.03)))
        p.wait(timeout=300)
        err = p.stderr.read()
        assert p.returncode in (0, -signal.SIGKILL), err
        kills += killed
        in_writes += killed and during_write
        if not killed:
            break  # the run finished: nothing left to interrupt
    final = _start(out, announce=False)
    assert final.wait(timeout=300) == 0, final.stderr.read()
    print(f"{kills} kills ({in_writes} while writing a checkpoint) in {TRIES} tries; resumed to step {STEPS}")
    assert kills >= min(TRIES, 2)
    a, b = load_checkpoint(tmp_path / "ref"), load_checkpoint(out)
    assert a.step == b.step == STEPS
    for k in a.model:
        assert a.model[k].tobytes() == b.model[k].tobytes(), k
    assert a["rng"]["modules"] == b["rng"]["modules"] and a["loader"] == b["loader"]   # dropout generators, data
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert steps == list(range(1, STEPS + 1))
    assert not [q.name for q in out.iterdir() if q.name.endswith((".tmp", ".old"))]
