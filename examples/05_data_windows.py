"""From a stream of token ids to training batches: sliding windows of inputs and next-token targets.

    python examples/05_data_windows.py

A language model learns to predict the next token at every position, so one window of L + 1 tokens gives L
training examples at once: the inputs are tokens s..s+L-1 and the targets the same tokens shifted by one,
s+1..s+L. The window start moves by ``stride``: stride 1 makes heavily overlapping windows (many, correlated),
stride L makes disjoint ones (every token used once per epoch, as the book's chapter 5 training does). A
DataLoader shuffles the windows with a seed and stacks them into (B, L) batches; with several ranks (data
parallelism, lesson 14) each rank gets its own slice of every global batch.

What to expect: the input -> target pairs of one window spelled out, the window counts for strides 1, 2 and 4
(n - L - 1) // stride + 1, the library's SlidingWindowDataset giving the same windows, and batches of shape (8, 4)
where one epoch visits every window exactly once.
"""
from __future__ import annotations

import numpy as np

from course import done, lesson, section

from tinygrad_llm.data import DataLoader, SlidingWindowDataset
from tinygrad_llm.tokenizer import BPETokenizer

lesson("Lesson 05: data windows",
       "next-token targets, sliding windows (max_length, stride), shuffled batches, per-rank slices",
       "(n - L - 1) // stride + 1 windows; the library's windows equal the hand-made ones; (8, 4) batches")

text = ("In the heart of the city stood the old library, a relic from a bygone era. Its stone walls bore the "
        "marks of time, and ivy clung tightly to its facade. In the heart of the library stood a reading room.")
tok = BPETokenizer.train(text, 256 + 40 + 1)
ids = np.asarray(tok.encode(text))
n = len(ids)
print(f"{len(text)} characters -> {n} tokens (a BPE of 40 merges trained on the text itself)")

section("one window by hand: inputs and targets, max_length L = 4")
L = 4
x, y = ids[0:L], ids[1:L + 1]
print("x =", x.tolist(), "  y =", y.tolist(), "  (y is x shifted left by one)")
for t in range(L):
    context = tok.decode(x[:t + 1].tolist())
    print(f"  {context!r:<28} -> {tok.decode([int(y[t])])!r}")

section("how many windows: the start moves by `stride`")
for stride in (1, 2, L):
    by_hand = [(ids[s:s + L], ids[s + 1:s + L + 1]) for s in range(0, n - L, stride)]
    formula = (n - L - 1) // stride + 1
    ds = SlidingWindowDataset(ids, max_length=L, stride=stride)
    same = len(ds) == len(by_hand) and all(np.array_equal(ds[i][0], a) and np.array_equal(ds[i][1], b)
                                           for i, (a, b) in enumerate(by_hand))
    print(f"stride {stride}: {len(by_hand):3d} windows by hand, formula {formula:3d}, "
          f"SlidingWindowDataset {len(ds):3d}, identical windows: {same}")

section("batches: a seeded shuffle, (B, L) arrays, every window once per epoch")
ds = SlidingWindowDataset(ids, max_length=L, stride=L)
loader = DataLoader(ds, batch_size=8, shuffle=True, seed=0)
visited = []
for i, (bx, by) in enumerate(loader):                  # one epoch
    starts = loader.batch_indices(0, i)                # which windows this batch holds
    assert all(np.array_equal(bx[j], ds[k][0]) for j, k in enumerate(starts))
    visited.extend(int(k) for k in starts)
    shape = bx.shape
print(f"{len(ds)} windows, batch_size 8 -> {len(loader)} batches of shape {shape} per epoch "
      f"({len(ds) - 8 * len(loader)} windows left over: drop_last)")
print("first batch's windows:", visited[:8], " (shuffled)")
print(f"windows visited in the epoch: {len(visited)}, distinct: {len(set(visited))}")

section("two ranks: each gets its own half of every global batch")
r0 = DataLoader(ds, batch_size=4, seed=0, rank=0, world_size=2)
r1 = DataLoader(ds, batch_size=4, seed=0, rank=1, world_size=2)
a, b = r0.next_batch()[0], r1.next_batch()[0]
overlap = {tuple(r) for r in a.tolist()} & {tuple(r) for r in b.tolist()}
print(f"rank 0 batch {a.shape}, rank 1 batch {b.shape}, windows in common: {len(overlap)}")
done(f"{n} tokens -> {len(ds)} disjoint windows of {L}; batches {shape}")
