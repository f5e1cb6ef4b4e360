"""The optimizer step with every decision on the device, for CUDA graphs: unscale + overflow check, global-norm
clipping, AdamW with the learning rate and step count read from device memory, and the GradScaler's scale update.

    ds = DeviceAdamW(groups, max_norm=1.0, scaler=GradScaler() or None)   # groups: [(params, m, v, hyper)]
    ds.scale32                       # (1,) float32 device loss scale: multiply the loss by it before backward
    ds.step(grads)                   # 3 + 2 * groups launches, no host sync; skipped on the device on inf/NaN
    ds.set_lr([lr_group0, ...])      # before each step (a small host-to-device copy, outside any graph)

Arithmetic (the same values as the eager trainer: GradScaler.unscale_and_check, clip_grad_norm, AdamW.step):
    sumsq = sum over all gradients of g^2 (float64)       -- non-finite iff some gradient is inf/NaN
    inv = 1 / scale;  norm = sqrt(sumsq * inv^2);  found_inf = !isfinite(sumsq)
    clip: coef = max_norm / (norm + 1e-6), applied when < 1
    per element (float32): g' = (g * inv) [* coef];  then PyTorch's AdamW with t = step + 1, lr from the device
    on found_inf: no update, step unchanged, scale *= backoff; else after growth_interval clean steps scale *= growth
The gradient pointers are known only once backward has run, so ``step`` takes them then and the pointer tables are
written by ``upload_pointers()`` (inside a graph capture: after it, before the first replay).

``state`` (float64 device array) fields are named by the ``S_*`` indices; ``read_state()`` copies them to the host.
"""
from __future__ import annotations

import numpy as np

from ._common import PRELUDE, ctypes_of, require_cupy

__all__ = ["DeviceAdamW", "S_STEP", "S_SCALE", "S_CLEAN", "S_SKIPPED", "S_FOUND_INF", "S_NORM"]

CHUNK = 16384
THREADS = 512
S_STEP, S_SCALE, S_CLEAN, S_SKIPPED, S_FOUND_INF, S_NORM, S_SUMSQ, S_INV, S_COEF, S_CLIP = range(10)
_NSTATE = 16

# One AdamW element (PyTorch's AdamW), shared with the eager multi-tensor kernel (adamw.py): the formula in one place.
ADAMW_ELEMENT = r"""
template <typename P, typename A>
__device__ __forceinline__ A adamw_element(P* p, P* m, P* v, i64 i, A gv, A decay, A b1, A b2, A c1, A c2,
                                           A eps, A step_size, A inv_sqrt_bc2) {
    A pv = ld(p, i) * decay;
    const A mv = b1 * ld(m, i) + c1 * gv;
    const A vv = b2 * ld(v, i) + c2 * gv * gv;
    pv -= step_size * mv / (sqrt(vv) * inv_sqrt_bc2 + eps);
    st(p, i, pv); st(m, i, mv); st(v, i, vv);
    return pv;
}

// One block's chunk of one tensor of a multi-tensor launch. Table (int64, 7 rows of nt): param, grad, m, v
// pointers, sizes, then the parameter's float16 and bfloat16 shadows (0: none; set for float32 parameters only,
// so the stored value is the float32 result rounded once, as astype rounds it). The gradient is multiplied by
// inv, then by coef when clip (the graphed step's unscale and clip; the eager kernel passes 1 and false: exact),
// before the update.
template <typename P, typename G, typename A>
__device__ __forceinline__ void adamw_block(const i64* __restrict__ ptrs, const int* __restrict__ blk_tensor,
                                            const i64* __restrict__ blk_start, int nt, int chunk, double lr,
                                            double b1, double b2, double eps, double wd, double step_size,
                                            double inv_sqrt_bc2, A inv, bool clip, A coef) {
    const int t = blk_tensor[blockIdx.x];
    const i64 start = blk_start[blockIdx.x];
    P* p = reinterpret_cast<P*>(ptrs[t]);
    const G* g = reinterpret_cast<const G*>(ptrs[nt + t]);
    P* m = reinterpret_cast<P*>(ptrs[2 * nt + t]);
    P* v = reinterpret_cast<P*>(ptrs[3 * nt + t]);
    const i64 n = ptrs[4 * nt + t];
    half_t* s16 = reinterpret_cast<half_t*>(ptrs[5 * nt + t]);
    bf16_t* sbf = reinterpret_cast<bf16_t*>(ptrs[6 * nt + t]);
    const i64 end = start + chunk < n ? start + chunk : n;
    const A decay = (A)1 - (A)(lr * wd), c1 = (A)1 - (A)b1, c2 = (A)1 - (A)b2;
    const A b1_ = (A)b1, b2_ = (A)b2, eps_ = (A)eps, ss = (A)step_size, ib = (A)inv_sqrt_bc2;
    for (i64 i = start + threadIdx.x; i < end; i += blockDim.x) {
        A gv = ld(g, i) * inv;
        if (clip) gv = gv * coef;
        const A pv = adamw_element(p, m, v, i, gv, decay, b1_, b2_, c1, c2, eps_, ss, ib);
        if (s16) st(s16, i, (float)pv);
        if (sbf) st(sbf, i, (float)pv);
    }
}
"""

