"""Generic sharded train step: micro-batch accumulation, NaN/Inf guard, AdamW update.

``make_train_step(loss_fn, optimizer, mesh)`` turns any pure
``loss_fn(params, micro_batch) -> (loss, metrics)`` into one compiled update:

* The batch arrives as ``[GA, micro_B, ...]``; a ``lax.scan`` over the first
  axis accumulates gradients of exactly ``GA`` micro-batches and averages
  them (standard accumulation; fixes quirk Q-O2).
* If the loss or any gradient is NaN/Inf the update is skipped
  (``optax.apply_if_finite``): params and optimizer state come back
  unchanged, ``step`` does not advance and ``metrics["skipped"] == 1``.
* The learning rate is a traced argument (see ``optimizer.py``), so schedules
  never recompile.
* With a mesh, the function is jitted with ``NamedSharding`` in/out
  shardings: parameters and optimizer moments by the rules of
  ``sharding.py``, batch rows over ``("data", "fsdp")``.

The policy/value/SFT steps in ``tracerl_jax.train.steps`` are this function
applied to the corresponding loss.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from tracerl_jax.losses import TOKEN_MEAN_METRICS
from tracerl_jax.train import sharding as shd
from tracerl_jax.train.optimizer import set_learning_rate


class TrainState(NamedTuple):
    """Everything an update changes.

    Attributes:
      step: int32 scalar, number of applied (non-skipped) updates.
      params: parameter pytree.
      opt_state: optimizer state.
    """

    step: jax.Array
    params: Any
    opt_state: Any


def init_train_state(params, optimizer: optax.GradientTransformation) -> TrainState:
    """Fresh state at step 0."""
    return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))


_NEVER = int(jnp.iinfo(jnp.int32).max)   # apply_if_finite's counter saturates here


def _fresh_guard(opt_state) -> optax.ApplyIfFiniteState:
    """``optax.apply_if_finite`` state around ``opt_state`` with its counters at zero.

    The counters are not kept in ``TrainState`` (``step`` counts the applied
    updates), so ``opt_state`` keeps the layout of the plain optimizer: its
    shardings and the checkpoints written before the guard still fit.
    """
    zero = jnp.zeros((), jnp.int32)
    return optax.ApplyIfFiniteState(notfinite_count=zero, last_finite=jnp.array(True),
                                    total_notfinite=zero, inner_state=opt_state)


def state_shardings(state: TrainState, optimizer: optax.GradientTransformation, mesh: Mesh,
                    rules=shd.DEFAULT_RULES) -> TrainState:
    """NamedShardings for a ``TrainState`` (moments follow their params)."""
    pspecs = shd.param_specs(state.params, mesh, rules)
    ospecs = optax.tree_map_params(optimizer, lambda _, s: s, state.opt_state, pspecs,
                                   transform_non_params=lambda _: P())
    return shd.named(mesh, TrainState(P(), pspecs, ospecs))


def _extreme(name: str) -> bool:
    return name.endswith("_min") or name.endswith("_max")


def _identity(name: str, struct):
    if name.endswith("_min"):
        return jnp.full(struct.shape, jnp.inf, struct.dtype)
    if name.endswith("_max"):
        return jnp.full(struct.shape, -jnp.inf, struct.dtype)
    return jnp.zeros(struct.shape, struct.dtype)


def _token_weighted(name: str, metrics) -> bool:
    """A per-token mean (``losses.TOKEN_MEAN_METRICS``) of a loss that reports its ``num_tokens``."""
    return name in TOKEN_MEAN_METRICS and "num_tokens" in metrics


def _combine(name: str, acc, value):
    if name.endswith("_min"):
        return jnp.minimum(acc, value)
    if name.endswith("_max"):
        return jnp.maximum(acc, value)
    return acc + value


def make_train_step(loss_fn: Callable, optimizer: optax.GradientTransformation, *,
                    mesh: Optional[Mesh] = None, state_sharding: Optional[TrainState] = None,
                    donate: bool = False):
    """Compiles one optimizer update around ``loss_fn``.

    Args:
      loss_fn: ``(params, micro_batch) -> (loss scalar, metrics dict of scalars)``.
      optimizer: from :func:`tracerl_jax.train.optimizer.make_optimizer`.
      mesh: optional mesh; with it, ``state_sharding`` (from
        :func:`state_shardings`) fixes parameter/optimizer layouts and batch
        rows are sharded over ``("data", "fsdp")``.
      state_sharding: shardings of the ``TrainState`` (required with a mesh).
      donate: donate the input state buffers (saves memory; the caller must
        not reuse the old state).

    Returns:
      ``step(state, batch, lr) -> (state, metrics)``; every ``batch`` leaf is
      ``[GA, micro_B, ...]``. Metrics are averaged over micro-batches and
      include ``loss``, ``grad_norm``, ``skipped`` and ``lr``.
    """

    # Skips every non-finite update, however many in a row: the count is never reached.
    skip_non_finite = optax.apply_if_finite(optimizer, max_consecutive_errors=_NEVER)

    def step(state: TrainState, batch, lr):
        # Metrics named *_min / *_max are extremes over micro-batches (a
        # micro-batch with no scored token reports a sentinel that must not be
        # averaged in); per-token means are weighted by each micro-batch's scored
        # tokens (an empty one would otherwise count as a mean of 0); every
        # other metric is the mean over micro-batches.
        ga = jax.tree.leaves(batch)[0].shape[0]
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

        def body(acc, micro):
            (loss, metrics), grads = grad_fn(state.params, micro)
            g_acc, l_acc, m_acc = acc
            weight = metrics.get("num_tokens")
            new = {k: _combine(k, m_acc[k], v * weight if _token_weighted(k, metrics) else v)
                   for k, v in metrics.items()}
            return (jax.tree.map(jnp.add, g_acc, grads), l_acc + loss, new), None

        m_shape = jax.eval_shape(lambda p, b: loss_fn(p, b)[1], state.params,
                                 jax.tree.map(lambda x: x[0], batch))
        zeros = (jax.tree.map(jnp.zeros_like, state.params), jnp.zeros((), jnp.float32),
                 {k: _identity(k, s) for k, s in m_shape.items()})
        (grads, loss, metrics), _ = jax.lax.scan(body, zeros, batch)
        grads = jax.tree.map(lambda g: g / ga, grads)
        loss = loss / ga
        tokens = jnp.maximum(metrics.get("num_tokens", jnp.zeros(())), 1.0)   # summed over micro-batches
        metrics = {k: m if _extreme(k) else m / tokens if _token_weighted(k, metrics) else m / ga
                   for k, m in metrics.items()}

        opt_state = set_learning_rate(state.opt_state, lr)
        # apply_if_finite inspects only the gradients, so a non-finite loss with finite
        # gradients (a NaN in a stop_gradient term) is folded in as NaN gradients.
        checked = jax.tree.map(lambda g: jnp.where(jnp.isfinite(loss), g, jnp.nan), grads)
        updates, guarded = skip_non_finite.update(checked, _fresh_guard(opt_state), state.params)
        ok = guarded.last_finite
        new_state = TrainState(state.step + ok.astype(jnp.int32), optax.apply_updates(state.params, updates),
                               guarded.inner_state)
        metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads),
                       skipped=(~ok).astype(jnp.float32), lr=jnp.asarray(lr, jnp.float32))
        return new_state, metrics

    donate_args = (0,) if donate else ()
    opts = _compiler_options(mesh)
    if mesh is None:
        return jax.jit(step, donate_argnums=donate_args, compiler_options=opts)
    if state_sharding is None:
        raise ValueError("state_sharding is required when a mesh is given (see state_shardings)")
    batch_sh = NamedSharding(mesh, P(None, shd.BATCH_AXES))
    rep = NamedSharding(mesh, P())
    return jax.jit(under_mesh(step, mesh), in_shardings=(state_sharding, batch_sh, rep), out_shardings=(state_sharding, rep),
                   donate_argnums=donate_args, compiler_options=opts)


def under_mesh(fn: Callable, mesh: Optional[Mesh]) -> Callable:
    """``fn`` traced under ``mesh``'s abstract mesh, so the model's activation constraints
    (``sharding.constrain_rows``) see the mesh axes. Use inside ``jax.jit``."""
    if mesh is None:
        return fn

    def wrapped(*args, **kwargs):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return fn(*args, **kwargs)

    return wrapped


def _compiler_options(mesh):
    """XLA options of the train step: on CPU, the memory-optimised scheduler.

    XLA:CPU's default scheduler orders for concurrency and keeps activations
    of every layer live at once, so ``ModelConfig.remat`` saved nothing there.
    With the memory-optimised one a ``small`` policy step's temporaries fell
    from 2.2 to 1.3 GiB (dense attention, L1 = 256) at the same speed, and
    remat works (benchmarks/README.md, "XLA:CPU scheduler"). Other backends
    keep their defaults.
    """
    platform = mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()
    return {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"} if platform == "cpu" else None


def to_microbatches(batch, grad_accum: int):
    """Reshapes every leaf ``[GA*micro_B, ...] -> [GA, micro_B, ...]`` (host or device).

    Raises:
      ValueError: if the row count is not divisible by ``grad_accum``.
    """
    def split(x):
        if x.shape[0] % grad_accum:
            raise ValueError(f"batch of {x.shape[0]} rows is not divisible by grad_accum={grad_accum}")
        return x.reshape(grad_accum, x.shape[0] // grad_accum, *x.shape[1:])

    return jax.tree.map(split, batch)
