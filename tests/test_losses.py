"""Tests for tracerl_jax.losses (§6, §8.6, §10)."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from tracerl_jax import losses

# One row, prompt of 1 + three response positions; tokens 1 and 2 are scored.
P_MASK = np.array([[False, True, True, False]])
LOGP_OLD = np.array([[-1.0, -2.0, -1.5, -0.7]], np.float32)
LOGP_NEW = LOGP_OLD + np.array([[0.0, 0.1, -0.3, 0.05]], np.float32)


def test_policy_loss_hand_computed():
    # ratios e^0.1 = 1.105171 (inside [0.8, 1.2]) and e^-0.3 = 0.740818 (below 1-eps)
    r1, r2 = np.exp(0.1), np.exp(-0.3)
    loss, m = losses.policy_loss(LOGP_NEW, LOGP_OLD, np.array([1.0]), P_MASK, L1_ref=4)
    # A > 0: min(ρA, clip(ρ)A) keeps the smaller unclipped 0.7408
    np.testing.assert_allclose(loss, -(r1 + r2) / 4, rtol=1e-6)
    assert float(m["clip_fraction"]) == 0.0
    np.testing.assert_allclose(m["ratio_mean"], (r1 + r2) / 2, rtol=1e-6)
    loss, m = losses.policy_loss(LOGP_NEW, LOGP_OLD, np.array([-1.0]), P_MASK, L1_ref=4)
    # A < 0: s = -max(ρ, clip(ρ)) -> -1.105171 and -0.8 (clipped)
    np.testing.assert_allclose(loss, (r1 + 0.8) / 4, rtol=1e-6)
    np.testing.assert_allclose(m["clip_fraction"], 0.5)
    # per-token advantages give the same as a broadcast scalar
    per_tok = np.full((1, 4), -1.0, np.float32)
    loss2, _ = losses.policy_loss(LOGP_NEW, LOGP_OLD, per_tok, P_MASK, L1_ref=4)
    np.testing.assert_allclose(loss2, loss, rtol=1e-6)


def test_kl_estimators_hand_computed():
    ref = LOGP_OLD
    k = np.array([0.1, -0.3])  # κ on the scored tokens
    expect = {"k1": k, "k2": 0.5 * k ** 2, "k3": np.exp(-k) - 1 + k}
    for est, vals in expect.items():
        loss, m = losses.policy_loss(LOGP_NEW, LOGP_OLD, np.array([0.0]), P_MASK, L1_ref=4,
                                     beta=0.5, logp_ref=ref, kl_estimator=est)
        np.testing.assert_allclose(m["kl"], vals.sum() / 4, rtol=1e-5)
        np.testing.assert_allclose(loss, 0.5 * vals.sum() / 4, rtol=1e-5)
    # full-attention [REF] KL: unnormalised sum per row
    _, m = losses.policy_loss(LOGP_NEW, LOGP_OLD, np.array([0.0]), P_MASK,
                              normalizer="row_tokens", beta=1.0, logp_ref=ref, kl_normalizer="sum")
    np.testing.assert_allclose(m["kl"], expect["k3"].sum(), rtol=1e-5)
    # k3 is non-negative and the clamp keeps it finite for huge log-ratios
    big = LOGP_OLD - np.array([[0, 50.0, 0, 0]], np.float32)
    kl = losses.kl_penalty(big, LOGP_OLD, P_MASK)
    assert np.isfinite(kl).all() and (np.asarray(kl) >= 0).all()


def test_normalizers():
    rng = np.random.default_rng(0)
    new = rng.normal(size=(3, 6)).astype(np.float32) * 0.1
    old = np.zeros((3, 6), np.float32)
    p = rng.random((3, 6)) < 0.6
    p[2] = False
    adv = np.array([1.0, -0.5, 2.0], np.float32)
    s = np.minimum(np.exp(new) * adv[:, None], np.clip(np.exp(new), 0.8, 1.2) * adv[:, None]) * p
    cases = {
        "global_L1": -(s.sum(1) / 5).mean(),
        "row_tokens": -(s.sum(1) / np.maximum(p.sum(1), 1)).mean(),
        "batch_tokens": -s.sum() / p.sum(),
    }
    for norm, want in cases.items():
        loss, _ = losses.policy_loss(new, old, adv, p, normalizer=norm, L1_ref=5)
        np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-7)


def test_padding_does_not_change_global_L1():
    rng = np.random.default_rng(1)
    new = rng.normal(size=(2, 5)).astype(np.float32) * 0.2
    old = rng.normal(size=(2, 5)).astype(np.float32) * 0.2
    p = rng.random((2, 5)) < 0.7
    adv = np.array([0.3, -1.2], np.float32)
    kw = dict(L1_ref=7, beta=0.1)
    base, _ = losses.policy_loss(new, old, adv, p, logp_ref=old, **kw)
    # pad the token axis (bucketing) and add an invalid row: same loss with num_rows
    padt = lambda x, v: np.pad(x, ((0, 1), (0, 3)), constant_values=v)
    padded, _ = losses.policy_loss(padt(new, -np.inf), padt(old, 0.0), np.pad(adv, (0, 1)),
                                   padt(p, False), logp_ref=padt(old, 0.0), num_rows=2, **kw)
    np.testing.assert_allclose(padded, base, rtol=1e-6)
    # masked -inf log-probs give finite gradients
    g = jax.grad(lambda x: losses.policy_loss(x, padt(old, 0.0), np.pad(adv, (0, 1)),
                                              padt(p, False), num_rows=2, L1_ref=7)[0])(
        jnp.asarray(padt(new, -np.inf)))
    assert np.isfinite(g).all()


def test_policy_loss_check_grads():
    rng = np.random.default_rng(2)
    old = rng.normal(size=(2, 6)).astype(np.float32)
    # log-ratios within ±0.1: ρ stays away from the clip edges 1±0.2
    new = old + rng.uniform(-0.1, 0.1, size=(2, 6)).astype(np.float32)
    ref = old + rng.uniform(-0.5, 0.5, size=(2, 6)).astype(np.float32)
    p = np.array([[1, 1, 0, 1, 1, 0], [0, 1, 1, 1, 0, 1]], bool)
    adv = rng.normal(size=(2, 6)).astype(np.float32)
    for est in ("k1", "k2", "k3"):
        f = lambda x: losses.policy_loss(x, old, adv, p, L1_ref=6, beta=0.3, logp_ref=ref,
                                         kl_estimator=est)[0]
        check_grads(f, (jnp.asarray(new),), order=1, modes=("rev", "fwd"), eps=1e-2,
                    atol=1e-3, rtol=1e-2)


@pytest.mark.parametrize("a", [1.0, -1.0])
def test_clipping_engages_exactly_beyond_eps(a):
    eps = 0.2
    # ρ just inside and just outside each edge
    rho = np.array([[1 + eps - 1e-3, 1 + eps + 1e-3, 1 - eps + 1e-3, 1 - eps - 1e-3]], np.float32)
    old = np.zeros((1, 4), np.float32)
    new = np.log(rho).astype(np.float32)
    p = np.ones((1, 4), bool)
    g = jax.grad(lambda x: losses.policy_loss(x, old, np.array([a], np.float32), p, eps=eps,
                                              L1_ref=4)[0])(jnp.asarray(new))
    g = np.asarray(g)[0]
    expected_zero = [False, a > 0, False, a < 0]  # the clipped side the min selects
    for gi, z, r in zip(g, expected_zero, rho[0]):
        if z:
            assert gi == 0.0
        else:
            np.testing.assert_allclose(gi, -a * r / 4, rtol=1e-5)  # d(-ρA/4)/dℓ
    _, m = losses.policy_loss(new, old, np.array([a], np.float32), p, eps=eps, L1_ref=4)
    np.testing.assert_allclose(m["clip_fraction"], 0.25)


def test_log_ratio_clip():
    old = np.zeros((1, 2), np.float32)
    new = np.array([[20.0, -20.0]], np.float32)
    p = np.ones((1, 2), bool)
    _, m = losses.policy_loss(new, old, np.array([1.0]), p, L1_ref=2, eps=100.0)
    np.testing.assert_allclose(m["ratio_max"], np.exp(10.0), rtol=1e-5)
    np.testing.assert_allclose(m["ratio_min"], np.exp(-10.0), rtol=1e-5)
    np.testing.assert_allclose(m["log_ratio_clip_fraction"], 1.0)
    _, m = losses.policy_loss(new, old, np.array([1.0]), p, L1_ref=2, eps=100.0,
                              log_ratio_clip=None)
    np.testing.assert_allclose(m["ratio_max"], np.exp(20.0), rtol=1e-5)


def test_value_loss_hand_computed():
    v = np.array([[0.0, 0.5, 0.1, 9.0]], np.float32)
    old = np.array([[0.0, 0.0, 0.3, 0.0]], np.float32)
    ret = np.array([[0.0, 1.0, 0.3, 0.0]], np.float32)
    p = P_MASK
    # token1: v=0.5, clip -> 0.2; max((0.5-1)^2, (0.2-1)^2) = 0.64
    # token2: v=0.1, v-old=-0.2 inside the clip; (0.1-0.3)^2 = 0.04
    loss, m = losses.value_loss(v, old, ret, p, clip=0.2, L1_ref=4)
    np.testing.assert_allclose(loss, 0.5 * (0.64 + 0.04) / 4, rtol=1e-5)
    np.testing.assert_allclose(m["value_clip_fraction"], 0.5)
    loss, _ = losses.value_loss(v, old, ret, p, clip=None, L1_ref=4)
    np.testing.assert_allclose(loss, 0.5 * (0.25 + 0.04) / 4, rtol=1e-5)
    check_grads(lambda x: losses.value_loss(x, old, ret, p, clip=0.2, L1_ref=4)[0],
                (jnp.asarray(v),), order=1, modes=("rev",), eps=1e-3, atol=1e-3, rtol=1e-2)


def test_token_logprobs_and_sft():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(2, 5, 11)).astype(np.float32) * 3
    labels = rng.integers(0, 11, size=(2, 5))
    lp = losses.token_logprobs(logits, labels)
    want = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), labels[..., None], -1)[..., 0]
    np.testing.assert_allclose(lp, want, rtol=1e-5, atol=1e-5)
    assert losses.token_logprobs(jnp.asarray(logits, jnp.bfloat16), labels).dtype == jnp.float32
    p = rng.random((2, 5)) < 0.5
    p[:, 0] = True
    a, m = losses.masked_nll(logits, labels, p, L1_ref=4)
    b, _ = losses.masked_nll(lp, None, p, L1_ref=4)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    np.testing.assert_allclose(a, (-(want * p).sum(1) / 4).mean(), rtol=1e-5)
    np.testing.assert_allclose(m["nll"], -(want * p).sum() / p.sum(), rtol=1e-5)
    c, _ = losses.random_masking_sft_loss(lp, None, p)
    np.testing.assert_allclose(c, (-(want * p).sum(1) / p.sum(1)).mean(), rtol=1e-5)
    t = np.array([0.5, 0.25], np.float32)
    d, _ = losses.random_masking_sft_loss(lp, None, p, mask_ratio=t)
    np.testing.assert_allclose(d, (-(want * p).sum(1) / p.sum(1) / t).mean(), rtol=1e-5)


def test_under_jit():
    f = jax.jit(partial(losses.policy_loss, L1_ref=4, beta=0.01))
    loss, m = f(LOGP_NEW, LOGP_OLD, np.array([1.0]), P_MASK, logp_ref=LOGP_OLD)
    ref, _ = losses.policy_loss(LOGP_NEW, LOGP_OLD, np.array([1.0]), P_MASK, L1_ref=4, beta=0.01,
                                logp_ref=LOGP_OLD)
    np.testing.assert_allclose(loss, ref, rtol=1e-6)
    assert set(m) >= {"clip_fraction", "approx_kl", "ratio_mean", "kl", "pg_loss"}


@pytest.mark.parametrize("kwargs,arg", [
    (dict(logp_old=np.zeros((1, 3))), "logp_old"),
    (dict(advantages=np.zeros((2,))), "advantages"),
    (dict(normalizer="tokens"), "normalizer"),
    (dict(kl_estimator="k4", beta=0.1, logp_ref=LOGP_OLD), "kl_estimator"),
    (dict(L1_ref=None), "L1_ref"),
    (dict(beta=0.1), "logp_ref"),
    (dict(logp_ref=np.zeros((1, 5))), "logp_ref"),
    (dict(kl_normalizer="max"), "kl_normalizer"),
])
def test_policy_loss_bad_input(kwargs, arg):
    args = dict(logp_new=LOGP_NEW, logp_old=LOGP_OLD, advantages=np.array([1.0]), p_mask=P_MASK,
                L1_ref=4)
    args.update(kwargs)
    with pytest.raises(ValueError, match=arg):
        losses.policy_loss(**args)


def test_other_bad_input():
    with pytest.raises(ValueError, match="returns"):
        losses.value_loss(LOGP_NEW, LOGP_OLD, np.zeros((1, 3)), P_MASK, L1_ref=4)
    with pytest.raises(ValueError, match="labels"):
        losses.token_logprobs(np.zeros((2, 3, 5)), np.zeros((2, 4), int))
    with pytest.raises(ValueError, match="labels"):
        losses.masked_nll(np.zeros((1, 4, 5)), None, P_MASK, L1_ref=4)
    with pytest.raises(ValueError, match="normalizer"):
        losses.masked_nll(LOGP_NEW, None, P_MASK, normalizer="mean")
    with pytest.raises(ValueError, match="mask_ratio"):
        losses.random_masking_sft_loss(LOGP_NEW, None, P_MASK, mask_ratio=np.ones(3))
