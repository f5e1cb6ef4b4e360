"""The pipeline stages of a Hugging Face ``tokenizer.json``: normalizer, pre-tokenizer and decoder, as functions.

Each ``make_*`` takes the stage's JSON spec and returns a function; a type or an option we do not implement raises
``TokenizerFormatError`` naming the field (a tokenizer that silently skipped a stage would give other ids).

    normalize = make_normalizer(spec)          # str -> str          (NFC, Replace, Prepend, Lowercase, Sequence)
    pre = make_pre_tokenizer(spec)             # str -> list[str]    (Split, ByteLevel, Sequence)
    finish = make_decoder(spec)                # (decoded str) -> str (Strip; ByteLevel/Replace/ByteFallback/Fuse
                                               #   are applied per token by the tokenizer, see ``decoder_steps``)
"""
from __future__ import annotations

import unicodedata
from typing import Any, Callable, Optional

import regex

from .base import TokenizerFormatError
from .bpe_train import GPT2_PATTERN

__all__ = ["make_normalizer", "make_pre_tokenizer", "decoder_steps", "is_byte_level", "pattern_of"]

Spec = Optional[dict[str, Any]]


def _err(where: str, msg: str) -> TokenizerFormatError:
    return TokenizerFormatError(f"{where}: {msg}")


def pattern_of(p: dict, where: str) -> str:
    """The regex (``regex`` syntax) of a ``{"Regex": ...}`` or ``{"String": ...}`` pattern spec."""
    if not isinstance(p, dict) or len(p) != 1:
        raise _err(where, f"pattern must be {{'Regex': ...}} or {{'String': ...}}, got {p!r}")
    if "Regex" in p:
        return p["Regex"]
    if "String" in p:
        return regex.escape(p["String"])
    raise _err(where, f"pattern must be {{'Regex': ...}} or {{'String': ...}}, got {p!r}")


# ------------------------------------------------------------------------------------------------ normalizers
def make_normalizer(spec: Spec, where: str = "normalizer") -> Callable[[str], str]:
    if spec is None:
        return lambda s: s
    kind = spec.get("type")
    if kind in ("NFC", "NFD", "NFKC", "NFKD"):
        return lambda s: unicodedata.normalize(kind, s)
    if kind == "Lowercase":
        return str.lower
    if kind == "Replace":
        pat, content = regex.compile(pattern_of(spec.get("pattern"), where)), spec.get("content", "")
        return lambda s: pat.sub(lambda m: content, s)
    if kind == "Prepend":
        pre = spec.get("prepend", "")
        return lambda s: pre + s if s else s
    if kind == "Sequence":
        steps = [make_normalizer(n, f"{where}.normalizers[{i}]") for i, n in enumerate(spec.get("normalizers", []))]

        def run(s: str) -> str:
            for f in steps:
                s = f(s)
            return s
        return run
    raise _err(where, f"normalizer type {kind!r} is not supported (supported: NFC, NFD, NFKC, NFKD, Lowercase, "
                      "Replace, Prepend, Sequence)")


# --------------------------------------------------------------------------------------------- pre-tokenizers
def _split(pieces: list[str], pat, behavior: str, invert: bool) -> list[str]:
    out: list[str] = []
    for s in pieces:
        spans, last = [], 0                         # (text, is_match) covering s
        for m in pat.finditer(s):
            if m.start() == m.end():
                continue
            if m.start() > last:
                spans.append((s[last:m.start()], invert))
            spans.append((m.group(), not invert))
            last = m.end()
        if last < len(s):
            spans.append((s[last:], invert))
        if behavior == "Isolated":
            out.extend(t for t, _ in spans)
        elif behavior == "Removed":
            out.extend(t for t, is_match in spans if not is_match)
        elif behavior == "MergedWithPrevious":
            cur: list[str] = []
            for t, is_match in spans:
                if is_match and cur:
                    cur[-1] += t
                else:
                    cur.append(t)
            out.extend(cur)
        elif behavior == "MergedWithNext":
            cur, carry = [], ""
            for t, is_match in spans:
                if is_match:
                    carry += t
                else:
                    cur.append(carry + t)
                    carry = ""
            if carry:
                cur.append(carry)
            out.extend(cur)
        else:  # Contiguous: runs of matches become one piece
            cur, prev_match = [], False
            for t, is_match in spans:
                if is_match and prev_match:
                    cur[-1] += t
                else:
                    cur.append(t)
                prev_match = is_match
            out.extend(cur)
    return [p for p in out if p]


