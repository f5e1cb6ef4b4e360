"""The terminal chat (``chat_loop``) and the two commands, ``tinygrad-llm serve`` (a process answering on the
loopback) and ``tinygrad-llm chat`` (stdin to stdout), with a tiny random model saved as a checkpoint."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm.serve import ChatService, chat_loop
from tinygrad_llm.serve.client import get_json, post_json
from tinygrad_llm.tokenizer import BPETokenizer

TEXT = "Name a color. The sky is blue and the grass is green. hello world, the quick brown fox. " * 10


@pytest.fixture(scope="module")
def served():
    tok = BPETokenizer.train(TEXT, 400)
    model = tl.GPT(tl.GPTConfig.preset("micro", vocab_size=tok.vocab_size, context_length=192), seed=3)
    service = ChatService(model, tok, name="tiny-test", max_tokens=40)
    yield {"model": model, "tok": tok, "service": service}
    service.close()


def greedy(s, ids, n):
    """tl.generate's greedy continuation, cut at the tokenizer's end-of-text."""
    out = tl.generate(s["model"], np.asarray([ids]), n)[0, len(ids):].tolist()
    eos = s["tok"].eos_id
    return s["tok"].decode(out[:out.index(eos)] if eos in out else out)


def chat_ids(s, text):
    return s["service"].chat_ids([{"role": "user", "content": text}])


def test_terminal_chat_loop(served):
    out = []
    lines = ["Name a color.\n", "/reset\n", "\n", "hello\n", "/exit\n", "never read\n"]
    turns = chat_loop(served["service"], iter(lines), out.append, options={"max_tokens": 8})
    text = "".join(out)
    assert turns == 2
    assert greedy(served, chat_ids(served, "Name a color."), 8) in text
    assert greedy(served, chat_ids(served, "hello"), 8) in text
    assert "(new conversation)" in text and "never read" not in text


# ------------------------------------------------------------------------------------------------ commands
@pytest.fixture(scope="module")
def checkpoint(served, tmp_path_factory):
    from tinygrad_llm.finetune import save_finetuned
    return str(save_finetuned(tmp_path_factory.mktemp("serve") / "mymodel", served["model"], served["tok"], 1, {}))


def _env():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_serve_command(checkpoint, served):
    proc = subprocess.Popen([sys.executable, "-m", "tinygrad_llm", "serve", "--checkpoint", checkpoint,
                             "--port", "0"], stderr=subprocess.PIPE, text=True, env=_env())
    try:
        port = None
        for _ in range(50):                                             # bounded: the banner comes after loading
            line = proc.stderr.readline()
            m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
            if m:
                port = int(m.group(1))
                break
        assert port, "no banner"
        url = f"http://127.0.0.1:{port}"
        assert get_json(url + "/v1/models")["data"][0]["id"] == "mymodel"
        out = post_json(url + "/v1/completions", {"prompt": "hello", "max_tokens": 5, "model": "mymodel"})
        assert out["choices"][0]["text"] == greedy(served, served["tok"].encode("hello"), 5)
    finally:
        proc.terminate()
        proc.wait(20)


def test_chat_command(checkpoint, served):
    res = subprocess.run([sys.executable, "-m", "tinygrad_llm", "chat", "--checkpoint", checkpoint,
                          "--max-tokens", "6"], input="Name a color.\n/exit\n", capture_output=True, text=True,
                         timeout=120, env=_env())
    assert res.returncode == 0, res.stderr
    assert greedy(served, chat_ids(served, "Name a color."), 6) in res.stdout
    res = subprocess.run([sys.executable, "-m", "tinygrad_llm", "serve"], capture_output=True, text=True,
                         timeout=60, env=_env())
    assert res.returncode == 2 and "--checkpoint" in res.stderr and "Traceback" not in res.stderr


def test_a_hugging_face_folder_is_served_like_a_checkpoint(served, tmp_path):
    from tinygrad_llm.serve import load_for_serving
    served["model"].save_pretrained(tmp_path / "hf", tokenizer=served["tok"])
    model, tok = load_for_serving(init_from=str(tmp_path / "hf"), log=lambda s: None)
    service = ChatService(model, tok, name="hf")
    try:
        assert service.template.name == served["service"].template.name
        out = []
        chat_loop(service, iter(["Name a color.\n"]), out.append, options={"max_tokens": 6})
        assert greedy(served, chat_ids(served, "Name a color."), 6) in "".join(out)
    finally:
        service.close()
