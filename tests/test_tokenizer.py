"""Tests for tinygrad_llm.tokenizer: BPE training/encoding, special tokens, save/load, char tokenizer, errors.

GPT-2 file format tests live in test_tokenizer_gpt2.py. No test reads /work/shared/data: corpora are generated.
"""
import json
import os
import random
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinygrad_llm.tokenizer import BPETokenizer, CharTokenizer, TokenizerFormatError, load_tokenizer
from tinygrad_llm.tokenizer.bpe_train import GPT2_PATTERN, count_words, merge_word

EOT = "<|endoftext|>"


def make_corpus(n_words: int = 3000, seed: int = 0) -> str:
    """A deterministic pseudo-English corpus with repeated words, punctuation, digits and some non-ASCII."""
    rng = random.Random(seed)
    syllables = ["th", "e", "an", "re", "in", "on", "er", "st", "qu", "ick", "ro", "wn", "fo", "x", "é", "ü", "日本"]
    vocab = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(300)]
    weights = [1.0 / (i + 1) for i in range(len(vocab))]          # Zipf-like, so some pairs dominate
    out = []
    for i in range(n_words):
        w = rng.choices(vocab, weights)[0]
        if rng.random() < 0.1:
            w = w.capitalize()
        out.append(w)
        r = rng.random()
        out.append(", " if r < 0.1 else ".\n" if r < 0.15 else " 42 " if r < 0.17 else " ")
    return "".join(out)


CORPUS = make_corpus()


@pytest.fixture(scope="module")
def tok() -> BPETokenizer:
    return BPETokenizer.train(CORPUS, vocab_size=512)


def naive_train(text: str, n_merges: int) -> list[tuple[int, int]]:
    """Reference trainer: full recount after every merge, same tie-breaking and duplicate-spelling rule."""
    counts = count_words(text, GPT2_PATTERN, [EOT])
    words = [list(w.encode()) for w in counts]
    freqs = list(counts.values())
    token_bytes = [bytes([i]) for i in range(256)]
    banned, merges = set(), []
    while len(merges) < n_merges:
        pc = Counter()
        for w, f in zip(words, freqs):
            for p in zip(w, w[1:]):
                if p not in banned:
                    pc[p] += f
        if not pc:
            break
        best = min(pc, key=lambda p: (-pc[p], p))
        if token_bytes[best[0]] + token_bytes[best[1]] in token_bytes:
            banned.add(best)
            continue
        new_id = 256 + len(merges)
        merges.append(best)
        token_bytes.append(token_bytes[best[0]] + token_bytes[best[1]])
        words = [merge_word(w, best[0], best[1], new_id) for w in words]
    return merges


# ------------------------------------------------------------------------------------------------------ training

def test_train_vocab_size_and_eos(tok):
    assert tok.vocab_size == 512
    assert len(tok.merges) == 512 - 256 - 1
    assert tok.eos_id == 511
    assert tok.special_tokens == {EOT: 511}


def test_training_is_deterministic(tok):
    again = BPETokenizer.train(CORPUS, vocab_size=512)
    assert again.merges == tok.merges
    assert again.to_dict() == tok.to_dict()


def test_incremental_training_matches_naive_reference():
    text = make_corpus(600, seed=3)
    fast = BPETokenizer.train(text, vocab_size=256 + 1 + 120).merges
    assert fast == naive_train(text, 120)


@settings(deadline=None, max_examples=30)
@given(st.text(alphabet="ab c\né", max_size=60), st.integers(1, 25))
def test_incremental_training_matches_naive_on_random_text(text, n_merges):
    if not text:
        return
    fast = BPETokenizer.train(text, vocab_size=257 + n_merges).merges
    assert fast == naive_train(text, n_merges)


def test_first_merge_is_most_frequent_pair():
    tok = BPETokenizer.train("aaab " * 10 + "xy", vocab_size=258)
    # pairs inside "aaab": (a,a) x2 per word, (a,b) x1, (' ',a) x1 -> (a,a) wins
    assert tok.merges == [(ord("a"), ord("a"))]


