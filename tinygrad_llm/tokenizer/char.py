"""Character-level tokenizer (nanoGPT's shakespeare-char style): one id per distinct character, sorted.

JSON format (``to_dict`` / ``save``), version 1:

    {"format": "tinygrad-llm-tokenizer", "version": 1, "type": "char", "chars": ["\\n", " ", "!", ...]}

``chars[i]`` is the character with id i (each a single Unicode code point, all distinct).
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from .base import FORMAT_NAME, AllowedSpecial, Tokenizer, TokenizerFormatError, check_header, check_ids, \
    ids_to_list, lookup_ids, register_tokenizer, resolve_allowed


@register_tokenizer
class CharTokenizer(Tokenizer):
    """Maps each character of a fixed alphabet to its index; unknown characters are an error."""

    type_name = "char"
    version = 1

    def __init__(self, chars: Iterable[str]) -> None:
        """`chars`: the alphabet in id order (single characters, distinct, at least one)."""
        self.chars: list[str] = list(chars)
        if not self.chars:
            raise ValueError("CharTokenizer needs at least one character")
        for c in self.chars:
            if not isinstance(c, str) or len(c) != 1:
                raise TokenizerFormatError(f"CharTokenizer characters must be strings of length 1, got {c!r}")
        self.stoi: dict[str, int] = {c: i for i, c in enumerate(self.chars)}
        if len(self.stoi) != len(self.chars):
            raise TokenizerFormatError("CharTokenizer characters must be distinct")

    @classmethod
    def train(cls, text: str) -> "CharTokenizer":
        """The alphabet of `text`, sorted by code point (so ids match nanoGPT's prepare.py)."""
        if not isinstance(text, str):
            raise TypeError(f"CharTokenizer.train expects text as str, got {type(text).__name__}")
        if not text:
            raise ValueError("CharTokenizer.train: cannot build a vocabulary from empty text")
        return cls(sorted(set(text)))

    @classmethod
    def from_chars(cls, chars: Iterable[str]) -> "CharTokenizer":
        """A tokenizer whose alphabet is exactly `chars` in the given order (a str works: one id per char)."""
        return cls(chars)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str, allowed_special: AllowedSpecial = ()) -> list[int]:
        """Text -> ids (one per character). There are no special tokens: ``allowed_special`` may only be
        empty, "all" or "none"."""
        resolve_allowed(allowed_special, (), "CharTokenizer.encode")
        stoi = self.stoi
        try:
            return [stoi[c] for c in text]
        except KeyError:
            pass
        for pos, c in enumerate(text):              # slow path only to build the message
            if c not in stoi:
                raise ValueError(f"CharTokenizer.encode: character {c!r} (U+{ord(c):04X}) at position {pos} is not "
                                 f"in the vocabulary of {self.vocab_size} characters")
        raise AssertionError("unreachable")

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(lookup_ids(self.chars, ids_to_list(ids, "CharTokenizer.decode"), "CharTokenizer.decode"))

    def token_to_id(self, token: str) -> int:
        try:
            return self.stoi[token]
        except KeyError:
            raise KeyError(f"{token!r} is not in this CharTokenizer's vocabulary") from None

    def id_to_token(self, tid: int) -> str:
        check_ids([int(tid)], self.vocab_size, "CharTokenizer.id_to_token")
        return self.chars[int(tid)]

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT_NAME, "version": self.version, "type": self.type_name, "chars": list(self.chars)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CharTokenizer":
        check_header(d, cls.type_name, cls.version)
        chars = d.get("chars")
        if not isinstance(chars, list):
            raise TokenizerFormatError(f"field 'chars' must be a list of characters, got {type(chars).__name__}")
        try:
            return cls(chars)
        except ValueError as e:
            raise TokenizerFormatError(str(e)) from None

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"
