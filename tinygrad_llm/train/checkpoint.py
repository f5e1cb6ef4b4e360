"""Checkpoints: a folder of safetensors (arrays) + JSON (everything else), written atomically, never pickled.

Layout of an output folder::

    out_dir/
      latest                    text: the name of the newest complete checkpoint folder ("step_000100")
      step_000100/
        model.safetensors       model parameters, by name
        optimizer.safetensors   every other array of the state (optimizer moments ...), by tree path
        checkpoint.json         the rest: config, step, optimizer hyperparameters, RNG states, loader position,
                                tokenizer dict, training config; plus the byte size and SHA-256 of each file

A checkpoint *state* is a nested tree of dicts / lists / JSON scalars / ndarrays. ``state["model"]`` (a flat
``name -> array`` dict) goes to ``model.safetensors``; every other array in the tree is replaced in the JSON by
``{"__tensor__": "<path>"}`` and stored in ``optimizer.safetensors`` under that path.

Atomicity: the whole folder is written under a temporary name in ``out_dir`` (each file fsynced), the folder is
fsynced and renamed into place, ``out_dir`` is fsynced, and only then is ``latest`` replaced (temp file, fsync,
``os.replace``). A crash at any point leaves the previous ``latest`` checkpoint intact.

Loading reads and validates *everything* (file presence, sizes, hashes, JSON, safetensors headers, every tensor
reference) before returning, so a caller that applies the result only after ``load_checkpoint`` returns never
changes its model or optimizer on a bad checkpoint. Every problem is one ``CheckpointError`` naming the file.
Arrays come back as NumPy on the host; the caller moves them to its device.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CheckpointError", "Checkpoint", "save_checkpoint", "load_checkpoint", "resolve_checkpoint",
           "list_checkpoints", "read_checkpoint_json", "FORMAT"]

FORMAT = "tinygrad-llm-checkpoint/1"
MODEL_FILE = "model.safetensors"
EXTRA_FILE = "optimizer.safetensors"
META_FILE = "checkpoint.json"
LATEST = "latest"
STEP_RE = re.compile(r"^step_(\d+)$")


class CheckpointError(Exception):
    """A checkpoint cannot be read: missing, truncated, corrupted, a pickle, or inconsistent. The message names the file."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: ``model`` (name -> ndarray), and ``state`` (the whole tree, arrays restored)."""
    path: Path
    step: int
    model: dict[str, np.ndarray]
    state: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.state[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.state.get(key, default)


# ----------------------------------------------------------------------------------------------- tree <-> json
def _to_host(a) -> np.ndarray:
    """A contiguous NumPy array from an ndarray, a CuPy array, or a Tensor (its ``.data``)."""
    if not isinstance(a, np.ndarray) and not type(a).__module__.startswith("cupy") and hasattr(a, "data"):
        a = a.data  # an autograd Tensor
    if type(a).__module__.startswith("cupy"):
        a = a.get()
    return np.ascontiguousarray(np.asarray(a))


def _is_array(x) -> bool:
    return isinstance(x, np.ndarray) or type(x).__module__.startswith("cupy")


def _split(obj: Any, path: str, arrays: dict[str, np.ndarray]) -> Any:
    """Replace arrays in a tree by ``{"__tensor__": path}`` and collect them; NumPy scalars become Python values."""
    if _is_array(obj):
        arrays[path] = _to_host(obj)
        return {"__tensor__": path}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: _split(v, f"{path}/{k}" if path else k, arrays) for k, v in obj.items()}
        # JSON keys are strings: keep int keys (optimizer state by parameter index) as [key, value] pairs
        items = []
        for k, v in obj.items():
            if isinstance(k, np.generic):
                k = k.item()
            if not isinstance(k, (str, int, float, bool)):
                raise TypeError(f"save_checkpoint: dict key {k!r} at {path!r} is not a str/int/float/bool")
            items.append([k, _split(v, f"{path}/{k}" if path else str(k), arrays)])
        return {"__items__": items}
    if isinstance(obj, (list, tuple)):
        return [_split(v, f"{path}/{i}", arrays) for i, v in enumerate(obj)]
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"save_checkpoint: cannot store a {type(obj).__name__} at {path!r} (only dicts, lists, "
                    "numbers, strings, None and arrays; never pickled objects)")


