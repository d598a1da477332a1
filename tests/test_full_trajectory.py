"""TraceRL rows for full-attention models (§5): rollout/trainer agreement, shrinkage, the loss.

The central invariant of the block path holds for full attention too: for
rollouts of the uncached full-attention sampler (temperature 1), the log-prob
of every completion token recomputed by the training path (rows with ``s=1``,
scored at the token's position, one slot earlier for Dream) equals the
log-prob the sampler recorded when it committed that token.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tracerl_jax import losses
from tracerl_jax import rows as rows_lib
from tracerl_jax.advantages import step_gae_rows
from tracerl_jax.models import ModelConfig, full_sampler_forward_fn, init_model, split_model
from tracerl_jax.rows import SequenceLayout, response_mask
from tracerl_jax.sampling import FullSamplerConfig, make_full_sampler
from tracerl_jax.scoring import trajectory_logprobs
from tracerl_jax.train.steps import FULL_ATTENTION_REF, batch_scalars, old_logprobs, policy_loss_fn
from tracerl_jax.trajectory import build_rows, rows_from_rollout, trace_step_ids

PAD, EOS, MASK = 0, 1, 2
CFG = ModelConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, num_kv_heads=1,
                  head_dim=16, rope_theta=10000.0, max_position_embeddings=128, mask_token_id=MASK,
                  pad_token_id=PAD, eos_token_id=EOS, model_type="llada")


def seq(family, compat="recommended"):
    """The single-sequence row layout of ``family``."""
    return SequenceLayout(family, pad_id=PAD, compat=compat)


def prompts_batch(n, seed=0, L0=8):
    rng = np.random.default_rng(seed)
    ids = np.full((n, L0), PAD, np.int32)
    for i, L in enumerate(rng.integers(1, L0 + 1, size=n)):
        ids[i, L0 - L:] = rng.integers(3, 32, size=L)
    return ids, ids != PAD


@pytest.mark.parametrize("family,remasking,steps,tau,compat", [
    ("llada", "low_confidence_static", 8, None, "recommended"),   # two tokens per step
    ("llada", "threshold", 16, 0.045, "recommended"),
    ("dream", "low_confidence_static", 12, None, "recommended"),  # forced token + linspace counts
    ("dream", "threshold", 16, 0.035, "recommended"),
    ("llada", "low_confidence_static", 16, None, "reference"),    # Q-F4: canvas positions, pads attended
    ("dream", "low_confidence_static", 12, None, "reference"),    # canvas positions, PAD keys <= L0 masked (§5)
])
def test_trainer_logprobs_equal_sampler_logprobs(family, remasking, steps, tau, compat):
    graphdef, params = split_model(init_model(CFG.replace(model_type=family), seed=0))
    params = jax.tree.map(lambda x: x * 2.0 if x.ndim == 2 else x, params)
    prompts, valid = prompts_batch(6)
    scfg = FullSamplerConfig(gen_length=16, mask_id=MASK, pad_id=PAD, eos_id=EOS, family=family, block_size=4,
                             steps=steps, remasking=remasking, threshold=tau or 0.9, temperature=1.0,
                             compat=compat)
    ro = make_full_sampler(full_sampler_forward_fn(graphdef), None, scfg, vocab_size=32)(
        params, prompts, valid, rng=jax.random.key(3))
    sm = np.asarray(ro.step_map)
    if remasking == "threshold":  # the scenario must contain steps that commit several tokens
        assert any(np.bincount(r).max() > 1 for r in sm)
    if compat == "recommended":
        assert np.any(np.asarray(ro.lengths) < 16)  # EOS inside the canvas: later tokens are context only

    rr = rows_from_rollout(jnp.asarray(prompts), jnp.asarray(valid), ro, layout=seq(family, compat), mask_id=MASK,
                           pad_id=PAD, shrink=1, post_num=None, compat=compat,
                           completion_only=compat != "reference")
    rows = rr.rows
    logp = np.asarray(jax.jit(trajectory_logprobs, static_argnums=0)(graphdef, params, rows))
    scored = np.asarray(response_mask(rows))
    idx = np.asarray(rows.response_index)
    counts = np.zeros(sm.shape, int)
    np.add.at(counts, idx, scored.astype(int))
    # Each token exactly once: the completion, or (reference, §5) every response position.
    want = np.asarray(rr.completion) if compat == "recommended" else np.ones(sm.shape, bool)
    np.testing.assert_array_equal(counts, want.astype(int))
    diff = np.abs(logp - np.asarray(ro.logprobs)[idx])[scored]
    if compat == "reference":  # left padding changes the other rows' positions: the batch is not row-independent
        assert np.all(np.asarray(rows.positions) == np.arange(rows.tokens.shape[1]))  # canvas positions
        keys = np.asarray(rows.mask_info.valid)[:, :prompts.shape[1]]
        # LLaDA attends to the prompt pads (Q-F4); Dream masks them as keys (§5).
        want_keys = np.ones_like(keys) if family == "llada" else valid[idx]
        np.testing.assert_array_equal(keys, want_keys)
    assert scored.sum() > 30
    assert diff.max() <= 1e-4, diff.max()


# ---------------------------------------------------------------------- shrinkage

def _toy_case(seed=0, N=3, L0=3, L1=10):
    rng = np.random.default_rng(seed)
    prompt = rng.integers(3, 20, (N, L0)).astype(np.int32)
    prompt[0, 0] = PAD
    pvalid = prompt != PAD
    resp = rng.integers(3, 20, (N, L1)).astype(np.int32)
    resp[1, -2:] = PAD
    # Steps of a threshold rollout: several tokens per step, ids in block order (blocks of 5).
    step = np.zeros((N, L1), np.int32)
    for n in range(N):
        ids = np.concatenate([np.sort(rng.integers(1, 4, 5)), np.sort(rng.integers(4, 8, 5))])
        step[n] = rng.permutation(ids[:5]).tolist() + rng.permutation(ids[5:]).tolist()
        _, inv = np.unique(step[n], return_inverse=True)
        step[n] = inv + 1  # dense 1..S
    return prompt, pvalid, resp, step


@pytest.mark.parametrize("shrink", [1, 2, 4])
def test_shrink_rows_cover_each_token_once_and_replay_the_canvas(shrink):
    prompt, pvalid, resp, step = _toy_case()
    N, L1 = resp.shape
    rows = build_rows(prompt, pvalid, resp, step, np.full(N, L1), mask_id=MASK, pad_id=PAD, layout=seq("llada"),
                           shrink=shrink, post_num=None)
    rows = jax.tree.map(np.asarray, rows)
    keep = rows.p_mask & rows.row_valid[:, None]
    counts = np.zeros((N, L1), int)
    np.add.at(counts, rows.response_index, keep.astype(int))
    np.testing.assert_array_equal(counts, 1)
    for n in range(N):
        distinct = np.unique(step[n])
        groups = [distinct[k:k + shrink] for k in range(0, len(distinct), shrink)]
        mine = np.flatnonzero((rows.response_index == n) & rows.row_valid)
        assert len(mine) == len(groups)
        for r, grp in zip(mine, groups):
            # The row is the canvas just before the group's first step; it scores the group's tokens.
            want_input = np.where(step[n] >= grp[0], MASK, resp[n])
            np.testing.assert_array_equal(rows.tokens[r, 3:], want_input)
            np.testing.assert_array_equal(rows.p_mask[r], np.isin(step[n], grp))
            np.testing.assert_array_equal(rows.tokens[r, :3], prompt[n])
            np.testing.assert_array_equal(rows.labels[r], resp[n])


def test_reference_zero_based_ids_and_post_num():
    prompt, pvalid, resp, step = _toy_case(seed=1)
    N, L1 = resp.shape
    kw = dict(mask_id=MASK, pad_id=PAD, layout=seq("dream"), shrink=2, post_num=1)
    a = build_rows(prompt, pvalid, resp, step, np.full(N, L1), **kw)
    b = build_rows(prompt, pvalid, resp, step - 1, np.full(N, L1), **kw)  # the reference's 0-based ids
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    a = jax.tree.map(np.asarray, a)
    mine = a.response_index == 1
    scored = (a.p_mask & a.row_valid[:, None])[mine].any(0)
    # Response 1 ends in two PADs: the first (post_num=1) is trained, the tail pad is never scored ...
    assert scored[-2] and not scored[-1]
    # ... but it is masked in the input whenever its step is not yet decoded.
    tail_step = step[1, -1]
    rows_before = mine & (a.round_index < (np.unique(step[1]) < tail_step).sum() // 2)
    assert np.all(a.tokens[rows_before, -1] == MASK)


def test_loss_with_shrink_equal_to_steps_is_the_single_row_case():
    graphdef, params = split_model(init_model(CFG.replace(model_type="dream"), seed=1))
    prompt, pvalid, resp, step = _toy_case(seed=2)
    N, L1 = resp.shape
    S = int(step.max())
    rows = build_rows(prompt, pvalid, resp, step, np.full(N, L1), mask_id=MASK, pad_id=PAD, layout=seq("dream"),
                           shrink=S, post_num=0)
    assert rows.row_valid.shape == (N,) and bool(np.all(rows.row_valid))
    trainable = resp != PAD
    single = rows_lib.assemble(jnp.asarray(prompt), jnp.asarray(pvalid), jnp.asarray(resp),
                               jnp.ones((N, L1), bool), jnp.asarray(trainable), jnp.arange(N), jnp.zeros(N),
                               jnp.ones(N, bool), layout=seq("dream"), mask_id=MASK)
    for x, y in zip(jax.tree.leaves(rows), jax.tree.leaves(single)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

    # And the policy loss through the training step's loss function agrees, with a perturbed policy.
    logp_old = old_logprobs(graphdef, params, single, 1)
    new_params = jax.tree.map(lambda x: x * 1.1, params)
    adv = jnp.asarray([1.0, -0.5, 2.0])
    batch = {"rows": rows, "logp_old": logp_old, "advantages": adv, **batch_scalars(rows.row_valid, 1, L1)}
    loss, metrics = jax.jit(policy_loss_fn(graphdef, FULL_ATTENTION_REF))(new_params, batch)
    logp = jax.jit(trajectory_logprobs, static_argnums=0)(graphdef, new_params, single)
    ratio = np.exp(np.asarray(logp - logp_old))
    surr = np.minimum(ratio * adv[:, None], np.clip(ratio, 0.8, 1.2) * adv[:, None])
    p = trainable
    pg = -np.mean((surr * p).sum(1) / p.sum(1))
    u = np.asarray(logp_old - logp)
    kl = np.mean(((np.exp(u) - 1 - u) * p).sum(1))
    np.testing.assert_allclose(float(loss), pg + 0.01 * kl, rtol=1e-5)
    assert float(metrics["ratio_mean"]) != 1.0


def test_full_gae_gamma_lambda_one():
    """γ = λ = 1 with an outcome reward: A_j = R − V_j on every trainable token (§8.5)."""
    prompt, pvalid, resp, step = _toy_case(seed=3)
    N, L1 = resp.shape
    rows = build_rows(prompt, pvalid, resp, step, np.full(N, L1), mask_id=MASK, pad_id=PAD, layout=seq("llada"),
                           shrink=2, post_num=0)
    from tracerl_jax.advantages import outcome_token_rewards
    from tracerl_jax.trajectory import trainable_mask
    ids, _ = trace_step_ids(step, np.full(N, L1), layout=seq("llada"), shrink=2)
    tau = trainable_mask(jnp.asarray(resp), PAD, 0)
    R = jnp.asarray([1.0, -1.0, 0.5])
    values = jnp.asarray(np.random.default_rng(0).normal(size=rows.p_mask.shape), jnp.float32)
    adv, ret = step_gae_rows(values, rows.scored, rows.response_index, outcome_token_rewards(R, ids, tau), ids, tau)
    keep = np.asarray(rows.p_mask & rows.row_valid[:, None])
    Rrow = np.broadcast_to(np.asarray(R)[np.asarray(rows.response_index)][:, None], keep.shape)
    np.testing.assert_allclose(np.asarray(adv)[keep], Rrow[keep] - np.asarray(values)[keep], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ret)[keep], Rrow[keep], rtol=1e-6)
    assert np.all(np.asarray(adv)[~keep] == 0)


def test_masked_nll_on_full_rows_is_row_token_mean():
    prompt, pvalid, resp, step = _toy_case(seed=4)
    N, L1 = resp.shape
    rows = build_rows(prompt, pvalid, resp, step, np.full(N, L1), mask_id=MASK, pad_id=PAD, layout=seq("llada"))
    logp = -jnp.abs(jnp.asarray(np.random.default_rng(1).normal(size=rows.p_mask.shape), jnp.float32))
    mask = response_mask(rows)
    loss, _ = losses.masked_nll(logp, None, mask, normalizer="row_tokens")
    m = np.asarray(mask)
    want = np.mean([(-np.asarray(logp)[r] * m[r]).sum() / max(m[r].sum(), 1) for r in range(m.shape[0])])
    np.testing.assert_allclose(float(loss), want, rtol=1e-6)


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_reference_cuts_max_gen_length_after_shrink(family):
    """§5: the reference collapses the whole response's step map by ``shrink`` and cuts the sequence to
    ``max_gen_length`` after; the default cuts first. Ids 1..8 in pairs, cut to 6 positions: position 5
    (id 6) is its own round under the reference ({5, 6} -> 6), and shares id 8's round when cut first
    (the kept ids 1,2,3,4,5,8 pair as {5, 8})."""
    from tracerl_jax.sampling import Rollout

    prompt = np.array([[7, 8, 9]], np.int32)
    tokens = jnp.asarray([[10, 11, 12, 13, 14, 15, 16, EOS]], jnp.int32)
    step = jnp.asarray([[1, 2, 8, 3, 4, 5, 6, 7]], jnp.int32)
    zeros = jnp.zeros((1, 8), jnp.float32)
    ro = Rollout(tokens, step, zeros, zeros, jnp.asarray([8], jnp.int32), jnp.asarray([8], jnp.int32))

    def rounds(compat):
        out = rows_from_rollout(prompt, prompt > 0, ro, layout=seq(family, compat), mask_id=MASK, pad_id=PAD,
                                shrink=2, compat=compat, response_len=6)
        r = jax.tree.map(np.asarray, out.rows)
        scored = [tuple(np.flatnonzero(p)) for p, ok in zip(r.p_mask, r.row_valid) if ok]
        masked = [tuple(np.flatnonzero(t[3:] == MASK)) for t, ok in zip(r.tokens, r.row_valid) if ok]
        return scored, masked, np.asarray(out.step_ids)[0]

    scored, masked, ids = rounds("reference")
    assert scored == [(0, 1), (3, 4), (5,), (2,)]
    assert masked == [(0, 1, 2, 3, 4, 5), (2, 3, 4, 5), (2, 5), (2,)]
    np.testing.assert_array_equal(np.argsort(ids, kind="stable"), [0, 1, 3, 4, 5, 2])
    scored, masked, _ = rounds("recommended")
    assert scored == [(0, 1), (3, 4), (2, 5)]
    assert masked == [(0, 1, 2, 3, 4, 5), (2, 3, 4, 5), (2, 5)]
