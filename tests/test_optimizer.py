"""Learning-rate schedules and the injected learning rate (tracerl_jax.train.optimizer)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tracerl_jax.train.optimizer import OptimizerConfig, learning_rate, make_optimizer, set_learning_rate


def _reference_learning_rate(cfg, update, updates_this_rl_step=1, update_in_rl_step=0):
    """The hand-written formulas ``learning_rate`` used before it was built from optax schedules."""
    lr = cfg.learning_rate
    if cfg.schedule == "constant":
        return lr * (update + 1) / (cfg.warmup + 1) if update < cfg.warmup else lr
    if cfg.schedule == "cosine":
        if update < cfg.warmup:
            return lr * (update + 1) / (cfg.warmup + 1)
        span = max(cfg.total_updates - cfg.warmup, 1)
        t = min((update - cfg.warmup) / span, 1.0)
        floor = lr * cfg.min_lr_scale
        return floor + (lr - floor) * 0.5 * (1.0 + math.cos(math.pi * t))
    t = min(update_in_rl_step / max(updates_this_rl_step, 1), 1.0)
    return lr * 0.5 * (1.0 + math.cos(math.pi * t))


def _assert_same(got, want, lr):
    assert isinstance(got, float)
    # 1e-7 relative; the atol only covers values the cosine takes to (rounded) zero.
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-15 * max(lr, 1e-30))


@pytest.mark.parametrize("lr", [1e-6, 3e-4, 0.0])
def test_constant_schedule_matches_reference(lr):
    cfg = OptimizerConfig(learning_rate=lr)
    for update in range(0, 300, 7):
        _assert_same(learning_rate(cfg, update, 5, update % 5), _reference_learning_rate(cfg, update), lr)


@pytest.mark.parametrize("warmup", [1, 4, 30])
def test_constant_with_warmup_matches_reference(warmup):
    lr = 3e-5
    cfg = OptimizerConfig(learning_rate=lr, warmup=warmup)
    for update in range(0, warmup + 20):
        _assert_same(learning_rate(cfg, update), _reference_learning_rate(cfg, update), lr)
    assert learning_rate(cfg, 0) == pytest.approx(lr / (warmup + 1), rel=1e-12)
    assert learning_rate(cfg, warmup) == pytest.approx(lr, rel=1e-12)


def test_warmup_is_rejected_for_the_saw_tooth():
    with pytest.raises(ValueError, match="warmup"):
        OptimizerConfig(learning_rate=1e-6, schedule="cosine_per_rl_step", warmup=3)
    with pytest.raises(ValueError, match="warmup"):
        OptimizerConfig(learning_rate=1e-6, warmup=-1)


@pytest.mark.parametrize("warmup, total, scale", [(0, 1, 0.0), (0, 50, 0.1), (5, 40, 0.0), (10, 10, 0.3),
                                                  (12, 5, 0.5), (1, 100, 1.0), (3, 200, 0.25)])
@pytest.mark.parametrize("lr", [1e-6, 2e-3])
def test_cosine_with_warmup_matches_reference(warmup, total, scale, lr):
    cfg = OptimizerConfig(learning_rate=lr, schedule="cosine", warmup=warmup, total_updates=total,
                          min_lr_scale=scale)
    for update in range(0, total + warmup + 30):
        _assert_same(learning_rate(cfg, update), _reference_learning_rate(cfg, update), lr)


@pytest.mark.parametrize("lr", [1e-6, 5e-4])
def test_cosine_per_rl_step_saw_tooth_matches_reference(lr):
    cfg = OptimizerConfig(learning_rate=lr, schedule="cosine_per_rl_step")
    update = 0
    # RL steps with different horizons (the reference's ceil(rows / batch) * epochs + 1), including 1.
    for horizon in (5, 9, 1, 2, 17, 4):
        for i in range(horizon + 2):   # a step may run past its horizon: the rate stays at the floor
            got = learning_rate(cfg, update, horizon, i)
            _assert_same(got, _reference_learning_rate(cfg, update, horizon, i), lr)
            update += 1
        assert learning_rate(cfg, update, horizon, 0) == pytest.approx(lr, rel=1e-12)   # restarts every RL step


def test_schedule_values_at_the_edges():
    cfg = OptimizerConfig(learning_rate=1.0, schedule="cosine", warmup=3, total_updates=13, min_lr_scale=0.2)
    assert [learning_rate(cfg, u) for u in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0], rel=1e-12)
    assert learning_rate(cfg, 13) == pytest.approx(0.2, rel=1e-12)
    assert learning_rate(cfg, 1000) == pytest.approx(0.2, rel=1e-12)


def _lr_leaves(opt_state):
    return optax.tree.get_all_with_path(opt_state, "learning_rate")


@pytest.mark.parametrize("max_grad_norm", [1.0, None])
def test_set_learning_rate_replaces_the_injected_rate(max_grad_norm):
    opt = make_optimizer(OptimizerConfig(learning_rate=1e-3, max_grad_norm=max_grad_norm))
    params = {"w": jnp.ones((3,))}
    state = opt.init(params)
    new = set_learning_rate(state, 0.25)
    (_, lr), = _lr_leaves(new)
    assert lr.dtype == jnp.asarray(_lr_leaves(state)[0][1]).dtype and float(lr) == 0.25
    assert jax.tree.structure(new) == jax.tree.structure(state)
    # The rate really drives the update: plain SGD-like first Adam step of size lr.
    updates, _ = opt.update({"w": jnp.full((3,), 0.1)}, new, params)
    np.testing.assert_allclose(updates["w"], -0.25, rtol=1e-4)


def test_set_learning_rate_in_any_chain_and_under_jit():
    # A chain of another shape (extra stages, the injected optimizer not second) still works.
    opt = optax.chain(optax.scale(1.0), optax.clip(1.0),
                      optax.inject_hyperparams(optax.sgd)(learning_rate=1e-2), optax.identity())
    params = jnp.zeros(2)
    state = opt.init(params)
    new = jax.jit(set_learning_rate)(state, jnp.float32(0.5))
    (_, lr), = _lr_leaves(new)
    assert float(lr) == 0.5
    updates, _ = opt.update(jnp.ones(2), new, params)
    np.testing.assert_allclose(updates, -0.5)
    with pytest.raises(KeyError, match="learning_rate"):
        set_learning_rate(optax.sgd(0.1).init(params), 0.1)   # no injected rate to set
