"""Random-masking and coupled RL rows, and SFT rows (docs/algorithms.md §9, §10).

The non-trajectory baselines train on the same rows as TraceRL but mask
response tokens at random instead of replaying the sampler's trace. Every
builder here draws per-row response masks and hands them to
:func:`tracerl_jax.rows.assemble`, so layout, positions, attention and the
read positions are exactly those of the TraceRL rows of the same family.

The two families draw their masks by their own reference rules:

* Block models (:class:`~tracerl_jax.rows.ExtendedLayout`, §9.1): one row
  per response (two when coupled); masking ratio by ``ratio`` (Q-T5):
  ``"token"`` [REF] -- per token ``u_t ~ U(lower_p, upper_p)`` and masked iff
  ``v_t <= u_t``, an i.i.d. Bernoulli of mean ``(lower_p+upper_p)/2``;
  ``"block"`` [RECOMMENDED] -- one ``u`` per response block; ``"row"`` -- one
  ``u`` per row. ``post_num`` by ``post_num_scope``.
* Full attention (:class:`~tracerl_jax.rows.SequenceLayout`, §9.2):
  ``num_draws`` rows per response, each with one ratio ``t ~ U(lower_p,
  upper_p)`` and tokens masked with probability ``t`` (strict ``<``); tail
  pads (every ``PAD`` beyond the first ``post_num``) are always masked and
  never scored. For RL pass the response with ``PAD`` after the completion, so
  tokens after EOS are tail pads too.

Randomness is explicit: ``key`` is split into one key per response, so rows
are a deterministic function of the key.
"""

from __future__ import annotations

from functools import partial
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from tracerl_jax import rows as rows_lib
from tracerl_jax.rows import ExtendedLayout, Layout, Rows, SequenceLayout
from tracerl_jax.trajectory import (align_step_map, apply_post_num, check_options, default_post_num_scope,
                                    round_masks, trainable_mask)

RATIOS = ("token", "row", "block")
SEQUENCE_RATIOS = ("token", "row")
ORDERS = ("interleaved", "appended")


