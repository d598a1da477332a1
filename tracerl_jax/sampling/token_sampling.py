"""Per-position token sampling and confidence (docs/algorithms.md §1.4).

Order of operations, as the reference engine: temperature -> top-k -> softmax
-> top-p (renormalised) -> categorical sample. The confidence of a position is
the probability of its sampled token under that same filtered, tempered
distribution. Temperature 0 is greedy decoding: the token is the argmax and
its confidence is its probability under the *unfiltered* softmax (unlike the
reference's ``top_k=1``, where every confidence is 1.0, quirk Q-S3; pass
``top_k=1`` with a positive temperature to get that behaviour).

The mask token itself is never sampled (``exclude_id``): a committed MASK
would look undecoded to the sampler and be decoded again under its old step
id, breaking the trajectory. The recorded log-prob still uses the full
softmax, as the trainer does; a trained model puts ~0 mass on MASK.

Besides the confidence we return the token's log-probability under the
model's own distribution (temperature 1, no filtering): that is the policy
log-prob the trainer recomputes, whatever sampling settings produced the
token.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from tracerl_jax.attention import NEG_INF


class Sampled(NamedTuple):
    """Result of sampling one token per position; every field ``[...]``.

    Attributes:
      tokens: int32 sampled ids.
      confidence: float32 probability of the token under the sampling
        distribution (unfiltered softmax when greedy).
      logprob: float32 ``log softmax(logits)[token]`` at temperature 1.
    """

    tokens: jax.Array
    confidence: jax.Array
    logprob: jax.Array


def filter_logits(logits: jax.Array, temperature: float, top_k: int, top_p: float) -> jax.Array:
    """Applies temperature, top-k and top-p to logits.

    Top-k keeps every logit ``>=`` the k-th largest (ties at the boundary are
    kept). Top-p keeps the smallest descending-probability prefix whose mass
    reaches ``top_p`` (the crossing token is kept, at least one token always).

    Args:
      logits: float ``[..., V]``.
      temperature: > 0 (greedy is handled by :func:`sample`).
      top_k: 0 disables.
      top_p: 1.0 disables.

    Returns:
      float32 ``[..., V]`` filtered logits; removed entries are ``NEG_INF``.
    """
    z = logits.astype(jnp.float32)
    if temperature != 1.0:
        z = z / temperature
    if top_k > 0:
        kth = jax.lax.top_k(z, top_k)[0][..., -1:]
        z = jnp.where(z >= kth, z, NEG_INF)
    if top_p < 1.0:
        order = jnp.argsort(-z, axis=-1)
        z_sorted = jnp.take_along_axis(z, order, axis=-1)
        p_sorted = jax.nn.softmax(z_sorted, axis=-1)
        mass_before = jnp.cumsum(p_sorted, axis=-1) - p_sorted
        keep_sorted = mass_before < top_p
        keep_sorted = keep_sorted.at[..., 0].set(True)
        inverse = jnp.argsort(order, axis=-1)
        keep = jnp.take_along_axis(keep_sorted, inverse, axis=-1)
        z = jnp.where(keep, z, NEG_INF)
    return z


def sample(key: jax.Array, logits: jax.Array, temperature: float = 1.0, top_k: int = 0,
           top_p: float = 1.0, exclude_id: int | None = None) -> Sampled:
    """Samples one token per position and reports its confidence and log-prob.

    Args:
      key: PRNG key.
      logits: float ``[..., V]`` model logits.
      temperature: 0 means greedy.
      top_k: keep the k largest logits (0 = off).
      top_p: nucleus mass (1.0 = off).
      exclude_id: a token id that is never sampled (the mask id).

    Returns:
      :class:`Sampled` with fields of shape ``[...]``.
    """
    logp_model = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    if exclude_id is not None:
        logits = logits.astype(jnp.float32).at[..., exclude_id].set(NEG_INF)
    if temperature == 0.0:
        tokens = jnp.argmax(logits, axis=-1)
        logp_tok = jnp.take_along_axis(logp_model, tokens[..., None], axis=-1)[..., 0]
        return Sampled(tokens.astype(jnp.int32), jnp.exp(logp_tok), logp_tok)
    z = filter_logits(logits, temperature, top_k, top_p)
    tokens = jax.random.categorical(key, z, axis=-1)
    logp_sampling = jax.nn.log_softmax(z, axis=-1)
    conf = jnp.exp(jnp.take_along_axis(logp_sampling, tokens[..., None], axis=-1)[..., 0])
    logp_tok = jnp.take_along_axis(logp_model, tokens[..., None], axis=-1)[..., 0]
    return Sampled(tokens.astype(jnp.int32), conf, logp_tok)


def row_keys_for(batch: int, rng=None, row_keys=None, *, random: bool, what: str = "temperature > 0"):
    """One PRNG key per row ``[batch]`` for a sampler call.

    Either split ``rng`` over the rows, or take ``row_keys`` as given (keys
    fixed per row make a row's sample independent of the batch it is in). A
    deterministic sampler (``random=False``) may pass neither.

    Raises:
      ValueError: neither is given while sampling is random (``what`` names
        the setting that makes it so), or ``row_keys`` has the wrong length.
    """
    if row_keys is None:
        if rng is None:
            if random:
                raise ValueError(f"sampling with {what} needs rng or row_keys")
            rng = jax.random.key(0)
        return jax.random.split(rng, batch)
    if row_keys.shape[0] != batch:
        raise ValueError(f"row_keys has {row_keys.shape[0]} keys for a batch of {batch}")
    return row_keys
