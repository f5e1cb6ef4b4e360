"""Flash-attention kernels (placeholder until the tiled kernel lands): ``supports`` says no, so attention runs the
GEMM + fused-softmax version in attention.py."""
from __future__ import annotations


def supports(q, k, v) -> bool:
    """Whether the flash kernel handles these inputs."""
    return False


def flash_forward(q, k, v, causal, scale):
    raise NotImplementedError


def flash_backward(q, k, v, o, lse, do, causal, scale):
    raise NotImplementedError
