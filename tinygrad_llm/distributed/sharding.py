"""Disjoint, deterministic data shards per rank, and reductions of metrics over ranks.

The rule that makes N ranks equal to one process: every step draws one *global* batch of ``N * b`` examples
(the same on every rank, from a shared seed and step number), and rank r takes rows ``[r*b, (r+1)*b)``. Then the
averaged gradient equals the single-process gradient of the global batch, and resuming with a different number
of ranks (same global batch) continues the same run.
"""
from __future__ import annotations

import numpy as np

from .comm import Communicator
from .runtime import get_communicator


def shard_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """The [start, stop) of rank's contiguous share of ``n`` items (sizes differ by at most one)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} out of range for world size {world_size}")
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard_batch(batch, rank: int, world_size: int):
    """Rank's rows of a global batch whose first axis is divisible by ``world_size`` (arrays or tuples of them)."""
    if isinstance(batch, (tuple, list)):
        return type(batch)(shard_batch(b, rank, world_size) for b in batch)
    n = batch.shape[0]
    if n % world_size:
        raise ValueError(f"global batch of {n} rows does not split evenly over {world_size} ranks; "
                         f"use a global batch size divisible by the number of ranks")
    b = n // world_size
    return batch[rank * b:(rank + 1) * b]


def shard_indices(n: int, rank: int, world_size: int, seed: int | None = None, epoch: int = 0,
                  drop_last: bool = True) -> np.ndarray:
    """Rank's example indices for one epoch: a permutation shared by every rank (``seed``, ``epoch``), strided.

    With ``drop_last`` every rank gets ``n // world_size`` indices (equal step counts, so no rank waits forever in
    a collective); without it the first ``n % world_size`` ranks get one more.
    """
    order = np.arange(n) if seed is None else np.random.default_rng([seed, epoch]).permutation(n)
    if drop_last:
        order = order[:(n // world_size) * world_size]
    return order[rank::world_size]


def all_reduce_mean(total: float, count: float, comm: Communicator | None = None) -> float:
    """Global mean from every rank's (sum, count): sharded evaluation's loss (sum of losses, number of tokens)."""
    comm = comm or get_communicator()
    s, c = comm.all_reduce_scalars([total, count], "sum")
    return s / c if c else float("nan")


def reduce_metrics(metrics: dict, comm: Communicator | None = None, op: str = "avg") -> dict:
    """All-reduce a dict of numbers (same keys on every rank, any order); returns a new dict of floats."""
    comm = comm or get_communicator()
    if comm.world_size == 1:
        return {k: float(v) for k, v in metrics.items()}
    keys = sorted(metrics)
    vals = comm.all_reduce_scalars([float(metrics[k]) for k in keys], op)
    return dict(zip(keys, vals))
