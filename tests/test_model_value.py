"""Value model (docs/algorithms.md §8.1): zero-initialised head on final-norm hidden states."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tracerl_jax.attention import extended_info
from tracerl_jax.models import (
    ValueModel,
    forward,
    get_preset,
    init_model,
    init_value_model,
    split_model,
    value_forward,
    value_model_from_policy,
)

B, L0, L1 = 2, 4, 8


def _inputs(vocab):
    rng = np.random.default_rng(0)
    tok = jnp.asarray(rng.integers(0, vocab, (B, L0 + 2 * L1)), jnp.int32)
    pos = jnp.concatenate([jnp.arange(L0 + L1), jnp.arange(L0, L0 + L1)])[None].repeat(B, 0).astype(jnp.int32)
    return tok, pos, extended_info(jnp.ones((B, L0), bool), L1, 4)


@pytest.mark.parametrize("tie", [False, True])
def test_from_policy_copies_backbone_and_zero_head(tie):
    cfg = get_preset("tiny", tie_word_embeddings=tie)
    policy = init_model(cfg, seed=7)
    vm = value_model_from_policy(policy)
    assert isinstance(vm, ValueModel)
    assert vm.value_head.kernel.shape == (cfg.hidden_size, 1)
    assert not np.any(np.asarray(vm.value_head.kernel[...]))
    gp, pp = split_model(policy)
    gv, pv = split_model(vm)
    pol = nnx.to_pure_dict(pp)
    val = nnx.to_pure_dict(pv)
    assert set(val) == set(pol) | {"value_head"}  # lm_head kept when untied
    tok, pos, info = _inputs(cfg.vocab_size)
    values = jax.jit(value_forward, static_argnums=0)(gv, pv, tok, pos, info)
    assert values.shape == (B, L0 + 2 * L1) and values.dtype == jnp.float32
    assert not np.any(np.asarray(values))
    # With a non-zero head, values are exactly the head applied to the policy's hidden states.
    w = jax.random.normal(jax.random.key(0), (cfg.hidden_size, 1))
    vm.value_head.kernel[...] = w
    gv, pv = split_model(vm)
    hidden = jax.jit(forward, static_argnums=0)(gp, pp, tok, pos, info).hidden
    np.testing.assert_allclose(np.asarray(jax.jit(value_forward, static_argnums=0)(gv, pv, tok, pos, info)),
                               np.asarray((hidden @ w)[..., 0]), atol=1e-5)


def test_value_grads_reach_head_and_backbone():
    cfg = get_preset("tiny")
    g, p = split_model(init_value_model(cfg, seed=1))
    tok, pos, info = _inputs(cfg.vocab_size)

    def loss(params):
        return jnp.mean((value_forward(g, params, tok, pos, info) - 1.0) ** 2)

    grads = nnx.to_pure_dict(jax.jit(jax.grad(loss))(p))
    assert np.abs(np.asarray(grads["value_head"]["kernel"])).max() > 0
    # The head is zero at init, so the backbone only gets gradient after a step.
    assert not np.any(np.asarray(grads["norm"]["scale"]))


def test_value_forward_rejects_policy_graphdef():
    g, p = split_model(init_model(get_preset("tiny")))
    tok, pos, info = _inputs(512)
    with pytest.raises(ValueError, match="ValueModel"):
        value_forward(g, p, tok, pos, info)
