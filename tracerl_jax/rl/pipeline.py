"""The update pipeline of an RL step, on device: rows -> update batches -> old scores -> advantages.

Rows come out of the row builders as device arrays (global ones in a
multi-process run); nothing here moves them or their scores to the host.
:func:`pack` puts the valid rows first and cuts all rows into update batches
``[NB, GA, mb, ...]`` (``NB = ceil(R / batch_rows)``, static), sharded over
the batch axes of the mesh; only the number of batches that hold a valid row
comes back to the host, so the loop knows how many updates to run. Old
log-probs/values of every batch are one compiled pass
(:func:`make_batch_scorer`) that skips the empty batches, the advantages one
compiled estimator call (:func:`batch_advantages`), and each update takes
its batch with :func:`take_batch`. Every shape depends only on the recipe,
so a steady-state step compiles nothing.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from tracerl_jax import advantages as adv_lib
from tracerl_jax.rows import Rows
from tracerl_jax.train.sharding import BATCH_AXES
from tracerl_jax.train.step import under_mesh


class UpdateBatches(NamedTuple):
    """All rows of an RL step as update batches.

    Attributes:
      rows: :class:`~tracerl_jax.rows.Rows` whose leaves are ``[NB, GA, mb, ...]``;
        valid rows first (in their original order), then padding rows with
        ``row_valid`` and ``p_mask`` False. Packed rows move as a whole (a
        row is valid if any of its rounds is), their round fields
        ``[NB, GA, mb, C, ...]``.
      num_rows: float32 ``[NB]``: each batch's valid rows (packed: rounds) / ``GA`` (at least
        ``1 / GA``), the divisor of the mean over rows (``train.steps``).
      live: bool ``[NB]`` batches holding at least one valid row.
      count: int, the number of live batches (they come first).
      num_valid: int, the number of valid rows.
      mesh: the mesh the micro-batch rows are sharded over (None: one device).
    """

    rows: Rows
    num_rows: jax.Array
    live: jax.Array
    count: int
    num_valid: int
    mesh: Optional[Mesh] = None


def batch_sharding(mesh: Optional[Mesh], leading: int = 2):
    """Sharding of arrays whose row axis follows ``leading`` unsharded axes (None without a mesh)."""
    if mesh is None:
        return None
    return NamedSharding(mesh, P(*([None] * leading), BATCH_AXES))


@partial(jax.jit, static_argnames=("batch_rows", "grad_accum", "out_sharding"))
def _pack(rows: Rows, *, batch_rows: int, grad_accum: int, out_sharding):
    R = rows.row_valid.shape[0]
    NB = -(-R // batch_rows)
    # A packed row (model input) exists if any of its rounds does; it moves with all of them.
    alive = rows.row_valid.reshape(R, -1).any(axis=1)
    order = jnp.argsort(~alive, stable=True)
    order = jnp.concatenate([order, jnp.full((NB * batch_rows - R,), order[-1], order.dtype)])
    n_valid = jnp.sum(alive.astype(jnp.int32))
    pad = jnp.arange(NB * batch_rows) >= n_valid
    pad = pad.reshape(pad.shape + (1,) * (rows.row_valid.ndim - 1))
    packed = jax.tree.map(lambda x: x[order], rows)
    packed = packed._replace(row_valid=packed.row_valid & ~pad, p_mask=packed.p_mask & ~pad[..., None])
    mb = batch_rows // grad_accum
    batched = jax.tree.map(lambda x: x.reshape(NB, grad_accum, mb, *x.shape[1:]), packed)
    if out_sharding is not None:
        batched = jax.lax.with_sharding_constraint(batched, out_sharding)
    valid = jnp.sum(batched.row_valid.reshape(NB, -1).astype(jnp.float32), axis=1)
    return batched, jnp.maximum(valid, 1.0) / grad_accum, valid > 0, n_valid


def pack(rows: Rows, *, batch_rows: int, grad_accum: int, mesh: Optional[Mesh] = None) -> UpdateBatches:
    """Valid rows first, cut into ``NB = ceil(R / batch_rows)`` update batches of ``GA`` micro-batches.

    Args:
      rows: :class:`~tracerl_jax.rows.Rows` with ``R`` rows (device arrays).
      batch_rows: rows per update (``GA * mb``).
      grad_accum: micro-batches per update ``GA``.
      mesh: shard the micro-batch rows over the mesh's batch axes.

    Returns:
      :class:`UpdateBatches`. Only the valid-row count (a scalar) is read on the host.
    """
    if batch_rows < 1 or grad_accum < 1 or batch_rows % grad_accum:
        raise ValueError(f"batch_rows={batch_rows} must be a positive multiple of grad_accum={grad_accum}")
    batched, num_rows, live, n_valid = _pack(rows, batch_rows=int(batch_rows), grad_accum=int(grad_accum),
                                             out_sharding=batch_sharding(mesh))
    n_valid = int(n_valid)
    return UpdateBatches(batched, num_rows, live, -(-n_valid // batch_rows), n_valid, mesh)


def make_batch_scorer(fn: Callable, graphdef, *, param_sharding=None, mesh: Optional[Mesh] = None):
    """One compiled pass of ``fn`` (``trajectory_logprobs`` or ``trajectory_values``) over update batches.

    Returns:
      ``score(params, batches: UpdateBatches) -> float32 [NB, GA, mb, L1]``:
      ``fn(graphdef, params, micro-batch)`` of every micro-batch of a live
      batch, zeros for the empty batches (which are not computed).
    """
    out_sh = batch_sharding(mesh)

    def scores(params, rows, live):
        def one(args):
            r, alive = args
            zeros = lambda _: jnp.zeros(r.labels.shape, jnp.float32)  # noqa: E731
            return jax.lax.cond(alive, lambda r_: jax.lax.map(lambda m: fn(graphdef, params, m), r_), zeros, r)

        return jax.lax.map(one, (rows, live))

    jitted = jax.jit(under_mesh(scores, mesh),
                     in_shardings=None if mesh is None else (param_sharding, batch_sharding(mesh), None),
                     out_shardings=out_sh)
    return lambda params, batches: jitted(params, batches.rows, batches.live)


@partial(jax.jit, static_argnames=("out_sharding",))
def _recorded(rows: Rows, per_response, out_sharding):
    out = jnp.where(rows.p_mask & rows.row_valid[..., None], per_response[rows.response_index], 0.0)
    return out if out_sharding is None else jax.lax.with_sharding_constraint(out, out_sharding)


def recorded_scores(batches: UpdateBatches, per_response: jax.Array) -> jax.Array:
    """Per-response token values ``[N, L1]`` (e.g. the sampler's log-probs at commit) in the update
    batches' layout ``[NB, GA, mb, L1]``, 0 where a row does not score."""
    return _recorded(batches.rows, jnp.asarray(per_response, jnp.float32)[:, :batches.rows.labels.shape[-1]],
                     out_sharding=batch_sharding(batches.mesh))


@partial(jax.jit, static_argnums=(0,))
def _estimate(fn, rows: Rows, rewards, step_ids, trainable, old_values, gamma, lam):
    lead, L1 = rows.labels.shape[:-1], rows.labels.shape[-1]   # [NB, GA, mb] (packed rows: [..., C])
    flat = lambda x: None if x is None else x.reshape(-1, L1)  # noqa: E731
    inputs = adv_lib.AdvantageInputs(flat(rows.p_mask & rows.row_valid[..., None]), rows.response_index.reshape(-1),
                                     rewards, step_ids, trainable, flat(old_values))
    adv, ret = fn(inputs, gamma=gamma, lam=lam)
    unflat = lambda x: None if x is None else x.reshape(*lead, *x.shape[1:])  # noqa: E731
    return unflat(adv), unflat(ret)


def batch_advantages(name: str, batches: UpdateBatches, *, rewards: jax.Array, step_ids: jax.Array,
                     trainable: jax.Array, old_values: Optional[jax.Array] = None, gamma: float = 1.0,
                     lam: float = 1.0) -> tuple[jax.Array, Optional[jax.Array]]:
    """The advantage estimator ``name`` (``advantages.ADVANTAGE_ESTIMATORS``) on update batches, jitted.

    Args:
      name: the estimator.
      batches: :class:`UpdateBatches`.
      rewards: float ``[N]`` group-normalised rewards; step_ids int ``[N, L1]``;
        trainable bool ``[N, L1]`` (see ``advantages.AdvantageInputs``).
      old_values: float ``[NB, GA, mb, L1]`` or None.
      gamma, lam: GAE ``γ``, ``λ``.

    Returns:
      ``(advantages [NB, GA, mb, L1], returns [NB, GA, mb, L1] or None)`` on device.
    """
    fn = adv_lib.ADVANTAGE_ESTIMATORS.get(name)
    return _estimate(fn, batches.rows, rewards, step_ids, trainable, old_values, jnp.float32(gamma),
                     jnp.float32(lam))


@partial(jax.jit, static_argnames=("out_sharding",))
def _take(rows, num_rows, per_row, i, L1_ref, out_sharding):
    take = lambda x: jax.lax.dynamic_index_in_dim(x, i, 0, keepdims=False)  # noqa: E731
    rows, per_row = jax.tree.map(take, (rows, per_row))
    shape = rows.row_valid.shape[:2]  # [GA, mb] (packed rows' round axis excluded)
    out = {"rows": rows, "num_rows": jnp.full(shape, take(num_rows), jnp.float32),
           "L1_ref": jnp.full(shape, L1_ref, jnp.float32), **per_row}
    # The train step takes every leaf [GA, mb, ...] with its rows over the batch axes.
    return out if out_sharding is None else jax.lax.with_sharding_constraint(out, out_sharding)


def take_batch(batches: UpdateBatches, i: int, L1_ref: float, **per_row) -> dict:
    """Update ``i`` as a train-step batch: ``{"rows", "num_rows", "L1_ref", **per_row}``, leaves ``[GA, mb, ...]``.

    Args:
      batches: :class:`UpdateBatches`.
      i: the batch (``< batches.count``).
      L1_ref: the ``global_L1`` normaliser.
      **per_row: arrays ``[NB, GA, mb, ...]`` (old log-probs, advantages, ...).
    """
    return _take(batches.rows, batches.num_rows, per_row, jnp.int32(i), jnp.float32(L1_ref),
                 out_sharding=batch_sharding(batches.mesh, leading=1))
