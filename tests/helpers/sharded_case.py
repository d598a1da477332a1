"""Sharded rollouts and value step vs one device, run in a process with 8 CPU devices.

``python -m tests.helpers.sharded_case OUT.npz`` (with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``) computes, in one
process so both sides compile with the same XLA, the rollout of the block
sampler and one value-model update on device 0 alone and on the meshes
``(data, fsdp, tensor) = (1, 4, 2)`` and ``(1, 8, 1)`` with the parameters
sharded by the library's rule table (the rollout also in two sampler calls
of 8 rows, ``rollout.rows_per_device=1``), and saves both for the test to compare.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np

from tests.helpers.policy_step_case import CFG, EOS, GA, MASK, PAD
from tracerl_jax.models import cache_init_fn, init_model, sampler_forward_fn, split_model, value_model_from_policy
from tracerl_jax.rl.distributed import chunked_sampler, global_sampler
from tracerl_jax.sampling import BlockSamplerConfig, make_block_sampler
from tracerl_jax.scoring import trajectory_values
from tracerl_jax.train import sharding as shd
from tracerl_jax.train.optimizer import OptimizerConfig, make_optimizer
from tracerl_jax.train.step import init_train_state, state_shardings, to_microbatches
from tracerl_jax.train.steps import batch_scalars, make_value_step, old_values
from tracerl_jax.trajectory import rows_from_rollout

MESHES = ((1, 4, 2), (1, 8, 1))


def prompts_batch(n=16, L0=8, seed=1):
    rng = np.random.default_rng(seed)
    prompts = np.full((n, L0), PAD, np.int32)
    for i in range(n):
        L = rng.integers(2, L0 + 1)
        prompts[i, L0 - L:] = rng.integers(3, 32, size=L)
    return prompts, prompts != PAD


def rollout(params, graphdef, mesh, temperature, rows_per_call=None):
    scfg = BlockSamplerConfig(gen_length=16, mask_id=MASK, eos_id=EOS, pad_id=PAD, block_size=4, steps_per_block=4,
                              strategy="low_confidence_dynamic", threshold=0.3, temperature=temperature)
    sample = make_block_sampler(sampler_forward_fn(graphdef), cache_init_fn(CFG), scfg)
    if mesh is not None:
        sample = chunked_sampler(global_sampler(sample, mesh), rows_per_call)
        params = jax.device_put(params, shd.named(mesh, shd.param_specs(params, mesh)))
    prompts, valid = prompts_batch()
    ro = sample(params, prompts, valid, rng=jax.random.key(5))
    return {k: np.asarray(v) for k, v in ro._asdict().items()}


def value_update(mesh):
    model = init_model(CFG, seed=0)
    graphdef, params = split_model(model)
    vgraph, vparams = split_model(value_model_from_policy(model))
    # A non-zero value head, so values and their gradients are not trivially zero.
    kernel = vparams["value_head"]["kernel"]
    vparams["value_head"]["kernel"] = jnp.asarray(np.random.default_rng(0).normal(0, 0.5, kernel.shape),
                                                  kernel.dtype)
    ro = rollout(params, graphdef, None, 1.0)
    prompts, valid = prompts_batch()
    rows = rows_from_rollout(jnp.asarray(prompts), jnp.asarray(valid), _as_rollout(ro), block_size=4, mask_id=MASK,
                             pad_id=PAD).rows
    R = rows.row_valid.shape[0]
    olds = old_values(vgraph, vparams, rows, 16)
    returns = jnp.asarray(np.random.default_rng(2).normal(size=olds.shape), jnp.float32)
    batch = to_microbatches(dict(rows=rows, old_values=olds, returns=returns,
                                 **batch_scalars(rows.row_valid, GA, 16)), GA)
    opt = make_optimizer(OptimizerConfig(learning_rate=1e-3))
    state = init_train_state(vparams, opt)
    if mesh is None:
        step = make_value_step(vgraph, opt, clip=0.2)
    else:
        sh = state_shardings(state, opt, mesh)
        state = jax.device_put(state, sh)
        step = make_value_step(vgraph, opt, clip=0.2, mesh=mesh, state_sharding=sh)
    new, m = step(state, batch, 1e-3)
    assert R % 8 == 0
    flat = {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(new.params)[0]}
    # Old values by the sharded scorer too (the run computes them on the sharded value params).
    vals = np.asarray(jax.jit(trajectory_values, static_argnums=0)(vgraph, new.params, rows))
    return float(m["loss"]), flat, vals


def checkpoint_across(mesh, directory):
    """Saves a float32 train state from one device and restores it sharded on ``mesh`` in bfloat16;
    returns the largest |restored - cast(saved)| and whether every leaf got the target sharding."""
    from tracerl_jax.train.checkpoint import CheckpointManager

    _, params = split_model(init_model(CFG, seed=3))
    opt = make_optimizer(OptimizerConfig())
    state = init_train_state(params, opt)
    with CheckpointManager(directory, async_save=False) as ckpt:
        ckpt.save(1, {"policy": state})
    sh = state_shardings(state, opt, mesh)
    target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(
        x.shape, jnp.bfloat16 if x.dtype == jnp.float32 else x.dtype, sharding=s), state, sh)
    with CheckpointManager(directory) as ckpt:
        got = ckpt.restore(target={"policy": target}).state["policy"]
    err = max(float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.bfloat16).astype(jnp.float32))))
              for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(state)) if a.size)
    placed = all(a.sharding == s for a, s in zip(jax.tree.leaves(got), jax.tree.leaves(sh)))
    sharded = any(len(a.sharding.device_set) > 1 and not a.is_fully_replicated for a in jax.tree.leaves(got.params))
    return err, placed and sharded


def _as_rollout(ro):
    from tracerl_jax.sampling import Rollout

    return Rollout(**{k: jnp.asarray(v) for k, v in ro.items()})


if __name__ == "__main__":
    out = {}
    graphdef, params = split_model(init_model(CFG, seed=0))
    for temperature in (1.0,):
        for tag, mesh in [("one", None)] + [("x".join(map(str, s)), shd.make_mesh(*s)) for s in MESHES]:
            for k, v in rollout(params, graphdef, mesh, temperature).items():
                out[f"rollout/{temperature}/{tag}/{k}"] = v
        # rollout.rows_per_device=1: the 16 rows in two calls of 8 (one row per device)
        for k, v in rollout(params, graphdef, shd.make_mesh(1, 8, 1), temperature, rows_per_call=8).items():
            out[f"rollout/{temperature}/1x8x1-chunked/{k}"] = v
    for tag, mesh in [("one", None)] + [("x".join(map(str, s)), shd.make_mesh(*s)) for s in MESHES]:
        loss, flat, vals = value_update(mesh)
        out[f"value/{tag}/loss"] = np.asarray(loss)
        out[f"value/{tag}/values"] = vals
        for k, v in flat.items():
            out[f"value/{tag}/param{k}"] = v
    import tempfile

    for s_ in MESHES:
        tag = "x".join(map(str, s_))
        err, placed = checkpoint_across(shd.make_mesh(*s_), tempfile.mkdtemp())
        out[f"checkpoint/{tag}/err"], out[f"checkpoint/{tag}/placed"] = np.asarray(err), np.asarray(placed)
    try:  # a tensor axis of 3 divides no dimension of this model (widths 16..128, vocab 32)
        shd.check_mesh_shards(params, shd.make_mesh(1, 1, 3, devices=jax.devices()[:3]))
        out["bad_axis"] = np.asarray("no error")
    except ValueError as e:
        out["bad_axis"] = np.asarray(str(e))
    shd.check_mesh_shards(params, shd.make_mesh(1, 4, 2))   # the meshes above shard it
    np.savez(sys.argv[1], **out)
