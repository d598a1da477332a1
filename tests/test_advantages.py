"""Tests for tracerl_jax.advantages: group z-score (§7.4) and step GAE (§8.3–8.5)."""

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracerl_jax import advantages as adv
from tracerl_jax import rows as rows_lib
from tracerl_jax import trajectory as tr

# §8.5 worked example: the response of §4.7, post_num = 0 (r6, r7 not trainable)
STEPS = np.array([[2, 1, 2, 3, 5, 4, 6, 6]])
TAU = np.array([[1, 1, 1, 1, 1, 1, 0, 0]], bool)
V_OLD = np.array([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 7.0, 7.0]], np.float32)


def _gae(gamma, lam, rewards=None):
    r = adv.outcome_token_rewards(np.array([1.0]), STEPS, TAU) if rewards is None else rewards
    return map(np.asarray, adv.step_gae(r, V_OLD, STEPS, TAU, gamma=gamma, lam=lam))


def test_outcome_reward_on_last_trace_step():
    r = adv.outcome_token_rewards(np.array([1.0]), STEPS, TAU)
    np.testing.assert_array_equal(r, [[0, 0, 0, 0, 1, 0, 0, 0]])  # r4 (step 5), not EOS r5
    r = adv.outcome_token_rewards(np.array([2.0]), STEPS, np.ones_like(TAU))
    np.testing.assert_array_equal(r, [[0, 0, 0, 0, 0, 0, 2, 2]])


@pytest.mark.parametrize("gamma,lam,a_want,r_want", [
    (1.0, 1.0, [0.9, 0.8, 0.7, 0.6, 0.5, 0.4], [1.0] * 6),
    (1.0, 0.0, [0.3, 0.0, 0.1, 0.2, 0.5, -0.1], [1.0] * 6),
    (0.99, 1.0, [0.8703, 0.7606, 0.6703, 0.5801, 0.5, 0.39],
     [0.9703, 0.9606, 0.9703, 0.9801, 1.0, 0.99]),
])
def test_worked_table_8_5(gamma, lam, a_want, r_want):
    a, r = _gae(gamma, lam)
    np.testing.assert_allclose(a[0, :6], a_want, atol=6e-5)
    np.testing.assert_allclose(r[0, :6], r_want, atol=6e-5)
    np.testing.assert_array_equal(a[0, 6:], 0.0)  # non-trainable tokens
    np.testing.assert_array_equal(r[0, 6:], 0.0)


