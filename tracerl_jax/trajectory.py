"""Trajectory -> TraceRL training rows (docs/algorithms.md §4, §5).

A rollout gives, per response, the generated token ids and a *step map*: the
1-based global denoising step at which each token was unmasked (0 where there
is no token). TraceRL replays that trajectory: one training row per decoding
round, in which every group of positions (a block for block models, the whole
response for full-attention models) predicts the tokens it committed at that
round from the context the sampler had just before committing them.

Everything here works on token ids directly (no re-tokenising), is vectorised
in ``jnp`` with static shapes and runs under ``jax.jit``: ``R = N * T`` rows
are built (``T`` rounds per response), with ``row_valid`` marking the ones that
exist. The rows are :class:`tracerl_jax.rows.Rows` in the layout given (the
extended layout of block models, or a single sequence for LLaDA/Dream).

One rule, one place:

* :func:`masked_at` is the only definition of "token is still MASK just before
  denoising step ``s``"; :func:`noised_copy` applies it. Rows, their ``p_mask``
  and the sampler all derive from it.
* :func:`round_masks` cuts the step ids of each span into rounds, for both
  model families (a span is a block, or the whole response).
* :func:`tracerl_jax.rows.assemble` lays rows out; baselines share it.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from tracerl_jax import rows as rows_lib
from tracerl_jax.rows import ExtendedLayout, Layout, Rows

INT_MAX = int(np.iinfo(np.int32).max)
INT_MIN = int(np.iinfo(np.int32).min)
POST_NUM_SCOPES = ("sequence", "row")
COMPAT = rows_lib.COMPAT


# --------------------------------------------------------------------------
# Validation (before tracing: clear errors instead of XLA shape errors)
# --------------------------------------------------------------------------


def check_options(post_num, post_num_scope: Optional[str], compat: str) -> None:
    """Raises ``ValueError`` for a bad ``post_num``, ``post_num_scope`` or ``compat``."""
    rows_lib.check_post_num(post_num)
    if compat not in COMPAT:
        raise ValueError(f"compat must be one of {COMPAT}, got {compat!r}")
    if post_num_scope is not None and post_num_scope not in POST_NUM_SCOPES:
        raise ValueError(f"post_num_scope must be one of {POST_NUM_SCOPES}, got {post_num_scope!r}")


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


def max_step_groups(step_map, lengths, shrink: int) -> int:
    """Host helper: the most step groups any response has over its whole length (rows it needs)."""
    sm, n = np.asarray(step_map), np.asarray(lengths)
    counts = [len(np.unique(r[:k])) + int(k < sm.shape[1]) for r, k in zip(sm, n)]
    return max(1, -(-max(counts, default=1) // shrink))


@partial(jax.jit, static_argnames=("layout", "mask_id", "pad_id", "shrink", "post_num", "scope", "max_rounds"))
def _build_rows(prompt_ids, prompt_valid, response_ids, step_map, response_lengths, has_step_map, scorable, *,
                layout, mask_id, pad_id, shrink, post_num, scope, max_rounds):
    N, L1 = response_ids.shape
    T = max_rounds
    aligned, valid = align_step_map(step_map, response_lengths, has_step_map)
    masked, selected = round_masks(aligned, layout.round_span or L1, shrink, T)
    idx = jnp.repeat(jnp.arange(N, dtype=jnp.int32), T)
    scored = apply_post_num(selected.reshape(N * T, L1), response_ids[idx], pad_id, post_num, scope)
    if scorable is not None:
        scored = scored & scorable[idx]
    return rows_lib.assemble(prompt_ids, prompt_valid, response_ids, masked.reshape(N * T, L1), scored, idx,
                             jnp.tile(jnp.arange(T, dtype=jnp.int32), N), valid[idx], layout=layout,
                             mask_id=mask_id)


def default_post_num_scope(layout: Layout, compat: str) -> str:
    """``"row"`` for the block reference (Q-T4), else ``"sequence"`` (the full-attention trainer counts
    pads per sequence in both modes, §5)."""
    return "row" if compat == "reference" and isinstance(layout, ExtendedLayout) else "sequence"


def build_rows(prompt_ids: jax.Array, prompt_valid: jax.Array, response_ids: jax.Array, step_map: jax.Array,
               response_lengths: jax.Array, *, layout: Layout | None = None, block_size: int | None = None,
               mask_id: int, pad_id: int, shrink: int = 1, post_num: Optional[int] = 0,
               post_num_scope: Optional[str] = None, compat: str = "recommended",
               scorable: Optional[jax.Array] = None, has_step_map: Optional[jax.Array] = None,
               max_rounds: Optional[int] = None) -> Rows:
    """TraceRL training rows (§4 block models, §5 full attention), one per (response, round).

    Steps: align the step map (§4.1), ``shrink`` per span (§4.2: a span is a
    block of the extended layout, or the whole response of a single-sequence
    layout), the rounds of §4.3 for every span simultaneously (see
    :func:`round_masks`), the ``post_num`` rule (§4.4), an optional
    restriction to ``scorable`` tokens and empty-row marking (§4.5). Row
    ``n*T + t`` is round ``t`` of response ``n`` (``T = max_rounds``), so a
    response's rows are consecutive in round order. Jittable core; the
    keyword arguments are static.

    Args:
      prompt_ids: int ``[N, L0]`` left-padded prompts.
      prompt_valid: bool ``[N, L0]`` False at left padding.
      response_ids: int ``[N, L1]`` generated ids, ``pad_id`` after the end.
      step_map: int ``[N, L1]`` 1-based global step ids, 0 where no token.
        A single-sequence layout takes any increasing ids (e.g. the
        reference's 0-based ones; only their order matters).
      response_lengths: int ``[N]`` positions that carry a step id.
      layout: :class:`~tracerl_jax.rows.ExtendedLayout` (block models) or
        :class:`~tracerl_jax.rows.SequenceLayout` (LLaDA/Dream).
      block_size: shorthand for ``layout=ExtendedLayout(block_size)``.
      mask_id, pad_id: token ids.
      shrink: merge this many consecutive steps of a span into one round.
      post_num: ``PAD`` tokens kept for training (``None`` disables the rule).
      post_num_scope: ``"sequence"`` [RECOMMENDED] or ``"row"`` [REF block,
        Q-T4]; default from ``compat`` and the layout.
      compat: ``"recommended"`` or ``"reference"`` (selects that default).
      scorable: optional bool ``[N, L1]`` tokens that may be scored (e.g. the
        completion).
      has_step_map: optional bool ``[N]``; False -> left-to-right map.
      max_rounds: rows per response; default ``ceil(b / shrink)`` for block
        rows (the most a block can need), the most step groups any response
        has for a single sequence (computed on the host: pass it under
        ``jit`` or to keep shapes fixed across calls). A smaller bound drops
        the later rounds' tokens.

    Returns:
      :class:`~tracerl_jax.rows.Rows` with ``R = N * max_rounds`` rows.
    """
    layout = rows_lib.layout_of(layout, block_size)
    check_options(post_num, post_num_scope, compat)
    scope = post_num_scope or default_post_num_scope(layout, compat)
    if not isinstance(shrink, (int, np.integer)) or shrink < 1:
        raise ValueError(f"shrink must be an int >= 1, got {shrink!r}")
    N, L0, L1 = rows_lib.check_response_arrays(
        prompt_ids, prompt_valid, response_ids, per_response=dict(response_lengths=response_lengths,
                                                                  has_step_map=has_step_map),
        per_token=dict(step_map=step_map, scorable=scorable))
    if max_rounds is None:
        max_rounds = (-(-layout.round_span // shrink) if layout.round_span
                      else max_step_groups(step_map, response_lengths, shrink))
    if not isinstance(max_rounds, (int, np.integer)) or max_rounds < 1:
        raise ValueError(f"max_rounds must be an int >= 1, got {max_rounds!r}")
    if layout.round_span and compat != "reference":
        _check_step_ids(step_map, response_lengths, has_step_map)
    sm = jnp.asarray(step_map, jnp.int32)
    lengths = jnp.asarray(response_lengths, jnp.int32)
    if layout.round_span is None:
        # Full-attention step maps may be the reference's 0-based ids: shift them positive (order unchanged).
        inside = jnp.arange(L1)[None] < lengths[:, None]
        sm = jnp.where(inside, sm - jnp.min(jnp.where(inside, sm, 1), axis=1, keepdims=True) + 1, 0)
    return _build_rows(jnp.asarray(prompt_ids), jnp.asarray(prompt_valid, bool), jnp.asarray(response_ids), sm,
                       lengths, None if has_step_map is None else jnp.asarray(has_step_map, bool),
                       None if scorable is None else jnp.asarray(scorable, bool), layout=layout,
                       mask_id=int(mask_id), pad_id=int(pad_id), shrink=int(shrink), post_num=post_num, scope=scope,
                       max_rounds=int(max_rounds))


def _check_step_ids(step_map, response_lengths, has_step_map) -> None:
    """A block step map must hold a positive id at every position inside its response (when the values are
    on the host). The reference silently drops such a response (Q-T6, kept under ``compat="reference"``)."""
    from tracerl_jax.sampling.block_sampler import host_view

    try:
        sm, lengths = host_view(step_map), host_view(response_lengths)
        has = None if has_step_map is None else host_view(has_step_map).astype(bool)
    except jax.errors.TracerArrayConversionError:
        return  # traced by an outer jit: nothing to inspect
    if sm.shape[0] != lengths.shape[0]:
        return  # a multi-process view; each process checks its own rows elsewhere
    inside = np.arange(sm.shape[1])[None] < lengths[:, None]
    bad = np.any(inside & (sm <= 0), axis=1)
    if has is not None:
        bad &= has
    if bad.any():
        n = int(np.flatnonzero(bad)[0])
        raise ValueError(f"step_map of response {n} holds a non-positive step id inside its length "
                         f"{int(lengths[n])} (step ids are 1-based; 0 marks positions without a token); "
                         "compat='reference' skips such responses instead (Q-T6)")


def trace_step_ids(step_map: jax.Array, response_lengths: jax.Array, *, layout: Layout | None = None,
                   block_size: int | None = None, shrink: int = 1, has_step_map: Optional[jax.Array] = None):
    """Aligned and shrunk step map as GAE needs it (§8.3): ``(ids int32 [N, L1], valid bool [N])``.

    Shrinks per span of ``layout`` (a block, or the whole response).
    """
    layout = rows_lib.layout_of(layout, block_size)
    step_map = jnp.asarray(step_map)
    aligned, valid = align_step_map(step_map, jnp.asarray(response_lengths), has_step_map)
    return shrink_step_map(aligned, layout.round_span or step_map.shape[1], shrink), valid


class RolloutRows(NamedTuple):
    """TraceRL rows of a rollout, and what GAE needs of it per response.

    Attributes:
      rows: :class:`~tracerl_jax.rows.Rows`; ``p_mask`` restricted to the
        completion (unless ``completion_only=False``).
      completion: bool ``[N, L1]`` response tokens of the completion (EOS included).
      step_ids: int32 ``[N, L1]`` the aligned, shrunk step map (GAE's steps, §8.3).
    """

    rows: Rows
    completion: jax.Array
    step_ids: jax.Array


def rows_from_rollout(prompts: jax.Array, prompt_valid: jax.Array, rollout, *, layout: Layout | None = None,
                      block_size: int | None = None, mask_id: int, pad_id: int, shrink: int = 1,
                      post_num: Optional[int] = 0, compat: str = "recommended", completion_only: bool = True,
                      response_len: int | None = None, max_rounds: int | None = None,
                      pack: int | None = None) -> RolloutRows:
    """TraceRL rows for a sampler's rollout, on its own token ids.

    The samplers keep the tail of a row's canvas (tokens decoded after the EOS
    or past the budget) as context; the rows keep it too -- masked or clean by
    its step ids like any token -- so each scored token sees exactly the
    canvas it was sampled from, but only completion tokens are scored (all
    but the tail pads with ``completion_only=False``, the full-attention
    reference).

    Args:
      prompts: int ``[N, L0]`` left-padded prompts (as given to the sampler).
      prompt_valid: bool ``[N, L0]``.
      rollout: the sampler's :class:`~tracerl_jax.sampling.Rollout` (``G`` columns).
      layout, block_size, mask_id, pad_id, shrink, post_num, compat: as in
        :func:`build_rows`.
      completion_only: score only completion tokens.
      response_len: ``L1`` (default ``G``, the reference's ``max_gen_length``);
        longer rollouts are cut, shorter padded. A single-sequence layout
        under ``compat="reference"`` collapses the whole step map by
        ``shrink`` before the cut (§5); otherwise the cut comes first.
      max_rounds: as in :func:`build_rows`; default: a bound that holds for
        every rollout of this shape (``ceil(b / shrink)`` per block, or
        ``ceil((G + 1) / shrink)`` over a whole response), so the shapes never
        change between RL steps; with ``pack``, rounded up to a multiple of it.
      pack: block models: ``C`` rounds of a response per packed model input
        (:func:`tracerl_jax.rows.pack_rows`); None: one round per row.

    Returns:
      :class:`RolloutRows`.
    """
    layout = rows_lib.layout_of(layout, block_size)
    G = rollout.tokens.shape[1]
    L1 = G if response_len is None else response_len
    if layout.round_span and L1 % layout.round_span:
        raise ValueError(f"response_len {L1} must be a multiple of block_size {layout.round_span}")
    tokens, steps = rollout.tokens, rollout.step_map
    if L1 < G and layout.round_span is None and compat == "reference":
        # §5 (train/rl_llada.py, rl_dream.py): the whole response's step map is collapsed first and the
        # sequence cut to max_gen_length after, so a group may straddle the cut; the collapsed ids then
        # make one round each (shrink 1). The default cuts first and groups what is left.
        full_decoded = jnp.sum(steps > 0, axis=1).astype(jnp.int32)
        aligned, _ = align_step_map(jnp.asarray(steps), full_decoded)
        steps = jnp.where(steps > 0, shrink_step_map(aligned, G, shrink), 0)
        if max_rounds is None:
            max_rounds = -(-(G + 1) // shrink)  # every group of the whole response may reach into the cut
        shrink = 1
    if L1 < G:
        tokens, steps = tokens[:, :L1], steps[:, :L1]
    elif L1 > G:
        tokens = jnp.pad(tokens, ((0, 0), (0, L1 - G)), constant_values=pad_id)
        steps = jnp.pad(steps, ((0, 0), (0, L1 - G)))
    decoded = jnp.sum(steps > 0, axis=1).astype(jnp.int32)
    completion = jnp.arange(L1)[None] < jnp.minimum(rollout.lengths, L1)[:, None]
    if max_rounds is None:
        max_rounds = -(-(layout.round_span or L1 + 1) // shrink)
    if pack is not None:
        pack = rows_lib.check_copies(pack)
        if not isinstance(layout, ExtendedLayout):
            raise ValueError("pack: only block-model rows (the extended layout) pack; full-attention rows have "
                             "no clean copy to share")
        max_rounds = -(-max_rounds // pack) * pack
    rows = build_rows(prompts, prompt_valid, tokens, steps, decoded, layout=layout, mask_id=mask_id,
                      pad_id=pad_id, shrink=shrink, post_num=post_num, compat=compat,
                      scorable=completion if completion_only else None, max_rounds=max_rounds)
    step_ids, _ = trace_step_ids(steps, decoded, layout=layout, shrink=shrink)
    if pack is not None:
        # Built here, so runs of `pack` rows are rounds of one response: no value checks needed.
        rows = rows_lib._pack_rows(rows, copies=pack, block_size=layout.block_size)
    return RolloutRows(rows, completion, step_ids)
