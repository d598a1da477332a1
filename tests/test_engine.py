"""The slot engine (tracerl_jax.sampling.engine) gives the block sampler's trajectories.

Each response of an engine run is compared with the block sampler run on that
prompt alone (batch one, unpadded) with the same per-response PRNG key.
Tokens, step maps, lengths and step counts must be equal; log-probs and
confidences equal to float32 rounding (atol 1e-5): the engine's attention
reduces over a longer key axis (its slot's cache, the invalid half of a
step's ``[pending | noised]`` query) and prefills the prompt in chunks, so its
sums run in another order than the block sampler's, and bitwise equality is
not promised. A token would differ only if that rounding flipped a sampling
or threshold comparison; the fixed seeds here do not.

The queue holds more prompts than the engine has slots, prompts shorter than
a block, longer than one and not a multiple of it; the scenarios contain EOS
inside a block.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tracerl_jax.models import ModelConfig, cache_init_fn, init_model, sampler_forward_fn, split_model
from tracerl_jax.sampling import BlockSamplerConfig, EngineConfig, make_block_sampler, make_slot_engine
from tracerl_jax.scoring import trajectory_logprobs
from tracerl_jax.trajectory import rows_from_rollout

PAD, EOS, MASK = 0, 1, 2
CFG = ModelConfig(vocab_size=32, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                  num_kv_heads=2, head_dim=16, rope_theta=10000.0, rms_norm_eps=1e-6,
                  tie_word_embeddings=False, mask_token_id=MASK, pad_token_id=PAD, eos_token_id=EOS,
                  model_type="sdar", max_position_embeddings=256)
LQ = 11
# Shorter than a block, longer than one and not a multiple of it, two blocks and a bit; 7 prompts > 3 slots.
LENGTHS = (9, 2, 5, 9, 2, 5, 9)
FIELDS = ("tokens", "step_map", "lengths", "num_steps")


@pytest.fixture(scope="module")
def model():
    graphdef, params = split_model(init_model(CFG, seed=0))
    # Sharpen the random model so some confidences pass the dynamic threshold.
    params = jax.tree.map(lambda x: x * 1.5 if x.ndim == 2 else x, params)
    return graphdef, params


def queue(seed=0):
    rng = np.random.default_rng(seed)
    ids = np.full((len(LENGTHS), LQ), PAD, np.int32)
    for i, L in enumerate(LENGTHS):
        ids[i, LQ - L:] = rng.integers(3, CFG.vocab_size, size=L)
    return ids, ids != PAD


def sampler_config(**kw):
    base = dict(gen_length=24, mask_id=MASK, eos_id=EOS, pad_id=PAD, block_size=4, steps_per_block=4,
                strategy="low_confidence_dynamic", threshold=0.045, temperature=1.0)
    base.update(kw)
    return BlockSamplerConfig(**base)


def engine_fn(graphdef, scfg, num_slots=3, **kw):
    return make_slot_engine(sampler_forward_fn(graphdef), cache_init_fn(CFG), scfg,
                            EngineConfig(num_slots=num_slots, max_prompt_len=LQ, **kw))


def assert_equals_block_sampler_alone(graphdef, params, scfg, prompts, valid, keys, ro, unpadded, budgets=None):
    """Response ``i`` against the block sampler on prompt ``i`` alone (a batch of one): unpadded, or left-padded
    to the queue's width (one compile for all prompts; the padding is masked and positions count real tokens)."""
    block = make_block_sampler(sampler_forward_fn(graphdef), cache_init_fn(CFG), scfg)
    for i in range(prompts.shape[0]):
        P = int(valid[i].sum())
        cut = LQ - P if unpadded else 0
        alone = block(params, prompts[i:i + 1, cut:], valid[i:i + 1, cut:], row_keys=keys[i:i + 1],
                      row_budgets=None if budgets is None else budgets[i:i + 1])
        for f in FIELDS:
            np.testing.assert_array_equal(np.asarray(getattr(ro, f))[i], np.asarray(getattr(alone, f))[0],
                                          err_msg=f"response {i} (prompt length {P}): {f}")
        for f in ("logprobs", "confidences"):
            np.testing.assert_allclose(np.asarray(getattr(ro, f))[i], np.asarray(getattr(alone, f))[0], atol=1e-5,
                                       err_msg=f"response {i}: {f}")


DYNAMIC = dict(strategy="low_confidence_dynamic")


# Slot counts 3, 1 and 8 (fewer, far fewer and more slots than prompts): each equal to the prompts alone, so a
# response does not depend on the slot it ran in or on its neighbours.
# The greedy case also gives each response its own budget (row_budgets, the forced stop of the benchmark).
BUDGETS = np.array([3, 24, 7, 12, 1, 20, 5], np.int32)


