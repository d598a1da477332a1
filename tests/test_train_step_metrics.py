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