_BEHAVIORS = ("Isolated", "Removed", "MergedWithPrevious", "MergedWithNext", "Contiguous")


def make_pre_tokenizer(spec: Spec, where: str = "pre_tokenizer") -> Callable[[list[str]], list[str]]:
    """A function list of pieces -> finer list of pieces (a ByteLevel stage only splits; the byte mapping is the
    model's, see ``is_byte_level``)."""
    if spec is None:
        return lambda pieces: pieces
    kind = spec.get("type")
    if kind == "Split":
        behavior = spec.get("behavior", "Isolated")
        if behavior not in _BEHAVIORS:
            raise _err(where, f"Split behavior {behavior!r} is not supported ({', '.join(_BEHAVIORS)})")
        pat, invert = regex.compile(pattern_of(spec.get("pattern"), where)), bool(spec.get("invert", False))
        return lambda pieces: _split(pieces, pat, behavior, invert)
    if kind == "ByteLevel":
        prefix = bool(spec.get("add_prefix_space", False))
        gpt2 = regex.compile(GPT2_PATTERN) if spec.get("use_regex", True) else None

        def byte_level(pieces: list[str]) -> list[str]:
            if prefix:
                pieces = [p if p.startswith(" ") else " " + p for p in pieces]
            return _split(pieces, gpt2, "Isolated", False) if gpt2 is not None else pieces
        return byte_level
    if kind == "Sequence":
        steps = [make_pre_tokenizer(p, f"{where}.pretokenizers[{i}]")
                 for i, p in enumerate(spec.get("pretokenizers", []))]

        def run(pieces: list[str]) -> list[str]:
            for f in steps:
                pieces = f(pieces)
            return pieces
        return run
    raise _err(where, f"pre-tokenizer type {kind!r} is not supported (supported: Split, ByteLevel, Sequence)")


def is_byte_level(spec: Spec) -> bool:
    """True when the pre-tokenizer maps bytes to GPT-2's printable characters (then the vocabulary is byte-level)."""
    if spec is None:
        return False
    if spec.get("type") == "ByteLevel":
        return True
    return spec.get("type") == "Sequence" and any(is_byte_level(p) for p in spec.get("pretokenizers", []))


# ----------------------------------------------------------------------------------------------------- decoders
def decoder_steps(spec: Spec, where: str = "decoder") -> tuple[bool, list[tuple[str, str]], bool, int]:
    """(byte_level, replacements, byte_fallback, strip_start) of a decoder spec.

    ``replacements`` are (old, new) string replacements applied to each token's text; ``byte_fallback`` turns
    ``<0xAB>`` tokens into the byte 0xAB; ``strip_start`` characters (spaces) are removed from the start of the
    decoded text. Fuse only joins tokens, which decoding always does.
    """
    byte_level, repl, fallback, strip, fused = False, [], False, 0, False
    specs = [] if spec is None else (spec.get("decoders", []) if spec.get("type") == "Sequence" else [spec])
    for i, d in enumerate(specs):
        kind, w = d.get("type"), f"{where}.decoders[{i}]" if spec.get("type") == "Sequence" else where
        if kind == "ByteLevel":
            byte_level = True
        elif kind == "Replace":
            pat = d.get("pattern", {})
            if "String" not in pat:
                raise _err(w, "a Replace decoder with a regex pattern is not supported")
            repl.append((pat["String"], d.get("content", "")))
        elif kind == "ByteFallback":
            fallback = True
        elif kind == "Fuse":
            fused = True
        elif kind == "Strip":       # after Fuse it strips the whole text; per token otherwise (not supported)
            if d.get("content", " ") != " " or d.get("stop", 0) != 0 or not fused:
                raise _err(w, f"only a Strip of leading spaces after a Fuse decoder is supported: {d!r}")
            strip = int(d.get("start", 0))
        else:
            raise _err(w, f"decoder type {kind!r} is not supported (supported: ByteLevel, Replace, ByteFallback, "
                          "Fuse, Strip, Sequence)")
    return byte_level, repl, fallback, strip
