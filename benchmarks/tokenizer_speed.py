"""Tokenizer speed: BPE training time and encode/decode throughput.

    python benchmarks/tokenizer_speed.py                                   # train on the default text
    python benchmarks/tokenizer_speed.py --text corpus.txt --vocab-size 4096 \
        --gpt2-encoder encoder.json --gpt2-vocab vocab.bpe                 # also GPT-2's tokenizer

Default text: /work/shared/data/tinyshakespeare.txt when it exists, else Python's embedded `pydoc_data.topics`.
"cold" encodes with an empty word cache (every distinct word runs BPE once), "warm" encodes the same text again.
Times are the best of --repeat runs (warm encode and decode: at least 3).
MB/s counts UTF-8 bytes of input text (encode) or output text (decode). Single process, pure Python.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tinygrad_llm.tokenizer import BPETokenizer  # noqa: E402

DEFAULT_TEXT = "/work/shared/data/tinyshakespeare.txt"


def load_text(path: str | None) -> tuple[str, str]:
    if path is None and os.path.exists(DEFAULT_TEXT):
        path = DEFAULT_TEXT
    if path is None:
        from pydoc_data.topics import topics
        return "\n\n".join(topics[k] for k in sorted(topics)), "pydoc_data.topics (embedded)"
    with open(path, "r", encoding="utf-8") as f:
        return f.read(), path


def timed(fn, repeat: int = 1):
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def encode_rows(name: str, tok: BPETokenizer, text: str, rows: list, repeat: int) -> None:
    mb = len(text.encode("utf-8")) / 1e6

    def cold():
        tok.clear_cache()
        return tok.encode(text)

    t_cold, ids = timed(cold, repeat)
    t_warm, _ = timed(lambda: tok.encode(text), max(repeat, 3))
    t_dec, back = timed(lambda: tok.decode(ids), max(repeat, 3))
    assert back == text, f"{name}: decode(encode(text)) != text"
    rows.append((f"{name}: encode, cold cache", f"{t_cold:.3f} s", f"{mb / t_cold:.2f} MB/s",
                 f"{len(ids)} tokens, {len(text.encode()) / len(ids):.2f} bytes/token"))
    rows.append((f"{name}: encode, warm cache", f"{t_warm:.3f} s", f"{mb / t_warm:.2f} MB/s", ""))
    rows.append((f"{name}: decode", f"{t_dec:.3f} s", f"{mb / t_dec:.1f} MB/s", ""))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--text", help=f"UTF-8 text file (default {DEFAULT_TEXT} or pydoc_data.topics)")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--gpt2-encoder", help="GPT-2 encoder.json (with --gpt2-vocab): also time GPT-2's tokenizer")
    p.add_argument("--gpt2-vocab", help="GPT-2 vocab.bpe")
    p.add_argument("--repeat", type=int, default=1, help="report the best of N runs (a busy machine is noisy)")
    args = p.parse_args(argv)

    text, source = load_text(args.text)
    mb = len(text.encode("utf-8")) / 1e6
    print(f"text: {source}, {mb:.2f} MB; Python {platform.python_version()}, {platform.machine()}, "
          f"{os.cpu_count()} CPUs")
    rows: list[tuple[str, str, str, str]] = []

    t_train, tok = timed(lambda: BPETokenizer.train(text, args.vocab_size), args.repeat)
    rows.append((f"train BPE, vocab {args.vocab_size}", f"{t_train:.2f} s", f"{mb / t_train:.2f} MB/s",
                 f"{len(tok.merges)} merges"))
    encode_rows(f"trained {tok.vocab_size}", tok, text, rows, args.repeat)

    if args.gpt2_encoder or args.gpt2_vocab:
        if not (args.gpt2_encoder and args.gpt2_vocab):
            p.error("--gpt2-encoder and --gpt2-vocab go together")
        t_load, gpt2 = timed(lambda: BPETokenizer.from_gpt2_files(args.gpt2_encoder, args.gpt2_vocab))
        rows.append(("GPT-2: load encoder.json + vocab.bpe", f"{t_load:.2f} s", "", f"vocab {gpt2.vocab_size}"))
        encode_rows("GPT-2", gpt2, text, rows, args.repeat)

    widths = [max(len(r[i]) for r in rows + [("what", "time", "rate", "notes")]) for i in range(4)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(("what", "time", "rate", "notes"), widths)) + " |"
    print(line)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")


if __name__ == "__main__":
    main()
