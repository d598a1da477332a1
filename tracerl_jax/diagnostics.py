"""Runtime diagnostics: counting XLA compilations (the "zero recompiles" promise)."""

from __future__ import annotations

import contextlib
import threading

import jax.monitoring

# Emitted once per backend (XLA) compilation by jax's dispatch layer.
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"

_lock = threading.Lock()
_count = 0
_registered = False


def _listener(event: str, duration_secs: float, **kwargs) -> None:
    global _count
    if event == _COMPILE_EVENT:
        with _lock:
            _count += 1


def compile_count() -> int:
    """Number of XLA compilations in this process since the first call."""
    global _registered
    with _lock:
        if not _registered:
            jax.monitoring.register_event_duration_secs_listener(_listener)
            _registered = True
        return _count


class CompileCounter(contextlib.AbstractContextManager):
    """Counts compilations inside a ``with`` block.

    Example::

        with CompileCounter() as cc:
            sample_fn(params, prompts, valid, rng)
        assert cc.count == 0
    """

    def __enter__(self):
        self._start = compile_count()
        self.count = 0
        return self

    def __exit__(self, *exc):
        self.count = compile_count() - self._start
        return False
