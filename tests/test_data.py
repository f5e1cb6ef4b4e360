"""Data: corpus loading and its errors, sliding windows, token files on memmap, the loader (order, resume, shards)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinygrad_llm.data import (DataLoader, SlidingWindowDataset, TokenFileDataset, default_corpus, load_text,
                               read_token_file_meta, train_val_split, write_token_file)


# ------------------------------------------------------------------ corpus
def test_default_corpus_is_large_english_and_deterministic():
    text = default_corpus()
    assert 300_000 < len(text) < 1_000_000
    assert "assignment" in text and text == default_corpus()


def test_load_text_file_and_folder(tmp_path):
    (tmp_path / "b.txt").write_text("second", encoding="utf-8")
    (tmp_path / "a.txt").write_text("first é", encoding="utf-8")
    (tmp_path / "skip.md").write_text("not me")
    assert load_text(tmp_path) == "first é\n\nsecond"
    assert load_text(tmp_path / "b.txt") == "second"


def test_load_text_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        load_text(tmp_path / "nope.txt")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no .txt files"):
        load_text(empty)
    (empty / "blank.txt").write_text("  \n")
    with pytest.raises(ValueError, match="empty"):
        load_text(empty)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"hello \xff world")
    with pytest.raises(ValueError, match=r"bad\.txt.*byte offset 6"):
        load_text(bad)
    (empty / "bad2.txt").write_bytes("ok ".encode() + b"\xc3\x28")
    with pytest.raises(ValueError, match=r"bad2\.txt.*byte offset 3"):
        load_text(empty)


# ------------------------------------------------------------------ sliding windows
def test_sliding_window_matches_gptdatasetv1():
    ids = list(range(100, 120))
    ds = SlidingWindowDataset(ids, max_length=4, stride=2)
    ref = [(ids[i:i + 4], ids[i + 1:i + 5]) for i in range(0, len(ids) - 4, 2)]   # the book's loop
    assert len(ds) == len(ref)
    for i, (x, y) in enumerate(ref):
        np.testing.assert_array_equal(ds[i][0], x)
        np.testing.assert_array_equal(ds[i][1], y)
        assert ds[i][0].dtype == np.int64
    xb, yb = ds.get_batch([0, len(ds) - 1])
    np.testing.assert_array_equal(xb, [ref[0][0], ref[-1][0]])
    np.testing.assert_array_equal(yb, [ref[0][1], ref[-1][1]])
    with pytest.raises(IndexError):
        ds[len(ds)]


@settings(deadline=None)
@given(n=st.integers(2, 60), L=st.integers(1, 12), stride=st.integers(1, 12))
def test_sliding_window_count_and_shift(n, L, stride):
    ids = np.arange(n) * 3
    ref = list(range(0, n - L, stride))
    if not ref:
        with pytest.raises(ValueError, match=f"has {n} tokens.*needs at least {L + 1}"):
            SlidingWindowDataset(ids, L, stride)
        return
    ds = SlidingWindowDataset(ids, L, stride)
    assert len(ds) == len(ref)
    x, y = ds.get_batch(np.arange(len(ds)))
    assert x.shape == (len(ref), L)
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    np.testing.assert_array_equal(x[:, 0], np.array(ref) * 3)


def test_train_val_split_contiguous():
    ids = np.arange(100)
    tr, va = train_val_split(ids, 0.1)
    assert len(tr) == 90 and len(va) == 10 and tr[-1] + 1 == va[0]
    assert train_val_split("abcdefghij", 0.2) == ("abcdefgh", "ij")
    with pytest.raises(ValueError):
        train_val_split(ids, 1.0)


# ------------------------------------------------------------------ token files
@pytest.mark.parametrize("vocab,dtype", [(50257, np.uint16), (65536, np.uint16), (100_000, np.uint32)])
def test_token_file_round_trip_and_dtype(tmp_path, vocab, dtype):
    rng = np.random.default_rng(0)
    ids = rng.choice(vocab, size=1000, replace=False)       # distinct ids: a window is found by its first id
    path = write_token_file(ids, tmp_path / "sub" / "train.bin", vocab_size=vocab)
    meta = read_token_file_meta(path)
    assert meta["dtype"] == np.dtype(dtype).name and meta["num_tokens"] == 1000
    np.testing.assert_array_equal(np.fromfile(path, dtype=dtype), ids)        # raw, nanoGPT-readable
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    ds = TokenFileDataset(path, block_size=16)
    assert isinstance(ds.data, np.memmap) and ds.dtype == np.dtype(dtype)
    x, y = ds.sample_batch(8, np.random.default_rng(1))
    assert x.shape == y.shape == (8, 16) and x.dtype == np.int64
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    # every sampled row is a real window of the stream
    for row in x:
        s = int(np.flatnonzero(ids == row[0])[0])
        np.testing.assert_array_equal(ids[s:s + 16], row)
    # the same generator seed gives the same batch
    np.testing.assert_array_equal(ds.sample_batch(4, 7)[0], ds.sample_batch(4, 7)[0])
    # fixed windows for the DataLoader
    assert len(ds) == (1000 - 16 - 1) // 16 + 1
    np.testing.assert_array_equal(ds[2][0], ids[32:48])
    xb, yb = DataLoader(ds, batch_size=4, shuffle=False).next_batch()
    np.testing.assert_array_equal(xb[1], ids[16:32])
    np.testing.assert_array_equal(yb[1], ids[17:33])


def test_token_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        TokenFileDataset(tmp_path / "none.bin", 8)
    raw = tmp_path / "raw.bin"
    np.arange(50, dtype=np.uint16).tofile(raw)
    with pytest.raises(ValueError, match="no sidecar"):
        TokenFileDataset(raw, 8)
    assert len(TokenFileDataset(raw, 8, dtype=np.uint16)) == 6                      # plain nanoGPT .bin
    path = write_token_file(np.arange(10), tmp_path / "short.bin")
    with pytest.raises(ValueError, match="has 10 tokens.*needs at least 17"):
        TokenFileDataset(path, 16)
    with pytest.raises(ValueError, match="sidecar says uint16"):
        TokenFileDataset(path, 4, dtype=np.uint32)
    with open(path, "ab") as f:
        f.write(b"\x00")
    with pytest.raises(ValueError, match="not a multiple"):
        TokenFileDataset(path, 4)
    with pytest.raises(ValueError, match="vocab_size"):
        write_token_file([5, 70000], tmp_path / "x.bin", vocab_size=1000)
    assert json.loads((tmp_path / "short.bin.json").read_text())["vocab_size"] == 10


# ------------------------------------------------------------------ loader
class ToyDataset:
    """Sample i is ([i, i], [i+1, i+1]): no get_batch, exercising the per-item path."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return np.array([i, i]), np.array([i + 1, i + 1])