def test_merges_reduce_token_count(tok):
    n_bytes = len(CORPUS.encode("utf-8"))
    n_small = len(BPETokenizer.train(CORPUS, vocab_size=300).encode(CORPUS))
    n_big = len(tok.encode(CORPUS))
    assert n_big < n_small < n_bytes
    assert n_bytes / n_big > 2.0       # a 512-token vocab compresses this repetitive corpus well


def test_byte_only_tokenizer_is_identity_on_bytes():
    tok = BPETokenizer.train("hello", vocab_size=256, special_tokens=())
    assert tok.merges == [] and tok.vocab_size == 256
    assert tok.encode("héllo") == list("héllo".encode())


def test_training_stops_when_pairs_run_out():
    tok = BPETokenizer.train("ab ab", vocab_size=1000, special_tokens=())
    # merges: (a, b) -> 256, then (" ", 256) -> 257; nothing is left to merge after that
    assert tok.merges == [(97, 98), (32, 256)] and tok.vocab_size == 258
    assert tok.encode("ab ab") == [256, 257]


def test_encoding_training_words_gives_single_tokens_for_frequent_words(tok):
    top_word = count_words(CORPUS, GPT2_PATTERN).most_common(1)[0][0]
    assert len(tok.encode(top_word)) == 1
    assert tok.id_to_token(tok.encode(top_word)[0]) == top_word.encode()


# ---------------------------------------------------------------------------------------------------- round trip

@settings(deadline=None, max_examples=200)
@given(st.text())
def test_round_trip_any_unicode(tok, text):
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.encode(text, allowed_special="none")) == text
    assert tok.decode_bytes(tok.encode(text)) == text.encode("utf-8")


@settings(deadline=None, max_examples=50)
@given(st.lists(st.sampled_from(["ab", " the", EOT, "é", "\n\n", "日本", "<|", "|>", "'s", " 42"]), max_size=20))
def test_round_trip_with_special_tokens(tok, parts):
    text = "".join(parts)
    ids = tok.encode(text, allowed_special="all")
    assert tok.decode(ids) == text
    assert ids.count(tok.eos_id) == text.count(EOT)
    plain = tok.encode(text)                     # the default: special names are plain text
    assert tok.eos_id not in plain and tok.decode(plain) == text


def test_cache_does_not_change_results(tok):
    fresh = BPETokenizer.from_dict(tok.to_dict())
    cold = fresh.encode(CORPUS[:5000])
    assert fresh.encode(CORPUS[:5000]) == cold
    fresh.clear_cache()
    assert fresh.encode(CORPUS[:5000]) == cold


def test_decode_accepts_numpy_and_replaces_bad_utf8(tok):
    ids = tok.encode("héllo")
    assert tok.decode(np.array(ids, dtype=np.int64)) == "héllo"
    e_acute = "é".encode()                     # 2 bytes; decoding only the first gives U+FFFD
    assert tok.decode([tok.token_to_id(e_acute[:1])]) == "\ufffd"
    assert tok.decode_bytes([tok.token_to_id(e_acute[:1])]) == e_acute[:1]


# ------------------------------------------------------------------------------------------------ special tokens

def test_special_tokens_split_before_pretokenization(tok):
    ids = tok.encode(f"the{EOT}the", allowed_special="all")
    i = ids.index(tok.eos_id)
    assert tok.decode(ids[:i]) == "the" and tok.decode(ids[i + 1:]) == "the"
    assert tok.encode(EOT, allowed_special="all") == [tok.eos_id]


def test_allowed_special_modes(tok):
    text = f"a{EOT}b"
    assert tok.eos_id in tok.encode(text, allowed_special="all")
    assert tok.eos_id in tok.encode(text, allowed_special={EOT})
    plain = tok.encode(text, allowed_special="none")
    assert tok.eos_id not in plain and tok.decode(plain) == text
    assert tok.encode(text, allowed_special=set()) == plain == tok.encode(text)
    with pytest.raises(ValueError, match="contains the special token"):
        tok.encode(text, disallowed_special="all")
    assert tok.encode(text, allowed_special="all", disallowed_special="all") == tok.encode(text, allowed_special="all")
    with pytest.raises(ValueError, match="unknown special"):
        tok.encode(text, allowed_special={"<|nope|>"})
    with pytest.raises(ValueError, match="allowed_special must be"):
        tok.encode(text, allowed_special=EOT)