_SRC = ADAMW_ELEMENT + r"""
// table layout (int64, 7 rows of nt): param, grad, m, v pointers, sizes, float16 and bfloat16 shadows
template <typename G>
__global__ void sumsq_multi(const i64* __restrict__ ptrs, const int* __restrict__ blk_tensor,
                            const i64* __restrict__ blk_start, int nt, int chunk, double* __restrict__ state) {
    __shared__ double red[32];
    const int t = blk_tensor[blockIdx.x];
    const i64 start = blk_start[blockIdx.x];
    const G* g = reinterpret_cast<const G*>(ptrs[nt + t]);
    const i64 n = ptrs[4 * nt + t];
    const i64 end = start + chunk < n ? start + chunk : n;
    double s = 0.0;
    for (i64 i = start + threadIdx.x; i < end; i += blockDim.x) { const double v = (double)ld(g, i); s += v * v; }
    s = block_sum(s, red);
    if (threadIdx.x == 0) atomicAdd(state + 6, s);
}

template <int UNUSED>
__global__ void step_control(double* state, float* scale32, double max_norm, int use_scaler,
                                        double growth, double backoff, double interval) {
    const double sumsq = state[6], scale = state[1], inv = 1.0 / scale;
    const bool finite = isfinite(sumsq);
    const double norm = sqrt(sumsq * inv * inv);
    state[5] = finite ? norm : __longlong_as_double(0x7ff0000000000000LL);
    state[4] = finite ? 0.0 : 1.0;
    double coef = 1.0; int clip = 0;
    if (finite && max_norm > 0.0) { const double c = max_norm / (norm + 1e-6); if (c < 1.0) { coef = c; clip = 1; } }
    state[7] = inv; state[8] = coef; state[9] = clip;
    if (finite) state[0] += 1.0;
    if (use_scaler) {
        double sc = scale;
        if (!finite) { sc *= backoff; state[2] = 0.0; state[3] += 1.0; }
        else { state[2] += 1.0; if (state[2] >= interval) { sc *= growth; state[2] = 0.0; } }
        state[1] = sc;
        scale32[0] = (float)sc;
    }
    state[6] = 0.0;
}

template <typename P, typename G, typename A>
__global__ void adamw_device(const i64* __restrict__ ptrs, const int* __restrict__ blk_tensor,
                             const i64* __restrict__ blk_start, int nt, int chunk, const double* __restrict__ state,
                             const double* __restrict__ lr_p, double b1, double b2, double eps, double wd) {
    if (state[4] != 0.0) return;                       // overflow: the step is skipped
    const double lr = lr_p[0], step = state[0];
    const double step_size = lr / (1.0 - pow(b1, step)), inv_sqrt_bc2 = 1.0 / sqrt(1.0 - pow(b2, step));
    adamw_block<P, G, A>(ptrs, blk_tensor, blk_start, nt, chunk, lr, b1, b2, eps, wd, step_size, inv_sqrt_bc2,
                         (A)state[7], state[9] != 0.0, (A)state[8]);
}
"""
_PAIRS = [("float", "float", "float"), ("float", "half_t", "float"), ("float", "bf16_t", "float"),
          ("double", "double", "double"), ("double", "float", "double")]
_GT = ["float", "half_t", "bf16_t", "double"]
_modules: dict = {}


def _kernel(name: str, targs: str | None = None):
    cp = require_cupy()
    dev = cp.cuda.runtime.getDevice()
    mod = _modules.get(dev)
    if mod is None:
        names = ([f"sumsq_multi<{g}>" for g in _GT] + [f"adamw_device<{','.join(t)}>" for t in _PAIRS]
                 + ["step_control<0>"])
        mod = _modules[dev] = cp.RawModule(code=PRELUDE + _SRC, options=("--std=c++17",), name_expressions=names)
    return mod.get_function(f"{name}<{targs}>" if targs else name)


