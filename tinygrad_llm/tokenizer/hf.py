"""A BPE tokenizer defined by a Hugging Face ``tokenizer.json`` (Llama 3, Qwen2/3, GPT-2, Gemma's byte-fallback BPE).

    tok = HFTokenizer.from_file("Llama-3.2-1B/tokenizer.json", eos_token="<|end_of_text|>")
    tok.encode("Hello<|eot_id|>")                      # plain text: "<|eot_id|>" is spelled out in bytes
    tok.encode("Hello<|eot_id|>", allowed_special="all")  # ... now the control token
    tok.save_json("out/tokenizer.json")                # the same file layout, loadable by other tools

Encoding follows the file's pipeline: added tokens are split out first (non-special ones always, special ones
only when allowed), each remaining piece is normalized, pre-tokenized (the model's own ``Split`` regex and/or
``ByteLevel``), and each word is turned into symbols (its UTF-8 bytes as GPT-2 characters for byte-level models;
its characters, with ``<0xAB>`` byte tokens as fallback, otherwise) which are merged by rank (``apply_merges``).
``ignore_merges`` (Llama 3) takes a word found whole in the vocabulary as one token. Post-processing (a BOS
added by the template) is not applied by ``encode``: ``bos_id`` and ``add_bos`` say what the model expects.
Options that would change ids and that we do not implement are refused with an error naming the field.
"""
from __future__ import annotations

import json
from typing import Any, Iterable, Mapping

import regex

from .base import (FORMAT_NAME, AllowedSpecial, PathLike, Tokenizer, TokenizerFormatError, atomic_write_text,
                   check_disallowed, check_header, encode_around, encode_words, ids_to_list, lookup_ids, read_json,
                   register_tokenizer, resolve_allowed)
from .bpe import apply_merges
from .gpt2_files import bytes_to_unicode, unicode_to_bytes
from .hf_parts import decoder_steps, is_byte_level, make_normalizer, make_pre_tokenizer

__all__ = ["HFTokenizer"]

