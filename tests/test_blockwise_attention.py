"""Tile-skipping attention (blockwise JAX, splash in interpret mode) equals the dense path.

Every case compares against ``dot_product_attention(q, k, v, dense_mask(info, info))``:
outputs and gradients to 1e-5 in float32, on the TraceRL extended layout with
left-padded prompts and on block-causal, causal and bidirectional masks,
including rows with no allowed key (dead-row repair). Then the model forward
and one policy step with ``attention_impl="blockwise"`` against ``"dense"``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import policy_step_case as case
from tracerl_jax.attention import (allowed, causal_info, dense_mask, dot_product_attention,
                                   extended_info, full_info, generation_info, self_attention)
from tracerl_jax.blockwise_attention import blockwise_attention, pad_info, tile_schedule, visited_fraction
from tracerl_jax.models import forward, init_model, split_model
from tracerl_jax.train.optimizer import OptimizerConfig, make_optimizer
from tracerl_jax.train.step import init_train_state
from tracerl_jax.train.steps import PolicyLossConfig, make_policy_step

TOL = 1e-5


def _qkv(B, N, H, Hkv, D, seed=0):
    rng = np.random.default_rng(seed)
    f = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
    return f(B, N, H, D), f(B, N, Hkv, D), f(B, N, Hkv, D), f(B, N, H, D)


def _prompt_valid(B, L0, seed=0):
    """Left padding of random lengths, one row fully padded (its prompt rows are dead)."""
    rng = np.random.default_rng(seed)
    valid = np.ones((B, L0), bool)
    for i in range(B):
        valid[i, :rng.integers(0, L0)] = False
    valid[-1] = False
    return jnp.asarray(valid)


def _dense(info):
    return lambda q, k, v: dot_product_attention(q, k, v, dense_mask(info, info))


def _check(info, H=4, Hkv=2, D=8, q_tile=16, k_tile=16, grads=True):
    B, N = info.block.shape
    q, k, v, w = _qkv(B, N, H, Hkv, D)
    dense = _dense(info)
    blockwise = lambda q, k, v: blockwise_attention(q, k, v, info, q_tile=q_tile, k_tile=k_tile)
    want, got = dense(q, k, v), jax.jit(blockwise)(q, k, v)
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
    if grads:
        loss = lambda f: lambda *a: jnp.sum(f(*a) * w)
        gd = jax.grad(loss(dense), argnums=(0, 1, 2))(q, k, v)
        gb = jax.jit(jax.grad(loss(blockwise), argnums=(0, 1, 2)))(q, k, v)
        for name, a, b in zip("qkv", gb, gd):
            np.testing.assert_allclose(a, b, atol=TOL, rtol=0, err_msg=f"d{name}")


@pytest.mark.parametrize("L0,L1,b,q_tile,k_tile", [
    (12, 40, 4, 16, 16),    # N = 92: not a multiple of the tile
    (8, 32, 4, 8, 8),       # tiles = 2 blocks, N a multiple of the tile
    (13, 36, 3, 16, 32),    # odd block size, q and k tiles differ, partial prompt block
])
def test_extended_layout_matches_dense(L0, L1, b, q_tile, k_tile):
    info = extended_info(_prompt_valid(3, L0), L1, b)
    _check(info, q_tile=q_tile, k_tile=k_tile)
    assert visited_fraction(info, q_tile, k_tile) < 1.0


def test_extended_layout_mha_and_one_tile():
    info = extended_info(_prompt_valid(2, 8, seed=3), 20, 4)
    _check(info, H=2, Hkv=2, q_tile=8, k_tile=8)
    _check(info, q_tile=128, k_tile=128, grads=False)   # tiles longer than the sequence


@pytest.mark.parametrize("kind", ["block_causal", "causal", "full"])
def test_other_layouts_match_dense(kind):
    B, L = 3, 45
    valid = np.ones((B, L), bool)
    valid[0, :7] = False       # left padding
    valid[1, :] = False        # every key invalid: all rows dead
    valid[2, 20:23] = False    # holes
    valid = jnp.asarray(valid)
    info = {"block_causal": lambda: generation_info(valid, 4, grid_start=9),
            "causal": lambda: causal_info(valid),
            "full": lambda: full_info(valid)}[kind]()
    _check(info, q_tile=16, k_tile=8, grads=kind != "full")


def test_dead_rows_attend_to_themselves():
    # Causal with key 0 invalid: query 0 has no allowed key and must return v[0].
    valid = jnp.asarray(np.array([[False] + [True] * 9]))
    info = causal_info(valid)
    q, k, v, _ = _qkv(1, 10, 2, 1, 4, seed=5)
    out = blockwise_attention(q, k, v, info, q_tile=4, k_tile=4)
    np.testing.assert_allclose(out[0, 0], jnp.broadcast_to(v[0, 0, 0], (2, 4)), atol=TOL)
    np.testing.assert_allclose(out, _dense(info)(q, k, v), atol=TOL)


def test_skipped_tiles_hold_no_allowed_pair():
    info = extended_info(_prompt_valid(4, 16), 64, 4)
    qt, kt = 16, 8
    N = info.block.shape[1]
    Lp = -(-N // 16) * 16
    pinfo = pad_info(info, Lp)
    sched = tile_schedule(pinfo, qt, kt)
    m = np.asarray(allowed(pinfo, pinfo)).any(0)                       # [Lp, Lp]
    need = m.reshape(Lp // qt, qt, Lp // kt, kt).any(axis=(1, 3))
    order, count = np.asarray(sched.order), np.asarray(sched.count)
    visited = np.zeros_like(need)
    for i in range(need.shape[0]):
        visited[i, order[i, :count[i]]] = True
        assert list(order[i, :count[i]]) == sorted(order[i, :count[i]])
    assert not np.any(need & ~visited)            # never skips a needed tile
    assert visited.sum() < 0.75 * visited.size     # and does skip


def test_bidirectional_visits_everything():
    info = full_info(jnp.ones((2, 40), bool))
    assert visited_fraction(info, 16, 16) == 1.0


def test_self_attention_dispatch_and_errors():
    info = extended_info(_prompt_valid(2, 8), 16, 4)
    q, k, v, _ = _qkv(2, 40, 4, 2, 8)
    want = self_attention(q, k, v, info)
    got = self_attention(q, k, v, info, implementation="blockwise", q_tile=8, k_tile=8)
    np.testing.assert_allclose(got, want, atol=TOL)
    with pytest.raises(ValueError, match="implementation"):
        self_attention(q, k, v, info, implementation="flash")
    with pytest.raises(ValueError, match="q_tile"):
        blockwise_attention(q, k, v, info, q_tile=0)
    with pytest.raises(ValueError, match="splash"):
        self_attention(q, k, v, info, implementation="splash")   # not a TPU backend
    with pytest.raises(ValueError, match="attention_impl"):
        case.CFG.replace(attention_impl="flash")


def _model_pair():
    dense_cfg = case.CFG
    bw_cfg = case.CFG.replace(attention_impl="blockwise", attention_q_tile=8, attention_k_tile=16)
    gd, params = split_model(init_model(dense_cfg, seed=0))
    gb, params_b = split_model(init_model(bw_cfg, seed=0))
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params_b)):
        np.testing.assert_array_equal(a, b)
    return gd, gb, params


def test_model_forward_blockwise_equals_dense():
    gd, gb, params = _model_pair()
    B, L0, L1 = 3, 8, 24
    info = extended_info(_prompt_valid(B, L0), L1, 4)
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(3, 32, size=(B, L0 + 2 * L1)), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(L0 + 2 * L1, dtype=jnp.int32), tokens.shape)
    want = forward(gd, params, tokens, positions, info)
    got = forward(gb, params, tokens, positions, info)
    np.testing.assert_allclose(got.hidden, want.hidden, atol=TOL)
    np.testing.assert_allclose(got.logits, want.logits, atol=TOL)


def test_policy_step_blockwise_equals_dense():
    _, gb, _ = _model_pair()
    gd, params, batch = case.build_case()
    opt = make_optimizer(OptimizerConfig(learning_rate=1e-3))
    results = []
    for graphdef in (gd, gb):
        step = make_policy_step(graphdef, opt, PolicyLossConfig())
        state, metrics = step(init_train_state(params, opt), batch, 1e-3)
        results.append((float(metrics["loss"]), float(metrics["grad_norm"]), state.params))
    (l0, g0, p0), (l1, g1, p1) = results
    assert np.isfinite(l0)
    np.testing.assert_allclose(l1, l0, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(g1, g0, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p0)):
        # Per tensor (Adam's 1/sqrt(v) magnifies single near-zero gradients, as in test_policy_step).
        assert np.linalg.norm(np.asarray(a) - np.asarray(b)) <= 1e-5 * np.linalg.norm(np.asarray(b))


def test_splash_structure_mask_is_the_predicate():
    from tracerl_jax.splash_attention import dead_rows, structure_mask

    info = extended_info(_prompt_valid(3, 12), 20, 4)
    shared = np.asarray(structure_mask(info))
    dense = np.asarray(dense_mask(info, info))[:, 0]
    valid = np.asarray(info.valid)
    # The shared mask with per-row key validity (segment ids) is the dense mask before repair.
    np.testing.assert_array_equal(shared[None] & valid[:, None, :], np.asarray(allowed(info, info)))
    dead = np.asarray(dead_rows(info))
    assert dead.any()
    eye = np.eye(shared.shape[0], dtype=bool)
    np.testing.assert_array_equal(dense, (shared[None] & valid[:, None, :]) | (dead[:, :, None] & eye[None]))


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["extended", "packed"])
def test_splash_interpret_matches_dense(layout):
    from tracerl_jax.attention import packed_info
    from tracerl_jax.splash_attention import splash_attention, splash_importable

    if not splash_importable():
        pytest.skip("no splash attention in this jax build")
    # N = 153 -> two 128-blocks; packed: 4 rounds' noised copies of a 28-token response
    info = (extended_info(_prompt_valid(2, 13), 70, 4) if layout == "extended"
            else packed_info(_prompt_valid(2, 13), 28, 4, 4))
    q, k, v, w = _qkv(2, 153, 4, 2, 16)
    dense = _dense(info)
    splash = lambda q, k, v: splash_attention(q, k, v, info, interpret=True)
    np.testing.assert_allclose(jax.jit(splash)(q, k, v), dense(q, k, v), atol=TOL)
    loss = lambda f: lambda *a: jnp.sum(f(*a) * w)
    gd = jax.grad(loss(dense), argnums=(0, 1, 2))(q, k, v)
    gs = jax.jit(jax.grad(loss(splash), argnums=(0, 1, 2)))(q, k, v)
    for a, b in zip(gs, gd):
        np.testing.assert_allclose(a, b, atol=TOL)


_SHARDED_SPLASH = """
import jax, jax.numpy as jnp, numpy as np
from tests.test_blockwise_attention import TOL, _dense, _prompt_valid, _qkv
from tracerl_jax.attention import extended_info
from tracerl_jax.splash_attention import splash_attention
from tracerl_jax.train import sharding as shd

