"""The fine-tuning commands keep the training run folder's promises: a second run into a folder holding another run
is refused (exit 2, one line, the first run intact) unless --overwrite, a folder locked by another process is
refused naming it, a crash's temporaries are removed, and --overwrite never deletes the base model it reads."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

import tinygrad_llm.finetune as ft
from tinygrad_llm.cli import main
from tinygrad_llm.finetune.dpo import write_demo_preferences
from tinygrad_llm.train import RunFolder, load_checkpoint

_SMALL = ["--vocab-size", "300", "--context-length", "64", "--batch-size", "4",
          "--eval-batches", "1"]


def _argv(task: str, tmp: Path, out: Path, steps: int, base: tuple[str, ...] = ("--preset", "micro")) -> list[str]:
    """A tiny run of ``task`` (data generated under ``tmp``, a fresh micro model by default) into ``out``."""
    if task == "classify":
        data = ft.demo.write_demo_classification(tmp / "d.tsv", n=40)
        extra = []
    elif task == "instruct":
        data = ft.demo.write_demo_instructions(tmp / "d.json", n=24)
        extra = ["--max-new-tokens", "2", "--num-responses", "1"]
    else:
        data = write_demo_preferences(tmp / "d.json", n=16)
        extra = ["--log-every", "0"]
    return ["finetune", task, "--data", str(data), *base, *_SMALL, *extra, "--steps", str(steps), "--out-dir", str(out)]


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (the lock file aside) -> its content's hash."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err              # one clear line, no traceback
    return err[0]


TASKS = ["classify", "instruct", "dpo"]


@pytest.mark.parametrize("task", TASKS)
def test_a_second_run_into_the_folder_is_refused_and_the_first_run_kept(task, tmp_path, capsys):
    out = tmp_path / "out"
    (out / ".step_000009.tmp").mkdir(parents=True)            # left by a crash mid-write
    (out / ".latest.123.tmp").write_text("step_000009")
    assert main(_argv(task, tmp_path, out, steps=2)) == 0
    assert not (out / ".step_000009.tmp").exists() and not (out / ".latest.123.tmp").exists()
    assert "removed left-overs" in capsys.readouterr().out
    first = _snapshot(out)
    assert load_checkpoint(out).step == 2

    assert main(_argv(task, tmp_path, out, steps=1)) == 2
    line = _error_line(capsys)
    assert "already holds a run" in line and "--overwrite" in line and "--resume" not in line, line
    assert _snapshot(out) == first

    # --overwrite never deletes the base model the run is about to read
    assert main(_argv(task, tmp_path, out, steps=1, base=("--checkpoint", str(out))) + ["--overwrite"]) == 2
    assert "lies in --out-dir" in _error_line(capsys)
    assert _snapshot(out) == first


@pytest.mark.parametrize("task", TASKS)
def test_overwrite_replaces_the_previous_run(task, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_argv(task, tmp_path, out, steps=2)) == 0
    before = sorted(p.name for p in out.glob("step_*"))
    capsys.readouterr()
    assert main(_argv(task, tmp_path, out, steps=1) + ["--overwrite"]) == 0
    assert "--overwrite: deleted the previous run" in capsys.readouterr().out
    assert load_checkpoint(out).step == 1
    after = sorted(p.name for p in out.glob("step_*"))
    assert len(before) == len(after) == 1 and before != after      # the step-2 checkpoint is gone


@pytest.mark.parametrize("task", TASKS)
def test_a_folder_locked_by_another_run_is_refused_naming_it(task, tmp_path, capsys):
    out = tmp_path / "out"
    holder = RunFolder(out)
    holder.lock()               # a second open file of the lock: flock refuses it as it would another process
    try:
        assert main(_argv(task, tmp_path, out, steps=1)) == 2
        line = _error_line(capsys)
        assert "in use by another run" in line and f"pid {os.getpid()}" in line, line
        assert not any(out.glob("step_*"))
    finally:
        holder.unlock()
    assert main(_argv(task, tmp_path, out, steps=1)) == 0         # free again: the run goes ahead
    assert load_checkpoint(out).step == 1


def test_overwrite_help_says_what_it_deletes(capsys):
    for task in TASKS:
        assert main(["finetune", task, "--help"]) == 0
        text = " ".join(capsys.readouterr().out.split())
        assert "--overwrite" in text and "deleting that run's checkpoints (step_*), 'latest' and metrics.jsonl" in text
