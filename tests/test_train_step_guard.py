"""The NaN/Inf guard of the generic train step (``optax.apply_if_finite`` around the optimizer)."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tracerl_jax.train.optimizer import OptimizerConfig, make_optimizer
from tracerl_jax.train.step import TrainState, init_train_state, make_train_step


def _loss_fn(params, micro):
    # ``bad`` enters the loss through a stop_gradient term only: it can make the loss
    # non-finite while every gradient stays finite.
    w = params["w"]
    loss = jnp.sum((w - micro["x"]) ** 2) + jax.lax.stop_gradient(jnp.sum(micro["bad"]))
    return loss, {"x_mean": jnp.mean(micro["x"])}


def _batch(x_scale=1.0, bad=0.0, ga=2):
    x = jnp.arange(ga * 3 * 4, dtype=jnp.float32).reshape(ga, 3, 4) * x_scale / 10
    return {"x": x, "bad": jnp.full((ga, 3), bad, jnp.float32)}


def _setup():
    optimizer = make_optimizer(OptimizerConfig(learning_rate=0.1, weight_decay=0.01))
    state = init_train_state({"w": jnp.linspace(-1.0, 1.0, 4)}, optimizer)
    return optimizer, state, make_train_step(_loss_fn, optimizer, donate=False)


def _assert_same_tree(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("case", ["nan_grads", "inf_grads", "nan_loss_finite_grads", "inf_loss_finite_grads"])
def test_non_finite_step_is_skipped(case):
    _, state, step = _setup()
    state, m = step(state, _batch(), 0.1)   # one good step: moments are non-zero
    assert float(m["skipped"]) == 0.0 and int(state.step) == 1
    batch = {"nan_grads": _batch(x_scale=np.nan), "inf_grads": _batch(x_scale=np.inf),
             "nan_loss_finite_grads": _batch(bad=np.nan), "inf_loss_finite_grads": _batch(bad=np.inf)}[case]
    new, m = step(state, batch, 0.1)
    assert float(m["skipped"]) == 1.0
    assert not np.isfinite(float(m["loss"]))
    assert int(new.step) == 1
    _assert_same_tree(new.params, state.params)
    # moments and counters unchanged (the learning rate is the same 0.1)
    _assert_same_tree(new.opt_state, state.opt_state)
    if case.endswith("finite_grads"):
        assert np.isfinite(float(m["grad_norm"]))


def test_training_resumes_after_many_skipped_steps():
    # apply_if_finite's own counter would give up after max_consecutive_errors; the step never does.
    _, state, step = _setup()
    for _ in range(5):
        state, m = step(state, _batch(bad=np.nan), 0.1)
        assert float(m["skipped"]) == 1.0
    assert int(state.step) == 0
    state, m = step(state, _batch(), 0.1)
    assert float(m["skipped"]) == 0.0 and int(state.step) == 1


def test_good_step_matches_plain_optax_update():
    optimizer, state, step = _setup()
    batch = _batch()
    new, m = step(state, batch, 0.05)
    # The same update by hand: mean gradient over the micro-batches, one optax update at lr 0.05.
    grads = jax.tree.map(lambda *g: sum(g) / 2, *[jax.grad(lambda p, b: _loss_fn(p, b)[0])(
        state.params, jax.tree.map(lambda x: x[i], batch)) for i in range(2)])
    opt_state = optax.tree.set(state.opt_state, learning_rate=jnp.float32(0.05))
    updates, want_opt = optimizer.update(grads, opt_state, state.params)
    np.testing.assert_allclose(new.params["w"], optax.apply_updates(state.params, updates)["w"], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(new.opt_state), jax.tree.leaves(want_opt)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
    np.testing.assert_allclose(float(m["grad_norm"]), float(optax.tree.norm(grads)), rtol=1e-6)
    assert float(m["lr"]) == pytest.approx(0.05) and float(m["skipped"]) == 0.0
    # the optimizer state keeps the plain optimizer's layout (shardings, checkpoints)
    assert isinstance(new, TrainState)
    assert jax.tree.structure(new.opt_state) == jax.tree.structure(optimizer.init(state.params))


def test_no_deprecated_optax_calls():
    _, state, step = _setup()
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        step.lower(state, _batch(), 0.1)   # traces the step afresh
