"""Byte-level BPE tokenizer (GPT-2 style): train from text, encode/decode, JSON save/load, GPT-2 files.

Id layout (the same as GPT-2's, so GPT-2's files load without renumbering):

    ids 0 .. 255                 the 256 single-byte tokens (in any order; ``byte_ids[b]`` is the id of byte b)
    ids 256 .. 256 + M - 1       merge i (rank i) creates token 256 + i = token(left) + token(right)
    ids 256 + M .. vocab_size-1  special tokens such as "<|endoftext|>" (GPT-2: 50256)

Encoding: special tokens named in ``allowed_special`` are split out first (by default none: "<|endoftext|>" in
user text is just text; pass ``allowed_special="all"`` for trusted text such as a training corpus); the rest is
cut into pre-tokens ("words") by the regex `pattern` (GPT-2's by default); each word's UTF-8 bytes start as byte
tokens and the lowest-rank adjacent pair present is merged (every non-overlapping occurrence, left to right) until
no pair has a rank (``apply_merges``). That is GPT-2's own algorithm, so `from_gpt2_files` reproduces GPT-2's ids
exactly. Words are cached, which makes repeated words nearly free.

JSON format (``to_dict`` / ``save``), version 1:

    {
      "format": "tinygrad-llm-tokenizer",   # constant
      "version": 1,
      "type": "bpe",
      "pattern": "<pre-tokenization regex, Python `regex` syntax>",
      "byte_ids": [256 ints],                # id of byte value 0, 1, ..., 255 (a permutation of 0..255)
      "merges": [[left_id, right_id], ...],  # in rank order; merge i creates id 256 + i
      "special_tokens": {"<|endoftext|>": 50256, ...}   # ids 256 + M, 256 + M + 1, ... in some order
    }

The bytes of any id follow from ``byte_ids`` and ``merges``; ``id_to_token(i)`` returns them.
"""
from __future__ import annotations

import heapq
import operator
from typing import Any, Iterable, Mapping, Union

import regex

from .base import (FORMAT_NAME, AllowedSpecial, PathLike, Tokenizer, TokenizerFormatError, check_disallowed,
                   check_header, check_ids, encode_around, encode_words, ids_to_list, lookup_ids, register_tokenizer,
                   resolve_allowed)
from .bpe_train import GPT2_PATTERN, count_words, train_merges
from .gpt2_files import read_gpt2_files, write_gpt2_files

EOT = "<|endoftext|>"