# The fused engine (2b-query forwards, EngineConfig.fuse_cache_write) in one case, the default in the others.
@pytest.mark.parametrize("kw,num_slots,unpadded,budgets,fuse", [
    (DYNAMIC, 3, True, None, False),
    (dict(strategy="low_confidence_static", steps_per_block=2, temperature=0.8, top_k=8, top_p=0.9,
          max_new_tokens=10), 1, False, None, True),
    (dict(strategy="sequential", steps_per_block=3, temperature=0.0, ignore_eos=True), 8, False, BUDGETS, False),
], ids=["dynamic", "static-2-per-step-topk-topp-budget-fused", "sequential-greedy-row-budgets"])
def test_engine_equals_block_sampler_alone(model, kw, num_slots, unpadded, budgets, fuse):
    graphdef, params = model
    scfg = sampler_config(**kw)
    prompts, valid = queue()
    keys = jax.random.split(jax.random.key(3), prompts.shape[0])
    ro, stats = engine_fn(graphdef, scfg, num_slots, fuse_cache_write=fuse)(
        params, prompts, valid, row_keys=keys, row_budgets=budgets, return_stats=True)
    lengths = np.asarray(ro.lengths)
    if budgets is not None:   # no EOS: every response stops exactly at its own budget
        np.testing.assert_array_equal(lengths, budgets)
    elif scfg.max_new_tokens is None:
        # The scenario must contain a response ending at an EOS inside a block.
        assert np.any((lengths < scfg.gen_length) & (lengths % scfg.block_size != 0)), lengths
    else:
        assert np.any(lengths == scfg.max_new_tokens), lengths
    if kw["strategy"] == "low_confidence_dynamic":   # several tokens committed by one step
        sm = np.asarray(ro.step_map)
        assert any(np.bincount(sm[r][sm[r] > 0]).max() > 1 for r in range(sm.shape[0]))
    assert_equals_block_sampler_alone(graphdef, params, scfg, prompts, valid, keys, ro, unpadded, budgets)
    # Every denoising slot-forward advanced exactly one response's step counter.
    assert int(stats.denoise_slot_forwards) == int(np.asarray(ro.num_steps).sum())
    assert int(stats.denoise_slot_forwards) <= int(stats.busy_slot_forwards) <= int(stats.slot_forwards)
    assert int(stats.slot_forwards) == num_slots * int(stats.forwards)


def test_engine_rollouts_agree_with_trainer(model):
    """The central invariant (tests/test_agreement.py) on engine rollouts: the training path's log-prob of
    every completion token equals the one the engine recorded at commit."""
    graphdef, params = model
    scfg = sampler_config(**DYNAMIC)   # the program of the dynamic case above (compilation cache)
    prompts, valid = queue(seed=2)
    ro = engine_fn(graphdef, scfg)(params, prompts, valid, rng=jax.random.key(42))
    rr = rows_from_rollout(jnp.asarray(prompts), jnp.asarray(valid), ro, block_size=4, mask_id=MASK, pad_id=PAD,
                           post_num=None)
    logp = np.asarray(jax.jit(trajectory_logprobs, static_argnums=0)(graphdef, params, rr.rows))
    scored = np.asarray(rr.rows.scored)
    recorded = np.asarray(ro.logprobs)[np.asarray(rr.rows.response_index)]
    assert scored.sum() > 50
    assert np.abs(logp - recorded)[scored].max() <= 1e-4


def test_bad_input_raises_before_tracing(model):
    graphdef, params = model
    scfg = sampler_config()
    prompts, valid = queue()
    fwd, init = sampler_forward_fn(graphdef), cache_init_fn(CFG)
    per_slot = EngineConfig(num_slots=1, max_prompt_len=LQ).slot_cache_len(scfg)
    with pytest.raises(ValueError, match="num_slots"):
        make_slot_engine(fwd, init, scfg, EngineConfig(num_slots=4, max_prompt_len=LQ, cache_tokens=3 * per_slot))
    with pytest.raises(ValueError, match="compat"):
        make_slot_engine(fwd, init, sampler_config(compat="reference"), EngineConfig(2, LQ))
    with pytest.raises(ValueError, match="num_slots"):
        EngineConfig(num_slots=0, max_prompt_len=LQ)
    short = make_slot_engine(fwd, init, scfg, EngineConfig(num_slots=2, max_prompt_len=8))
    with pytest.raises(ValueError, match="max_prompt_len"):   # a 9-token prompt
        short(params, prompts, valid, rng=jax.random.key(0))
    eng = engine_fn(graphdef, scfg)
    with pytest.raises(ValueError, match="row_keys"):
        eng(params, prompts, valid, row_keys=jax.random.split(jax.random.key(0), 3))
    with pytest.raises(ValueError, match="row_budgets"):
        eng(params, prompts, valid, rng=jax.random.key(0), row_budgets=np.ones(3, np.int32))
    with pytest.raises(ValueError, match="row_budgets"):
        eng(params, prompts, valid, rng=jax.random.key(0), row_budgets=np.full(len(LENGTHS), 25, np.int32))
    with pytest.raises(ValueError, match="prompt_valid"):
        eng(params, prompts, valid[:, 1:], rng=jax.random.key(0))
    with pytest.raises(ValueError, match="prompts"):
        eng(params, prompts[0], valid[0], rng=jax.random.key(0))


def test_padding_beyond_the_prompt_budget_is_dropped(model):
    """A queue wider than the prompt budget is fine when every prompt fits it (the extra columns are padding)."""
    graphdef, params = model
    scfg = sampler_config(**DYNAMIC)
    prompts, valid = queue()
    wide_p = np.concatenate([np.full((prompts.shape[0], 5), PAD, np.int32), prompts], axis=1)
    wide_v = np.concatenate([np.zeros((prompts.shape[0], 5), bool), valid], axis=1)
    keys = jax.random.split(jax.random.key(3), prompts.shape[0])
    eng = engine_fn(graphdef, scfg)
    a, b = eng(params, prompts, valid, row_keys=keys), eng(params, wide_p, wide_v, row_keys=keys)
    for f in FIELDS:
        np.testing.assert_array_equal(np.asarray(getattr(a, f)), np.asarray(getattr(b, f)), err_msg=f)

