"""A deterministic TraceRL policy-step case shared by the in-process and multi-device tests.

Run as a script (``python -m tests.helpers.policy_step_case OUT.npz [CASE.pkl]``) it
executes the step on several meshes of the visible devices and saves the
results; imported, it gives the single-device baseline. ``CASE.pkl``
(:func:`save_case`) hands the script the rollout rows the caller already
built, so it does not sample them again.
"""

import functools
import pickle
import sys

import jax
import jax.numpy as jnp
import numpy as np

from tracerl_jax.models import ModelConfig, cache_init_fn, init_model, sampler_forward_fn, split_model
from tracerl_jax.sampling import BlockSamplerConfig, make_block_sampler
from tracerl_jax.trajectory import rows_from_rollout
from tracerl_jax.train.optimizer import OptimizerConfig, make_optimizer
from tracerl_jax.train.sharding import make_mesh
from tracerl_jax.train.step import init_train_state, state_shardings, to_microbatches
from tracerl_jax.train.steps import PolicyLossConfig, batch_scalars, make_policy_step, old_logprobs

PAD, EOS, MASK = 0, 1, 2
CFG = ModelConfig(vocab_size=32, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                  num_kv_heads=2, head_dim=16, rope_theta=10000.0, rms_norm_eps=1e-6,
                  tie_word_embeddings=False, mask_token_id=MASK, pad_token_id=PAD, eos_token_id=EOS,
                  model_type="sdar", max_position_embeddings=128)
GA = 2
_LOADED = None   # set by load_case


@functools.lru_cache(maxsize=None)
def _rollout_rows():
    graphdef, params = split_model(init_model(CFG, seed=0))
    rng = np.random.default_rng(1)
    prompts = np.full((8, 8), PAD, np.int32)
    for i in range(8):
        L = rng.integers(2, 9)
        prompts[i, 8 - L:] = rng.integers(3, 32, size=L)
    valid = prompts != PAD
    scfg = BlockSamplerConfig(gen_length=16, mask_id=MASK, eos_id=EOS, pad_id=PAD, block_size=4,
                              steps_per_block=4, strategy="low_confidence_static")
    sampler = make_block_sampler(sampler_forward_fn(graphdef), cache_init_fn(CFG), scfg)
    ro = sampler(params, prompts, valid, rng=jax.random.key(0))
    rows = rows_from_rollout(jnp.asarray(prompts), jnp.asarray(valid), ro, block_size=4, mask_id=MASK,
                             pad_id=PAD).rows
    R = rows.tokens.shape[0]
    logp_old = old_logprobs(graphdef, params, rows, 8)
    adv = jnp.asarray(rng.normal(size=(R,)), jnp.float32)
    return graphdef, params, rows, logp_old, adv


def save_case(path) -> None:
    """Writes the case's rows, old log-probs and advantages (host arrays) for the script to load."""
    _, _, rows, logp_old, adv = _rollout_rows()
    with open(path, "wb") as f:
        pickle.dump(jax.tree.map(np.asarray, (rows, logp_old, adv)), f)


def load_case(path) -> None:
    """Uses the rows saved by :func:`save_case` instead of sampling them (the same model: ``init_model`` is
    deterministic)."""
    with open(path, "rb") as f:
        rows, logp_old, adv = jax.tree.map(jnp.asarray, pickle.load(f))
    graphdef, params = split_model(init_model(CFG, seed=0))
    global _LOADED
    _LOADED = (graphdef, params, rows, logp_old, adv)


def build_case(corrupt: bool = False):
    graphdef, params, rows, logp_old, adv = _LOADED or _rollout_rows()
    if corrupt:
        adv = adv.at[3].set(jnp.nan)
    batch = dict(rows=rows, logp_old=logp_old, advantages=adv, **batch_scalars(rows.row_valid, GA, 16))
    return graphdef, params, to_microbatches(batch, GA)


def run(mesh_shape=None, corrupt=False):
    graphdef, params, batch = build_case(corrupt)
    opt = make_optimizer(OptimizerConfig(learning_rate=1e-3))
    state = init_train_state(params, opt)
    if mesh_shape is None:
        step = make_policy_step(graphdef, opt, PolicyLossConfig())
    else:
        mesh = make_mesh(*mesh_shape)
        sh = state_shardings(state, opt, mesh)
        state = jax.device_put(state, sh)
        step = make_policy_step(graphdef, opt, PolicyLossConfig(), mesh=mesh, state_sharding=sh)
    new_state, metrics = step(state, batch, 1e-3)
    flat = {"/".join(map(str, k)): np.asarray(v) for k, v in
            jax.tree_util.tree_flatten_with_path(new_state.params)[0]}
    return float(metrics["loss"]), flat, metrics, params, new_state


if __name__ == "__main__":
    if len(sys.argv) > 2:
        load_case(sys.argv[2])
    out = {}
    # 2x2x2 covers the data axis (pure data parallelism is its special case) next to FSDP and TP.
    for shape in [(2, 2, 2), (1, 4, 2), (1, 8, 1)]:
        loss, flat, _, _, _ = run(shape)
        tag = "x".join(map(str, shape))
        out[f"{tag}/loss"] = np.asarray(loss)
        for k, v in flat.items():
            out[f"{tag}/{k}"] = v
    np.savez(sys.argv[1], **out)
