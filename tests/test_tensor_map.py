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