def test_special_cases_8_5_random():
    rng = np.random.default_rng(0)
    steps = np.array([rng.permutation(12) // 2 + 1 for _ in range(3)])
    tau = rng.random((3, 12)) < 0.8
    tau[:, 0] = True
    v = rng.normal(size=(3, 12)).astype(np.float32)
    R = rng.normal(size=(3,)).astype(np.float32)
    r = adv.outcome_token_rewards(R, steps, tau)
    a, ret = map(np.asarray, adv.step_gae(r, v, steps, tau, gamma=1.0, lam=1.0))
    np.testing.assert_allclose(ret, np.where(tau, R[:, None], 0), atol=1e-6)
    np.testing.assert_allclose(a, np.where(tau, R[:, None] - v, 0), atol=1e-5)
    a, _ = map(np.asarray, adv.step_gae(r, v, steps, tau, gamma=1.0, lam=0.0))
    for n in range(3):
        ids = np.unique(steps[n][tau[n]])
        for j in np.flatnonzero(tau[n]):
            i = np.searchsorted(ids, steps[n, j])
            v_next = v[n][tau[n] & (steps[n] == ids[i + 1])].mean() if i + 1 < len(ids) else 0.0
            np.testing.assert_allclose(a[n, j], r[n, j] - v[n, j] + v_next, atol=1e-5)


def test_hand_computed_gamma_09_lambda_095():
    # three steps: tokens 0,1 at step 1; token 2 at step 2; token 3 at step 4 (gap is fine)
    steps = np.array([[1, 1, 2, 4]])
    tau = np.ones((1, 4), bool)
    v = np.array([[0.2, 0.4, 0.5, 0.1]], np.float32)
    r = np.array([[0.0, 0.0, 0.5, 1.0]], np.float32)  # process-style token rewards
    # step means: V* = (0.3, 0.5, 0.1), r* = (0, 0.5, 1.0)
    # R*_3 = 1.0;  R*_2 = 0.5 + 0.9*1.0 = 1.4;  R*_1 = 0 + 0.9*1.4 = 1.26
    # δ_3 = 1.0 - 0.1 = 0.9;  δ_2 = 0.5 - 0.5 + 0.9*0.1 = 0.09;  δ_1 = 0 - 0.3 + 0.9*0.5 = 0.15
    # A*_3 = 0.9;  A*_2 = 0.09 + 0.855*0.9 = 0.8595;  (γλ = 0.855)
    # token 0: A = (0 - 0.2) + 0.9*0.5 + 0.855*0.8595 = 0.9848725;  R = 0 + 0.9*1.4 = 1.26
    # token 1: A = (0 - 0.4) + 0.45 + 0.7348725 = 0.7848725
    # token 2: A = (0.5 - 0.5) + 0.9*0.1 + 0.855*0.9 = 0.8595;     R = 0.5 + 0.9 = 1.4
    # token 3: A = 1.0 - 0.1 = 0.9;                                R = 1.0
    a, ret = adv.step_gae(r, v, steps, tau, gamma=0.9, lam=0.95)
    np.testing.assert_allclose(a, [[0.9848725, 0.7848725, 0.8595, 0.9]], atol=1e-6)
    np.testing.assert_allclose(ret, [[1.26, 1.26, 1.4, 1.0]], atol=1e-6)


def _gae_loop(r, v, steps, tau, gamma, lam):
    """Per-response Python transcription of §8.4."""
    a_out, r_out = np.zeros_like(r), np.zeros_like(r)
    for n in range(r.shape[0]):
        ids = sorted(set(steps[n][tau[n]]))
        S = len(ids)
        rs = [r[n][tau[n] & (steps[n] == u)].mean() for u in ids] + [0.0]
        vs = [v[n][tau[n] & (steps[n] == u)].mean() for u in ids] + [0.0]
        Rs, As = [0.0] * (S + 1), [0.0] * (S + 1)
        for i in range(S - 1, -1, -1):
            Rs[i] = rs[i] + gamma * Rs[i + 1]
            As[i] = rs[i] - vs[i] + gamma * vs[i + 1] + gamma * lam * As[i + 1]
        for j in np.flatnonzero(tau[n]):
            i = ids.index(steps[n, j])
            r_out[n, j] = r[n, j] + gamma * Rs[i + 1]
            a_out[n, j] = r[n, j] - v[n, j] + gamma * vs[i + 1] + gamma * lam * As[i + 1]
    return a_out, r_out


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10 ** 6), st.sampled_from([0.9, 0.99, 1.0]), st.sampled_from([0.0, 0.95, 1.0]))
def test_gae_matches_loop(seed, gamma, lam):
    rng = np.random.default_rng(seed)
    steps = np.sort(rng.integers(1, 9, size=(2, 10)), axis=1)
    tau = rng.random((2, 10)) < 0.7
    r = rng.normal(size=(2, 10)).astype(np.float32)
    v = rng.normal(size=(2, 10)).astype(np.float32)
    a, ret = adv.step_gae(r, v, steps, tau, gamma=gamma, lam=lam)
    a_w, r_w = _gae_loop(r, v, steps, tau, gamma, lam)
    np.testing.assert_allclose(a, a_w, atol=1e-4)
    np.testing.assert_allclose(ret, r_w, atol=1e-4)


def test_process_rewards_padding_q_v1():
    vec = np.array([[0.0, 1.0, 0.0, -1.0, 5.0, 5.0]], np.float32)  # length 4, then junk
    tau = np.array([[1, 1, 1, 1, 1, 0]], bool)  # post_num = 1: first pad trainable
    np.testing.assert_array_equal(adv.process_token_rewards(vec, np.array([4]), tau),
                                  [[0, 1, 0, -1, 0, 0]])
    np.testing.assert_array_equal(
        adv.process_token_rewards(vec, np.array([4]), tau, compat="reference"),
        [[0, 1, 0, -1, 2, 0]])  # max + 1 on the trainable pad


