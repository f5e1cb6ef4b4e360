"""Load a model from a Hugging Face folder, and write one back.

    model = from_pretrained("Llama-3.2-1B/")           # config.json + model.safetensors (or shards + index)
    save_pretrained(model, "out/", tokenizer=tok)      # config.json, model.safetensors, generation_config.json,
                                                       # tokenizer.json + tokenizer_config.json

Loading plans every parameter (``names.weight_plan``), checks that each stored tensor exists with the right shape
before any data is read (``PretrainedFormatError`` names the tensor and the file), allocates the model without
initialising it, then copies each tensor once from the memory-mapped file into its parameter (BF16 widened to
float32 in place). A folder without ``config.json`` is read as GPT-2, its sizes taken from the tensor shapes.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..config import GPTConfig
from ..gpt import GPT
from .configs import config_from_hf, hf_from_config
from .names import Entry, weight_plan, skipped
from .safetensors_io import PretrainedFormatError, TensorFiles, copy_into, fresh_array, weight_files, write_sharded

__all__ = ["from_pretrained", "save_pretrained", "read_config", "is_hf_folder", "KNOWN_N_HEAD"]

# n_embd -> n_head of the four released GPT-2 sizes (a folder without config.json)
KNOWN_N_HEAD = {768: 12, 1024: 16, 1280: 20, 1600: 25}
_DTYPE_NAMES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


def is_hf_folder(path: str | os.PathLike) -> bool:
    """True for a Hugging Face model folder (config.json + safetensors weights), not one of our checkpoints."""
    p = Path(path)
    return p.is_dir() and (p / "config.json").is_file() and not (p / "checkpoint.json").exists() \
        and ((p / "model.safetensors").is_file() or (p / "model.safetensors.index.json").is_file())


def read_config(folder: Path, dropout: float = 0.0, ignore_fields=()) -> GPTConfig | None:
    """The folder's ``config.json`` as a GPTConfig (None when there is none)."""
    path = folder / "config.json"
    if not path.is_file():
        return None
    try:
        hf = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PretrainedFormatError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(hf, dict):
        raise PretrainedFormatError(f"{path}: expected a JSON object")
    return config_from_hf(hf, str(path), dropout, tuple(ignore_fields))


def _gpt2_from_shapes(tf: TensorFiles, where: Path, n_head: int | None) -> GPTConfig:
    p = "transformer." if "transformer.wte.weight" in tf else ""
    for name in ("wte.weight", "wpe.weight"):
        if p + name not in tf:
            raise PretrainedFormatError(f"{where}: no config.json and no tensor {p + name!r}: put the model's "
                                        "config.json next to its weights")
    vocab, c = tf.shape(p + "wte.weight")
    blocks = {int(m.group(1)) for n in tf.names() if (m := re.match(rf"^{re.escape(p)}h\.(\d+)\.", n))}
    if n_head is None:
        if c not in KNOWN_N_HEAD:
            raise PretrainedFormatError(f"{where}: no config.json, and n_embd={c} is not a released GPT-2 size "
                                        f"({', '.join(map(str, KNOWN_N_HEAD))}): add the config.json or pass n_head=")
        n_head = KNOWN_N_HEAD[c]
    return GPTConfig(family="gpt2", vocab_size=vocab, context_length=tf.shape(p + "wpe.weight")[0],
                     n_layer=max(blocks) + 1 if blocks else 0, n_head=n_head, n_embd=c)


