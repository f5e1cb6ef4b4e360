"""Tensor maps (autograd/cuda/tensor_map.py): inputs the driver cannot map are refused with one clear error before
the driver is asked (the maps themselves run in the Hopper flash backward's GPU tests)."""
import numpy as np
import pytest

from autograd.cuda.tensor_map import TensorMapError, float32_tiles


@pytest.mark.parametrize("array, box, what", [
    (np.zeros((4, 16, 32), np.float16), (1, 16, 32), "float16"),
    (np.zeros((4, 32, 16), np.float32).transpose(0, 2, 1), (1, 16, 32), "contiguous False"),
    (np.zeros((2, 2, 2, 2, 2, 2), np.float32), (1,) * 6, "(2, 2, 2, 2, 2, 2)"),
    (np.zeros((4, 16, 32), np.float32), (16, 32), "box (16, 32)"),
])
def test_unmappable_arrays_are_refused_by_name(array, box, what):
    with pytest.raises(TensorMapError) as e:
        float32_tiles(array, box)
    assert "tensor map" in str(e.value) and what in str(e.value)
