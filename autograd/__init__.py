"""autograd: a small reverse-mode automatic differentiation engine over NumPy and CuPy arrays.

    import autograd as ag
    x = ag.tensor([[1.0, 2.0]], requires_grad=True)
    y = (x * x).sum(); y.backward(); x.grad        # Tensor([[2., 4.]])
"""
from . import amp, backend
from . import functional
from .backend import cuda_available
from .backward import BackwardError, grad
from .dtypes import bfloat16
from .checkpoint import checkpoint
from .function import Function
from .grad_mode import enable_grad, is_grad_enabled, no_grad
from .gradcheck import GradcheckError, gradcheck, gradgradcheck, numerical_grad
from .tensor import Tensor, as_tensor, tensor
from .ops.creation import (arange, eye, full, full_like, manual_seed, ones, ones_like, rand, randint, randn, zeros,
                           zeros_like)
from .ops.einsum import einsum
from .ops.elementwise import where
from .ops.index import gather, one_hot, scatter, scatter_add
from .ops.linalg import matmul
from .ops.movement import flip, pad, roll, tile, tril, triu
from .ops.pointwise import isfinite, isinf, isnan, lerp
from .ops.reduce import all_true as all, any_true as any, argmax, argmin, std  # noqa: A001  (PyTorch's names)
from .ops.shape import broadcast_to, concatenate, flatten, stack, split, squeeze, sum_to, transpose, unsqueeze
from .ops.sort import argsort, sort, topk
from . import trace, viz

__all__ = [
    "Tensor", "tensor", "zeros", "ones", "randn", "Function", "no_grad", "enable_grad", "is_grad_enabled",
    "grad", "BackwardError", "checkpoint", "backend", "cuda_available", "where", "matmul", "concatenate", "stack", "split",
    "broadcast_to", "sum_to", "gradcheck", "gradgradcheck", "GradcheckError", "numerical_grad",
    "arange", "eye", "full", "full_like", "zeros_like", "ones_like", "rand", "randint", "manual_seed", "einsum",
    "gather", "scatter", "scatter_add", "one_hot", "flip", "roll", "tile", "pad", "tril", "triu", "isnan", "isinf",
    "isfinite", "lerp", "all", "any", "argmax", "argmin", "std", "flatten", "squeeze", "unsqueeze", "transpose",
    "argsort", "sort", "topk", "concat", "cat", "as_tensor", "bfloat16",
]
concat = cat = concatenate  # PyTorch's other names

from .methods import FUNCTIONS as _FUNCTIONS  # noqa: E402  ag.exp(x) ... as torch.exp(x)
globals().update(_FUNCTIONS)
__all__ += list(_FUNCTIONS)
