"""Neural-network building blocks on the autograd engine: Module, Parameter, generic layers, RoPE.

    import tinygrad_llm as tl
    layer = tl.nn.Linear(16, 32)
    y = layer(x)                       # x (..., 16) Tensor -> (..., 32)
"""
from .module import LoadResult, Module, ModuleList, Sequential, StateDictError
from .parameter import Parameter, skip_init
from . import parameter as init
from .layers import GELU, Dropout, Embedding, Identity, LayerNorm, Linear, RMSNorm, SiLU
from .rope import RotaryEmbedding, apply_rope, rope_frequencies, rope_tables

__all__ = [
    "Module", "ModuleList", "Sequential", "Parameter", "StateDictError", "LoadResult", "skip_init", "init",
    "Linear", "Embedding", "LayerNorm", "RMSNorm", "Dropout", "GELU", "SiLU", "Identity",
    "apply_rope", "rope_tables", "rope_frequencies", "RotaryEmbedding",
]
