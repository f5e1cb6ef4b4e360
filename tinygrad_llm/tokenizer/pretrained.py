"""Tokenizers in Hugging Face model folders: ``from_pretrained(folder)`` and ``save_pretrained(tok, folder)``.

    tok = from_pretrained("Llama-3.2-1B/")     # tokenizer.json (+ tokenizer_config.json for bos/eos)
    tok = from_pretrained("gpt2/")             # tokenizer.json, or vocab.json + merges.txt / encoder.json + vocab.bpe
    save_pretrained(tok, "out/")               # tokenizer.json + tokenizer_config.json (+ vocab.json/merges.txt)

Which token ends a text comes from ``tokenizer_config.json`` (``eos_token``), else ``generation_config.json``
(the first ``eos_token_id``), else a conventional name the vocabulary has ("<|endoftext|>", "<|end_of_text|>",
"<eos>", "</s>"). A ``BPETokenizer`` (trained here) is written as an equivalent byte-level ``tokenizer.json``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .base import PathLike, Tokenizer, TokenizerFormatError, atomic_write_text, load_tokenizer, read_json
from .bpe import BPETokenizer
from .bpe_train import GPT2_PATTERN
from .gpt2_files import token_to_gpt2_string
from .hf import HFTokenizer

__all__ = ["from_pretrained", "save_pretrained", "bpe_to_tokenizer_json"]

_EOS_NAMES = ("<|endoftext|>", "<|end_of_text|>", "<eos>", "</s>")
_BOS_NAMES = ("<|begin_of_text|>", "<bos>", "<s>")


def _token_name(v: Any) -> str | None:
    """A tokenizer_config.json token entry: a string or {"content": ...}."""
    if isinstance(v, dict):
        v = v.get("content")
    return v if isinstance(v, str) else None


def _read_optional(path: Path) -> dict:
    return read_json(path) if path.is_file() else {}


def from_pretrained(path: PathLike) -> Tokenizer:
    """The tokenizer of a Hugging Face model folder (or a ``tokenizer.json`` / our own tokenizer JSON file)."""
    p = Path(path)
    if p.is_file():
        d = read_json(p)
        if d.get("format") == "tinygrad-llm-tokenizer":
            return load_tokenizer(d)
        return _hf_from_folder(p.parent, p)
    if not p.is_dir():
        raise FileNotFoundError(f"tokenizer: {str(p)!r} is neither a folder nor a tokenizer file")
    if (p / "tokenizer.json").is_file():
        return _hf_from_folder(p, p / "tokenizer.json")
    for enc, bpe in (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")):
        if (p / enc).is_file() and (p / bpe).is_file():
            return BPETokenizer.from_gpt2_files(p / enc, p / bpe)
    hint = " (tokenizer.model is SentencePiece's format, which is not read: use the folder's tokenizer.json)" \
        if (p / "tokenizer.model").exists() else ""
    raise FileNotFoundError(f"no tokenizer in {str(p)!r}: expected tokenizer.json, vocab.json + merges.txt or "
                            f"encoder.json + vocab.bpe{hint}")


def _hf_from_folder(folder: Path, file: Path) -> HFTokenizer:
    spec = read_json(file)
    cfg = _read_optional(folder / "tokenizer_config.json")
    names = {t.get("content") for t in spec.get("added_tokens") or []} | set((spec.get("model") or {}).get("vocab", {}))
    eos, bos = _token_name(cfg.get("eos_token")), _token_name(cfg.get("bos_token"))
    if eos is None:
        gen = _read_optional(folder / "generation_config.json")
        eid = gen.get("eos_token_id")
        eid = eid[0] if isinstance(eid, list) and eid else eid
        if isinstance(eid, int):
            eos = next((t["content"] for t in spec.get("added_tokens") or [] if t.get("id") == eid), None)
    eos = eos if eos is not None else next((n for n in _EOS_NAMES if n in names), None)
    bos = bos if bos is not None else next((n for n in _BOS_NAMES if n in names), None)
    for role, name in (("eos_token", eos), ("bos_token", bos)):
        if name is not None and name not in names:
            raise TokenizerFormatError(f"{folder / 'tokenizer_config.json'}: {role} {name!r} is not a token of "
                                       f"{file}")
    return HFTokenizer(spec, eos_token=eos, bos_token=bos, where=str(file))


def bpe_to_tokenizer_json(tok: BPETokenizer) -> dict[str, Any]:
    """The ``tokenizer.json`` of a byte-level ``BPETokenizer`` (same ids; GPT-2's layout when the pattern is
    GPT-2's)."""
    vocab = {token_to_gpt2_string(tok.id_to_token(i)): i for i in range(256 + len(tok.merges))}
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                  "use_regex": tok.pattern == GPT2_PATTERN}
    pre = byte_level if tok.pattern == GPT2_PATTERN else {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": tok.pattern}, "behavior": "Isolated", "invert": False}, byte_level]}
    merges = [[token_to_gpt2_string(tok.id_to_token(a)), token_to_gpt2_string(tok.id_to_token(b))]
              for a, b in tok.merges]
    added = [{"id": i, "content": name, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for name, i in sorted(tok.special_tokens.items(), key=lambda x: x[1])]
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
            "pre_tokenizer": pre,
            "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
            "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                      "vocab": vocab, "merges": merges}}


def save_pretrained(tok: Tokenizer, folder: PathLike, chat_template: str | None = None,
                    model_max_length: int | None = None) -> Path:
    """Write ``tok`` into a Hugging Face folder: ``tokenizer.json`` and ``tokenizer_config.json`` (bos/eos names,
    the Jinja ``chat_template``: by default the one of the chat markers the tokenizer has, none for a tokenizer
    without them); a ``BPETokenizer`` also as GPT-2's ``vocab.json`` + ``merges.txt``."""
    from .chat import chat_template_for
    if chat_template is None and chat_template_for(tok).name != "alpaca":
        chat_template = chat_template_for(tok).jinja
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(tok, BPETokenizer):
        spec = bpe_to_tokenizer_json(tok)
        tok.to_gpt2_files(folder / "vocab.json", folder / "merges.txt")
        eos_name = next((n for n, i in tok.special_tokens.items() if i == tok.eos_id), None)
        bos_name = None
        atomic_write_text(folder / "tokenizer.json", json.dumps(spec, ensure_ascii=False) + "\n")
    elif isinstance(tok, HFTokenizer):
        tok.save_json(folder / "tokenizer.json")
        eos_name, bos_name = tok.eos_token, tok.bos_token
    else:
        raise TypeError(f"save_pretrained: a {type(tok).__name__} has no Hugging Face file format (only BPE "
                        "tokenizers do)")
    cfg: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False}
    if eos_name is not None:
        cfg["eos_token"] = eos_name
    if bos_name is not None:
        cfg["bos_token"] = bos_name
    if model_max_length is not None:
        cfg["model_max_length"] = int(model_max_length)
    if chat_template is not None:
        cfg["chat_template"] = chat_template
    atomic_write_text(folder / "tokenizer_config.json", json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
    return folder
