"""The pieces a training run is built from: text, tokenizer, datasets and loaders, model config, RNG capture.

Kept apart from the loop (trainer.py) so the command line, the examples and the fine-tuning code can reuse them.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .config import TrainConfig

__all__ = ["load_corpus", "require_device", "build_tokenizer", "encode_corpus", "build_loaders", "build_model_config",
           "dropout_generators", "seed_generators", "rng_state", "set_rng_state", "unigram_entropy"]


# ------------------------------------------------------------------------------------------------ text
def load_corpus(data: str | os.PathLike | None, log: Callable[[str], None] | None = None) -> str:
    """The training text: a .txt file, every .txt file under a folder, or (None) the embedded default corpus.
    ``log`` is told which files a folder gave."""
    from ..data import default_corpus, load_text
    from ..data.corpus import text_files
    if data is None:
        return default_corpus()
    if log is not None and Path(data).is_dir():
        files = [str(f.relative_to(data)) for f in text_files(data)]
        shown = ", ".join(files[:20]) + (f", ... ({len(files) - 20} more)" if len(files) > 20 else "")
        log(f"corpus: {len(files)} .txt file(s) under {data}: {shown}")
    return load_text(data)


def require_device(device: str) -> None:
    """ValueError when ``device`` names a GPU this machine does not have (before anything is built on it)."""
    from autograd import backend
    if backend.parse_device(device)[0] == "cuda" and not backend.cuda_available():
        raise ValueError(f"device {device!r}: no usable GPU here (CuPy is not installed or sees no CUDA device); "
                         "use --device cpu, or install the 'gpu' extra on a machine with an NVIDIA GPU")


# ------------------------------------------------------------------------------------------------ tokenizer
def build_tokenizer(spec: str, text: str, vocab_size: int = 1024):
    """``"char"``: the characters of ``text``; ``"bpe"``: byte-level BPE trained on ``text`` to ``vocab_size``;
    a path: a tokenizer JSON file (ours or Hugging Face's tokenizer.json), or a Hugging Face model folder
    (tokenizer.json, or GPT-2's vocab.json + merges.txt / encoder.json + vocab.bpe)."""
    from ..tokenizer import BPETokenizer, CharTokenizer, from_pretrained
    if spec == "char":
        return CharTokenizer.train(text)
    if spec == "bpe":
        return BPETokenizer.train(text, vocab_size)
    if not Path(spec).exists():
        raise FileNotFoundError(f"tokenizer {spec!r}: expected 'char', 'bpe', a tokenizer JSON file or a folder "
                                "with tokenizer.json (or GPT-2's files)")
    return from_pretrained(spec)


def encode_corpus(tokenizer, text: str) -> np.ndarray:
    """All of ``text`` as an int64 id array (1-D); a corpus is trusted text, so "<|endoftext|>" separators in it
    become the special token."""
    return np.asarray(tokenizer.encode(text, allowed_special="all"), dtype=np.int64)


def unigram_entropy(ids: np.ndarray) -> float:
    """Entropy (nats) of the token unigram distribution of ``ids``: the loss of the best context-free predictor."""
    counts = np.bincount(np.asarray(ids, dtype=np.int64))
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


# ------------------------------------------------------------------------------------------------ data
def build_loaders(ids: np.ndarray, cfg: TrainConfig, rank: int = 0, world_size: int = 1):
    """(train_loader, val_loader, val_ids) over a contiguous train/val split of ``ids``.

    Train windows of ``block_size`` every ``stride`` (default block_size // 4) tokens, shuffled from ``seed``; val windows are
    non-overlapping, in order. The val batch is shrunk (never below 1) when the split holds too few windows.
    """
    from ..data import DataLoader, SlidingWindowDataset, train_val_split
    train_ids, val_ids = train_val_split(ids, cfg.val_fraction)
    T = cfg.block_size
    if len(train_ids) <= T:
        raise ValueError(f"corpus too short: the training split has {len(train_ids)} tokens, but one window of "
                         f"block_size={T} needs {T + 1}; use more text or a smaller --block-size")
    if len(val_ids) <= T:
        raise ValueError(f"corpus too short: the validation split ({cfg.val_fraction:.0%}) has {len(val_ids)} "
                         f"tokens, but one window of block_size={T} needs {T + 1}; use more text, a larger "
                         "val_fraction or a smaller --block-size")
    # overlapping windows: 4x as many distinct samples as non-overlapping ones (less over-fitting on small texts)
    train_ds = SlidingWindowDataset(train_ids, T, cfg.stride or max(1, T // 4))
    val_ds = SlidingWindowDataset(val_ids, T, T)
    if len(train_ds) < cfg.batch_size * world_size:
        raise ValueError(f"corpus too short: {len(train_ds)} training windows of {T} tokens, fewer than one batch "
                         f"of {cfg.batch_size}" + (f" x {world_size} ranks" if world_size > 1 else "")
                         + "; use more text or a smaller --batch-size / --block-size")
    train = DataLoader(train_ds, cfg.batch_size, shuffle=True, seed=cfg.seed, rank=rank, world_size=world_size)
    val_bs = max(1, min(cfg.batch_size, len(val_ds) // world_size))
    if len(val_ds) < world_size:
        raise ValueError(f"validation split too short: {len(val_ds)} windows for {world_size} ranks")
    # one process reads every val window (as `tinygrad-llm eval`); ranks need equal shards, so a last partial batch
    # is dropped there
    val = DataLoader(val_ds, val_bs, shuffle=False, drop_last=world_size > 1, rank=rank, world_size=world_size)
    return train, val, val_ids


# ------------------------------------------------------------------------------------------------ model config
def build_model_config(cfg: TrainConfig, vocab_size: int):
    """GPTConfig from ``preset`` + ``model`` overrides, with the tokenizer's vocab size and ``block_size``."""
    from ..model.config import GPTConfig
    base = GPTConfig.preset(cfg.preset) if cfg.preset else GPTConfig()
    names = {f.name for f in dataclasses.fields(base)}
    unknown = sorted(set(cfg.model) - names)
    if unknown:
        raise ValueError(f"unknown model setting(s) {unknown}; GPTConfig fields are {sorted(names)}")
    over = dict(cfg.model)
    over["vocab_size"] = int(vocab_size)
    over.setdefault("context_length", cfg.block_size)
    if over["context_length"] < cfg.block_size:
        raise ValueError(f"block_size {cfg.block_size} exceeds the model's context_length {over['context_length']}")
    return dataclasses.replace(base, **over)


def model_config_to_dict(mcfg) -> dict[str, Any]:
    return mcfg.to_dict() if hasattr(mcfg, "to_dict") else dataclasses.asdict(mcfg)


def model_config_from_dict(d: dict[str, Any]):
    from ..model.config import GPTConfig
    if hasattr(GPTConfig, "from_dict"):
        return GPTConfig.from_dict(d)
    names = {f.name for f in dataclasses.fields(GPTConfig)}
    return GPTConfig(**{k: v for k, v in d.items() if k in names})


# ------------------------------------------------------------------------------------------------ RNG capture
def dropout_generators(model) -> dict[str, np.random.Generator]:
    """Every ``numpy.random.Generator`` held as an attribute by a module of ``model`` (Dropout layers' ``rng``,
    attention dropout ...), keyed ``"<module path>.<attr>"``: the randomness of the forward pass."""
    found: dict[str, np.random.Generator] = {}
    mods = model.named_modules() if hasattr(model, "named_modules") else [("", model)]
    for mname, m in mods:
        for attr, v in vars(m).items():
            if isinstance(v, np.random.Generator):
                found[f"{mname}.{attr}" if mname else attr] = v
    return found


def seed_generators(model, seed: int) -> None:
    """Reseed every module generator from (seed, its position), so a run is reproducible from ``seed`` alone."""
    for i, (key, _) in enumerate(sorted(dropout_generators(model).items())):
        mname, _, attr = key.rpartition(".")
        mod = model.get_submodule(mname) if mname and hasattr(model, "get_submodule") else _find(model, mname)
        setattr(mod, attr, np.random.default_rng([seed, 7919, i]))


def _find(model, path: str):
    for name, m in model.named_modules():
        if name == path:
            return m
    raise KeyError(path)


def rng_state(model) -> dict[str, Any]:
    """JSON-able states of the module generators (and NumPy's legacy global generator, for third-party code)."""
    legacy = np.random.get_state()
    return {"modules": {k: g.bit_generator.state for k, g in dropout_generators(model).items()},
            "numpy_global": [legacy[0], legacy[1].tolist(), int(legacy[2]), int(legacy[3]), float(legacy[4])]}


def check_rng_state(model, state: dict[str, Any]) -> None:
    """Raise ValueError when ``state`` does not name exactly the model's generators (before anything is set)."""
    have, saved = set(dropout_generators(model)), set(state.get("modules", {}))
    if have != saved:
        raise ValueError(f"checkpoint RNG states are for generators {sorted(saved)}, the model has {sorted(have)}")


def set_rng_state(model, state: dict[str, Any]) -> None:
    check_rng_state(model, state)
    gens = dropout_generators(model)
    for k, s in state.get("modules", {}).items():
        gens[k].bit_generator.state = s
    g = state.get("numpy_global")
    if g:
        np.random.set_state((g[0], np.asarray(g[1], dtype=np.uint32), g[2], g[3], g[4]))