def test_gae_through_rows():
    prompt = np.array([[0, 11, 12]])
    resp = np.array([[21, 22, 23, 24, 25, 26, 0, 0]])
    sm = np.array([[2, 1, 2, 3, 5, 4, 0, 0]])
    rows = tr.build_rows(prompt, prompt != 0, resp, sm, np.array([6]), block_size=4, mask_id=99,
                         pad_id=0)
    steps, valid = tr.trace_step_ids(sm, np.array([6]), block_size=4)
    assert valid.all()
    tau = tr.trainable_mask(resp, 0, 0)
    row_values = rows_lib.scatter(V_OLD, rows.scored, rows.response_index)  # the value model's outputs, [R, L1]
    r = adv.outcome_token_rewards(np.array([1.0]), steps, tau)
    a_rows, r_rows = adv.step_gae_rows(row_values, rows.scored, rows.response_index, r, steps, tau, gamma=1.0,
                                       lam=1.0)
    a_tok = rows_lib.gather(a_rows, rows.scored, rows.response_index, 1)
    np.testing.assert_allclose(a_tok[0, :6], [0.9, 0.8, 0.7, 0.6, 0.5, 0.4], atol=1e-6)
    assert (np.asarray(a_rows)[~np.asarray(rows.p_mask)] == 0).all()
    # The registered estimator gives the same through AdvantageInputs.
    inputs = adv.AdvantageInputs(rows.scored, rows.response_index, np.array([1.0]), steps, tau, row_values)
    a_est, r_est = adv.ADVANTAGE_ESTIMATORS.get("step_gae")(inputs, gamma=1.0, lam=1.0)
    np.testing.assert_array_equal(a_est, a_rows)
    np.testing.assert_array_equal(r_est, r_rows)
    g, none = adv.ADVANTAGE_ESTIMATORS.get("group")(inputs)
    assert none is None
    np.testing.assert_array_equal(g, np.where(np.asarray(rows.scored), 1.0, 0.0))
    jitted = jax.jit(adv.step_gae, static_argnames=("gamma", "lam"))
    np.testing.assert_allclose(jitted(r, V_OLD, steps, tau, gamma=0.99)[0],
                               adv.step_gae(r, V_OLD, steps, tau, gamma=0.99)[0], rtol=1e-6)


def test_group_normalize():
    x = np.array([[1, 0, 0, 0, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0], [3, 1, 2, 0, 4]], np.float32)
    a, keep = adv.group_normalize(x, keep_range=(0.2, 0.8))
    mu, sd = 0.4, np.sqrt(0.24)  # population std
    np.testing.assert_allclose(a[0], (x[0] - mu) / sd, rtol=1e-6)
    np.testing.assert_array_equal(a[1], 0.0)
    np.testing.assert_array_equal(a[2], 0.0)
    np.testing.assert_allclose(a[3], (x[3] - 2) / np.sqrt(2), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(a).mean(1), 0, atol=1e-6)
    np.testing.assert_array_equal(keep, [True, False, False, False])  # 0.4 in range; 2.0 not
    _, keep = adv.group_normalize(x, drop_constant=True)
    np.testing.assert_array_equal(keep, [True, False, False, True])
    # range filter on explicit correctness, boundaries inclusive: 1/5 = 0.2, 4/5 = 0.8
    corr = np.array([[1, 0, 0, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
    _, keep = adv.group_normalize(x, correct=corr, keep_range=(0.2, 0.8))
    np.testing.assert_array_equal(keep, [True, True, False, False])
    # a constant non-representable value still gives exactly 0
    a, _ = adv.group_normalize(np.full((1, 3), 0.1, np.float32))
    np.testing.assert_array_equal(a, 0.0)


def test_truncation_penalty():
    c = adv.truncation_penalty(np.array([1, 1, 0, 1]), np.array([10, 95, 99, 94]), 100)
    np.testing.assert_array_equal(c, [1, 0, 0, 1])


def test_bad_input():
    with pytest.raises(ValueError, match="values"):
        adv.step_gae(np.zeros((1, 4)), np.zeros((1, 3)), np.zeros((1, 4), int), np.ones((1, 4), bool))
    with pytest.raises(ValueError, match="scores"):
        adv.group_normalize(np.zeros(4))
    with pytest.raises(ValueError, match="keep_range"):
        adv.group_normalize(np.zeros((2, 4)), keep_range=(0.8, 0.2))
    with pytest.raises(ValueError, match="rewards"):
        adv.outcome_token_rewards(np.zeros(2), STEPS, TAU)
    with pytest.raises(ValueError, match="compat"):
        adv.process_token_rewards(np.zeros((1, 8)), np.array([3]), TAU, compat="x")
    with pytest.raises(ValueError, match="row_values"):
        prompt = np.ones((1, 2), int)
        rows = tr.build_rows(prompt, prompt > 0, np.ones((1, 4), int), np.ones((1, 4), int),
                             np.array([4]), block_size=2, mask_id=9, pad_id=0)
        adv.step_gae_rows(np.zeros((3, 6)), rows.scored, rows.response_index, np.zeros((1, 4)),
                          np.ones((1, 4), int), np.ones((1, 4), bool))