def draw_masks(key: jax.Array, num_responses: int, response_len: int, *, block_size: int,
               lower_p: float = 0.1, upper_p: float = 0.9,
               ratio: str = "block") -> tuple[jax.Array, jax.Array]:
    """Random block-model response masks (§9.1; ``ratio`` as in the module docstring).

    Args:
      key: PRNG key.
      num_responses: ``N``; response_len: ``L1``; block_size: ``b``.
      lower_p, upper_p: range of the masking threshold ``u``.
      ratio: ``"token"`` | ``"row"`` | ``"block"``.

    Returns:
      ``(masked bool [N, L1], threshold float32 [N, L1])``: ``threshold`` is
      each token's ``u`` (constant per row/block for those modes), e.g. the
      ``t`` of an MDLM ``1/t`` weighting.
    """
    _check_ratio(ratio, RATIOS, lower_p, upper_p)
    L1, b = response_len, block_size
    nb = -(-L1 // b)

    def one(k):
        ku, kv = jax.random.split(k)
        n = {"token": L1, "row": 1, "block": nb}[ratio]
        u = jax.random.uniform(ku, (n,), jnp.float32, lower_p, upper_p)
        if ratio != "token":  # one threshold per row / per block, shared by its tokens
            u = jnp.repeat(u, L1 if ratio == "row" else b)[:L1]
        return jax.random.uniform(kv, (L1,), jnp.float32) <= u, u

    return jax.vmap(one)(jax.random.split(key, num_responses))


def _check_ratio(ratio, allowed, lower_p, upper_p) -> None:
    if ratio not in allowed:
        raise ValueError(f"ratio must be one of {allowed}, got {ratio!r}")
    if not 0.0 <= lower_p <= upper_p <= 1.0:
        raise ValueError(f"need 0 <= lower_p <= upper_p <= 1, got lower_p={lower_p!r}, upper_p={upper_p!r}")


def _block_masks(key, response_ids, *, block_size, pad_id, lower_p, upper_p, ratio, post_num, scope, coupled,
                 order):
    """§9.1: ``(masked, scored, response_index, round_index)`` of one (or two, coupled) rows per response."""
    N, L1 = response_ids.shape
    masked, _ = draw_masks(key, N, L1, block_size=block_size, lower_p=lower_p, upper_p=upper_p, ratio=ratio)
    idx = jnp.arange(N, dtype=jnp.int32)
    kind = jnp.zeros((N,), jnp.int32)
    if coupled:
        pair = jnp.stack([masked, ~masked], axis=1)  # [N, 2, L1]: primary, complement
        if order == "interleaved":  # Q-T7 fixed: a row and its complement share an optimizer step
            masked = pair.reshape(2 * N, L1)
            idx, kind = jnp.repeat(idx, 2), jnp.tile(jnp.arange(2, dtype=jnp.int32), N)
        else:  # [REF]: all primaries, then all complements
            masked = jnp.moveaxis(pair, 1, 0).reshape(2 * N, L1)
            idx, kind = jnp.tile(idx, 2), jnp.repeat(jnp.arange(2, dtype=jnp.int32), N)
    return masked, apply_post_num(masked, response_ids[idx], pad_id, post_num, scope), idx, kind


def _sequence_masks(key, response_ids, *, pad_id, lower_p, upper_p, post_num, num_draws, coupled):
    """§9.2: ``(masked, scored, response_index, round_index)`` of ``num_draws`` rows (pairs) per response."""
    N, L1 = response_ids.shape
    m = num_draws

    def one(k):  # one scalar ratio per row, strict "<"
        kt, ku = jax.random.split(k)
        t = jax.random.uniform(kt, (m, 1), jnp.float32, lower_p, upper_p)
        return jax.random.uniform(ku, (m, L1), jnp.float32) < t

    drawn = jax.vmap(one)(jax.random.split(key, N))  # [N, m, L1]
    tail = ~trainable_mask(response_ids, pad_id, post_num)[:, None, :]
    masked, scored = drawn | tail, drawn & ~tail
    if coupled:  # each draw, then its complement (interleaved: they share an optimizer step)
        masked = jnp.stack([masked, ~drawn | tail], axis=2).reshape(N, 2 * m, L1)
        scored = jnp.stack([scored, ~drawn & ~tail], axis=2).reshape(N, 2 * m, L1)
    per = masked.shape[1]
    idx = jnp.repeat(jnp.arange(N, dtype=jnp.int32), per)
    return (masked.reshape(N * per, L1), scored.reshape(N * per, L1), idx,
            jnp.tile(jnp.arange(per, dtype=jnp.int32), N))


@partial(jax.jit, static_argnames=("layout", "mask_id", "pad_id", "lower_p", "upper_p", "ratio", "post_num",
                                   "scope", "num_draws", "coupled", "order"))
def _random_rows(key, prompt_ids, prompt_valid, response_ids, response_valid, *, layout, mask_id, pad_id,
                 lower_p, upper_p, ratio, post_num, scope, num_draws, coupled, order):
    if isinstance(layout, ExtendedLayout):
        masked, scored, idx, kind = _block_masks(key, response_ids, block_size=layout.block_size, pad_id=pad_id,
                                                 lower_p=lower_p, upper_p=upper_p, ratio=ratio, post_num=post_num,
                                                 scope=scope, coupled=coupled, order=order)
    else:
        masked, scored, idx, kind = _sequence_masks(key, response_ids, pad_id=pad_id, lower_p=lower_p,
                                                    upper_p=upper_p, post_num=post_num, num_draws=num_draws,
                                                    coupled=coupled)
    return rows_lib.assemble(prompt_ids, prompt_valid, response_ids, masked, scored, idx, kind,
                             response_valid[idx], layout=layout, mask_id=mask_id)


def random_masking_rows(key: jax.Array, prompt_ids: jax.Array, prompt_valid: jax.Array, response_ids: jax.Array,
                        *, layout: Layout | None = None, block_size: int | None = None, mask_id: int,
                        pad_id: int, lower_p: float = 0.1, upper_p: float = 0.9, ratio: Optional[str] = None,
                        num_draws: int = 1, coupled: bool = False, order: Optional[str] = None,
                        post_num: Optional[int] = 0, post_num_scope: Optional[str] = None,
                        compat: str = "recommended", response_valid: Optional[jax.Array] = None) -> Rows:
    """``random_masking`` rows (§9.1 block models, §9.2 full attention); ``coupled`` adds complements.

    Block models: one row per response, the drawn positions masked in the
    noised copy (unmasked tokens of the same block stay clean as in-block
    context), ``p_mask`` = the drawn tokens after the ``post_num`` rule. Full
    attention: ``num_draws`` rows per response (the reference's
    ``mask_times_per_sample``: 35 for RL; LLaDA SFT uses 1). ``coupled``: each
    draw's complementary row masks and scores exactly the positions the draw
    left visible, so a pair scores every trainable token once; both rows
    carry the response's reward. Empty rows are marked invalid.

    Args:
      key: PRNG key.
      prompt_ids: int ``[N, L0]`` left-padded; prompt_valid: bool ``[N, L0]``.
      response_ids: int ``[N, L1]``.
      layout / block_size: the rows' layout (``block_size`` is shorthand for
        ``ExtendedLayout(block_size)``).
      mask_id, pad_id: token ids.
      lower_p, upper_p: masking range (the reference's defaults).
      ratio: block models ``"token"`` | ``"row"`` | ``"block"`` (default
        ``"token"`` under ``compat="reference"``, Q-T5, else ``"block"``); full
        attention draws one ratio per row (``None`` or ``"row"``).
      num_draws: rows per response (full attention only).
      coupled: add the complementary rows.
      order: coupled block rows: ``"interleaved"`` [RECOMMENDED, Q-T7 fixed]
        (rows ``2n, 2n+1`` are response ``n``'s pair) or ``"appended"`` [REF]
        (all primaries, then all complements); default from ``compat``.
        Full-attention pairs are always interleaved.
      post_num, post_num_scope, compat: as in
        :func:`tracerl_jax.trajectory.build_rows`.
      response_valid: optional bool ``[N]``; False rows are marked invalid.

    Returns:
      :class:`~tracerl_jax.rows.Rows`. Block models: ``R = N`` (``2N``
      coupled; ``round_index`` 0 primary, 1 complement). Full attention:
      ``R = N * num_draws`` (``2 N num_draws`` coupled), a response's rows
      consecutive, ``round_index`` = draw (``2 draw + {0, 1}`` coupled).
    """
    layout = rows_lib.layout_of(layout, block_size)
    check_options(post_num, post_num_scope, compat)
    N, _, _ = rows_lib.check_response_arrays(prompt_ids, prompt_valid, response_ids,
                                             per_response=dict(response_valid=response_valid))
    if isinstance(layout, ExtendedLayout):
        ratio = ratio or ("token" if compat == "reference" else "block")
        _check_ratio(ratio, RATIOS, lower_p, upper_p)
        if num_draws != 1:
            raise ValueError(f"num_draws={num_draws!r}: block-model baselines draw one row per response (§9.1)")
        order = order or ("appended" if compat == "reference" else "interleaved")
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    else:
        if ratio not in (None, "row"):
            raise ValueError(f"ratio={ratio!r}: full-attention baselines draw one masking ratio per row (§9.2); "
                             "leave it None (or 'row')")
        _check_ratio("row", SEQUENCE_RATIOS, lower_p, upper_p)
        if not isinstance(num_draws, (int, np.integer)) or isinstance(num_draws, bool) or num_draws < 1:
            raise ValueError(f"num_draws must be an int >= 1, got {num_draws!r}")
        if order not in (None, "interleaved"):
            raise ValueError(f"order={order!r}: full-attention coupled pairs are interleaved")
        ratio, order = "row", "interleaved"
    scope = post_num_scope or default_post_num_scope(layout, compat)
    rv = jnp.ones((N,), bool) if response_valid is None else jnp.asarray(response_valid, bool)
    return _random_rows(key, jnp.asarray(prompt_ids), jnp.asarray(prompt_valid, bool), jnp.asarray(response_ids),
                        rv, layout=layout, mask_id=int(mask_id), pad_id=int(pad_id), lower_p=float(lower_p),
                        upper_p=float(upper_p), ratio=ratio, post_num=post_num, scope=scope,
                        num_draws=int(num_draws), coupled=bool(coupled), order=order)


def coupled_rows(key: jax.Array, prompt_ids: jax.Array, prompt_valid: jax.Array, response_ids: jax.Array,
                 **kwargs) -> Rows:
    """``coupled`` rows (§9): :func:`random_masking_rows` with ``coupled=True`` (same arguments)."""
    return random_masking_rows(key, prompt_ids, prompt_valid, response_ids, coupled=True, **kwargs)


# --------------------------------------------------------------------------
# SFT rows (§10)
# --------------------------------------------------------------------------


@partial(jax.jit, static_argnames=("layout", "mask_id", "pad_id", "group", "max_groups", "lower_p", "upper_p",
                                   "post_num", "ratio"))
def _grouped_rows(key, prompt_ids, prompt_valid, response_ids, step_map, lengths, *, layout, mask_id, pad_id,
                  group, max_groups, lower_p, upper_p, post_num, ratio):
    N, L1 = response_ids.shape
    T = max_groups
    aligned, valid = align_step_map(step_map, lengths)
    later, current = round_masks(aligned, L1, group, T)  # current: group t; later: t and after

    def one(k):
        ku, kv = jax.random.split(k)
        u = jax.random.uniform(ku, (T, L1 if ratio == "token" else 1), jnp.float32, lower_p, upper_p)
        return jax.random.uniform(kv, (T, L1), jnp.float32) < u

    drawn = jax.vmap(one)(jax.random.split(key, N)) & current  # [N, T, L1]
    masked = (later & ~current) | drawn
    scored = drawn & trainable_mask(response_ids, pad_id, post_num)[:, None, :]
    idx = jnp.repeat(jnp.arange(N, dtype=jnp.int32), T)
    return rows_lib.assemble(prompt_ids, prompt_valid, response_ids, masked.reshape(N * T, L1),
                             scored.reshape(N * T, L1), idx, jnp.tile(jnp.arange(T, dtype=jnp.int32), N),
                             valid[idx], layout=layout, mask_id=mask_id)


def semi_ar_sft_rows(key: jax.Array, prompt_ids: jax.Array, prompt_valid: jax.Array, response_ids: jax.Array,
                     *, layout: Layout | None = None, block_size: int | None = None, mask_id: int, pad_id: int,
                     group_size: int = 16, step_map: Optional[jax.Array] = None, lower_p: float = 0.1,
                     upper_p: float = 0.9, ratio: Optional[str] = None, post_num: Optional[int] = 0,
                     post_num_scope: Optional[str] = None, compat: str = "recommended") -> Rows:
    """``semi-ar`` SFT rows (§10.1 block models, §10.2 full attention). Train them with ``losses.masked_nll``.

    Block models: the rows of :func:`random_masking_rows` (one row per
    example, random in-block masks, ``p_mask`` = masked tokens; per-row
    ``post_num`` under ``compat="reference"``). Full attention: the step map
    (default left to right) is cut into groups of ``group_size`` consecutive
    steps; group ``g``'s row keeps earlier groups clean, masks later groups
    entirely and masks each token of group ``g`` with probability ``u``;
    ``p_mask`` = the masked tokens of group ``g`` minus the tail pads.

    Args:
      key: PRNG key.
      prompt_ids, prompt_valid, response_ids: as :func:`random_masking_rows`.
      layout / block_size, mask_id, pad_id, compat: the rows (as there).
      group_size: steps per group (full attention; the reference default is
        16, its ``block_size``).
      step_map: optional int ``[N, L1]`` increasing ids (full attention);
        default ``[1..L1]``.
      lower_p, upper_p: range of the masking ratio.
      ratio: block models as :func:`random_masking_rows`; full attention
        ``"token"`` [REF] (one ``u`` per token, Q-T5) or ``"row"`` (one per
        row, the default unless ``compat="reference"``).
      post_num, post_num_scope: the pad rule.

    Returns:
      :class:`~tracerl_jax.rows.Rows`: ``N`` rows (block models) or
      ``N * ceil(max steps / group_size)`` (full attention).
    """
    layout = rows_lib.layout_of(layout, block_size)
    if isinstance(layout, ExtendedLayout):
        if step_map is not None:
            raise ValueError("step_map applies to full-attention semi-ar rows only")
        return random_masking_rows(key, prompt_ids, prompt_valid, response_ids, layout=layout, mask_id=mask_id,
                                   pad_id=pad_id, lower_p=lower_p, upper_p=upper_p, ratio=ratio,
                                   post_num=post_num, post_num_scope=post_num_scope, compat=compat)
    check_options(post_num, post_num_scope, compat)
    if post_num_scope not in (None, "sequence"):
        raise ValueError("full-attention SFT counts pads per sequence (post_num_scope None or 'sequence')")
    ratio = ratio or ("token" if compat == "reference" else "row")
    _check_ratio(ratio, SEQUENCE_RATIOS, lower_p, upper_p)
    if not isinstance(group_size, (int, np.integer)) or group_size < 1:
        raise ValueError(f"group_size must be an int >= 1, got {group_size!r}")
    N, _, L1 = rows_lib.check_response_arrays(prompt_ids, prompt_valid, response_ids,
                                              per_token=dict(step_map=step_map))
    if step_map is None:
        step_map = jnp.broadcast_to(jnp.arange(1, L1 + 1, dtype=jnp.int32), (N, L1))
    return _grouped_rows(key, jnp.asarray(prompt_ids), jnp.asarray(prompt_valid, bool), jnp.asarray(response_ids),
                         jnp.asarray(step_map, jnp.int32), jnp.full((N,), L1, jnp.int32), layout=layout,
                         mask_id=int(mask_id), pad_id=int(pad_id), group=int(group_size),
                         max_groups=-(-L1 // int(group_size)), lower_p=float(lower_p), upper_p=float(upper_p),
                         post_num=post_num, ratio=ratio)


def ar_sft_rows(prompt_ids: jax.Array, prompt_valid: jax.Array, response_ids: jax.Array, *, pad_id: int,
                post_num: Optional[int] = 0) -> Rows:
    """``ar`` SFT rows (Dream only, §10.2): next-token prediction under a causal mask.

    One clean row per example; prompt pads are masked keys, every trainable
    response token is scored (with the Dream shift, the output at ``L0+j-1``
    predicts token ``j``).

    Args:
      prompt_ids: int ``[N, L0]`` left-padded; prompt_valid: bool ``[N, L0]``.
      response_ids: int ``[N, L1]``.
      pad_id, post_num: the per-sequence pad rule.

    Returns:
      :class:`~tracerl_jax.rows.Rows` with ``R = N`` rows and a causal ``mask_info``.
    """
    rows_lib.check_post_num(post_num)
    N, _, L1 = rows_lib.check_response_arrays(prompt_ids, prompt_valid, response_ids)
    response_ids = jnp.asarray(response_ids)
    return rows_lib.assemble(jnp.asarray(prompt_ids), jnp.asarray(prompt_valid, bool), response_ids,
                             jnp.zeros((N, L1), bool), trainable_mask(response_ids, pad_id, post_num),
                             jnp.arange(N), jnp.zeros((N,), jnp.int32), jnp.ones((N,), bool),
                             layout=SequenceLayout("dream", pad_id=pad_id, causal=True), mask_id=0)

