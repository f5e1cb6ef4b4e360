"""Reading and writing GPT-2's tokenizer files (encoder.json + vocab.bpe).

GPT-2 stores byte-level tokens as printable Unicode strings: `bytes_to_unicode()` maps each of the 256 byte values
to a character that is not whitespace or a control character (printable Latin-1 bytes map to themselves, the rest
to U+0100 and up, e.g. the space byte 0x20 becomes "Ġ"). A token's string is its bytes mapped one by one.

- ``encoder.json``: ``{token_string: id}``; special tokens such as ``"<|endoftext|>"`` appear literally.
- ``vocab.bpe``: a ``#version: 0.2`` line, then one merge per line, ``"left right"``, in rank order.

This module converts between those files and the plain parts a `BPETokenizer` is made of: ``byte_ids`` (id of each
byte value), ``merges`` (pairs of ids, merge i creating id 256 + i) and ``special_tokens`` (name -> id).
"""
from __future__ import annotations

import functools
import json
from typing import Any

from .base import PathLike, TokenizerFormatError, atomic_write_text


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable-character map (openai/gpt-2 src/encoder.py)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


@functools.lru_cache(maxsize=1)
def unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def token_to_gpt2_string(token: bytes) -> str:
    enc = bytes_to_unicode()
    return "".join(enc[b] for b in token)


def read_gpt2_files(encoder_json: PathLike, vocab_bpe: PathLike
                    ) -> tuple[list[int], list[tuple[int, int]], dict[str, int]]:
    """Parse GPT-2 files into ``(byte_ids, merges, special_tokens)``.

    The id layout must be GPT-2's: the 256 byte tokens at ids 0..255 (any order), merge i's result at id 256 + i,
    then the remaining tokens (the special tokens) at the following ids.
    """
    encoder = _read_encoder(encoder_json)
    merge_strings = _read_merges(vocab_bpe)
    dec = unicode_to_bytes()

    byte_ids = []
    for b, ch in sorted(bytes_to_unicode().items()):
        tid = encoder.get(ch)
        if tid is None or not 0 <= tid < 256:
            raise TokenizerFormatError(
                f"{encoder_json}: byte token {ch!r} (byte {b}) must have an id in 0..255, found {tid!r}")
        byte_ids.append(tid)
    if len(set(byte_ids)) != 256:
        raise TokenizerFormatError(f"{encoder_json}: the 256 byte tokens do not have 256 distinct ids")

    merges: list[tuple[int, int]] = []
    for i, (left, right) in enumerate(merge_strings):
        try:
            a, b, ab = encoder[left], encoder[right], encoder[left + right]
        except KeyError as e:
            raise TokenizerFormatError(
                f"{vocab_bpe}: merge {i} ({left!r} {right!r}) uses token {e.args[0]!r} "
                f"that is missing from {encoder_json}") from None
        if ab != 256 + i:
            raise TokenizerFormatError(
                f"{encoder_json}: merge {i} ({left!r} {right!r}) gives token id {ab}, expected {256 + i}; "
                f"only GPT-2's id layout (bytes, then merges in order, then special tokens) is supported")
        if any(c not in dec for c in left + right):
            raise TokenizerFormatError(f"{vocab_bpe}: merge {i} ({left!r} {right!r}) has a non byte-level character")
        merges.append((a, b))

    first_special = 256 + len(merges)
    specials = {tok: tid for tok, tid in encoder.items() if tid >= first_special}
    ids = sorted(specials.values())
    if ids != list(range(first_special, first_special + len(ids))) or len(encoder) != first_special + len(ids):
        raise TokenizerFormatError(
            f"{encoder_json}: has {len(encoder)} tokens but {first_special} byte/merge tokens; the others must be "
            f"special tokens with consecutive ids from {first_special} (ids must be unique)")
    return byte_ids, merges, specials


def _read_encoder(path: PathLike) -> dict[str, int]:
    try:
        with open(path, "r", encoding="utf-8") as f:
            encoder = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"GPT-2 encoder.json not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TokenizerFormatError(f"{path}: not a valid encoder.json (truncated or corrupt?): {e}") from None
    if not isinstance(encoder, dict) or not all(isinstance(v, int) for v in encoder.values()):
        raise TokenizerFormatError(f"{path}: encoder.json must be a JSON object mapping token strings to int ids")
    return encoder


def _read_merges(path: PathLike) -> list[tuple[str, str]]:
    try:
        with open(path, "r", encoding="utf-8") as f:
            lines = f.read().split("\n")
    except FileNotFoundError:
        raise FileNotFoundError(f"GPT-2 vocab.bpe not found: {path}") from None
    except UnicodeDecodeError as e:
        raise TokenizerFormatError(f"{path}: not a UTF-8 vocab.bpe file: {e}") from None
    merges = []
    for lineno, line in enumerate(lines, 1):
        if lineno == 1 and line.startswith("#version"):
            continue
        if not line.strip():
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise TokenizerFormatError(f"{path}:{lineno}: expected 'left right', got {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


def write_gpt2_files(encoder_json: PathLike, vocab_bpe: PathLike, id_bytes: list[bytes],
                     merges: list[tuple[int, int]], special_tokens: dict[str, int]) -> None:
    """Write encoder.json and vocab.bpe (atomically) for a tokenizer in GPT-2's id layout."""
    encoder: dict[str, Any] = {}
    n_regular = 256 + len(merges)
    for tid in range(n_regular):
        encoder[token_to_gpt2_string(id_bytes[tid])] = tid
    for tok, tid in special_tokens.items():
        if tok in encoder:
            raise ValueError(f"special token {tok!r} has the same GPT-2 string as regular token {encoder[tok]}; "
                             f"it cannot be written to encoder.json")
        encoder[tok] = tid
    lines = ["#version: 0.2"]
    for a, b in merges:
        lines.append(token_to_gpt2_string(id_bytes[a]) + " " + token_to_gpt2_string(id_bytes[b]))
    atomic_write_text(encoder_json, json.dumps(encoder, ensure_ascii=False) + "\n")
    atomic_write_text(vocab_bpe, "\n".join(lines) + "\n")