def _check(plan: list[Entry], shapes: dict[str, tuple], tf: TensorFiles, cfg: GPTConfig, where: Path) -> None:
    problems = []
    used = set()
    for e in plan:
        want_rows = shapes[e.ours][0]
        if sum(p.rows for p in e.parts) != want_rows:
            problems.append(f"{e.ours} needs {want_rows} rows, the parts give {sum(p.rows for p in e.parts)}")
        for part in e.parts:
            used.add(part.name)
            tail = shapes[e.ours][1:]
            want = (part.rows, *tail)[::-1] if part.transpose else (part.rows, *tail)
            if part.name not in tf:
                problems.append(f"missing tensor {part.name!r} (for {e.ours}, shape {list(want)}) in {where}")
                continue
            have = tf.shape(part.name)
            if part.index is not None:
                ok = len(have) == 3 and have[0] > part.index and have[1] >= part.row_start + part.rows \
                    and tuple(have[2:]) == tuple(tail)
            else:
                ok = tuple(have) == tuple(want)
            if not ok:
                problems.append(f"tensor {part.name!r} in {tf.file(part.name)} has shape {list(have)}, expected "
                                f"{list(want)} (for {e.ours} of a {cfg.family} model with n_layer={cfg.n_layer}, "
                                f"n_embd={cfg.n_embd}, vocab_size={cfg.vocab_size}: does config.json match?)")
    tied_head = {"lm_head.weight"} if cfg.tie_weights else set()
    extra = sorted(n for n in tf.names() if n not in used and n not in tied_head and not skipped(n))
    if extra:
        problems.append(f"tensors in {where} that a {cfg.family} model with this config.json does not have: "
                        f"{', '.join(extra[:6])}" + (" ..." if len(extra) > 6 else ""))
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise PretrainedFormatError(f"from_pretrained: {problems[0]}{more}")


def from_pretrained(path: str | os.PathLike, dtype=np.float32, device: str | None = None, dropout: float = 0.0,
                    n_head: int | None = None, ignore_fields=()) -> GPT:
    """The model stored at ``path`` (a Hugging Face folder of any supported family, or a GPT-2 .safetensors
    file). ``dtype``: the parameters' dtype (float32 by default; the file may hold float32, float16 or
    bfloat16). ``dropout``: the model's dropout rate. ``n_head``: for a GPT-2 file without config.json whose width
    is not a released size. ``ignore_fields``: config.json fields to accept although they are unknown."""
    path = Path(path)
    files = weight_files(path)
    folder = path if path.is_dir() else path.parent
    tf = TensorFiles(files)
    where = files[0] if len(files) == 1 else folder
    cfg = read_config(folder, dropout, ignore_fields)
    if cfg is None:
        cfg = _gpt2_from_shapes(tf, where, n_head).replace(dropout=dropout)
    if np.dtype(dtype) != np.float32 and cfg.family == "gpt2" and _reorder_upcast(folder):
        raise PretrainedFormatError(f"{folder / 'config.json'}: reorder_and_upcast_attn: true asks for float32 "
                                    f"attention; load this model with dtype=float32 (got {np.dtype(dtype)})")
    model = GPT(cfg, seed=None, dtype=dtype, init=False)
    params = dict(model.named_parameters())
    plan = weight_plan(cfg, tf.names())
    _check(plan, {k: tuple(v.shape) for k, v in params.items()}, tf, cfg, where)
    unplanned = sorted(set(params) - {e.ours for e in plan})
    if unplanned:                                   # a family/config combination the plan does not know
        raise PretrainedFormatError(f"from_pretrained: no stored tensor is mapped to {unplanned[:4]} ({cfg.family})")
    for e in plan:
        # every value is overwritten: fresh storage, prefaulted in one call (the zeroed pages of the model as
        # built were never touched, so they cost nothing)
        p = params[e.ours]
        p.data = dst = fresh_array(p.shape, p.dtype)
        row = 0
        for part in e.parts:
            out = dst[row:row + part.rows]
            row += part.rows
            if part.index is None and not part.transpose and tf.read_into(part.name, out):
                continue
            src = tf.view(part.name)
            if part.index is not None:
                src = src[part.index, part.row_start:part.row_start + part.rows]
            copy_into(out, src.T if part.transpose else src, tf.dtype(part.name))
    tf.close()
    if device is not None:
        model.to(device)
    return model


def _reorder_upcast(folder: Path) -> bool:
    try:
        return bool(json.loads((folder / "config.json").read_text()).get("reorder_and_upcast_attn"))
    except (OSError, json.JSONDecodeError):
        return False


