"""Which masked positions of a block are committed at a denoising step (§1.3, §1.5).

All selections are rank-based over a fixed-size block so shapes stay static:
positions are ranked by confidence, descending, ties broken by the lower
index (a deterministic rule; the reference leaves ties to ``torch.topk``).
"""

from __future__ import annotations

import numpy as np

import jax
import jax.numpy as jnp

STRATEGIES = ("sequential", "low_confidence_static", "low_confidence_dynamic")


def check_strategy(name: str) -> str:
    """Validates a strategy name; exact match only (quirk Q-S6 matched substrings)."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown remasking strategy {name!r}; expected one of {STRATEGIES}")
    return name


def step_quotas(block_size: int, steps_per_block: int) -> np.ndarray:
    """Per-step commit quotas ``n[s]`` (§1.3): extra tokens go to the earliest steps.

    Example: ``step_quotas(4, 3) == [2, 1, 1]``.

    Returns:
      int32 ``[steps_per_block]`` summing to ``block_size``.
    """
    if block_size < 1 or steps_per_block < 1:
        raise ValueError(f"block_size and steps_per_block must be >= 1, got {block_size}, {steps_per_block}")
    base, rem = divmod(block_size, steps_per_block)
    return np.array([base + 1 if s < rem else base for s in range(steps_per_block)], np.int32)


def _rank(score: jax.Array) -> jax.Array:
    """Rank of each position by ``score`` descending, ties -> lower index first.

    Args:
      score: float ``[B, b]``.

    Returns:
      int32 ``[B, b]``; rank 0 is the best position.
    """
    order = jnp.argsort(-score, axis=-1, stable=True)
    return jnp.argsort(order, axis=-1, stable=True).astype(jnp.int32)


def select(strategy: str, confidence: jax.Array, masked: jax.Array, quota: jax.Array,
           threshold: float = 0.9, overwrite_committed: bool = False) -> jax.Array:
    """Positions to commit at one step.

    Args:
      strategy: one of :data:`STRATEGIES`.
      confidence: float ``[B, b]`` confidence of each position's sampled token.
      masked: bool ``[B, b]``, positions still holding ``MASK``.
      quota: int ``[B]`` or scalar, ``n[s]`` for this step.
      threshold: ``tau`` of ``low_confidence_dynamic`` (strict ``>``).
      overwrite_committed: reproduce quirk Q-S1: when the quota exceeds the
        number of masked positions, the top-k also picks non-masked
        positions (which the caller then overwrites). Default False: the
        quota is ``min(n[s], #masked)`` and only masked positions commit.

    Returns:
      bool ``[B, b]`` commit mask. With ``overwrite_committed=False`` it is a
      subset of ``masked``.
    """
    quota = jnp.broadcast_to(jnp.asarray(quota, jnp.int32), confidence.shape[:1])[:, None]
    n_masked = jnp.sum(masked, axis=-1, keepdims=True)
    k = quota if overwrite_committed else jnp.minimum(quota, n_masked)
    if strategy == "sequential":
        # first k masked positions, left to right
        order_rank = jnp.cumsum(masked, axis=-1) - 1
        commit = masked & (order_rank < k)
        if overwrite_committed:
            f = jnp.argmax(masked, axis=-1)[:, None]
            idx = jnp.arange(masked.shape[-1])[None]
            commit = (idx >= f) & (idx < f + k) & (n_masked > 0)
        return commit
    score = jnp.where(masked, confidence.astype(jnp.float32), -jnp.inf)
    topk = _rank(score) < k
    if not overwrite_committed:
        topk = topk & masked
    if strategy == "low_confidence_static":
        return topk
    if strategy == "low_confidence_dynamic":
        high = masked & (confidence > threshold)
        enough = jnp.sum(high, axis=-1, keepdims=True) >= k
        return jnp.where(enough, high, topk)
    raise ValueError(f"unknown remasking strategy {strategy!r}; expected one of {STRATEGIES}")
