"""The course: every lesson in examples/ runs with its fast settings and prints the numbers it promises.

Each lesson runs once as a subprocess (``COURSE_FAST=1``, in a temporary folder, one BLAS thread) and its output is
checked against golden values with tolerances: exact for the lessons that compute by hand, loose for the ones that
train (their numbers move a little whenever the arithmetic of an op changes, never by much).
"""
from __future__ import annotations

import functools
import importlib.util
import math
import os
import re
import subprocess
import sys
import tempfile
from argparse import Namespace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
LESSONS = sorted(p.name for p in EXAMPLES.glob("[0-9][0-9]_*.py"))


@functools.lru_cache(maxsize=None)
def run(name: str, *args: str) -> tuple[str, Path]:
    """(stdout, working folder) of one fast run of a lesson; fails the test with stderr on a non-zero exit."""
    cwd = Path(tempfile.mkdtemp(prefix="lesson-"))
    env = dict(os.environ, COURSE_FAST="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True, cwd=cwd,
                         env=env, timeout=300)
    assert out.returncode == 0, f"{name} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout, cwd


def number(pattern: str, text: str) -> float:
    """The first group of ``pattern`` in ``text`` as a float (the test fails clearly when it is missing)."""
    m = re.search(pattern, text)
    assert m, f"{pattern!r} not found in the output:\n{text[-2000:]}"
    return float(m.group(1))


def test_the_course_is_numbered_and_listed_in_the_readme():
    assert [n[:2] for n in LESSONS] == [f"{i:02d}" for i in range(1, 16)], LESSONS
    readme = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| \[(\d\d)\]\(([^)]+)\)", readme, flags=re.M)
    assert [file for _, file in rows] == LESSONS
    assert all(num == file[:2] for num, file in rows)


@pytest.mark.parametrize("name", LESSONS)
def test_every_lesson_says_what_it_teaches_and_what_to_expect(name):
    source = (EXAMPLES / name).read_text(encoding="utf-8")
    assert "What to expect" in source and len(source.splitlines()) <= 260, name


def test_01_backprop_by_hand():
    out, cwd = run("01_backprop_by_hand.py")
    assert "engine loss = 2.534026 (by hand: 2.534026)" in out
    assert "step 8: MatMul" in out and "-> output h (4, 5)" in out and "they agree" in out
    for name in ("W1", "b1", "W2", "b2"):
        assert number(rf"d {name} +max \|hand - engine\| = ([0-9.e+-]+)", out) < 1e-12
    assert "to input 1 (b1 (5,)): [-0.6128, 0.9284, 0.1273, 0.9262, 1.065]" in out
    assert "<shape=" not in out.split("part 2")[1].split("part 3")[0]     # SMALL = 20: every array in full
    assert (cwd / "mlp_backward.html").stat().st_size > 5000


def test_02_train_an_mlp():
    out, _ = run("02_train_an_mlp.py")
    assert number(r"step   0  loss ([0-9.]+)", out) == pytest.approx(1.8161, abs=0.01)
    assert number(r"final loss ([0-9.]+), accuracy", out) < 0.05
    assert number(r"final loss [0-9.]+, accuracy (\d+)%", out) >= 98


def test_03_write_an_op():
    out, _ = run("03_write_an_op.py")
    assert "softplus(x)= [0.0486 0.4741 0.6931 0.9741 3.0486]" in out
    assert number(r"largest difference by hand: ([0-9.e+-]+)", out) < 1e-8
    assert "gradcheck passed" in out and "gradgradcheck passed" in out
    assert "caught: GradcheckError: gradcheck failed for input 0" in out
    assert "the sum of 2 gradients" in out and "d softplus(x)/dx = sigmoid(x)" in out


def test_04_bpe_by_hand():
    out, _ = run("04_bpe_by_hand.py")
    assert "merge  1: 'a' + 't' -> 'at' (id 256, count 10)  -> 52 tokens" in out
    assert "merge 12: ' ' + 'r' -> ' r' (id 267, count 1)  -> 26 tokens" in out
    assert "the library learned the same 12 merges: True" in out
    assert "encode(text): 26 tokens, equal to ours: True; decode gives the text back: True" in out


def test_05_data_windows():
    out, _ = run("05_data_windows.py")
    for stride, n in ((1, 93), (2, 47), (4, 24)):
        assert re.search(rf"stride {stride}: +{n} windows by hand, formula +{n}, SlidingWindowDataset +{n}, "
                         r"identical windows: True", out), stride
    assert "'In the heart'               -> ' of'" in out
    assert "windows visited in the epoch: 24, distinct: 24" in out and "windows in common: 0" in out