def save_pretrained(model: GPT, path: str | os.PathLike, tokenizer=None, dtype: str | None = None,
                    max_shard_size: int | None = None, chat_template: str | None = None) -> Path:
    """Write ``model`` as a Hugging Face folder that other tools load: ``config.json`` (its family's model type),
    ``model.safetensors`` (or shards of at most ``max_shard_size`` bytes plus the index), ``generation_config.json``,
    and with a ``tokenizer`` its ``tokenizer.json`` + ``tokenizer_config.json``. ``dtype``: "float32", "float16" or
    "bfloat16"; None: "bfloat16" for a model of bfloat16 parameters, else "float32". Merge LoRA weights first.
    Returns the folder."""
    from autograd import backend, dtypes
    if dtype is None:
        dtype = "bfloat16" if any(dtypes.is_bfloat16(p.dtype) for p in model.parameters()) else "float32"
    if dtype not in _DTYPE_NAMES:
        raise ValueError(f"save_pretrained: dtype must be one of {sorted(_DTYPE_NAMES)}, got {dtype!r}")
    cfg = model.config
    hf_cfg = hf_from_config(cfg, dtype)
    if tokenizer is not None:
        _check_vocab(tokenizer, cfg)
    ours = {k: v for k, v in model.state_dict().items()}
    plan = weight_plan(cfg)
    shapes = _shapes(model)
    missing = sorted(e.ours for e in plan if e.ours not in ours and not e.ours.endswith(".bias"))
    if missing:   # e.g. LoRA layers still in place
        raise ValueError(f"save_pretrained: the model has no parameter {missing[0]!r} (a LoRA model? call "
                         "merge_lora(model) first)")
    tensors: list[tuple[str, np.ndarray]] = []
    for e in plan:
        # a GPT-2 model built without biases is GPT-2 with zero biases
        a = backend.to_numpy(ours[e.ours]) if e.ours in ours else np.zeros(shapes[e.ours], np.float32)
        row = 0
        for part in e.parts:
            piece = a[row:row + part.rows]
            tensors.append((part.name, piece.T if part.transpose else piece))
            row += part.rows
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    write_sharded(folder, tensors, _DTYPE_NAMES[dtype], max_shard_size)
    # special ids: the tokenizer's, or none (never a default such as GPT-2's 50256 outside the vocabulary)
    gen: dict[str, Any] = {"_from_model_config": True, "bos_token_id": None, "eos_token_id": None}
    if tokenizer is not None:
        for key, tid in (("bos_token_id", getattr(tokenizer, "bos_id", None)), ("eos_token_id", tokenizer.eos_id)):
            gen[key] = None if tid is None else int(tid)
        from ...tokenizer.pretrained import save_pretrained as save_tokenizer
        save_tokenizer(tokenizer, folder, chat_template=chat_template, model_max_length=cfg.context_length)
    hf_cfg.update(bos_token_id=gen["bos_token_id"], eos_token_id=gen["eos_token_id"], pad_token_id=None)
    (folder / "config.json").write_text(json.dumps(hf_cfg, indent=2) + "\n", encoding="utf-8")
    (folder / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n", encoding="utf-8")
    return folder


def _shapes(model: GPT) -> dict[str, tuple]:
    """Our parameter shapes, biases included even where the model has none (GPT-2 export writes zeros)."""
    cfg = model.config
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if cfg.family == "gpt2":
        c, f = cfg.n_embd, cfg.ffn_hidden_size
        for i in range(cfg.n_layer):
            b = f"blocks.{i}."
            for name, rows in (("norm1", c), ("attn.qkv", 3 * c), ("attn.proj", c), ("norm2", c), ("ffn.fc", f),
                               ("ffn.proj", c)):
                shapes.setdefault(f"{b}{name}.bias", (rows,))
        shapes.setdefault("final_norm.bias", (c,))
    return shapes


def _check_vocab(tokenizer, cfg: GPTConfig) -> None:
    """Only ids the model has go into the files (an eos beyond the vocabulary breaks other tools)."""
    if tokenizer.vocab_size > cfg.vocab_size:
        raise ValueError(f"save_pretrained: the tokenizer has {tokenizer.vocab_size} tokens but the model's "
                         f"vocabulary only {cfg.vocab_size}")
