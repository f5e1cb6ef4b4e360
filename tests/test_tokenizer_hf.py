"""tokenizer.json tokenizers (Llama 3 / Qwen / GPT-2 byte-level BPE, Gemma's byte-fallback BPE): ids, special-token
safety, save/load round trips, folders, clear errors; equal to the `tokenizers` package's ids when it is installed."""
import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinygrad_llm import tokenizer as T
from tinygrad_llm.tokenizer import BPETokenizer, TokenizerFormatError, load_tokenizer
from tinygrad_llm.tokenizer.hf import HFTokenizer
from tinygrad_llm.tokenizer.pretrained import bpe_to_tokenizer_json, from_pretrained, save_pretrained

LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
          r"\s+(?!\S)|\s+")
QWEN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
        r"\s+(?!\S)|\s+")
CORPUS = ("The quick brown fox jumps over the lazy dog. Don't you'LL see 12345 naïve café 日本語 ÅÅ?\r\n\t  x  "
          "def f(x):\n    return x * 2  # twice\n") * 30
MIXED = ["Hello<|eot_id|> world<|begin_of_text|>x", "cafe\u0301 e\u0301 Ａ", "  \n\n  a  b\r\n", "'S 'll 1234567 ##",
         "<|eot_id|><|eot_id|>", "<start_of_turn>user\nhi 日本<end_of_turn>", "", "🙂 emoji ⃢", CORPUS[:700]]
SPECIALS = ["<|begin_of_text|>", "<|eot_id|>", "<start_of_turn>", "<end_of_turn>"]


def byte_level_spec(pattern: str, shuffle: bool = True, ignore_merges: bool = False, nfc: bool = False):
    """A tokenizer.json trained here: regular ids shuffled (byte tokens need not be 0..255), specials after them."""
    bpe = BPETokenizer.train(CORPUS, 700, special_tokens=SPECIALS, pattern=pattern)
    spec = bpe_to_tokenizer_json(bpe)
    m = 256 + len(bpe.merges)
    perm = list(range(m))
    if shuffle:
        random.Random(0).shuffle(perm)
    perm += list(range(m, bpe.vocab_size))
    spec["model"]["vocab"] = {k: perm[v] for k, v in spec["model"]["vocab"].items()}
    for t in spec["added_tokens"]:
        t["id"] = perm[t["id"]]
    spec["model"]["ignore_merges"] = ignore_merges
    if nfc:
        spec["normalizer"] = {"type": "NFC"}
    return bpe, spec, perm


def sentencepiece_spec():
    """Gemma-style: spaces become '▁' (normalizer), characters are symbols, unknown characters fall back to
    <0xAB> byte tokens; merges come from a byte-level training, keeping the pieces that are whole characters."""
    text = CORPUS.replace(" ", "\u2581")
    bpe = BPETokenizer.train(text, 600, special_tokens=[], pattern=r"\u2581?[^\u2581]+|\u2581+")
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}
    vocab.update({f"<0x{b:02X}>": 4 + b for b in range(256)})
    strings = {}
    for i in range(bpe.vocab_size):
        try:
            strings[i] = bpe.id_to_token(i).decode("utf-8")
        except UnicodeDecodeError:
            continue
    for ch in sorted(set(text) - {"\t"}):                      # a tab is left to the byte fallback
        vocab.setdefault(ch, len(vocab))
    merges = []
    for a, b in bpe.merges:
        if a in strings and b in strings and all(c in vocab for c in strings[a] + strings[b]):
            merged = strings[a] + strings[b]
            if merged not in vocab:
                vocab[merged] = len(vocab)
                merges.append([strings[a], strings[b]])
    added = [{"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": True} for c, i in list(vocab.items())[:4]]
    added += [{"id": len(vocab) + k, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
               "normalized": False, "special": True} for k, c in enumerate(SPECIALS)]
    return {"version": "1.0", "added_tokens": added,
            "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"},
            # transformers' Gemma converter: split on " " after the normalizer made every space "▁" (a no-op)
            "pre_tokenizer": {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious",
                              "invert": False},
            "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<bos>", "type_id": 0}},
                                                                       {"Sequence": {"id": "A", "type_id": 0}}],
                               "pair": [], "special_tokens": {"<bos>": {"id": "<bos>", "ids": [2], "tokens": ["<bos>"]}}},
            "decoder": {"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"}]},
            "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                      "vocab": vocab, "merges": merges}}