def test_06_attention():
    out, _ = run("06_attention.py")
    for value in ("0.9544", "1.4950", "1.0865", "0.1385", "0.2379", "0.1581"):
        assert value in out
    assert "[0.4419 0.6515 0.5683]" in out
    assert number(r"largest difference from the hand-computed context vectors: ([0-9.e+-]+)", out) < 1e-12


def test_07_gpt_block():
    out, _ = run("07_gpt_block.py")
    assert "gelu(x) [-0.0036 -0.1588 -0.1543  0.      0.3457  0.8412  2.9964]" in out
    assert "parameters in the block: 872 = 12 C^2 + 13 C = 872" in out
    assert "normalised:    mean +0.0000, std 1.0000" in out
    assert number(r"largest difference from the hand-made block: ([0-9.e+-]+)", out) < 1e-12


def test_08_gpt_and_generation():
    out, _ = run("08_gpt_and_generation.py")
    assert "greedy (argmax): 'forward'" in out
    assert "0.0609  0.0016  0.0001  0.5721  0.0034  0.0001  0.0001  0.3576  0.0040" in out     # T = 1
    assert "0.0000  0.0000  0.0000  0.9910  0.0000  0.0000  0.0000  0.0090  0.0000" in out     # T = 0.1
    assert "0.0000  0.0000  0.0000  0.6154  0.0000  0.0000  0.0000  0.3846  0.0000" in out     # top-p 0.9
    gaps = [float(g) for g in re.findall(r"largest gap to the probabilities ([0-9.]+)", out)]
    assert len(gaps) == 3 and max(gaps) < 0.05
    assert number(r"step   0  loss ([0-9.]+)", out) == pytest.approx(math.log(19), abs=0.2)
    assert number(r"final training loss ([0-9.]+)", out) == pytest.approx(0.51, abs=0.2)
    assert "identical tokens with and without the cache: True" in out
    assert "greedy, KV cache:    'every " in out


def test_09_training_loop():
    out, _ = run("09_training_loop.py")
    ln_v = number(r"first loss [0-9.]+ \(ln V = ([0-9.]+)\)", out)
    assert number(r"first loss ([0-9.]+)", out) == pytest.approx(ln_v, abs=0.1)
    val, unigram = number(r"final val loss ([0-9.]+)", out), number(r"\(unigram ([0-9.]+)\)", out)
    assert val == pytest.approx(3.06, abs=0.15) and val < unigram


def test_10_pretraining_stand_in():
    out, _ = run("10_pretraining.py", "--out-dir", "out")
    val = number(r"after 15 steps: train loss [0-9.]+, val loss ([0-9.]+)", out)
    assert val == pytest.approx(5.5, abs=0.3) and val < math.log(512)
    assert "Stand-in expectation" in out and "book reports" not in out and "nanoGPT reports" not in out


def test_10_shakespeare_mode_on_a_small_text(tmp_path):
    from tinygrad_llm.data import default_corpus
    (tmp_path / "input.txt").write_text(default_corpus()[:20_000], encoding="utf-8")
    out, _ = run("10_pretraining.py", "--shakespeare", str(tmp_path / "input.txt"), "--cpu", "--steps", "2",
                 "--out-dir", "out")
    assert "after 2 steps" in out and "this run is shorter" in out and "nanoGPT reports" not in out


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name[:-3].replace("_", ""), EXAMPLES / name)
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(EXAMPLES))
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(EXAMPLES))
    return mod


def test_10_the_books_targets_only_for_the_books_set_up():
    mod = _load("10_pretraining.py")
    book = Namespace(encoder_json="encoder.json", vocab_size=2048, epochs=10, init="book")
    assert mod.verdict_differences(book, mod.VERDICT_CHARS) == []
    short = mod.verdict_differences(Namespace(**{**vars(book), "epochs": 1}), mod.VERDICT_CHARS)
    assert short == ["1 epochs instead of 10"]
    other = mod.verdict_differences(Namespace(**{**vars(book), "encoder_json": None, "init": "gpt2"}), 500)
    assert len(other) == 3 and "500 characters" in other[0] and "BPE trained on the text" in other[1]


def test_11_load_gpt2_weights():
    out, _ = run("11_load_gpt2_weights.py")
    assert "28 tensors, 8 transposed: h.0.attn.c_attn.weight" in out
    assert number(r"largest difference ([0-9.e+-]+)", out) == 0.0
    assert "save_pretrained wrote 28 tensors; the same names as ours: True; the same values: True" in out


