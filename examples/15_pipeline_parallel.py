"""Pipeline-parallel training: a GPT's blocks split over devices, micro-batches flowing through the stages.

    python examples/15_pipeline_parallel.py                                   # the lesson: 2 CPU stages, checked
    python examples/15_pipeline_parallel.py --devices cuda:0,cuda:1 --preset small --micro 8
    python examples/15_pipeline_parallel.py --devices cpu,cpu,cpu --schedule gpipe

One process drives every stage. Stage 0 holds the embeddings and the first blocks, the last stage the remaining
blocks, the final norm and the LM head. Activations cross from stage to stage with ``Tensor.to(device)``, a
differentiable copy, so their gradients travel back the same way. ``--schedule 1f1b`` interleaves forwards and
backwards (at most p micro-batches of activations alive per stage), ``gpipe`` does all forwards first; the ideal
efficiency of m micro-batches over p stages is m / (m + p - 1) (the rest is the pipeline "bubble").
On CPU devices the lesson also trains an unsplit copy of the model on one device (``--check``, float64) and prints
how far apart they end up (``--no-check`` to skip it).

What to expect: the stages and their blocks, ideal efficiency 0.80 for 4 micro-batches on 2 stages, the same loss
from the pipeline and the unsplit model at every step, and a final parameter difference of ~1e-15 (20 steps; fast
setting: 3).
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from course import FAST, done, lesson  # (also puts the repository on the path)

import tinygrad_llm as tl
from tinygrad_llm.data import DataLoader, SlidingWindowDataset, default_corpus
from tinygrad_llm.distributed.pipeline import PipelineParallel
from tinygrad_llm.optim import AdamW
from tinygrad_llm.tokenizer import CharTokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", default="cpu,cpu")
    ap.add_argument("--preset", default="micro")
    ap.add_argument("--micro", type=int, default=4, help="micro-batches per step")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--block", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--schedule", choices=("gpipe", "1f1b"), default="1f1b")
    ap.add_argument("--check", action="store_true", default=None, help="compare with unsplit training (float64)")
    ap.add_argument("--no-check", dest="check", action="store_false")
    args = ap.parse_args()
    if args.check is None:
        args.check = all(d.strip() == "cpu" for d in args.devices.split(","))
    if FAST and args.steps == 20:
        args.steps = 3
    lesson("Lesson 15: pipeline parallelism",
           "stages, micro-batches, GPipe vs 1F1B schedules, the bubble, differentiable device copies",
           "ideal efficiency m/(m+p-1); the pipeline's losses = the unsplit model's; final difference ~1e-15")

    text = default_corpus()[:200_000]
    tok = CharTokenizer.train(text)
    ids = np.asarray(tok.encode(text))
    loader = DataLoader(SlidingWindowDataset(ids, args.block, args.block), args.batch, seed=0)
    cfg = tl.GPTConfig.preset(args.preset, vocab_size=tok.vocab_size, context_length=args.block, dropout=0.0)
    dtype = np.float64 if args.check else np.float32

    model = tl.GPT(cfg, seed=0, dtype=dtype)
    pipe = PipelineParallel(model, args.devices.split(","), n_micro=args.micro, schedule=args.schedule)
    opt = AdamW(model, lr=3e-3, weight_decay=0.1)
    print(f"{model.num_parameters():,} parameters in {len(pipe.stages)} stages: " +
          ", ".join(map(repr, pipe.stages)))
    print(f"{args.micro} micro-batches, schedule {args.schedule}: ideal efficiency m/(m+p-1) = "
          f"{pipe.ideal_efficiency:.2f}")
    if args.check:
        ref = tl.GPT(cfg, seed=0, dtype=dtype)
        ref_opt = AdamW(ref, lr=3e-3, weight_decay=0.1)

    t0 = time.time()
    for step in range(args.steps):
        x, y = loader.next_batch()
        loss = pipe.train_step(x, y)          # forward + backward of every micro-batch; grads in the params
        tl.optim.clip_grad_norm(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        if args.check:
            ref_loss = ref.loss(x, y)
            ref_loss.backward()
            tl.optim.clip_grad_norm(ref.parameters(), 1.0)
            ref_opt.step()
            ref_opt.zero_grad()
        if step % 5 == 0 or step == args.steps - 1:
            extra = f"  (unsplit: {ref_loss.item():.6f})" if args.check else ""
            print(f"step {step:3d}  loss {loss:.6f}{extra}  {time.time() - t0:.1f} s", flush=True)
    if args.check:
        diff = max(float(np.abs(a.numpy() - b.numpy()).max()) for a, b in zip(model.parameters(),
                                                                                ref.parameters()))
        print(f"max |pipeline - unsplit| over all parameters after {args.steps} steps: {diff:.2e}")
        done(f"the pipeline trains exactly as the unsplit model (largest parameter difference {diff:.1e})")
    else:
        done(f"{args.steps} pipeline steps, final loss {loss:.4f}")


if __name__ == "__main__":
    main()
