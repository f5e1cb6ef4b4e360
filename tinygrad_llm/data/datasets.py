"""Datasets of (input, target) token windows for next-token prediction.

- ``SlidingWindowDataset``: the book's GPTDatasetV1 over an in-memory id array (windows every ``stride`` tokens).
- ``TokenFileDataset``: a token file on ``numpy.memmap`` for corpora larger than memory, with nanoGPT-style random
  windows (``sample_batch``) and also fixed windows (``__getitem__``) so the DataLoader can iterate it.
- ``write_token_file`` / ``read_token_file_meta``: the token file format (raw little-endian uint16/uint32 ids, as
  nanoGPT's ``train.bin``, plus a JSON sidecar ``<file>.json`` giving the dtype).
- ``train_val_split``: contiguous split (the book's 90/10).

Every sample is ``(inputs, targets)``, both int64 arrays of shape (T,), with ``targets[t] == inputs[t + 1]`` in the
underlying stream. ``get_batch(indices)`` returns (B, T) arrays in one vectorised gather.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["SlidingWindowDataset", "TokenFileDataset", "write_token_file", "read_token_file_meta", "train_val_split"]

TOKEN_FILE_FORMAT = "tinygrad-llm-tokens/1"


def _as_id_array(token_ids, what: str) -> np.ndarray:
    ids = np.asarray(token_ids)
    if ids.ndim != 1:
        raise ValueError(f"{what}: token ids must be a 1-D sequence, got shape {ids.shape}")
    if ids.size and ids.dtype.kind not in "iu":
        raise TypeError(f"{what}: token ids must be integers, got dtype {ids.dtype}")
    return ids.astype(np.int64, copy=False)


def _window_count(n_tokens: int, max_length: int, stride: int) -> int:
    """Number of windows ``range(0, n - L, stride)`` (GPTDatasetV1): each needs L + 1 tokens (inputs + shifted target)."""
    if n_tokens <= max_length:
        return 0
    return (n_tokens - max_length - 1) // stride + 1


class SlidingWindowDataset:
    """Windows of ``max_length`` tokens every ``stride`` tokens: sample i is ``(ids[s:s+L], ids[s+1:s+L+1])``,
    ``s = i * stride`` (the book's GPTDatasetV1). ``stride == max_length`` gives non-overlapping windows.

    token_ids: 1-D ints (list or ndarray), kept as one int64 array (not one array per window).
    """

    def __init__(self, token_ids: Sequence[int] | np.ndarray, max_length: int, stride: int | None = None):
        if stride is None:
            stride = max_length
        if max_length < 1 or stride < 1:
            raise ValueError(f"SlidingWindowDataset: max_length and stride must be >= 1, got {max_length} and {stride}")
        self.ids = _as_id_array(token_ids, "SlidingWindowDataset")
        self.max_length, self.stride = int(max_length), int(stride)
        self._n = _window_count(len(self.ids), self.max_length, self.stride)
        if self._n == 0:
            raise ValueError(
                f"corpus too short: it has {len(self.ids)} tokens, but one window of max_length={max_length} "
                f"needs at least {max_length + 1} (inputs plus the shifted target); use a longer text or a "
                "smaller context length"
            )

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if not -self._n <= i < self._n:
            raise IndexError(f"window {i} out of range for {self._n} windows")
        s = (i % self._n) * self.stride
        return self.ids[s:s + self.max_length], self.ids[s + 1:s + self.max_length + 1]

    def get_batch(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """Windows ``indices`` (B,) stacked into (B, T) inputs and targets, int64."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self._n):
            raise IndexError(f"window indices must be in [0, {self._n}), got min {idx.min()} max {idx.max()}")
        starts = idx * self.stride
        pos = starts[:, None] + np.arange(self.max_length + 1)  # (B, T + 1)
        chunk = self.ids[pos]
        return chunk[:, :-1], chunk[:, 1:]


# ---------------------------------------------------------------------------------------------- token files
def _dtype_for_vocab(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.uint32)


def _atomic_write(path: Path, write) -> None:
    """Write via a temp file in the same folder, fsync, then rename: a crash never leaves a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_token_file(token_ids, path: str | os.PathLike, vocab_size: int | None = None) -> Path:
    """Write ids as raw little-endian uint16 (vocab <= 65536: every id < 65536 fits) or uint32, atomically.

    A sidecar ``<path>.json`` records ``{"format", "dtype", "num_tokens", "vocab_size"}``. ``vocab_size`` defaults
    to ``max(id) + 1``. Returns the path. Files written this way can be read by nanoGPT-style code with
    ``np.memmap(path, dtype=np.uint16)``.
    """
    ids = _as_id_array(token_ids, "write_token_file")
    path = Path(path)
    top = int(ids.max()) + 1 if ids.size else 0
    if ids.size and int(ids.min()) < 0:
        raise ValueError(f"write_token_file({str(path)!r}): negative token id {int(ids.min())}")
    vocab_size = top if vocab_size is None else int(vocab_size)
    if top > vocab_size:
        raise ValueError(f"write_token_file({str(path)!r}): id {top - 1} >= vocab_size {vocab_size}")
    if vocab_size > 2**32:
        raise ValueError(f"write_token_file: vocab_size {vocab_size} does not fit uint32")
    dtype = _dtype_for_vocab(vocab_size)
    data = ids.astype(dtype.newbyteorder("<"))
    meta = {"format": TOKEN_FILE_FORMAT, "dtype": dtype.name, "num_tokens": int(ids.size), "vocab_size": vocab_size}
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, lambda f: f.write(data.tobytes()))
    _atomic_write(Path(str(path) + ".json"), lambda f: f.write(json.dumps(meta, indent=1).encode()))
    return path


def read_token_file_meta(path: str | os.PathLike) -> dict | None:
    """The sidecar metadata of a token file, or None when there is no ``<path>.json``."""
    side = Path(str(path) + ".json")
    if not side.exists():
        return None
    try:
        meta = json.loads(side.read_text())
        np.dtype(meta["dtype"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{side}: not a valid token-file sidecar ({e})") from None
    return meta


class TokenFileDataset:
    """A token file read through ``numpy.memmap`` (never loaded whole), for corpora larger than memory.

    ``sample_batch(B, rng)`` draws B random windows as nanoGPT's ``get_batch`` does (inputs (B, T), targets
    shifted by one; int64). For epoch-style iteration with ``DataLoader``, sample i is the window starting at
    ``i * stride`` (stride defaults to ``block_size``: non-overlapping).

    dtype: np.uint16 / np.uint32; when None it is read from the sidecar written by ``write_token_file``
    (a raw nanoGPT ``.bin`` with no sidecar needs ``dtype=np.uint16``).
    """

    def __init__(self, path: str | os.PathLike, block_size: int, dtype=None, stride: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"token file {str(self.path)!r} does not exist")
        meta = read_token_file_meta(self.path)
        if dtype is None:
            if meta is None:
                raise ValueError(f"{self.path}: no sidecar {self.path.name}.json giving the dtype; pass dtype=np.uint16 "
                                 "or np.uint32")
            dtype = meta["dtype"]
        dtype = np.dtype(dtype)
        if dtype not in (np.dtype(np.uint16), np.dtype(np.uint32)):
            raise ValueError(f"{self.path}: token file dtype must be uint16 or uint32, got {dtype}")
        if meta is not None and np.dtype(meta["dtype"]) != dtype:
            raise ValueError(f"{self.path}: dtype={dtype} given but the sidecar says {meta['dtype']}")
        size = self.path.stat().st_size
        if size % dtype.itemsize:
            raise ValueError(f"{self.path}: size {size} bytes is not a multiple of {dtype} ({dtype.itemsize} bytes); "
                             "wrong dtype or truncated file")
        self.num_tokens = size // dtype.itemsize
        if meta is not None and meta.get("num_tokens", self.num_tokens) != self.num_tokens:
            raise ValueError(f"{self.path}: holds {self.num_tokens} tokens but the sidecar says {meta['num_tokens']} "
                             "(truncated or overwritten file)")
        self.block_size = int(block_size)
        self.stride = int(stride or block_size)
        if self.block_size < 1 or self.stride < 1:
            raise ValueError(f"TokenFileDataset: block_size and stride must be >= 1, got {block_size} and {stride}")
        if self.num_tokens <= self.block_size:
            raise ValueError(f"{self.path}: too short: it has {self.num_tokens} tokens, but one window of "
                             f"block_size={self.block_size} needs at least {self.block_size + 1}")
        self.dtype = dtype.newbyteorder("<")
        self.vocab_size = None if meta is None else meta.get("vocab_size")
        self._n = _window_count(self.num_tokens, self.block_size, self.stride)
        # one read-only map for the dataset's lifetime: pages are cached by the OS, not held by this process
        self.data = np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.num_tokens,))

    def __len__(self) -> int:
        return self._n

    def _gather(self, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        chunk = np.stack([np.asarray(self.data[s:s + self.block_size + 1]) for s in starts.tolist()])
        chunk = chunk.astype(np.int64)
        return chunk[:, :-1], chunk[:, 1:]

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if not -self._n <= i < self._n:
            raise IndexError(f"window {i} out of range for {self._n} windows")
        x, y = self._gather(np.array([(i % self._n) * self.stride]))
        return x[0], y[0]

    def get_batch(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """Fixed windows ``indices`` (B,) -> (B, T) int64 inputs and targets."""
        return self._gather(np.asarray(indices, dtype=np.int64) * self.stride)

    def sample_batch(self, batch_size: int, rng: np.random.Generator | int | None = None):
        """B windows at uniformly random offsets in [0, num_tokens - block_size) (nanoGPT's get_batch).

        rng: a ``np.random.Generator`` (advanced in place, so a saved generator state resumes the stream) or a seed.
        """
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        starts = rng.integers(0, self.num_tokens - self.block_size, size=batch_size)
        return self._gather(starts)


def train_val_split(token_ids, val_fraction: float = 0.1):
    """Contiguous split: the first ``1 - val_fraction`` for training, the rest for validation (the book's 90/10).

    Works on any sliceable (ndarray, list, or even the raw text str). Returns ``(train, val)``.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    split = int(round(len(token_ids) * (1.0 - val_fraction)))
    return token_ids[:split], token_ids[split:]
