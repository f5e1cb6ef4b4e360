"""safetensors files, memory-mapped: read tensors straight from the page cache into parameters, and write them.

A safetensors file is an 8-byte little-endian header size N, N bytes of JSON ``{name: {"dtype", "shape",
"data_offsets": [begin, end]}, "__metadata__": {...}}``, then the raw little-endian data (offsets relative to byte
8 + N). Loading copies each weight exactly once: ``TensorFiles.read_into`` reads a tensor's bytes straight into the
model's array when they need no rearranging (the common case: a plain read, as fast as reading the file), else
``view`` maps the file read-only (``numpy.memmap``) and ``copy_into`` copies from the mapping (transposes, dtype
casts, stacked experts). A BF16 tensor is widened to float32 in a float32 destination (the 16 stored bits are the
top half of a float32), and its bits are copied as they are into a bfloat16 destination (ml_dtypes' dtype).

A folder holds ``model.safetensors`` or shards ``model-0000N-of-0000M.safetensors`` listed by
``model.safetensors.index.json`` (``{"weight_map": {name: shard file}}``). ``write_safetensors`` writes one file
tensor by tensor (float32, float16 or bfloat16, rounded to nearest even), ``write_sharded`` a folder's shards and
index.
"""
from __future__ import annotations

import json
import mmap
import struct
import sys
from pathlib import Path
from typing import Iterable

import numpy as np

from autograd.dtypes import is_bfloat16

__all__ = ["PretrainedFormatError", "TensorFiles", "weight_files", "copy_into", "write_safetensors", "write_sharded",
           "to_bf16_bits", "fresh_array"]

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16}
_NAMES = {np.dtype(np.float64): "F64", np.dtype(np.float32): "F32", np.dtype(np.float16): "F16"}


class PretrainedFormatError(ValueError):
    """A Hugging Face model folder is incomplete, inconsistent or uses something we do not implement (the message
    names the file and the tensor or field)."""


def _header(path: Path) -> tuple[int, dict]:
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise PretrainedFormatError(f"{path}: not a safetensors file (shorter than its 8-byte header size)")
            (n,) = struct.unpack("<Q", raw)
            if n > min(100_000_000, size - 8):
                raise PretrainedFormatError(f"{path}: not a safetensors file (header size {n} bytes)")
            head = json.loads(f.read(n))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PretrainedFormatError(f"{path}: not a safetensors file (bad JSON header: {e})") from None
    if not isinstance(head, dict):
        raise PretrainedFormatError(f"{path}: not a safetensors file (the header is not a JSON object)")
    for name, info in head.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = info["data_offsets"]
            shape, dtype = tuple(int(s) for s in info["shape"]), info["dtype"]
        except (KeyError, TypeError, ValueError):
            raise PretrainedFormatError(f"{path}: tensor {name!r} has a malformed header entry {info!r}") from None
        if dtype not in _DTYPES:
            raise PretrainedFormatError(f"{path}: tensor {name!r} is stored as {dtype}; only F32, F16, BF16 and F64 "
                                        "weights are supported (quantized checkpoints are not)")
        want = int(np.prod(shape, dtype=np.int64)) * np.dtype(_DTYPES[dtype]).itemsize
        if end - begin != want or begin < 0 or 8 + n + end > size:
            raise PretrainedFormatError(f"{path}: tensor {name!r} ({dtype}, shape {list(shape)}) has data offsets "
                                        f"{[begin, end]} that do not fit its size or the file (truncated?)")
    return 8 + n, head


