"""JSONL metrics log: one JSON object per line, appended and flushed as training goes.

Each training record has ``{"step", "loss", "lr", "tokens_per_s", "time"}``; evaluation records add ``"val_loss"``
and ``"val_ppl"``. Any other JSON-able fields may be added. ``read_metrics`` reads a log back (skipping a torn last
line left by a crash), and ``MetricsLog(path, resume_step=N)`` drops records past step N so a resumed run's log
reads as one clean history.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

__all__ = ["MetricsLog", "read_metrics"]


def _clean(v: Any) -> Any:
    if hasattr(v, "item") and not isinstance(v, (list, dict, str)):
        v = v.item()  # NumPy / CuPy scalars
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # "nan"/"inf": strict JSON readers reject NaN literals
    return v


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a JSONL log. A line that is not valid JSON is skipped only if it is the last one (torn write);
    elsewhere it raises ValueError naming the file and line number."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"metrics log {str(p)!r} does not exist")
    lines = p.read_text(encoding="utf-8").splitlines()
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{p}:{i + 1}: not a JSON line ({e})") from None
        if isinstance(rec, dict):
            out.append(rec)
    return out


class MetricsLog:
    """Append-only JSONL writer. ``log(step=..., loss=...)`` writes one line and flushes it.

    path: the log file (its folder is created). resume_step: when given, existing records with a larger step are
    dropped first (they belong to a run that was resumed from an earlier checkpoint).
    """

    def __init__(self, path: str | os.PathLike, resume_step: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.is_file():
            keep = [r for r in read_metrics(self.path) if int(r.get("step", 0)) <= resume_step]
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in keep), encoding="utf-8")
            os.replace(tmp, self.path)
        elif resume_step is None and self.path.exists():
            self.path.unlink()  # a fresh run starts a fresh log
        self._f = open(self.path, "a", encoding="utf-8")
        self._t0 = time.time()

    def log(self, **fields: Any) -> dict[str, Any]:
        """Write one record (adds ``time``, seconds since this log was opened, unless given)."""
        rec = {k: _clean(v) for k, v in fields.items() if v is not None}
        rec.setdefault("time", round(time.time() - self._t0, 3))
        self._f.write(json.dumps(rec) + "\n")
        self._f.flush()
        return rec

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