def _join(obj: Any, arrays: dict[str, np.ndarray], where: str) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            key = obj["__tensor__"]
            if key not in arrays:
                raise CheckpointError(f"{where}: refers to tensor {key!r}, which is missing from {EXTRA_FILE}")
            return arrays[key]
        if set(obj) == {"__items__"} and isinstance(obj["__items__"], list):
            return {k: _join(v, arrays, where) for k, v in obj["__items__"]}
        return {k: _join(v, arrays, where) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_join(v, arrays, where) for v in obj]
    return obj


# ----------------------------------------------------------------------------------------------- files on disk
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _save_safetensors(arrays: dict[str, np.ndarray], path: Path) -> None:
    from safetensors.numpy import save_file
    save_file(arrays, str(path), metadata={"format": FORMAT})
    _fsync_file(path)


def step_dir_name(step: int) -> str:
    return f"step_{int(step):06d}"


def list_checkpoints(out_dir: str | os.PathLike) -> list[Path]:
    """The complete ``step_*`` checkpoint folders in ``out_dir``, oldest step first."""
    out = Path(out_dir)
    if not out.is_dir():
        return []
    found = []
    for p in out.iterdir():
        m = STEP_RE.match(p.name)
        if m and p.is_dir() and (p / META_FILE).is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


# ----------------------------------------------------------------------------------------------- save
def save_checkpoint(out_dir: str | os.PathLike, step: int, state: dict[str, Any], keep_last: int | None = 3) -> Path:
    """Write ``state`` as ``out_dir/step_{step:06d}/`` atomically, point ``latest`` at it, keep the newest ``keep_last``.

    state: a tree (see module doc); ``state["model"]`` is ``name -> array`` (NumPy or CuPy; copied to the host).
    keep_last: number of step folders to keep (None or 0 keeps all). Returns the checkpoint folder.
    """
    if isinstance(step, bool) or int(step) != step or step < 0:
        raise ValueError(f"save_checkpoint: step must be an integer >= 0, got {step!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = dict(state)
    model = state.pop("model", {}) or {}
    model_arrays = {str(k): _to_host(v) for k, v in model.items()}
    extra: dict[str, np.ndarray] = {}
    tree = _split(state, "", extra)

    final = out / step_dir_name(step)
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        files = {}
        _save_safetensors(model_arrays, tmp / MODEL_FILE)
        _save_safetensors(extra, tmp / EXTRA_FILE)
        for name in (MODEL_FILE, EXTRA_FILE):
            files[name] = {"bytes": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)}
        meta = {"format": FORMAT, "step": int(step), "files": files, "state": tree}
        with open(tmp / META_FILE, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1, allow_nan=True)
            f.flush()
            os.fsync(f.fileno())
        mask = _umask()  # mkdtemp makes a 0700 folder; give the folder and files the usual permissions
        os.chmod(tmp, 0o777 & ~mask)
        for name in (MODEL_FILE, EXTRA_FILE, META_FILE):
            os.chmod(tmp / name, 0o666 & ~mask)
        _fsync_dir(tmp)
        if final.exists():  # re-saving the same step: move the old one aside, then swap
            trash = Path(tempfile.mkdtemp(dir=out, prefix=f".{final.name}.", suffix=".old"))
            os.replace(final, trash / final.name)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _write_text_atomic(out / LATEST, final.name + "\n")
    if keep_last:
        for old in list_checkpoints(out)[:-int(keep_last)]:
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
        _fsync_dir(out)
    return final


# ----------------------------------------------------------------------------------------------- load
_PICKLE_HINT = ("tinygrad-llm never loads pickles (they can run arbitrary code); convert the weights to "
                "safetensors, or load GPT-2 weights from a Hugging Face model.safetensors folder")


