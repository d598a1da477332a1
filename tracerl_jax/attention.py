"""Attention masks and attention for block-diffusion and full-attention models.

Every mask in the library comes from one predicate over per-position vectors,
so the sampler and the trainer agree by construction (DESIGN.md principle 3).
Each query and key position carries a :class:`MaskInfo` entry:

* ``block``  -- int32 block order. Smaller means earlier. For block models this
  is the block index on the generation grid (prompt blocks right-aligned to the
  prompt end come first, response blocks after); for a causal mask it is the
  position; for full attention it is constant.
* ``noised`` -- bool, True for tokens of the block being denoised (the noised
  copy of the TraceRL extended layout, or the current block in the sampler).
* ``valid``  -- bool, False for padding keys (left-padded prompt tokens) and
  for unwritten KV-cache slots.

``allowed(q, k)`` holds iff ``valid[k]`` and one of

* clean query, clean key:   ``block[k] <= block[q]``  (block-causal, own block bidirectional)
* noised query, clean key:  ``block[k] <  block[q]``  (strictly earlier committed blocks)
* noised query, noised key: ``block[k] == block[q]``  (own noised block, bidirectional)

A clean query never sees a noised key. With ``noised`` all False this reduces
to block-causal (generation mask, docs/algorithms.md §3.1), causal (``block`` =
position) or bidirectional (``block`` constant). With the TraceRL extended
layout it is the table of §3.3. A query left with no allowed key (a row of
pure padding) is given itself as its only key, as ``process_pad`` does (§3.4),
so softmax never sees an empty row.

The compact description (two ``MaskInfo``) is what a block-sparse kernel
consumes; :func:`dense_mask` materialises ``[B, 1, Q, K]`` booleans for the
XLA path. :func:`self_attention` takes the compact form and picks the dense
path, the tile-skipping one (:mod:`tracerl_jax.blockwise_attention`) or
Pallas splash attention on TPU (:mod:`tracerl_jax.splash_attention`).
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

# Large finite negative for masked logits: -inf would make fully masked rows
# NaN; this keeps them finite (docs/algorithms.md §3.4 [RECOMMENDED]).
NEG_INF = -0.7 * float(np.finfo(np.float32).max)


class MaskInfo(NamedTuple):
    """Per-position attention attributes; every field has shape ``[B, L]``.

    Attributes:
      block: int32 ``[B, L]`` block order (see module docstring).
      noised: bool ``[B, L]`` whether the position holds a noised (being
        denoised) token.
      valid: bool ``[B, L]`` whether the position may be attended to as a key.
    """

    block: jax.Array
    noised: jax.Array
    valid: jax.Array

    def concat(self, other: "MaskInfo") -> "MaskInfo":
        """Concatenates along the length axis: ``[B, L1] + [B, L2] -> [B, L1+L2]``."""
        return MaskInfo(*(jnp.concatenate([a, b], axis=1) for a, b in zip(self, other)))


Mask = Union[jax.Array, tuple]


def allowed(q: MaskInfo, k: MaskInfo) -> jax.Array:
    """The attention predicate, without dead-row repair.

    Args:
      q: ``MaskInfo`` of the queries, fields ``[B, Q]``.
      k: ``MaskInfo`` of the keys, fields ``[B, K]``.

    Returns:
      bool ``[B, Q, K]``.
    """
    qb = q.block[:, :, None]
    kb = k.block[:, None, :]
    qn = q.noised[:, :, None]
    kn = k.noised[:, None, :]
    clean_rule = jnp.where(qn, kb < qb, kb <= qb)
    rule = jnp.where(kn, qn & (kb == qb), clean_rule)
    return rule & k.valid[:, None, :]


def dense_mask(q: MaskInfo, k: MaskInfo, q_offset: Optional[jax.Array] = None) -> jax.Array:
    """Materialises the predicate with dead-row repair as ``[B, 1, Q, K]`` bool.

    Dead-row repair gives a query with no allowed key exactly one key: itself.
    That needs to know which key is the query; ``q_offset`` is the key index of
    query 0 (queries are assumed contiguous among the keys). When ``None`` the
    queries are the first ``Q`` keys (self-attention over one sequence). A
    repaired row's output is never used (it is padding); repair only keeps the
    softmax finite and reproduces the reference mask exactly.

    Args:
      q: query ``MaskInfo`` ``[B, Q]``.
      k: key ``MaskInfo`` ``[B, K]``.
      q_offset: optional int scalar, key index of the first query.

    Returns:
      bool ``[B, 1, Q, K]``.
    """
    m = allowed(q, k)
    Q, K = m.shape[1], m.shape[2]
    off = 0 if q_offset is None else q_offset
    is_self = (jnp.arange(K)[None, :] == (jnp.arange(Q)[:, None] + off))[None]
    dead = ~jnp.any(m, axis=-1, keepdims=True)
    m = m | (dead & is_self)
    return m[:, None]


# --------------------------------------------------------------------------
# MaskInfo builders: one per layout. Each returns fields of shape [B, L].
# --------------------------------------------------------------------------


def block_ids_right_aligned(length: int, end: int, block_size: int) -> np.ndarray:
    """Block order of positions ``0..length-1`` for a grid whose boundaries sit
    at ``end - k*block_size``. Prompt blocks are right-aligned this way (§3.3);
    the block containing ``end`` (exclusive) gets id ``0`` and earlier blocks
    negative ids. Returns int32 ``[length]``."""
    idx = np.arange(length)
    return np.floor_divide(idx - end, block_size).astype(np.int32)


def generation_info(valid: jax.Array, block_size: int, grid_start: int | jax.Array = 0) -> MaskInfo:
    """Block-causal ``MaskInfo`` for clean tokens on the generation grid.

    Position ``c`` has block ``floor((c - grid_start) / block_size)``; the
    sampler passes ``grid_start`` = the prompt end in the canvas so prompt
    blocks are right-aligned exactly as the trainer's (§3.3).

    Args:
      valid: bool ``[B, L]``, False at padding.
      block_size: ``b``.
      grid_start: canvas index of a block boundary.

    Returns:
      ``MaskInfo`` with fields ``[B, L]``.
    """
    B, L = valid.shape
    block = jnp.floor_divide(jnp.arange(L, dtype=jnp.int32) - grid_start, block_size)
    block = jnp.broadcast_to(block[None], (B, L)).astype(jnp.int32)
    return MaskInfo(block, jnp.zeros((B, L), bool), valid)


def full_info(valid: jax.Array) -> MaskInfo:
    """Bidirectional ``MaskInfo`` (LLaDA/Dream): everything sees every valid key.

    Args:
      valid: bool ``[B, L]``.
    """
    z = jnp.zeros(valid.shape, jnp.int32)
    return MaskInfo(z, jnp.zeros(valid.shape, bool), valid)


def causal_info(valid: jax.Array) -> MaskInfo:
    """Causal ``MaskInfo``: ``block`` = position. Args: valid bool ``[B, L]``."""
    B, L = valid.shape
    block = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32)[None], (B, L))
    return MaskInfo(block, jnp.zeros((B, L), bool), valid)


def extended_info(prompt_valid: jax.Array, response_len: int, block_size: int) -> MaskInfo:
    """``MaskInfo`` of the TraceRL extended layout ``[prompt | clean | noised]``.

    Prompt blocks are right-aligned to the prompt end (block ids < 0), response
    blocks start at the response (ids ``j // b``), the noised copy reuses the
    clean copy's block ids with ``noised=True``. Prompt padding is invalid as
    a key; response padding stays valid (§3.4).

    Args:
      prompt_valid: bool ``[B, L0]``, False at left padding.
      response_len: ``L1``.
      block_size: ``b``.

    Returns:
      ``MaskInfo`` with fields ``[B, L0 + 2*L1]``.
    """
    B, L0 = prompt_valid.shape
    L1 = response_len
    pblk = jnp.asarray(block_ids_right_aligned(L0, L0, block_size))
    rblk = jnp.arange(L1, dtype=jnp.int32) // block_size
    block = jnp.concatenate([pblk, rblk, rblk])[None]
    block = jnp.broadcast_to(block, (B, L0 + 2 * L1))
    noised = jnp.concatenate([jnp.zeros((L0 + L1,), bool), jnp.ones((L1,), bool)])
    noised = jnp.broadcast_to(noised[None], (B, L0 + 2 * L1))
    valid = jnp.concatenate([prompt_valid, jnp.ones((B, 2 * L1), bool)], axis=1)
    return MaskInfo(block, noised, valid)


def packed_info(prompt_valid: jax.Array, response_len: int, block_size: int, copies: int) -> MaskInfo:
    """``MaskInfo`` of packed TraceRL rows ``[prompt | clean | noised copy 0 | ... | copy C-1]``.

    Each noised copy is one TraceRL round of the same response: it sees the
    prompt, the clean blocks before its own block and its own block *in its
    own copy*, never another copy. The predicate stays the one of
    :func:`allowed`; the copies are told apart by the block order alone:
    block ``k`` gets order ``k*S + S-1`` for clean positions (prompt blocks
    included) and ``k*S + c`` in noised copy ``c``, with ``S = C + 1``. Then
    ``kb < qb``, ``kb <= qb`` between a clean key and any query compare the
    blocks ``k`` exactly as unpacked rows do, and ``kb == qb`` between noised
    positions holds only for the same block of the same copy.

    Args:
      prompt_valid: bool ``[B, L0]``, False at left padding.
      response_len: ``L1``.
      block_size: ``b``.
      copies: ``C >= 1`` noised copies (rounds) per row.

    Returns:
      ``MaskInfo`` with fields ``[B, L0 + (C+1)*L1]``.
    """
    B, L0 = prompt_valid.shape
    L1, C = response_len, copies
    S = C + 1
    pblk = jnp.asarray(block_ids_right_aligned(L0, L0, block_size)) * S + (S - 1)
    rblk = jnp.arange(L1, dtype=jnp.int32) // block_size * S
    block = jnp.concatenate([pblk, rblk + (S - 1)] + [rblk + c for c in range(C)])
    N = L0 + (C + 1) * L1
    noised = jnp.concatenate([jnp.zeros((L0 + L1,), bool), jnp.ones((C * L1,), bool)])
    valid = jnp.concatenate([prompt_valid, jnp.ones((B, (C + 1) * L1), bool)], axis=1)
    return MaskInfo(jnp.broadcast_to(block[None], (B, N)).astype(jnp.int32), jnp.broadcast_to(noised[None], (B, N)),
                    valid)


# --------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array,
    *,
    implementation: Optional[str] = None,
) -> jax.Array:
    """Scaled dot-product attention with GQA and a boolean mask.

    Softmax is in float32 whatever the compute dtype (as the reference
    models do). ``implementation=None`` uses the explicit XLA einsum path,
    which is bit-stable across backends and what the parity tests check;
    ``"xla"``/``"cudnn"`` route through ``jax.nn.dot_product_attention``
    (cuDNN flash attention on GPU).

    Args:
      q: ``[B, Q, H, D]``.
      k: ``[B, K, Hkv, D]``, ``H % Hkv == 0``.
      v: ``[B, K, Hkv, D]``.
      mask: bool ``[B, 1 or H, Q, K]``, True where attention is allowed.
      implementation: ``None`` | ``"xla"`` | ``"cudnn"``.

    Returns:
      ``[B, Q, H, D]`` in ``q.dtype``.
    """
    B, Q, H, D = q.shape
    Hkv = k.shape[2]
    if H % Hkv:
        raise ValueError(f"num heads {H} is not a multiple of kv heads {Hkv}")
    if implementation is not None:
        return jax.nn.dot_product_attention(
            q, k, v, mask=mask, implementation=None if implementation == "xla" else implementation
        )
    G = H // Hkv
    qg = q.reshape(B, Q, Hkv, G, D)
    scores = jnp.einsum("bqhgd,bkhd->bhgqk", qg, k, preferred_element_type=jnp.float32)
    scores = scores * (1.0 / np.sqrt(D)).astype(np.float32)
    m = mask.reshape(B, -1, 1, Q, k.shape[1]) if mask.shape[1] == 1 else mask.reshape(B, Hkv, G, Q, -1)
    scores = jnp.where(m, scores, NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bhgqk,bkhd->bqhgd", probs, v)
    return out.reshape(B, Q, H, D)


def cached_attention(q: jax.Array, k: jax.Array, v: jax.Array, past_k: jax.Array, past_v: jax.Array,
                     mask: jax.Array) -> jax.Array:
    """:func:`dot_product_attention` over ``[cached | new]`` keys, reading the cache in place.

    The same function as ``dot_product_attention(q, concat([past, new]),
    ..., mask)`` up to float rounding (one softmax over both parts), without
    building the concatenation: the cache is read by a GEMM batched over
    ``(B, Hkv)`` in its stored layout.

    Args:
      q: ``[B, Q, H, D]``; k, v: ``[B, Q, Hkv, D]`` the new tokens' keys/values.
      past_k: ``[B, Hkv, D, T]``, past_v: ``[B, Hkv, T, D]`` (the
        :mod:`tracerl_jax.kv_cache` layout).
      mask: bool ``[B, 1 or H, Q, T + Q]``, cached slots first.

    Returns:
      ``[B, Q, H, D]`` in ``q.dtype``.
    """
    B, Q, H, D = q.shape
    Hkv, T = past_v.shape[1], past_v.shape[2]
    if H % Hkv:
        raise ValueError(f"num heads {H} is not a multiple of kv heads {Hkv}")
    G = H // Hkv
    qh = q.reshape(B, Q, Hkv, G, D).transpose(0, 2, 3, 1, 4)          # [B, Hkv, G, Q, D], small
    past_k, past_v = past_k.astype(k.dtype), past_v.astype(v.dtype)
    s_past = jnp.einsum("bhgqd,bhdt->bhgqt", qh, past_k, preferred_element_type=jnp.float32)
    s_new = jnp.einsum("bhgqd,bkhd->bhgqk", qh, k, preferred_element_type=jnp.float32)
    scores = jnp.concatenate([s_past, s_new], axis=-1) * (1.0 / np.sqrt(D)).astype(np.float32)
    m = mask.reshape(B, -1, 1, Q, T + Q) if mask.shape[1] == 1 else mask.reshape(B, Hkv, G, Q, -1)
    probs = jax.nn.softmax(jnp.where(m, scores, NEG_INF), axis=-1).astype(v.dtype)
    # Outputs in the GEMMs' natural [B, Hkv, G, Q, D] order; only the small result is transposed.
    out = (jnp.einsum("bhgqt,bhtd->bhgqd", probs[..., :T], past_v)
           + jnp.einsum("bhgqk,bkhd->bhgqd", probs[..., T:], v))
    return out.transpose(0, 3, 1, 2, 4).reshape(B, Q, H, D)


def self_attention(q: jax.Array, k: jax.Array, v: jax.Array, info: MaskInfo, *, implementation: str = "dense",
                   q_tile: int = 64, k_tile: int = 64) -> jax.Array:
    """Self-attention (no KV cache) under the mask of ``info``, by the chosen implementation.

    All implementations compute the same function (``dense_mask(info, info)``
    semantics, float32 softmax, GQA) up to float rounding:

    * ``"dense"``: :func:`dot_product_attention` on :func:`dense_mask`;
    * ``"blockwise"``: visits only tiles that hold allowed pairs
      (:func:`tracerl_jax.blockwise_attention.blockwise_attention`), or on a
      TPU backend with splash importable, splash attention;
    * ``"splash"``: :func:`tracerl_jax.splash_attention.splash_attention`
      (TPU only; block ``k_tile`` rounded up to a multiple of 128).

    Args:
      q: ``[B, L, H, D]``; k, v: ``[B, L, Hkv, D]``.
      info: ``MaskInfo`` with fields ``[B, L]``.
      implementation: ``"dense"`` | ``"blockwise"`` | ``"splash"``.
      q_tile, k_tile: tile lengths of the blockwise/splash paths.

    Returns:
      ``[B, L, H, D]`` in ``q.dtype``.
    """
    if implementation == "dense":
        return dot_product_attention(q, k, v, dense_mask(info, info))
    from tracerl_jax import splash_attention as splash

    if implementation == "splash" or (implementation == "blockwise" and splash.splash_available()):
        return splash.splash_attention(q, k, v, info, block=-(-k_tile // 128) * 128)
    if implementation == "blockwise":
        from tracerl_jax.blockwise_attention import blockwise_attention

        return blockwise_attention(q, k, v, info, q_tile=q_tile, k_tile=k_tile)
    raise ValueError(f"implementation must be 'dense', 'blockwise' or 'splash', got {implementation!r}")
