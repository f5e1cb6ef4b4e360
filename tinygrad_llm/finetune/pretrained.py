"""GPT-2 weights in the Hugging Face layout: load them into our GPT, and export our GPT back to that layout.

    model = load_gpt2("gpt2/")                  # a folder with model.safetensors (+ config.json, tokenizer files)
    tok = load_gpt2_tokenizer("gpt2/")          # vocab.json + merges.txt (HF) or encoder.json + vocab.bpe (OpenAI)
    export_gpt2(model, "out/", tokenizer=tok)   # model.safetensors + config.json (+ vocab.json, merges.txt)

The folder is what ``huggingface-cli download openai-community/gpt2`` (or gpt2-medium / -large / -xl) gives; only
``model.safetensors`` (or shards listed in ``model.safetensors.index.json``), ``config.json`` and the tokenizer files
are read. Tensors are read with the ``safetensors`` package's NumPy API, one at a time (never a pickle, never torch).

Name mapping (Hugging Face -> ours), each HF name possibly prefixed ``transformer.``::

    wte.weight (V, C)                    -> tok_emb.weight
    wpe.weight (ctx, C)                  -> pos_emb.weight
    h.N.ln_1.{weight,bias}               -> blocks.N.norm1.*
    h.N.attn.c_attn.{weight (C, 3C), bias} -> blocks.N.attn.qkv.*      (weight transposed)
    h.N.attn.c_proj.{weight (C, C), bias}  -> blocks.N.attn.proj.*     (weight transposed)
    h.N.ln_2.{weight,bias}               -> blocks.N.norm2.*
    h.N.mlp.c_fc.{weight (C, 4C), bias}  -> blocks.N.ffn.fc.*          (weight transposed)
    h.N.mlp.c_proj.{weight (4C, C), bias} -> blocks.N.ffn.proj.*       (weight transposed)
    ln_f.{weight,bias}                   -> final_norm.*
    lm_head.weight (V, C)                -> tied to wte (ignored unless config.json says tie_word_embeddings: false)
    h.N.attn.bias, h.N.attn.masked_bias  -> skipped (causal-mask buffers, not weights)

HF's ``Conv1D`` stores weights as (in, out) and computes x @ W + b; our Linear stores (out, in), hence the transposes.
c_attn's output columns are [q | k | v], each split into heads of D consecutive columns: exactly our qkv rows.
"""
from __future__ import annotations

import json
import os
import re
import struct
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..model.config import GPTConfig
from ..model.gpt import GPT

__all__ = ["load_gpt2", "export_gpt2", "load_gpt2_tokenizer", "gpt2_config_from_hf", "hf_config_from_gpt",
           "PretrainedFormatError", "HF_TO_OURS", "KNOWN_N_HEAD"]

# n_embd -> n_head of the four released GPT-2 sizes (used when there is no config.json)
KNOWN_N_HEAD = {768: 12, 1024: 16, 1280: 20, 1600: 25}
# per-block HF suffix -> (our suffix, transpose)
HF_TO_OURS: dict[str, tuple[str, bool]] = {
    "ln_1.weight": ("norm1.weight", False), "ln_1.bias": ("norm1.bias", False),
    "attn.c_attn.weight": ("attn.qkv.weight", True), "attn.c_attn.bias": ("attn.qkv.bias", False),
    "attn.c_proj.weight": ("attn.proj.weight", True), "attn.c_proj.bias": ("attn.proj.bias", False),
    "ln_2.weight": ("norm2.weight", False), "ln_2.bias": ("norm2.bias", False),
    "mlp.c_fc.weight": ("ffn.fc.weight", True), "mlp.c_fc.bias": ("ffn.fc.bias", False),
    "mlp.c_proj.weight": ("ffn.proj.weight", True), "mlp.c_proj.bias": ("ffn.proj.bias", False),
}
_TOP = {"wte.weight": "tok_emb.weight", "wpe.weight": "pos_emb.weight",
        "ln_f.weight": "final_norm.weight", "ln_f.bias": "final_norm.bias"}
