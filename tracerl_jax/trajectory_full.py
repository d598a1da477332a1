"""Trajectory -> TraceRL training rows for full-attention models (ALGORITHMS.md §5).

A full-attention row is a single sequence ``[prompt (L0) | response (L1)]``
(no extended copy): the response is the clean rollout with ``MASK`` wherever
the token was decoded at the row's step group or later. Scoring reads the
model at the response positions themselves (LLaDA) or one slot earlier
(Dream's shift, §5), so every per-token array of a row is in the **response
layout** ``[R, L1]``, the layout the policy/value losses take for block rows
too (``scoring.trajectory_logprobs``).

TraceRL with shrinkage ``s`` (§5): the step map is shrunk over the **whole
response** (every ``s`` consecutive distinct step ids become one group,
``trajectory.shrink_step_map`` with one block of ``L1``); group ``t``'s row
masks every token decoded at group ``t`` or later and scores the tokens of
group ``t``. With ``s = 1`` a row is exactly the canvas of one denoising step
(the sampler's context), so the trainer recomputes the sampler's log-probs;
with ``s`` = the number of steps there is one row with the whole response
masked. The rounds are those of the block path with a single block, so the
masking rule lives in one place (``trajectory.masked_at``).

Positions and padding follow the sampler (``compat``): ``"recommended"``
counts real prompt tokens from 0 and masks left padding as keys;
``"reference"`` uses positions ``0..L-1`` and, for LLaDA, attends to pads
(Q-F4), for Dream masks the ``PAD`` keys at index ``<= L0`` (§5).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from tracerl_jax import advantages as adv_lib
from tracerl_jax import trajectory
from tracerl_jax.attention import MaskInfo, full_info
from tracerl_jax.sampling.block_sampler import Rollout

FAMILIES = ("llada", "dream")


class FullRows(NamedTuple):
    """Full-attention training rows ``[prompt L0 | response L1]``.

    Attributes:
      tokens: int32 ``[R, L0+L1]`` model input (prompt, noisy response).
      positions: int32 ``[R, L0+L1]`` RoPE positions.
      mask_info: :class:`MaskInfo` with fields ``[R, L0+L1]`` (bidirectional).
      labels: int32 ``[R, L1]`` the clean response.
      p_mask: bool ``[R, L1]`` response tokens to score.
      response_index: int32 ``[R]`` response each row was built from.
      round_index: int32 ``[R]`` step group (0-based), or the draw of a
        random-masking row (``2k + {0, 1}`` for coupled pairs).
      row_valid: bool ``[R]`` rows that exist (non-empty ``p_mask``).
    """

    tokens: jax.Array
    positions: jax.Array
    mask_info: MaskInfo
    labels: jax.Array
    p_mask: jax.Array
    response_index: jax.Array
    round_index: jax.Array
    row_valid: jax.Array

    @property
    def prompt_len(self) -> int:
        return self.tokens.shape[1] - self.labels.shape[1]


def _check_options(family: str, compat: str, post_num) -> None:
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    if compat not in trajectory.COMPAT:
        raise ValueError(f"compat must be one of {trajectory.COMPAT}, got {compat!r}")
    if post_num is not None and (not isinstance(post_num, (int, np.integer)) or post_num < 0):
        raise ValueError(f"post_num must be None or an int >= 0, got {post_num!r}")


def full_layout(prompt_valid: jax.Array, tokens: jax.Array, *, pad_id: int, family: str,
                compat: str = "recommended") -> tuple[jax.Array, MaskInfo]:
    """Positions and attention info of full-attention sequences.

    Args:
      prompt_valid: bool ``[R, L0]`` False at left padding.
      tokens: int ``[R, L0+L1]`` the model input (used by Dream's reference mask).
      pad_id: the pad id; family, compat: see the module docstring.

    Returns:
      ``(positions int32 [R, L0+L1], MaskInfo [R, L0+L1])``.
    """
    R, L0 = prompt_valid.shape
    L = tokens.shape[1]
    if compat == "reference":
        positions = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32)[None], (R, L))
        if family == "llada":
            valid = jnp.ones((R, L), bool)
        else:  # rl_dream.py: PAD keys at index <= L0 (the first response slot too)
            valid = ~((tokens == pad_id) & (jnp.arange(L)[None] <= L0))
        return positions, full_info(valid)
    valid = jnp.concatenate([prompt_valid, jnp.ones((R, L - L0), bool)], axis=1)
    positions = jnp.where(valid, jnp.cumsum(valid, axis=1) - 1, 0).astype(jnp.int32)
    return positions, full_info(valid)


def assemble_full_rows(prompt_ids: jax.Array, prompt_valid: jax.Array, response_ids: jax.Array,
                       masked: jax.Array, scored: jax.Array, response_index: jax.Array, round_index: jax.Array,
                       row_valid: jax.Array, *, mask_id: int, pad_id: int, family: str,
                       compat: str = "recommended") -> FullRows:
    """Builds full-attention rows from per-row response masks (shared by TraceRL and the baselines).

    Args:
      prompt_ids: int ``[N, L0]`` left-padded; prompt_valid: bool ``[N, L0]``.
      response_ids: int ``[N, L1]``.
      masked: bool ``[R, L1]`` response positions replaced by ``MASK``.
      scored: bool ``[R, L1]`` positions in ``p_mask``.
      response_index, round_index: int ``[R]``; row_valid: bool ``[R]``
        (rows with an empty ``scored`` are marked invalid too).
      mask_id, pad_id, family, compat: see the module docstring.

    Returns:
      :class:`FullRows` with ``R`` rows.
    """
    p_ids = prompt_ids[response_index].astype(jnp.int32)
    p_valid = prompt_valid[response_index].astype(bool)
    labels = response_ids[response_index].astype(jnp.int32)
    tokens = jnp.concatenate([p_ids, jnp.where(masked, jnp.int32(mask_id), labels)], axis=1)
    positions, info = full_layout(p_valid, tokens, pad_id=pad_id, family=family, compat=compat)
    return FullRows(tokens=tokens, positions=positions, mask_info=info, labels=labels, p_mask=scored,
                    response_index=response_index.astype(jnp.int32), round_index=round_index.astype(jnp.int32),
                    row_valid=row_valid & jnp.any(scored, axis=1))


@partial(jax.jit, static_argnames=("mask_id", "pad_id", "shrink", "post_num", "max_rounds", "family", "compat"))
def _build(prompt_ids, prompt_valid, response_ids, step_map, lengths, has_step_map, scorable, *, mask_id, pad_id,
           shrink, post_num, max_rounds, family, compat):
    N, L1 = response_ids.shape
    T = max_rounds
    aligned, valid = trajectory.align_step_map(step_map, lengths, has_step_map)
    # One block spanning the response: §5 groups step ids over the whole response.
    masked, selected = trajectory.round_masks(aligned, L1, shrink, T)
    keep = scorable & trajectory.trainable_mask(response_ids, pad_id, post_num)  # per sequence (§5 step 3)
    scored = selected & keep[:, None, :]
    idx = jnp.repeat(jnp.arange(N, dtype=jnp.int32), T)
    rounds = jnp.tile(jnp.arange(T, dtype=jnp.int32), N)
    return assemble_full_rows(prompt_ids, prompt_valid, response_ids, masked.reshape(N * T, L1),
                              scored.reshape(N * T, L1), idx, rounds, valid[idx], mask_id=mask_id, pad_id=pad_id,
                              family=family, compat=compat)


def max_step_groups(step_map, lengths, shrink: int) -> int:
    """Host helper: the most step groups any response has (rows per response needed)."""
    sm, n = np.asarray(step_map), np.asarray(lengths)
    counts = [len(np.unique(r[:k])) + int(k < sm.shape[1]) for r, k in zip(sm, n)]
    return max(1, -(-max(counts, default=1) // shrink))


def build_full_rows(prompt_ids: jax.Array, prompt_valid: jax.Array, response_ids: jax.Array, step_map: jax.Array,
                    response_lengths: jax.Array, *, mask_id: int, pad_id: int, family: str, shrink: int = 1,
                    post_num: Optional[int] = 0, scorable: Optional[jax.Array] = None,
                    has_step_map: Optional[jax.Array] = None, max_rounds: Optional[int] = None,
                    compat: str = "recommended") -> FullRows:
    """TraceRL rows for full-attention models (§5), one per (response, step group).

    Steps: align the step map to ``L1`` (§4.1: positions past a response's
    length form one final step), shrink it over the whole response, one row
    per group in ascending order; ``p_mask`` = the group's tokens that are
    ``scorable`` and trainable by the per-sequence ``post_num`` rule (tail
    pads are masked in the input but never scored). Row ``n*T + t`` is group
    ``t`` of response ``n``. Jittable core; the keyword arguments are static.

    Args:
      prompt_ids: int ``[N, L0]`` left-padded prompts; prompt_valid: bool ``[N, L0]``.
      response_ids: int ``[N, L1]``.
      step_map: int ``[N, L1]`` step ids (any increasing ids: the sampler's
        1-based ones or the reference's 0-based ones; only the order matters).
      response_lengths: int ``[N]`` positions that carry a step id.
      mask_id, pad_id: token ids; family: ``"llada"`` or ``"dream"``.
      shrink: steps merged per row (the reference default is 8).
      post_num: ``PAD`` tokens kept for training per response (None: all).
      scorable: optional bool ``[N, L1]`` tokens that may be scored (e.g. the
        completion); default all.
      has_step_map: optional bool ``[N]``; False -> left-to-right order.
      max_rounds: rows per response ``T`` (static). Default: the most groups
        any response has (computed on the host; pass it under ``jit`` or to
        keep shapes fixed across calls).
      compat: positions/padding convention (module docstring).

    Returns:
      :class:`FullRows` with ``R = N * T`` rows.
    """
    _check_options(family, compat, post_num)
    if not isinstance(shrink, (int, np.integer)) or shrink < 1:
        raise ValueError(f"shrink must be an int >= 1, got {shrink!r}")
    trajectory._check_rank("prompt_ids", prompt_ids, 2)
    trajectory._check_rank("response_ids", response_ids, 2)
    N, L0 = np.shape(prompt_ids)
    L1 = np.shape(response_ids)[1]
    trajectory._check_shape("prompt_valid", prompt_valid, (N, L0))
    trajectory._check_shape("response_ids", response_ids, (N, L1))
    trajectory._check_shape("step_map", step_map, (N, L1))
    trajectory._check_shape("response_lengths", response_lengths, (N,))
    if scorable is not None:
        trajectory._check_shape("scorable", scorable, (N, L1))
    if has_step_map is not None:
        trajectory._check_shape("has_step_map", has_step_map, (N,))
    if max_rounds is None:
        max_rounds = max_step_groups(step_map, response_lengths, shrink)
    if not isinstance(max_rounds, (int, np.integer)) or max_rounds < 1:
        raise ValueError(f"max_rounds must be an int >= 1, got {max_rounds!r}")
    # The rounds rule needs positive ids; the reference's 0-based ids are shifted (order is unchanged).
    sm = jnp.asarray(step_map, jnp.int32)
    lengths = jnp.asarray(response_lengths, jnp.int32)
    inside = jnp.arange(L1)[None] < lengths[:, None]
    sm = jnp.where(inside, sm - jnp.min(jnp.where(inside, sm, 1), axis=1, keepdims=True) + 1, 0)
    return _build(jnp.asarray(prompt_ids), jnp.asarray(prompt_valid, bool), jnp.asarray(response_ids), sm, lengths,
                  None if has_step_map is None else jnp.asarray(has_step_map, bool),
                  jnp.ones((N, L1), bool) if scorable is None else jnp.asarray(scorable, bool),
                  mask_id=int(mask_id), pad_id=int(pad_id), shrink=int(shrink), post_num=post_num,
                  max_rounds=int(max_rounds), family=family, compat=compat)


class FullRolloutRows(NamedTuple):
    """Training rows of a full-attention rollout and its per-token masks.

    Attributes:
      rows: :class:`FullRows`.
      completion: bool ``[N, L1]`` response tokens of the completion.
      step_ids: int32 ``[N, L1]`` the aligned, shrunk step map (GAE's steps).
    """

    rows: FullRows
    completion: jax.Array
    step_ids: jax.Array


def rows_from_full_rollout(prompts: jax.Array, prompt_valid: jax.Array, rollout: Rollout, *, mask_id: int,
                           pad_id: int, family: str, shrink: int = 1, post_num: Optional[int] = 0,
                           completion_only: bool = True, max_rounds: Optional[int] = None,
                           compat: str = "recommended") -> FullRolloutRows:
    """TraceRL rows for a rollout of the full-attention sampler, on its own token ids.

    The response is the whole canvas (``L1 = G``: every position was on the
    canvas, as ``MASK`` or token, when each token was decoded, so the trainer
    needs all of it to reproduce the sampler's context). Tokens after the
    completion (after EOS, or an early-stop fill) stay in the rows as context;
    with ``completion_only`` (default) they are not scored. ``compat=
    "reference"`` scores every position but the tail pads, as §5 does.

    Args:
      prompts: int ``[N, L0]`` the prompts given to the sampler; prompt_valid: bool ``[N, L0]``.
      rollout: the sampler's :class:`Rollout`.
      mask_id, pad_id, family, shrink, post_num, max_rounds, compat: as in
        :func:`build_full_rows`. ``max_rounds`` defaults to
        ``ceil((G + 1) / shrink)``, a bound on any rollout's step groups, so
        the shapes never change between RL steps.
      completion_only: score only completion tokens.

    Returns:
      :class:`FullRolloutRows`.
    """
    N, G = rollout.tokens.shape
    lengths = jnp.full((N,), G, jnp.int32)
    completion = jnp.arange(G)[None] < rollout.lengths[:, None]
    scorable = completion if (completion_only and compat != "reference") else None
    if max_rounds is None:
        max_rounds = -(-(G + 1) // shrink)
    rows = build_full_rows(prompts, prompt_valid, rollout.tokens, rollout.step_map, lengths, mask_id=mask_id,
                           pad_id=pad_id, family=family, shrink=shrink, post_num=post_num, scorable=scorable,
                           max_rounds=max_rounds, compat=compat)
    step_ids = full_trace_step_ids(rollout.step_map, lengths, shrink=shrink)
    return FullRolloutRows(rows, completion, step_ids)


# --------------------------------------------------------------------------
# Rows <-> per-token arrays, step-level GAE (value model, §8 on §5 rows)
# --------------------------------------------------------------------------


def full_trace_step_ids(step_map: jax.Array, response_lengths: jax.Array, *, shrink: int = 1,
                        has_step_map: Optional[jax.Array] = None) -> jax.Array:
    """Aligned step map shrunk over the whole response (the steps GAE runs over): int32 ``[N, L1]``."""
    step_map = jnp.asarray(step_map)
    aligned, _ = trajectory.align_step_map(step_map, jnp.asarray(response_lengths), has_step_map)
    return trajectory.shrink_step_map(aligned, step_map.shape[1], shrink)


def scatter_to_full_rows(token_values: jax.Array, rows: FullRows) -> jax.Array:
    """Per-token response values ``[N, L1]`` -> row layout ``[R, L1]`` (0 outside ``p_mask``)."""
    v = token_values[rows.response_index]
    return jnp.where(rows.p_mask & rows.row_valid[:, None], v, jnp.zeros((), v.dtype))


def gather_from_full_rows(row_values: jax.Array, rows: FullRows, num_responses: int) -> jax.Array:
    """Row layout ``[R, L1]`` -> per-token ``[N, L1]``; each token is scored in at most one row."""
    keep = rows.p_mask & rows.row_valid[:, None]
    v = jnp.where(keep, row_values, jnp.zeros((), row_values.dtype))
    return jax.ops.segment_sum(v, rows.response_index, num_segments=num_responses)


def full_step_gae_rows(rows: FullRows, row_values: jax.Array, token_rewards: jax.Array, step_ids: jax.Array,
                       trainable: jax.Array, *, gamma: float = 1.0, lam: float = 1.0):
    """Step-level GAE (§8.4) over the shrunk trace steps of full-attention rows.

    ``V_j^old`` of a token is the value model's output where that token was
    scored (its row's noisy input, read at the token's scoring position);
    :func:`tracerl_jax.advantages.step_gae` runs per response and the results
    are written back at each row's ``p_mask`` positions.

    Args:
      rows: :class:`FullRows` of ``N`` responses.
      row_values: float ``[R, L1]`` (``scoring.trajectory_values``).
      token_rewards, step_ids, trainable: ``[N, L1]`` as in ``advantages.step_gae``.
      gamma, lam: GAE ``γ``, ``λ``.

    Returns:
      ``(advantages, returns)``, float32 ``[R, L1]``, 0 outside ``p_mask``.
    """
    trajectory._check_shape("row_values", row_values, np.shape(rows.p_mask))
    N = np.shape(step_ids)[0]
    values = gather_from_full_rows(jnp.asarray(row_values, jnp.float32), rows, N)
    adv, ret = adv_lib.step_gae(token_rewards, values, step_ids, trainable, gamma=gamma, lam=lam)
    return scatter_to_full_rows(adv, rows), scatter_to_full_rows(ret, rows)