_BYTE_TOKEN = regex.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@register_tokenizer
class HFTokenizer(Tokenizer):
    """A ``tokenizer.json`` BPE tokenizer. ``HFTokenizer(spec, eos_token=None, bos_token=None, where=...)``."""

    type_name = "hf"
    version = 1

    def __init__(self, spec: Mapping[str, Any], eos_token: str | None = None, bos_token: str | None = None,
                 where: str = "tokenizer.json"):
        self.spec = json.loads(json.dumps(spec))          # our own copy, JSON values only
        model = self.spec.get("model") or {}
        w = f"{where}: model"
        if model.get("type", "BPE") != "BPE":
            raise TokenizerFormatError(f"{w}.type is {model.get('type')!r}; only BPE tokenizers are supported")
        for key in ("dropout", "continuing_subword_prefix", "end_of_word_suffix"):
            if model.get(key) not in (None, "", 0, 0.0):
                raise TokenizerFormatError(f"{w}.{key} = {model[key]!r} is not supported (it must be null)")
        vocab = model.get("vocab")
        if not isinstance(vocab, dict) or not vocab:
            raise TokenizerFormatError(f"{w}.vocab must be a non-empty object of token -> id")
        self.vocab: dict[str, int] = {str(k): int(v) for k, v in vocab.items()}
        self.byte_level = is_byte_level(self.spec.get("pre_tokenizer"))
        self.byte_fallback = bool(model.get("byte_fallback", False))
        self.ignore_merges = bool(model.get("ignore_merges", False))
        self.fuse_unk = bool(model.get("fuse_unk", False))
        self.unk_token = model.get("unk_token")
        self._normalize = make_normalizer(self.spec.get("normalizer"), f"{where}: normalizer")
        self._pre = make_pre_tokenizer(self.spec.get("pre_tokenizer"), f"{where}: pre_tokenizer")
        self._dec_bytes, repl, dec_fallback, self._strip = decoder_steps(self.spec.get("decoder"), f"{where}: decoder")

        # added tokens: always matched (non-special) or matched only when allowed (special)
        self.added: dict[str, dict] = {}
        for i, t in enumerate(self.spec.get("added_tokens") or []):
            if not isinstance(t, dict) or "content" not in t or "id" not in t:
                raise TokenizerFormatError(f"{where}: added_tokens[{i}] must have 'id' and 'content'")
            if t.get("single_word"):
                raise TokenizerFormatError(f"{where}: added_tokens[{i}] ({t['content']!r}) has single_word: true, "
                                           "which is not supported")
            self.added[t["content"]] = t
        self.special_tokens: dict[str, int] = {c: int(t["id"]) for c, t in self.added.items() if t.get("special")}
        self._plain_added = {c: int(t["id"]) for c, t in self.added.items() if not t.get("special")}

        n = max([*self.vocab.values(), *(int(t["id"]) for t in self.added.values())]) + 1
        self._id_str: list[str | None] = [None] * n
        for s, i in self.vocab.items():
            self._id_str[i] = s
        self._added_by_id = {int(t["id"]): c for c, t in self.added.items()}

        merges = model.get("merges") or []
        self.merges: list[tuple[str, str]] = []
        self._ranks: dict[tuple[int, int], tuple[int, int]] = {}
        for r, m in enumerate(merges):
            a, b = (m.split(" ", 1) if isinstance(m, str) else m)
            try:
                pair, new = (self.vocab[a], self.vocab[b]), self.vocab[a + b]
            except KeyError as e:
                raise TokenizerFormatError(f"{w}.merges[{r}] ({a!r}, {b!r}) uses {e.args[0]!r}, which is not in "
                                           "the vocabulary") from None
            self.merges.append((a, b))
            self._ranks.setdefault(pair, (r, new))

        if self.byte_level:
            enc = bytes_to_unicode()
            missing = [b for b in range(256) if enc[b] not in self.vocab]
            if missing:
                raise TokenizerFormatError(f"{w}.vocab lacks the byte-level token of byte {missing[0]} "
                                           f"({enc[missing[0]]!r}): every byte must have a token")
            self._byte_ids = [self.vocab[enc[b]] for b in range(256)]
        self._fallback_ids = {}
        for s, i in self.vocab.items():
            m = _BYTE_TOKEN.match(s)
            if m:
                self._fallback_ids[int(m.group(1), 16)] = i
        if self.byte_fallback and len(self._fallback_ids) < 256:
            raise TokenizerFormatError(f"{w}.byte_fallback is true but the vocabulary has only "
                                       f"{len(self._fallback_ids)} of the 256 <0xAB> byte tokens")
        if self.unk_token is not None and self.unk_token not in self.vocab:
            raise TokenizerFormatError(f"{w}.unk_token {self.unk_token!r} is not in the vocabulary")

        # id -> bytes for decoding
        u2b = unicode_to_bytes()
        self._id_bytes: list[bytes] = []
        for i, s in enumerate(self._id_str):
            if i in self._added_by_id:
                self._id_bytes.append(self._added_by_id[i].encode("utf-8"))
            elif s is None:
                self._id_bytes.append(b"")
            elif self._dec_bytes:
                self._id_bytes.append(bytes(u2b[c] for c in s) if all(c in u2b for c in s) else s.encode("utf-8"))
            elif dec_fallback and _BYTE_TOKEN.match(s):
                self._id_bytes.append(bytes([int(s[3:5], 16)]))
            else:
                for old, new in repl:
                    s = s.replace(old, new)
                self._id_bytes.append(s.encode("utf-8"))
        self.eos_token, self.bos_token = eos_token, bos_token
        for role, name in (("eos_token", eos_token), ("bos_token", bos_token)):
            if name is not None and name not in self.added and name not in self.vocab:
                raise TokenizerFormatError(f"{where}: {role} {name!r} is not a token of this tokenizer")
        self._cache: dict[str, tuple[int, ...]] = {}
        self._split_pats: dict[frozenset[str], Any] = {}

    # ------------------------------------------------------------------------------------------- construction
    @classmethod
    def from_file(cls, path: PathLike, eos_token: str | None = None, bos_token: str | None = None) -> "HFTokenizer":
        return cls(read_json(path), eos_token, bos_token, where=str(path))

    def to_json(self) -> dict[str, Any]:
        """The ``tokenizer.json`` content (merges written as pairs, the layout of tokenizers >= 0.20)."""
        spec = json.loads(json.dumps(self.spec))
        spec.setdefault("version", "1.0")
        spec["model"]["merges"] = [list(m) for m in self.merges]
        return spec

    def save_json(self, path: PathLike) -> None:
        atomic_write_text(path, json.dumps(self.to_json(), ensure_ascii=False, indent=1) + "\n")

    # ------------------------------------------------------------------------------------------------ protocol
    @property
    def vocab_size(self) -> int:
        return len(self._id_str)

    def _id_of(self, name: str | None) -> int | None:
        if name is None:
            return None
        return int(self.added[name]["id"]) if name in self.added else self.vocab[name]

    @property
    def eos_id(self) -> int | None:
        return self._id_of(self.eos_token)

    @property
    def bos_id(self) -> int | None:
        return self._id_of(self.bos_token)

    @property
    def add_bos(self) -> bool:
        """True when the file's post-processor starts every sequence with a special token (Llama 3, Gemma)."""
        pp = self.spec.get("post_processor") or {}
        steps = pp.get("processors", [pp]) if pp.get("type") == "Sequence" else [pp]
        return any(s.get("type") == "TemplateProcessing" and s.get("single") and "SpecialToken" in s["single"][0]
                   for s in steps)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT_NAME, "version": self.version, "type": self.type_name,
                "tokenizer_json": self.to_json(), "eos_token": self.eos_token, "bos_token": self.bos_token}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "HFTokenizer":
        check_header(d, cls.type_name, cls.version)
        if not isinstance(d.get("tokenizer_json"), dict):
            raise TokenizerFormatError("field 'tokenizer_json' must be the tokenizer.json object")
        return cls(d["tokenizer_json"], d.get("eos_token"), d.get("bos_token"), where="tokenizer dict")

    # ------------------------------------------------------------------------------------------------ encoding
    def encode(self, text: str, allowed_special: AllowedSpecial = (),
               disallowed_special: AllowedSpecial = ()) -> list[int]:
        """Text -> ids; special tokens only where ``allowed_special`` ("all" or a set of names) allows them
        (``disallowed_special`` makes their presence an error instead)."""
        if not isinstance(text, str):
            raise TypeError(f"HFTokenizer.encode expects str, got {type(text).__name__}")
        allowed = resolve_allowed(allowed_special, self.special_tokens, "HFTokenizer.encode")
        check_disallowed(text, resolve_allowed(disallowed_special, self.special_tokens, "HFTokenizer.encode")
                         - allowed, "HFTokenizer.encode")
        names = frozenset(self._plain_added) | allowed
        if not names:
            return self.encode_ordinary(text)
        pat = self._split_pats.get(names)
        if pat is None:
            alts = []
            for n in sorted(names, key=len, reverse=True):          # the longest name wins
                t = self.added[n]
                alts.append(("\\s*" if t.get("lstrip") else "") + f"({regex.escape(n)})"
                            + ("\\s*" if t.get("rstrip") else ""))
            pat = self._split_pats[names] = regex.compile("|".join(alts))
        return encode_around(text, pat, lambda m: int(self.added[next(g for g in m.groups() if g)]["id"]),
                             self.encode_ordinary)

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode with no added-token splitting (every name is spelled out)."""
        return encode_words(self._pre([self._normalize(text)]), self._cache, self._encode_word)

    def _encode_word(self, word: str) -> tuple[int, ...]:
        try:
            data = word.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"HFTokenizer.encode: text is not valid Unicode (lone surrogate?): {e}") from None
        if self.byte_level:
            if self.ignore_merges:
                whole = self.vocab.get("".join(bytes_to_unicode()[b] for b in data))
                if whole is not None:
                    return (whole,)
            return tuple(apply_merges([self._byte_ids[b] for b in data], self._ranks))
        if self.ignore_merges and word in self.vocab:
            return (self.vocab[word],)
        ids: list[int] = []
        unk = self.vocab.get(self.unk_token) if self.unk_token is not None else None
        for ch in word:
            i = self.vocab.get(ch)
            if i is not None:
                ids.append(i)
            elif self.byte_fallback:
                ids.extend(self._fallback_ids[b] for b in ch.encode("utf-8"))
            elif unk is not None:
                if not (self.fuse_unk and ids and ids[-1] == unk):
                    ids.append(unk)
            else:
                raise ValueError(f"HFTokenizer.encode: character {ch!r} is not in the vocabulary and the "
                                 "tokenizer has neither byte_fallback nor an unk_token")
        return tuple(apply_merges(ids, self._ranks))

    def clear_cache(self) -> None:
        self._cache.clear()

    # ------------------------------------------------------------------------------------------------ decoding
    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return b"".join(lookup_ids(self._id_bytes, ids_to_list(ids, "HFTokenizer.decode"), "HFTokenizer.decode"))

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text (invalid UTF-8 from a cut character becomes U+FFFD; a Strip decoder removes leading
        spaces)."""
        text = self.decode_bytes(ids).decode("utf-8", errors="replace")
        for _ in range(self._strip):
            if text.startswith(" "):
                text = text[1:]
        return text

    def token_to_id(self, token: str) -> int:
        if token in self.added:
            return int(self.added[token]["id"])
        try:
            return self.vocab[token]
        except KeyError:
            raise KeyError(f"{token!r} is not a token of this tokenizer") from None

    def id_to_token(self, tid: int) -> str:
        """The token's string as the file spells it (byte-level tokens in GPT-2's printable characters)."""
        tid = int(tid)
        if tid in self._added_by_id:
            return self._added_by_id[tid]
        s = self._id_str[tid] if 0 <= tid < len(self._id_str) else None
        if s is None:
            raise KeyError(f"token id {tid} is not defined by this tokenizer (vocab_size {self.vocab_size})")
        return s

    def is_special(self, tid: int) -> bool:
        return self._added_by_id.get(int(tid)) in self.special_tokens

    def __repr__(self) -> str:
        return (f"HFTokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, byte_level={self.byte_level}, "
                f"special_tokens={len(self.special_tokens)})")