class TensorFiles:
    """The tensors of one or more safetensors files by name: ``shape(name)``, ``dtype(name)``, ``view(name)`` (a
    read-only array over the mapped file, BF16 as uint16 bits), ``file(name)``."""

    def __init__(self, files: list[Path]):
        self.where: dict[str, tuple[Path, int, dict]] = {}
        self._maps: dict[Path, np.memmap] = {}
        self._files: dict = {}
        for f in files:
            start, head = _header(f)
            for name, info in head.items():
                if name == "__metadata__":
                    continue
                if name in self.where:
                    raise PretrainedFormatError(f"tensor {name!r} is in both {self.where[name][0]} and {f}")
                self.where[name] = (f, start, info)

    def names(self) -> list[str]:
        return list(self.where)

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.where[name][2]["shape"])

    def dtype(self, name: str) -> str:
        return self.where[name][2]["dtype"]

    def file(self, name: str) -> Path:
        return self.where[name][0]

    def view(self, name: str) -> np.ndarray:
        f, start, info = self.where[name]
        if f not in self._maps:
            self._maps[f] = np.memmap(f, dtype=np.uint8, mode="r")
        begin, end = info["data_offsets"]
        raw = self._maps[f][start + begin:start + end]
        return raw.view(np.dtype(_DTYPES[info["dtype"]]).newbyteorder("<")).reshape(info["shape"])

    def read_into(self, name: str, dst: np.ndarray) -> bool:
        """Read tensor ``name`` straight from the file into ``dst`` when no rearranging is needed (same dtype, or
        BF16 into float32; ``dst`` C-contiguous, same shape): one kernel read per tensor, no page faults on a
        mapping. False when ``dst`` needs the general path (``view`` + ``copy_into``)."""
        f, start, info = self.where[name]
        dtype = info["dtype"]
        if not dst.flags.c_contiguous or tuple(dst.shape) != tuple(info["shape"]):
            return False
        widen = dtype == "BF16" and dst.dtype == np.float32
        same = dst.dtype == np.dtype(_DTYPES[dtype]) or (dtype == "BF16" and is_bfloat16(dst.dtype))
        if not widen and not same:
            return False
        if f not in self._files:
            self._files[f] = open(f, "rb", buffering=0)
        fh = self._files[f]
        fh.seek(start + info["data_offsets"][0])
        if not widen:
            _read_exactly(fh, memoryview(dst.reshape(-1).view(np.uint8)), f)
            return True
        bits = dst.reshape(-1).view(np.uint32)
        chunk = np.empty(min(bits.size, 1 << 22), np.uint16)     # 8 MB of bf16 at a time
        for i in range(0, bits.size, chunk.size):
            part = chunk[:min(chunk.size, bits.size - i)]
            _read_exactly(fh, memoryview(part.view(np.uint8)), f)
            out = bits[i:i + part.size]
            out[...] = part         # zero-extended (faster than one left_shift with a widening cast)
            out <<= 16
        return True

    def close(self) -> None:
        self._maps.clear()
        for fh in self._files.values():
            fh.close()
        self._files.clear()


def _read_exactly(fh, buf: memoryview, path: Path) -> None:
    got = 0
    while got < len(buf):
        n = fh.readinto(buf[got:])
        if not n:
            raise PretrainedFormatError(f"{path}: the file ends before its tensors do (truncated?)")
        got += n


_MADV_POPULATE_WRITE = 23          # Linux >= 5.14


def _madvise():
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc.madvise


_MADVISE = []