@register_tokenizer
class BPETokenizer(Tokenizer):
    """Byte-level BPE. Build with `train`, `from_gpt2_files`, `load` or the constructor."""

    type_name = "bpe"
    version = 1

    def __init__(self, merges: Iterable[tuple[int, int]], special_tokens: Mapping[str, int] | Iterable[str] = (),
                 byte_ids: Iterable[int] | None = None, pattern: str = GPT2_PATTERN) -> None:
        """`merges`: id pairs in rank order (merge i creates id 256 + i). `special_tokens`: names (ids assigned
        after the merges, in order) or a name -> id dict. `byte_ids`: id of each byte value (default: identity)."""
        self.byte_ids: list[int] = list(range(256)) if byte_ids is None else [int(i) for i in byte_ids]
        if sorted(self.byte_ids) != list(range(256)):
            raise TokenizerFormatError("'byte_ids' must be a permutation of 0..255")
        id_bytes: list[bytes] = [b""] * 256
        for b, tid in enumerate(self.byte_ids):
            id_bytes[tid] = bytes([b])
        self.merges: list[tuple[int, int]] = []
        for i, pair in enumerate(merges):
            if len(pair) != 2:
                raise TokenizerFormatError(f"merge {i} must be a pair of ids, got {pair!r}")
            a, b = int(pair[0]), int(pair[1])
            if not (0 <= a < 256 + i and 0 <= b < 256 + i):
                raise TokenizerFormatError(f"merge {i} ({a}, {b}) refers to an id not defined before it "
                                           f"(ids must be < {256 + i})")
            self.merges.append((a, b))
            id_bytes.append(id_bytes[a] + id_bytes[b])
        n_regular = len(id_bytes)

        if isinstance(special_tokens, str):
            special_tokens = [special_tokens]            # one name, not its characters
        if isinstance(special_tokens, Mapping):
            specials = {str(k): int(v) for k, v in special_tokens.items()}
        else:
            specials = {}
            for name in special_tokens:
                if not isinstance(name, str):
                    raise TypeError(f"special token names must be str, got {name!r}")
                if name in specials:
                    raise ValueError(f"special token {name!r} is listed twice")
                specials[name] = n_regular + len(specials)
        if sorted(specials.values()) != list(range(n_regular, n_regular + len(specials))):
            raise TokenizerFormatError(f"special token ids {sorted(specials.values())} must be the consecutive ids "
                                       f"{n_regular}..{n_regular + len(specials) - 1} after the merges")
        if any(not name for name in specials):
            raise TokenizerFormatError("special tokens must be non-empty strings")
        self.special_tokens: dict[str, int] = specials
        self._special_by_id = {tid: name for name, tid in specials.items()}
        # id -> bytes, specials included (they decode to their UTF-8 spelling)
        self._id_bytes: list[bytes] = id_bytes + [b""] * len(specials)
        for name, tid in specials.items():
            self._id_bytes[tid] = name.encode("utf-8")
        self._bytes_to_id: dict[bytes, int] = {}
        for tid in range(n_regular - 1, -1, -1):        # reversed, so a duplicate spelling maps to its lowest id
            self._bytes_to_id[id_bytes[tid]] = tid

        self.pattern = pattern
        try:
            self._pat = regex.compile(pattern)
        except regex.error as e:
            raise TokenizerFormatError(f"invalid pre-tokenization pattern {pattern!r}: {e}") from None
        self._ranks: dict[tuple[int, int], tuple[int, int]] = {}    # pair -> (rank, id it creates)
        for rank, pair in enumerate(self.merges):
            self._ranks.setdefault(pair, (rank, 256 + rank))  # a repeated pair can never apply twice; keep the first
        self._byte_to_id = self.byte_ids            # index by byte value
        self._cache: dict[str, tuple[int, ...]] = {}
        self._special_pats: dict[frozenset[str], Any] = {}

    # ------------------------------------------------------------------------------------------------ training
    @classmethod
    def train(cls, text: str, vocab_size: int, special_tokens: Iterable[str] = (EOT,), verbose: bool = False,
              pattern: str = GPT2_PATTERN) -> "BPETokenizer":
        """Learn ``vocab_size - 256 - len(special_tokens)`` merges from `text` (fewer if the text runs out of pairs).

        Occurrences of the special tokens in `text` are removed before counting. Deterministic: the same text and
        arguments give the same merges (count ties go to the smallest pair of ids).
        """
        special_tokens = [special_tokens] if isinstance(special_tokens, str) else list(special_tokens)
        if not isinstance(text, str):
            raise TypeError(f"BPETokenizer.train expects text as str, got {type(text).__name__}")
        if not text:
            raise ValueError("BPETokenizer.train: cannot train on empty text")
        if len(set(special_tokens)) != len(special_tokens):
            raise ValueError(f"BPETokenizer.train: duplicate special tokens in {special_tokens}")
        minimum = 256 + len(special_tokens)
        try:
            vocab_size = operator.index(vocab_size)
        except TypeError:
            raise TypeError(f"BPETokenizer.train: vocab_size must be an int, got {vocab_size!r}") from None
        if vocab_size < minimum:
            raise ValueError(f"BPETokenizer.train: vocab_size must be >= 256 byte tokens + "
                             f"{len(special_tokens)} special tokens = {minimum}, got {vocab_size!r}")
        words = count_words(text, pattern, special_tokens)
        if not words:
            raise ValueError("BPETokenizer.train: the text has no content besides special tokens")
        merges = train_merges(words, vocab_size - minimum, verbose=verbose)
        if verbose and len(merges) < vocab_size - minimum:
            print(f"bpe train: text ran out of pairs after {len(merges)} merges; "
                  f"vocab_size is {minimum + len(merges)} instead of {vocab_size}")
        return cls(merges, special_tokens, pattern=pattern)

    # ----------------------------------------------------------------------------------------------- properties
    @property
    def vocab_size(self) -> int:
        return len(self._id_bytes)

    @property
    def eos_id(self) -> int | None:
        return self.special_tokens.get(EOT)

    def token_to_id(self, token: Union[str, bytes]) -> int:
        """Id of a special token name, or of a regular token given as str (UTF-8) or bytes."""
        if isinstance(token, str) and token in self.special_tokens:
            return self.special_tokens[token]
        key = token.encode("utf-8") if isinstance(token, str) else bytes(token)
        try:
            return self._bytes_to_id[key]
        except KeyError:
            raise KeyError(f"{token!r} is not a token of this BPE vocabulary") from None

    def id_to_token(self, tid: int) -> bytes:
        """The bytes of token `tid` (a special token gives its UTF-8 name)."""
        check_ids([int(tid)], self.vocab_size, "BPETokenizer.id_to_token")
        return self._id_bytes[int(tid)]

    def is_special(self, tid: int) -> bool:
        return tid in self._special_by_id

    # ------------------------------------------------------------------------------------------------- encoding
    def encode(self, text: str, allowed_special: AllowedSpecial = (),
               disallowed_special: AllowedSpecial = ()) -> list[int]:
        """Text -> ids. Special-token names in ``text`` are encoded as plain text unless named in
        ``allowed_special`` ("all" or a set of names). ``disallowed_special`` ("all" or a set) makes text that
        contains those names (and does not allow them) raise instead, as tiktoken does by default."""
        if not isinstance(text, str):
            raise TypeError(f"BPETokenizer.encode expects str, got {type(text).__name__}")
        allowed = resolve_allowed(allowed_special, self.special_tokens, "BPETokenizer.encode")
        check_disallowed(text, resolve_allowed(disallowed_special, self.special_tokens, "BPETokenizer.encode")
                         - allowed, "BPETokenizer.encode")
        if not allowed:
            return self.encode_ordinary(text)
        pat = self._special_pats.get(allowed)
        if pat is None:
            names = sorted(allowed, key=len, reverse=True)
            pat = self._special_pats[allowed] = regex.compile("|".join(regex.escape(n) for n in names))
        return encode_around(text, pat, lambda m: self.special_tokens[m.group()], self.encode_ordinary)

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode ignoring special tokens (their names become ordinary bytes)."""
        return encode_words(self._pat.findall(text), self._cache, self._encode_word)

    def _encode_word(self, word: str) -> tuple[int, ...]:
        try:
            data = word.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"BPETokenizer.encode: text is not valid Unicode (lone surrogate?): {e}") from None
        b2i = self._byte_to_id
        ids = [b2i[b] for b in data]
        if len(ids) < 2:
            return tuple(ids)
        return tuple(apply_merges(ids, self._ranks))

    def clear_cache(self) -> None:
        self._cache.clear()

    # ------------------------------------------------------------------------------------------------- decoding
    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Ids -> the raw bytes they stand for (special tokens give their UTF-8 names)."""
        return b"".join(lookup_ids(self._id_bytes, ids_to_list(ids, "BPETokenizer.decode"), "BPETokenizer.decode"))

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text; byte sequences that are not valid UTF-8 (e.g. a cut multi-byte char) become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # --------------------------------------------------------------------------------------------- persistence
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "version": self.version,
            "type": self.type_name,
            "pattern": self.pattern,
            "byte_ids": list(self.byte_ids),
            "merges": [list(p) for p in self.merges],
            "special_tokens": dict(self.special_tokens),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "BPETokenizer":
        check_header(d, cls.type_name, cls.version)
        for key, kind in (("pattern", str), ("byte_ids", list), ("merges", list), ("special_tokens", dict)):
            if not isinstance(d.get(key), kind):
                raise TokenizerFormatError(f"field {key!r} must be a {kind.__name__}, got {type(d.get(key)).__name__}")
        if len(d["byte_ids"]) != 256 or not all(isinstance(i, int) for i in d["byte_ids"]):
            raise TokenizerFormatError("'byte_ids' must be a list of 256 ints")
        for i, m in enumerate(d["merges"]):
            if not (isinstance(m, list) and len(m) == 2 and all(isinstance(x, int) for x in m)):
                raise TokenizerFormatError(f"merge {i} must be a pair of int ids, got {m!r}")
        if not all(isinstance(v, int) for v in d["special_tokens"].values()):
            raise TokenizerFormatError("'special_tokens' must map names to int ids")
        return cls(d["merges"], d["special_tokens"], byte_ids=d["byte_ids"], pattern=d["pattern"])

    @classmethod
    def from_gpt2_files(cls, encoder_json: PathLike, vocab_bpe: PathLike) -> "BPETokenizer":
        """Load GPT-2's ``encoder.json`` + ``vocab.bpe``; ids are exactly GPT-2's ("<|endoftext|>" = 50256)."""
        byte_ids, merges, specials = read_gpt2_files(encoder_json, vocab_bpe)
        return cls(merges, specials, byte_ids=byte_ids, pattern=GPT2_PATTERN)

    def to_gpt2_files(self, encoder_json: PathLike, vocab_bpe: PathLike) -> None:
        """Write this tokenizer as GPT-2 ``encoder.json`` + ``vocab.bpe`` (the pattern is not stored there)."""
        write_gpt2_files(encoder_json, vocab_bpe, self._id_bytes, self.merges, self.special_tokens)

    def __repr__(self) -> str:
        return (f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
                f"special_tokens={list(self.special_tokens)})")


