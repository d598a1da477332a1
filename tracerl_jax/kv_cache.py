"""Functional KV cache: fixed-size buffers, a write cursor and per-slot mask info.

The cache is a pytree (a ``NamedTuple``), so it flows through ``jax.jit``,
``lax.while_loop`` carries and sharding like any array. It holds the keys and
values of *committed* tokens only (ALGORITHMS.md §1.6): the forward pass of a
block being denoised reads the cache but does not write it; once a block is
final its clean K/V are written once, with ``lax.dynamic_update_slice``, at
the cursor. Every batch row shares the cursor (the samplers keep all rows on
one block grid and mark padding through ``info.valid``), so a write is a
single static-shape slice update.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from tracerl_jax.attention import MaskInfo


class KVCache(NamedTuple):
    """Keys/values of committed tokens.

    Attributes:
      k: ``[layers, B, T, Hkv, D]`` keys (after QK-norm and RoPE).
      v: ``[layers, B, T, Hkv, D]`` values.
      info: ``MaskInfo`` of the cached slots, fields ``[B, T]``; unwritten
        slots have ``valid=False``.
      length: int32 scalar, number of slots written so far (the write cursor).
    """

    k: jax.Array
    v: jax.Array
    info: MaskInfo
    length: jax.Array

    @property
    def max_len(self) -> int:
        return self.k.shape[2]


def init(num_layers: int, batch: int, max_len: int, num_kv_heads: int, head_dim: int,
         dtype=jnp.float32) -> KVCache:
    """An empty cache.

    Args:
      num_layers, batch, max_len, num_kv_heads, head_dim: buffer dimensions.
      dtype: K/V dtype (usually the model's compute dtype).

    Returns:
      ``KVCache`` with ``k, v`` of shape ``[num_layers, batch, max_len,
      num_kv_heads, head_dim]`` zeros, every slot invalid, ``length = 0``.
    """
    shape = (num_layers, batch, max_len, num_kv_heads, head_dim)
    info = MaskInfo(
        jnp.zeros((batch, max_len), jnp.int32),
        jnp.zeros((batch, max_len), bool),
        jnp.zeros((batch, max_len), bool),
    )
    return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), info, jnp.zeros((), jnp.int32))


def write(cache: KVCache, k: jax.Array, v: jax.Array, info: MaskInfo) -> KVCache:
    """Appends ``Q`` committed slots at the cursor and advances it.

    Args:
      cache: the cache.
      k, v: ``[layers, B, Q, Hkv, D]`` new keys/values.
      info: ``MaskInfo`` of the new slots, fields ``[B, Q]``. Written as clean
        (``noised=False``): only final tokens are ever cached.

    Returns:
      The updated cache. Writing past ``max_len`` is clamped by
      ``dynamic_update_slice`` semantics, so callers size the cache for the
      whole canvas up front (the samplers do).
    """
    at = cache.length
    k_new = lax.dynamic_update_slice(cache.k, k.astype(cache.k.dtype), (0, 0, at, 0, 0))
    v_new = lax.dynamic_update_slice(cache.v, v.astype(cache.v.dtype), (0, 0, at, 0, 0))
    clean = MaskInfo(info.block.astype(jnp.int32), jnp.zeros_like(info.noised, bool), info.valid)
    new_info = MaskInfo(*(lax.dynamic_update_slice(a, b, (0, at)) for a, b in zip(cache.info, clean)))
    return KVCache(k_new, v_new, new_info, at + k.shape[2])


def layer_kv(cache: KVCache, layer: int) -> tuple[jax.Array, jax.Array]:
    """Keys and values of one layer, each ``[B, T, Hkv, D]``."""
    return cache.k[layer], cache.v[layer]
