"""The TraceRL policy, value and SFT updates as compiled, sharded steps.

Each is :func:`tracerl_jax.train.step.make_train_step` around one loss over
training rows (:class:`tracerl_jax.rows.Rows`, either model family); every
per-token array is in the response layout ``[R, L1]``. A batch is a dict whose
leaves are ``[GA, micro_B, ...]`` (use ``step.to_microbatches``):

* policy: ``rows``, ``logp_old [R, L1]``, ``advantages [R]`` or ``[R, L1]``,
  optional ``logp_ref [R, L1]`` (frozen reference model; without it the KL is
  taken against ``logp_old``, the reference behaviour Q-L1), ``num_rows
  [R]`` and ``L1_ref [R]`` (per-row copies of two scalars, see below).
* value: ``rows``, ``old_values [R, L1]``, ``returns [R, L1]``, ``num_rows``,
  ``L1_ref``.
* SFT: ``rows``, ``num_rows``, ``L1_ref``.

``num_rows`` is the divisor of the mean over rows in one micro-batch. Set it
to ``valid rows in the update / GA`` (:func:`batch_scalars` does) so that an
update averages over the rows that exist, whatever the bucket padding.
``L1_ref`` is the ``global_L1`` normaliser (the reference divides by the RL
step's longest response); it is data, not a shape, so it never recompiles.

Packed rows (:func:`tracerl_jax.rows.pack_rows`) take the same batch: their
per-round arrays are ``[P, C, L1]`` / ``[P, C]`` and the losses see the
``R = P*C`` rounds, so ``num_rows`` counts rounds and the loss equals the
unpacked rows' loss.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from tracerl_jax import losses
from tracerl_jax.rows import flat_rounds, response_mask
from tracerl_jax.scoring import trajectory_logprobs, trajectory_values
from tracerl_jax.train.step import make_train_step


@dataclasses.dataclass(frozen=True)
class PolicyLossConfig:
    """Settings of the TraceRL policy loss (§6). Defaults: block-model [REF].

    Attributes:
      name: the loss, a ``losses.POLICY_LOSSES`` entry (``"ppo_clip"``: §6.2).
      eps: PPO clip.
      log_ratio_clip: log-ratio clamp (None disables; full-attention [REF]).
      normalizer: ``global_L1`` [REF block] | ``row_tokens`` [REF full
        attention] | ``batch_tokens`` (length-unbiased).
      beta: KL coefficient.
      kl_estimator: ``k3`` | ``k1`` | ``k2``.
      kl_normalizer: None = same as ``normalizer``; ``"sum"`` for the
        full-attention [REF].
    """

    name: str = "ppo_clip"
    eps: float = 0.2
    log_ratio_clip: Optional[float] = 10.0
    normalizer: str = "global_L1"
    beta: float = 0.01
    kl_estimator: str = "k3"
    kl_normalizer: Optional[str] = None


    def __post_init__(self):
        losses.POLICY_LOSSES.get(self.name)  # an unknown name fails here, not inside a trace


# The full-attention scripts' loss (§6.4 [REF]): no log-ratio clamp, per-row token mean, unnormalised KL.
FULL_ATTENTION_REF = PolicyLossConfig(log_ratio_clip=None, normalizer="row_tokens", kl_normalizer="sum")


def policy_loss_fn(graphdef, cfg: PolicyLossConfig):
    """``loss_fn(params, micro_batch) -> (loss, metrics)`` for the policy."""

    loss = losses.POLICY_LOSSES.get(cfg.name)

    def loss_fn(params, batch):
        rows = batch["rows"]
        flat = lambda x: flat_rounds(x, rows)  # noqa: E731  (packed rows: [P, C, ...] -> rounds)
        p_mask = flat(response_mask(rows))
        logp = flat(trajectory_logprobs(graphdef, params, rows))
        logp_ref = flat(batch.get("logp_ref", batch["logp_old"]))
        return loss(
            logp, flat(batch["logp_old"]), flat(batch["advantages"]), p_mask, eps=cfg.eps,
            log_ratio_clip=cfg.log_ratio_clip, normalizer=cfg.normalizer, L1_ref=batch["L1_ref"][0],
            num_rows=batch["num_rows"][0], beta=cfg.beta, logp_ref=logp_ref,
            kl_estimator=cfg.kl_estimator, kl_normalizer=cfg.kl_normalizer)

    return loss_fn


def value_loss_fn(graphdef, clip: Optional[float] = 0.2, normalizer: str = "global_L1"):
    """``loss_fn(params, micro_batch)`` for the value model (§8.6, separate clip Q-V2)."""

    def loss_fn(params, batch):
        rows = batch["rows"]
        flat = lambda x: flat_rounds(x, rows)  # noqa: E731
        values = flat(trajectory_values(graphdef, params, rows))
        loss, metrics = losses.value_loss(values, flat(batch["old_values"]), flat(batch["returns"]),
                                          flat(response_mask(rows)),
                                          clip=clip, normalizer=normalizer, L1_ref=batch["L1_ref"][0],
                                          num_rows=batch["num_rows"][0])
        return loss, metrics

    return loss_fn


def sft_loss_fn(graphdef, normalizer: str = "global_L1"):
    """``loss_fn(params, micro_batch)`` for block SFT (semi-AR or trace rows, §10.1)."""

    def loss_fn(params, batch):
        rows = batch["rows"]
        logp = flat_rounds(trajectory_logprobs(graphdef, params, rows), rows)
        p_mask = flat_rounds(response_mask(rows), rows)
        loss, metrics = losses.masked_nll(logp, None, p_mask, normalizer=normalizer,
                                          L1_ref=batch["L1_ref"][0], num_rows=batch["num_rows"][0])
        return loss, metrics

    return loss_fn


def make_policy_step(graphdef, optimizer, cfg: PolicyLossConfig = PolicyLossConfig(), **kw):
    """Compiled policy update; ``kw`` goes to :func:`make_train_step` (mesh, shardings, donate)."""
    return make_train_step(policy_loss_fn(graphdef, cfg), optimizer, **kw)


def make_value_step(graphdef, optimizer, clip: Optional[float] = 0.2, normalizer: str = "global_L1", **kw):
    """Compiled value-model update."""
    return make_train_step(value_loss_fn(graphdef, clip, normalizer), optimizer, **kw)


def make_sft_step(graphdef, optimizer, normalizer: str = "global_L1", **kw):
    """Compiled SFT update."""
    return make_train_step(sft_loss_fn(graphdef, normalizer), optimizer, **kw)


def batch_scalars(row_valid, grad_accum: int, L1_ref: float) -> dict:
    """Per-row copies of ``num_rows`` and ``L1_ref`` for a batch of ``R`` rows.

    Args:
      row_valid: bool ``[R]`` rows that exist (packed rows: ``[P, C]``, rounds that exist).
      grad_accum: micro-batches per update.
      L1_ref: the ``global_L1`` normaliser.

    Returns:
      ``{"num_rows": f32 [R], "L1_ref": f32 [R]}`` with ``num_rows = max(valid
      rows, 1) / grad_accum``.
    """
    R = np.shape(row_valid)[0]
    n = jnp.maximum(jnp.sum(jnp.asarray(row_valid, jnp.float32)), 1.0) / grad_accum
    return {"num_rows": jnp.full((R,), n, jnp.float32), "L1_ref": jnp.full((R,), float(L1_ref), jnp.float32)}


def _map_rows(fn, graphdef, params, rows, micro_batch: int):
    R = rows.row_valid.shape[0]
    if R % micro_batch:
        raise ValueError(f"{R} rows are not divisible by micro_batch={micro_batch}; pad rows to a bucket")
    chunks = jax.tree.map(lambda x: x.reshape(R // micro_batch, micro_batch, *x.shape[1:]), rows)
    out = jax.lax.map(lambda r: fn(graphdef, params, r), chunks)
    return out.reshape(R, *out.shape[2:])


@partial(jax.jit, static_argnums=(0, 3))
def old_logprobs(graphdef, params, rows, micro_batch: int):
    """``logp_old`` (§6.1) of every row, one compiled pass in micro-batches.

    Args:
      graphdef, params: the policy (the weights that produced the rollouts).
      rows: :class:`~tracerl_jax.rows.Rows` with ``R`` rows, ``R % micro_batch == 0``.
      micro_batch: rows per forward pass.

    Returns:
      float32 ``[R, L1]``.
    """
    return _map_rows(trajectory_logprobs, graphdef, params, rows, micro_batch)


@partial(jax.jit, static_argnums=(0, 3))
def old_values(graphdef, params, rows, micro_batch: int):
    """``V_old`` (§8.6) of every row from the value model; float32 ``[R, L1]``."""
    return _map_rows(trajectory_values, graphdef, params, rows, micro_batch)
