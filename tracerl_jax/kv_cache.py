"""Functional KV cache: fixed-size buffers, a write cursor and per-slot mask info.

The cache is a pytree (a ``NamedTuple``), so it flows through ``jax.jit``,
``lax.while_loop`` carries and sharding like any array. It holds the keys and
values of *committed* tokens only (docs/algorithms.md §1.6): the forward pass of a
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

A model with scanned layers (``ModelConfig.scan_layers``) runs its layers as
one ``lax.scan``, which needs the layers' buffers as one array it can slice
per iteration: the *stacked* layout holds keys ``[layers, B, Hkv, D, T]``
and values ``[layers, B, Hkv, T, D]`` (the same per-layer buffers with a
leading layer axis). Every function here accepts both layouts
(:attr:`KVCache.stacked` tells them apart), so the samplers never need to
know which one a model uses.
"""

from __future__ import annotations

from typing import NamedTuple, Union

import jax
import jax.numpy as jnp
from jax import lax

from tracerl_jax.attention import MaskInfo


class KVCache(NamedTuple):
    """Keys/values of committed tokens.

    Attributes:
      k: keys after QK-norm and RoPE, transposed (slot index last): a tuple
        of ``layers`` arrays ``[B, Hkv, D, T]`` (per-layer layout), or one
        array ``[layers, B, Hkv, D, T]`` (stacked layout, scanned models).
      v: values: a tuple of ``layers`` arrays ``[B, Hkv, T, D]``, or one
        array ``[layers, B, Hkv, T, D]`` (stacked).
      info: ``MaskInfo`` of the cached slots, fields ``[B, T]``; unwritten
        slots have ``valid=False``.
      length: int32 scalar, number of slots written so far (the write cursor).
    """

    k: Union[tuple[jax.Array, ...], jax.Array]
    v: Union[tuple[jax.Array, ...], jax.Array]
    info: MaskInfo
    length: jax.Array

    @property
    def stacked(self) -> bool:
        """True for the stacked layout (one ``[layers, ...]`` array per K and V)."""
        # A tuple/list is the per-layer layout; anything else (an array, a tracer, a
        # ShapeDtypeStruct from eval_shape) is one stacked buffer.
        return not isinstance(self.k, (tuple, list))

    @property
    def max_len(self) -> int:
        """Slots ``T`` per layer."""
        # Read the shape, never index: v[0] on a stacked array would dispatch a slice.
        return self.v.shape[-2] if self.stacked else self.v[0].shape[2]

    @property
    def num_layers(self) -> int:
        return self.k.shape[0] if self.stacked else len(self.k)


def init(num_layers: int, batch: int, max_len: int, num_kv_heads: int, head_dim: int,
         dtype=jnp.float32, *, stacked: bool = False) -> KVCache:
    """An empty cache.

    Args:
      num_layers, batch, max_len, num_kv_heads, head_dim: buffer dimensions.
      dtype: K/V dtype (usually the model's compute dtype).
      stacked: the stacked layout (for models with ``scan_layers``).

    Returns:
      ``KVCache`` with ``num_layers`` zero key arrays ``[batch, num_kv_heads,
      head_dim, max_len]`` and value arrays ``[batch, num_kv_heads, max_len,
      head_dim]`` (stacked: one key array ``[num_layers, batch, num_kv_heads,
      head_dim, max_len]`` and one value array ``[num_layers, batch,
      num_kv_heads, max_len, head_dim]``), every slot invalid, ``length = 0``.
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
    if stacked:
        return KVCache(jnp.zeros((num_layers,) + kshape, dtype), jnp.zeros((num_layers,) + shape, dtype), info,
                       jnp.zeros((), jnp.int32))
    zeros = tuple(jnp.zeros(kshape, dtype) for _ in range(num_layers))
    return KVCache(zeros, tuple(jnp.zeros(shape, dtype) for _ in range(num_layers)), info,
                   jnp.zeros((), jnp.int32))


def write(cache: KVCache, k, v, info: MaskInfo) -> KVCache:
    """Appends ``Q`` committed slots at the cursor and advances it.

    Args:
      cache: the cache (either layout).
      k, v: new keys/values, ``[layers, B, Q, Hkv, D]`` or a sequence of
        ``layers`` arrays ``[B, Q, Hkv, D]`` (what the model's layers return).
      info: ``MaskInfo`` of the new slots, fields ``[B, Q]``. Written as clean
        (``noised=False``): only final tokens are ever cached.

    Returns:
      The updated cache, in the input cache's layout. Writing past
      ``max_len`` is clamped by ``dynamic_update_slice`` semantics, so
      callers size the cache for the whole canvas up front (the samplers do).
    """
    at = cache.length
    if len(k) != cache.num_layers or len(v) != cache.num_layers:
        raise ValueError(f"k/v must hold {cache.num_layers} layers, got {len(k)} and {len(v)}")
    if cache.stacked:
        k = k if hasattr(k, "shape") else jnp.stack(list(k))
        v = v if hasattr(v, "shape") else jnp.stack(list(v))
        # One update of the whole [L, ...] buffer: the layer axis rides along the batch axes.
        k_new = lax.dynamic_update_slice(cache.k, k.transpose(0, 1, 3, 4, 2).astype(cache.k.dtype),
                                         (0, 0, 0, 0, at))
        v_new = lax.dynamic_update_slice(cache.v, jnp.swapaxes(v, 2, 3).astype(cache.v.dtype), (0, 0, 0, at, 0))
        return KVCache(k_new, v_new, _write_info(cache, info), at + k.shape[2])
    k_new = tuple(lax.dynamic_update_slice(buf, new.transpose(0, 2, 3, 1).astype(buf.dtype), (0, 0, 0, at))
                  for buf, new in zip(cache.k, k))
    v_new = tuple(lax.dynamic_update_slice(buf, jnp.swapaxes(new, 1, 2).astype(buf.dtype), (0, 0, at, 0))
                  for buf, new in zip(cache.v, v))
    return KVCache(k_new, v_new, _write_info(cache, info), at + k[0].shape[1])


def _write_info(cache: KVCache, info: MaskInfo) -> MaskInfo:
    at = cache.length
    clean = MaskInfo(info.block.astype(jnp.int32), jnp.zeros_like(info.noised, bool), info.valid)
    return MaskInfo(*(lax.dynamic_update_slice(a, b, (0, at)) for a, b in zip(cache.info, clean)))


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


def layer_kv(cache: KVCache, layer) -> tuple[jax.Array, jax.Array]:
    """Keys ``[B, Hkv, D, T]`` and values ``[B, Hkv, T, D]`` of one layer.

    ``layer`` is a Python int, or (stacked layout only) a traced int32 scalar.
    """
    return cache.k[layer], cache.v[layer]


def to_layout(cache: KVCache, stacked: bool) -> KVCache:
    """The same cache in the stacked (``True``) or per-layer (``False``) layout.

    The contents are unchanged (the stacked buffers are the per-layer ones with
    a leading layer axis); converting copies the K/V buffers once, so build
    caches in the model's layout (``make_cache``) rather than converting them
    in a loop.
    """
    if cache.stacked == bool(stacked):
        return cache
    if stacked:
        return cache._replace(k=jnp.stack(cache.k), v=jnp.stack(cache.v))
    return cache._replace(k=tuple(cache.k[i] for i in range(cache.num_layers)),
                          v=tuple(cache.v[i] for i in range(cache.num_layers)))
