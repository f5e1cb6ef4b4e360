"""The decoder: configuration, families and presets, its parts (Block, Attention, MLP, MoE), generation."""
from .config import FAMILIES, PRESETS, GPTConfig
from .blocks import MLP, Attention, Block, MoE
from .gpt import GPT
from .kv_cache import KVCache, LayerKVCache
from .generate import generate, sample_next

__all__ = ["GPTConfig", "PRESETS", "FAMILIES", "GPT", "Block", "Attention", "MLP", "MoE", "KVCache",
           "LayerKVCache", "generate", "sample_next"]
