"""Rollout/trainer agreement: the project's central invariant.

For rollouts of the block sampler (temperature 1, no top-k/top-p), the log-prob
of every completion token recomputed by the training path -- TraceRL rows in
the extended layout, scored at the noised copy -- equals the log-prob the
sampler recorded when it committed that token. It covers static and dynamic
remasking, left-padded prompts of different lengths, EOS inside a block and
several tokens committed per step.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tracerl_jax.models import ModelConfig, cache_init_fn, init_model, sampler_forward_fn, split_model
from tracerl_jax.sampling import BlockSamplerConfig, make_block_sampler
from tracerl_jax.scoring import trajectory_logprobs
from tracerl_jax.trajectory import rows_from_rollout

PAD, EOS, MASK = 0, 1, 2
CFG = ModelConfig(vocab_size=32, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                  num_kv_heads=2, head_dim=16, rope_theta=10000.0, rms_norm_eps=1e-6,
                  tie_word_embeddings=False, mask_token_id=MASK, pad_token_id=PAD, eos_token_id=EOS,
                  model_type="sdar", max_position_embeddings=256)


@pytest.fixture(scope="module")
def model():
    graphdef, params = split_model(init_model(CFG, seed=0))
    # Sharpen the random model so some confidences pass the dynamic threshold.
    params = jax.tree.map(lambda x: x * 1.5 if x.ndim == 2 else x, params)
    return graphdef, params


def prompts_batch(n, rng):
    lengths = rng.integers(1, 12, size=n)
    L0 = 12
    ids = np.full((n, L0), PAD, np.int32)
    for i, L in enumerate(lengths):
        ids[i, L0 - L:] = rng.integers(3, CFG.vocab_size, size=L)
    return ids, ids != PAD


@pytest.mark.parametrize("strategy,steps,block", [
    ("low_confidence_static", 4, 4),
    ("low_confidence_static", 2, 4),
    ("low_confidence_dynamic", 4, 4),
    ("sequential", 3, 4),
    ("low_confidence_dynamic", 8, 8),
])
def test_trajectory_logprobs_equal_sampler_logprobs(model, strategy, steps, block):
    graphdef, params = model
    rng = np.random.default_rng(0)
    prompts, valid = prompts_batch(12, rng)
    scfg = BlockSamplerConfig(gen_length=32, mask_id=MASK, eos_id=EOS, pad_id=PAD, block_size=block,
                              steps_per_block=steps, strategy=strategy, threshold=0.045, temperature=1.0)
    sampler = make_block_sampler(sampler_forward_fn(graphdef), cache_init_fn(CFG), scfg,
                                 vocab_size=CFG.vocab_size)
    ro = sampler(params, prompts, valid, rng=jax.random.key(42))
    lengths = np.asarray(ro.lengths)
    # The scenario must actually contain EOS inside a block and several commits per step.
    assert np.any((lengths < 32) & (lengths % block != 0)), lengths
    if strategy == "low_confidence_dynamic":
        sm = np.asarray(ro.step_map)
        assert any(np.bincount(sm[r][sm[r] > 0]).max() > 1 for r in range(sm.shape[0]))

    rr = rows_from_rollout(jnp.asarray(prompts), jnp.asarray(valid), ro, block_size=block, mask_id=MASK,
                           pad_id=PAD, post_num=None)
    rows = rr.rows
    logp = np.asarray(jax.jit(trajectory_logprobs, static_argnums=0)(graphdef, params, rows))
    p_mask = np.asarray(rows.scored)
    idx = np.asarray(rows.response_index)
    recorded = np.asarray(ro.logprobs)[idx]
    # every completion token is scored exactly once
    counts = np.zeros_like(np.asarray(rr.completion), dtype=int)
    np.add.at(counts, idx, p_mask.astype(int))
    np.testing.assert_array_equal(counts, np.asarray(rr.completion).astype(int))
    diff = np.abs(logp - recorded)[p_mask]
    assert p_mask.sum() > 100
    assert diff.max() <= 1e-4, diff.max()
