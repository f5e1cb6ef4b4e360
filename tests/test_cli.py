"""The tinygrad-llm command, in-process: train -> generate -> eval, tokenizer, config files, clear error exits."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from tinygrad_llm.cli import main

TINY = ["--preset", "micro", "--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--tokenizer", "char",
        "--block-size", "16", "--batch-size", "4", "--steps", "4", "--eval-every", "2", "--eval-iters", "2",
        "--sample-tokens", "8", "--no-progress"]


def _corpus(tmp_path, n=200):
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "is", "the", "next", "one."]
    p = tmp_path / "corpus.txt"
    p.write_text("\n".join(" ".join(rng.choice(words, 6)) for _ in range(n)), encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    data = _corpus(tmp)
    out = tmp / "out"
    assert main(["train", *TINY, "--data", str(data), "--out-dir", str(out)]) == 0
    return tmp, data, out


def test_train_writes_checkpoint_and_log(trained, capsys):
    tmp, data, out = trained
    assert (out / "latest").read_text().strip() == "step_000004"
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert any("val_loss" in json.loads(line) for line in lines)


def test_generate_and_eval(trained, capsys):
    tmp, data, out = trained
    assert main(["generate", "--checkpoint", str(out), "--prompt", "alpha", "--max-new-tokens", "12",
                 "--seed", "1"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("alpha")
    assert main(["generate", "--checkpoint", str(out), "--prompt", "alpha", "--max-new-tokens", "12",
                 "--seed", "1", "--top-k", "5", "--top-p", "0.9"]) == 0
    assert main(["eval", "--checkpoint", str(out), "--data", str(data)]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["val_loss"] > 0 and abs(res["val_ppl"] - np.exp(res["val_loss"])) < 1e-3 * res["val_ppl"]


def test_resume_and_config_file(trained, tmp_path, capsys):
    _, data, out = trained
    cfg = tmp_path / "run.toml"
    cfg.write_text('max_steps = 6\nlr = 0.002\n[model]\nn_layer = 1\nn_head = 2\nn_embd = 32\n')
    args = [a for a in TINY if a not in ()]
    i = args.index("--steps")
    del args[i:i + 2]
    assert main(["train", "--config", str(cfg), *args, "--data", str(data), "--out-dir", str(out), "--resume"]) == 0
    assert (out / "latest").read_text().strip() == "step_000006"
    jcfg = tmp_path / "run.json"
    jcfg.write_text(json.dumps({"max_steps": 2, "bogus": 1}))
    assert main(["train", "--config", str(jcfg), "--data", str(data), "--out-dir", str(tmp_path / "x")]) == 2
    assert "bogus" in capsys.readouterr().err


def test_tokenizer_commands(tmp_path, capsys):
    data = _corpus(tmp_path)
    tok = tmp_path / "tok.json"
    assert main(["tokenizer", "train", "--data", str(data), "--vocab-size", "300", "--out", str(tok)]) == 0
    capsys.readouterr()
    assert main(["tokenizer", "encode", "--tokenizer", str(tok), "gamma delta é"]) == 0
    ids = capsys.readouterr().out.split()
    assert main(["tokenizer", "decode", "--tokenizer", str(tok), *ids]) == 0
    assert capsys.readouterr().out == "gamma delta é\n"
    # special tokens: plain text unless --allow-special
    eot = "<|endoftext|>"
    from tinygrad_llm.tokenizer import load_tokenizer
    special = load_tokenizer(str(tok)).special_tokens[eot]
    assert main(["tokenizer", "encode", "--tokenizer", str(tok), "a " + eot]) == 0
    assert str(special) not in capsys.readouterr().out.split()
    assert main(["tokenizer", "encode", "--tokenizer", str(tok), "--allow-special", "a " + eot]) == 0
    assert capsys.readouterr().out.split()[-1] == str(special)


def _err(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_error_exits(trained, tmp_path, capsys):
    _, data, out = trained
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    assert "empty" in _err(capsys, ["train", *TINY, "--data", str(empty), "--out-dir", str(tmp_path / "o")])
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"hello \xff\xfe world " * 50)
    assert "UTF-8" in _err(capsys, ["train", *TINY, "--data", str(bad), "--out-dir", str(tmp_path / "o")])
    assert "does not exist" in _err(capsys, ["train", *TINY, "--data", str(tmp_path / "nope.txt")])
    long_prompt = "alpha beta " * 20  # char tokenizer: 220 tokens > context 16
    assert "context" in _err(capsys, ["generate", "--checkpoint", str(out), "--prompt", long_prompt])
    pk = tmp_path / "model.pt"
    pk.write_bytes(pickle.dumps({"w": 1}))
    assert "pickle" in _err(capsys, ["generate", "--checkpoint", str(pk), "--prompt", "a"])
    assert "not found" in _err(capsys, ["eval", "--checkpoint", str(tmp_path / "missing")])


def test_truncated_checkpoint_exit(trained, tmp_path, capsys):
    import shutil
    _, _, out = trained
    copy = tmp_path / "ck"
    shutil.copytree(out / (out / "latest").read_text().strip(), copy)
    f = copy / "model.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    assert "truncated" in _err(capsys, ["generate", "--checkpoint", str(copy)])


def test_usage_errors(capsys):
    assert main([]) == 2
    assert main(["train", "--steps", "notanumber"]) == 2
    assert main(["finetune", "classify"]) == 2  # no --data, no --demo


def test_resume_reuses_saved_config(tmp_path, capsys):
    data = _corpus(tmp_path)
    out = tmp_path / "run"
    args = [a if a != "4" else "2" for a in TINY]  # 2 steps
    assert main(["train", *args, "--data", str(data), "--out-dir", str(out)]) == 0
    # resume with only --steps: the tiny model, char tokenizer and data come from the saved run's config
    assert main(["train", "--resume", "--steps", "3", "--out-dir", str(out), "--no-progress",
                 "--sample-tokens", "0"]) == 0
    assert (out / "latest").read_text().strip() == "step_000003"


def test_plot(trained, tmp_path, capsys):
    _, _, out = trained
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "pip install" in _err(capsys, ["plot", str(out), "--out", str(tmp_path / "loss.png")])
    else:
        assert main(["plot", str(out), "--out", str(tmp_path / "loss.png")]) == 0
        assert (tmp_path / "loss.png").stat().st_size > 0


def test_launch_two_ranks_equals_one_process(tmp_path):
    """`tinygrad-llm launch --nproc 2 train` (CPU ranks over TCP): 2 ranks x batch 2 == 1 process x batch 4."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tinygrad_llm.train import load_checkpoint
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TINYGRAD_LLM_LAUNCHER", "PMI_RANK", "OMPI_COMM_WORLD_RANK"):
        env.pop(k, None)
    data = _corpus(tmp_path)
    common = ["--preset", "micro", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--tokenizer", "char",
              "--block-size", "8", "--steps", "3", "--eval-every", "0", "--sample-tokens", "0", "--no-progress",
              "--dtype", "float64", "--data", str(data)]
    r = subprocess.run([sys.executable, "-m", "tinygrad_llm", "launch", "--nproc", "2", "train", *common,
                        "--batch-size", "2", "--out-dir", str(tmp_path / "dp")],
                       cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert main(["train", *common, "--batch-size", "4", "--out-dir", str(tmp_path / "one")]) == 0
    dp, one = load_checkpoint(tmp_path / "dp"), load_checkpoint(tmp_path / "one")
    assert dp["loader"]["world_size"] == 2 and one["loader"]["world_size"] == 1
    a, b = dp.model, one.model
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-9, err_msg=k)


def test_bench_measures_a_tiny_model(capsys):
    assert main(["bench", "--preset", "micro", "--batch", "2", "--steps", "2", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    assert "tokens/s" in out and "ms/step" in out and "peak" in out