_SKIP = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")
_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


class PretrainedFormatError(ValueError):
    """A GPT-2 checkpoint folder is incomplete or inconsistent (the message names the tensor and the file)."""


# ------------------------------------------------------------------------------------------------ reading
class _TensorFile:
    """Tensors of one or more .safetensors files, by (unprefixed) HF name; shapes known before reading data."""

    def __init__(self, files: list[Path]):
        self.where: dict[str, tuple[Path, str, tuple, str]] = {}   # name -> (file, stored name, shape, dtype)
        self.prefixed = False
        for f in files:
            for stored, (shape, dtype) in _header(f).items():
                name = stored
                if name.startswith("transformer."):
                    name, self.prefixed = name[len("transformer."):], True
                self.where[name] = (f, stored, shape, dtype)

    def names(self) -> list[str]:
        return list(self.where)

    def shape(self, name: str) -> tuple:
        return self.where[name][2]

    def file(self, name: str) -> Path:
        return self.where[name][0]

    def read_many(self, names: list[str]):
        """Yield (name, array) for ``names``, opening each file once; tensors are read one at a time."""
        from safetensors import safe_open
        by_file: dict[Path, list[str]] = {}
        for n in names:
            by_file.setdefault(self.where[n][0], []).append(n)
        for f, group in by_file.items():
            with safe_open(str(f), framework="numpy") as h:
                for n in group:
                    _, stored, _, dtype = self.where[n]
                    # NumPy has no bfloat16: widen the 16 stored bits to float32 ourselves
                    yield n, _read_bf16(f, stored) if dtype == "BF16" else h.get_tensor(stored)