# ------------------------------------------------------------------------------------------------ no reference
@pytest.mark.parametrize("pattern", [LLAMA3, QWEN, T.GPT2_PATTERN])
def test_byte_level_ids_equal_our_bpe(pattern):
    bpe, spec, perm = byte_level_spec(pattern)
    tok = HFTokenizer(spec)
    for text in MIXED:
        assert tok.encode(text) == [perm[i] for i in bpe.encode(text)]
        assert tok.encode(text, allowed_special="all") == [perm[i] for i in bpe.encode(text, allowed_special="all")]
        assert tok.decode(tok.encode(text, allowed_special="all")) == text


def test_special_tokens_only_when_allowed():
    _, spec, _ = byte_level_spec(LLAMA3)
    tok = HFTokenizer(spec, eos_token="<|eot_id|>", bos_token="<|begin_of_text|>")
    eot = tok.special_tokens["<|eot_id|>"]
    assert tok.eos_id == eot and tok.bos_id == tok.special_tokens["<|begin_of_text|>"]
    text = "hi<|eot_id|>there<|begin_of_text|>"
    assert eot not in tok.encode(text) and tok.decode(tok.encode(text)) == text
    assert tok.encode(text, allowed_special={"<|eot_id|>"}).count(eot) == 1
    assert tok.bos_id not in tok.encode(text, allowed_special={"<|eot_id|>"})
    with pytest.raises(ValueError, match="contains the special token"):
        tok.encode(text, disallowed_special="all")
    with pytest.raises(ValueError, match="unknown special tokens"):
        tok.encode(text, allowed_special={"<|nope|>"})


def test_non_special_added_tokens_always_match_and_lstrip():
    _, spec, _ = byte_level_spec(LLAMA3, shuffle=False)
    n = max(t["id"] for t in spec["added_tokens"]) + 1
    spec["added_tokens"] += [{"id": n, "content": "<think>", "special": False},
                             {"id": n + 1, "content": "<mask>", "special": True, "lstrip": True}]
    tok = HFTokenizer(spec)
    assert tok.encode("a<think>b")[1] == n                      # not special: always one token
    assert tok.encode("a   <mask>", allowed_special="all")[-1] == n + 1
    assert len(tok.encode("a   <mask>", allowed_special="all")) == 2    # lstrip took the spaces


def test_ignore_merges_takes_whole_words():
    _, spec, _ = byte_level_spec(LLAMA3, shuffle=False)
    v = spec["model"]["vocab"]
    v["Ġxqzv"] = max(max(v.values()), max(t["id"] for t in spec["added_tokens"])) + 1   # no merge builds it
    assert len(HFTokenizer(spec).encode(" xqzv")) > 1
    spec["model"]["ignore_merges"] = True
    assert HFTokenizer(spec).encode(" xqzv") == [v["Ġxqzv"]]


def test_sentencepiece_style_round_trip_and_fallback():
    tok = HFTokenizer(sentencepiece_spec(), eos_token="<eos>", bos_token="<bos>")
    assert tok.add_bos and tok.bos_id == 2 and tok.eos_id == 1
    ids = tok.encode("the quick\tfox")
    assert tok.decode(ids) == "the quick\tfox"
    assert tok.token_to_id("<0x09>") in ids                     # the tab went through the byte fallback
    assert tok.decode(tok.encode("€ 日本 🙂")) == "€ 日本 🙂"


@settings(deadline=None, max_examples=60)
@given(st.text(max_size=40))
def test_any_text_round_trips(text):
    for spec in (byte_level_spec(QWEN)[1], sentencepiece_spec()):
        tok = _cached(spec)
        assert tok.decode(tok.encode(text)) == text


_TOKS: dict = {}


def _cached(spec):
    key = json.dumps(spec.get("normalizer"))
    if key not in _TOKS:
        _TOKS[key] = HFTokenizer(spec)
    return _TOKS[key]


def test_save_load_round_trips(tmp_path):
    _, spec, _ = byte_level_spec(LLAMA3, ignore_merges=True, nfc=True)
    tok = HFTokenizer(spec, eos_token="<|eot_id|>")
    tok.save_json(tmp_path / "tokenizer.json")
    again = HFTokenizer.from_file(tmp_path / "tokenizer.json", eos_token="<|eot_id|>")
    via_dict = load_tokenizer(json.loads(json.dumps(tok.to_dict())))
    for text in MIXED:
        for t in (again, via_dict):
            assert t.encode(text, allowed_special="all") == tok.encode(text, allowed_special="all")
    assert via_dict.eos_id == tok.eos_id
    assert again.to_json() == tok.to_json()


