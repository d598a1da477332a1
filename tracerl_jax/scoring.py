"""Scores of trajectory rows under a model: per-token log-probs and values.

Block rows (``trajectory.TrainRows``) are read at the *noised* copy of the
extended layout (§3.6, §8.2): the output at ``L0 + L1 + j`` is the model's
view of response token ``j`` in the context it was decoded in. Full-attention
rows (``trajectory_full.FullRows``, §5) are read at the response positions,
one slot earlier for a shifted (Dream) model. Either way the result is in the
response layout ``[R, L1]`` and only that slice goes through the vocabulary
projection, which is most of the cost on large vocabularies.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tracerl_jax import trajectory
from tracerl_jax.losses import token_logprobs
from tracerl_jax.sampling.block_sampler import Rollout
from tracerl_jax.trajectory_full import FullRows


def _noised_hidden(model, rows) -> jax.Array:
    if isinstance(rows, FullRows):
        hidden, _ = model.encode(rows.tokens, rows.positions, rows.mask_info)
        # Dream's output at i-1 predicts token i (§5); the prompt is never empty, so L0-1 >= 0.
        start = rows.prompt_len - int(model.config.logits_shift)
        return hidden[:, start:start + rows.labels.shape[1]]
    L1 = rows.extended_tokens.shape[1] - rows.labels.shape[1]
    hidden, _ = model.encode(rows.extended_tokens, rows.positions, rows.mask_info)
    return hidden[:, -L1:]


def response_labels(rows) -> jax.Array:
    """The labels of the response tokens, int ``[R, L1]``, for block or full-attention rows."""
    if isinstance(rows, FullRows):
        return rows.labels
    return rows.labels[:, -(rows.extended_tokens.shape[1] - rows.labels.shape[1]):]


def response_mask(rows) -> jax.Array:
    """bool ``[R, L1]``: the scored response tokens of valid rows (block or full-attention rows)."""
    if isinstance(rows, FullRows):
        return rows.p_mask & rows.row_valid[:, None]
    L1 = rows.extended_tokens.shape[1] - rows.labels.shape[1]
    return rows.p_mask[:, -L1:] & rows.row_valid[:, None]


def trajectory_logprobs(graphdef, params, rows) -> jax.Array:
    """``log pi(y_j | context at its decoding step)`` for every response position.

    Args:
      graphdef, params: a split policy model (``models.split_model``).
      rows: :class:`trajectory.TrainRows` with ``R`` rows, ``N = L0 + 2*L1``,
        or :class:`trajectory_full.FullRows` (``[R, L0+L1]``).

    Returns:
      float32 ``[R, L1]``. Block rows: entry ``[r, j]`` scores label
      ``rows.labels[r, L0+j]`` with the logits at noised position
      ``L0+L1+j``. Full rows: it scores ``rows.labels[r, j]`` with the logits
      at ``L0+j`` (``L0+j-1`` for a shifted model). Only entries of
      :func:`response_mask` are meaningful.
    """
    model = nnx.merge(graphdef, params)
    logits = model.logits(_noised_hidden(model, rows))
    return token_logprobs(logits, response_labels(rows))


def trajectory_values(graphdef, params, rows) -> jax.Array:
    """Value-model outputs at the noised positions (§8.2).

    Args:
      graphdef, params: a split :class:`tracerl_jax.models.ValueModel`.
      rows: :class:`trajectory.TrainRows` or :class:`trajectory_full.FullRows`.

    Returns:
      float32 ``[R, L1]``: ``V`` of the partially masked state just before
      response token ``j`` was decoded, read where its log-prob is read
      (meaningful where ``p_mask`` holds).
    """
    from tracerl_jax.models import ValueModel, value_forward

    if isinstance(rows, FullRows):
        model = nnx.merge(graphdef, params)
        if not isinstance(model, ValueModel):
            raise ValueError(f"trajectory_values needs a ValueModel graphdef, got {type(model).__name__}")
        return model.values(_noised_hidden(model, rows)).astype(jnp.float32)

    L1 = rows.extended_tokens.shape[1] - rows.labels.shape[1]
    values = value_forward(graphdef, params, rows.extended_tokens, rows.positions, rows.mask_info)
    return values[:, -L1:].astype(jnp.float32)


class RolloutRows(NamedTuple):
    """Training rows of a rollout plus the per-token completion mask.

    Attributes:
      rows: :class:`trajectory.TrainRows`; ``p_mask`` already restricted to
        completion tokens.
      completion: bool ``[N, L1]`` response tokens that belong to the
        completion (EOS included).
    """

    rows: trajectory.TrainRows
    completion: jax.Array


def rows_from_rollout(prompts: jax.Array, prompt_valid: jax.Array, rollout: Rollout, *, block_size: int,
                      mask_id: int, pad_id: int, shrink: int = 1, post_num=0,
                      response_len: int | None = None, max_rounds: int | None = None) -> RolloutRows:
    """TraceRL rows for a rollout of the block sampler, on its own token ids.

    The sampler keeps the tail of a row's final block (tokens decoded after
    the EOS or past the budget) as context; the rows keep it too -- masked or
    clean by its step ids like any token -- so each scored token sees exactly
    the canvas it was sampled from, but only completion tokens are scored.

    Args:
      prompts: int ``[N, L0]`` left-padded prompts (as given to the sampler).
      prompt_valid: bool ``[N, L0]``.
      rollout: the sampler's :class:`Rollout` (``G`` response columns).
      block_size, mask_id, pad_id, shrink, post_num, max_rounds: as in
        :func:`trajectory.build_rows`.
      response_len: ``L1`` (multiple of ``block_size``, default ``G``); longer
        rollouts are cut, shorter padded.

    Returns:
      :class:`RolloutRows`.
    """
    G = rollout.tokens.shape[1]
    L1 = G if response_len is None else response_len
    if L1 % block_size:
        raise ValueError(f"response_len {L1} must be a multiple of block_size {block_size}")
    tokens, steps = rollout.tokens, rollout.step_map
    if L1 < G:
        tokens, steps = tokens[:, :L1], steps[:, :L1]
    elif L1 > G:
        tokens = jnp.pad(tokens, ((0, 0), (0, L1 - G)), constant_values=pad_id)
        steps = jnp.pad(steps, ((0, 0), (0, L1 - G)))
    decoded = jnp.sum(steps > 0, axis=1).astype(jnp.int32)
    rows = trajectory.build_rows(prompts, prompt_valid, tokens, steps, decoded, block_size=block_size,
                                 mask_id=mask_id, pad_id=pad_id, shrink=shrink, post_num=post_num,
                                 max_rounds=max_rounds)
    completion = jnp.arange(L1)[None] < jnp.minimum(rollout.lengths, L1)[:, None]
    L0 = prompts.shape[1]
    keep = jnp.concatenate([jnp.zeros((completion.shape[0], L0), bool), completion], axis=1)
    p_mask = rows.p_mask & keep[rows.response_index]
    rows = rows._replace(p_mask=p_mask, row_valid=rows.row_valid & jnp.any(p_mask, axis=1))
    return RolloutRows(rows, completion)