def test_several_special_tokens_and_training_ignores_them():
    specials = [EOT, "<|pad|>", "<|endoftext|>x"]
    text = (f"hello world{EOT}" * 50) + "<|pad|>" * 20
    tok = BPETokenizer.train(text, vocab_size=300, special_tokens=specials)
    v = tok.vocab_size
    assert v < 300                              # "hello world" runs out of pairs
    assert [tok.special_tokens[s] for s in specials] == [v - 3, v - 2, v - 1]
    ids = tok.encode(f"x<|endoftext|>x<|pad|>{EOT}", allowed_special="all")
    assert ids[1:] == [v - 1, v - 2, v - 3]     # the longest special name wins
    for i in range(len(tok.merges)):            # "<|" never appears outside specials, so it was never merged
        assert b"<" not in tok.id_to_token(256 + i)


# ----------------------------------------------------------------------------------------------------- save/load

def test_save_load_round_trip(tok, tmp_path):
    path = tmp_path / "sub" / "tok.json"
    tok.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["tok.json"]     # no temp file left behind
    d = json.loads(path.read_text())
    assert d["type"] == "bpe" and d["version"] == 1 and d["format"] == "tinygrad-llm-tokenizer"
    for loaded in (BPETokenizer.load(path), load_tokenizer(path), load_tokenizer(tok.to_dict())):
        assert isinstance(loaded, BPETokenizer)
        assert loaded.merges == tok.merges and loaded.special_tokens == tok.special_tokens
        assert loaded.encode(CORPUS[:3000]) == tok.encode(CORPUS[:3000])


def test_save_overwrites_atomically(tok, tmp_path):
    path = tmp_path / "tok.json"
    CharTokenizer.train("abc").save(path)
    tok.save(path)
    assert isinstance(load_tokenizer(path), BPETokenizer)
    assert sorted(os.listdir(tmp_path)) == ["tok.json"]


def test_load_errors_name_the_file(tok, tmp_path):
    missing = tmp_path / "missing.json"
    with pytest.raises(FileNotFoundError, match="missing.json"):
        BPETokenizer.load(missing)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_tokenizer(missing)
    good = tmp_path / "good.json"
    tok.save(good)
    truncated = tmp_path / "truncated.json"
    truncated.write_text(good.read_text()[:100])
    with pytest.raises(TokenizerFormatError, match="truncated.json"):
        load_tokenizer(truncated)
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\x80\x04\x95pickle")
    with pytest.raises(TokenizerFormatError, match="binary.json"):
        BPETokenizer.load(binary)
    d = tok.to_dict()
    for key, value in [("type", "wordpiece"), ("version", 99), ("merges", [[1]]), ("merges", [[300, 1]]),
                       ("byte_ids", [0] * 256), ("special_tokens", {EOT: 7})]:
        bad = tmp_path / f"bad_{key}.json"
        bad.write_text(json.dumps({**d, key: value}))
        with pytest.raises(TokenizerFormatError, match=f"bad_{key}.json"):
            load_tokenizer(bad)
    char_file = tmp_path / "char.json"
    CharTokenizer.train("abc").save(char_file)
    with pytest.raises(TokenizerFormatError, match="char.json.*type 'char'"):
        BPETokenizer.load(char_file)


# ----------------------------------------------------------------------------------------------- char tokenizer

