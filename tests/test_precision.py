"""Precision policy: bf16 compute over float32 master weights, optimizer-state dtype, rollouts in another
dtype, the sampler's own log-probs as old log-probs, checkpoints restored in another dtype."""

import jax
import jax.numpy as jnp
import numpy as np

from tests.helpers import policy_step_case as case
from tracerl_jax.models import cache_init_fn, init_model, sampler_forward_fn, split_model
from tracerl_jax.rl import pipeline
from tracerl_jax.rl.run import rollout_model
from tracerl_jax.rows import response_mask
from tracerl_jax.sampling import BlockSamplerConfig, make_block_sampler
from tracerl_jax.scoring import trajectory_logprobs
from tracerl_jax.train.checkpoint import CheckpointManager
from tracerl_jax.train.optimizer import OptimizerConfig, make_optimizer
from tracerl_jax.train.step import init_train_state
from tracerl_jax.train.steps import PolicyLossConfig, make_policy_step
from tracerl_jax.trajectory import rows_from_rollout


def test_bf16_compute_over_f32_master_weights_tracks_the_f32_step():
    graphdef, params, batch = case.build_case()
    _, bf16_graph = rollout_model(case.CFG, graphdef, "bfloat16")   # same params, bf16 compute
    opt = make_optimizer(OptimizerConfig(learning_rate=1e-3))
    out = {}
    for name, g in (("f32", graphdef), ("bf16", bf16_graph)):
        state, m = make_policy_step(g, opt, PolicyLossConfig())(init_train_state(params, opt), batch, 1e-3)
        out[name] = (float(m["loss"]), float(m["grad_norm"]), state)
    (l32, g32, s32), (l16, g16, s16) = out["f32"], out["bf16"]
    # The loss and its reductions are float32 (logits are computed in bf16): agreement to bf16 rounding.
    assert np.isfinite(l16) and abs(l16 - l32) <= 2e-2 * abs(l32) + 1e-3, (l16, l32)
    assert abs(g16 - g32) <= 5e-2 * g32, (g16, g32)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(s16.params))   # master weights stay float32
    moved = [np.abs(np.asarray(a) - np.asarray(b)).max() for a, b in zip(jax.tree.leaves(s16.params),
                                                                         jax.tree.leaves(params))]
    assert max(moved) > 0


def test_optimizer_state_dtype():
    opt = make_optimizer(OptimizerConfig(state_dtype="bf16"))
    state = opt.init({"w": jnp.zeros((3,), jnp.float32)})
    adam = state[1].inner_state[0]
    assert adam.mu["w"].dtype == jnp.bfloat16 and adam.nu["w"].dtype == jnp.float32


def test_bf16_rollouts_and_the_samplers_own_logprobs():
    graphdef, params = split_model(init_model(case.CFG, seed=0))
    params = jax.tree.map(lambda x: x * 2.0 if x.ndim == 2 else x, params)   # sharper distributions
    rcfg, rgraph = rollout_model(case.CFG, graphdef, "bfloat16")
    assert rcfg.dtype == "bfloat16" and rcfg.param_dtype == "float32"
    rng = np.random.default_rng(0)
    prompts = rng.integers(3, 32, size=(8, 8)).astype(np.int32)
    valid = np.ones_like(prompts, bool)
    scfg = BlockSamplerConfig(gen_length=16, mask_id=case.MASK, eos_id=case.EOS, pad_id=case.PAD,
                              strategy="low_confidence_dynamic", threshold=0.3)
    ro = make_block_sampler(sampler_forward_fn(rgraph), cache_init_fn(rcfg), scfg)(params, prompts, valid,
                                                                                   rng=jax.random.key(1))
    rows = rows_from_rollout(jnp.asarray(prompts), jnp.asarray(valid), ro, block_size=4, mask_id=case.MASK,
                             pad_id=case.PAD, post_num=None).rows
    scored = np.asarray(response_mask(rows))
    recorded = np.asarray(ro.logprobs)[np.asarray(rows.response_index)]
    # The bf16 sampler and the f32 trainer agree to bf16 rounding (benchmarks/precision.py measures it).
    trainer = np.asarray(trajectory_logprobs(graphdef, params, rows))
    assert scored.sum() > 50 and np.abs(trainer - recorded)[scored].max() < 0.1
    # rl.old_logprobs="rollout": the sampler's own log-probs, laid out like the update batches.
    batches = pipeline.pack(rows, batch_rows=16, grad_accum=2)
    got = np.asarray(pipeline.recorded_scores(batches, ro.logprobs))
    flat = jax.tree.map(lambda x: np.asarray(x).reshape(-1, *x.shape[3:]), batches.rows)
    want = np.where(flat.p_mask & flat.row_valid[:, None], np.asarray(ro.logprobs)[flat.response_index], 0.0)
    np.testing.assert_array_equal(got.reshape(want.shape), want)


def test_checkpoint_restores_in_another_dtype(tmp_path):
    _, params = split_model(init_model(case.CFG, seed=0))
    opt = make_optimizer(OptimizerConfig())
    state = init_train_state(params, opt)
    with CheckpointManager(tmp_path, async_save=False) as ckpt:
        ckpt.save(1, {"policy": state})
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.bfloat16 if x.dtype == jnp.float32 else x.dtype,
                                                         sharding=x.sharding), state)
    with CheckpointManager(tmp_path) as ckpt:
        got = ckpt.restore(target={"policy": target}).state["policy"]
    for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(state.params)):
        assert a.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b.astype(jnp.bfloat16)))
