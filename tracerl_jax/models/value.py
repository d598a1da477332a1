"""Diffusion value model (docs/algorithms.md §8.1-8.2).

The policy architecture (its unused ``lm_head`` included, so checkpoints keep
the reference's key set) plus ``value_head = Linear(hidden, 1, bias=False)``
initialised to zero, applied to the final-norm hidden states: one scalar per
position, no activation, no scaling. Every initial value is therefore 0.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from tracerl_jax.attention import MaskInfo
from tracerl_jax.kv_cache import KVCache
from tracerl_jax.models.config import ModelConfig
from tracerl_jax.models.transformer import Transformer, _config_of, validate_inputs


class ValueModel(Transformer):
    """:class:`Transformer` + ``value_head`` (kernel ``[d, 1]``, zero-initialised)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        super().__init__(config, rngs=rngs)
        self.value_head = nnx.Linear(config.hidden_size, 1, use_bias=False, dtype=config.compute_dtype,
                                     param_dtype=config.params_dtype, kernel_init=nnx.initializers.zeros,
                                     rngs=rngs)

    def values(self, hidden: jax.Array) -> jax.Array:
        """``hidden [..., d]`` (e.g. ``[B, Q, d]``, packed rows ``[P, C, L1, d]``) -> float32 values ``[...]``."""
        w = self.value_head.kernel[...].astype(self.config.compute_dtype)
        return jnp.einsum("...d,do->...o", hidden, w, preferred_element_type=jnp.float32)[..., 0]


def init_value_model(config: ModelConfig, rngs: Optional[nnx.Rngs] = None, *, seed: int = 0) -> ValueModel:
    """A fresh :class:`ValueModel` (random backbone, zero value head)."""
    return ValueModel(config, rngs=rngs if rngs is not None else nnx.Rngs(seed))


def value_model_from_policy(policy: Transformer) -> ValueModel:
    """A :class:`ValueModel` whose backbone (and ``lm_head``) are the policy's
    parameters and whose ``value_head`` is zero (§8.1 initialisation).

    JAX arrays are immutable, so sharing them with the policy is safe: training
    either model replaces its own arrays.
    """
    if not isinstance(policy, Transformer):
        raise ValueError(f"policy must be a Transformer, got {type(policy).__name__}")
    cfg = policy.config
    abstract = nnx.eval_shape(lambda: ValueModel(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract, nnx.Param)
    pure = nnx.to_pure_dict(nnx.state(policy, nnx.Param))
    pure.pop("value_head", None)
    pure["value_head"] = {"kernel": jnp.zeros((cfg.hidden_size, 1), cfg.params_dtype)}
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state)


def value_forward(graphdef, params, tokens: jax.Array, positions: jax.Array, mask_info: Optional[MaskInfo],
                  cache: Optional[KVCache] = None, *, dense_mask: Optional[jax.Array] = None) -> jax.Array:
    """Pure value pass: same inputs and mask semantics as
    :func:`tracerl_jax.models.forward` (the cache, if any, is only read).

    Args:
      graphdef, params: from ``split_model(value_model)``.
      tokens, positions: int ``[B, Q]``.
      mask_info: ``MaskInfo`` of the queries, fields ``[B, Q]`` (None with a
        ``dense_mask``).
      cache: optional read-only ``KVCache`` in the model's layout.
      dense_mask: optional bool ``[B, 1|H, Q, K]`` overriding the predicate.

    Returns:
      float32 ``[B, Q]`` values read from the final-norm hidden states.
    """
    validate_inputs(_config_of(graphdef, params), tokens, positions, mask_info, cache, False, dense_mask)
    return _value_jit(graphdef, params, tokens, positions, None if mask_info is None else MaskInfo(*mask_info),
                      cache, dense_mask)


def _value_impl(graphdef, params, tokens, positions, mask_info, cache, dense_mask):
    model = nnx.merge(graphdef, params)
    if not isinstance(model, ValueModel):
        raise ValueError(f"value_forward needs a ValueModel graphdef, got {type(model).__name__}")
    hidden, _ = model.encode(tokens, positions, mask_info, cache, write_cache=False, dense_mask=dense_mask)
    return model.values(hidden)


# Compiled even when called eagerly; inlines under an outer transform.
_value_jit = jax.jit(_value_impl, static_argnums=0)