def fresh_array(shape: tuple, dtype) -> np.ndarray:
    """Uninitialised storage for values about to be written, its pages faulted in by one madvise call
    (MADV_POPULATE_WRITE) on Linux: touching fresh memory page by page from NumPy was the slowest part of
    loading a 1B model, slower than reading the file. Elsewhere (or on older kernels) plain ``np.empty``."""
    a = np.empty(shape, dtype)
    if a.nbytes < (1 << 20) or not sys.platform.startswith("linux"):
        return a
    if not _MADVISE:
        try:
            _MADVISE.append(_madvise())
        except (OSError, AttributeError):
            _MADVISE.append(None)
    if _MADVISE[0] is not None:
        page = mmap.PAGESIZE
        start = -(-a.ctypes.data // page) * page
        end = (a.ctypes.data + a.nbytes) // page * page
        if end > start:
            _MADVISE[0](start, end - start, _MADV_POPULATE_WRITE)    # a failure only means no prefaulting
    return a


def copy_into(dst: np.ndarray, src: np.ndarray, dtype: str) -> None:
    """dst[...] = src, where src is a stored view of type ``dtype`` (BF16: uint16 bits, widened here, or taken as
    they are by a bfloat16 ``dst``)."""
    if is_bfloat16(dst.dtype):
        dst[...] = src.view(dst.dtype) if dtype == "BF16" else src.astype(np.float32, copy=False)
    elif dtype != "BF16":
        dst[...] = src
    elif dst.dtype == np.float32 and dst.flags.c_contiguous:
        # the 16 bits, zero-extended and shifted, are the top half: exactly the float32 of that bfloat16
        np.left_shift(src, np.uint32(16), out=dst.view(np.uint32))
    else:
        dst[...] = (src.astype(np.uint32) << 16).view(np.float32)


def to_bf16_bits(a: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16), rounded to nearest even; NaN stays NaN. bfloat16 arrays give their bits."""
    if is_bfloat16(a.dtype):
        return np.ascontiguousarray(a).view(np.uint16)
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    rounded = ((u + np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1))) >> 16).astype(np.uint16)
    return np.where(np.isnan(a), np.uint16(0x7FC0), rounded)


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of a folder (single file or the shards of its index), or ``path`` itself."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"model weights: {str(path)!r} is neither a folder nor a .safetensors file")
    single = path / "model.safetensors"
    if single.is_file():
        return [single]
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise PretrainedFormatError(f"{index}: not a safetensors index (needs a 'weight_map' object): {e}") from None
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise PretrainedFormatError(f"{index} lists the shard {missing[0]!r}, which is not in {path}")
        return [path / s for s in shards]
    hint = " (pytorch_model.bin is a pickle and is never read: download the .safetensors files)" \
        if any(path.glob("pytorch_model*.bin")) else ""
    raise FileNotFoundError(f"model weights: no model.safetensors (or model.safetensors.index.json) in "
                            f"{str(path)!r}{hint}")


def _stored(a: np.ndarray, dtype: str, chunk: int = 1 << 20):
    """The bytes of ``a`` stored as ``dtype``, converted a million elements at a time (bounded temporaries)."""
    flat = np.ascontiguousarray(a).reshape(-1)
    for i in range(0, max(flat.size, 1), chunk):
        part = flat[i:i + chunk]
        yield memoryview(to_bf16_bits(part) if dtype == "BF16" else
                         np.ascontiguousarray(part, {"F32": np.float32, "F16": np.float16, "F64": np.float64}[dtype]))


def write_safetensors(path: Path, tensors: Iterable[tuple[str, np.ndarray]], dtype: str = "F32",
                      metadata: dict | None = None) -> int:
    """Write (name, array) pairs as one safetensors file in ``dtype`` ("F32", "F16", "BF16"), converting one
    tensor at a time; returns the data size in bytes. Reads back with ``safetensors.safe_open``."""
    items = list(tensors)
    itemsize = 2 if dtype in ("BF16", "F16") else np.dtype(_DTYPES[dtype]).itemsize
    head: dict = {"__metadata__": {"format": "pt", **(metadata or {})}}
    offset = 0
    for name, a in items:
        n = int(np.prod(a.shape, dtype=np.int64)) * itemsize
        head[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(head, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)                     # the data starts 8-byte aligned
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for _, a in items:
            for piece in _stored(a, dtype):
                f.write(piece)
    tmp.replace(path)
    return offset


def write_sharded(folder: Path, tensors: list[tuple[str, np.ndarray]], dtype: str = "F32",
                  max_shard_bytes: int | None = None) -> list[Path]:
    """``model.safetensors``, or shards of at most ``max_shard_bytes`` with ``model.safetensors.index.json``."""
    itemsize = 2 if dtype in ("BF16", "F16") else np.dtype(_DTYPES[dtype]).itemsize
    sizes = [int(np.prod(a.shape, dtype=np.int64)) * itemsize for _, a in tensors]
    for old in [*folder.glob("model-*-of-*.safetensors"), folder / "model.safetensors",
                folder / "model.safetensors.index.json"]:
        old.unlink(missing_ok=True)                   # a previous export's shards would confuse a reader
    if max_shard_bytes is None or sum(sizes) <= max_shard_bytes:
        write_safetensors(folder / "model.safetensors", tensors, dtype)
        return [folder / "model.safetensors"]
    groups: list[list[int]] = [[]]
    used = 0
    for i, n in enumerate(sizes):
        if groups[-1] and used + n > max_shard_bytes:
            groups.append([])
            used = 0
        groups[-1].append(i)
        used += n
    files, weight_map = [], {}
    for k, group in enumerate(groups):
        name = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        write_safetensors(folder / name, [tensors[i] for i in group], dtype)
        files.append(folder / name)
        weight_map.update({tensors[i][0]: name for i in group})
    index = {"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return files
