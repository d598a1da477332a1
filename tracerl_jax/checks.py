"""Argument checks at public boundaries, before tracing.

Built on ``chex`` assertions (which accept wildcard shapes and dtype kinds),
re-raised as ``ValueError`` naming the argument: bad input is a caller's
error, not an internal assertion. Every check reads only static shapes and
dtypes, so it also runs on tracers.
"""

from __future__ import annotations

from typing import Sequence

import chex
import numpy as np


def shape(name: str, x, expected: Sequence) -> None:
    """Raises ``ValueError`` unless ``x`` has shape ``expected`` (``None`` entries match any size)."""
    try:
        chex.assert_shape(x, tuple(expected))
    except AssertionError:
        raise ValueError(f"{name} must have shape {_fmt(expected)}, got {tuple(np.shape(x))}") from None


def rank(name: str, x, expected: int, what: str = "") -> None:
    """Raises ``ValueError`` unless ``x`` has rank ``expected`` (``what`` names the axes, e.g. ``"[N, L1]"``)."""
    try:
        chex.assert_rank(x, expected)
    except AssertionError:
        raise ValueError(f"{name} must have rank {expected}{' ' + what if what else ''}, "
                         f"got shape {tuple(np.shape(x))}") from None


def integer(name: str, x) -> None:
    """Raises ``ValueError`` unless ``x`` holds integers (token ids, step ids, indices)."""
    try:
        chex.assert_type(x, int)
    except AssertionError:
        raise ValueError(f"{name} must hold integers, got dtype {np.result_type(x)}") from None


def _fmt(expected) -> str:
    return "(" + ", ".join("?" if e is None else str(e) for e in expected) + ("," if len(expected) == 1 else "") + ")"
