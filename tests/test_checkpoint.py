"""Checkpoints: atomic folders, keep-last, latest pointer, and one clear CheckpointError for every bad file."""
from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest

from tinygrad_llm.train.checkpoint import (CheckpointError, list_checkpoints, load_checkpoint, resolve_checkpoint,
                                           save_checkpoint)


def _state(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "model": {"w": rng.standard_normal((3, 4)).astype(np.float32), "b": np.zeros(4, np.float32)},
        "optimizer": {"step": np.int64(7), "groups": [{"lr": 1e-3, "betas": [0.9, 0.95], "params": [0, 1]}],
                      "state": {0: {"step": 7, "exp_avg": rng.standard_normal((3, 4))}, 1: {}}},
        "rng": rng.bit_generator.state,
        "tokenizer": {"type": "char", "chars": ["a", "b", "é"]},
        "note": None,
    }


def test_round_trip_types_and_values(tmp_path):
    st = _state()
    path = save_checkpoint(tmp_path, 5, st)
    assert path.name == "step_000005"
    ck = load_checkpoint(tmp_path)
    assert ck.step == 5 and ck.path == path
    np.testing.assert_array_equal(ck.model["w"], st["model"]["w"])
    assert ck.model["w"].dtype == np.float32
    opt = ck["optimizer"]
    assert opt["step"] == 7 and isinstance(opt["step"], int)
    assert set(opt["state"]) == {0, 1}  # int keys survive JSON
    np.testing.assert_array_equal(opt["state"][0]["exp_avg"], st["optimizer"]["state"][0]["exp_avg"])
    assert ck["rng"] == st["rng"]  # 128-bit PCG64 state as exact JSON ints
    g = np.random.default_rng()
    g.bit_generator.state = ck["rng"]
    assert ck["tokenizer"]["chars"][2] == "é" and ck["note"] is None


def test_keep_last_and_latest(tmp_path):
    for step in (100, 200, 300, 400):
        save_checkpoint(tmp_path, step, _state(step), keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000300", "step_000400"]
    assert (tmp_path / "latest").read_text().strip() == "step_000400"
    assert resolve_checkpoint(tmp_path).name == "step_000400"
    assert load_checkpoint(tmp_path / "step_000300").step == 300
    # no temp files left behind
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]
    # re-saving an existing step replaces it atomically
    save_checkpoint(tmp_path, 400, _state(1), keep_last=2)
    np.testing.assert_array_equal(load_checkpoint(tmp_path).model["w"], _state(1)["model"]["w"])


def test_interrupted_write_keeps_previous(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 1, _state(1))
    import tinygrad_llm.train.checkpoint as ckmod

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(ckmod, "_sha256", boom)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, 2, _state(2))
    monkeypatch.undo()
    assert load_checkpoint(tmp_path).step == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_000001"]  # temp folder removed


def test_pickle_file_is_refused(tmp_path):
    f = tmp_path / "model.pt"
    f.write_bytes(pickle.dumps({"w": [1, 2, 3]}))
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(f)
    # a pickle in place of the safetensors file inside a checkpoint folder
    path = save_checkpoint(tmp_path / "out", 1, _state())
    (path / "model.safetensors").write_bytes(pickle.dumps({"w": 1}))
    with pytest.raises(CheckpointError, match="model.safetensors.*pickle"):
        load_checkpoint(path)


@pytest.mark.parametrize("victim", ["model.safetensors", "optimizer.safetensors", "checkpoint.json"])
def test_truncated_or_missing_file(tmp_path, victim):
    path = save_checkpoint(tmp_path, 3, _state())
    f = path / victim
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=victim.replace(".", r"\.")):
        load_checkpoint(tmp_path)
    f.unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(tmp_path)


def test_corrupted_bytes_detected(tmp_path):
    path = save_checkpoint(tmp_path, 3, _state())
    f = path / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-3] ^= 0xFF  # same size, one flipped byte inside the tensor data
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(path)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path)
    path = save_checkpoint(tmp_path, 1, _state())
    (path / "checkpoint.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(CheckpointError, match="not a tinygrad-llm checkpoint"):
        load_checkpoint(path)
    (tmp_path / "latest").write_text("../../etc\n")
    with pytest.raises(CheckpointError, match="latest"):
        load_checkpoint(tmp_path)


def test_safetensors_header_length_that_looks_like_a_pickle_opcode_is_not_a_pickle(tmp_path):
    """A safetensors file whose 8-byte header length starts 80 03 (896 bytes) must not be taken for a pickle."""
    from tinygrad_llm.train.checkpoint import _sniff_foreign
    f = tmp_path / "model.safetensors"
    f.write_bytes((896).to_bytes(8, "little") + b"{" + b" " * 895)
    assert _sniff_foreign(f) is None
    p = tmp_path / "model.pkl"
    p.write_bytes(b"\x80\x04\x95" + b"\x00" * 20)
    assert "pickle" in _sniff_foreign(p)
