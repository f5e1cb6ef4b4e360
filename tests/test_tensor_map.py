"""Tensor maps (autograd/cuda/tensor_map.py): inputs the driver cannot map are refused with one clear error before
the driver is asked (the maps themselves run in the Hopper flash backward's GPU tests)."""
import numpy as np
import pytest

from autograd.cuda.tensor_map import TensorMapError, tiles


@pytest.mark.parametrize("array, box", [
    (np.zeros((4, 16, 32), np.int32), (1, 16, 32)),                       # no tiles of this dtype
    (np.zeros((4, 32, 16), np.float32).transpose(0, 2, 1), (1, 16, 32)),  # the last axis is not unit-stride
    (np.zeros((2, 2, 2, 2, 2, 2), np.float32), (1,) * 6),                 # six axes
    (np.zeros((4, 16, 32), np.float32), (16, 32)),                        # a box of the wrong rank
    (np.zeros((8, 3), np.float32), (8, 3)),                               # rows 12 bytes apart
])
def test_unmappable_arrays_are_refused_by_name(array, box):
    with pytest.raises(TensorMapError) as e:
        tiles(array, box)
    msg = str(e.value)
    assert "tensor map" in msg and str(array.dtype) in msg and str(array.shape) in msg and str(box) in msg


class _Array:
    """What tiles() reads of a CuPy array: dtype, shape, strides (bytes), data.ptr."""
    def __init__(self, shape, strides, dtype=np.float32, ptr=4096):
        self.dtype, self.shape, self.strides, self.ndim = np.dtype(dtype), tuple(shape), tuple(strides), len(shape)
        self.data = type("Data", (), {"ptr": ptr})()


def test_the_driver_gets_the_axes_innermost_first(monkeypatch):
    """cuTensorMapEncodeTiled takes dimensions, strides (one fewer) and the box innermost first: the array's axes
    reversed; an axis of length 1 gets a valid stride in place of CuPy's; the 128 bytes it writes become the map."""
    import ctypes

    import autograd.cuda.tensor_map as tm
    seen = {}

    def encode(out, code, rank, ptr, dims, strides, box, steps, interleave, swizzle, l2, oob):
        seen.update(code=code, rank=rank, ptr=ptr.value, dims=list(dims[:rank]), strides=list(strides[:rank - 1]),
                    box=list(box[:rank]), steps=list(steps[:rank]), swizzle=swizzle)
        ctypes.memmove(out, bytes(range(128)), 128)
        return 0
    monkeypatch.setattr(tm, "_encode", encode)
    monkeypatch.setattr(tm, "_map_dtype", np.dtype([("w", np.uint64, (16,))]))
    # a (B, H, T, D) = (2, 1, 100, 64) float16 head view with rows 3 C = 2304 values apart (a qkv split)
    a = _Array((2, 1, 100, 64), (100 * 2304 * 2, 0, 2304 * 2, 2), dtype=np.float16)
    m = tm.tiles(a, (1, 1, 64, 64))
    # the head axis (length 1, CuPy's stride 0) gets the extent of the axes inside it
    assert seen == dict(code=6, rank=4, ptr=4096, dims=[64, 100, 1, 2], strides=[4608, 460800, 460800],
                        box=[64, 64, 1, 1], steps=[1, 1, 1, 1], swizzle=tm.SWIZZLE_128B)
    assert bytes(np.asarray(m["w"]).tobytes()) == bytes(range(128))
    tm.tiles(_Array((6, 100, 64), (100 * 64 * 4, 64 * 4, 4)), (1, 16, 32))
    assert seen["code"] == 7 and seen["dims"] == [64, 100, 6] and seen["strides"] == [256, 25600]


def test_a_refusal_by_the_driver_names_the_array(monkeypatch):
    import autograd.cuda.tensor_map as tm
    monkeypatch.setattr(tm, "_encode", lambda *args: 1)
    monkeypatch.setattr(tm, "_map_dtype", np.dtype([("w", np.uint64, (16,))]))
    with pytest.raises(TensorMapError, match=r"CUresult 1.*\(6, 100, 64\)"):
        tm.tiles(_Array((6, 100, 64), (100 * 64 * 4, 64 * 4, 4)), (1, 16, 32))