def apply_merges(ids: list[int], ranks: Mapping[tuple[int, int], tuple[int, int]]) -> list[int]:
    """Apply BPE merges to one word's symbol ids: repeatedly merge the lowest-rank adjacent pair, leftmost first.

    ``ranks`` maps a pair of ids to (rank, id of the merged token). GPT-2's bpe() and Hugging Face's BPE model
    both take the lowest-rank pair and merge it left to right; the naive loop is O(n^2) per word (minutes on a
    100 kB run of letters). Here a heap of (rank, position) over a linked list gives the same result in
    O(n log n): stale entries (the pair at a position changed) are skipped when popped.
    """
    n = len(ids)
    if n < 2:
        return list(ids)
    tokens = list(ids)
    nxt = list(range(1, n + 1))
    nxt[-1] = -1
    prv = list(range(-1, n - 1))
    alive = [True] * n
    heap = []
    for i in range(n - 1):
        m = ranks.get((tokens[i], tokens[i + 1]))
        if m is not None:
            heap.append((m[0], i))
    heapq.heapify(heap)
    while heap:
        r, i = heapq.heappop(heap)
        if not alive[i]:
            continue
        j = nxt[i]
        m = ranks.get((tokens[i], tokens[j])) if j != -1 else None
        if m is None or m[0] != r:
            continue                    # stale: the pair at i changed (a rank names exactly one pair)
        tokens[i] = m[1]
        alive[j] = False
        k = nxt[j]
        nxt[i] = k
        if k != -1:
            prv[k] = i
            m2 = ranks.get((tokens[i], tokens[k]))
            if m2 is not None:
                heapq.heappush(heap, (m2[0], i))
        p = prv[i]
        if p != -1:
            m2 = ranks.get((tokens[p], tokens[i]))
            if m2 is not None:
                heapq.heappush(heap, (m2[0], p))
    out = []
    i = 0
    while i != -1:
        out.append(tokens[i])
        i = nxt[i]
    return out
