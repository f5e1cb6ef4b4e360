"""TrainConfig: every knob of a training run, as a dataclass that reads from JSON/TOML files and CLI flags.

    cfg = TrainConfig(max_steps=200, batch_size=8)
    cfg = TrainConfig.from_dict({"preset": "micro", "model": {"n_layer": 2}})   # unknown keys -> ConfigError
    cfg = load_config_file("run.toml")                                            # .json or .toml

Every field is checked once, in ``validate()`` (``from_dict`` and the Trainer call it): a bad value is one
ConfigError naming the field. ``FIXED_ON_RESUME`` lists the fields a resumed run must keep (they define the
weights, the tokenizer or the data stream); every other field may change on resume (max_steps, epochs, the
learning-rate schedule, grad_clip, grad_accum, evaluation, samples, checkpoints, device, precision ...).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["TrainConfig", "load_config_file", "ConfigError", "FIXED_ON_RESUME"]

#: fields that cannot change when a run is resumed: the model, its tokenizer, the data and its order
FIXED_ON_RESUME = ("preset", "model", "init_from", "tokenizer", "vocab_size", "data", "val_fraction", "block_size",
                   "stride", "batch_size", "seed", "dtype")


class ConfigError(ValueError):
    """A configuration file or value is invalid (the message names the key or file)."""


@dataclass
class TrainConfig:
    """A training run. The defaults are ``tinygrad-llm train``'s: the "tiny" GPT (4 layers, 4 heads, 128 wide,
    0.94M parameters) on the embedded corpus with a 1024-token BPE, 600 steps of 16 x 128 tokens: about 3 minutes
    on two CPU cores, val loss 3.91 nats over the whole validation split (its unigram entropy is 5.71 nats).

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
    checkpoint_every: int = 500         # 0 = only at the end (and on Ctrl-C / SIGTERM / SIGHUP)
    keep_last: int = 3                  # checkpoints kept in out_dir (0 = all)
    out_dir: str = "out"                # the run folder: checkpoints, metrics.jsonl (one run per folder)
    resume: str | None = None           # a checkpoint folder, an output folder (its 'latest'), or "auto" (out_dir)
    overwrite: bool = False             # start afresh in an out_dir that holds another run, deleting that run
    # runtime
    seed: int = 1337
    device: str = "cpu"                 # "cpu", "cuda", "cuda:N"
    dtype: str = "float32"              # parameter dtype
    precision: str = "tf32"             # GPU matrix products: "tf32" (float32 with TF32 tensor cores), "fp32",
    #                                     "mixed" (float16 compute, float32 master weights, loss scaling),
    #                                     "bf16" (bfloat16 compute, float32 master weights, no loss scaling)
    progress: bool = True               # tqdm progress bar
    cuda_graphs: bool = True            # on a GPU, record the optimizer step once as a CUDA graph and replay it
    # memory
    activation_checkpointing: int = 0   # recompute every k-th block's activations in backward (0 = off, 1 = all)
    shard_optimizer: bool = False       # ZeRO-1: each data-parallel rank keeps 1/world_size of AdamW's state

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
        """Check every field (coercing list betas to a tuple); raises one ConfigError naming the field."""
        def need(ok: bool, field: str, rule: str) -> None:
            if not ok:
                raise ConfigError(f"config {field} {rule}, got {getattr(self, field)!r}")

        def is_int(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        for k in ("vocab_size", "block_size", "batch_size", "grad_accum", "eval_iters"):
            need(is_int(getattr(self, k)) and getattr(self, k) >= 1, k, "must be an integer >= 1")
        for k in ("max_steps", "warmup", "eval_every", "sample_every", "sample_tokens", "checkpoint_every",
                  "keep_last", "seed", "activation_checkpointing"):
            need(is_int(getattr(self, k)) and getattr(self, k) >= 0, k, "must be an integer >= 0 (0 = off)"
                 if k.endswith("_every") else "must be an integer >= 0")
        for k in ("stride", "epochs"):
            v = getattr(self, k)
            need(v is None or (is_int(v) and v >= 1), k, "must be an integer >= 1 (or unset)")
        need(is_num(self.lr) and self.lr > 0, "lr", "must be a number > 0")
        need(self.min_lr is None or (is_num(self.min_lr) and 0 <= self.min_lr <= self.lr), "min_lr",
             f"must be a number in [0, lr={self.lr}] (or unset: lr / 10)")
        need(is_num(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "must be a number >= 0")
        need(is_num(self.eps) and self.eps > 0, "eps", "must be a number > 0")
        need(self.grad_clip is None or (is_num(self.grad_clip) and self.grad_clip >= 0), "grad_clip",
             "must be a number > 0 (0 or unset: no clipping)")
        if self.grad_clip == 0:
            self.grad_clip = None
        need(is_num(self.val_fraction) and 0.0 < self.val_fraction < 1.0, "val_fraction", "must be in (0, 1)")
        try:
            b1, b2 = (float(b) for b in self.betas)
        except (TypeError, ValueError):
            raise ConfigError(f"config betas must be two numbers, got {self.betas!r}") from None
        need(0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0, "betas", "must be two numbers in [0, 1)")
        self.betas = (b1, b2)
        need(self.schedule in ("cosine", "constant"), "schedule", "must be 'cosine' or 'constant'")
        need(self.precision in ("fp32", "tf32", "mixed", "fp16", "bf16"), "precision",
             "must be fp32, tf32, mixed (or fp16) or bf16")
        need(self.dtype in ("float32", "float64"), "dtype", "must be 'float32' or 'float64' (parameter dtype)")
        need(isinstance(self.device, str) and _is_device(self.device), "device", "must be 'cpu', 'cuda' or 'cuda:N'")
        for k in ("tokenizer", "out_dir"):
            need(isinstance(getattr(self, k), str) and getattr(self, k).strip() != "", k, "must be a non-empty string")
        for k in ("data", "init_from", "resume"):
            v = getattr(self, k)
            need(v is None or (isinstance(v, str) and v.strip() != ""), k, "must be a path (a non-empty string)")
        need(isinstance(self.sample_prompt, str), "sample_prompt", "must be a string")
        for k in ("progress", "overwrite", "cuda_graphs", "shard_optimizer"):
            need(isinstance(getattr(self, k), bool), k, "must be true or false")
        if self.resume and self.overwrite:
            raise ConfigError("config resume and overwrite exclude each other: --resume continues the run in "
                              "out_dir, --overwrite deletes it")
        self._check_model()
        return self

    def _check_model(self) -> None:
        """``preset`` names a GPTConfig preset and ``model`` holds valid GPTConfig overrides."""
        from ..model.config import GPTConfig
        if not isinstance(self.model, dict):
            raise ConfigError(f"config model must be a mapping of GPTConfig overrides, got {self.model!r}")
        if self.preset is not None and self.preset not in GPTConfig.presets():
            raise ConfigError(f"config preset {self.preset!r} is not a GPT preset; available: "
                              f"{', '.join(GPTConfig.presets())}")
        names = {f.name for f in dataclasses.fields(GPTConfig)}
        unknown = sorted(set(self.model) - names)
        if unknown:
            raise ConfigError(f"config model has unknown GPTConfig field(s) {unknown}; known: {sorted(names)}")
        try:
            base = GPTConfig.preset(self.preset) if self.preset else GPTConfig()
            dataclasses.replace(base, **{**self.model, "vocab_size": max(self.vocab_size, 1),
                                         "context_length": self.model.get("context_length", self.block_size)})
        except (TypeError, ValueError) as e:
            raise ConfigError(f"config model {self.model!r}: {e}") from None


def _is_device(device: str) -> bool:
    from autograd import backend
    try:
        backend.parse_device(device)
    except ValueError:
        return False
    return True


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