info = extended_info(_prompt_valid(4, 13), 50, 4)          # N = 113 -> one 128-block
q, k, v, w = _qkv(4, 113, 4, 2, 16)
dense = _dense(info)
splash = lambda q, k, v: splash_attention(q, k, v, info, interpret=True)
loss = lambda f: lambda *a: jnp.sum(f(*a) * w)
want, grads = dense(q, k, v), jax.grad(loss(dense), argnums=(0, 1, 2))(q, k, v)
mesh = shd.make_mesh(1, 4, 2)                               # rows over fsdp, KV heads over tensor
with jax.set_mesh(mesh):
    assert "shard_map" in str(jax.make_jaxpr(splash)(q, k, v))
    got = jax.jit(splash)(q, k, v)
    got_grads = jax.jit(jax.grad(loss(splash), argnums=(0, 1, 2)))(q, k, v)
np.testing.assert_allclose(got, want, atol=TOL)
for a, b in zip(got_grads, grads):
    np.testing.assert_allclose(a, b, atol=TOL)
print("ok")
"""


@pytest.mark.slow
def test_splash_on_a_mesh_runs_per_device_and_matches_dense():
    # XLA cannot partition a Pallas call: under a mesh the kernel runs in a shard_map (8 CPU devices).
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tracerl_jax.splash_attention import splash_importable

    if not splash_importable():
        pytest.skip("no splash attention in this jax build")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", _SHARDED_SPLASH], cwd=Path(__file__).resolve().parents[1], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
