"""The common tokenizer protocol, reading and writing its JSON files, and `load_tokenizer`.

Every tokenizer turns text into a list of integer token ids in ``[0, vocab_size)`` and back:

    ids = tok.encode("Hello")        # list[int]
    text = tok.decode(ids)           # str
    d = tok.to_dict()                # JSON-serialisable dict with a "type" field
    tok2 = load_tokenizer(d)         # or load_tokenizer("tokenizer.json")

The trainer stores ``to_dict()`` inside its checkpoint JSON, so a tokenizer must be fully described by plain JSON
values (never pickle). Every dict carries ``"format": "tinygrad-llm-tokenizer"``, ``"version"`` and ``"type"``
(``"bpe"`` or ``"char"``); `load_tokenizer` dispatches on ``"type"``.
"""
from __future__ import annotations

import json
import os
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Collection, Iterable, Literal, Mapping, Union

FORMAT_NAME = "tinygrad-llm-tokenizer"

PathLike = Union[str, os.PathLike]
AllowedSpecial = Union[Literal["all", "none"], Collection[str]]


class TokenizerFormatError(ValueError):
    """A tokenizer file or dict is malformed (bad JSON, wrong type, inconsistent contents)."""


class Tokenizer(ABC):
    """Base class of all tokenizers: a bijection-ish map between text and ids in ``[0, vocab_size)``."""

    #: the value of the "type" field in this tokenizer's dict; subclasses set it
    type_name: str = ""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of token ids; valid ids are ``0 .. vocab_size - 1``."""

    @property
    def eos_id(self) -> int | None:
        """Id of the end-of-text token, or None when the tokenizer has none."""
        return None

    #: special token name -> id (empty when the tokenizer has none); subclasses with specials set their own
    special_tokens: Mapping[str, int] = MappingProxyType({})

    @abstractmethod
    def encode(self, text: str, allowed_special: AllowedSpecial = ()) -> list[int]:
        """Text -> list of token ids. Special-token names in ``text`` are plain text unless listed in
        ``allowed_special`` (a set of names, or "all"): user text can never produce control tokens by default."""

    @abstractmethod
    def decode(self, ids: Iterable[int]) -> str:
        """Token ids -> text."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description with "format", "version" and "type" fields."""

    @classmethod
    @abstractmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Tokenizer":
        """Rebuild a tokenizer from `to_dict()` output; raises TokenizerFormatError when malformed."""

    def save(self, path: PathLike) -> None:
        """Write `to_dict()` as JSON to `path` atomically (temp file + rename)."""
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: PathLike) -> "Tokenizer":
        """Read a tokenizer JSON file written by `save`; the file's "type" must match this class."""
        d = read_json(path)
        if d.get("type") != cls.type_name:
            raise TokenizerFormatError(
                f"{path}: tokenizer file has type {d.get('type')!r}, expected {cls.type_name!r} "
                f"(use load_tokenizer() to load any type)")
        try:
            return cls.from_dict(d)
        except TokenizerFormatError as e:
            raise TokenizerFormatError(f"{path}: {e}") from None

    def __len__(self) -> int:
        return self.vocab_size


# ---------------------------------------------------------------------------------------------------------- files

