"""A trainer's state: what a checkpoint holds, restoring it, and what may change when a run is resumed.

``trainer_state(trainer)`` is the checkpoint tree (model tensors, model config, optimizer, step, tokens seen,
loader position, generator states, tokenizer, training config, last evaluation, loss scale). ``restore_state``
checks *everything* against the trainer before changing anything, so a mismatched checkpoint raises
CheckpointError and leaves the trainer as it was. ``resume_changes`` compares the resumed run's saved config with
the new one: a change to a field of ``FIXED_ON_RESUME`` is refused, the other changes are listed for the log.

Why resume is exact: everything random comes from state the checkpoint stores. The data order is a function of
(seed, epoch) plus the loader position, dropout masks come from the modules' generators (their states are saved),
samples use a generator seeded from (seed, step), and the learning rate is a function of the step. So on the CPU,
training 2N steps equals training N, saving and resuming for N more, bitwise.
"""
from __future__ import annotations

from typing import Any

from . import build
from .checkpoint import Checkpoint, CheckpointError, load_checkpoint
from .config import FIXED_ON_RESUME, ConfigError, TrainConfig

__all__ = ["trainer_state", "restore_state", "resume_changes", "SCHEDULE_FIELDS"]

#: the fields the learning rate of a step depends on
SCHEDULE_FIELDS = ("max_steps", "lr", "min_lr", "warmup", "schedule")


def trainer_state(tr) -> dict[str, Any]:
    """Everything a checkpoint holds (arrays as NumPy/CuPy; save_checkpoint copies them to the host)."""
    return {
        "model": dict(tr.model.state_dict()),
        "model_config": build.model_config_to_dict(tr.model_config) if tr.model_config is not None else None,
        "optimizer": tr.optimizer.state_dict(),
        "step": tr.step,
        "tokens_seen": tr.tokens_seen,
        "loader": tr.train_loader.state_dict(),
        "rng": build.rng_state(tr.model),
        "tokenizer": tr.tokenizer.to_dict(),
        "train_config": tr.config.to_dict(),
        "last_val": tr.last_val,
        "loss_scaler": tr.loss_scaler.state_dict() if tr.loss_scaler is not None else None,
    }


def restore_state(tr, ckpt: Checkpoint | str) -> None:
    """Restore model, optimizer, data position, generators and step of trainer ``tr`` from a checkpoint."""
    if not isinstance(ckpt, Checkpoint):
        ckpt = load_checkpoint(ckpt)
    st = ckpt.state
    try:
        have = {k: tuple(v.shape) for k, v in tr.model.state_dict().items()}
        got = {k: tuple(v.shape) for k, v in ckpt.model.items()}
        if have != got:
            diff = sorted(set(have) ^ set(got)) or [k for k in have if have[k] != got[k]]
            raise ValueError(f"model tensors do not match this model (first differences: {diff[:5]})")
        opt = st["optimizer"]
        if len(opt["groups"]) != len(tr.optimizer.param_groups):
            raise ValueError("optimizer parameter groups do not match")
        step = st["step"]
        if not isinstance(step, int) or isinstance(step, bool) or step != ckpt.step:
            raise ValueError(f"its state's step {step!r} is not the checkpoint's step {ckpt.step}")
        build.check_rng_state(tr.model, st["rng"])
        probe = tr.train_loader.shard(tr.rank, tr.world_size)
        loader_state = dict(st["loader"])
        if int(loader_state.get("world_size", 1)) != tr.world_size:
            # resuming with a different number of ranks: keep the global position (samples consumed)
            consumed = int(loader_state["index"]) * int(loader_state["batch_size"]) * int(loader_state["world_size"])
            g = tr.train_loader.batch_size * tr.world_size
            loader_state.update(world_size=tr.world_size, batch_size=tr.train_loader.batch_size, index=consumed // g)
        probe.load_state_dict(loader_state)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{ckpt.path}: cannot resume this run from it: {e}") from None
    # all checks passed: apply
    tr.model.load_state_dict(ckpt.model)
    tr.optimizer.load_state_dict(opt)
    tr.train_loader.load_state_dict(loader_state)
    build.set_rng_state(tr.model, st["rng"])
    tr.step = step
    tr.tokens_seen = int(st.get("tokens_seen", 0))
    tr.last_val = dict(st.get("last_val") or {})
    if tr.loss_scaler is not None and st.get("loss_scaler"):
        tr.loss_scaler.load_state_dict(st["loss_scaler"])


def resume_changes(saved: dict[str, Any] | None, cfg: TrainConfig, where: str) -> dict[str, tuple[Any, Any]]:
    """``{field: (saved value, new value)}`` for the fields that differ between a checkpoint's training config and
    ``cfg``; raises ConfigError when one of them is in ``FIXED_ON_RESUME``. Bookkeeping fields (resume,
    overwrite, out_dir, progress) are not compared."""
    if not isinstance(saved, dict):
        return {}
    try:
        old = TrainConfig.from_dict({k: v for k, v in saved.items() if k in TrainConfig.field_names()})
    except ConfigError as e:
        raise CheckpointError(f"{where}: its training config is not valid: {e}") from None
    old.resume, old.overwrite, old.out_dir, old.progress = cfg.resume, cfg.overwrite, cfg.out_dir, cfg.progress
    new = cfg.to_dict()
    changes = {k: (v, new[k]) for k, v in old.to_dict().items() if v != new[k]}
    if cfg.epochs is not None and old.epochs == cfg.epochs:
        changes.pop("max_steps", None)  # recomputed from epochs below, the same as before
    fixed = [k for k in changes if k in FIXED_ON_RESUME]
    if fixed:
        what = "; ".join(f"{k} {changes[k][0]!r} -> {changes[k][1]!r}" for k in fixed)
        raise ConfigError(f"{what}: {'this field' if len(fixed) == 1 else 'these fields'} cannot change on resume "
                          f"(they define the weights, the tokenizer or the data of {where}); fields that may "
                          f"change: max_steps, epochs, the lr schedule, eval, sample and checkpoint settings, "
                          f"device, precision. Start a new run with another --out-dir to change them")
    return changes
