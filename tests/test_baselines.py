"""Tests for tracerl_jax.baselines: random-masking and coupled rows (§9.1, §10.1)."""

import jax
import numpy as np
import pytest

from tracerl_jax import attention
from tracerl_jax import baselines as bl
from tracerl_jax import rows as rows_lib

PAD, MASK = 0, 99
N, L0, L1, B = 4, 3, 10, 4
KEY = jax.random.key(0)


def _batch():
    rng = np.random.default_rng(0)
    pv = np.arange(L0)[None, :] >= np.array([0, 1, 2, 0])[:, None]
    prompt = np.where(pv, 7, PAD)
    lengths = np.array([10, 6, 3, 8])
    resp = rng.integers(1, 50, size=(N, L1))
    resp[np.arange(L1)[None, :] >= lengths[:, None]] = PAD
    return prompt, pv, resp


KW = dict(block_size=B, mask_id=MASK, pad_id=PAD)


def _noised(rows):
    return np.asarray(rows.tokens)[:, L0 + L1:]


def test_random_masking_rows_layout():
    prompt, pv, resp = _batch()
    rows = bl.random_masking_rows(KEY, prompt, pv, resp, post_num=None, **KW)
    assert rows.p_mask.shape == (N, L1)  # the response layout
    np.testing.assert_array_equal(rows.response_index, np.arange(N))
    masked = _noised(rows) == MASK
    p = np.asarray(rows.p_mask)
    np.testing.assert_array_equal(p, masked)  # p_mask = masked tokens
    np.testing.assert_array_equal(np.where(masked, MASK, resp), _noised(rows))  # others clean
    # same positions and attention info as the TraceRL rows
    np.testing.assert_array_equal(rows.positions, rows_lib.extended_positions(pv, L1))
    info = attention.extended_info(pv, L1, B)
    for a, b in zip(rows.mask_info, info):
        np.testing.assert_array_equal(a, b)


def test_post_num_applies():
    prompt, pv, resp = _batch()
    rows = bl.random_masking_rows(KEY, prompt, pv, resp, lower_p=1.0, upper_p=1.0, **KW)
    p = np.asarray(rows.p_mask)
    np.testing.assert_array_equal(p, resp != PAD)  # everything masked, no pad scored
    assert (_noised(rows) == MASK).all()  # pads stay masked in the input
    rows = bl.random_masking_rows(KEY, prompt, pv, resp, lower_p=0.0, upper_p=0.0, **KW)
    assert not np.asarray(rows.row_valid).any()  # nothing masked: empty rows


@pytest.mark.parametrize("compat", ["recommended", "reference"])
def test_coupled_complementary_and_ordered(compat):
    prompt, pv, resp = _batch()
    rows = bl.coupled_rows(KEY, prompt, pv, resp, post_num=None, compat=compat, **KW)
    assert rows.p_mask.shape[0] == 2 * N
    if compat == "reference":  # all primaries, then all complements (Q-T7 [REF])
        prim, comp = np.arange(N), np.arange(N) + N
    else:  # interleaved: each row next to its complement
        prim, comp = np.arange(0, 2 * N, 2), np.arange(1, 2 * N, 2)
    idx = np.asarray(rows.response_index)
    np.testing.assert_array_equal(idx[prim], np.arange(N))
    np.testing.assert_array_equal(idx[comp], np.arange(N))
    np.testing.assert_array_equal(np.asarray(rows.round_index)[prim], 0)
    np.testing.assert_array_equal(np.asarray(rows.round_index)[comp], 1)
    p = np.asarray(rows.p_mask)
    np.testing.assert_array_equal(p[prim] ^ p[comp], True)  # complementary ...
    np.testing.assert_array_equal(p[prim].astype(int) + p[comp], 1)  # ... each token once
    m = _noised(rows) == MASK
    np.testing.assert_array_equal(m[prim], ~m[comp])
    # the primary rows are exactly random_masking's rows for the same key
    single = bl.random_masking_rows(KEY, prompt, pv, resp, post_num=None, compat=compat, **KW)
    np.testing.assert_array_equal(np.asarray(rows.tokens)[prim], single.tokens)


def test_deterministic_given_key():
    prompt, pv, resp = _batch()
    a = bl.coupled_rows(KEY, prompt, pv, resp, **KW)
    b = bl.coupled_rows(KEY, prompt, pv, resp, **KW)
    c = bl.coupled_rows(jax.random.key(1), prompt, pv, resp, **KW)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.p_mask, c.p_mask)
    s = bl.semi_ar_sft_rows(KEY, prompt, pv, resp, **KW)
    np.testing.assert_array_equal(s.p_mask, bl.random_masking_rows(KEY, prompt, pv, resp,
                                                                   **KW).p_mask)


def test_ratio_modes():
    mask, u = map(np.asarray, bl.draw_masks(KEY, 64, 10, block_size=4, ratio="block"))
    for s in (slice(0, 4), slice(4, 8), slice(8, 10)):
        assert (u[:, s] == u[:, s.start:s.start + 1]).all()
    assert not (u[:, :1] == u[:, 4:5]).all()
    _, u = map(np.asarray, bl.draw_masks(KEY, 64, 10, block_size=4, ratio="row"))
    assert (u == u[:, :1]).all()
    _, u = map(np.asarray, bl.draw_masks(KEY, 64, 10, block_size=4, ratio="token"))
    assert (u >= 0.1).all() and (u <= 0.9).all() and not (u == u[:, :1]).all()
    # per-token thresholds give i.i.d. Bernoulli(0.5): row fractions concentrate (Q-T5)
    m_tok, _ = bl.draw_masks(KEY, 400, 64, block_size=4, ratio="token", lower_p=0.0, upper_p=1.0)
    m_row, _ = bl.draw_masks(KEY, 400, 64, block_size=4, ratio="row", lower_p=0.0, upper_p=1.0)
    f_tok, f_row = np.asarray(m_tok).mean(1), np.asarray(m_row).mean(1)
    assert abs(f_tok.mean() - 0.5) < 0.03 and f_tok.std() < 0.1
    assert f_row.std() > 0.2


@pytest.mark.parametrize("kwargs,arg", [
    (dict(ratio="sequence"), "ratio"),
    (dict(lower_p=0.9, upper_p=0.1), "lower_p"),
    (dict(order="after"), "order"),
    (dict(block_size=0), "block_size"),
    (dict(prompt_valid=np.ones((N, L0 + 1), bool)), "prompt_valid"),
    (dict(response_ids=np.ones((N + 1, L1), int)), "response_ids"),
    (dict(response_valid=np.ones((N + 1,), bool)), "response_valid"),
    (dict(compat="ref"), "compat"),
])
def test_bad_input(kwargs, arg):
    prompt, pv, resp = _batch()
    args = dict(prompt_ids=prompt, prompt_valid=pv, response_ids=resp, **KW)
    args.update(kwargs)
    with pytest.raises(ValueError, match=arg):
        bl.coupled_rows(KEY, **args)