def atomic_write_text(path: PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` so that readers see either the old file or the whole new one."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_json(path: PathLike, obj: Any) -> None:
    """JSON-encode `obj` (ASCII-escaped, so any string survives) and write it atomically to `path`."""
    atomic_write_text(path, json.dumps(obj, ensure_ascii=True, separators=(",", ":")) + "\n")


def read_json(path: PathLike) -> dict[str, Any]:
    """Read a JSON object from `path`, with errors that name the file."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"tokenizer file not found: {path}") from None
    except IsADirectoryError:
        raise IsADirectoryError(f"expected a tokenizer JSON file but got a directory: {path}") from None
    except UnicodeDecodeError as e:
        raise TokenizerFormatError(f"{path}: not a UTF-8 text file ({e})") from None
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise TokenizerFormatError(f"{path}: not valid JSON (truncated or corrupt?): {e}") from None
    if not isinstance(d, dict):
        raise TokenizerFormatError(f"{path}: expected a JSON object, got {type(d).__name__}")
    return d


# ------------------------------------------------------------------------------------------------------- registry

_REGISTRY: dict[str, type[Tokenizer]] = {}


def register_tokenizer(cls: type[Tokenizer]) -> type[Tokenizer]:
    """Class decorator: make `load_tokenizer` dispatch `cls.type_name` to `cls`."""
    _REGISTRY[cls.type_name] = cls
    return cls


def load_tokenizer(source: Union[PathLike, Mapping[str, Any]]) -> Tokenizer:
    """Load a tokenizer from a JSON file path or from a dict made by `to_dict()`, dispatching on its "type"."""
    if isinstance(source, Mapping):
        d, where = source, "tokenizer dict"
    else:
        d, where = read_json(source), str(source)
    kind = d.get("type")
    if kind not in _REGISTRY:
        raise TokenizerFormatError(
            f"{where}: unknown tokenizer type {kind!r}; known types: {sorted(_REGISTRY)}")
    try:
        return _REGISTRY[kind].from_dict(d)
    except TokenizerFormatError as e:
        raise TokenizerFormatError(f"{where}: {e}") from None


def resolve_allowed(allowed_special: AllowedSpecial, specials: Collection[str], where: str) -> frozenset[str]:
    """The special-token names ``encode`` may recognise: "all", "none" / empty, or a set of known names."""
    if isinstance(allowed_special, str):
        if allowed_special == "all":
            return frozenset(specials)
        if allowed_special == "none":
            return frozenset()
        raise ValueError(f"{where}: allowed_special must be 'all', 'none' or a set of special token names, got "
                         f"the string {allowed_special!r} (wrap one name in a set: {{{allowed_special!r}}})")
    allowed = frozenset(allowed_special or ())
    unknown = allowed - set(specials)
    if unknown:
        raise ValueError(f"{where}: unknown special tokens {sorted(unknown)}; this tokenizer has {sorted(specials)}")
    return allowed


_CACHE_LIMIT = 200_000      # words kept in an encode cache before it is cleared (bounds memory on huge corpora)


def encode_around(text: str, pat, token_id: Callable[[Any], int], encode_ordinary: Callable[[str], list[int]]
                  ) -> list[int]:
    """Ids of ``text`` where each match of ``pat`` is one token (``token_id(match)``) and the text between
    matches goes through ``encode_ordinary``."""
    out: list[int] = []
    start = 0
    for m in pat.finditer(text):
        if m.start() > start:
            out.extend(encode_ordinary(text[start:m.start()]))
        out.append(token_id(m))
        start = m.end()
    if start < len(text):
        out.extend(encode_ordinary(text[start:]))
    return out


def encode_words(words: Iterable[str], cache: dict, encode_word: Callable[[str], tuple[int, ...]]) -> list[int]:
    """The concatenated ids of pre-tokenized ``words``, each encoded once and remembered in ``cache``."""
    out: list[int] = []
    for word in words:
        ids = cache.get(word)
        if ids is None:
            ids = encode_word(word)
            if len(cache) >= _CACHE_LIMIT:
                cache.clear()
            cache[word] = ids
        out.extend(ids)
    return out


def check_disallowed(text: str, disallowed: Collection[str], where: str) -> None:
    """Raise when ``text`` contains one of the ``disallowed`` special-token names (tiktoken's guard)."""
    found = sorted(n for n in disallowed if n in text)
    if found:
        raise ValueError(f"{where}: the text contains the special token {found[0]!r}; pass "
                         f"allowed_special={{{found[0]!r}}} (or 'all') to encode it as that token, or leave "
                         "disallowed_special empty to encode it as plain text")


def check_header(d: Mapping[str, Any], type_name: str, version: int) -> None:
    """Validate the common "format"/"type"/"version" fields of a tokenizer dict."""
    if not isinstance(d, Mapping):
        raise TokenizerFormatError(f"expected a dict, got {type(d).__name__}")
    if d.get("format", FORMAT_NAME) != FORMAT_NAME:
        raise TokenizerFormatError(f"'format' is {d.get('format')!r}, expected {FORMAT_NAME!r}")
    if d.get("type") != type_name:
        raise TokenizerFormatError(f"'type' is {d.get('type')!r}, expected {type_name!r}")
    if d.get("version") != version:
        raise TokenizerFormatError(
            f"unsupported {type_name} tokenizer version {d.get('version')!r} (this code reads version {version})")


def ids_to_list(ids: Iterable[int], where: str) -> list[int]:
    """Accept a list/tuple/range/NumPy or CuPy array of ids (T,); return a list of Python ints."""
    if hasattr(ids, "tolist") and hasattr(ids, "ndim"):      # numpy / cupy arrays
        if ids.ndim > 1:
            raise ValueError(f"{where}: expected a 1-D sequence of token ids, got an array of shape {ids.shape}")
        if ids.ndim == 1 and ids.dtype.kind not in "iu":
            raise TypeError(f"{where}: token ids must be integers, got an array of dtype {ids.dtype}")
        ids = ids.tolist()
        return [ids] if isinstance(ids, int) else ids
    if isinstance(ids, (str, bytes)):
        raise TypeError(f"{where}: expected a sequence of token ids, got {type(ids).__name__}")
    return ids if isinstance(ids, list) else list(ids)


def lookup_ids(table: list, ids: list[int], where: str) -> list:
    """``[table[i] for i in ids]`` with clear errors: ids out of range (negative ids must not wrap) or not ints."""
    try:
        if ids and min(ids) < 0:
            check_ids(ids, len(table), where)       # raises, naming the id
        return [table[i] for i in ids]
    except IndexError:
        check_ids(ids, len(table), where)
        raise
    except TypeError:
        bad = next((i for i in ids if not hasattr(i, "__index__")), None)
        raise TypeError(f"{where}: token ids must be integers, got {bad!r} ({type(bad).__name__})") from None


def check_ids(ids: list[int], vocab_size: int, where: str) -> None:
    """Raise a clear ValueError when any id is outside ``[0, vocab_size)`` (negative ids must not wrap)."""
    if not ids:
        return
    lo, hi = min(ids), max(ids)
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise ValueError(f"{where}: token id {bad} is out of range for vocab_size {vocab_size} "
                         f"(valid ids are 0..{vocab_size - 1})")
