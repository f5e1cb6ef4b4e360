"""Byte-pair encoding by hand: learn merges on a short text, watching the text's tokens grow at each merge, then
check that the library's tokenizer learns the same merges and encodes the text into the same tokens.

    python examples/04_bpe_by_hand.py

BPE starts from the 256 byte values (so any text can be encoded) and repeats one step: count every adjacent pair
of tokens, and merge the most frequent pair into a new token. GPT-2 first splits the text into "words" (a space
stays glued to the word after it: " cat"), and pairs never cross a word boundary. Ties in count go to the pair
with the smallest ids, as in ``tl.tokenizer.BPETokenizer.train``.

What to expect: 12 merges, starting with 'a' + 't' -> 'at' (10 times), 't' + 'h' -> 'th', ' ' + 'th' -> ' th'; the
text shown with '|' between tokens after each merge (62 tokens -> 26), and "the library learned the same 12
merges: True".
"""
from __future__ import annotations

from collections import Counter

import regex

from course import FAST, done, lesson, section

from tinygrad_llm.tokenizer import BPETokenizer
from tinygrad_llm.tokenizer.bpe_train import GPT2_PATTERN

lesson("Lesson 04: BPE by hand",
       "byte-level BPE training: pre-tokenize, count pairs, merge the most frequent, repeat; then encode",
       "12 merges, the text re-tokenized after each ('|' between tokens), and the same merges from the library")

text = "the cat sat on the mat. the cat ate the rat. that fat cat sat."
n_merges = 12

section("pre-tokenize (GPT-2's pattern) and count the words")
words = Counter(regex.findall(GPT2_PATTERN, text))
print("words:", dict(words))
pieces = regex.findall(GPT2_PATTERN, text)          # the text in order, to show it after every merge
vocab = {i: bytes([i]) for i in range(256)}          # token id -> the bytes it stands for
segmented = {w: list(w.encode("utf-8")) for w in words}


def show(ids_per_piece: list[list[int]]) -> str:
    return "|".join(vocab[t].decode("utf-8", "replace") for ids in ids_per_piece for t in ids)


def merge(ids: list[int], pair: tuple[int, int], new: int) -> list[int]:
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


n_tokens = sum(len(segmented[p]) for p in pieces)
print(f"start: {n_tokens} tokens (one per byte)")
print("  " + show([segmented[p] for p in pieces]))

section(f"{n_merges} merges")
merges = []
for m in range(n_merges):
    counts = Counter()
    for w, f in words.items():
        for pair in zip(segmented[w], segmented[w][1:]):
            counts[pair] += f
    best = max(counts, key=lambda p: (counts[p], -p[0], -p[1]))   # most frequent; ties: smallest ids
    new = 256 + m
    vocab[new] = vocab[best[0]] + vocab[best[1]]
    merges.append(best)
    segmented = {w: merge(ids, best, new) for w, ids in segmented.items()}
    n_tokens = sum(len(segmented[p]) for p in pieces)
    a, b = (vocab[t].decode() for t in best)
    print(f"merge {m + 1:2d}: {a!r} + {b!r} -> {vocab[new].decode()!r} (id {new}, count {counts[best]})"
          f"  -> {n_tokens} tokens")
    print("  " + show([segmented[p] for p in pieces]))

section("the library: BPETokenizer.train(text, vocab_size, verbose=True)")
# 256 bytes + n_merges merges + 1 special token (<|endoftext|>) = the vocabulary size
tok = BPETokenizer.train(text, 256 + n_merges + 1, verbose=not FAST)
same = list(tok.merges) == merges
print(f"the library learned the same {n_merges} merges: {same}")
ids = tok.encode(text)
ours = [t for p in pieces for t in segmented[p]]
print(f"encode(text): {len(ids)} tokens, equal to ours: {ids == ours}; decode gives the text back: "
      f"{tok.decode(ids) == text}")
unseen = "the rat sat on that mat"
print(f"an unseen sentence: {unseen!r} -> " + "|".join(tok.decode([t]) for t in tok.encode(unseen)))
done(f"{n_merges} merges by hand; the library agrees: {same and ids == ours}")
