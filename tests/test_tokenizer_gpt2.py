"""GPT-2 file compatibility of BPETokenizer, on small encoder.json / vocab.bpe files built in the tests.

The reference `gpt2_reference_encode` is a transcription of openai/gpt-2 src/encoder.py (string-level bpe()), so
agreement with it on small files is agreement with GPT-2's algorithm.
"""
import json
import random

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from tinygrad_llm.tokenizer import GPT2_PATTERN, BPETokenizer, TokenizerFormatError, bytes_to_unicode, load_tokenizer

EOT = "<|endoftext|>"


def gpt2_reference_encode(text: str, encoder: dict, merges: list) -> list:
    """openai/gpt-2 Encoder.encode, ported (special tokens are not handled there either)."""
    byte_encoder = bytes_to_unicode()
    ranks = {tuple(m): i for i, m in enumerate(merges)}

    def bpe(token: str) -> list:
        word = tuple(token)
        while len(word) > 1:
            pairs = set(zip(word, word[1:]))
            bigram = min(pairs, key=lambda p: ranks.get(p, float("inf")))
            if bigram not in ranks:
                break
            first, second = bigram
            new_word, i = [], 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    new_word.extend(word[i:])
                    break
                new_word.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = tuple(new_word)
        return list(word)

    out = []
    for tok in regex.findall(GPT2_PATTERN, text):
        tok = "".join(byte_encoder[b] for b in tok.encode("utf-8"))
        out.extend(encoder[t] for t in bpe(tok))
    return out


def write_files(tmp_path, encoder: dict, merge_lines: list, name: str = "tiny"):
    enc_path, bpe_path = tmp_path / f"{name}-encoder.json", tmp_path / f"{name}-vocab.bpe"
    enc_path.write_text(json.dumps(encoder, ensure_ascii=False), encoding="utf-8")
    bpe_path.write_text("#version: 0.2\n" + "\n".join(merge_lines) + "\n", encoding="utf-8")
    return enc_path, bpe_path


def gpt2_style_files(tmp_path, merge_pairs: list, name: str = "tiny"):
    """Files laid out as GPT-2's: byte tokens numbered in bytes_to_unicode order ('!' = 0), merges, then EOT."""
    encoder = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}
    for i, (a, b) in enumerate(merge_pairs):
        encoder[a + b] = 256 + i
    encoder[EOT] = len(encoder)
    return write_files(tmp_path, encoder, [f"{a} {b}" for a, b in merge_pairs], name), encoder


MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("Ġ", "a"), ("a", "a"), ("i", "n"), ("Ġ", "in"), ("Ġa", "n")]


@pytest.fixture()
def tiny(tmp_path):
    (enc_path, bpe_path), encoder = gpt2_style_files(tmp_path, MERGES)
    return BPETokenizer.from_gpt2_files(enc_path, bpe_path), encoder, enc_path, bpe_path


def test_bytes_to_unicode_is_gpt2s_map():
    m = bytes_to_unicode()
    assert len(m) == 256 and len(set(m.values())) == 256
    assert m[ord(" ")] == "Ġ" and m[ord("\n")] == "Ċ" and m[ord("a")] == "a" and m[0] == "Ā"
    assert all(c.isprintable() and not c.isspace() for c in m.values())
    assert list(m)[:3] == [ord("!"), ord('"'), ord("#")]     # GPT-2's id 0 is "!"


def test_known_merges_and_ids(tiny):
    tok, enc, _, _ = tiny
    assert tok.vocab_size == 256 + len(MERGES) + 1
    assert tok.eos_id == enc[EOT] == 256 + len(MERGES)
    assert tok.encode(" the") == [enc["Ġthe"]]
    assert tok.encode("the") == [enc["t"], enc["he"]]
    assert tok.encode(" an in") == [enc["Ġan"], enc["Ġin"]]
    assert tok.encode("!") == [0]                             # byte ids follow GPT-2's numbering, not byte values
    assert tok.encode("aaa") == [enc["aa"], enc["a"]]         # every occurrence, left to right, no overlap
    assert tok.encode("aaaa") == [enc["aa"], enc["aa"]]
    assert tok.encode(f" the{EOT}", allowed_special="all") == [enc["Ġthe"], tok.eos_id]
    assert tok.token_to_id(" the") == enc["Ġthe"] and tok.id_to_token(enc["Ġthe"]) == b" the"


@settings(deadline=None, max_examples=150)
@given(st.text(alphabet=st.sampled_from(list("the an in aa ! \n\té日")), max_size=40) | st.text(max_size=20))
def test_matches_reference_gpt2_algorithm(tmp_path_factory, text):
    tmp = tmp_path_factory.mktemp("g")
    (enc_path, bpe_path), encoder = gpt2_style_files(tmp, MERGES)
    tok = BPETokenizer.from_gpt2_files(enc_path, bpe_path)
    assert tok.encode(text, allowed_special="none") == gpt2_reference_encode(text, encoder, MERGES)
    assert tok.decode(tok.encode(text)) == text