def shadow_pointers(params, shadows, who: str) -> np.ndarray:
    """Rows 5 and 6 of a pointer table: each parameter's float16 and bfloat16 shadow (0: none); ``shadows``: per
    parameter a list of arrays (or None), or None. Shadows of a parameter that is not float32, or of another dtype,
    cannot be written by the kernel: a GraphCaptureError naming them (under capture the step then runs eagerly)."""
    from ..dtypes import bfloat16
    rows = np.zeros((2, len(params)), np.int64)
    if shadows is None:
        return rows
    for j, (p, ss) in enumerate(zip(params, shadows)):
        for s in ss or ():
            row = 0 if s.dtype == np.float16 else 1 if bfloat16 is not None and s.dtype == bfloat16 else -1
            if (row < 0 or p.dtype != np.float32 or s.shape != p.shape or not s.flags.c_contiguous
                    or s.device.id != p.device.id):
                from .graph import GraphCaptureError
                raise GraphCaptureError(f"{who}: the kernel writes contiguous float16/bfloat16 shadows of float32 "
                                        f"parameters, got a {s.dtype} shadow {s.shape} of a {p.dtype} parameter "
                                        f"{p.shape}")
            rows[row, j] = s.data.ptr
    return rows


class _Group:
    """One launch's tensors: same optimizer group, parameter dtype and (once known) gradient dtype."""

    def __init__(self, cp, params, ms, vs, hyper: dict, lr_slot):
        self.params, self.ms, self.vs, self.hyper, self.lr = params, ms, vs, hyper, lr_slot
        nt = len(params)
        sizes = [int(p.size) for p in params]
        tens, starts = [], []
        for t, n in enumerate(sizes):
            k = (n + CHUNK - 1) // CHUNK
            tens.extend([t] * k)
            starts.extend(range(0, k * CHUNK, CHUNK))
        self.nblocks = len(tens)
        self.blk_t = cp.asarray(np.asarray(tens, np.int32))
        self.blk_s = cp.asarray(np.asarray(starts, np.int64))
        self.meta = np.zeros((7, nt), np.int64)
        self.meta[0] = [p.data.ptr for p in params]
        self.meta[2] = [m.data.ptr for m in ms]
        self.meta[3] = [v.data.ptr for v in vs]
        self.meta[4] = sizes
        self.table = cp.asarray(self.meta)
        self.gdtype = None


