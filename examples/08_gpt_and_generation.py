"""The whole GPT, and how it writes: greedy decoding, temperature, top-k, top-p, and the KV cache.

    python examples/08_gpt_and_generation.py

Part 1 uses the book's toy example (chapter 5): a 9-word vocabulary and the logits a model gave for the word
after "every effort moves you". Greedy decoding takes the argmax; sampling draws from softmax(logits / T) (T < 1
sharpens the distribution, T > 1 flattens it); top-k keeps the k most likely words, top-p (nucleus) the smallest
set whose probability reaches p. The hand-made probabilities are compared with what the library's sampler draws.

Part 2 builds a small GPT (token + position embeddings -> blocks -> final norm -> head), teaches it one sentence
for a few seconds, and generates with ``tl.generate``: greedy with and without the KV cache (the cache stores each
layer's keys and values so a new token costs one position instead of the whole sequence: the same tokens, faster),
then sampling with a temperature and top-k / top-p.

What to expect: greedy picks "forward"; at T = 1 "forward" has probability 0.5721 and "toward" 0.3576; T = 0.1 puts
0.9910 on "forward", T = 5 spreads it (0.1546); top-k 3 keeps forward / toward / closer; the sampler's frequencies
match the probabilities to ~0.02; the trained GPT greedily repeats its sentence (150 steps; the fast setting's 60 steps give a rougher copy),
identical with and without the cache, and the cache several times faster on a 200-token generation.
"""
from __future__ import annotations

import time

import numpy as np

from course import FAST, done, lesson, section, softmax

import tinygrad_llm as tl
from tinygrad_llm.model.generate import sample_next
from tinygrad_llm.tokenizer import CharTokenizer

np.set_printoptions(precision=4, suppress=True)
lesson("Lesson 08: the GPT and generation",
       "greedy vs temperature vs top-k / top-p sampling, by hand and with tl.generate; the KV cache",
       "the book's probabilities (forward 0.5721 at T=1); sampler frequencies match; cache and no cache agree")

vocab = ["closer", "every", "effort", "forward", "inches", "moves", "pizza", "toward", "you"]
logits = np.array([4.51, 0.89, -1.90, 6.75, 1.63, -1.62, -1.89, 6.28, 1.79])   # the book's next-token logits


def table(title: str, p: np.ndarray) -> None:
    print(f"{title:<22}" + " ".join(f"{w[:7]:>7}" for w in vocab))
    print(" " * 22 + " ".join(f"{v:7.4f}" for v in p))


section("part 1: choosing the next word")
print(f"greedy (argmax): {vocab[int(np.argmax(logits))]!r}")
for temp in (1.0, 0.1, 5.0):
    table(f"softmax(z / {temp:g})", softmax(logits / temp))
k = 3
top = np.argsort(-logits)[:k]
masked = np.full_like(logits, -np.inf)
masked[top] = logits[top]
p_topk = softmax(masked)
table(f"top-k, k = {k}", p_topk)
p1 = softmax(logits)
order = np.argsort(-p1)
before = np.cumsum(p1[order]) - p1[order]                # mass ranked above each word
keep = order[before < 0.9]                               # nucleus: smallest set reaching p = 0.9
p_topp = np.zeros_like(p1)
p_topp[keep] = p1[keep] / p1[keep].sum()
table("top-p, p = 0.9", p_topp)

section("the library's sampler draws with these probabilities")
draws = 1000 if FAST else 5000
rng = np.random.default_rng(123)
for name, kwargs, want in [("T = 1", dict(temperature=1.0), p1), ("top-k 3", dict(temperature=1.0, top_k=3), p_topk),
                           ("top-p 0.9", dict(temperature=1.0, top_p=0.9), p_topp)]:
    ids = sample_next(np.tile(logits, (draws, 1)), rng=rng, **kwargs)
    freq = np.bincount(ids, minlength=len(vocab)) / draws
    print(f"{name:<10} frequencies {freq}  largest gap to the probabilities {np.abs(freq - want).max():.3f}")

section("part 2: a small GPT learns one sentence")
sentence = "every effort moves you forward, one step at a time. "
tok = CharTokenizer.train(sentence)
ids = np.array(tok.encode(sentence * 40))
cfg = tl.GPTConfig(vocab_size=tok.vocab_size, context_length=32, n_layer=2, n_head=2, n_embd=48, dropout=0.0)
model = tl.GPT(cfg, seed=0)
opt = tl.optim.AdamW(model, lr=1e-2, weight_decay=0.0)
print(f"{model.num_parameters():,} parameters; vocabulary of {tok.vocab_size} characters")
rng = np.random.default_rng(0)
steps = 60 if FAST else 150
for step in range(steps):
    starts = rng.integers(0, len(ids) - cfg.context_length - 1, 16)
    x = np.stack([ids[s:s + cfg.context_length] for s in starts])
    y = np.stack([ids[s + 1:s + cfg.context_length + 1] for s in starts])
    loss = model.loss(x, y)
    loss.backward()
    opt.step()
    opt.zero_grad()
    if step % 20 == 0 or step == steps - 1:
        print(f"step {step:3d}  loss {loss.item():.3f}")
final_loss = loss.item()

prompt = np.array([tok.encode("every ")])
with_cache = tl.generate(model, prompt, 50, temperature=0.0, use_cache=True)
without = tl.generate(model, prompt, 50, temperature=0.0, use_cache=False)
same = bool(np.array_equal(with_cache, without))
print(f"greedy, KV cache:    {tok.decode(with_cache[0].tolist())!r}")
print(f"greedy, no cache:    {tok.decode(without[0].tolist())!r}")
print(f"identical tokens with and without the cache: {same}")
for name, kwargs in [("T = 1.5", dict(temperature=1.5)), ("T = 1.5, top-k 3", dict(temperature=1.5, top_k=3)),
                     ("T = 1.5, top-p 0.5", dict(temperature=1.5, top_p=0.5))]:
    out = tl.generate(model, prompt, 40, rng=1, **kwargs)
    print(f"{name:<20} {tok.decode(out[0].tolist())!r}")

section("what the KV cache saves: a longer generation with a wider, untrained model")
wide = tl.GPT(tl.GPTConfig(vocab_size=tok.vocab_size, context_length=256, n_layer=2, n_head=4, n_embd=128), seed=0)
n_new = 100 if FAST else 200
times = {}
for use_cache in (True, False):
    t0 = time.perf_counter()
    out = tl.generate(wide, prompt, n_new, temperature=0.0, use_cache=use_cache)
    times[use_cache] = time.perf_counter() - t0
print(f"{n_new} tokens: {times[True]:.2f} s with the cache, {times[False]:.2f} s without (each new token costs one "
      "position with the cache, the whole sequence without; the gap grows with the length)")
done(f"final training loss {final_loss:.3f}; greedy with and without the KV cache identical: {same}")
