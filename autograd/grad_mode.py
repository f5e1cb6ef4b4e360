"""Whether operations record a graph: ``no_grad`` and ``enable_grad``.

Both are context managers and decorators and nest: the innermost one wins, and leaving it restores what was there.
"""
from __future__ import annotations

import contextlib


class _GradMode:
    enabled = True  # read by Function.apply on every op, so kept as a plain class attribute


def is_grad_enabled() -> bool:
    """True when new operations record the graph that backward walks."""
    return _GradMode.enabled


class _SetGradMode(contextlib.ContextDecorator):
    _mode: bool

    def __enter__(self):
        self._previous = _GradMode.enabled
        _GradMode.enabled = self._mode
        return self

    def __exit__(self, *exc):
        _GradMode.enabled = self._previous
        return False


class no_grad(_SetGradMode):
    """Record no graph inside: results have ``requires_grad=False`` and keep nothing alive for backward.

    >>> with ag.no_grad():
    ...     y = model(x)          # inference: no saved activations
    """
    _mode = False


class enable_grad(_SetGradMode):
    """Record the graph again inside a ``no_grad`` block (used by backward with ``create_graph=True``)."""
    _mode = True