class DeviceAdamW:
    """AdamW over CuPy parameters with clipping and loss-scale control on the device (see the module doc).

    groups: a list of ``(params, exp_avgs, exp_avg_sqs, {"betas": (b1, b2), "eps": .., "weight_decay": ..})`` with
    contiguous CuPy arrays of one GPU; parameters float32 or float64, moments in the parameter's dtype.
    scaler: an ``autograd.amp.GradScaler`` whose scale, counters and factors are taken over (None: no scaling).
    Hyperparameters other than the learning rate are fixed at construction."""

    def __init__(self, groups, max_norm: float | None = None, scaler=None, step: int = 0):
        cp = require_cupy()
        self.max_norm = float(max_norm) if max_norm else 0.0
        self.scaler = scaler if scaler is not None and scaler.enabled else None
        self.lr = cp.zeros((max(len(groups), 1),), np.float64)
        self.state = cp.zeros((_NSTATE,), np.float64)
        self.scale32 = cp.ones((1,), np.float32)
        self.groups: list[_Group] = []
        for gi, (params, ms, vs, hyper) in enumerate(groups):
            by_dtype: dict = {}
            for p, m, v in zip(params, ms, vs):
                if not (p.flags.c_contiguous and m.flags.c_contiguous and v.flags.c_contiguous):
                    raise ValueError("DeviceAdamW: parameters and moments must be C-contiguous")
                if m.dtype != p.dtype or v.dtype != p.dtype or p.dtype not in (np.float32, np.float64):
                    raise TypeError(f"DeviceAdamW: parameters float32/float64 with moments of the same dtype, got "
                                    f"{p.dtype} / {m.dtype} / {v.dtype}")
                if p.size:
                    by_dtype.setdefault(p.dtype, []).append((p, m, v))
            for _, items in by_dtype.items():
                ps, mm, vv = zip(*items)
                self.groups.append(_Group(cp, list(ps), list(mm), list(vv), dict(hyper), self.lr[gi:gi + 1]))
        self.load(step, scaler)
        for g in _GT:
            _kernel("sumsq_multi", g)      # compile and load before any capture
        _kernel("step_control", "0")

    # ---------------------------------------------------------------------------------------------- state
    def load(self, step: int, scaler=None) -> None:
        """Write the step count and (when scaling) the scaler's scale and counters into the device state."""
        s = np.zeros((_NSTATE,), np.float64)
        s[S_STEP] = step
        s[S_SCALE] = self.scaler.scale_value if self.scaler is not None else 1.0
        if self.scaler is not None:
            s[S_CLEAN] = self.scaler._clean_steps
            s[S_SKIPPED] = self.scaler.skipped_steps
        self.state.set(s)
        self.scale32.set(np.array([s[S_SCALE]], np.float32))

    def read_state(self) -> dict:
        """The device state on the host (one sync): step, scale, clean_steps, skipped_steps, found_inf, grad_norm."""
        s = self.state.get()
        return {"step": int(s[S_STEP]), "scale": float(s[S_SCALE]), "clean_steps": int(s[S_CLEAN]),
                "skipped_steps": int(s[S_SKIPPED]), "found_inf": bool(s[S_FOUND_INF]), "grad_norm": float(s[S_NORM])}

    def sync_scaler(self) -> dict:
        """Copy the device scale and counters back into the GradScaler (for checkpoints and logs); returns the state."""
        st = self.read_state()
        if self.scaler is not None:
            self.scaler.scale_value = st["scale"]
            self.scaler._clean_steps = st["clean_steps"]
            self.scaler.skipped_steps = st["skipped_steps"]
            self.scaler._found_inf = st["found_inf"]
        return st

    def set_lr(self, lrs) -> None:
        """Learning rate of each optimizer group (host-to-device copy on the current stream, before the step)."""
        self.lr.set(np.asarray(lrs, np.float64).reshape(self.lr.shape))

    # ---------------------------------------------------------------------------------------------- the step
    def step(self, grads_of, shadows_of=None) -> None:
        """One step. ``grads_of(param) -> gradient array`` (same shape and GPU, contiguous, float16/bfloat16/32/64);
        ``shadows_of(param) -> [arrays]``: the parameter's low-precision shadows (``amp.shadows_for_update``), which
        the update writes as cast(new value) in the same pass (float16/bfloat16 ones of float32 parameters).

        Outside a graph capture the gradient pointers are uploaded first; inside one the caller runs
        ``upload_pointers()`` after the capture (a host-to-device copy cannot be recorded)."""
        from .graph import is_capturing
        for g in self.groups:
            grads = [grads_of(p) for p in g.params]
            for p, gr in zip(g.params, grads):
                if gr is None or gr.shape != p.shape or not gr.flags.c_contiguous:
                    raise ValueError(f"DeviceAdamW: every parameter needs a contiguous gradient of its shape "
                                     f"{p.shape}, got {None if gr is None else gr.shape}")
            gdt = {gr.dtype for gr in grads}
            if len(gdt) != 1:
                raise TypeError(f"DeviceAdamW: gradients of one group must share a dtype, got {sorted(map(str, gdt))}")
            g.gdtype = gdt.pop()
            g.meta[1] = [gr.data.ptr for gr in grads]
            g.meta[5:7] = shadow_pointers(g.params, None if shadows_of is None else [shadows_of(p) for p in g.params],
                                          "DeviceAdamW")
            if not is_capturing():
                g.table.set(g.meta)
            _kernel("sumsq_multi", ctypes_of(g.gdtype)[0])(
                (g.nblocks,), (THREADS,), (g.table, g.blk_t, g.blk_s, np.int32(len(g.params)), np.int32(CHUNK),
                                           self.state))
        sc = self.scaler
        _kernel("step_control", "0")((1,), (1,), (
            self.state, self.scale32, np.float64(self.max_norm), np.int32(sc is not None),
            np.float64(sc.growth_factor if sc else 1.0), np.float64(sc.backoff_factor if sc else 1.0),
            np.float64(sc.growth_interval if sc else 1.0)))
        for g in self.groups:
            pt, acc = ctypes_of(g.params[0].dtype)
            targs = f"{pt},{ctypes_of(g.gdtype)[0]},{acc}"
            if tuple(targs.split(",")) not in _PAIRS:
                raise TypeError(f"DeviceAdamW: no kernel for parameters {g.params[0].dtype} with gradients {g.gdtype}")
            b1, b2 = g.hyper["betas"]
            _kernel("adamw_device", targs)(
                (g.nblocks,), (THREADS,),
                (g.table, g.blk_t, g.blk_s, np.int32(len(g.params)), np.int32(CHUNK), self.state, g.lr,
                 np.float64(b1), np.float64(b2), np.float64(g.hyper["eps"]), np.float64(g.hyper["weight_decay"])))

    def upload_pointers(self) -> None:
        """Write the gradient pointers seen by the last ``step`` into the device tables (outside a capture)."""
        for g in self.groups:
            g.table.set(g.meta)
