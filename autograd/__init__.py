"""autograd: a small reverse-mode automatic differentiation engine over NumPy and CuPy arrays.

    import autograd as ag
    x = ag.tensor([[1.0, 2.0]], requires_grad=True)
    y = (x * x).sum(); y.backward(); x.grad        # Tensor([[2., 4.]])
"""
from . import amp, backend
from . import functional
from .backend import cuda_available
from .backward import BackwardError, grad
from .checkpoint import checkpoint
from .function import Function
from .grad_mode import enable_grad, is_grad_enabled, no_grad
from .gradcheck import GradcheckError, gradcheck, gradgradcheck, numerical_grad
from .tensor import Tensor, ones, randn, tensor, zeros
from .ops.elementwise import where
from .ops.linalg import matmul
from .ops.shape import broadcast_to, concatenate, stack, split, sum_to
from . import trace, viz

__all__ = [
    "Tensor", "tensor", "zeros", "ones", "randn", "Function", "no_grad", "enable_grad", "is_grad_enabled",
    "grad", "BackwardError", "checkpoint", "backend", "cuda_available", "where", "matmul", "concatenate", "stack", "split",
    "broadcast_to", "sum_to", "gradcheck", "gradgradcheck", "GradcheckError", "numerical_grad",
]