def epoch_ids(loader):
    return [x[:, 0].tolist() for x, _ in loader]


def test_loader_shapes_len_and_drop_last():
    ld = DataLoader(ToyDataset(10), batch_size=3, shuffle=False)
    assert len(ld) == 3
    batches = list(ld)
    assert [b[0].shape for b in batches] == [(3, 2)] * 3 and batches[0][0].dtype == np.int64
    np.testing.assert_array_equal(batches[1][1][:, 0], [4, 5, 6])
    keep = DataLoader(ToyDataset(10), batch_size=3, shuffle=False, drop_last=False)
    assert len(keep) == 4 and epoch_ids(keep)[-1] == [9]
    with pytest.raises(ValueError, match="2 samples, fewer than one batch of 3"):
        DataLoader(ToyDataset(2), batch_size=3)


def test_loader_shuffle_reproducible_per_seed_and_epoch():
    a = DataLoader(ToyDataset(20), batch_size=4, seed=1)
    b = DataLoader(ToyDataset(20), batch_size=4, seed=1)
    e0, e1 = epoch_ids(a), epoch_ids(a)
    assert e0 == epoch_ids(b) and e1 == epoch_ids(b)
    assert e0 != e1 and sorted(sum(e0, [])) == list(range(20))
    assert epoch_ids(DataLoader(ToyDataset(20), batch_size=4, seed=2)) != e0
    assert a.epoch == 2 and a.index == 0


@settings(deadline=None)
@given(n=st.integers(4, 40), bs=st.integers(1, 4), seed=st.integers(0, 10**6), stop=st.integers(0, 30))
def test_loader_resume_is_exact(n, bs, seed, stop):
    ref = DataLoader(ToyDataset(n), batch_size=bs, seed=seed)
    expected = [ref.next_batch()[0].tolist() for _ in range(stop + 8)]
    ld = DataLoader(ToyDataset(n), batch_size=bs, seed=seed)
    for _ in range(stop):
        ld.next_batch()
    state = json.loads(json.dumps(ld.state_dict()))
    resumed = DataLoader(ToyDataset(n), batch_size=bs, seed=seed)
    resumed.load_state_dict(state)
    assert [resumed.next_batch()[0].tolist() for _ in range(8)] == expected[stop:]


def test_loader_break_mid_epoch_then_resume_iteration():
    ld = DataLoader(ToyDataset(12), batch_size=2, seed=3)
    full = epoch_ids(DataLoader(ToyDataset(12), batch_size=2, seed=3))
    seen = []
    for x, _ in ld:
        seen.append(x[:, 0].tolist())
        if len(seen) == 2:
            break
    assert ld.state_dict()["index"] == 2
    seen += epoch_ids(ld)                       # the rest of the same epoch
    assert seen == full
    with pytest.raises(ValueError, match="seed"):
        DataLoader(ToyDataset(12), batch_size=2, seed=4).load_state_dict(ld.state_dict())


@pytest.mark.parametrize("world", [2, 3])
def test_loader_shards_are_disjoint_and_match_global_batch(world):
    n, bs = 37, 2
    single = DataLoader(ToyDataset(n), batch_size=bs * world, seed=5)
    ranks = [DataLoader(ToyDataset(n), batch_size=bs, seed=5, rank=r, world_size=world) for r in range(world)]
    assert all(len(r) == len(single) for r in ranks)
    for _ in range(2):                                            # two epochs
        glob = epoch_ids(single)
        per_rank = [epoch_ids(r) for r in ranks]
        for step, g in enumerate(glob):
            parts = [per_rank[r][step] for r in range(world)]
            assert sum(parts, []) == g                           # rank r holds slice r of the global batch
        flat = [i for pr in per_rank for b in pr for i in b]
        assert len(flat) == len(set(flat))                       # disjoint across ranks and steps
    shard = single.shard(1, world)
    assert shard.batch_size == single.batch_size and shard.rank == 1 and shard.epoch == single.epoch
    with pytest.raises(ValueError, match="drop_last"):
        DataLoader(ToyDataset(n), batch_size=bs, rank=0, world_size=2, drop_last=False)
    with pytest.raises(ValueError, match="rank"):
        DataLoader(ToyDataset(n), batch_size=bs, rank=2, world_size=2)
