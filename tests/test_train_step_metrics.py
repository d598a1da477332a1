"""Micro-batch metric aggregation of the generic train step."""

import jax.numpy as jnp
import numpy as np

from tracerl_jax.train.optimizer import OptimizerConfig, make_optimizer
from tracerl_jax.train.step import init_train_state, make_train_step


def test_extremes_are_not_averaged_over_micro_batches():
    def loss_fn(params, micro):
        v = micro["v"]
        loss = jnp.sum(params["w"] * v)
        return loss, {"ratio_min": v, "ratio_max": v, "ratio_mean": v}

    optimizer = make_optimizer(OptimizerConfig(learning_rate=0.1))
    state = init_train_state({"w": jnp.ones(())}, optimizer)
    step = make_train_step(loss_fn, optimizer, donate=False)
    # Three micro-batches; an empty one reports the sentinels a policy loss uses.
    batch = {"v": jnp.asarray([1.0, 5.0, 3.0])}
    _, m = step(state, batch, 0.1)
    assert float(m["ratio_min"]) == 1.0
    assert float(m["ratio_max"]) == 5.0
    np.testing.assert_allclose(float(m["ratio_mean"]), 3.0)
    np.testing.assert_allclose(float(m["loss"]), 3.0)


def test_token_means_are_weighted_by_scored_tokens():
    # Micro-batches with 3, 0 and 1 scored tokens and ratio means 1.0, 0.0 (nothing scored) and 2.0:
    # the update's ratio_mean is the token mean (3*1 + 1*2) / 4, not the mean of the three.
    def loss_fn(params, micro):
        return jnp.sum(params["w"] * micro["r"]), {"ratio_mean": micro["r"], "num_tokens": micro["n"],
                                                     "pg_loss": micro["r"]}

    optimizer = make_optimizer(OptimizerConfig(learning_rate=0.1))
    step = make_train_step(loss_fn, optimizer, donate=False)
    _, m = step(init_train_state({"w": jnp.ones(())}, optimizer),
                {"r": jnp.asarray([1.0, 0.0, 2.0]), "n": jnp.asarray([3.0, 0.0, 1.0])}, 0.1)
    np.testing.assert_allclose(float(m["ratio_mean"]), 1.25)
    np.testing.assert_allclose(float(m["num_tokens"]), 4.0 / 3)   # per micro-batch, as before
    np.testing.assert_allclose(float(m["pg_loss"]), 1.0)          # not a token mean: the mean over micro-batches


def test_policy_step_ratio_mean_is_one_with_an_empty_micro_batch():
    # The first update sees the rollout weights: every token's ratio is 1, whatever the micro-batches hold.
    import jax

    from tests.helpers import policy_step_case as case
    from tracerl_jax.train.steps import PolicyLossConfig, make_policy_step

    graphdef, params, batch = case.build_case()
    # Empty the second micro-batch (no scored token, no valid row).
    batch = dict(batch, rows=batch["rows"]._replace(
        p_mask=batch["rows"].p_mask.at[1].set(False), row_valid=batch["rows"].row_valid.at[1].set(False)))
    old = batch["logp_old"]
    from tracerl_jax.scoring import trajectory_logprobs

    batch["logp_old"] = jax.vmap(lambda r: trajectory_logprobs(graphdef, params, r))(batch["rows"])
    assert old.shape == batch["logp_old"].shape
    opt = make_optimizer(OptimizerConfig(learning_rate=1e-3))
    _, m = make_policy_step(graphdef, opt, PolicyLossConfig())(init_train_state(params, opt), batch, 1e-3)
    np.testing.assert_allclose(float(m["ratio_mean"]), 1.0, atol=1e-5)