def _sniff_foreign(path: Path) -> str | None:
    """Describe a file that is a pickle / PyTorch zip rather than one of ours, else None."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return None
    if head[8:9] == b"{":  # safetensors: an 8-byte header length, then the JSON header (its length can start 80 0N)
        return None
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "is a Python pickle file"
    if head == b"PK\x03\x04":
        return "is a zip archive (a PyTorch .pt/.pth pickle checkpoint?)"
    return None


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint folder for ``path``: a ``step_*`` folder itself, or an output folder via its ``latest`` file."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: checkpoint not found (no such file or folder)")
    if p.is_file():
        what = _sniff_foreign(p)
        if what:
            raise CheckpointError(f"{p}: {what}; {_PICKLE_HINT}")
        if p.name == META_FILE:
            return p.parent
        raise CheckpointError(f"{p}: not a checkpoint folder (expected a folder with {META_FILE}, or an output "
                              f"folder with a '{LATEST}' file)")
    if (p / META_FILE).exists():
        return p
    if (p / LATEST).is_file():
        try:
            name = (p / LATEST).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{p / LATEST}: cannot read ({e})") from None
        if not STEP_RE.match(name) or not (p / name).is_dir():
            raise CheckpointError(f"{p / LATEST}: points at {name!r}, which is not a checkpoint folder in {p}")
        return p / name
    ckpts = list_checkpoints(p)
    if ckpts:
        return ckpts[-1]
    foreign = [f for f in sorted(p.iterdir()) if f.is_file() and _sniff_foreign(f)]
    if foreign:
        raise CheckpointError(f"{foreign[0]}: {_sniff_foreign(foreign[0])}; {_PICKLE_HINT}")
    raise CheckpointError(f"{p}: no checkpoint here (no {META_FILE}, no '{LATEST}' file, no step_* folders)")


def _load_safetensors(path: Path, info: dict) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing file (the checkpoint is incomplete)")
    what = _sniff_foreign(path)
    if what:
        raise CheckpointError(f"{path}: {what}, not safetensors; {_PICKLE_HINT}")
    size = path.stat().st_size
    want = info.get("bytes")
    if want is not None and size != want:
        kind = "truncated" if size < want else "has extra bytes"
        raise CheckpointError(f"{path}: {kind}: {size} bytes on disk, {want} expected")
    if info.get("sha256") and _sha256(path) != info["sha256"]:
        raise CheckpointError(f"{path}: corrupted: its SHA-256 does not match the one recorded in {META_FILE}")
    from safetensors.numpy import load_file
    try:
        return dict(load_file(str(path)))
    except Exception as e:  # SafetensorError, header JSON errors, size mismatches
        raise CheckpointError(f"{path}: not a valid safetensors file (truncated or corrupted?): {e}") from None


def read_checkpoint_json(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON part of a checkpoint (``{"format", "step", "files", "state"}``, tensors left as references),
    without reading the tensors: cheap, for looking at a run's config or step."""
    meta_path = resolve_checkpoint(path) / META_FILE
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{meta_path}: cannot read ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("state"), dict):
        raise CheckpointError(f"{meta_path}: not a tinygrad-llm checkpoint")
    return meta


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read and validate a checkpoint folder (or an output folder's ``latest``); arrays come back as NumPy.

    Raises CheckpointError (one message naming the file) for a missing folder or file, a pickle, a truncated or
    corrupted safetensors/JSON file, or a dangling tensor reference. Nothing outside is touched.
    """
    folder = resolve_checkpoint(path)
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{meta_path}: missing file (the checkpoint is incomplete)")
    what = _sniff_foreign(meta_path)
    if what:
        raise CheckpointError(f"{meta_path}: {what}; {_PICKLE_HINT}")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{meta_path}: not UTF-8 text ({e})") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{meta_path}: not valid JSON (truncated or corrupted?): {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{meta_path}: not a tinygrad-llm checkpoint (format {got!r}, expected {FORMAT!r})")
    for key, typ in (("step", int), ("files", dict), ("state", dict)):
        if not isinstance(meta.get(key), typ) or isinstance(meta.get(key), bool):
            raise CheckpointError(f"{meta_path}: field {key!r} is missing or not a {typ.__name__}")
    if meta["step"] < 0:
        raise CheckpointError(f"{meta_path}: field 'step' is {meta['step']}; a step count is >= 0")
    files = meta["files"]
    model = _load_safetensors(folder / MODEL_FILE, files.get(MODEL_FILE, {}))
    extra = _load_safetensors(folder / EXTRA_FILE, files.get(EXTRA_FILE, {}))
    state = _join(meta["state"], extra, str(meta_path))
    return Checkpoint(path=folder, step=meta["step"], model=model, state=state)
