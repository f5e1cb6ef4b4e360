"""Optimizers, learning-rate schedules and gradient clipping, on NumPy or CuPy parameters.

    from tinygrad_llm import optim
    opt = optim.AdamW(model, lr=4e-4, weight_decay=0.1)      # module or (name, param) pairs: biases/norms not decayed
    sched = optim.LRScheduler(opt, optim.make_schedule("cosine", 6e-4, warmup_steps=100, max_steps=5000))
    sched.apply(step); loss.backward(); optim.clip_grad_norm(opt.params, 1.0); opt.step(); opt.zero_grad()
"""
from .adam import Adam, AdamW, param_groups_for_weight_decay
from .clip import clip_grad_norm, grad_norm
from .optimizer import Optimizer, grad_array, merge_state_dict, split_state_dict
from .schedule import LRScheduler, constant_lr, make_schedule, warmup_cosine
from .sgd import SGD

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "param_groups_for_weight_decay", "clip_grad_norm", "grad_norm",
           "constant_lr", "warmup_cosine", "make_schedule", "LRScheduler", "grad_array", "split_state_dict",
           "merge_state_dict"]
