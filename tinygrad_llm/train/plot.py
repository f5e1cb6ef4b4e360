"""Loss curves from a JSONL metrics log, as a PNG (needs matplotlib: ``pip install tinygrad-llm[plot]``)."""
from __future__ import annotations

import os
from pathlib import Path

from .metrics import read_metrics

__all__ = ["plot_metrics", "MatplotlibMissing"]


class MatplotlibMissing(RuntimeError):
    """matplotlib is not installed."""


def plot_metrics(log_path: str | os.PathLike, out_path: str | os.PathLike | None = None) -> Path:
    """Draw train loss (per step) and val loss (per eval) against step; returns the PNG path.

    out_path defaults to the log's name with ``.png``. Raises MatplotlibMissing with the install command when
    matplotlib is absent, ValueError when the log has no loss records.
    """
    try:
        import matplotlib
        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise MatplotlibMissing("plotting needs matplotlib: pip install 'tinygrad-llm[plot]' "
                                "(or pip install matplotlib)") from None
    recs = read_metrics(log_path)
    train = [(r["step"], r["loss"]) for r in recs if isinstance(r.get("loss"), (int, float))]
    val = [(r["step"], r["val_loss"]) for r in recs if isinstance(r.get("val_loss"), (int, float))]
    if not train and not val:
        raise ValueError(f"{log_path}: no 'loss' or 'val_loss' records to plot")
    out = Path(out_path) if out_path else Path(log_path).with_suffix(".png")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1)
    if val:
        ax.plot(*zip(*val), "o-", label="val loss", lw=1.5, ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
