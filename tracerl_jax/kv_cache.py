"""Functional KV cache: fixed-size buffers, a write cursor and per-slot mask info.

The cache is a pytree (a ``NamedTuple``), so it flows through ``jax.jit``,
``lax.while_loop`` carries and sharding like any array. It holds the keys and
values of *committed* tokens only (ALGORITHMS.md §1.6): the forward pass of a
block being denoised reads the cache but does not write it; once a block is
final its clean K/V are written once, with ``lax.dynamic_update_slice``, at
the cursor. Every batch row shares the cursor (the samplers keep all rows on
one block grid and mark padding through ``info.valid``), so a write is a
single static-shape slice update.

Each layer has its own buffers, head-major: keys ``[B, Hkv, D, T]``
(transposed) and values ``[B, Hkv, T, D]``, so a block's attention against
the cache is two plain GEMMs batched over ``(B, Hkv)``, ``q @ K`` and
``p @ V``, that read the buffers in place. A single token-major
``[layers, B, T, Hkv, D]`` array made XLA:CPU copy and transpose every
layer's slice of the cache for every denoising forward: the sampler ran
1.2x (batch 1) to 1.4x (batch 32) slower with it (benchmarks/README.md,
"KV cache layout").
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
      k: tuple of ``layers`` arrays ``[B, Hkv, D, T]``: keys after QK-norm and
        RoPE, transposed (slot index last).
      v: tuple of ``layers`` arrays ``[B, Hkv, T, D]``: values.
      info: ``MaskInfo`` of the cached slots, fields ``[B, T]``; unwritten
        slots have ``valid=False``.
      length: int32 scalar, number of slots written so far (the write cursor).
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    info: MaskInfo
    length: jax.Array

    @property
    def max_len(self) -> int:
        return self.v[0].shape[2]

    @property
    def num_layers(self) -> int:
        return len(self.k)


def init(num_layers: int, batch: int, max_len: int, num_kv_heads: int, head_dim: int,
         dtype=jnp.float32) -> KVCache:
    """An empty cache.

    Args:
      num_layers, batch, max_len, num_kv_heads, head_dim: buffer dimensions.
      dtype: K/V dtype (usually the model's compute dtype).

    Returns:
      ``KVCache`` with ``num_layers`` zero key arrays ``[batch, num_kv_heads,
      head_dim, max_len]`` and value arrays ``[batch, num_kv_heads, max_len,
      head_dim]``, every slot invalid, ``length = 0``.
    """
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    shape = (batch, num_kv_heads, max_len, head_dim)
    kshape = (batch, num_kv_heads, head_dim, max_len)
    info = MaskInfo(
        jnp.zeros((batch, max_len), jnp.int32),
        jnp.zeros((batch, max_len), bool),
        jnp.zeros((batch, max_len), bool),
    )
    zeros = tuple(jnp.zeros(kshape, dtype) for _ in range(num_layers))
    return KVCache(zeros, tuple(jnp.zeros(shape, dtype) for _ in range(num_layers)), info,
                   jnp.zeros((), jnp.int32))


def write(cache: KVCache, k: jax.Array, v: jax.Array, info: MaskInfo) -> KVCache:
    """Appends ``Q`` committed slots at the cursor and advances it.

    Args:
      cache: the cache.
      k, v: new keys/values, ``[layers, B, Q, Hkv, D]`` or a sequence of
        ``layers`` arrays ``[B, Q, Hkv, D]`` (what the model's layers return).
      info: ``MaskInfo`` of the new slots, fields ``[B, Q]``. Written as clean
        (``noised=False``): only final tokens are ever cached.

    Returns:
      The updated cache. Writing past ``max_len`` is clamped by
      ``dynamic_update_slice`` semantics, so callers size the cache for the
      whole canvas up front (the samplers do).
    """
    at = cache.length
    if len(k) != len(cache.k) or len(v) != len(cache.v):
        raise ValueError(f"k/v must hold {len(cache.k)} layers, got {len(k)} and {len(v)}")
    k_new = tuple(lax.dynamic_update_slice(buf, new.transpose(0, 2, 3, 1).astype(buf.dtype), (0, 0, 0, at))
                  for buf, new in zip(cache.k, k))
    v_new = tuple(lax.dynamic_update_slice(buf, jnp.swapaxes(new, 1, 2).astype(buf.dtype), (0, 0, at, 0))
                  for buf, new in zip(cache.v, v))
    clean = MaskInfo(info.block.astype(jnp.int32), jnp.zeros_like(info.noised, bool), info.valid)
    new_info = MaskInfo(*(lax.dynamic_update_slice(a, b, (0, at)) for a, b in zip(cache.info, clean)))
    return KVCache(k_new, v_new, new_info, at + k[0].shape[1])


def truncate(cache: KVCache, length) -> KVCache:
    """Forgets the slots at and after ``length``: they become invalid and the cursor moves back.

    Lets a forward that wrote ``[final block | block being denoised]`` keep
    only the final block (the samplers' fused cache write): the forgotten
    slots are never attended to and the next write overwrites them.

    Args:
      cache: the cache.
      length: int32 scalar, slots to keep (``<= cache.length``).

    Returns:
      The cache with ``info.valid`` cleared from ``length`` on and
      ``length = min(length, cache.length)``; K/V buffers are unchanged.
    """
    keep = jnp.arange(cache.max_len)[None] < length
    info = cache.info._replace(valid=cache.info.valid & keep)
    return cache._replace(info=info, length=jnp.minimum(cache.length, jnp.asarray(length, jnp.int32)))


def layer_kv(cache: KVCache, layer: int) -> tuple[jax.Array, jax.Array]:
    """Keys ``[B, Hkv, D, T]`` and values ``[B, Hkv, T, D]`` of one layer."""
    return cache.k[layer], cache.v[layer]
