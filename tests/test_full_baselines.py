"""Random-masking / coupled RL rows, SFT rows and the SFT/value steps for full-attention models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tracerl_jax.attention import causal_info
from tracerl_jax.baselines import ar_sft_rows, random_masking_rows, semi_ar_sft_rows
from tracerl_jax.models import ModelConfig, forward, init_model, split_model, value_model_from_policy
from tracerl_jax.rows import SequenceLayout, response_mask
from tracerl_jax.scoring import trajectory_logprobs, trajectory_values
from tracerl_jax.train.optimizer import OptimizerConfig, make_optimizer
from tracerl_jax.train.step import init_train_state, to_microbatches
from tracerl_jax.train.steps import batch_scalars, make_sft_step, make_value_step

PAD, MASK = 0, 2
KW = dict(mask_id=MASK, pad_id=PAD)


def case(N=4, L0=3, L1=12, seed=0):
    rng = np.random.default_rng(seed)
    prompt = rng.integers(3, 30, (N, L0)).astype(np.int32)
    prompt[1, :2] = PAD
    resp = rng.integers(3, 30, (N, L1)).astype(np.int32)
    resp[0, -3:] = PAD  # one kept pad (post_num=1) and two tail pads
    return prompt, prompt != PAD, resp


def seq(family):
    """The single-sequence row layout of ``family``."""
    return SequenceLayout(family, pad_id=PAD)


def host(rows):
    return jax.tree.map(np.asarray, rows)


def test_random_masking_rows_tail_pads_and_ratio_per_row():
    prompt, pvalid, resp = case()
    rows = host(random_masking_rows(jax.random.key(0), prompt, pvalid, resp, layout=seq("llada"), num_draws=5,
                                         post_num=1, **KW))
    assert rows.tokens.shape == (20, 15) and rows.p_mask.shape == (20, 12)
    np.testing.assert_array_equal(rows.response_index, np.repeat(np.arange(4), 5))
    noisy = rows.tokens[:, 3:] == MASK
    assert np.all(rows.p_mask <= noisy)  # scored tokens are masked
    r0 = rows.response_index == 0
    assert np.all(noisy[r0][:, -2:]) and not np.any(rows.p_mask[r0][:, -2:])  # tail pads: masked, never scored
    np.testing.assert_array_equal(rows.p_mask[r0][:, -3], noisy[r0][:, -3])  # the kept pad is trainable
    np.testing.assert_array_equal(rows.tokens[:, :3], prompt[rows.response_index])  # prompt never masked
    # Same key, same rows; one ratio per row: with the full range the rows' masked fractions spread out.
    again = host(random_masking_rows(jax.random.key(0), prompt, pvalid, resp, layout=seq("llada"), num_draws=5,
                                          post_num=1, **KW))
    np.testing.assert_array_equal(again.tokens, rows.tokens)
    frac = noisy[1:].mean(1)
    assert frac.max() - frac.min() > 0.3
    full = host(random_masking_rows(jax.random.key(1), prompt, pvalid, resp, layout=seq("llada"), num_draws=2,
                                         lower_p=1.0, upper_p=1.0, post_num=0, **KW))
    np.testing.assert_array_equal(full.p_mask, resp[full.response_index] != PAD)


def test_coupled_rows_partition_the_trainable_tokens():
    prompt, pvalid, resp = case(seed=1)
    rows = host(random_masking_rows(jax.random.key(2), prompt, pvalid, resp, layout=seq("dream"), num_draws=3,
                                         coupled=True, post_num=0, **KW))
    assert rows.row_valid.shape == (24,)
    np.testing.assert_array_equal(rows.round_index[:6], np.arange(6))
    prim, comp = rows.p_mask[0::2], rows.p_mask[1::2]
    trainable = resp[rows.response_index[0::2]] != PAD
    np.testing.assert_array_equal(prim | comp, trainable)
    assert not np.any(prim & comp)
    # The complement masks what the draw left visible (tail pads masked in both).
    noisy = rows.tokens[:, 3:] == MASK
    np.testing.assert_array_equal(noisy[1::2], ~noisy[0::2] | ~trainable)


def test_semi_ar_sft_groups():
    prompt, pvalid, resp = case(seed=2)
    rows = host(semi_ar_sft_rows(jax.random.key(3), prompt, pvalid, resp, layout=seq("llada"), group_size=4,
                                      post_num=0, **KW))
    assert rows.tokens.shape[0] == 4 * 3
    noisy = rows.tokens[:, 3:] == MASK
    for r in range(rows.tokens.shape[0]):
        g = rows.round_index[r]
        lo, hi = 4 * g, 4 * (g + 1)
        assert not noisy[r, :lo].any() and noisy[r, hi:].all()  # earlier groups clean, later ones masked
        assert not rows.p_mask[r, :lo].any() and not rows.p_mask[r, hi:].any()
        np.testing.assert_array_equal(rows.p_mask[r, lo:hi], noisy[r, lo:hi] & (resp[rows.response_index[r], lo:hi]
                                                                                 != PAD))
    # With u = 1 every trainable token is scored exactly once, in its group's row.
    full = host(semi_ar_sft_rows(jax.random.key(3), prompt, pvalid, resp, layout=seq("llada"), group_size=4,
                                      lower_p=1.0, upper_p=1.0, post_num=0, **KW))
    counts = np.zeros(resp.shape, int)
    np.add.at(counts, full.response_index, (full.p_mask & full.row_valid[:, None]).astype(int))
    np.testing.assert_array_equal(counts, (resp != PAD).astype(int))


CFG = ModelConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1,
                  head_dim=16, rope_theta=10000.0, max_position_embeddings=64, mask_token_id=MASK, pad_token_id=PAD,
                  eos_token_id=1, model_type="dream")


def test_ar_rows_are_shifted_next_token_prediction():
    graphdef, params = split_model(init_model(CFG, seed=0))
    prompt, pvalid, resp = case(seed=3)
    rows = ar_sft_rows(prompt, pvalid, resp, pad_id=PAD, post_num=0)
    logp = np.asarray(jax.jit(trajectory_logprobs, static_argnums=0)(graphdef, params, rows))
    tok = jnp.asarray(np.concatenate([prompt, resp], 1))
    valid = jnp.asarray(np.concatenate([pvalid, np.ones(resp.shape, bool)], 1))
    logits = np.asarray(forward(graphdef, params, tok, rows.positions, causal_info(valid)).logits)
    lp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    want = np.take_along_axis(lp[:, 2:-1], resp[..., None], -1)[..., 0]  # output at L0+j-1 scores token j
    np.testing.assert_allclose(logp, want, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(response_mask(rows)), resp != PAD)


def test_sft_and_value_steps_run_on_full_rows():
    graphdef, params = split_model(init_model(CFG, seed=1))
    prompt, pvalid, resp = case(seed=4)
    rows = random_masking_rows(jax.random.key(5), prompt, pvalid, resp, layout=seq("dream"), num_draws=2, **KW)
    opt = make_optimizer(OptimizerConfig(learning_rate=3e-3, max_grad_norm=None))
    step = make_sft_step(graphdef, opt, normalizer="row_tokens")
    state = init_train_state(params, opt)
    batch = to_microbatches({"rows": rows, **batch_scalars(rows.row_valid, 2, 12)}, 2)
    losses = []
    for _ in range(4):
        state, m = step(state, batch, 3e-3)
        losses.append(float(m["loss"]))
    assert losses[-1] < losses[0] and all(np.isfinite(losses))

    vgraph, vparams = split_model(value_model_from_policy(init_model(CFG, seed=1)))
    values = jax.jit(trajectory_values, static_argnums=0)(vgraph, vparams, rows)
    assert values.shape == rows.p_mask.shape and float(jnp.abs(values).max()) == 0.0  # zero-initialised head
    returns = jnp.where(response_mask(rows), 1.0, 0.0)
    vstep = make_value_step(vgraph, opt, clip=None, normalizer="row_tokens")
    vstate = init_train_state(vparams, opt)
    vbatch = to_microbatches({"rows": rows, "old_values": values, "returns": returns,
                              **batch_scalars(rows.row_valid, 2, 12)}, 2)
    vstate, vm = vstep(vstate, vbatch, 3e-3)
    vstate, vm2 = vstep(vstate, vbatch, 3e-3)
    assert float(vm2["loss"]) < float(vm["loss"])


def test_bad_arguments():
    prompt, pvalid, resp = case()
    with pytest.raises(ValueError, match="family"):
        random_masking_rows(jax.random.key(0), prompt, pvalid, resp, layout=SequenceLayout("sdar"), **KW)
    with pytest.raises(ValueError, match="lower_p"):
        random_masking_rows(jax.random.key(0), prompt, pvalid, resp, layout=seq("llada"), lower_p=0.9, upper_p=0.1,
                                 **KW)
    with pytest.raises(ValueError, match="ratio"):
        semi_ar_sft_rows(jax.random.key(0), prompt, pvalid, resp, layout=seq("llada"), ratio="block", **KW)
