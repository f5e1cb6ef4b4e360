"""Module: the base class of layers and models, with parameters registered by attribute.

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)                 # a child module, registered as "fc"
            self.scale = nn.Parameter(np.ones(2))     # a parameter, registered as "scale"
        def forward(self, x):
            return self.fc(x) * self.scale

    net = Net(); [n for n, _ in net.named_parameters()]   # ['scale', 'fc.weight', 'fc.bias']

Decisions worth knowing:
- **Shared parameters** (GPT's tied embedding / LM head) are listed once by ``parameters()``,
  ``named_parameters()``, ``num_parameters()`` and ``state_dict()``, under the first name met (attribute order);
  ``load_state_dict`` also accepts the other names (aliases) and copies them into the same array.
- **Buffers** (``register_buffer``) are non-trainable arrays (e.g. RoPE cos/sin tables). They never appear in
  ``parameters()``; they move with ``to()``; they appear in ``state_dict()`` only when registered with
  ``persistent=True``. The library's own buffers (RoPE tables) are non-persistent: they are recomputed from the
  config, so checkpoints hold parameters only.
- **to(device, dtype)** replaces each parameter's ``.data`` (and ``.grad``) by the moved/cast array while keeping
  the Parameter objects themselves: references held by an optimizer stay valid. An optimizer's own state arrays
  (Adam moments) are not moved, so move the model before building its optimizer (or move both).
- **state_dict()** returns the live arrays (no copy, like PyTorch): save them at once, or pass ``copy=True`` for a
  snapshot that later training steps will not change.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Iterator, NamedTuple

import numpy as np

from autograd import Tensor, amp, backend, dtypes

from .parameter import Parameter

__all__ = ["Module", "ModuleList", "Sequential", "StateDictError", "LoadResult"]


class StateDictError(RuntimeError):
    """load_state_dict found missing, unexpected or mis-shaped entries (all are listed in the message)."""


class LoadResult(NamedTuple):
    missing_keys: list
    unexpected_keys: list


class Module:
    """Base class: subclasses call ``super().__init__()`` first, assign parameters/modules, and define forward."""

    training: bool

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_non_persistent", set())
        object.__setattr__(self, "training", True)

    # ------------------------------------------------------------------ registration by attribute
    def __setattr__(self, name: str, value) -> None:
        d = self.__dict__
        params = d.get("_parameters")
        if params is None:
            raise AttributeError(f"{type(self).__name__}: call super().__init__() before assigning attributes")
        modules, buffers = d["_modules"], d["_buffers"]
        # replacing an entry of the same kind keeps its place (so a LoRA layer swapped in for a Linear keeps the
        # parameter order, and with it state_dict order); a different kind moves the name to its new registry
        if isinstance(value, Parameter):
            if name not in params:
                self._forget(name)
            params[name] = value
        elif isinstance(value, Module):
            if name not in modules:
                self._forget(name)
            modules[name] = value
        elif name in params:
            if value is not None:
                raise TypeError(f"{type(self).__name__}.{name} is a parameter: assign a Parameter (wrap a Tensor or "
                                f"array in nn.Parameter) or None, not {type(value).__name__}")
            params[name] = None
        elif name in modules:
            if value is not None:
                raise TypeError(f"{type(self).__name__}.{name} is a child module: assign a Module or None, "
                                f"not {type(value).__name__}")
            modules[name] = None
        elif name in buffers:
            buffers[name] = _buffer_array(value, name)
        else:
            object.__setattr__(self, name, value)

    def _forget(self, name: str) -> None:
        for store in (self._parameters, self._modules, self._buffers):
            store.pop(name, None)
        self._non_persistent.discard(name)
        self.__dict__.pop(name, None)

    def __getattr__(self, name: str):
        # only called when normal lookup fails: look in the registries
        d = self.__dict__
        for store in ("_parameters", "_buffers", "_modules"):
            reg = d.get(store)
            if reg is not None and name in reg:
                return reg[name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __delattr__(self, name: str) -> None:
        if name in self._parameters or name in self._modules or name in self._buffers:
            self._forget(name)
        else:
            object.__delattr__(self, name)

    def register_buffer(self, name: str, array, persistent: bool = True) -> None:
        """Register a non-trainable array (NumPy or CuPy) that moves with ``to()``; see the module docstring."""
        self._forget(name)
        self._buffers[name] = _buffer_array(array, name)
        if not persistent:
            self._non_persistent.add(name)

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"register_parameter({name!r}): expected a Parameter, got {type(param).__name__}")
        self._forget(name)
        self._parameters[name] = param

    # ------------------------------------------------------------------ walking the tree
    def children(self) -> Iterator["Module"]:
        for _, m in self.named_children():
            yield m

    def named_children(self) -> Iterator[tuple[str, "Module"]]:
        seen = set()
        for name, m in self._modules.items():
            if m is not None and id(m) not in seen:
                seen.add(id(m))
                yield name, m

    def named_modules(self, prefix: str = "", _memo: set | None = None) -> Iterator[tuple[str, "Module"]]:
        """(dotted name, module) for this module ('' for itself) and every descendant, each once."""
        memo = set() if _memo is None else _memo
        if id(self) in memo:
            return
        memo.add(id(self))
        yield prefix, self
        for name, m in self._modules.items():
            if m is not None:
                yield from m.named_modules(f"{prefix}.{name}" if prefix else name, memo)

    def modules(self) -> Iterator["Module"]:
        for _, m in self.named_modules():
            yield m

    def named_parameters(self, prefix: str = "", remove_duplicate: bool = True) -> Iterator[tuple[str, Parameter]]:
        """(dotted name, Parameter) pairs, e.g. ``blocks.0.attn.qkv.weight``; a shared parameter comes once
        (under its first name) unless ``remove_duplicate=False``."""
        seen: set[int] = set()
        for mod_name, m in self.named_modules(prefix, _memo=None if remove_duplicate else _NoMemo()):
            for name, p in m._parameters.items():
                if p is None:
                    continue
                if remove_duplicate:
                    if id(p) in seen:
                        continue
                    seen.add(id(p))
                yield (f"{mod_name}.{name}" if mod_name else name), p

    def parameters(self) -> Iterator[Parameter]:
        for _, p in self.named_parameters():
            yield p

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, object]]:
        for mod_name, m in self.named_modules(prefix):
            for name, b in m._buffers.items():
                if b is not None:
                    yield (f"{mod_name}.{name}" if mod_name else name), b

    def buffers(self) -> Iterator[object]:
        for _, b in self.named_buffers():
            yield b

    def apply(self, fn: Callable[["Module"], None]) -> "Module":
        """Call ``fn(m)`` on every descendant (children first) and then on self; returns self."""
        for m in self.children():
            m.apply(fn)
        fn(self)
        return self

    # ------------------------------------------------------------------ modes, grads, counts
    def train(self, mode: bool = True) -> "Module":
        """Training mode (dropout on) for self and all descendants; returns self."""
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self) -> "Module":
        """Evaluation mode (dropout off); returns self."""
        return self.train(False)

    def zero_grad(self) -> None:
        """Drop every parameter's gradient (``p.grad = None``)."""
        for p in self.parameters():
            p.grad = None

    def requires_grad_(self, requires_grad: bool = True) -> "Module":
        """Freeze (False) or unfreeze (True) every parameter of this module; returns self."""
        for p in self.parameters():
            p.requires_grad = bool(requires_grad)
        return self

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of scalars in the parameters (shared ones counted once)."""
        return int(sum(p.size for p in self.parameters() if p.requires_grad or not trainable_only))

    @property
    def device(self) -> str:
        """Device of the first parameter ('cpu' when there is none)."""
        for p in self.parameters():
            return p.device
        return "cpu"

    @property
    def dtype(self):
        """dtype of the first parameter (float32 when there is none)."""
        for p in self.parameters():
            return p.dtype
        return np.dtype(np.float32)

    def to(self, device: str | None = None, dtype=None) -> "Module":
        """Move (and/or cast) every parameter, gradient and buffer IN PLACE: the Parameter objects stay the same,
        only their ``.data`` arrays are replaced, so optimizers holding them keep working. Returns self."""
        if device is not None:
            backend.canonical_device(device)  # a clear error now for a bad device / missing CuPy
        if dtype is not None:
            dtype = dtypes.as_dtype(dtype)
            if not dtypes.is_float(dtype):
                raise TypeError(f"Module.to: dtype must be floating point, got {dtype}")

        def move(a):
            if device is not None:
                a = backend.to_device(a, device)
            if dtype is not None and dtypes.is_float(a.dtype):
                a = a.astype(dtype, copy=False)
            return a

        for p in self.parameters():
            p.data = move(p.data)
            if p.grad is not None:
                p.grad = Tensor(move(p.grad.data))
        for m in self.modules():
            for name, b in list(m._buffers.items()):
                if b is not None:
                    m._buffers[name] = move(b)
        return self

    def cpu(self) -> "Module":
        return self.to("cpu")

    def cuda(self, index: int | None = None) -> "Module":
        return self.to("cuda" if index is None else f"cuda:{index}")

    # ------------------------------------------------------------------ state dict
    def state_dict(self, copy: bool = False) -> "OrderedDict[str, object]":
        """name -> array (NumPy or CuPy, on the module's device): parameters (shared ones once) and persistent
        buffers. The arrays are the live ones unless ``copy=True``."""
        out: OrderedDict[str, object] = OrderedDict()
        for name, p in self.named_parameters():
            out[name] = p.data.copy() if copy else p.data
        for mod_name, m in self.named_modules():
            for name, b in m._buffers.items():
                if b is not None and name not in m._non_persistent:
                    out[f"{mod_name}.{name}" if mod_name else name] = b.copy() if copy else b
        return out

    def load_state_dict(self, state_dict, strict: bool = True) -> LoadResult:
        """Copy arrays (NumPy, CuPy or Tensors) into the existing parameters and persistent buffers, converting
        device and dtype. Everything is checked before anything is written: a mis-shaped entry always raises;
        missing or unexpected names raise when ``strict`` (else they are returned). Aliases of a shared parameter
        (e.g. ``lm_head.weight`` when tied to ``tok_emb.weight``) are accepted in place of its first name."""
        targets: dict[str, tuple] = {}   # name -> ("param", Parameter) or ("buffer", (module, attr))
        canonical: dict[int, str] = {}   # id(param) -> the name state_dict() uses
        for name, p in self.named_parameters(remove_duplicate=False):
            targets[name] = ("param", p)
            canonical.setdefault(id(p), name)
        required = set(canonical.values())
        for mod_name, m in self.named_modules():
            for bname, b in m._buffers.items():
                if b is not None and bname not in m._non_persistent:
                    full = f"{mod_name}.{bname}" if mod_name else bname
                    targets[full] = ("buffer", (m, bname))
                    required.add(full)

        keys = list(state_dict.keys())
        unexpected = [k for k in keys if k not in targets]
        satisfied = set()
        mismatched = []
        for k in keys:
            if k not in targets:
                continue
            kind, t = targets[k]
            shape = t.shape if kind == "param" else t[0]._buffers[t[1]].shape
            satisfied.add(canonical[id(t)] if kind == "param" else k)
            got = tuple(_shape_of(state_dict[k]))
            if got != tuple(shape):
                mismatched.append(f"  {k}: checkpoint has shape {got}, model has {tuple(shape)}")
        missing = [k for k in targets if k in required and k not in satisfied]
        if mismatched or (strict and (missing or unexpected)):
            lines = [f"load_state_dict into {type(self).__name__} failed:"]
            if missing and strict:
                lines.append(f"  missing ({len(missing)}): " + ", ".join(missing))
            if unexpected and strict:
                lines.append(f"  unexpected ({len(unexpected)}): " + ", ".join(unexpected))
            if mismatched:
                lines.append(f"  mis-shaped ({len(mismatched)}):")
                lines.extend(mismatched)
            if strict and (missing or unexpected):
                lines.append("  (pass strict=False to load only the matching entries)")
            raise StateDictError("\n".join(lines))

        for k in keys:
            if k not in targets:
                continue
            kind, t = targets[k]
            value = state_dict[k]
            value = value.data if isinstance(value, Tensor) else value
            if kind == "param":
                _copy_into(t.data, value)
                amp.refresh_shadows(t)          # its low-precision copies (autocast) follow the loaded values
            else:
                m, bname = t
                _copy_into(m._buffers[bname], value)
        return LoadResult(missing, unexpected)

    # ------------------------------------------------------------------ calling and printing
    def forward(self, *args, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__}.forward is not written")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = []
        for name, m in self._modules.items():
            child = repr(m).replace("\n", "\n  ")
            lines.append(f"  ({name}): {child}")
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not lines:
            return head + ")"
        return head + "\n" + "\n".join(lines) + "\n)"


class _NoMemo(set):
    """A memo that remembers nothing: named_parameters(remove_duplicate=False) visits shared modules again."""
    def add(self, item):  # noqa: D401
        pass


def _buffer_array(value, name):
    if isinstance(value, Tensor):
        return value.data
    if value is None or isinstance(value, np.ndarray) or backend.is_cupy_array(value):
        return value
    raise TypeError(f"buffer {name!r} must be an ndarray (NumPy or CuPy) or Tensor, got {type(value).__name__}")


def _shape_of(value):
    if hasattr(value, "shape"):
        return value.shape
    return np.shape(value)


def _copy_into(dst, value) -> None:
    """dst[...] = value, moving value to dst's device and casting to dst's dtype."""
    if not (isinstance(value, np.ndarray) or backend.is_cupy_array(value)):
        value = np.asarray(value)
    value = backend.to_device(value, backend.device_of(dst))
    dst[...] = value.astype(dst.dtype, copy=False)


from .containers import ModuleList, Sequential  # noqa: E402  (they subclass Module)