def _header(path: Path) -> dict[str, tuple[tuple, str]]:
    """name -> (shape, dtype string) from a safetensors header (8-byte little-endian length + JSON)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise PretrainedFormatError(f"{path}: not a safetensors file (shorter than its 8-byte header size)")
            (n,) = struct.unpack("<Q", raw)
            if n > 100_000_000:
                raise PretrainedFormatError(f"{path}: not a safetensors file (header size {n} bytes)")
            head = json.loads(f.read(n))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PretrainedFormatError(f"{path}: not a safetensors file (bad JSON header: {e})") from None
    return {k: (tuple(v["shape"]), v["dtype"]) for k, v in head.items() if k != "__metadata__"}


def _read_bf16(path: Path, name: str) -> np.ndarray:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        info = json.loads(f.read(n))[name]
    start, end = info["data_offsets"]
    raw = np.fromfile(path, dtype="<u2", count=(end - start) // 2, offset=8 + n + start)
    return (raw.astype(np.uint32) << 16).view(np.float32).reshape(info["shape"])


def _weight_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"GPT-2 weights: {str(path)!r} is neither a folder nor a .safetensors file")
    single = path / "model.safetensors"
    if single.is_file():
        return [single]
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [path / s for s in shards]
    hint = " (pytorch_model.bin is a pickle and is not read: download model.safetensors)" \
        if (path / "pytorch_model.bin").exists() else ""
    raise FileNotFoundError(f"GPT-2 weights: no model.safetensors (or model.safetensors.index.json) in "
                            f"{str(path)!r}{hint}")


# ------------------------------------------------------------------------------------------------ configs
def gpt2_config_from_hf(hf: dict, dropout: float = 0.0) -> GPTConfig:
    """Our GPTConfig from a Hugging Face GPT-2 ``config.json`` dict (dropout defaults to 0 for fine-tuning)."""
    act = hf.get("activation_function", "gelu_new")
    if act not in _TANH_GELUS:
        warnings.warn(f"config.json: activation_function {act!r}; this GPT uses GELU's tanh form (gelu_new)")
    n_embd = int(hf.get("n_embd", hf.get("hidden_size", 768)))
    n_inner = hf.get("n_inner")
    return GPTConfig(vocab_size=int(hf.get("vocab_size", 50257)),
                     context_length=int(hf.get("n_positions", hf.get("n_ctx", 1024))),
                     n_layer=int(hf.get("n_layer", 12)), n_head=int(hf.get("n_head", 12)), n_embd=n_embd,
                     dropout=dropout, qkv_bias=True, bias=True,
                     tie_weights=bool(hf.get("tie_word_embeddings", True)),
                     norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
                     ffn_hidden=None if n_inner in (None, 4 * n_embd) else int(n_inner))


def hf_config_from_gpt(cfg: GPTConfig) -> dict[str, Any]:
    """The Hugging Face ``config.json`` dict (GPT2LMHeadModel) of one of our GPT-2-style configs."""
    _check_exportable(cfg)
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "vocab_size": cfg.vocab_size, "n_positions": cfg.context_length, "n_ctx": cfg.context_length,
            "n_embd": cfg.n_embd, "n_layer": cfg.n_layer, "n_head": cfg.n_head,
            "n_inner": None if cfg.ffn_hidden_size == 4 * cfg.n_embd else cfg.ffn_hidden_size,
            "activation_function": "gelu_new", "layer_norm_epsilon": cfg.norm_eps,
            "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout,
            "initializer_range": 0.02, "scale_attn_weights": True, "use_cache": True,
            "bos_token_id": 50256, "eos_token_id": 50256, "tie_word_embeddings": cfg.tie_weights,
            "torch_dtype": "float32"}


def _check_exportable(cfg: GPTConfig) -> None:
    bad = [f"{k}={getattr(cfg, k)!r} (GPT-2 needs {v!r})" for k, v in
           (("norm", "layernorm"), ("mlp", "gelu"), ("pos", "learned"))
           if getattr(cfg, k) != v]
    if cfg.n_kv_heads not in (None, cfg.n_head):
        bad.append(f"n_kv_heads={cfg.n_kv_heads} (GPT-2 has no grouped-query attention)")
    if bad:
        raise ValueError("export_gpt2: this model cannot be written in the GPT-2 layout: " + ", ".join(bad))


def _infer_config(tf: _TensorFile, where: Path, n_head: int | None) -> GPTConfig:
    for name in ("wte.weight", "wpe.weight"):
        if name not in tf.where:
            raise PretrainedFormatError(f"{where}: missing tensor {name!r} (is this a GPT-2 checkpoint?)")
    vocab, c = tf.shape("wte.weight")
    ctx = tf.shape("wpe.weight")[0]
    blocks = {int(m.group(1)) for n in tf.names() if (m := re.match(r"^h\.(\d+)\.", n))}
    if not blocks:
        raise PretrainedFormatError(f"{where}: no transformer blocks (tensors named h.N.*) found")
    if n_head is None:
        if c not in KNOWN_N_HEAD:
            raise PretrainedFormatError(
                f"{where}: no config.json, and n_embd={c} is not a released GPT-2 size "
                f"({', '.join(map(str, KNOWN_N_HEAD))}): put the config.json next to the weights or pass n_head=")
        n_head = KNOWN_N_HEAD[c]
    return GPTConfig(vocab_size=vocab, context_length=ctx, n_layer=max(blocks) + 1,
                     n_head=n_head, n_embd=c, dropout=0.0, qkv_bias=True, bias=True, tie_weights=True)


# ------------------------------------------------------------------------------------------------ load
def load_gpt2(path: str | os.PathLike, dtype=np.float32, device: str | None = None, n_head: int | None = None,
              dropout: float = 0.0) -> GPT:
    """A GPT holding the GPT-2 weights found at ``path`` (a folder, or a .safetensors file).

    The architecture comes from ``config.json`` next to the weights when present; otherwise n_layer, n_embd,
    vocab_size and context_length are read off the tensor shapes and n_head from ``n_head=`` or the released sizes
    (768 -> 12, 1024 -> 16, 1280 -> 20, 1600 -> 25). Every tensor's presence and shape is checked before any is
    read; a problem raises ``PretrainedFormatError`` naming the tensor and the file. ``dropout`` sets the
    model's dropout rate (GPT-2 was trained with 0.1; 0 is the usual choice for fine-tuning small data).
    """
    path = Path(path)
    files = _weight_files(path)
    folder = path if path.is_dir() else path.parent
    tf = _TensorFile(files)
    where = files[0] if len(files) == 1 else folder
    cfg_file = folder / "config.json"
    if cfg_file.is_file():
        try:
            hf = json.loads(cfg_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise PretrainedFormatError(f"{cfg_file}: not valid JSON: {e}") from None
        if n_head is not None:
            hf["n_head"] = n_head
        cfg = gpt2_config_from_hf(hf, dropout)
    else:
        cfg = _infer_config(tf, where, n_head).replace(dropout=dropout)

    plan = _plan(tf, cfg, where)                       # (hf name, our name, transpose), all checked
    model = GPT(cfg, seed=None, dtype=dtype, init=False)
    params = dict(model.named_parameters())
    targets = {hf: (ours, transpose) for hf, ours, transpose in plan}
    for hf_name, a in tf.read_many(list(targets)):
        ours, transpose = targets[hf_name]
        params[ours].data[...] = (a.T if transpose else a).astype(params[ours].dtype, copy=False)
    if device is not None:
        model.to(device)
    return model


def _plan(tf: _TensorFile, cfg: GPTConfig, where: Path) -> list[tuple[str, str, bool]]:
    """Which HF tensor fills which parameter; raises naming the first missing or mis-shaped tensor."""
    model_shapes = _our_shapes(cfg)
    plan = [(hf, ours, False) for hf, ours in _TOP.items()]
    for i in range(cfg.n_layer):
        plan += [(f"h.{i}.{hf}", f"blocks.{i}.{ours}", t) for hf, (ours, t) in HF_TO_OURS.items()]
    if not cfg.tie_weights:
        plan.append(("lm_head.weight", "lm_head.weight", False))
    problems = []
    for hf, ours, transpose in plan:
        want = model_shapes[ours][::-1] if transpose else model_shapes[ours]
        stored = ("transformer." if tf.prefixed and hf != "lm_head.weight" else "") + hf
        if hf not in tf.where:
            problems.append(f"missing tensor {stored!r} (for {ours}, expected shape {want}) in {where}")
        elif tuple(tf.shape(hf)) != tuple(want):
            problems.append(f"tensor {stored!r} in {tf.file(hf)} has shape {tf.shape(hf)}, expected {want} "
                            f"(for {ours} of a {cfg.n_layer}-layer, n_embd={cfg.n_embd}, vocab={cfg.vocab_size} "
                            "model; does config.json match the weights?)")
    known = {hf for hf, _, _ in plan} | {"lm_head.weight"}
    extra = [n for n in tf.names() if n not in known and not _SKIP.match(n)]
    if extra:
        problems.append(f"unexpected tensors in {where} (not GPT-2's): {', '.join(sorted(extra)[:8])}"
                        + (" ..." if len(extra) > 8 else ""))
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise PretrainedFormatError(f"load_gpt2: {problems[0]}{more}")
    return plan


def _our_shapes(cfg: GPTConfig) -> dict[str, tuple]:
    c, f = cfg.n_embd, cfg.ffn_hidden_size
    s = {"tok_emb.weight": (cfg.vocab_size, c), "pos_emb.weight": (cfg.context_length, c),
         "final_norm.weight": (c,), "final_norm.bias": (c,), "lm_head.weight": (cfg.vocab_size, c)}
    block = {"norm1.weight": (c,), "norm1.bias": (c,), "attn.qkv.weight": (3 * c, c), "attn.qkv.bias": (3 * c,),
             "attn.proj.weight": (c, c), "attn.proj.bias": (c,), "norm2.weight": (c,), "norm2.bias": (c,),
             "ffn.fc.weight": (f, c), "ffn.fc.bias": (f,), "ffn.proj.weight": (c, f), "ffn.proj.bias": (c,)}
    for i in range(cfg.n_layer):
        s.update({f"blocks.{i}.{k}": v for k, v in block.items()})
    return s


# ------------------------------------------------------------------------------------------------ export
def export_gpt2(model: GPT, path: str | os.PathLike, tokenizer=None, dtype=np.float32) -> Path:
    """Write ``model`` as a Hugging Face GPT-2 folder: ``model.safetensors`` (HF names without prefix, Conv1D
    (in, out) weights, no ``lm_head.weight`` when tied, metadata format "pt"; a model built without biases gets
    zero biases, which computes the same) and ``config.json``; with a
    ``BPETokenizer``, also ``vocab.json`` + ``merges.txt``. Returns the folder. Merge LoRA weights first
    (``merge_lora``). Reloads with ``load_gpt2`` and with ``transformers.GPT2LMHeadModel.from_pretrained``."""
    from safetensors.numpy import save_file
    from autograd import backend

    cfg = model.config
    hf_cfg = hf_config_from_gpt(cfg)
    ours = {k: backend.to_numpy(v) for k, v in model.state_dict().items()}
    missing = {k for k in set(_our_shapes(cfg)) - set(ours) if not k.endswith(".bias")} \
        - ({"lm_head.weight"} if cfg.tie_weights else set())
    if missing:  # e.g. a model with LoRA layers still in place
        raise ValueError(f"export_gpt2: the model lacks {sorted(missing)[:4]}; call merge_lora(model) first?")
    out: dict[str, np.ndarray] = {}
    shapes = _our_shapes(cfg)

    def get(name):  # a model without biases (bias/qkv_bias False) is GPT-2 with zero biases
        return ours[name] if name in ours else np.zeros(shapes[name], dtype=dtype)

    for hf, name in _TOP.items():
        out[hf] = get(name)
    for i in range(cfg.n_layer):
        for hf, (name, transpose) in HF_TO_OURS.items():
            a = get(f"blocks.{i}.{name}")
            out[f"h.{i}.{hf}"] = a.T if transpose else a
    if not cfg.tie_weights:
        out["lm_head.weight"] = ours["lm_head.weight"]
    out = {k: np.ascontiguousarray(v, dtype=dtype) for k, v in out.items()}
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    hf_cfg["torch_dtype"] = np.dtype(dtype).name
    save_file(out, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(hf_cfg, indent=2) + "\n", encoding="utf-8")
    if tokenizer is not None and hasattr(tokenizer, "to_gpt2_files"):
        tokenizer.to_gpt2_files(folder / "vocab.json", folder / "merges.txt")
    return folder


# ------------------------------------------------------------------------------------------------ tokenizer
def load_gpt2_tokenizer(path: str | os.PathLike, required: bool = True):
    """GPT-2's BPE tokenizer from a folder holding ``vocab.json`` + ``merges.txt`` (Hugging Face names) or
    ``encoder.json`` + ``vocab.bpe`` (OpenAI's names; the same content). None when absent and not ``required``."""
    from ..tokenizer import BPETokenizer
    folder = Path(path)
    folder = folder if folder.is_dir() else folder.parent
    for enc, bpe in (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")):
        if (folder / enc).is_file() and (folder / bpe).is_file():
            return BPETokenizer.from_gpt2_files(folder / enc, folder / bpe)
    if required:
        raise FileNotFoundError(f"no GPT-2 tokenizer files in {str(folder)!r}: expected vocab.json + merges.txt "
                                "(Hugging Face) or encoder.json + vocab.bpe (OpenAI)")
    return None
