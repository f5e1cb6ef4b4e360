"""The GPT model: configuration and presets, the network, and text generation."""
from .config import PRESETS, GPTConfig
from .gpt import GPT
from .generate import generate, sample_next

__all__ = ["GPTConfig", "PRESETS", "GPT", "generate", "sample_next"]
