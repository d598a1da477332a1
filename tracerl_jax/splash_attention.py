"""The TPU route of mask-skipping attention: Pallas splash attention.

``jax.experimental.pallas.ops.tpu.splash_attention`` skips fully masked
``block x block`` tiles on TPU. It takes the mask as a ``[heads, Q, K]``
array shared by the batch, plus per-row segment ids. The library's mask is
mapped onto that exactly:

* the *structure* (``block``, ``noised``) is the same for every row in all
  of the library's layouts (:func:`~tracerl_jax.attention.extended_info`,
  ``generation_info``, ``causal_info``, ``full_info`` broadcast it), so the
  ``[Q, K]`` mask is :func:`~tracerl_jax.attention.allowed` on row 0 with
  every key valid: the same predicate, not a second description of it;
* ``valid`` (prompt padding) differs per row and becomes the key segment
  ids: query segment 1 everywhere, key segment 1 where valid, 0 where not,
  so an invalid key is never attended to;
* dead-row repair (a query with no allowed key attends to itself) is applied
  afterwards from the predicate, as :mod:`tracerl_jax.blockwise_attention`
  does.

The mask is data (traced), so the kernel is built with splash's dynamic-mask
path inside the compiled function; fully masked tiles are still skipped.
GQA runs the MQA kernel once per KV head (its ``G`` query heads share it).
Splash does not scale the logits; ``q`` is scaled by ``1/sqrt(D)`` first.

On CPU the kernel runs in Pallas interpret mode (``interpret=True``), which is
how the tests check it; it is slow and only meant for that.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from tracerl_jax.attention import MaskInfo, allowed

try:  # Pallas TPU kernels ship with jax; guard anyway (stripped or very old installs).
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as _splash
except ImportError:  # pragma: no cover - depends on the jax build
    _splash = None


def splash_importable() -> bool:
    """Whether the splash kernel can be imported at all."""
    return _splash is not None


def splash_available() -> bool:
    """Whether splash attention can run natively: importable and a TPU backend."""
    return _splash is not None and jax.default_backend() == "tpu"


def structure_mask(info: MaskInfo) -> jax.Array:
    """The batch-shared ``[L, L]`` mask splash consumes: the predicate on row 0, all keys valid.

    Args:
      info: ``MaskInfo`` with fields ``[B, L]`` whose ``block``/``noised`` are
        the same in every row.

    Returns:
      bool ``[L, L]``.
    """
    row = MaskInfo(info.block[:1], info.noised[:1], jnp.ones_like(info.valid[:1]))
    return allowed(row, row)[0]


def dead_rows(info: MaskInfo) -> jax.Array:
    """bool ``[B, L]``: queries with no allowed key (they attend to themselves)."""
    return ~jnp.any(allowed(info, info), axis=-1)


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, info: MaskInfo, *, block: int = 128,
                     interpret: bool = False) -> jax.Array:
    """Self-attention under ``info``'s mask with the Pallas splash kernel.

    Equals ``dot_product_attention(q, k, v, dense_mask(info, info))`` up to
    rounding when ``info.block``/``info.noised`` are identical across rows (see
    the module docstring); differentiable (splash's own backward kernels).

    Traced under a mesh (``jax.set_mesh``, as the train steps are), the kernel
    runs inside a ``shard_map``: XLA cannot partition a Pallas/Mosaic call, so
    each device runs it on its own rows (the mesh's ``data`` x ``fsdp`` axes)
    and KV heads (``tensor``, when it divides them). Attention mixes neither
    rows nor heads, so no collective is needed.

    Args:
      q: ``[B, L, H, D]``.
      k, v: ``[B, L, Hkv, D]``, ``H % Hkv == 0``.
      info: ``MaskInfo`` fields ``[B, L]`` (queries are the keys).
      block: splash tile size for every kernel (a multiple of 128 on TPU);
        ``L`` is padded to a multiple of it with invalid keys.
      interpret: run the kernel in Pallas interpret mode (CPU tests).

    Returns:
      ``[B, L, H, D]`` in ``q.dtype``.

    Raises:
      ValueError: splash cannot be imported, or it is not a TPU backend and
        ``interpret`` is off.
    """
    if _splash is None:
        raise ValueError("splash attention is not importable in this jax build; use attention_impl='blockwise'")
    if not interpret and jax.default_backend() != "tpu":
        raise ValueError(f"splash attention needs a TPU backend (got {jax.default_backend()!r}); "
                         "use attention_impl='blockwise' or interpret=True")
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"num heads {q.shape[2]} is not a multiple of kv heads {k.shape[2]}")
    local = functools.partial(_splash_local, block=block, interpret=interpret)
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return local(q, k, v, MaskInfo(*info))
    from tracerl_jax.train.sharding import BATCH_AXES

    rows = tuple(a for a in BATCH_AXES if a in mesh.axis_names and mesh.shape[a] > 1)
    if q.shape[0] % max(int(np.prod([mesh.shape[a] for a in rows])), 1):
        rows = ()        # rows that do not split over the devices: every device runs them all
    tensor = mesh.shape.get("tensor", 1)
    heads = "tensor" if tensor > 1 and k.shape[2] % tensor == 0 else None
    row_spec = P(rows or None)
    qkv_spec = P(rows or None, None, heads, None)
    return jax.shard_map(local, mesh=mesh, in_specs=(qkv_spec, qkv_spec, qkv_spec, MaskInfo(*[row_spec] * 3)),
                         out_specs=qkv_spec, check_vma=False)(q, k, v, MaskInfo(*info))


def _splash_local(q: jax.Array, k: jax.Array, v: jax.Array, info: MaskInfo, *, block: int,
                  interpret: bool) -> jax.Array:
    from tracerl_jax.blockwise_attention import pad_info

    B, L, H, D = q.shape
    Hkv = k.shape[2]
    G = H // Hkv
    info = MaskInfo(*info)
    Lp = _round_up(L, block)
    pinfo = pad_info(info, Lp)
    mask = jnp.broadcast_to(structure_mask(pinfo), (G, Lp, Lp))
    sizes = _splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                               block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    kernel = _splash.make_splash_mqa_single_device(mask, block_sizes=sizes, interpret=interpret)
    # make_splash_* turns every MaskInfo field into an array, the ``is_dynamic_mask`` flag too,
    # which the kernel then tests in Python (a tracer under jit): give it back its bool.
    for name in ("fwd_mask_info", "dq_mask_info", "dkv_mask_info"):
        mi = getattr(kernel, name)
        if mi is not None:
            setattr(kernel, name, mi._replace(is_dynamic_mask=True))
    pad = [(0, 0), (0, Lp - L), (0, 0), (0, 0)]
    scale = np.float32(1.0 / np.sqrt(D))
    qh = (jnp.pad(q, pad).astype(jnp.float32) * scale).astype(q.dtype)
    qh = qh.reshape(B, Lp, Hkv, G, D).transpose(0, 2, 3, 1, 4)                  # [B, Hkv, G, Lp, D]
    kh = jnp.pad(k, pad).transpose(0, 2, 1, 3)                                  # [B, Hkv, Lp, D]
    vh = jnp.pad(v, pad).transpose(0, 2, 1, 3)
    segments = _splash.SegmentIds(q=jnp.ones((B, Lp), jnp.int32), kv=pinfo.valid.astype(jnp.int32))

    def one_row(qr, kr, vr, seg):                                                # over KV heads of one row
        return jax.vmap(lambda qg, kg, vg: kernel(qg, kg, vg, segment_ids=seg))(qr, kr, vr)

    out = jax.vmap(one_row)(qh, kh, vh, segments)                               # [B, Hkv, G, Lp, D]
    out = out.transpose(0, 3, 1, 2, 4)[:, :L].astype(q.dtype)                   # [B, L, Hkv, G, D]
    self_v = v.astype(out.dtype)[:, :, :, None, :]
    out = jnp.where(dead_rows(info)[:, :, None, None, None], self_v, out)
    return out.reshape(B, L, H, D)