def test_folders(tmp_path):
    _, spec, _ = byte_level_spec(QWEN, nfc=True)
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "<end_of_turn>"}}))
    tok = T.from_pretrained(tmp_path)
    assert isinstance(tok, HFTokenizer) and tok.eos_id == tok.special_tokens["<end_of_turn>"]
    (tmp_path / "tokenizer_config.json").unlink()
    eot = tok.special_tokens["<|eot_id|>"]
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [eot, 5]}))
    assert from_pretrained(tmp_path).eos_id == eot
    out = save_pretrained(tok, tmp_path / "out")
    again = from_pretrained(out)
    assert again.encode(CORPUS[:500]) == tok.encode(CORPUS[:500]) and again.eos_id == tok.eos_id

    bpe = BPETokenizer.train(CORPUS, 400)                       # ours -> tokenizer.json + GPT-2 files
    save_pretrained(bpe, tmp_path / "bpe")
    for loaded in (from_pretrained(tmp_path / "bpe"), from_pretrained(tmp_path / "bpe" / "tokenizer.json")):
        assert loaded.encode(CORPUS[:500] + "<|endoftext|>", allowed_special="all") == \
            bpe.encode(CORPUS[:500] + "<|endoftext|>", allowed_special="all")
        assert loaded.eos_id == bpe.eos_id
    (tmp_path / "bpe" / "tokenizer.json").unlink()
    assert isinstance(from_pretrained(tmp_path / "bpe"), BPETokenizer)
    with pytest.raises(FileNotFoundError, match="no tokenizer in"):
        (tmp_path / "empty").mkdir()
        from_pretrained(tmp_path / "empty")


@pytest.mark.parametrize("edit, field", [
    (lambda s: s.update(normalizer={"type": "BertNormalizer"}), "normalizer"),
    (lambda s: s.update(pre_tokenizer={"type": "Metaspace"}), "pre_tokenizer"),
    (lambda s: s.update(decoder={"type": "WordPiece"}), "decoder"),
    (lambda s: s["model"].update(type="WordPiece"), "model.type"),
    (lambda s: s["model"].update(dropout=0.1), "model.dropout"),
    (lambda s: s["model"].update(merges=[["Ġq", "zzz"]]), "model.merges[0]"),
    (lambda s: s["added_tokens"][0].update(single_word=True), "added_tokens[0]"),
])
def test_unsupported_fields_are_refused(edit, field):
    _, spec, _ = byte_level_spec(T.GPT2_PATTERN, shuffle=False)
    edit(spec)
    with pytest.raises(TokenizerFormatError, match=field.replace("[", r"\[").replace("]", r"\]")):
        HFTokenizer(spec, where="x/tokenizer.json")


# ------------------------------------------------------------------------------------------------ the reference
@pytest.fixture(scope="module")
def reference_tokenizers():
    tokenizers = pytest.importorskip("tokenizers")
    out = []
    for spec in (byte_level_spec(LLAMA3, ignore_merges=True)[1], byte_level_spec(QWEN, nfc=True)[1],
                 byte_level_spec(T.GPT2_PATTERN, shuffle=False)[1], sentencepiece_spec()):
        out.append((HFTokenizer(spec), tokenizers.Tokenizer.from_str(json.dumps(spec))))
    return out


def _reference_ids(ref, text: str, specials: bool) -> list:
    ref.encode_special_tokens = not specials
    return ref.encode(text, add_special_tokens=False).ids


def test_ids_equal_reference_on_mixed_text(reference_tokenizers):
    for ours, ref in reference_tokenizers:
        for text in MIXED:
            assert ours.encode(text, allowed_special="all") == _reference_ids(ref, text, True), text[:40]
            assert ours.encode(text) == _reference_ids(ref, text, False), text[:40]


@settings(deadline=None, max_examples=80)
@given(st.lists(st.one_of(st.text(max_size=12), st.sampled_from(SPECIALS + [" ", "\n", "'s", "123456", "é"])),
                max_size=8))
def test_ids_equal_reference_on_drawn_text(reference_tokenizers, parts):
    text = "".join(parts)
    for ours, ref in reference_tokenizers:
        assert ours.encode(text, allowed_special="all") == _reference_ids(ref, text, True)
