"""Byte-level BPE training with incremental pair counts.

The naive loop rescans every word after every merge (O(merges x corpus)). Here the text is first reduced to its
unique pre-token "words" with their frequencies, and three structures are kept up to date:

- ``pair_counts[(a, b)]``: how often the adjacent pair occurs, weighted by word frequency;
- ``where[(a, b)]``: the indices of words that contain (or once contained) the pair;
- a max-heap of ``(-count, a, b)`` entries, updated lazily: an entry whose count is stale is re-pushed with the
  current count when popped, and entries of merged or vanished pairs are dropped.

After merging the best pair only the words listed in ``where[pair]`` are rewritten, and only the pairs whose counts
changed are pushed again. Ties in count go to the smallest ``(a, b)`` id pair, so training is deterministic.
A pair whose bytes would spell an existing token is skipped (a safety net: every id keeps distinct bytes).

Merges are applied left to right without overlap (``a a a`` with merge ``(a, a)`` -> ``aa a``), exactly as encoding
applies them, so encoding a training word reproduces its training segmentation.
"""
from __future__ import annotations

import heapq
import time
from collections import Counter, defaultdict
from typing import Iterable

import regex

# GPT-2's pre-tokenization pattern (openai/gpt-2 src/encoder.py).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def split_on_specials(text: str, specials: Iterable[str]) -> list[str]:
    """Split `text` around occurrences of the special tokens, keeping the specials as separate pieces."""
    specials = sorted(set(specials), key=len, reverse=True)   # longest first so overlapping names prefer the longest
    if not specials:
        return [text]
    pat = regex.compile("(" + "|".join(regex.escape(s) for s in specials) + ")")
    return [piece for piece in pat.split(text) if piece]


def count_words(text: str, pattern: str, special_tokens: Iterable[str] = ()) -> Counter:
    """Pre-tokenize `text` (special tokens removed) and count each unique word."""
    pat = regex.compile(pattern)
    specials = set(special_tokens)
    counts: Counter = Counter()
    for piece in split_on_specials(text, specials):
        if piece not in specials:
            counts.update(pat.findall(piece))
    return counts


def merge_word(word: list[int], a: int, b: int, new_id: int) -> list[int]:
    """Replace every non-overlapping (a, b), scanning left to right, by `new_id`."""
    out: list[int] = []
    i, n = 0, len(word)
    while i < n:
        if i < n - 1 and word[i] == a and word[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def train_merges(word_counts: Counter, n_merges: int, verbose: bool = False) -> list[tuple[int, int]]:
    """Learn up to `n_merges` merges over byte ids 0..255; merge i creates token id 256 + i.

    Returns the merges in rank order. Fewer are returned when no adjacent pair is left to merge.
    """
    # Insertion order of the Counter is first occurrence in the text, so the word order is deterministic.
    words: list[list[int]] = [list(w.encode("utf-8")) for w in word_counts]
    freqs: list[int] = list(word_counts.values())

    pair_counts: dict[tuple[int, int], int] = defaultdict(int)
    where: dict[tuple[int, int], set[int]] = defaultdict(set)
    for wi, w in enumerate(words):
        f = freqs[wi]
        for p in zip(w, w[1:]):
            pair_counts[p] += f
            where[p].add(wi)
    heap = [(-c, p[0], p[1]) for p, c in pair_counts.items()]
    heapq.heapify(heap)

    merges: list[tuple[int, int]] = []
    # If two different pairs ever spelled the same bytes ("ab"+"c" and "a"+"bc") the later one is skipped, so every
    # id has distinct bytes (token_to_id is unambiguous and the vocabulary can be written as GPT-2's encoder.json).
    token_bytes: list[bytes] = [bytes([i]) for i in range(256)]
    known: set[bytes] = set(token_bytes)
    banned: set[tuple[int, int]] = set()
    t0 = time.perf_counter()
    while len(merges) < n_merges and heap:
        neg, a, b = heapq.heappop(heap)
        pair = (a, b)
        count = pair_counts.get(pair, 0)
        if count <= 0 or pair in banned:
            continue                                   # already merged, vanished, or a duplicate spelling
        if count != -neg:
            heapq.heappush(heap, (-count, a, b))       # stale entry: requeue with the true count
            continue
        merged = token_bytes[a] + token_bytes[b]
        if merged in known:
            banned.add(pair)
            continue
        new_id = 256 + len(merges)
        merges.append(pair)
        token_bytes.append(merged)
        known.add(merged)

        delta: dict[tuple[int, int], int] = defaultdict(int)
        for wi in where.pop(pair, ()):
            w = words[wi]
            new = merge_word(w, a, b, new_id)
            if len(new) == len(w):
                continue                               # stale index entry: the word no longer has the pair
            f = freqs[wi]
            for p in zip(w, w[1:]):
                delta[p] -= f
            for p in zip(new, new[1:]):
                delta[p] += f
                where[p].add(wi)
            words[wi] = new
        for p, d in delta.items():
            if d == 0:
                continue
            c = pair_counts[p] + d
            if c > 0:
                pair_counts[p] = c
                if d > 0 and p not in banned:
                    heapq.heappush(heap, (-c, p[0], p[1]))
            else:
                pair_counts.pop(p, None)
        pair_counts.pop(pair, None)

        if verbose and (len(merges) <= 20 or len(merges) % 500 == 0 or len(merges) == n_merges):
            show = lambda t: repr(t.decode("utf-8", "replace"))  # noqa: E731  (the text, spaces visible)
            print(f"bpe train: merge {len(merges)}/{n_merges} {show(token_bytes[a])} + {show(token_bytes[b])} -> "
                  f"{show(merged)} (ids {a} + {b} -> {new_id}) count {count} ({time.perf_counter() - t0:.1f}s)")
    return merges
