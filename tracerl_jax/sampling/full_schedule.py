"""Step schedules of the full-attention samplers (docs/algorithms.md §2.1, §2.3, §2.4).

Three small rules, each in one place, shared by the sampler and its tests:

* :func:`block_steps`: how the total step budget is split across blocks (§2.1).
* :func:`llada_quota`: LLaDA's static per-step quota inside a block (§2.3, the
  §1.3 rule applied to the masks at block start).
* :func:`dream_fraction_table` / :func:`dream_count`: Dream's static linspace
  schedule (§2.4), with the ``steps_per_block == 1`` index error fixed (Q-F3).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

DREAM_EPS = 1e-3


def block_steps(steps: int, num_blocks: int) -> np.ndarray:
    """Denoising steps of each block (§2.1): ``base = steps // num_blocks`` and the
    remainder goes to the earliest blocks.

    Example: ``block_steps(10, 4) == [3, 3, 2, 2]``.

    Returns:
      int32 ``[num_blocks]``.

    Raises:
      ValueError: if a block would get no step (``steps < num_blocks``).
    """
    if num_blocks < 1:
        raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
    if steps < num_blocks:
        raise ValueError(f"steps ({steps}) must be >= the number of blocks ({num_blocks}): every block "
                         "needs at least one step")
    base, rem = divmod(steps, num_blocks)
    return np.array([base + 1 if i < rem else base for i in range(num_blocks)], np.int32)


def llada_quota(masks_at_start, steps_in_block, i):
    """LLaDA static quota at in-block step ``i`` (0-based) (§2.3).

    With ``m`` = masks at block start and ``S`` = the block's steps:
    ``m // S + (i < m % S)``, the §1.3 rule (extra tokens to the earliest
    steps). Works on NumPy or ``jnp`` values and broadcasts (``m`` may be per
    row; ``S`` and ``i`` may be traced).
    """
    base = masks_at_start // steps_in_block
    rem = masks_at_start % steps_in_block
    return base + (i < rem)


def dream_fraction_table(steps_per_block: np.ndarray, eps: float = DREAM_EPS) -> np.ndarray:
    """``1 - t_{i+1} / t_i`` with ``t = linspace(1, eps, S + 1)`` for every block (§2.4).

    Computed once on the host in float64 and rounded to float32, so the
    sampler's per-step count is a table look-up (no float drift between a
    traced and a NumPy evaluation of the same rule).

    Args:
      steps_per_block: int ``[num_blocks]`` (:func:`block_steps`).
      eps: the schedule's final time (Dream's ``eps = 1e-3``).

    Returns:
      float32 ``[num_blocks, max(S)]``; entries with ``i >= S_j`` are 0.
    """
    S = np.asarray(steps_per_block, np.int64)
    out = np.zeros((S.size, int(S.max())), np.float64)
    for j, s in enumerate(S):
        t = np.linspace(1.0, eps, s + 1)
        out[j, :s] = 1.0 - t[1:] / t[:-1]
    return out.astype(np.float32)


def dream_count(masks_remaining, masks_for_count, fraction, last):
    """Dream static count at in-block iteration ``i >= 1`` (§2.4).

    Iteration 0 is the forced first token of the block. For ``1 <= i < S-1``:
    ``floor(m * (1 - t_{i+1} / t_i))``, which may be 0 (a wasted step that
    still counts, Q-F3, kept for parity); at ``i = S - 1`` (``last``): every
    remaining mask of the row. ``m`` (``masks_for_count``) is the row's own
    number of masks left in the block, or the batch mean under
    ``compat="reference"``. ``S == 1`` (an index error in the reference) is
    handled by the sampler: its single step commits the whole block.

    Args:
      masks_remaining: int ``[B]`` masks left in each row's block.
      masks_for_count: float ``[B]`` or scalar ``m`` of the floor rule.
      fraction: float32 scalar, ``dream_fraction_table()[j, i]``.
      last: bool scalar, ``i >= S - 1``.

    Returns:
      int32 ``[B]``.
    """
    count = jnp.floor(jnp.asarray(masks_for_count, jnp.float32) * fraction).astype(jnp.int32)
    remaining = jnp.asarray(masks_remaining, jnp.int32)
    return jnp.where(last, remaining, jnp.broadcast_to(count, remaining.shape))
