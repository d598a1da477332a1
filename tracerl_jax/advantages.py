"""Advantages: group-normalised rewards (§7.4) and step-level GAE (§8.3–8.4).

Both are pure, vectorised ``jnp`` functions with static shapes: the group
statistics work on ``[num_prompts, k]``, GAE on per-response token arrays
``[N, L1]`` (the response axis of the rollout, not the training rows; use
:func:`step_gae_rows` to go through rows stored as ``[R, L1]`` arrays).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from tracerl_jax import checks
from jax import lax

from tracerl_jax import rows as rows_lib
from tracerl_jax.registry import Registry

INT_MAX = int(np.iinfo(np.int32).max)
INT_MIN = int(np.iinfo(np.int32).min)


# --------------------------------------------------------------------------
# Group normalisation (no value model)
# --------------------------------------------------------------------------


def truncation_penalty(correct: jax.Array, response_lengths: jax.Array, max_tokens: int,
                       margin: int = 5) -> jax.Array:
    """Math only (§7.4 step 1): a response with ``length >= max_tokens − margin``
    counts as incorrect. Shapes: ``correct`` and ``response_lengths`` alike."""
    if np.shape(correct) != np.shape(response_lengths):
        raise ValueError(f"response_lengths must have the shape of correct {np.shape(correct)}, "
                         f"got {np.shape(response_lengths)}")
    return jnp.where(jnp.asarray(response_lengths) >= max_tokens - margin,
                     jnp.zeros((), jnp.asarray(correct).dtype), correct)


def group_normalize(scores: jax.Array, *, correct: Optional[jax.Array] = None,
                    keep_range: Optional[tuple[float, float]] = None,
                    drop_constant: bool = False) -> tuple[jax.Array, jax.Array]:
    """Per-prompt z-score of the rewards, and the group filter (§7.4).

    ``A_i = (x_i − mean(x)) / std(x)`` over the ``k`` responses of a prompt,
    with the **population** std (divide by ``k``). A group whose scores are
    all equal (``std == 0``) gets ``A = 0``; equality is tested exactly
    (``max == min``), so float rounding in the mean cannot produce a huge
    z-score.

    Filters (a group is kept if every enabled test passes):

    * ``keep_range=(low, high)`` (math, ``(0.2, 0.8)``): keep if
      ``low <= mean(correct) <= high``; ``correct`` defaults to ``scores``.
    * ``drop_constant`` (code): drop groups with ``std == 0``.

    Args:
      scores: float ``[P, k]`` correctness 0/1 (math) or pass counts (code).
      correct: optional ``[P, k]`` 0/1 for the range filter.

    Returns:
      ``(advantages float32 [P, k], keep bool [P])``.
    """
    if np.ndim(scores) != 2:
        raise ValueError(f"scores must have shape [num_prompts, k], got {np.shape(scores)}")
    if correct is not None:
        checks.shape("correct", correct, np.shape(scores))
    if keep_range is not None and (len(keep_range) != 2 or keep_range[0] > keep_range[1]):
        raise ValueError(f"keep_range must be (low, high) with low <= high, got {keep_range!r}")
    x = jnp.asarray(scores, jnp.float32)
    k = x.shape[1]
    mean = jnp.mean(x, axis=1, keepdims=True)
    std = jnp.sqrt(jnp.mean((x - mean) ** 2, axis=1, keepdims=True))
    constant = jnp.max(x, axis=1) == jnp.min(x, axis=1)
    adv = jnp.where(constant[:, None], 0.0, (x - mean) / jnp.where(constant[:, None], 1.0, std))
    keep = jnp.ones(x.shape[:1], bool)
    if keep_range is not None:
        c = x if correct is None else jnp.asarray(correct, jnp.float32)
        frac = jnp.sum(c, axis=1) / k
        keep &= (frac >= keep_range[0]) & (frac <= keep_range[1])
    if drop_constant:
        keep &= ~constant
    return adv, keep


# --------------------------------------------------------------------------
# Token rewards for the value model (§8.3)
# --------------------------------------------------------------------------


def outcome_token_rewards(rewards: jax.Array, step_ids: jax.Array, trainable: jax.Array) -> jax.Array:
    """Places a scalar outcome reward on the last trace step (§8.3).

    ``r_j = R`` for trainable tokens with ``s_j == max{s_k : τ_k}``, else 0:
    the reward sits on the last *decoding step* among trainable tokens, which
    is not necessarily the EOS position. ``R`` is the z-scored group reward
    (Q-V3, kept).

    Args:
      rewards: float ``[N]``.
      step_ids: int ``[N, L1]`` aligned and shrunk step map.
      trainable: bool ``[N, L1]`` (``trajectory.trainable_mask``).

    Returns:
      float32 ``[N, L1]``.
    """
    N = np.shape(step_ids)[0]
    checks.shape("rewards", rewards, (N,))
    checks.shape("trainable", trainable, np.shape(step_ids))
    last = jnp.max(jnp.where(trainable, step_ids, INT_MIN), axis=1, keepdims=True)
    at_last = trainable & (step_ids == last)
    return jnp.where(at_last, jnp.asarray(rewards, jnp.float32)[:, None], 0.0)


def process_token_rewards(reward_vectors: jax.Array, vector_lengths: jax.Array,
                          trainable: jax.Array, *, compat: str = "recommended") -> jax.Array:
    """Vector (process) rewards aligned to ``L1`` (§8.9 step 4).

    Entries at ``j >= vector_length`` are padding: 0 [RECOMMENDED, Q-V1 fix],
    or ``max(vector) + 1`` with ``compat="reference"`` (a copy of the step-map
    padding rule; it matters only when ``post_num > 0`` makes a pad
    trainable). Non-trainable tokens get 0.

    Args:
      reward_vectors: float ``[N, L1]``.
      vector_lengths: int ``[N]``.
      trainable: bool ``[N, L1]``.

    Returns:
      float32 ``[N, L1]``.
    """
    N, L1 = np.shape(reward_vectors)
    checks.shape("vector_lengths", vector_lengths, (N,))
    checks.shape("trainable", trainable, (N, L1))
    if compat not in ("recommended", "reference"):
        raise ValueError(f"compat must be 'recommended' or 'reference', got {compat!r}")
    v = jnp.asarray(reward_vectors, jnp.float32)
    inside = jnp.arange(L1)[None, :] < jnp.asarray(vector_lengths)[:, None]
    if compat == "reference":
        pad = jnp.max(jnp.where(inside, v, -jnp.inf), axis=1, keepdims=True) + 1.0
        pad = jnp.where(jnp.isfinite(pad), pad, 0.0)
    else:
        pad = jnp.zeros((N, 1), jnp.float32)
    return jnp.where(trainable, jnp.where(inside, v, pad), 0.0)


# --------------------------------------------------------------------------
# Step-level GAE (§8.4)
# --------------------------------------------------------------------------


def _reverse_discounted(b: jax.Array, c) -> jax.Array:
    """``y_i = b_i + c·y_{i+1}`` along axis 1 with ``y_{n} = 0``.

    Each element is the affine map ``y ↦ c·y + b_i``; composing maps is
    associative, so this is a reversed ``lax.associative_scan`` (log depth).
    """
    def combine(x, y):  # x: maps nearer the end (applied first), y: the next one
        ax, bx = x
        ay, by = y
        return ax * ay, ay * bx + by

    a = jnp.full_like(b, c)
    _, y = lax.associative_scan(combine, (a, b), reverse=True, axis=1)
    return y


def step_gae(token_rewards: jax.Array, values: jax.Array, step_ids: jax.Array,
             trainable: jax.Array, *, gamma: float = 1.0,
             lam: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """Step-level GAE over the decoding trace (§8.4).

    Let ``u_1 < … < u_S`` be the distinct step ids of the trainable tokens
    (decoding order) and ``T_i = {j : τ_j, s_j = u_i}``. With step means and
    ``X*_{S+1} = 0``::

        r*_i = mean_{j∈T_i} r_j              V*_i = mean_{j∈T_i} V_j
        R*_i = r*_i + γ·R*_{i+1}
        A*_i = δ_i + γλ·A*_{i+1},            δ_i = r*_i − V*_i + γ·V*_{i+1}
        token j ∈ T_i:
        R_j  = r_j + γ·R*_{i+1}
        A_j  = (r_j − V_j) + γ·V*_{i+1} + γλ·A*_{i+1}

    A token combines its own reward and value with the next step's means.
    Non-trainable tokens get 0. No whitening (Q-V3). Special cases (§8.5):
    ``γ=λ=1`` gives ``R_j = Σ r``, ``A_j = R_j − V_j`` for an outcome reward;
    ``γ=1, λ=0`` gives ``A_j = r_j − V_j + V*_{i+1}``.

    Vectorised: tokens are dense-ranked by step id with a sort, the step
    means come from ``segment_sum``, both backward recursions are reversed
    associative scans over the step axis (padded to ``L1``; absent steps
    contribute 0, which the recursion carries through unchanged).

    Args:
      token_rewards: float ``[N, L1]`` (``outcome_token_rewards`` or
        ``process_token_rewards``).
      values: float ``[N, L1]`` old values per token (``gather_from_rows``).
      step_ids: int ``[N, L1]`` aligned and shrunk step map.
      trainable: bool ``[N, L1]`` per-sequence ``post_num`` mask τ.
      gamma, lam: γ, λ.

    Returns:
      ``(advantages, returns)``, float32 ``[N, L1]``.
    """
    if np.ndim(step_ids) != 2:
        raise ValueError(f"step_ids must have shape [N, L1], got {np.shape(step_ids)}")
    N, L = np.shape(step_ids)
    for name, x in (("token_rewards", token_rewards), ("values", values), ("trainable", trainable)):
        checks.shape(name, x, (N, L))
    trainable = jnp.asarray(trainable, bool)
    r = jnp.where(trainable, jnp.asarray(token_rewards, jnp.float32), 0.0)
    v = jnp.where(trainable, jnp.asarray(values, jnp.float32), 0.0)
    key = jnp.where(trainable, jnp.asarray(step_ids, jnp.int32), INT_MAX)
    order = jnp.argsort(key, axis=1, stable=True)
    sk = jnp.take_along_axis(key, order, axis=1)
    new = jnp.concatenate([jnp.ones((N, 1), bool), sk[:, 1:] != sk[:, :-1]], axis=1)
    rank = jnp.take_along_axis(jnp.cumsum(new, axis=1) - 1, jnp.argsort(order, axis=1), axis=1)
    seg = jnp.where(trainable, rank, L)  # non-trainable tokens -> overflow bucket L

    def step_sum(x):
        return jax.vmap(lambda xi, si: jax.ops.segment_sum(xi, si, num_segments=L + 1))(x, seg)

    live = (jnp.arange(L + 1) < L)[None, :]
    count = jnp.maximum(step_sum(jnp.ones((N, L), jnp.float32)), 1.0)
    r_star = jnp.where(live, step_sum(r) / count, 0.0)  # [N, L+1], zero past the last step
    v_star = jnp.where(live, step_sum(v) / count, 0.0)

    def shift(x):  # X*_{i+1}
        return jnp.concatenate([x[:, 1:], jnp.zeros((N, 1), x.dtype)], axis=1)

    v_next = shift(v_star)
    R_star = _reverse_discounted(r_star, gamma)
    A_star = _reverse_discounted(r_star - v_star + gamma * v_next, gamma * lam)

    def at_next(x):
        return jnp.take_along_axis(shift(x), seg, axis=1)

    returns = r + gamma * at_next(R_star)
    adv = (r - v) + gamma * at_next(v_star) + gamma * lam * at_next(A_star)
    return jnp.where(trainable, adv, 0.0), jnp.where(trainable, returns, 0.0)


def step_gae_rows(row_values: jax.Array, row_scored: jax.Array, sequence_ids: jax.Array,
                  token_rewards: jax.Array, step_ids: jax.Array, trainable: jax.Array, *, gamma: float = 1.0,
                  lam: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """Step-level GAE through training rows stored as arrays (§8.2–8.4, §8.8 step 3c).

    Gathers ``V_j^old`` from the rows (each trainable token is scored in one
    row of its sequence), runs :func:`step_gae` per sequence and writes
    ``A_j``/``R_j`` back where each row scores. Under the per-row ``post_num``
    scope a row may score a pad that τ excludes; it gets ``A = R = 0`` (Q-V4).
    For :class:`~tracerl_jax.rows.Rows` pass ``rows.scored`` and
    ``rows.response_index``.

    Args:
      row_values: float ``[R, L1]`` value-model outputs at the rows' read
        positions (``scoring.trajectory_values``).
      row_scored: bool ``[R, L1]`` tokens each row scores (valid rows only).
      sequence_ids: int ``[R]`` the sequence (response, ``0..N-1``) of each row.
      token_rewards, step_ids, trainable: ``[N, L1]`` as in :func:`step_gae`.
      gamma, lam: γ, λ.

    Returns:
      ``(advantages, returns)``, float32 ``[R, L1]``, 0 where a row does not score.
    """
    if np.ndim(step_ids) != 2:
        raise ValueError(f"step_ids must have shape [N, L1], got {np.shape(step_ids)}")
    N, L1 = np.shape(step_ids)
    if np.ndim(row_scored) != 2 or np.shape(row_scored)[1] != L1:
        raise ValueError(f"row_scored must have shape [R, {L1}], got {np.shape(row_scored)}")
    R = np.shape(row_scored)[0]
    checks.shape("row_values", row_values, (R, L1))
    checks.shape("sequence_ids", sequence_ids, (R,))
    scored = jnp.asarray(row_scored, bool)
    ids = jnp.asarray(sequence_ids, jnp.int32)
    values = rows_lib.gather(jnp.asarray(row_values, jnp.float32), scored, ids, N)
    adv, ret = step_gae(token_rewards, values, step_ids, trainable, gamma=gamma, lam=lam)
    return rows_lib.scatter(adv, scored, ids), rows_lib.scatter(ret, scored, ids)


# --------------------------------------------------------------------------
# Advantage estimators by name
# --------------------------------------------------------------------------


class AdvantageInputs(NamedTuple):
    """What an advantage estimator may use, for one RL step's training rows.

    Attributes:
      row_scored: bool ``[R, L1]`` tokens each row scores (valid rows only).
      sequence_ids: int ``[R]`` the response of each row (``0..N-1``).
      rewards: float ``[N]`` group-normalised outcome rewards (§7.4).
      step_ids: int ``[N, L1]`` aligned, shrunk step map (§8.3).
      trainable: bool ``[N, L1]`` completion tokens kept by the ``post_num`` rule.
      old_values: float ``[R, L1]`` value-model outputs, or None without a
        value model.
    """

    row_scored: jax.Array
    sequence_ids: jax.Array
    rewards: jax.Array
    step_ids: jax.Array
    trainable: jax.Array
    old_values: Optional[jax.Array] = None


# Estimators by name (``rl.advantage``): ``fn(inputs: AdvantageInputs, *, gamma, lam)
# -> (advantages [R, L1], returns [R, L1] or None)``. One that sets
# ``fn.needs_values = True`` is given the value model's ``old_values`` and its
# returns train the value model.
ADVANTAGE_ESTIMATORS: Registry = Registry("advantage estimator")


@ADVANTAGE_ESTIMATORS.register("group")
def group_advantages(inputs: AdvantageInputs, *, gamma: float = 1.0, lam: float = 1.0):
    """No value model (§7.4): every scored token of a response takes its group z-score.

    Returns ``(advantages float32 [R, L1], None)``.
    """
    del gamma, lam
    N, L1 = np.shape(inputs.step_ids)
    per_token = jnp.broadcast_to(jnp.asarray(inputs.rewards, jnp.float32)[:, None], (N, L1))
    return rows_lib.scatter(per_token, inputs.row_scored, inputs.sequence_ids), None


@ADVANTAGE_ESTIMATORS.register("step_gae")
def gae_advantages(inputs: AdvantageInputs, *, gamma: float = 1.0, lam: float = 1.0):
    """Value model (§8.3–8.4): the outcome reward on the last trace step, step-level GAE through the rows.

    Returns ``(advantages, returns)``, float32 ``[R, L1]``.
    """
    if inputs.old_values is None:
        raise ValueError("the 'step_gae' advantage needs the value model's old_values (enable the value model)")
    token_rewards = outcome_token_rewards(inputs.rewards, inputs.step_ids, inputs.trainable)
    return step_gae_rows(inputs.old_values, inputs.row_scored, inputs.sequence_ids, token_rewards,
                         inputs.step_ids, inputs.trainable, gamma=gamma, lam=lam)


gae_advantages.needs_values = True
