"""Blockwise (flash-style) attention that skips key tiles the mask rules out.

The TraceRL extended layout ``[prompt L0 | clean L1 | noised L1]`` allows
about a third of its ``N x N`` query/key pairs at ``L1 = 256`` and fewer as
``L1`` grows, yet the dense path (:func:`tracerl_jax.attention.dot_product_attention`
on :func:`~tracerl_jax.attention.dense_mask`) scores all of them. Here the
sequence is cut into query tiles of ``q_tile`` and key tiles of ``k_tile``
positions; for each query tile only the key tiles that can hold an allowed
pair are visited, with an online softmax (running max ``m``, running sum
``l``, unnormalised output) carried across them in float32.

Which tiles to visit is derived from the compact :class:`MaskInfo`, as data,
so one compiled function serves every row layout (extended, block-causal,
causal, bidirectional) and every prompt padding:

* per key tile: the smallest block id of its valid clean keys and the
  sorted block ids of its valid noised keys;
* per query tile: the largest block id of its clean queries and the block
  ids of its noised queries;
* tile pair ``(i, j)`` is visited iff one of the three rules of
  :func:`~tracerl_jax.attention.allowed` can hold between them (clean/clean
  ``kb <= qb``, noised/clean ``kb < qb``, noised/noised: a block id the
  tiles share, found by binary search), for some row of the batch.

The clean tests are conservative (a visited pair may still be fully masked,
it is then masked inside the tile); the noised/noised test is exact, which
matters for packed rows (:func:`~tracerl_jax.attention.packed_info`): their
noised copies interleave block ids, so id *ranges* of two copies overlap
although the copies never see each other. A skipped pair never holds an
allowed key.
Inside a visited tile the mask is the predicate itself, evaluated on the
tile's ``MaskInfo`` slices, so the semantics are exactly those of
``dense_mask`` including dead-row repair: a query with no allowed key (the
online sum stays 0) gets its own value vector, which is what a softmax over
the single self key returns.

The loops are ``lax.fori_loop`` over query tiles and, inside, over that
tile's visit list (a data-dependent trip count), so on CPU and GPU the
skipped tiles cost nothing. A ``jax.custom_vjp`` recomputes the tile scores
in the backward pass from the saved log-sum-exp (the flash-attention
backward), so memory stays ``O(N)`` per head rather than ``O(N^2)``.

Costs to know: the schedule is shared by the batch (a tile pair is visited if
any row needs it); the trip count of a tile loop is data, so a query tile
costs what its own key list costs, no more. Tiles should be a multiple of
the block size for the block structure to skip cleanly; they need not divide
the sequence length (it is padded with invalid keys).

Example::

    info = extended_info(prompt_valid, L1, block_size)          # [B, N] fields
    out = blockwise_attention(q, k, v, info, q_tile=64, k_tile=64)
    # == dot_product_attention(q, k, v, dense_mask(info, info)) up to rounding
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from tracerl_jax.attention import NEG_INF, MaskInfo, allowed

# Block-id sentinels for "no such position in this tile" (real block ids are small).
_BIG = np.int32(2 ** 30)

# Chosen on a 2-core CPU (benchmarks/attention.py: 64x64 beat 32x32 and 128x128 at L1 = 256 and 1024).
DEFAULT_Q_TILE = 64
DEFAULT_K_TILE = 64


class TileSchedule(NamedTuple):
    """Which key tiles each query tile visits.

    Attributes:
      order: int32 ``[nQ, nK]``; row ``i`` lists the key tiles query tile ``i``
        visits first (ascending), then the skipped ones.
      count: int32 ``[nQ]`` number of visited key tiles per query tile.
    """

    order: jax.Array
    count: jax.Array


def _tile_reduce(x: jax.Array, tile: int, fn, init) -> jax.Array:
    """``fn`` over each tile of ``x [B, L]`` (L a multiple of ``tile``) -> ``[B, L/tile]``."""
    B, L = x.shape
    return fn(x.reshape(B, L // tile, tile), axis=-1, initial=init)


def tile_schedule(info: MaskInfo, q_tile: int, k_tile: int) -> TileSchedule:
    """The key tiles each query tile must visit, from per-tile block-id bounds.

    Args:
      info: ``MaskInfo`` with fields ``[B, L]``, ``L`` a multiple of both tiles
        (see :func:`pad_info`); queries and keys are the same positions.
      q_tile, k_tile: tile lengths.

    Returns:
      :class:`TileSchedule`; a skipped pair ``(i, j)`` has no allowed
      query/key pair in any row.
    """
    block, noised, valid = info
    clean_key = valid & ~noised
    noised_key = valid & noised
    # Key tiles [B, nK].
    kc_min = _tile_reduce(jnp.where(clean_key, block, _BIG), k_tile, jnp.min, _BIG)
    # Query tiles [B, nQ].
    qc_max = _tile_reduce(jnp.where(~noised, block, -_BIG), q_tile, jnp.max, -_BIG)
    qn_max = _tile_reduce(jnp.where(noised, block, -_BIG), q_tile, jnp.max, -_BIG)
    q = lambda x: x[:, :, None]
    k = lambda x: x[:, None, :]
    clean_clean = k(kc_min) <= q(qc_max)
    noised_clean = k(kc_min) < q(qn_max)
    noised_noised = _shared_ids(jnp.where(noised, block, -_BIG), jnp.where(noised_key, block, _BIG), q_tile, k_tile)
    need = jnp.any(clean_clean | noised_clean | noised_noised, axis=0)   # [nQ, nK]
    order = jnp.argsort(~need, axis=-1, stable=True).astype(jnp.int32)
    return TileSchedule(order, jnp.sum(need, axis=-1, dtype=jnp.int32))


def _shared_ids(q_ids: jax.Array, k_ids: jax.Array, q_tile: int, k_tile: int) -> jax.Array:
    """bool ``[B, nQ, nK]``: whether query tile ``i`` and key tile ``j`` share an id.

    ``q_ids``/``k_ids`` ``[B, L]`` hold ``-_BIG``/``_BIG`` where a position
    takes no part, so the sentinels never match. Each key tile is sorted and
    every query id binary-searched in it: ``O(B * L * nK * log k_tile)``.
    """
    B, L = k_ids.shape
    nQ, nK = L // q_tile, L // k_tile
    keys = jnp.sort(k_ids.reshape(B, nK, k_tile), axis=-1)
    search = jax.vmap(jax.vmap(jnp.searchsorted, in_axes=(0, None)))         # [B, nK, L]
    pos = jnp.minimum(search(keys, q_ids), k_tile - 1)
    hit = jnp.take_along_axis(keys, pos, axis=-1) == q_ids[:, None, :]
    return jnp.moveaxis(hit.reshape(B, nK, nQ, q_tile).any(-1), 1, 2)


def pad_info(info: MaskInfo, length: int) -> MaskInfo:
    """Pads ``MaskInfo`` fields ``[B, L]`` to ``[B, length]`` with invalid clean positions."""
    B, L = info.block.shape
    if length == L:
        return MaskInfo(*info)
    pad = length - L
    block = jnp.concatenate([info.block, jnp.full((B, pad), -_BIG, info.block.dtype)], axis=1)
    noised = jnp.concatenate([info.noised, jnp.zeros((B, pad), bool)], axis=1)
    valid = jnp.concatenate([info.valid, jnp.zeros((B, pad), bool)], axis=1)
    return MaskInfo(block, noised, valid)


def _slice_info(info: MaskInfo, start, size: int) -> MaskInfo:
    return MaskInfo(*(lax.dynamic_slice_in_dim(x, start, size, axis=1) for x in info))


def _tile_scores(qi, kj, q_info, k_info, scale):
    """Scaled scores ``[B, Hkv, G, tq, tk]`` (float32) and the tile mask ``[B, 1, 1, tq, tk]``."""
    s = jnp.einsum("bhgqd,bhkd->bhgqk", qi, kj, preferred_element_type=jnp.float32) * scale
    return s, allowed(q_info, k_info)[:, None, None]


def _flash_forward(q, k, v, info, sched, q_tile, k_tile):
    """Online-softmax forward over the visited tiles.

    Args: ``q [B, Hkv, G, L, D]``, ``k, v [B, Hkv, L, D]``, ``info`` fields
    ``[B, L]``, ``L`` a multiple of both tiles.

    Returns: ``(out [B, Hkv, G, L, D] in q.dtype, lse [B, Hkv, G, L] f32,
    live [B, Hkv, G, L] bool)``; ``live`` is False on rows with no allowed key
    (their ``out`` is 0 and ``lse`` 0).
    """
    B, Hkv, G, L, D = q.shape
    scale = np.float32(1.0 / np.sqrt(D))

    def q_body(i, carry):
        out, lse, live = carry
        qs = i * q_tile
        qi = lax.dynamic_slice_in_dim(q, qs, q_tile, axis=3)
        q_info = _slice_info(info, qs, q_tile)

        def k_body(t, c):
            m, l, acc = c
            ks = sched.order[i, t] * k_tile
            kj = lax.dynamic_slice_in_dim(k, ks, k_tile, axis=2)
            vj = lax.dynamic_slice_in_dim(v, ks, k_tile, axis=2)
            s, mask = _tile_scores(qi, kj, q_info, _slice_info(info, ks, k_tile), scale)
            s = jnp.where(mask, s, NEG_INF)
            m_new = jnp.maximum(m, jnp.max(s, axis=-1))
            p = jnp.where(mask, jnp.exp(s - m_new[..., None]), 0.0)
            corr = jnp.exp(m - m_new)
            l = l * corr + jnp.sum(p, axis=-1)
            pv = jnp.einsum("bhgqk,bhkd->bhgqd", p.astype(v.dtype), vj, preferred_element_type=jnp.float32)
            return m_new, l, acc * corr[..., None] + pv

        init = (jnp.full((B, Hkv, G, q_tile), NEG_INF, jnp.float32), jnp.zeros((B, Hkv, G, q_tile), jnp.float32),
                jnp.zeros((B, Hkv, G, q_tile, D), jnp.float32))
        m, l, acc = lax.fori_loop(0, sched.count[i], k_body, init)
        ok = l > 0
        safe_l = jnp.where(ok, l, 1.0)
        o = (acc / safe_l[..., None]).astype(q.dtype)
        out = lax.dynamic_update_slice_in_dim(out, o, qs, axis=3)
        lse = lax.dynamic_update_slice_in_dim(lse, jnp.where(ok, m + jnp.log(safe_l), 0.0), qs, axis=3)
        live = lax.dynamic_update_slice_in_dim(live, ok, qs, axis=3)
        return out, lse, live

    init = (jnp.zeros(q.shape, q.dtype), jnp.zeros(q.shape[:-1], jnp.float32), jnp.zeros(q.shape[:-1], bool))
    return lax.fori_loop(0, L // q_tile, q_body, init)


def _flash_backward(q, k, v, info, sched, out, lse, d_out, q_tile, k_tile):
    """Gradients of :func:`_flash_forward`'s ``out`` by recomputing each visited tile."""
    B, Hkv, G, L, D = q.shape
    scale = np.float32(1.0 / np.sqrt(D))
    delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)   # [B, Hkv, G, L]

    def q_body(i, carry):
        dq, dk, dv = carry
        qs = i * q_tile
        qi = lax.dynamic_slice_in_dim(q, qs, q_tile, axis=3)
        doi = lax.dynamic_slice_in_dim(d_out, qs, q_tile, axis=3)
        lse_i = lax.dynamic_slice_in_dim(lse, qs, q_tile, axis=3)
        delta_i = lax.dynamic_slice_in_dim(delta, qs, q_tile, axis=3)
        q_info = _slice_info(info, qs, q_tile)

        def k_body(t, c):
            dq_i, dk, dv = c
            ks = sched.order[i, t] * k_tile
            kj = lax.dynamic_slice_in_dim(k, ks, k_tile, axis=2)
            vj = lax.dynamic_slice_in_dim(v, ks, k_tile, axis=2)
            s, mask = _tile_scores(qi, kj, q_info, _slice_info(info, ks, k_tile), scale)
            p = jnp.where(mask, jnp.exp(s - lse_i[..., None]), 0.0)
            dv_j = jnp.einsum("bhgqk,bhgqd->bhkd", p.astype(doi.dtype), doi, preferred_element_type=jnp.float32)
            dp = jnp.einsum("bhgqd,bhkd->bhgqk", doi, vj, preferred_element_type=jnp.float32)
            ds = p * (dp - delta_i[..., None]) * scale
            dq_i = dq_i + jnp.einsum("bhgqk,bhkd->bhgqd", ds.astype(kj.dtype), kj,
                                     preferred_element_type=jnp.float32)
            dk_j = jnp.einsum("bhgqk,bhgqd->bhkd", ds.astype(qi.dtype), qi, preferred_element_type=jnp.float32)
            dk = lax.dynamic_update_slice_in_dim(dk, lax.dynamic_slice_in_dim(dk, ks, k_tile, axis=2) + dk_j,
                                                 ks, axis=2)
            dv = lax.dynamic_update_slice_in_dim(dv, lax.dynamic_slice_in_dim(dv, ks, k_tile, axis=2) + dv_j,
                                                 ks, axis=2)
            return dq_i, dk, dv

        dq_i = jnp.zeros(qi.shape, jnp.float32)
        dq_i, dk, dv = lax.fori_loop(0, sched.count[i], k_body, (dq_i, dk, dv))
        return lax.dynamic_update_slice_in_dim(dq, dq_i, qs, axis=3), dk, dv

    init = (jnp.zeros(q.shape, jnp.float32), jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32))
    dq, dk, dv = lax.fori_loop(0, L // q_tile, q_body, init)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


@partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _flash(q, k, v, info, sched, q_tile, k_tile):
    out, _, live = _flash_forward(q, k, v, info, sched, q_tile, k_tile)
    return out, live


def _flash_fwd(q, k, v, info, sched, q_tile, k_tile):
    out, lse, live = _flash_forward(q, k, v, info, sched, q_tile, k_tile)
    return (out, live), (q, k, v, info, sched, out, lse)


def _flash_bwd(q_tile, k_tile, res, cts):
    q, k, v, info, sched, out, lse = res
    d_out, _ = cts
    dq, dk, dv = _flash_backward(q, k, v, info, sched, out, lse, d_out, q_tile, k_tile)
    return dq, dk, dv, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def blockwise_attention(q: jax.Array, k: jax.Array, v: jax.Array, info: MaskInfo, *,
                        q_tile: int = DEFAULT_Q_TILE, k_tile: int = DEFAULT_K_TILE) -> jax.Array:
    """Self-attention under the mask of ``info``, visiting only tiles that hold allowed pairs.

    Equals ``dot_product_attention(q, k, v, dense_mask(info, info))`` up to
    float rounding (softmax in float32, GQA, dead rows attend to themselves);
    differentiable in ``q, k, v`` (custom VJP that recomputes the tiles).

    Args:
      q: ``[B, L, H, D]``.
      k: ``[B, L, Hkv, D]``, ``H % Hkv == 0``.
      v: ``[B, L, Hkv, D]``.
      info: ``MaskInfo`` with fields ``[B, L]`` describing the queries, which
        are also the keys (no KV cache).
      q_tile, k_tile: tile lengths (positive ints; the sequence is padded to
        a multiple of their least common multiple).

    Returns:
      ``[B, L, H, D]`` in ``q.dtype``.

    Raises:
      ValueError: on mismatched shapes or a bad tile size.
    """
    B, L, H, D = q.shape
    if k.shape != v.shape or k.shape[0] != B or k.shape[1] != L or k.shape[3] != D:
        raise ValueError(f"k and v must have shape [B, L, Hkv, D] = [{B}, {L}, Hkv, {D}], "
                         f"got {k.shape} and {v.shape}")
    Hkv = k.shape[2]
    if H % Hkv:
        raise ValueError(f"num heads {H} is not a multiple of kv heads {Hkv}")
    for name, t in (("q_tile", q_tile), ("k_tile", k_tile)):
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t <= 0:
            raise ValueError(f"{name} must be a positive int, got {t!r}")
    info = MaskInfo(*info)
    if any(tuple(x.shape) != (B, L) for x in info):
        raise ValueError(f"info fields must have shape [B, L] = [{B}, {L}], got {[x.shape for x in info]}")
    q_tile, k_tile = int(min(q_tile, _round_up(L, 8))), int(min(k_tile, _round_up(L, 8)))
    Lp = _round_up(L, int(np.lcm(q_tile, k_tile)))
    G = H // Hkv
    pad = [(0, 0), (0, Lp - L), (0, 0), (0, 0)]
    qT = jnp.pad(q, pad).reshape(B, Lp, Hkv, G, D).transpose(0, 2, 3, 1, 4)   # [B, Hkv, G, Lp, D]
    kT = jnp.pad(k, pad).transpose(0, 2, 1, 3)                                # [B, Hkv, Lp, D]
    vT = jnp.pad(v, pad).transpose(0, 2, 1, 3)
    pinfo = pad_info(info, Lp)
    sched = tile_schedule(pinfo, q_tile, k_tile)
    out, live = _flash(qT, kT, vT, pinfo, sched, q_tile, k_tile)
    out = out.transpose(0, 3, 1, 2, 4)[:, :L]                                  # [B, L, Hkv, G, D]
    live = live.transpose(0, 3, 1, 2)[:, :L, :, :, None]
    # Dead-row repair (§3.4): the only key of a row with none allowed is the row itself.
    self_v = v.astype(out.dtype)[:, :, :, None, :]
    return jnp.where(live, out, self_v).reshape(B, L, H, D)


def visited_fraction(info: MaskInfo, q_tile: int = DEFAULT_Q_TILE, k_tile: int = DEFAULT_K_TILE) -> float:
    """Fraction of the ``nQ x nK`` tile pairs :func:`blockwise_attention` visits (host-side, for reports)."""
    info = MaskInfo(*info)
    L = info.block.shape[1]
    Lp = _round_up(L, int(np.lcm(q_tile, k_tile)))
    sched = tile_schedule(pad_info(info, Lp), q_tile, k_tile)
    return float(np.sum(np.asarray(sched.count))) / float((Lp // q_tile) * (Lp // k_tile))
