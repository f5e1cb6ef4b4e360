"""The command line around long runs: one-line user errors (exit 2), resume rules, the launcher's command forms,
signals under launch, a frozen rank reported early, the classifier's predict command, defaults in --help."""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from test_cli import _corpus, _err, trained  # noqa: F401  (trained: a module fixture, a trained run)
from test_distributed import _env
from tinygrad_llm.cli import main
from tinygrad_llm.train import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--preset", "micro", "--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--tokenizer", "char",
        "--block-size", "16", "--batch-size", "4", "--steps", "4", "--eval-every", "2", "--eval-iters", "2",
        "--sample-tokens", "0", "--no-progress"]


# ---------------------------------------------------------------------------------------------- 1, 4: CLI rules
def test_training_twice_into_one_folder_is_one_clear_error(trained, capsys):
    _, data, out = trained
    err = _err(capsys, ["train", *TINY, "--data", str(data), "--out-dir", str(out)])
    assert "--resume" in err and "--overwrite" in err


@pytest.mark.parametrize("flag,value", [("--n-layer", "2"), ("--dropout", "0.2"), ("--preset", "tiny"),
                                        ("--tokenizer", "bpe"), ("--vocab-size", "300")])
def test_resume_with_a_changed_model_or_tokenizer_flag_is_refused(trained, capsys, flag, value):
    _, _, out = trained
    err = _err(capsys, ["train", "--resume", "--out-dir", str(out), "--no-progress", flag, value])
    assert "cannot change on resume" in err and flag.lstrip("-").replace("-", "_") in err


