"""Trajectory -> TraceRL training rows for block models (ALGORITHMS.md §3.5, §4).

A rollout gives, per response, the generated token ids and a *step map*: the
1-based global denoising step at which each token was unmasked (0 where there
is no token). TraceRL replays that trajectory: one training row per decoding
round, in which every block simultaneously predicts the tokens it committed at
that round from the context the sampler had just before committing them.

Everything here works on token ids directly (Appendix A.2, no re-tokenising),
is vectorised in ``jnp`` with static shapes and runs under ``jax.jit``:
``R_max = num_responses * max_rounds`` rows are built, with ``row_valid``
marking the ones that exist. :func:`compact_rows` drops the rest on the host.

One rule, one place (DESIGN.md principle 3):

* :func:`masked_at` is the only definition of "token is still MASK just before
  denoising step ``s``"; :func:`noised_copy` applies it. Rows, their ``p_mask``
  and the sampler all derive from it.
* :func:`extended_positions` is §3.5; masks come from
  :func:`tracerl_jax.attention.extended_info` (never an ``N x N`` build here).
* :func:`assemble_rows` turns per-row "masked"/"scored" response masks into the
  extended layout; the TraceRL rounds and the baselines share it.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from tracerl_jax.attention import MaskInfo, extended_info

INT_MAX = int(np.iinfo(np.int32).max)
INT_MIN = int(np.iinfo(np.int32).min)
POST_NUM_SCOPES = ("sequence", "row")
COMPAT = ("recommended", "reference")


class TrainRows(NamedTuple):
    """Training rows in the extended layout ``[prompt L0 | clean L1 | noised L1]``.

    Attributes:
      extended_tokens: int32 ``[R, L0+2*L1]``.
      positions: int32 ``[R, L0+2*L1]`` RoPE positions (§3.5).
      labels: int32 ``[R, L0+L1]`` = ``extended_tokens[:, :L0+L1]``; the label of
        response token ``j`` sits at ``L0+j`` and is predicted by the logit at
        noised position ``L0+L1+j`` (§3.6, see :func:`scored_view`).
      p_mask: bool ``[R, L0+L1]`` tokens to score (False on the prompt).
      mask_info: :class:`MaskInfo` with fields ``[R, L0+2*L1]``.
      response_index: int32 ``[R]`` response each row was built from.
      round_index: int32 ``[R]`` TraceRL round (0-based), or 0/1 for a
        baseline's primary/complementary row.
      row_valid: bool ``[R]`` rows that exist (non-empty ``p_mask``).
    """

    extended_tokens: jax.Array
    positions: jax.Array
    labels: jax.Array
    p_mask: jax.Array
    mask_info: MaskInfo
    response_index: jax.Array
    round_index: jax.Array
    row_valid: jax.Array


# --------------------------------------------------------------------------
# Validation (before tracing: clear errors instead of XLA shape errors)
# --------------------------------------------------------------------------


def _check_rank(name: str, x, ndim: int) -> None:
    if np.ndim(x) != ndim:
        raise ValueError(f"{name} must have rank {ndim}, got shape {np.shape(x)}")


def _check_shape(name: str, x, shape) -> None:
    if tuple(np.shape(x)) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(np.shape(x))}")


def _check_common(block_size: int, post_num, post_num_scope: Optional[str], compat: str) -> str:
    if not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise ValueError(f"block_size must be an int >= 1, got {block_size!r}")
    if post_num is not None and (not isinstance(post_num, (int, np.integer)) or post_num < 0):
        raise ValueError(f"post_num must be None or an int >= 0, got {post_num!r}")
    if compat not in COMPAT:
        raise ValueError(f"compat must be one of {COMPAT}, got {compat!r}")
    scope = post_num_scope or ("row" if compat == "reference" else "sequence")
    if scope not in POST_NUM_SCOPES:
        raise ValueError(f"post_num_scope must be one of {POST_NUM_SCOPES}, got {post_num_scope!r}")
    return scope


# --------------------------------------------------------------------------
# The masking rule
# --------------------------------------------------------------------------


def masked_at(step_ids: jax.Array, threshold: jax.Array) -> jax.Array:
    """Whether a token is still ``MASK`` just before denoising step ``threshold``.

    A token unmasked at step ``s`` (1-based, global) is masked in every model
    input up to and including the forward pass of step ``s``:
    ``masked = step_id >= threshold``. A token without a step id (``<= 0``)
    was never committed and is always masked. Tokens of earlier blocks have
    smaller ids than any step of the current block, so they come out clean.

    Args:
      step_ids: int ``[..., L]``.
      threshold: int, broadcastable to ``step_ids`` (a scalar step, or one per
        position when every block replays its own step, as in TraceRL rows).

    Returns:
      bool ``[..., L]``.
    """
    return (step_ids >= threshold) | (step_ids <= 0)


def noised_copy(response_ids: jax.Array, step_ids: jax.Array, threshold: jax.Array,
                mask_id: int) -> jax.Array:
    """The response as the model saw it just before step ``threshold``.

    ``MASK`` wherever :func:`masked_at` holds, the token elsewhere.
    Shapes as in :func:`masked_at`; returns ``response_ids``' shape.
    """
    response_ids = jnp.asarray(response_ids)
    return jnp.where(masked_at(step_ids, threshold), jnp.asarray(mask_id, response_ids.dtype),
                     response_ids)


# --------------------------------------------------------------------------
# Step maps
# --------------------------------------------------------------------------


def align_step_map(step_map: jax.Array, response_lengths: jax.Array,
                   has_step_map: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
    """Aligns step maps to the padded response length ``L1`` (§4.1).

    Positions ``j >= length`` (right padding, or tokens past the cap) form one
    extra final step ``max(step ids) + 1``. A response with no step map at all
    (``has_step_map`` False) gets the left-to-right map ``[1..L1]`` (the
    reference's ``[0..L1-1]`` shifted to 1-based; rounds only depend on the
    order). A response with a step map but no usable ids (empty, or a
    non-positive id inside its length) is invalid and later skipped (Q-T6).

    Args:
      step_map: int ``[N, L1]``, 1-based ids, 0 where there is no token.
      response_lengths: int ``[N]`` generated tokens per response.
      has_step_map: optional bool ``[N]``; default all True.

    Returns:
      ``(aligned int32 [N, L1], valid bool [N])``. Invalid responses get the
      left-to-right map so downstream arithmetic stays finite.
    """
    N, L1 = step_map.shape
    sm = step_map.astype(jnp.int32)
    j = jnp.arange(L1, dtype=jnp.int32)
    inside = j[None, :] < response_lengths[:, None]
    top = jnp.max(jnp.where(inside, sm, 0), axis=1)
    valid = (response_lengths > 0) & jnp.all(jnp.where(inside, sm > 0, True), axis=1)
    aligned = jnp.where(inside, sm, top[:, None] + 1)
    left_to_right = jnp.broadcast_to(j[None, :] + 1, (N, L1))
    if has_step_map is not None:
        has = jnp.asarray(has_step_map, bool)
        valid = jnp.where(has, valid, True)
        aligned = jnp.where(has[:, None], aligned, left_to_right)
    aligned = jnp.where(valid[:, None], aligned, left_to_right)
    return aligned, valid


def _blocks(x: jax.Array, block_size: int) -> jax.Array:
    """``[N, L] -> [N, nb, b]``. A partial last block is padded with copies of
    its last value, which adds no new distinct step to that block."""
    N, L = x.shape
    nb = -(-L // block_size)
    x = jnp.pad(x, ((0, 0), (0, nb * block_size - L)), mode="edge")
    return x.reshape(N, nb, block_size)


def _step_groups(aligned: jax.Array, block_size: int, shrink: int):
    """Per block: sort the step ids, dense-rank them and cut the distinct ids
    into groups of ``shrink`` (§4.2). Everything is O(b log b) per block.

    Returns ``(sorted_ids, group, group_min, group_max, inverse)``: the first
    four ``[N, nb, b]`` in sorted order; ``inverse`` maps sorted order back.
    """
    v = _blocks(aligned, block_size)
    order = jnp.argsort(v, axis=-1, stable=True)
    sv = jnp.take_along_axis(v, order, axis=-1)
    new = jnp.concatenate([jnp.ones_like(sv[..., :1], bool), sv[..., 1:] != sv[..., :-1]], -1)
    group = (jnp.cumsum(new, axis=-1) - 1) // shrink
    step = group[..., 1:] != group[..., :-1]
    first = jnp.concatenate([jnp.ones_like(step[..., :1]), step], -1)
    last = jnp.concatenate([step, jnp.ones_like(step[..., :1])], -1)
    # sorted ids: a group's min is at its first slot, its max at its last slot
    gmin = lax.cummax(jnp.where(first, sv, INT_MIN), axis=sv.ndim - 1)
    gmax = lax.cummin(jnp.where(last, sv, INT_MAX), axis=sv.ndim - 1, reverse=True)
    inverse = jnp.argsort(order, axis=-1)
    return sv, group, gmin, gmax, inverse


def _unblock(x: jax.Array, inverse: jax.Array, L: int) -> jax.Array:
    N = x.shape[0]
    return jnp.take_along_axis(x, inverse, axis=-1).reshape(N, -1)[:, :L]


def shrink_step_map(aligned: jax.Array, block_size: int, shrink: int = 1) -> jax.Array:
    """``collapse_k_unique`` per response block (§4.2).

    In each block ``[k*b, (k+1)*b)`` the sorted distinct ids are cut into
    consecutive groups of ``shrink`` and every id is replaced by its group's
    largest id, e.g. ``shrink=2``: ``[2,1,2,3] -> [2,2,2,3]``. Ids stay global,
    so their order across blocks is kept (GAE step ranks use these values).

    Args:
      aligned: int ``[N, L1]`` aligned step map.
      block_size: ``b >= 1``.
      shrink: ``>= 1``; 1 is the identity.

    Returns:
      int32 ``[N, L1]``.
    """
    if shrink < 1:
        raise ValueError(f"shrink must be >= 1, got {shrink!r}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size!r}")
    _, _, _, gmax, inv = _step_groups(aligned, block_size, shrink)
    return _unblock(gmax, inv, aligned.shape[1])


def trainable_mask(response_ids: jax.Array, pad_id: int, post_num: Optional[int]) -> jax.Array:
    """Per-sequence ``post_num`` rule (§8.3 ``tau``; §4.4 with Q-T4 fixed).

    A token is trainable unless it equals ``PAD`` and is not among the first
    ``post_num`` ``PAD`` tokens of its response (by position). ``None`` keeps
    everything. Any token equal to ``PAD`` counts, generated or padding.

    Args:
      response_ids: int ``[..., L1]``.

    Returns:
      bool ``[..., L1]``.
    """
    if post_num is None:
        return jnp.ones(response_ids.shape, bool)
    is_pad = response_ids == pad_id
    return ~is_pad | (jnp.cumsum(is_pad, axis=-1) <= post_num)


def apply_post_num(scored: jax.Array, response_ids: jax.Array, pad_id: int,
                   post_num: Optional[int], scope: str) -> jax.Array:
    """Drops ``PAD`` tokens from ``scored`` by the ``post_num`` rule (§4.4).

    ``scope="sequence"`` [RECOMMENDED]: keep a ``PAD`` only if it is among the
    first ``post_num`` ``PAD`` tokens of its *response*. ``scope="row"`` [REF,
    Q-T4]: keep the first ``post_num`` *scored* ``PAD`` tokens of each row, so
    one response can contribute several times ``post_num`` pads.

    Args:
      scored: bool ``[R, L1]``.
      response_ids: int ``[R, L1]`` the row's response.

    Returns:
      bool ``[R, L1]``.
    """
    if post_num is None:
        return scored
    if scope == "sequence":
        return scored & trainable_mask(response_ids, pad_id, post_num)
    padsel = scored & (response_ids == pad_id)
    return scored & ~(padsel & (jnp.cumsum(padsel, axis=-1) > post_num))


# --------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------


def extended_positions(prompt_valid: jax.Array, response_len: int) -> jax.Array:
    """RoPE positions of the extended layout (§3.5).

    Real prompt tokens count from 0; prompt pads get 1 (arbitrary, they are
    masked keys); response token ``j`` gets ``P_real + j`` in both copies,
    the unpadded absolute position used at generation time.

    Args:
      prompt_valid: bool ``[B, L0]``.
      response_len: ``L1``.

    Returns:
      int32 ``[B, L0+2*L1]``.
    """
    pv = prompt_valid.astype(jnp.int32)
    ppos = jnp.where(prompt_valid, jnp.cumsum(pv, axis=1) - 1, 1)
    rpos = jnp.sum(pv, axis=1, keepdims=True) + jnp.arange(response_len, dtype=jnp.int32)[None]
    return jnp.concatenate([ppos, rpos, rpos], axis=1).astype(jnp.int32)


def scored_view(x: jax.Array, prompt_len: int, response_len: int) -> jax.Array:
    """Extended-layout model outputs ``[R, L0+2*L1, ...]`` -> ``[R, L0+L1, ...]``.

    Keeps ``[x[:, :L0], x[:, L0+L1:]]`` (§3.6): the output at noised position
    ``L0+L1+j`` lines up with ``labels[:, L0+j]`` and ``p_mask[:, L0+j]``.
    """
    L0, L1 = prompt_len, response_len
    if x.shape[1] != L0 + 2 * L1:
        raise ValueError(f"x must have length L0+2*L1={L0 + 2 * L1} on axis 1, got {x.shape}")
    return jnp.concatenate([x[:, :L0], x[:, L0 + L1:]], axis=1)


def assemble_rows(prompt_ids: jax.Array, prompt_valid: jax.Array, response_ids: jax.Array,
                  masked: jax.Array, scored: jax.Array, response_index: jax.Array,
                  round_index: jax.Array, row_valid: jax.Array, *, block_size: int,
                  mask_id: int) -> TrainRows:
    """Builds extended-layout rows from per-row response masks.

    Args:
      prompt_ids: int ``[N, L0]`` left-padded; prompt_valid bool ``[N, L0]``.
      response_ids: int ``[N, L1]``.
      masked: bool ``[R, L1]`` response positions replaced by ``MASK`` in the
        noised copy. scored: bool ``[R, L1]`` positions in ``p_mask``.
      response_index, round_index: int ``[R]``; row_valid: bool ``[R]``
        (rows with an empty ``scored`` are marked invalid too).

    Returns:
      :class:`TrainRows` with ``R`` rows.
    """
    L0 = prompt_ids.shape[1]
    L1 = response_ids.shape[1]
    p_ids = prompt_ids[response_index].astype(jnp.int32)
    p_valid = prompt_valid[response_index].astype(bool)
    r_ids = response_ids[response_index].astype(jnp.int32)
    noised = jnp.where(masked, jnp.int32(mask_id), r_ids)
    labels = jnp.concatenate([p_ids, r_ids], axis=1)
    p_mask = jnp.concatenate([jnp.zeros_like(p_valid), scored], axis=1)
    return TrainRows(
        extended_tokens=jnp.concatenate([labels, noised], axis=1),
        positions=extended_positions(p_valid, L1),
        labels=labels,
        p_mask=p_mask,
        mask_info=extended_info(p_valid, L1, block_size),
        response_index=response_index.astype(jnp.int32),
        round_index=round_index.astype(jnp.int32),
        row_valid=row_valid & jnp.any(scored, axis=1),
    )


# --------------------------------------------------------------------------
# TraceRL rounds
# --------------------------------------------------------------------------


def round_masks(aligned: jax.Array, block_size: int, shrink: int, max_rounds: int):
    """The rounds of §4.3 for every block at once.

    Round ``t`` of block ``k`` replays that block's ``t``-th group of
    ``shrink`` distinct step ids: its threshold is the group's first (smallest)
    step id ``s``, the noised copy masks ``masked_at(ids, s)`` and the scored
    tokens are those masked now but not at the next group's threshold. A block
    with fewer groups is fully clean and scores nothing (threshold ``INT_MAX``).

    Args:
      aligned: int32 ``[N, L1]`` aligned step map.
      block_size, shrink: as in :func:`shrink_step_map`.
      max_rounds: number of rounds ``T`` built; groups beyond are dropped.

    Returns:
      ``(masked, selected)``, bool ``[N, T, L1]``.
    """
    N, L1 = aligned.shape
    sv, group, gmin, _, _ = _step_groups(aligned, block_size, shrink)
    t = jnp.arange(max_rounds + 1, dtype=jnp.int32)
    # threshold of block k at round t: min id of group t, INT_MAX if absent
    thr = jnp.min(jnp.where(group[..., None] == t[None, None, None, :], gmin[..., None], INT_MAX),
                  axis=2)  # [N, nb, T+1]
    thr = jnp.repeat(jnp.moveaxis(thr, 2, 1), block_size, axis=2)[:, :, :L1]  # [N, T+1, L1]
    m = masked_at(aligned[:, None, :], thr)
    return m[:, :-1], m[:, :-1] & ~m[:, 1:]


@partial(jax.jit, static_argnames=("block_size", "mask_id", "pad_id", "shrink", "post_num",
                                   "scope", "max_rounds"))
def _build_rows(prompt_ids, prompt_valid, response_ids, step_map, response_lengths,
                has_step_map, *, block_size, mask_id, pad_id, shrink, post_num, scope, max_rounds):
    N, L1 = response_ids.shape
    T = max_rounds
    aligned, valid = align_step_map(step_map, response_lengths, has_step_map)
    masked, selected = round_masks(aligned, block_size, shrink, T)
    resp_rows = jnp.broadcast_to(response_ids[:, None, :], (N, T, L1)).reshape(N * T, L1)
    scored = apply_post_num(selected.reshape(N * T, L1), resp_rows, pad_id, post_num, scope)
    response_index = jnp.repeat(jnp.arange(N, dtype=jnp.int32), T)
    round_index = jnp.tile(jnp.arange(T, dtype=jnp.int32), N)
    return assemble_rows(prompt_ids, prompt_valid, response_ids, masked.reshape(N * T, L1),
                         scored, response_index, round_index, valid[response_index],
                         block_size=block_size, mask_id=mask_id)


def build_rows(prompt_ids: jax.Array, prompt_valid: jax.Array, response_ids: jax.Array,
               step_map: jax.Array, response_lengths: jax.Array, *, block_size: int,
               mask_id: int, pad_id: int, shrink: int = 1, post_num: Optional[int] = 0,
               post_num_scope: Optional[str] = None, compat: str = "recommended",
               has_step_map: Optional[jax.Array] = None,
               max_rounds: Optional[int] = None) -> TrainRows:
    """TraceRL training rows for block models (§4), one per (response, round).

    Steps: align the step map (§4.1), ``shrink`` per block (§4.2), the rounds
    of §4.3 for every block simultaneously (see :func:`round_masks`), the
    ``post_num`` rule (§4.4) and empty-row marking (§4.5). Row ``n*T + t`` is
    round ``t`` of response ``n`` (``T = max_rounds``), so a response's rows
    are consecutive in round order and responses keep their order. Jittable;
    all arguments after ``*`` are static.

    Args:
      prompt_ids: int ``[N, L0]`` left-padded prompts.
      prompt_valid: bool ``[N, L0]`` False at left padding.
      response_ids: int ``[N, L1]`` generated ids, ``pad_id`` after the end.
      step_map: int ``[N, L1]`` 1-based global step ids, 0 where no token.
      response_lengths: int ``[N]``.
      block_size: ``b``; must equal the sampler's block size.
      mask_id, pad_id: token ids.
      shrink: merge this many consecutive steps of a block into one round.
      post_num: ``PAD`` tokens kept for training (``None`` disables the rule).
      post_num_scope: ``"sequence"`` [RECOMMENDED, Q-T4 fixed] or ``"row"``
        [REF]; default from ``compat``.
      compat: ``"recommended"`` or ``"reference"`` (selects the defaults).
      has_step_map: optional bool ``[N]``; False -> left-to-right map.
      max_rounds: rows per response; default ``ceil(b / shrink)``, the most a
        block can need. A smaller bound drops the later rounds' tokens.

    Returns:
      :class:`TrainRows` with ``R = N * max_rounds`` rows.
    """
    scope = _check_common(block_size, post_num, post_num_scope, compat)
    if not isinstance(shrink, (int, np.integer)) or shrink < 1:
        raise ValueError(f"shrink must be an int >= 1, got {shrink!r}")
    _check_rank("prompt_ids", prompt_ids, 2)
    _check_rank("response_ids", response_ids, 2)
    N, L0 = np.shape(prompt_ids)
    L1 = np.shape(response_ids)[1]
    _check_shape("prompt_valid", prompt_valid, (N, L0))
    _check_shape("response_ids", response_ids, (N, L1))
    _check_shape("step_map", step_map, (N, L1))
    _check_shape("response_lengths", response_lengths, (N,))
    if has_step_map is not None:
        _check_shape("has_step_map", has_step_map, (N,))
    if L1 < 1:
        raise ValueError(f"response_ids must have L1 >= 1 columns, got {L1}")
    T = max_rounds if max_rounds is not None else -(-block_size // shrink)
    if not isinstance(T, (int, np.integer)) or T < 1:
        raise ValueError(f"max_rounds must be an int >= 1, got {max_rounds!r}")
    return _build_rows(jnp.asarray(prompt_ids), jnp.asarray(prompt_valid, bool),
                       jnp.asarray(response_ids), jnp.asarray(step_map),
                       jnp.asarray(response_lengths, jnp.int32),
                       None if has_step_map is None else jnp.asarray(has_step_map, bool),
                       block_size=int(block_size), mask_id=int(mask_id), pad_id=int(pad_id),
                       shrink=int(shrink), post_num=post_num, scope=scope, max_rounds=int(T))


def trace_step_ids(step_map: jax.Array, response_lengths: jax.Array, *, block_size: int,
                   shrink: int = 1, has_step_map: Optional[jax.Array] = None):
    """Aligned and shrunk step map as GAE needs it (§8.3): ``(ids [N, L1], valid [N])``."""
    aligned, valid = align_step_map(jnp.asarray(step_map), jnp.asarray(response_lengths),
                                    has_step_map)
    return shrink_step_map(aligned, block_size, shrink), valid


# --------------------------------------------------------------------------
# Rows <-> per-token arrays, host compaction
# --------------------------------------------------------------------------


def scatter_to_rows(token_values: jax.Array, rows: TrainRows) -> jax.Array:
    """Per-token response values ``[N, L1]`` -> row layout ``[R, L0+L1]``.

    Each row gets its response's values at its ``p_mask`` positions, 0
    elsewhere (how §8.4 writes ``R_j``/``A_j`` back).
    """
    L1 = token_values.shape[1]
    L0 = rows.p_mask.shape[1] - L1
    v = token_values[rows.response_index]
    v = jnp.concatenate([jnp.zeros((v.shape[0], L0), v.dtype), v], axis=1)
    return jnp.where(rows.p_mask & rows.row_valid[:, None], v, jnp.zeros((), v.dtype))


def gather_from_rows(row_values: jax.Array, rows: TrainRows, num_responses: int) -> jax.Array:
    """Row layout ``[R, L0+L1]`` -> per-token ``[N, L1]``, summed over rows.

    A token is scored in at most one row, so the sum picks the value of the
    row that scored it (§8.2: ``V_j^old`` from the noised position); unscored
    tokens get 0.
    """
    L0L1 = rows.p_mask.shape[1]
    L1 = (rows.extended_tokens.shape[1] - L0L1)
    keep = rows.p_mask & rows.row_valid[:, None]
    v = jnp.where(keep, row_values, jnp.zeros((), row_values.dtype))[:, L0L1 - L1:]
    return jax.ops.segment_sum(v, rows.response_index, num_segments=num_responses)


def compact_rows(rows: TrainRows, bucket: Optional[int] = None) -> tuple[TrainRows, int]:
    """Host helper: keeps the valid rows (in order), padded to a bucketed count.

    Args:
      rows: :class:`TrainRows` (device or numpy arrays).
      bucket: pad the row count up to a multiple of this (at least one
        bucket), so a few static batch sizes cover every RL step. Padding rows
        repeat the last kept row with ``row_valid`` and ``p_mask`` False.

    Returns:
      ``(numpy TrainRows, number of valid rows)``.
    """
    host = jax.tree.map(np.asarray, rows)
    idx = np.flatnonzero(host.row_valid)
    n = int(idx.size)
    total = n
    if bucket is not None:
        if bucket < 1:
            raise ValueError(f"bucket must be >= 1, got {bucket!r}")
        total = max(1, -(-n // bucket)) * bucket
    fill = idx[-1] if n else 0
    take = np.concatenate([idx, np.full(total - n, fill, idx.dtype)]).astype(np.int64)
    out = jax.tree.map(lambda a: a[take], host)
    pad = np.arange(total) >= n
    return out._replace(row_valid=out.row_valid & ~pad,
                        p_mask=out.p_mask & ~pad[:, None]), n