def test_char_tokenizer_round_trip_and_order(tmp_path):
    text = "hello world\nHÉ!"
    ct = CharTokenizer.train(text)
    assert ct.chars == sorted(set(text)) and ct.vocab_size == len(set(text))
    assert ct.decode(ct.encode(text)) == text
    assert ct.encode("\n") == [0]                # "\n" has the lowest code point
    path = tmp_path / "char.json"
    ct.save(path)
    for loaded in (CharTokenizer.load(path), load_tokenizer(path), load_tokenizer(ct.to_dict())):
        assert isinstance(loaded, CharTokenizer) and loaded.chars == ct.chars
    assert CharTokenizer.from_chars("ba").encode("ab") == [1, 0]
    assert ct.eos_id is None


@settings(deadline=None, max_examples=100)
@given(st.text(min_size=1))
def test_char_tokenizer_round_trip_any_text(text):
    ct = CharTokenizer.train(text)
    assert ct.decode(ct.encode(text)) == text
    assert load_tokenizer(json.loads(json.dumps(ct.to_dict()))).chars == ct.chars


def test_char_tokenizer_errors():
    ct = CharTokenizer.train("abc")
    with pytest.raises(ValueError, match=r"'z'.*position 2"):
        ct.encode("abz")
    with pytest.raises(ValueError, match="out of range"):
        ct.decode([3])
    with pytest.raises(ValueError, match="out of range"):
        ct.decode([-1])
    with pytest.raises(ValueError, match="empty"):
        CharTokenizer.train("")
    with pytest.raises(TokenizerFormatError, match="distinct"):
        CharTokenizer.from_chars("aa")
    with pytest.raises(TokenizerFormatError):
        load_tokenizer({"format": "tinygrad-llm-tokenizer", "version": 1, "type": "char", "chars": ["ab"]})


# ---------------------------------------------------------------------------------------------------------- errors

def test_bpe_bad_input_errors(tok):
    with pytest.raises(ValueError, match="empty text"):
        BPETokenizer.train("", vocab_size=300)
    with pytest.raises(ValueError, match="257"):
        BPETokenizer.train("abc", vocab_size=256)            # 256 bytes + <|endoftext|> needs 257
    with pytest.raises(TypeError, match="vocab_size must be an int"):
        BPETokenizer.train("abc", vocab_size=300.0)
    assert BPETokenizer.train("abc", vocab_size=np.int64(258), special_tokens=EOT).special_tokens == {EOT: 257}
    with pytest.raises(ValueError, match="no content"):
        BPETokenizer.train(EOT * 3, vocab_size=300)
    with pytest.raises(ValueError, match="duplicate special"):
        BPETokenizer.train("abc", vocab_size=300, special_tokens=[EOT, EOT])
    with pytest.raises(ValueError, match=r"token id 512 is out of range for vocab_size 512"):
        tok.decode([1, 512])
    with pytest.raises(ValueError, match=r"token id -1 is out of range"):
        tok.decode([-1])
    with pytest.raises(TypeError):
        tok.encode(b"bytes")
    with pytest.raises(TypeError, match="must be integers"):
        tok.decode([1.5])
    with pytest.raises(TypeError, match="must be integers"):
        tok.decode(np.array([1.0]))
    with pytest.raises(ValueError, match="1-D"):
        tok.decode(np.zeros((2, 2), dtype=np.int64))
    assert tok.decode(np.int64(104)) == "h" and tok.decode(np.array([], dtype=np.int32)) == ""
    with pytest.raises(ValueError, match="surrogate"):
        tok.encode("a\udc80b")
    with pytest.raises(KeyError, match="not a token"):
        tok.token_to_id("zzzzzzzzzzzzzzzzzz")
    with pytest.raises(TokenizerFormatError, match="unknown tokenizer type"):
        load_tokenizer({"type": "sentencepiece"})


def test_a_training_corpus_keeps_its_document_separators(tok):
    """Corpora are trusted text: their "<|endoftext|>" separators become the token (user text never does)."""
    from tinygrad_llm.train.build import encode_corpus
    ids = encode_corpus(tok, f"one story{EOT}another")
    assert list(ids).count(tok.eos_id) == 1 and tok.eos_id not in tok.encode(f"one story{EOT}another")