def test_resume_with_more_steps_announces_the_schedule_change(tmp_path, capsys):
    data = _corpus(tmp_path)
    out = tmp_path / "o"
    assert main(["train", *TINY, "--data", str(data), "--out-dir", str(out)]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", "--steps", "6", "--out-dir", str(out), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "max_steps 4 -> 6" in captured.out + captured.err


def test_resume_with_a_dangling_latest_from_the_command_line(tmp_path, capsys):
    import shutil
    data = _corpus(tmp_path)
    out = tmp_path / "o"
    assert main(["train", *TINY, "--checkpoint-every", "2", "--data", str(data), "--out-dir", str(out)]) == 0
    shutil.rmtree(out / "step_000004")
    capsys.readouterr()
    assert main(["train", "--resume", "--steps", "5", "--out-dir", str(out), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "resuming at step 2" in captured.err
    assert load_checkpoint(out).step == 5


# ---------------------------------------------------------------------------------------------- 7: numbers
def test_the_start_line_shows_the_steps_epochs_give(tmp_path, capsys):
    data = _corpus(tmp_path)
    args = [a for a in TINY]
    i = args.index("--steps")
    del args[i:i + 2]
    assert main(["train", *args, "--epochs", "1", "--eval-every", "0", "--data", str(data),
                 "--out-dir", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    steps = load_checkpoint(tmp_path / "o").step
    assert f" {steps} steps of" in err and steps != 600


@pytest.mark.parametrize("argv", [["--min-lr", "-1"], ["--epochs", "0"], ["--checkpoint-every", "-1"],
                                  ["--eval-every", "-2"], ["--stride", "0"]])
def test_numbers_that_would_do_something_else_are_refused(tmp_path, capsys, argv):
    data = _corpus(tmp_path)
    err = _err(capsys, ["train", *TINY, *argv, "--data", str(data), "--out-dir", str(tmp_path / "o")])
    assert argv[0].lstrip("-").replace("-", "_") in err


@pytest.mark.parametrize("argv", [["--num-samples", "0"], ["--temperature", "-1"], ["--top-k", "0"],
                                  ["--top-p", "1.5"]])
def test_generate_refuses_useless_numbers(trained, capsys, argv):
    _, _, out = trained
    assert argv[0] in _err(capsys, ["generate", "--checkpoint", str(out), *argv])


# ---------------------------------------------------------------------------------------------- 8: user errors
def test_cuda_without_a_gpu_is_a_user_error(tmp_path, capsys):
    from autograd import backend
    if backend.cuda_available():
        pytest.skip("a GPU is present")
    data = _corpus(tmp_path)
    err = _err(capsys, ["train", *TINY, "--device", "cuda", "--data", str(data), "--out-dir", str(tmp_path / "o")])
    assert "cuda" in err
    assert not (tmp_path / "o" / "metrics.jsonl").exists()


def test_a_distributed_timeout_is_a_user_error(tmp_path, capsys, monkeypatch):
    from tinygrad_llm.distributed import DistributedTimeoutError
    from tinygrad_llm.train import commands

    def timeout(cfg):
        raise DistributedTimeoutError("all_reduce timed out after 5 s on rank 1 of 2 (tcp): a peer died or hangs")
    monkeypatch.setattr(commands, "_distributed", timeout)
    assert "timed out" in _err(capsys, ["train", *TINY, "--out-dir", str(tmp_path / "o")])


def test_a_misspelled_command_under_launch_is_a_cli_message(capsys):
    err = _err(capsys, ["launch", "--nproc", "2", "trian", "--steps", "2"])
    assert "trian" in err and "train" in err
    err = _err(capsys, ["launch", "--nproc", "2", "--", "tinygrad-llm", "trian"])
    assert "trian" in err and "train" in err
    assert "nope.py" in _err(capsys, ["launch", "--nproc", "2", "nope.py"])


_COMMON = ["--preset", "micro", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--tokenizer", "char",
           "--block-size", "8", "--batch-size", "2", "--eval-every", "0", "--sample-tokens", "0", "--no-progress"]


def test_launch_runs_the_tinygrad_llm_command_form(tmp_path):
    data = _corpus(tmp_path)
    r = subprocess.run([sys.executable, "-m", "tinygrad_llm", "launch", "--nproc", "2", "--", "tinygrad-llm",
                        "train", *_COMMON, "--steps", "2", "--data", str(data), "--out-dir", str(tmp_path / "dp")],
                       cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert load_checkpoint(tmp_path / "dp")["loader"]["world_size"] == 2


_RANK_SIGNAL = r"""
import os, signal, sys
import numpy as np
from tinygrad_llm.distributed import init_distributed
from tinygrad_llm.train import Trainer, TrainConfig
comm = init_distributed()
rng = np.random.default_rng(0)
text = "\n".join(" ".join(rng.choice(["alpha", "beta", "gamma", "is", "the"], 6)) for _ in range(200))
cfg = TrainConfig(preset="micro", model={"n_layer": 1, "n_head": 2, "n_embd": 16}, tokenizer="char", block_size=8,
                  batch_size=2, max_steps=200, eval_every=0, eval_iters=1, sample_tokens=0, checkpoint_every=0,
                  out_dir=sys.argv[1], progress=False)
def term_rank_1(trainer, record):
    if trainer.rank == 1 and record["step"] == 3:
        signal.raise_signal(signal.SIGTERM)      # only this rank is told to stop
s = Trainer(cfg, text=text, comm=comm, callbacks=[term_rank_1], log=print).train()
print(f"stopped at {s['step']} interrupted {s['interrupted']}", flush=True)
"""


def test_sigterm_to_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    script = tmp_path / "rank_signal.py"
    script.write_text(_RANK_SIGNAL)
    r = subprocess.run([sys.executable, "-m", "tinygrad_llm", "launch", "--nproc", "2", str(script),
                        str(tmp_path / "dp")], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[rank 0] stopped at 3 interrupted True" in r.stdout, r.stdout + r.stderr
    assert "[rank 1] stopped at 3 interrupted True" in r.stdout, r.stdout + r.stderr
    assert load_checkpoint(tmp_path / "dp").step == 3


def test_sigterm_to_the_launcher_saves_and_exits_cleanly(tmp_path):
    data = _corpus(tmp_path)
    out = tmp_path / "dp"
    p = subprocess.Popen([sys.executable, "-m", "tinygrad_llm", "launch", "--nproc", "2", "train", *_COMMON,
                          "--steps", "100000", "--data", str(data), "--out-dir", str(out)],
                         cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and p.poll() is None:
            log = out / "metrics.jsonl"
            if log.is_file() and len(log.read_text().splitlines()) >= 2:
                break
            time.sleep(0.2)
        p.send_signal(signal.SIGTERM)         # as `timeout`, `kill` or a scheduler would
        stdout, stderr = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, stdout + stderr
    assert "passed on to every rank" in stderr
    step = load_checkpoint(out).step
    assert 2 <= step < 100000 and "resume with" in stdout


_FROZEN = r"""
import os, signal, sys, time
from tinygrad_llm.distributed.launch import start_heartbeat
start_heartbeat(interval=0.2)
if os.environ["RANK"] == "1":
    open(sys.argv[1], "w").write(str(os.getpid()))
    os.kill(os.getpid(), signal.SIGSTOP)         # frozen: no Python runs, no heartbeat
time.sleep(60)
"""


def test_a_frozen_rank_is_reported_early(tmp_path):
    script = tmp_path / "frozen.py"
    script.write_text(_FROZEN)
    pid_file = tmp_path / "pid"
    p = subprocess.Popen([sys.executable, "-m", "tinygrad_llm.distributed.launch", "--nproc", "2",
                          "--heartbeat-timeout", "2", str(script), str(pid_file)], cwd=ROOT, env=_env(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in p.stderr], daemon=True).start()
    try:
        seen, deadline = "", time.monotonic() + 60
        while not ("rank 1" in seen and "heartbeat" in seen) and time.monotonic() < deadline:
            try:
                seen += lines.get(timeout=1.0)
            except queue.Empty:
                pass
        assert "rank 1" in seen and "heartbeat" in seen and "stopped" in seen, seen
    finally:
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()


# ---------------------------------------------------------------------------------------------- 9: classifier
@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    out = tmp_path_factory.mktemp("clf") / "clf"
    assert main(["finetune", "classify", "--demo", "--preset", "micro", "--steps", "2", "--epochs", "1",
                 "--out-dir", str(out)]) == 0
    return out


def test_predict_with_a_classifier_checkpoint(classifier, tmp_path, capsys):
    from tinygrad_llm.train import load_checkpoint
    labels = load_checkpoint(classifier)["classifier"]["labels"]
    capsys.readouterr()
    assert main(["finetune", "predict", "--checkpoint", str(classifier), "--text", "win a free prize now",
                 "--text", "see you at lunch"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(line.split("\t")[0] in labels for line in lines)
    assert lines[1].endswith("see you at lunch")
    f = tmp_path / "texts.txt"
    f.write_text("first text\nsecond text\n\nthird text\n")
    assert main(["finetune", "predict", "--checkpoint", str(classifier), "--file", str(f)]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3


def test_generate_and_classify_on_a_classifier_checkpoint_say_what_it_is(classifier, capsys):
    err = _err(capsys, ["generate", "--checkpoint", str(classifier)])
    assert "classifier" in err and "finetune predict" in err
    err = _err(capsys, ["finetune", "classify", "--demo", "--checkpoint", str(classifier), "--steps", "1"])
    assert "classifier" in err


def test_predict_on_a_language_model_checkpoint_says_what_it_is(trained, capsys):
    _, _, out = trained
    err = _err(capsys, ["finetune", "predict", "--checkpoint", str(out), "--text", "a"])
    assert "not a classifier" in err


# ---------------------------------------------------------------------------------------------- 10: smaller
def test_eval_reports_what_the_final_evaluation_reported(tmp_path, capsys):
    data = _corpus(tmp_path)
    out = tmp_path / "o"
    assert main(["train", *TINY, "--data", str(data), "--out-dir", str(out)]) == 0
    final = [r for r in (json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines())
             if "val_loss" in r][-1]["val_loss"]
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out)]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["val_loss"] == pytest.approx(final, rel=1e-5)


def test_tokenizer_vocab_shortfall_is_noted(tmp_path, capsys):
    data = _corpus(tmp_path)
    assert main(["tokenizer", "train", "--data", str(data), "--vocab-size", "4096",
                 "--out", str(tmp_path / "tok.json")]) == 0
    err = capsys.readouterr().err
    assert "of the 4096 asked" in err


def test_help_shows_defaults(capsys):
    assert main(["train", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: 600)" in out and "(default: tiny)" in out and "(default: out)" in out
    assert main(["generate", "--help"]) == 0
    assert "(default: 200)" in " ".join(capsys.readouterr().out.split())
