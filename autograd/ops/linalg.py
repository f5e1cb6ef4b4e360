"""Matrix products with batch broadcasting."""
from __future__ import annotations

from .. import backend
from ..dtypes import result_type, widened
from ..cuda import kernel_for
from ..function import Function
from ..tensor import Tensor
from .shape import reshape, sum_to, swapaxes, unsqueeze, squeeze


class MatMul(Function):
    """Z = X @ Y over the last two axes, leading axes broadcast; dZ/dX = G @ Y^T, dZ/dY = X^T @ G."""
    rule = 'd(x@W)/dx = g @ W^T, d(x@W)/dW = x^T @ g'
    def forward(self, x, y):
        if x.ndim < 2 or y.ndim < 2 or x.shape[-1] != y.shape[-2]:
            raise ValueError(f"matmul: shapes {x.shape} and {y.shape} do not fit "
                             f"(need (..., n, k) @ (..., k, m))")
        kernel = kernel_for("matmul", x)   # CuPy: cuBLAS with TF32 / float16 tensor cores, views not copied
        return kernel(x, y) if kernel is not None else widened(backend.xp_of(x, y).matmul, x, y)

    def backward(self, gz):
        x, y = self.inputs
        gx = sum_to(gz @ swapaxes(y, -1, -2), x.shape) if self.needs_input_grad[0] else None
        gy = None
        if self.needs_input_grad[1]:
            if y.ndim == 2 and x.ndim > 2:
                # a shared weight (..., n, k) @ (k, m): fold the batch into rows, one GEMM and no (B, k, m) temporary
                k = x.shape[-1]
                gy = swapaxes(reshape(x, (-1, k)), 0, 1) @ reshape(gz, (-1, gz.shape[-1]))
            else:
                gy = sum_to(swapaxes(x, -1, -2) @ gz, y.shape)
        return gx, gy


def matmul(x: Tensor, y: Tensor) -> Tensor:
    """``x @ y``; a 1-D operand is treated as a row (left) or column (right) vector, as NumPy does."""
    x = x if isinstance(x, Tensor) else Tensor(x)
    y = y if isinstance(y, Tensor) else Tensor(y)
    if x.ndim == 0 or y.ndim == 0 or x.shape[-1] != y.shape[-2 if y.ndim > 1 else 0]:  # the user's shapes
        raise ValueError(f"matmul: shapes {x.shape} and {y.shape} do not fit (need (..., n, k) @ (..., k, m); "
                         "a 1-D operand is a vector of k)")
    if x.dtype != y.dtype:  # the binary ops' promotion (torch.result_type: int @ float32 is float32, not float64)
        dt = result_type(x, y)
        x, y = (t if t.dtype == dt else t.astype(dt) for t in (x, y))
    if x.ndim == 1 and y.ndim == 1:
        return squeeze(MatMul.apply(unsqueeze(x, 0), unsqueeze(y, 1)), (0, 1))
    if x.ndim == 1:
        return squeeze(MatMul.apply(unsqueeze(x, 0), y), -2)
    if y.ndim == 1:
        return squeeze(MatMul.apply(x, unsqueeze(y, 1)), -1)
    return MatMul.apply(x, y)
