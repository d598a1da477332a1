"""One RL iteration of a full-attention model through the stages of ``rl`` and ``train.steps``.

Rollout (full sampler, shipped task tokenizer) -> group z-scores -> rows of
each method -> packing -> old log-probs -> policy update; and the value path
(old values -> step-level GAE over the shrunk steps -> value update).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tracerl_jax import rl
from tracerl_jax.families import RowSettings, get_family
from tracerl_jax.models import full_sampler_forward_fn, get_preset, init_model, split_model, value_model_from_policy
from tracerl_jax.sampling import FullSamplerConfig, make_full_sampler
from tracerl_jax.rl import pipeline
from tracerl_jax.rows import response_mask
from tracerl_jax.scoring import trajectory_logprobs, trajectory_values
from tracerl_jax.tasks import get_task
from tracerl_jax.tokenizers import load_tokenizer
from tracerl_jax.train.optimizer import OptimizerConfig, make_optimizer
from tracerl_jax.train.step import init_train_state
from tracerl_jax.train.steps import FULL_ATTENTION_REF, make_policy_step, make_value_step, old_logprobs

BATCH_ROWS, GA = 8, 2
DREAM = get_family("dream")


def settings(tok, **kw):
    return RowSettings(mask_id=tok.mask_id, pad_id=tok.pad_id, block_size=4, shrink=2, post_num=0, **kw)


@pytest.fixture(scope="module")
def setup():
    tok = load_tokenizer("tasks")
    mcfg = get_preset("tiny", model_type="dream", vocab_size=tok.vocab_size, mask_token_id=tok.mask_id,
                      pad_token_id=tok.pad_id, eos_token_id=tok.eos_id, num_layers=1)
    model = init_model(mcfg, seed=0)
    graphdef, params = split_model(model)
    scfg = FullSamplerConfig(gen_length=8, mask_id=tok.mask_id, pad_id=tok.pad_id, eos_id=tok.eos_id, family="dream",
                             block_size=4, steps=4, temperature=1.0, early_stop=False)
    sample_fn = make_full_sampler(full_sampler_forward_fn(graphdef), None, scfg, vocab_size=mcfg.vocab_size)
    examples = get_task("arithmetic", digits=1, operands=2, ops="+").generate("train", 3, seed=0)
    # A deterministic, varied toy reward so no group is filtered (a random model never solves a task).
    score = lambda texts, exs, lengths: np.asarray([len(t) % 3 for t in texts], np.float32) + np.arange(len(texts)) % 2
    batch = rl.rollout_and_reward(sample_fn, params, tok, examples, k=2, prompt_len=16, rng=jax.random.key(0),
                                  score_fn=score, group_filter="none")
    return tok, mcfg, model, graphdef, params, batch


@pytest.fixture(scope="module")
def policy_step(setup):
    # One compiled step for every method: update batches have one shape whatever the rows.
    opt = make_optimizer(OptimizerConfig(learning_rate=1e-3))
    return opt, make_policy_step(setup[3], opt, FULL_ATTENTION_REF)


@pytest.mark.parametrize("method", rl.ROW_BUILDERS.names())
def test_policy_iteration(setup, policy_step, method):
    tok, mcfg, _, graphdef, params, batch = setup
    rows, completion = rl.build_policy_rows(method, batch, family=DREAM, settings=settings(tok, num_draws=2),
                                            key=jax.random.key(1))
    batches = pipeline.pack(rows, batch_rows=BATCH_ROWS, grad_accum=GA)
    assert batches.count >= 1 and batches.rows.p_mask.shape[1:] == (GA, BATCH_ROWS // GA, 8)
    logp_old = pipeline.make_batch_scorer(trajectory_logprobs, graphdef)(params, batches)
    # Old log-probs of the live batches are the per-row ones; the empty batches are skipped (zeros).
    flat = jax.tree.map(lambda x: x[:batches.count].reshape(-1, *x.shape[3:]), batches.rows)
    np.testing.assert_allclose(np.asarray(logp_old[:batches.count]).reshape(flat.p_mask.shape),
                               old_logprobs(graphdef, params, flat, 4), rtol=1e-6, atol=1e-6)
    assert not np.asarray(logp_old[batches.count:]).any()
    step_ids, trainable = rl.response_targets(batch, completion, family=DREAM, settings=settings(tok))
    adv, _ = pipeline.batch_advantages("group", batches, rewards=batch.advantages, step_ids=step_ids,
                                       trainable=trainable)
    opt, step = policy_step
    state = init_train_state(params, opt)
    first = None
    for i in range(batches.count):
        state, m = step(state, pipeline.take_batch(batches, i, 8.0, logp_old=logp_old, advantages=adv), 1e-3)
        first = m if first is None else first
        assert np.isfinite(float(m["loss"])) and float(m["skipped"]) == 0.0
    # The first update sees the rollout weights: every ratio is 1 (§6.1).
    np.testing.assert_allclose(float(first["ratio_mean"]), 1.0, atol=1e-5)
    if method == "TraceRL":
        # Each completion token is scored exactly once over the rows.
        counts = np.zeros(completion.shape, int)
        np.add.at(counts, np.asarray(rows.response_index), np.asarray(response_mask(rows)).astype(int))
        np.testing.assert_array_equal(counts, completion.astype(int))


def test_value_path(setup):
    tok, mcfg, model, graphdef, params, batch = setup
    rows, completion = rl.build_policy_rows("TraceRL", batch, family=DREAM, settings=settings(tok),
                                            key=jax.random.key(1))
    batches = pipeline.pack(rows, batch_rows=BATCH_ROWS, grad_accum=GA)
    vgraph, vparams = split_model(value_model_from_policy(model))
    # A non-zero value head, so the gathered old values are not all 0.
    kernel = vparams["value_head"]["kernel"]
    vparams["value_head"]["kernel"] = jnp.asarray(np.random.default_rng(0).normal(0, 0.5, kernel.shape), kernel.dtype)
    vals = pipeline.make_batch_scorer(trajectory_values, vgraph)(vparams, batches)
    step_ids, trainable = rl.response_targets(batch, completion, family=DREAM, settings=settings(tok))
    A, R = pipeline.batch_advantages("step_gae", batches, rewards=batch.advantages, step_ids=step_ids,
                                     trainable=trainable, old_values=vals, gamma=1.0, lam=1.0)
    # The same through the flat-rows stages.
    packed = jax.tree.map(lambda x: np.asarray(x).reshape(-1, *x.shape[3:]), batches.rows)
    flat_vals = np.asarray(vals).reshape(packed.p_mask.shape)
    inputs = rl.advantage_inputs(packed, batch, completion, family=DREAM, settings=settings(tok), old_values=flat_vals)
    A_flat, R_flat = rl.compute_advantages("step_gae", inputs, gamma=1.0, lam=1.0)
    A, R, vals = (np.asarray(x).reshape(packed.p_mask.shape) for x in (A, R, vals))
    np.testing.assert_allclose(A, A_flat, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(R, R_flat, rtol=1e-6, atol=1e-7)
    keep = np.asarray(packed.p_mask & packed.row_valid[:, None])
    # γ = λ = 1: every trainable token's return is its response's z-score and A = R - V (§8.5).
    z = batch.advantages[packed.response_index][:, None]
    scored_any = keep.any(1)
    np.testing.assert_allclose(R[keep], np.broadcast_to(z, keep.shape)[keep], rtol=1e-6)
    np.testing.assert_allclose(A[keep], (np.broadcast_to(z, keep.shape) - vals)[keep], rtol=1e-5, atol=1e-6)
    assert scored_any.sum() > 0 and np.abs(vals[keep]).max() > 0
    opt = make_optimizer(OptimizerConfig(learning_rate=1e-3))
    vstep = make_value_step(vgraph, opt, clip=0.2, normalizer="row_tokens")
    vstate = init_train_state(vparams, opt)
    shape = batches.rows.p_mask.shape
    for i in range(batches.count):
        b = pipeline.take_batch(batches, i, 8.0, old_values=jnp.asarray(vals).reshape(shape),
                                returns=jnp.asarray(R).reshape(shape))
        vstate, m = vstep(vstate, b, 1e-3)
        assert np.isfinite(float(m["loss"]))