def test_11_with_a_model_folder(tmp_path):
    import tinygrad_llm as tl
    from tinygrad_llm.tokenizer import BPETokenizer
    tok = BPETokenizer.train("Every effort moves you forward, one step at a time. " * 20, 300)
    cfg = tl.GPTConfig(vocab_size=tok.vocab_size, context_length=64, n_layer=1, n_head=2, n_embd=16)
    tl.GPT(cfg, seed=0).save_pretrained(str(tmp_path / "gpt"), tokenizer=tok)
    out, _ = run("11_load_gpt2_weights.py", "--model-dir", str(tmp_path / "gpt"))
    assert "1 blocks of width 16" in out and "greedy: 'Every effort moves you" in out


def test_12_and_13_with_a_data_file_and_weights(tmp_path):
    """The book's command lines, on small files and a tiny model folder (the code paths, not the book's numbers)."""
    import json
    import tinygrad_llm as tl
    from tinygrad_llm.finetune.demo import demo_instructions
    from tinygrad_llm.tokenizer import BPETokenizer
    rows = [("spam" if i % 3 == 0 else "ham", f"message number {i} " + ("win cash now" if i % 3 == 0 else "see you"))
            for i in range(60)]
    (tmp_path / "sms.tsv").write_text("".join(f"{label}\t{text}\n" for label, text in rows))
    records = demo_instructions(24)
    (tmp_path / "inst.json").write_text(json.dumps(records))
    text = " ".join(t for _, t in rows) + " ".join(r["instruction"] + r["output"] for r in records)
    tok = BPETokenizer.train(text, 400)
    cfg = tl.GPTConfig(vocab_size=tok.vocab_size, context_length=256, n_layer=1, n_head=2, n_embd=16)
    tl.GPT(cfg, seed=0).save_pretrained(str(tmp_path / "gpt"), tokenizer=tok)
    out, _ = run("12_finetune_classifier.py", str(tmp_path / "sms.tsv"), "--init-from", str(tmp_path / "gpt"),
                 "--epochs", "1", "--out-dir", "out")
    assert "the book: ~97% train" in out and re.search(r"test [0-9.]+%", out) and "majority class" not in out
    out, _ = run("13_instructions_and_lora.py", str(tmp_path / "inst.json"), "--init-from", str(tmp_path / "gpt"),
                 "--epochs", "1", "--out-dir", "out")
    assert "the book: train loss ~2.6" in out and "final train loss" in out and "part 3" not in out


def test_12_finetune_classifier():
    out, _ = run("12_finetune_classifier.py", "--out-dir", "out")
    base = {name: number(rf"{re.escape(name)} +([0-9.]+)%", out) for name in
            ("majority class", "count adjectives", "count, flipped by 'not'", "last clause with negation")}
    assert base == pytest.approx({"majority class": 52.5, "count adjectives": 57.2,
                                  "count, flipped by 'not'": 79.8, "last clause with negation": 93.2}, abs=3)
    test_acc = number(r"test ([0-9.]+)%\n", out)
    assert test_acc > base["count adjectives"] + 10     # learned more than counting words


def test_13_instructions_and_lora():
    out, _ = run("13_instructions_and_lora.py", "--out-dir", "out")
    assert "### Response:" in out and "targets ignored (the prompt, masked)" in out
    assert number(r"before fine-tuning: train_loss ([0-9.]+)", out) == pytest.approx(math.log(512), abs=0.2)
    assert number(r"final train loss ([0-9.]+)", out) == pytest.approx(1.94, abs=0.35)
    assert "LoRA: 8 layers, trainable 8,192 of 157,056 parameters (5.22%)" in out
    assert "logits right after apply_lora equal the original's: True" in out
    assert "gradients only on A and B: True" in out
    first, last = number(r"loss ([0-9.]+) -> [0-9.]+; gradients", out), number(r"-> ([0-9.]+); gradients", out)
    assert last < first
    assert number(r"largest logit difference ([0-9.e+-]+)", out) < 1e-4


def test_14_data_parallel():
    out, _ = run("14_data_parallel.py")
    assert "2 rank(s) (tcp)" in out and "1 rank(s)" in out
    assert number(r"losses: ([0-9.e+-]+)", out) < 1e-5
    assert number(r"final train loss ([0-9.]+)", out) == pytest.approx(3.83, abs=0.1)


def test_15_pipeline_parallel():
    out, _ = run("15_pipeline_parallel.py")
    assert "ideal efficiency m/(m+p-1) = 0.80" in out
    pairs = re.findall(r"loss ([0-9.]+)  \(unsplit: ([0-9.]+)\)", out)
    assert pairs and all(a == b for a, b in pairs)
    assert number(r"over all parameters after 3 steps: ([0-9.e+-]+)", out) < 1e-12
