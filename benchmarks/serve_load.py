"""Load on the chat server: N concurrent streaming clients for S seconds on the loopback, against a tiny model.

    python3 benchmarks/serve_load.py                      # 16 clients, 60 s, a random "micro" GPT
    python3 benchmarks/serve_load.py --clients 4 --seconds 10 --checkpoint out/instruct

The server runs as its own process (``tinygrad-llm serve`` on a free port of 127.0.0.1), so its resident memory
(VmRSS from /proc) is measured alone: after a warm-up, then every few seconds, and at the end. Each client loops
over a fixed set of prompts (text completions and chat messages, greedy), streams each answer, and checks that the
stream is complete (a finish_reason, then ``data: [DONE]``) and that the text equals ``tl.generate``'s greedy
answer computed here beforehand from the same checkpoint. Exit code 0 only when every response was complete and
correct and no request failed.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import tinygrad_llm as tl  # noqa: E402
from tinygrad_llm.serve.client import stream_events  # noqa: E402

PROMPTS = ["The quick brown fox", "hello world", "Once upon a time", "the lazy dog", "A list of colors:",
           "Name a color.", "Tell me a story.", "What is the capital of France?"]
TEXT = " ".join(PROMPTS) * 20 + " jumps over the lazy dog, the sky is blue and the grass is green. "


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def make_checkpoint(folder: Path, context: int) -> str:
    from tinygrad_llm.finetune import save_finetuned
    from tinygrad_llm.tokenizer import BPETokenizer
    tok = BPETokenizer.train(TEXT, 512)
    model = tl.GPT(tl.GPTConfig.preset("micro", vocab_size=tok.vocab_size, context_length=context), seed=0)
    return str(save_finetuned(folder / "micro-load", model, tok, 0, {}))


def expected_answers(checkpoint: str, max_tokens: int) -> list[tuple[str, dict, str]]:
    """(endpoint, request body, the greedy answer) for every prompt, as text completion and as chat."""
    from tinygrad_llm.finetune.common import load_base
    from tinygrad_llm.tokenizer.chat import chat_template_for
    model, tok = load_base(checkpoint=checkpoint, log=lambda s: None)
    tpl = chat_template_for(tok)
    eos = tok.eos_id
    cases = []
    for p in PROMPTS:
        for chat in (False, True):
            ids = tpl.encode(tok, [{"role": "user", "content": p}]) if chat else tok.encode(p)
            n = min(max_tokens, model.config.context_length - len(ids))
            out = tl.generate(model, np.asarray([ids]), n, eos_id=eos)[0, len(ids):].tolist()
            text = tok.decode(out[:out.index(eos)] if eos in out else out)
            body = ({"messages": [{"role": "user", "content": p}]} if chat else {"prompt": p})
            cases.append(("/v1/chat/completions" if chat else "/v1/completions",
                          {**body, "max_tokens": max_tokens, "temperature": 0}, text))
    return cases


def client(url: str, cases, deadline: float, k: int, stats: dict, lock: threading.Lock) -> None:
    i = k
    while time.time() < deadline:
        path, body, want = cases[i % len(cases)]
        i += 1
        t0 = time.perf_counter()
        first, text, finish = None, [], None
        try:
            for chunk in stream_events(url + path, body, timeout=120):
                ch = chunk["choices"][0]
                piece = ch["delta"].get("content", "") if "delta" in ch else ch.get("text", "")
                if piece and first is None:
                    first = time.perf_counter() - t0
                text.append(piece)
                finish = ch.get("finish_reason") or finish
            got = "".join(text)
            with lock:
                stats["requests"] += 1
                stats["latency"].append(time.perf_counter() - t0)
                if first is not None:
                    stats["first_token"].append(first)
                if finish is None:
                    stats["incomplete"] += 1
                if got != want:
                    stats["wrong"] += 1
                    stats["examples"].append({"prompt": body, "got": got, "want": want})
        except Exception as e:  # counted and shown, the load goes on
            with lock:
                stats["errors"] += 1
                stats["examples"].append({"error": repr(e)})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--context", type=int, default=256, help="context of the generated micro model")
    ap.add_argument("--checkpoint", help="serve this checkpoint instead of a random micro model")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="serve-load-"))
    ckpt = args.checkpoint or make_checkpoint(tmp, args.context)
    cases = expected_answers(ckpt, args.max_tokens)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "tinygrad_llm", "serve", "--checkpoint", ckpt, "--port", "0"],
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        port = None
        for _ in range(100):
            m = re.search(r"http://127\.0\.0\.1:(\d+)/", proc.stderr.readline())
            if m:
                port = int(m.group(1))
                break
        if port is None:
            raise RuntimeError("the server did not start")
        url = f"http://127.0.0.1:{port}"
        warm = {"requests": 0, "latency": [], "first_token": [], "incomplete": 0, "wrong": 0, "errors": 0,
                "examples": []}
        client(url, cases, time.time() + 2.0, 0, warm, threading.Lock())     # warm-up: first allocations
        rss = [(0.0, rss_kib(proc.pid))]
        stats = {k: (v if not isinstance(v, list) else []) for k, v in warm.items()}
        stats.update(requests=0, incomplete=0, wrong=0, errors=0)
        lock = threading.Lock()
        t0 = time.time()
        deadline = t0 + args.seconds
        threads = [threading.Thread(target=client, args=(url, cases, deadline, k, stats, lock))
                   for k in range(args.clients)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            time.sleep(min(5.0, max(0.1, deadline - time.time())) if time.time() < deadline else 0.2)
            rss.append((time.time() - t0, rss_kib(proc.pid)))
        for t in threads:
            t.join()
        elapsed = time.time() - t0
        rss.append((elapsed, rss_kib(proc.pid)))
    finally:
        proc.terminate()
        proc.wait(20)
    lat, ftt = sorted(stats["latency"]), sorted(stats["first_token"])
    q = (lambda xs, f: xs[min(len(xs) - 1, int(f * len(xs)))] if xs else float("nan"))
    mid = [r for t, r in rss if args.seconds * 0.5 <= t <= args.seconds]
    report = {"clients": args.clients, "seconds": round(elapsed, 1), "requests": stats["requests"],
              "requests_per_s": round(stats["requests"] / elapsed, 2), "incomplete": stats["incomplete"],
              "wrong": stats["wrong"], "errors": stats["errors"],
              "latency_p50_s": round(q(lat, 0.5), 3), "latency_p95_s": round(q(lat, 0.95), 3),
              "first_token_p50_s": round(q(ftt, 0.5), 3), "first_token_p95_s": round(q(ftt, 0.95), 3),
              "rss_start_mib": round(rss[0][1] / 1024, 1), "rss_half_mib": round((mid[0] if mid else rss[-1][1])
                                                                                / 1024, 1),
              "rss_end_mib": round(rss[-1][1] / 1024, 1), "rss_max_mib": round(max(r for _, r in rss) / 1024, 1),
              "mean_latency_s": round(statistics.mean(lat), 3) if lat else None}
    print(json.dumps(report, indent=1))
    for ex in stats["examples"][:3]:
        print("example problem:", json.dumps(ex)[:300], file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    ok = stats["requests"] > 0 and not (stats["incomplete"] or stats["wrong"] or stats["errors"])
    print("OK: every response complete and equal to generate's" if ok else "FAILED", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
