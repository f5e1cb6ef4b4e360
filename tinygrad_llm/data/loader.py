"""DataLoader: batches of (inputs, targets), reproducible shuffling, exact resume and per-rank sharding.

Order. Epoch e's sample order is ``default_rng([seed, e]).permutation(N)`` (or ``arange(N)`` without shuffle): it
depends only on (seed, epoch), never on history, so a resumed run sees the same batches.

Sharding. With ``world_size`` W, each step has a *global* batch of ``batch_size * W`` samples taken from that
order; rank r gets the r-th contiguous slice of ``batch_size`` samples. Ranks are therefore disjoint, all ranks
run the same number of steps, and W ranks with batch_size B see exactly the samples that one process with
batch_size B*W would (so data-parallel training can be checked against single-process training).

Position. ``state_dict()`` is ``{"epoch", "index", "seed", "batch_size", "world_size", "rank", "num_samples"}``
(JSON-able ints; ``index`` = batches already taken in this epoch); ``load_state_dict`` restores it.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

__all__ = ["DataLoader"]


class DataLoader:
    """Iterate (inputs, targets) int64 batches of shape (B, T) over a dataset of (x, y) samples.

    ``for x, y in loader`` runs the rest of the current epoch, then moves to the next; ``next_batch()`` never
    stops (it rolls into the next epoch), which suits step-based training loops. ``len(loader)`` is the number of
    batches per epoch (per rank).

    dataset: ``len()`` and ``__getitem__`` returning (x, y) arrays; an optional ``get_batch(indices)`` is used to
    gather a whole batch at once.
    """

    def __init__(self, dataset, batch_size: int, shuffle: bool = True, seed: int = 0, drop_last: bool = True,
                 rank: int = 0, world_size: int = 1):
        if batch_size < 1:
            raise ValueError(f"DataLoader: batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"DataLoader: need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if world_size > 1 and not drop_last:
            raise ValueError("DataLoader: drop_last=False needs world_size=1 (every rank must get the same number "
                             "of full batches)")
        self.dataset = dataset
        self.batch_size, self.shuffle, self.seed, self.drop_last = int(batch_size), bool(shuffle), int(seed), drop_last
        self.rank, self.world_size = int(rank), int(world_size)
        self.num_samples = len(dataset)
        global_batch = self.batch_size * self.world_size
        if self.num_samples == 0 or (drop_last and self.num_samples < global_batch):
            raise ValueError(
                f"DataLoader: the dataset has {self.num_samples} samples, fewer than one batch of "
                f"{self.batch_size}" + (f" x {self.world_size} ranks" if self.world_size > 1 else "")
                + "; use a smaller batch size or context length, or more text"
            )
        self.epoch = 0
        self.index = 0

    def __len__(self) -> int:
        g = self.batch_size * self.world_size
        return self.num_samples // g if self.drop_last else -(-self.num_samples // g)

    def shard(self, rank: int, world_size: int) -> "DataLoader":
        """A loader over the same dataset, seed and position for ``rank`` of ``world_size`` (see module doc)."""
        other = DataLoader(self.dataset, self.batch_size, self.shuffle, self.seed, self.drop_last, rank, world_size)
        other.epoch, other.index = self.epoch, self.index
        return other

    # ------------------------------------------------------------------ order
    def order(self, epoch: int) -> np.ndarray:
        """The global sample order of ``epoch`` (all ranks), length N."""
        if not self.shuffle:
            return np.arange(self.num_samples)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)

    def batch_indices(self, epoch: int, index: int) -> np.ndarray:
        """The dataset indices of this rank's batch ``index`` in ``epoch``."""
        g = self.batch_size * self.world_size
        start = index * g + self.rank * self.batch_size
        return self.order(epoch)[start:min(start + self.batch_size, self.num_samples)]

    def _fetch(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        getb = getattr(self.dataset, "get_batch", None)
        if getb is not None:
            x, y = getb(idx)
        else:
            pairs = [self.dataset[int(i)] for i in idx]
            x = np.stack([np.asarray(p[0]) for p in pairs])
            y = np.stack([np.asarray(p[1]) for p in pairs])
        return np.asarray(x, dtype=np.int64), np.asarray(y, dtype=np.int64)

    # ------------------------------------------------------------------ iteration
    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The remaining batches of the current epoch; afterwards the loader stands at the next epoch's start."""
        if self.index >= len(self):  # a finished epoch left by a previous break
            self.epoch, self.index = self.epoch + 1, 0
        epoch, order = self.epoch, self.order(self.epoch)
        g = self.batch_size * self.world_size
        while self.epoch == epoch and self.index < len(self):
            start = self.index * g + self.rank * self.batch_size
            idx = order[start:min(start + self.batch_size, self.num_samples)]
            self.index += 1  # counted before yielding: a consumer that stops here has consumed this batch
            if self.index == len(self):
                self.epoch, self.index = self.epoch + 1, 0
            yield self._fetch(idx)

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """The next batch, rolling over into the next epoch when one ends (never raises StopIteration)."""
        if self.index >= len(self):
            self.epoch, self.index = self.epoch + 1, 0
        idx = self.batch_indices(self.epoch, self.index)
        self.index += 1
        if self.index == len(self):
            self.epoch, self.index = self.epoch + 1, 0
        return self._fetch(idx)

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict:
        """The position (JSON-able): ``{"epoch", "index", "seed", "batch_size", "world_size", "rank", "num_samples"}``."""
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed, "batch_size": self.batch_size,
                "world_size": self.world_size, "rank": self.rank, "num_samples": self.num_samples}

    def load_state_dict(self, state: dict) -> None:
        """Restore a position saved by ``state_dict``; the next batch is the one that would have come next.

        Raises ValueError when seed, batch size, world size or dataset length differ (the order would not match).
        ``rank`` may differ (each rank restores the same epoch/index with its own slice).
        """
        for key in ("seed", "batch_size", "world_size", "num_samples"):
            if key in state and int(state[key]) != getattr(self, key):
                raise ValueError(f"DataLoader.load_state_dict: saved {key}={state[key]} but this loader has "
                                 f"{key}={getattr(self, key)}; the batch order cannot be resumed exactly")
        epoch, index = int(state["epoch"]), int(state["index"])
        if epoch < 0 or not 0 <= index <= len(self):
            raise ValueError(f"DataLoader.load_state_dict: bad position epoch={epoch}, index={index} "
                             f"({len(self)} batches per epoch)")
        self.epoch, self.index = epoch, index
