"""Training-speed measurement: ``tinygrad-llm bench`` (and the "ours" column of benchmarks/train_speed.py).

    tinygrad-llm bench                                         # the small CPU configuration
    tinygrad-llm bench --preset gpt2-124m --device cuda --precision mixed --batch 8

One step = forward, backward and an AdamW update on random tokens. Reported: tokens/s and ms/step (median of the
timed steps), MFU (6N + 12·L·C·T FLOPs per token against ``--peak-tflops``) and peak memory (CuPy's pool on a
GPU, measured in two extra steps after the timed ones because the tracking hook costs host time; the process's
max RSS on the CPU).
"""
from __future__ import annotations

import statistics
import time

import numpy as np

__all__ = ["flops_per_token", "measure_training_speed", "PeakMemory"]


def flops_per_token(cfg) -> float:
    """6N + 12·L·C·T: N the parameters without the position table (the tied head counted once)."""
    n = 12 * cfg.n_layer * cfg.n_embd ** 2 + cfg.vocab_size * cfg.n_embd
    return 6 * n + 12 * cfg.n_layer * cfg.n_embd * cfg.context_length


def measure_training_speed(cfg, batch: int, device: str = "cpu", precision: str = "tf32", steps: int = 10,
                           warmup: int = 3, seed: int = 0) -> dict:
    """Time training steps of ``GPT(cfg)``; returns {"step_s", "tokens_per_s", "peak_bytes", "losses"}.

    precision: "fp32" (no TF32), "tf32" (TF32 matrix products on GPUs that have them), "mixed" (float16 autocast
    with float32 master weights and a GradScaler), "bf16" (bfloat16 autocast, float32 master weights, no scaler).
    """
    import autograd as ag
    from autograd import backend

    from .model import GPT
    from .optim import AdamW

    on_gpu = backend.parse_device(device)[0] == "cuda"
    if on_gpu:
        from autograd import cuda as agcuda
        agcuda.set_tf32(precision != "fp32")
    model = GPT(cfg, seed=seed, device=device)
    opt = AdamW(model, lr=6e-4, weight_decay=0.1, betas=(0.9, 0.95))
    scaler = ag.amp.GradScaler() if precision == "mixed" else None
    amp_dtype = {"mixed": "float16", "bf16": "bfloat16"}.get(precision)
    params = model.parameters()
    rng = np.random.default_rng(seed)
    T, V = cfg.context_length, cfg.vocab_size
    batches = [(rng.integers(0, V, (batch, T)), rng.integers(0, V, (batch, T))) for _ in range(4)]
    times, losses, peak = [], [], None
    for i in range(warmup + steps + 2):
        if i == warmup + steps:
            peak = PeakMemory(on_gpu)
        x, y = batches[i % len(batches)]
        t0 = time.perf_counter()
        x, y = backend.to_device(x, device), backend.to_device(y, device)
        with ag.amp.autocast(amp_dtype):
            loss = model.loss(x, y)
        if scaler is not None:
            scaler.scale(loss).backward()
            if scaler.unscale_and_check(params):
                opt.step()
            scaler.update()
        else:
            loss.backward()
            opt.step()
        opt.zero_grad()
        losses.append(float(loss.item()))  # .item() synchronises the device
        if warmup <= i < warmup + steps:
            times.append(time.perf_counter() - t0)
    peak_bytes = peak.close()
    step_s = statistics.median(times)
    from .model.memory import measured_memory
    return dict(step_s=step_s, tokens_per_s=batch * T / step_s, peak_bytes=peak_bytes, losses=losses,
                memory=measured_memory(peak_bytes, model, opt))


class PeakMemory:
    """Peak bytes in use: CuPy's pool (through a memory hook) on a GPU, the process's max RSS on the CPU."""

    def __init__(self, on_gpu: bool):
        self.on_gpu = on_gpu
        if on_gpu:
            import cupy as cp
            from cupy.cuda import memory_hook

            pool = cp.get_default_memory_pool()
            outer = self

            class Hook(memory_hook.MemoryHook):
                name = "peak"

                def malloc_postprocess(self, **kw):
                    outer.max_used = max(outer.max_used, pool.used_bytes())

            self.max_used = pool.used_bytes()
            self.hook = Hook()
            self.hook.__enter__()

    def close(self) -> int:
        if self.on_gpu:
            self.hook.__exit__(None, None, None)
            return self.max_used
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _configure(parser) -> None:
    parser.add_argument("--preset", default="small", help="GPT preset (default small: the CPU benchmark configuration "
                                                          "with vocab 512, context 128, 4x4x256)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="tf32", choices=["fp32", "tf32", "mixed", "bf16"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's peak, for MFU")
    parser.add_argument("--checkpointing", type=int, default=0, metavar="K",
                        help="recompute every K-th block's activations in backward (0: off)")
    parser.add_argument("--memory", action="store_true",
                        help="print the memory estimate before the run and the measured peak split after it")


def _run(args) -> int:
    from .model import GPTConfig
    cfg = GPTConfig.preset(args.preset, dropout=0.0, activation_checkpointing=args.checkpointing)
    if args.memory:
        est = cfg.memory_estimate(args.batch, args.precision, checkpointing=args.checkpointing)
        print(f"estimate for batch {args.batch} x {cfg.context_length} ({args.precision}"
              f"{', checkpointing' if args.checkpointing else ''}):\n{est}")
    r = measure_training_speed(cfg, args.batch, args.device, args.precision, args.steps, args.warmup)
    mfu = ""
    if args.peak_tflops:
        mfu = f", MFU {100 * r['tokens_per_s'] * flops_per_token(cfg) / (args.peak_tflops * 1e12):.1f}%"
    print(f"{args.preset} on {args.device} ({args.precision}), batch {args.batch} x {cfg.context_length}: "
          f"{r['tokens_per_s']:,.0f} tokens/s, {1000 * r['step_s']:.1f} ms/step{mfu}, "
          f"peak {r['peak_bytes'] / 2**20:,.0f} MiB")
    if args.memory:
        what = "CuPy's pool" if args.device.startswith("cuda") else "the process's max RSS, interpreter included"
        print(f"measured ({what}):\n{r['memory']}")
    return 0


def _register() -> None:
    from .cli import register_command
    register_command("bench", "training-speed benchmark (tokens/s, ms/step, MFU, peak memory)", _configure, _run)


_register()
