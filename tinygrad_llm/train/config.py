"""TrainConfig: every knob of a training run, as a dataclass that reads from JSON/TOML files and CLI flags.

    cfg = TrainConfig(max_steps=200, batch_size=8)
    cfg = TrainConfig.from_dict({"preset": "gpt-mini", "model": {"n_layer": 2}})   # unknown keys -> ValueError
    cfg = load_config_file("run.toml")                                                # .json or .toml
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["TrainConfig", "load_config_file", "ConfigError"]


class ConfigError(ValueError):
    """A configuration file or value is invalid (the message names the key or file)."""


@dataclass
class TrainConfig:
    """A training run. The defaults are ``tinygrad-llm train``'s: the "tiny" GPT (4 layers, 4 heads, 128 wide,
    0.94M parameters) on the embedded corpus with a 1024-token BPE, 600 steps of 16 x 128 tokens: about 3 minutes
    on two CPU cores, val loss 3.99 nats (the val split's unigram entropy is 5.71 nats).

    Model size comes from ``preset`` (a ``GPTConfig`` preset name) plus ``model`` overrides
    (any GPTConfig field: n_layer, n_head, n_embd, dropout, ...); ``vocab_size`` and ``context_length`` are set
    from the tokenizer and ``block_size``.

    Steps are optimizer steps; each consumes ``batch_size * grad_accum`` sequences of ``block_size`` tokens per rank.
    """
    # model
    preset: str | None = "tiny"         # GPTConfig preset (tiny, small, gpt2-124m, ...); None = GPTConfig defaults
    model: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None        # pretrained weights folder (fine-tuning; see tinygrad_llm.finetune)
    # tokenizer and data
    tokenizer: str = "bpe"              # "char", "bpe" (trained on the training text), or a tokenizer JSON file
    vocab_size: int = 1024              # for tokenizer="bpe"
    data: str | None = None             # a .txt file or folder of .txt files; None = the embedded default corpus
    val_fraction: float = 0.1
    block_size: int = 128               # context length of the training windows
    stride: int | None = None           # training window stride (None = block_size // 4: overlapping windows)
    # optimisation
    batch_size: int = 16
    grad_accum: int = 1
    max_steps: int = 600
    epochs: int | None = None           # when set, max_steps = epochs * (train batches per epoch) // grad_accum
    lr: float = 2e-3
    min_lr: float | None = None         # None = lr / 10
    warmup: int = 50
    schedule: str = "cosine"            # "cosine" (warmup then cosine to min_lr) or "constant"
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float | None = 1.0       # global-norm clipping; None or 0 = off
    # evaluation, samples, checkpoints
    eval_every: int = 100               # 0 = only at the end
    eval_iters: int = 10
    sample_every: int = 0               # 0 = only at the end
    sample_tokens: int = 120
    sample_prompt: str = ""
    checkpoint_every: int = 500         # 0 = only at the end (and on Ctrl-C)
    keep_last: int = 3
    out_dir: str = "out"
    resume: str | None = None           # a checkpoint folder, an output folder (its 'latest'), or "auto" (out_dir)
    # runtime
    seed: int = 1337
    device: str = "cpu"                 # "cpu", "cuda", "cuda:N"
    dtype: str = "float32"              # parameter dtype
    precision: str = "tf32"             # GPU matrix products: "tf32" (float32 with TF32 tensor cores), "fp32",
    #                                     "mixed" (float16 compute, float32 master weights, loss scaling)
    progress: bool = True               # tqdm progress bar

    # -------------------------------------------------------------------------------------------- conversions
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, d: dict[str, Any], base: "TrainConfig | None" = None) -> "TrainConfig":
        """A config from ``d`` (keys are field names; ``-`` may stand for ``_``) over ``base`` (default: defaults).

        Raises ConfigError naming unknown keys or values of the wrong type.
        """
        if not isinstance(d, dict):
            raise ConfigError(f"a training config must be a mapping, got {type(d).__name__}")
        names = set(cls.field_names())
        clean = {str(k).replace("-", "_"): v for k, v in d.items()}
        unknown = sorted(set(clean) - names)
        if unknown:
            raise ConfigError(f"unknown training config key(s) {unknown}; known keys: {sorted(names)}")
        cfg = dataclasses.replace(base) if base is not None else cls()
        for k, v in clean.items():
            setattr(cfg, k, v)
        cfg.validate()
        return cfg

    def validate(self) -> "TrainConfig":
        """Coerce list betas to a tuple and check ranges; raises ConfigError naming the field."""
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(msg)
        ints = ("vocab_size", "block_size", "batch_size", "grad_accum", "max_steps", "warmup", "eval_every",
                "eval_iters", "sample_every", "sample_tokens", "checkpoint_every", "keep_last", "seed")
        for k in ints:
            v = getattr(self, k)
            need(isinstance(v, int) and not isinstance(v, bool), f"config {k} must be an integer, got {v!r}")
        for k in ("lr", "weight_decay", "val_fraction", "eps"):
            v = getattr(self, k)
            need(isinstance(v, (int, float)) and not isinstance(v, bool), f"config {k} must be a number, got {v!r}")
        need(isinstance(self.model, dict), f"config model must be a mapping of GPTConfig overrides, got {self.model!r}")
        try:
            b1, b2 = (float(b) for b in self.betas)
        except (TypeError, ValueError):
            raise ConfigError(f"config betas must be two numbers, got {self.betas!r}") from None
        self.betas = (b1, b2)
        need(self.block_size >= 1 and self.batch_size >= 1 and self.grad_accum >= 1,
             "config block_size, batch_size and grad_accum must be >= 1")
        need(self.max_steps >= 0, f"config max_steps must be >= 0, got {self.max_steps}")
        need(0 <= self.warmup, f"config warmup must be >= 0, got {self.warmup}")
        need(self.lr > 0, f"config lr must be > 0, got {self.lr}")
        need(0.0 < self.val_fraction < 1.0, f"config val_fraction must be in (0, 1), got {self.val_fraction}")
        need(self.schedule in ("cosine", "constant"), f"config schedule must be 'cosine' or 'constant', got "
                                                       f"{self.schedule!r}")
        need(self.eval_iters >= 1, "config eval_iters must be >= 1")
        need(self.keep_last >= 0, "config keep_last must be >= 0")
        need(self.precision in ("fp32", "tf32", "mixed", "fp16"),
             f"config precision must be fp32, tf32 or mixed, got {self.precision!r}")
        return self


def _read_toml(path: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise ConfigError(f"{path}: reading TOML on Python 3.10 needs 'pip install tomli' "
                              "(or use a .json config)") from None
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None


def load_config_file(path: str | os.PathLike, base: TrainConfig | None = None) -> TrainConfig:
    """A TrainConfig from a .json or .toml file (a top-level ``[train]`` table is also accepted in TOML)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        if p.suffix.lower() == ".toml":
            d = _read_toml(p)
        else:
            d = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{p}: not valid JSON: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text ({e})") from None
    if isinstance(d, dict) and set(d) == {"train"} and isinstance(d["train"], dict):
        d = d["train"]
    try:
        return TrainConfig.from_dict(d, base)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None