def test_long_words_match_reference(tiny):
    tok, enc, _, _ = tiny
    for text in ["thein" * 1500, "a" * 5001, " " * 3000 + "x", "ééthe" * 700]:   # each mostly one long pre-token
        assert tok.encode(text) == gpt2_reference_encode(text, enc, MERGES)
        assert tok.decode(tok.encode(text)) == text


def test_trained_tokenizer_export_import_round_trip(tmp_path):
    rng = random.Random(0)
    words = ["the", "then", "there", "in", "inn", "é", "naïve", "42", "日本語", "'s"]
    text = " ".join(rng.choice(words) for _ in range(2000)) + "\n"
    trained = BPETokenizer.train(text, vocab_size=300)
    enc_path, bpe_path = tmp_path / "encoder.json", tmp_path / "vocab.bpe"
    trained.to_gpt2_files(enc_path, bpe_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encoder.json", "vocab.bpe"]   # no temp files left
    loaded = BPETokenizer.from_gpt2_files(enc_path, bpe_path)
    assert loaded.merges == trained.merges and loaded.special_tokens == trained.special_tokens
    assert loaded.to_dict() == trained.to_dict()
    sample = text[:2000] + f"{EOT} naïve 日本"
    assert loaded.encode(sample) == trained.encode(sample)
    encoder = json.loads(enc_path.read_text(encoding="utf-8"))
    merges = [tuple(line.split(" ")) for line in bpe_path.read_text(encoding="utf-8").splitlines()[1:]]
    assert gpt2_reference_encode(text[:3000], encoder, merges) == trained.encode(text[:3000])


@settings(deadline=None, max_examples=100)
@given(st.text())
def test_gpt2_loaded_round_trip_any_unicode(tmp_path_factory, text):
    tmp = tmp_path_factory.mktemp("r")
    (enc_path, bpe_path), _ = gpt2_style_files(tmp, MERGES)
    tok = BPETokenizer.from_gpt2_files(enc_path, bpe_path)
    assert tok.decode(tok.encode(text)) == text


def test_gpt2_tokenizer_json_save_load_keeps_ids(tiny, tmp_path):
    tok, enc, enc_path, bpe_path = tiny
    path = tmp_path / "tok.json"
    tok.save(path)
    again = load_tokenizer(path)
    text = " the an in aa!\n日本 " + EOT
    assert again.encode(text) == tok.encode(text)
    assert again.byte_ids == tok.byte_ids and again.byte_ids != list(range(256))
    out_enc, out_bpe = tmp_path / "out-encoder.json", tmp_path / "out-vocab.bpe"
    again.to_gpt2_files(out_enc, out_bpe)                  # and back to GPT-2 files: the same content
    assert json.loads(out_enc.read_text(encoding="utf-8")) == enc
    assert out_bpe.read_text(encoding="utf-8").split() == bpe_path.read_text(encoding="utf-8").split()


def test_gpt2_file_errors_name_the_file(tmp_path):
    (enc_path, bpe_path), encoder = gpt2_style_files(tmp_path, MERGES)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        BPETokenizer.from_gpt2_files(tmp_path / "nope.json", bpe_path)
    with pytest.raises(FileNotFoundError, match="nope.bpe"):
        BPETokenizer.from_gpt2_files(enc_path, tmp_path / "nope.bpe")
    truncated = tmp_path / "trunc-encoder.json"
    truncated.write_text(enc_path.read_text(encoding="utf-8")[:50], encoding="utf-8")
    with pytest.raises(TokenizerFormatError, match="trunc-encoder.json"):
        BPETokenizer.from_gpt2_files(truncated, bpe_path)
    bad_line = tmp_path / "badline.bpe"
    bad_line.write_text("#version: 0.2\nĠ t\nh e x\n", encoding="utf-8")
    with pytest.raises(TokenizerFormatError, match="badline.bpe:3"):
        BPETokenizer.from_gpt2_files(enc_path, bad_line)
    unknown = tmp_path / "unknown.bpe"
    unknown.write_text("#version: 0.2\nĠ t\nzz q\n", encoding="utf-8")
    with pytest.raises(TokenizerFormatError, match="unknown.bpe.*'zz'"):
        BPETokenizer.from_gpt2_files(enc_path, unknown)
    reordered = dict(encoder)
    reordered["Ġt"], reordered["he"] = reordered["he"], reordered["Ġt"]
    (enc2, bpe2) = write_files(tmp_path, reordered, [f"{a} {b}" for a, b in MERGES], "reordered")
    with pytest.raises(TokenizerFormatError, match="reordered-encoder.json.*layout"):
        BPETokenizer.from_gpt2_files(enc2, bpe2)
    no_byte = dict(encoder)
    del no_byte["Ġ"]
    (enc3, bpe3) = write_files(tmp_path, no_byte, [], "nobyte")
    with pytest.raises(TokenizerFormatError, match="nobyte-encoder.json.*'Ġ'"):
        BPETokenizer.from_gpt2_files(enc3, bpe3)
