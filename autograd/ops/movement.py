"""Ops that move, repeat or mask elements without arithmetic: flip, roll, tile (PyTorch's ``repeat``), pad, tril,
triu. Each backward moves the gradient back the same way (repeats add up)."""
from __future__ import annotations

from .. import backend
from ..function import Function
from ..tensor import Tensor, as_tensor
from .axes import normalize_axes, normalize_axis, torch_keywords
from .shape import reshape


class Flip(Function):
    """y = x reversed along ``axes``; the gradient is reversed back."""
    rule = "d flip(x)/dx: flip the gradient back"
    params = ("axes",)
    def forward(self, x):
        return backend.xp_of(x).flip(x, axis=self.axes) if self.axes else x.copy()

    def backward(self, gy):
        return Flip.apply(gy, axes=self.axes)


@torch_keywords
def flip(x: Tensor, axis) -> Tensor:
    """Reverse the order of elements along ``axis`` (an int or a tuple of ints; PyTorch's ``dims``)."""
    x = as_tensor(x)
    return Flip.apply(x, axes=normalize_axes("flip", axis, x.shape))


class Roll(Function):
    """y = x shifted cyclically by ``shifts`` along ``axes`` (flattened when ``axes`` is None); rolled back in
    backward."""
    rule = "d roll(x, s)/dx: roll the gradient by -s"
    params = ("shifts", "axes")
    def forward(self, x):
        return backend.xp_of(x).roll(x, self.shifts, axis=self.axes)

    def backward(self, gy):
        back = tuple(-s for s in self.shifts) if isinstance(self.shifts, tuple) else -self.shifts
        return Roll.apply(gy, shifts=back, axes=self.axes)


@torch_keywords
def roll(x: Tensor, shifts, axis=None) -> Tensor:
    """Shift elements cyclically: ``shifts`` (int or tuple) along ``axis`` (int, tuple, or None = flattened)."""
    x = as_tensor(x)
    if axis is None:
        if isinstance(shifts, (tuple, list)):
            raise ValueError(f"roll: without an axis, shifts must be one int, got {shifts!r}")
        return Roll.apply(x, shifts=int(shifts), axes=None)
    axes = axis if isinstance(axis, (tuple, list)) else (axis,)
    shifts = tuple(shifts) if isinstance(shifts, (tuple, list)) else (shifts,)
    if len(shifts) != len(axes):
        raise ValueError(f"roll: {len(shifts)} shifts for {len(axes)} axes ({shifts} and {axes})")
    if x.ndim == 0:
        normalize_axes("roll", list(axes), x.shape)
        return Roll.apply(x, shifts=0, axes=None)
    axes = tuple(normalize_axis("roll", a, x.shape) for a in axes)
    return Roll.apply(x, shifts=tuple(int(s) for s in shifts), axes=axes)


class Tile(Function):
    """y = x repeated ``reps`` times along each axis (NumPy's ``tile``, PyTorch's ``repeat``); the gradient sums the
    copies."""
    rule = "d tile(x)/dx: sum the gradient over the copies"
    params = ("reps",)
    def forward(self, x):
        return backend.xp_of(x).tile(x, self.reps)

    def backward(self, gy):
        x = self.inputs[0]
        d = gy.ndim
        sizes = (1,) * (d - x.ndim) + x.shape
        reps = (1,) * (d - len(self.reps)) + self.reps
        split = reshape(gy, tuple(v for pair in zip(reps, sizes) for v in pair))
        return reshape(split.sum(axis=tuple(range(0, 2 * d, 2))), x.shape)


def tile(x: Tensor, reps) -> Tensor:
    """Repeat x ``reps`` times along each axis; fewer reps than axes repeat the trailing axes (NumPy's rule)."""
    x = as_tensor(x)
    reps = (reps,) if isinstance(reps, int) else tuple(int(r) for r in reps)
    if any(r < 0 for r in reps):
        raise ValueError(f"tile: repetitions must be >= 0, got {reps}")
    return Tile.apply(x, reps=reps)


class Pad(Function):
    """y = x with ``widths`` ((before, after) per axis) of ``value`` around it; the gradient is the inner slice."""
    rule = "d pad(x)/dx: the gradient without the padding"
    params = ("widths", "value")
    def forward(self, x):
        return backend.xp_of(x).pad(x, self.widths, mode="constant", constant_values=self.value)

    def backward(self, gy):
        index = tuple(slice(b, gy.shape[i] - a) for i, (b, a) in enumerate(self.widths))
        return gy[index]


def pad(x: Tensor, pad, mode: str = "constant", value: float = 0.0) -> Tensor:
    """PyTorch's ``F.pad``: ``pad`` = (before, after) pairs starting from the LAST axis, e.g. (1, 1) pads the last
    axis by one on each side, (0, 0, 2, 0) adds two rows on top. Constant padding with non-negative widths."""
    x = as_tensor(x)
    pad = tuple(int(p) for p in pad)
    if mode != "constant":
        raise NotImplementedError(f"pad: only mode='constant' is available, got mode={mode!r}")
    if len(pad) % 2 or len(pad) // 2 > x.ndim:
        raise ValueError(f"pad: needs (before, after) pairs for at most {x.ndim} axes, got {pad} for shape {x.shape}")
    if any(p < 0 for p in pad):
        raise ValueError(f"pad: widths must be >= 0 (cropping is slicing), got {pad}")
    pairs = [(pad[2 * i], pad[2 * i + 1]) for i in range(len(pad) // 2)]
    widths = tuple([(0, 0)] * (x.ndim - len(pairs)) + pairs[::-1])
    return Pad.apply(x, widths=widths, value=value)


class _Triangle(Function):
    params = ("diagonal",)

    def forward(self, x):
        if x.ndim < 2:
            raise ValueError(f"{self.name.lower()}: needs a tensor with at least 2 axes, got shape {x.shape}")
        return getattr(backend.xp_of(x), self.name.lower())(x, self.diagonal)

    def backward(self, gy):
        return type(self).apply(gy, diagonal=self.diagonal)


class Tril(_Triangle):
    """y = x with the elements above diagonal ``diagonal`` of the last two axes zeroed; the gradient likewise."""
    rule = "d tril(x)/dx = 1 on and below the diagonal, else 0"


class Triu(_Triangle):
    """y = x with the elements below diagonal ``diagonal`` of the last two axes zeroed; the gradient likewise."""
    rule = "d triu(x)/dx = 1 on and above the diagonal, else 0"


def tril(x: Tensor, diagonal: int = 0) -> Tensor:
    """The lower triangle of the last two axes (``diagonal`` > 0 keeps more, < 0 fewer); the rest is 0."""
    return Tril.apply(as_tensor(x), diagonal=int(diagonal))


def triu(x: Tensor, diagonal: int = 0) -> Tensor:
    """The upper triangle of the last two axes (``diagonal`` > 0 keeps fewer, < 0 more); the rest is 0."""
    return Triu.apply(as_tensor(x), diagonal=int(diagonal))
