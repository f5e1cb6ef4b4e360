"""Loading a 1B-class Hugging Face folder: load time against the file's read time, then generation with the KV cache.

    python benchmarks/load_speed.py                                  # Llama-3.2-1B's shapes, float32 file, CPU
    python benchmarks/load_speed.py --file-dtype bfloat16 --device cuda --new-tokens 128

A model with the preset's shapes (default ``llama-3.2-1b``: 1.24B parameters, tied head) gets random weights and
is written with ``save_pretrained`` (float32: 4.9 GB, bfloat16: 2.5 GB) into ``--dir``. Then, each ``--repeat``
times: the weight files are read once with plain ``readinto`` calls into one reused buffer (the reference: what
touching every byte of the file costs, page cache as it is), then read again into newly allocated memory (what
reading the file into memory costs: fresh pages are faulted in and zeroed), and ``tl.from_pretrained`` loads the
folder (plan and checks, allocation, one read per tensor straight into its parameter, bfloat16 widened on the
way). The bar: load <= 2x the read time. Last, ``--new-tokens`` greedy tokens after a ``--prompt``-token prompt with the KV cache on
``--device`` (prefill and decode timed apart). ``--context`` only sizes the RoPE tables and the cache; the weights
do not depend on it. Memory: the model once (4.9 GB in float32) plus the page cache of its file.
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import tinygrad_llm as tl  # noqa: E402


def write_model(preset: str, context: int, folder: Path, file_dtype: str) -> tl.GPTConfig:
    cfg = tl.GPTConfig.preset(preset, context_length=context)
    model = tl.GPT(cfg, seed=None, init=False)
    rng = np.random.default_rng(0)
    for _, p in model.named_parameters():     # random values in place, one tensor at a time
        p.data[...] = rng.standard_normal(p.shape, dtype=np.float32) * 0.02
    t0 = time.perf_counter()
    model.save_pretrained(folder, dtype=file_dtype)
    print(f"wrote {cfg.num_parameters() / 1e9:.2f}B parameters ({file_dtype}) to {folder} "
          f"in {time.perf_counter() - t0:.1f} s")
    return cfg


def read_files(files: list[Path], chunk: int = 64 << 20) -> float:
    """Seconds to read every byte of ``files`` with plain reads into one reused buffer (no new memory)."""
    buf = bytearray(chunk)
    view = memoryview(buf)
    t0 = time.perf_counter()
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while fh.readinto(view):
                pass
    return time.perf_counter() - t0


def read_files_fresh(files: list[Path]) -> float:
    """Seconds to read ``files`` into newly allocated memory (what any loader pays: the pages are new)."""
    t0 = time.perf_counter()
    for f in files:
        a = np.empty(f.stat().st_size, np.uint8)
        with open(f, "rb", buffering=0) as fh:
            view, got = memoryview(a), 0
            while got < a.size:
                got += fh.readinto(view[got:])
        del a
    return time.perf_counter() - t0


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import cupy as cp
        cp.cuda.Device().synchronize()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="llama-3.2-1b")
    ap.add_argument("--file-dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--dir", default=None, help="where to write the folder (default: a temporary folder, removed)")
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=16)
    args = ap.parse_args()

    tmp = None if args.dir else tempfile.TemporaryDirectory(prefix="load_speed_")
    folder = Path(args.dir or tmp.name) / args.preset
    try:
        cfg = write_model(args.preset, args.context, folder, args.file_dtype)
        gc.collect()
        files = sorted(folder.glob("*.safetensors"))
        size = sum(f.stat().st_size for f in files)
        reads, fresh, loads = [], [], []
        model = None
        for _ in range(args.repeat):
            model = None
            gc.collect()
            reads.append(read_files(files))
            fresh.append(read_files_fresh(files))
            t0 = time.perf_counter()
            model = tl.from_pretrained(folder)
            loads.append(time.perf_counter() - t0)
        read_s, fresh_s, load_s = (statistics.median(x) for x in (reads, fresh, loads))
        fmt = lambda xs: ", ".join(f"{x:.2f}" for x in xs)     # noqa: E731
        print(f"file: {size / 1e9:.2f} GB in {len(files)} file(s); read into a reused buffer {read_s:.2f} s "
              f"({size / read_s / 1e9:.2f} GB/s), into new memory {fresh_s:.2f} s; from_pretrained {load_s:.2f} s = "
              f"{load_s / read_s:.2f}x / {load_s / fresh_s:.2f}x those read times (bar: <= 2x)\n"
              f"  medians of {args.repeat}: reads {fmt(reads)}; into new memory {fmt(fresh)}; loads {fmt(loads)}")

        if args.new_tokens > 0:
            t0 = time.perf_counter()
            model.to(args.device)
            model.eval()
            sync(args.device)
            print(f"moved to {args.device} in {time.perf_counter() - t0:.2f} s")
            prompt = np.random.default_rng(1).integers(0, cfg.vocab_size, (1, args.prompt))
            tl.generate(model, prompt, 2, temperature=0.0, use_cache=True)          # warm-up
            sync(args.device)
            t0 = time.perf_counter()
            tl.generate(model, prompt, 1, temperature=0.0, use_cache=True)
            sync(args.device)
            prefill = time.perf_counter() - t0
            t0 = time.perf_counter()
            out = tl.generate(model, prompt, args.new_tokens, temperature=0.0, use_cache=True)
            sync(args.device)
            total = time.perf_counter() - t0
            assert out.shape == (1, args.prompt + args.new_tokens)
            decode = max(total - prefill, 1e-9) / max(args.new_tokens - 1, 1)
            print(f"generate on {args.device}: {args.new_tokens} new tokens after {args.prompt} prompt tokens in "
                  f"{total:.2f} s = {args.new_tokens / total:.2f} tokens/s overall; prefill {prefill:.2f} s, "
                  f"decode {1 / decode:.2f} tokens/s ({decode * 1e3:.0f} ms/token)")
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
