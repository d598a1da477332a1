"""Scores of training rows under a model: per-token log-probs and values.

Rows (:class:`tracerl_jax.rows.Rows`) say where each response token is read:
block rows at the *noised* copy of the extended layout (docs/algorithms.md
§3.6, §8.2), full-attention rows at the response positions, one slot earlier
for a shifted (Dream) model (§5). Either way the result is in the response
layout ``[R, L1]`` and only the read positions go through the vocabulary
projection, which is most of the cost on large vocabularies.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from tracerl_jax.losses import token_logprobs
from tracerl_jax.rows import Rows, check_rows, read_outputs


def _read_hidden(model, rows: Rows) -> jax.Array:
    hidden, _ = model.encode(rows.tokens, rows.positions, rows.mask_info)
    return read_outputs(hidden, rows.read_index)


def trajectory_logprobs(graphdef, params, rows: Rows) -> jax.Array:
    """``log pi(y_j | context at its decoding step)`` for every response position.

    Args:
      graphdef, params: a split policy model (``models.split_model``).
      rows: :class:`~tracerl_jax.rows.Rows` with ``R`` rows.

    Returns:
      float32 ``[R, L1]``: entry ``[r, j]`` scores ``rows.labels[r, j]`` with
      the logits at ``rows.read_index[r, j]``. Only entries of
      ``rows.scored`` are meaningful.
    """
    check_rows(rows)
    model = nnx.merge(graphdef, params)
    return token_logprobs(model.logits(_read_hidden(model, rows)), rows.labels)


def trajectory_values(graphdef, params, rows: Rows) -> jax.Array:
    """Value-model outputs at the read positions (§8.2).

    Args:
      graphdef, params: a split :class:`tracerl_jax.models.ValueModel`.
      rows: :class:`~tracerl_jax.rows.Rows`.

    Returns:
      float32 ``[R, L1]``: ``V`` of the partially masked state just before
      response token ``j`` was decoded, read where its log-prob is read
      (meaningful where ``rows.scored`` holds).
    """
    from tracerl_jax.models import ValueModel

    check_rows(rows)
    model = nnx.merge(graphdef, params)
    if not isinstance(model, ValueModel):
        raise ValueError(f"trajectory_values needs a ValueModel graphdef, got {type(model).__name__}")
    return model.values(_read_hidden(model, rows)).astype(jnp.float32)
