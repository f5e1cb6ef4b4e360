"""A plain training loop for a GPT, every line visible: data, model, optimizer, schedule, clipping, evaluation.

    python examples/09_training_loop.py

This is what ``tinygrad-llm train`` does under its options, in 40 lines: a character-level GPT on the corpus that
ships with the package. Each step takes a batch of windows, computes the mean cross-entropy of the next
character, runs backward, clips the gradient norm to 1, lets AdamW update the weights with a learning rate that
warms up and then decays along a cosine, and zeroes the gradients. Every few steps the loss on held-out text is
measured under ``no_grad`` (no graph is recorded).

Two numbers to judge a loss by: an untrained model guesses uniformly, ln(V) nats per character; a model that only
knows how often each character occurs (the unigram entropy) scores about 3.25. Anything below the unigram line has
learned something about order.

What to expect: the loss starts at ln(V) = 4.6, crosses the unigram line (3.25) within ~20 steps and reaches ~2.45
on the validation text after 300 steps (10-15 s on two cores); the fast setting (40 steps) ends near 3.05. A
sample of generated text at the end (word-like fragments: 300 steps is little).
"""
from __future__ import annotations

import math

import numpy as np

from course import FAST, done, lesson, section

import autograd as ag
import tinygrad_llm as tl
from tinygrad_llm.data import DataLoader, SlidingWindowDataset, default_corpus, train_val_split
from tinygrad_llm.tokenizer import CharTokenizer

lesson("Lesson 09: a plain training loop",
       "batches -> loss -> backward -> clip -> AdamW step -> zero_grad, a warmup + cosine schedule, evaluation",
       "loss from ln(V) = 4.6 down past the unigram entropy (3.25); val ~2.45 after 300 steps (fast, 40: ~3.05)")

text = default_corpus()[:300_000]
tok = CharTokenizer.train(text)
ids = np.asarray(tok.encode(text))
train_ids, val_ids = train_val_split(ids, 0.1)
counts = np.bincount(train_ids, minlength=tok.vocab_size) / len(train_ids)
unigram = float(-(counts[counts > 0] * np.log(counts[counts > 0])).sum())
print(f"{len(ids):,} characters, vocabulary {tok.vocab_size}: uniform guess ln(V) = {math.log(tok.vocab_size):.3f}, "
      f"unigram entropy = {unigram:.3f}")

block, batch = 64, 16
train = DataLoader(SlidingWindowDataset(train_ids, block, block), batch, seed=0)
val = DataLoader(SlidingWindowDataset(val_ids, block, block), batch, shuffle=False)
cfg = tl.GPTConfig(vocab_size=tok.vocab_size, context_length=block, n_layer=2, n_head=4, n_embd=64, dropout=0.0)
model = tl.GPT(cfg, seed=0)
opt = tl.optim.AdamW(model, lr=3e-3, weight_decay=0.1, betas=(0.9, 0.99))
steps, warmup, max_lr, min_lr = (40, 5, 3e-3, 3e-4) if FAST else (300, 20, 3e-3, 3e-4)
print(f"{model.num_parameters():,} parameters; {steps} steps of {batch} x {block} characters")


def learning_rate(step: int) -> float:
    """Linear warmup, then a cosine from max_lr down to min_lr."""
    if step < warmup:
        return max_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * progress))


def evaluate(batches: int = 8) -> float:
    losses = []
    with ag.no_grad():                                    # no graph: evaluation needs no gradients
        for i, (x, y) in zip(range(batches), val):
            losses.append(model.loss(x, y).item())
    return float(np.mean(losses))


section("training")
first = None
for step in range(steps):
    x, y = train.next_batch()
    loss = model.loss(x, y)                               # mean cross-entropy of the next character
    loss.backward()
    norm = tl.optim.clip_grad_norm(model.parameters(), 1.0)
    for group in opt.param_groups:
        group["lr"] = learning_rate(step)
    opt.step()
    opt.zero_grad()
    first = loss.item() if first is None else first
    if step % (10 if FAST else 50) == 0 or step == steps - 1:
        print(f"step {step:4d}  train loss {loss.item():.3f}  val loss {evaluate():.3f}  lr {learning_rate(step):.1e}"
              f"  grad norm {float(norm):.2f}")
final_val = evaluate(16)
print(f"first loss {first:.3f} (ln V = {math.log(tok.vocab_size):.3f}); final val loss {final_val:.3f} "
      f"(unigram {unigram:.3f})")

section("a sample")
out = tl.generate(model, np.array([tok.encode("The ")]), 120, temperature=0.8, top_k=20, rng=0)
print(tok.decode(out[0].tolist()))
done(f"val loss {final_val:.3f} after {steps} steps ({'below' if final_val < unigram else 'above'} the unigram "
     f"{unigram:.3f})")
