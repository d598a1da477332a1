"""Tests for tracerl_jax.trajectory: worked examples of §3.7/§4.7, properties, errors."""

from functools import partial

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracerl_jax import attention
from tracerl_jax import rows as rows_lib
from tracerl_jax import trajectory as tr
from tracerl_jax.rl import pipeline

PAD, MASK = 0, 99
P1, P2 = 11, 12
R = [21, 22, 23, 24, 25, 26]  # r0..r5, r5 = EOS


def _rows(**kw):
    """The response of §4.7: prompt [PAD p1 p2], r0..r5 then two right pads."""
    args = dict(block_size=4, mask_id=MASK, pad_id=PAD)
    args.update(kw)
    prompt = np.array([[PAD, P1, P2]])
    resp = np.array([R + [PAD, PAD]])
    sm = np.array([[2, 1, 2, 3, 5, 4, 0, 0]])
    return tr.build_rows(prompt, prompt != PAD, resp, sm, np.array([6]), **args)


def _valid(rows):
    """The valid rows, in order, and their number."""
    keep = np.flatnonzero(np.asarray(rows.row_valid))
    return jax.tree.map(lambda a: np.asarray(a)[keep], rows), keep.size


# --------------------------------------------------------------------------
# §3.7 worked mask and positions
# --------------------------------------------------------------------------


def test_worked_mask_3_7():
    # the table of §3.7, row by row: P0..P2, r0..r7, n0..n7
    rows = [
        ". 1 1 " + ". " * 8 + ". " * 8,
    ] * 3
    r03 = ". 1 1 " + "1 1 1 1 . . . . " + ". " * 8
    r47 = ". 1 1 " + "1 " * 8 + ". " * 8
    n03 = ". 1 1 " + ". " * 8 + "1 1 1 1 . . . . "
    n47 = ". 1 1 " + "1 1 1 1 . . . . " + ". . . . 1 1 1 1 "
    rows += [r03] * 4 + [r47] * 4 + [n03] * 4 + [n47] * 4
    expected = np.array([[c == "1" for c in row.split()] for row in rows])
    info = attention.extended_info(np.array([[False, True, True]]), 8, 4)
    mask = np.asarray(attention.dense_mask(info, info))[0, 0]
    np.testing.assert_array_equal(mask, expected)
    # the rows built by build_rows carry the same MaskInfo
    rows_ = _rows()
    for a, b in zip(rows_.mask_info, info):
        np.testing.assert_array_equal(np.asarray(a)[0], np.asarray(b)[0])


def test_positions_3_5():
    rows = _rows()
    expected = [1, 0, 1] + list(range(2, 10)) * 2
    for pos in np.asarray(rows.positions):
        np.testing.assert_array_equal(pos, expected)
    pos = rows_lib.extended_positions(np.array([[False, False, True, True], [True] * 4]), 2)
    np.testing.assert_array_equal(pos, [[1, 1, 0, 1, 2, 3, 2, 3], [0, 1, 2, 3, 4, 5, 4, 5]])


# --------------------------------------------------------------------------
# §4.7 worked rows
# --------------------------------------------------------------------------

M = MASK
NOISED_4_7 = [
    [M, M, M, M, M, M, M, M],
    [M, R[1], M, M, M, R[5], M, M],
    [R[0], R[1], R[2], M, R[4], R[5], M, M],
]


def _scored(rows):
    return [list(np.flatnonzero(p)) for p in np.asarray(rows.p_mask)]


@pytest.mark.parametrize("scope", ["sequence", "row"])
@pytest.mark.parametrize("post_num,last", [(0, [3]), (1, [3, 6]), (None, [3, 6, 7])])
def test_worked_rows_4_7(scope, post_num, last):
    rows, n = _valid(_rows(post_num=post_num, post_num_scope=scope))
    assert n == 3
    clean = [PAD, P1, P2] + R + [PAD, PAD]
    for i in range(3):
        np.testing.assert_array_equal(rows.tokens[i], clean + NOISED_4_7[i])
        np.testing.assert_array_equal(rows.labels[i], clean[3:])  # the response layout [R, L1]
        assert rows.p_mask.shape == (3, 8)
        np.testing.assert_array_equal(rows.read_index[i], 3 + 8 + np.arange(8))  # the noised copy
    assert _scored(rows) == [[1, 5], [0, 2, 4], last]
    np.testing.assert_array_equal(rows.response_index, [0, 0, 0])
    np.testing.assert_array_equal(rows.round_index, [0, 1, 2])
    # the static layout: rows of one response are consecutive, round order
    full = _rows(post_num=post_num, post_num_scope=scope)
    np.testing.assert_array_equal(full.row_valid, [True, True, True, False])


def test_worked_rows_4_7_shrink2():
    aligned = np.array([[2, 1, 2, 3, 5, 4, 6, 6]])
    np.testing.assert_array_equal(tr.shrink_step_map(aligned, 4, 2), [[2, 2, 2, 3, 5, 5, 6, 6]])
    rows, n = _valid(_rows(shrink=2, post_num=None))
    assert n == 2 and rows.p_mask.shape[0] == 2
    assert _scored(rows) == [[0, 1, 2, 4, 5], [3, 6, 7]]
    np.testing.assert_array_equal(rows.tokens[0, 11:], [M] * 8)
    np.testing.assert_array_equal(rows.tokens[1, 11:], R[:3] + [M] + R[4:6] + [M, M])


def test_align_step_map_4_1():
    sm = np.array([[2, 1, 2, 3, 5, 4, 0, 0], [0] * 8, [1, 0, 2, 0, 0, 0, 0, 0], [1] * 8])
    lengths = np.array([6, 0, 3, 8])
    aligned, valid = tr.align_step_map(sm, lengths, np.array([True, True, True, False]))
    np.testing.assert_array_equal(valid, [True, False, False, True])
    np.testing.assert_array_equal(aligned[0], [2, 1, 2, 3, 5, 4, 6, 6])
    np.testing.assert_array_equal(aligned[3], np.arange(1, 9))  # no step map: left to right


def test_shrink_examples_4_2():
    x = np.array([[2, 1, 2, 3, 5, 4, 6, 6, 9, 8, 7]])  # partial last block of 3
    np.testing.assert_array_equal(tr.shrink_step_map(x, 4, 1), x)
    np.testing.assert_array_equal(tr.shrink_step_map(x, 4, 2), [[2, 2, 2, 3, 5, 5, 6, 6, 9, 8, 8]])
    np.testing.assert_array_equal(tr.shrink_step_map(x, 4, 4), [[3, 3, 3, 3, 6, 6, 6, 6, 9, 9, 9]])


def test_invalid_and_missing_step_maps():
    prompt = np.array([[P1, P2]] * 3)
    resp = np.array([[5, 6, 7, 8]] * 3)
    sm = np.array([[0, 0, 0, 0], [0, 0, 0, 0], [3, 1, 2, 4]])
    rows = tr.build_rows(prompt, prompt > 0, resp, sm, np.array([0, 4, 4]), block_size=2,
                         mask_id=MASK, pad_id=PAD, has_step_map=np.array([True, False, True]))
    valid = np.asarray(rows.row_valid).reshape(3, 2)
    assert not valid[0].any()  # empty step map: skipped (Q-T6)
    assert valid[1].all() and valid[2].all()
    p = np.asarray(rows.p_mask).reshape(3, 2, 4)
    np.testing.assert_array_equal(p[1], [[1, 0, 1, 0], [0, 1, 0, 1]])  # left to right
    np.testing.assert_array_equal(p[2], [[0, 1, 1, 0], [1, 0, 0, 1]])


def test_post_num_scope_differs():
    # response [a, EOS, PAD * 6], step map [1, 2]; b = 4
    prompt = np.array([[P1]])
    resp = np.array([[5, 6] + [PAD] * 6])
    sm = np.array([[1, 2] + [0] * 6])
    kw = dict(block_size=4, mask_id=MASK, pad_id=PAD, post_num=1)
    seq, _ = _valid(tr.build_rows(prompt, prompt > 0, resp, sm, np.array([2]), **kw))
    row, _ = _valid(tr.build_rows(prompt, prompt > 0, resp, sm, np.array([2]), compat="reference",
                                  **kw))
    assert [list(np.flatnonzero(p)) for p in seq.p_mask] == [[0], [1], [2]]
    assert [list(np.flatnonzero(p)) for p in row.p_mask] == [[0, 4], [1], [2]]


def test_jit_and_helpers():
    f = jax.jit(partial(tr.build_rows, block_size=4, mask_id=MASK, pad_id=PAD))
    prompt = np.array([[PAD, P1, P2]])
    rows = f(prompt, prompt != PAD, np.array([R + [PAD, PAD]]), np.array([[2, 1, 2, 3, 5, 4, 0, 0]]),
             np.array([6]))
    np.testing.assert_array_equal(rows.p_mask, _rows().p_mask)
    batches = pipeline.pack(rows, batch_rows=8, grad_accum=2)   # 4 rows -> one update of 2 micro-batches of 4
    packed = jax.tree.map(lambda x: np.asarray(x).reshape(8, *x.shape[3:]), batches.rows)
    assert batches.count == 1 and batches.num_valid == 3 and packed.row_valid[:3].all()
    assert not packed.row_valid[3:].any() and not packed.p_mask[3:].any()
    np.testing.assert_array_equal(batches.num_rows, [3 / 2])
    # scatter/gather round trip over the scored tokens
    tok = np.arange(8, dtype=np.float32)[None] + 1
    scattered = rows_lib.scatter(tok, rows.scored, rows.response_index)
    back = rows_lib.gather(scattered, rows.scored, rows.response_index, 1)
    np.testing.assert_array_equal(back, tok * np.array([1, 1, 1, 1, 1, 1, 0, 0]))
    # model outputs are read at the noised copy
    ext = np.broadcast_to(np.arange(3 + 16)[None], (4, 19))
    np.testing.assert_array_equal(rows_lib.read_outputs(ext, rows.read_index), np.tile(np.arange(11, 19), (4, 1)))


@pytest.mark.parametrize("kwargs,arg", [
    (dict(shrink=0), "shrink"),
    (dict(block_size=0), "block_size"),
    (dict(post_num=-1), "post_num"),
    (dict(post_num_scope="batch"), "post_num_scope"),
    (dict(compat="paper"), "compat"),
    (dict(max_rounds=0), "max_rounds"),
    (dict(step_map=np.zeros((1, 7), int)), "step_map"),
    (dict(response_lengths=np.zeros((2,), int)), "response_lengths"),
    (dict(prompt_valid=np.ones((1, 4), bool)), "prompt_valid"),
])
def test_bad_input(kwargs, arg):
    args = dict(prompt_ids=np.ones((1, 3), int), prompt_valid=np.ones((1, 3), bool),
                response_ids=np.ones((1, 8), int), step_map=np.ones((1, 8), int),
                response_lengths=np.array([8]), block_size=4, mask_id=MASK, pad_id=PAD)
    args.update(kwargs)
    with pytest.raises(ValueError, match=arg):
        tr.build_rows(**args)


# --------------------------------------------------------------------------
# Properties over random block-decoding trajectories
# --------------------------------------------------------------------------


def oracle_rows(prompt, pv, resp, sm, lengths, has, b, shrink, post_num, scope):
    """Plain-Python transcription of §3.5 and §4.1–4.5 (reference order)."""
    L0, L1 = prompt.shape[1], resp.shape[1]
    out = []
    for n in range(resp.shape[0]):
        if has[n]:
            m = [int(x) for x in sm[n][: lengths[n]]]
            if not m or min(m) <= 0:
                continue
            aligned = (m + [max(m) + 1] * L1)[:L1]
        else:
            aligned = list(range(L1))
        s = list(aligned)
        for st_ in range(0, L1, b):
            vals = sorted(set(aligned[st_:st_ + b]))
            groups = [vals[i:i + shrink] for i in range(0, len(vals), shrink)]
            top = {v: g[-1] for g in groups for v in g}
            s[st_:st_ + b] = [top[v] for v in aligned[st_:st_ + b]]
        s = np.array(s)
        pad_rank = np.cumsum(resp[n] == PAD)
        t = 0
        while (s >= 0).any():
            sel = np.zeros(L1, bool)
            msk = np.zeros(L1, bool)
            for st_ in range(0, L1, b):
                blk = s[st_:st_ + b]
                if (blk >= 0).any():
                    mn = blk[blk >= 0].min()
                    sel[st_:st_ + b] = blk == mn
                    msk[st_:st_ + b] = (blk >= 0) & (blk >= mn)
            p = sel.copy()
            if post_num is not None:
                is_pad = resp[n] == PAD
                if scope == "row":
                    padsel = p & is_pad
                    p &= ~(padsel & (np.cumsum(padsel) > post_num))
                else:
                    p &= ~is_pad | (pad_rank <= post_num)
            noised = np.where(msk, MASK, resp[n])
            valid_pos = np.concatenate([pv[n], np.ones(L1, bool)])
            pos = np.where(valid_pos, np.cumsum(valid_pos) - 1, 1)
            pos = np.concatenate([pos, pos[L0:]])
            if p.any():
                out.append((n, t, np.concatenate([prompt[n], resp[n], noised]), p, pos))
            s[sel] = -1
            t += 1
    return out


@st.composite
def batches(draw):
    b = draw(st.sampled_from([2, 4]))
    L1 = draw(st.sampled_from([8, 10]))
    N, L0 = 3, 3
    sms, lengths, resps, has = [], [], [], []
    for _ in range(N):
        length = draw(st.integers(0, L1))
        step_ids, g = np.zeros(L1, int), 0
        for start in range(0, L1, b):
            n = min(b, L1 - start)
            k = draw(st.integers(1, n))
            raw = np.array(draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))
            dense = np.unique(raw, return_inverse=True)[1]  # surjective onto its steps
            step_ids[start:start + n] = g + dense + 1
            g += dense.max() + 1
        step_ids[length:] = 0  # tokens after EOS are discarded with their ids
        toks = np.array(draw(st.lists(st.integers(0, 6), min_size=L1, max_size=L1)))
        toks[length:] = PAD
        sms.append(step_ids)
        lengths.append(length)
        resps.append(toks)
        has.append(draw(st.integers(0, 3)) > 0)  # mostly with a step map
    npad = draw(st.lists(st.integers(0, L0 - 1), min_size=N, max_size=N))
    pv = np.arange(L0)[None, :] >= np.array(npad)[:, None]
    prompt = np.where(pv, 7, PAD)
    return dict(prompt=prompt, pv=pv, resp=np.array(resps), sm=np.array(sms),
                lengths=np.array(lengths), has=np.array(has), b=b)


SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@SETTINGS
@given(batches(), st.sampled_from([1, 2]), st.sampled_from([None, 0, 1]),
       st.sampled_from(["sequence", "row"]))
def test_matches_oracle(batch, shrink, post_num, scope):
    d = batch
    rows = tr.build_rows(d["prompt"], d["pv"], d["resp"], d["sm"], d["lengths"],
                         block_size=d["b"], mask_id=MASK, pad_id=PAD, shrink=shrink,
                         post_num=post_num, post_num_scope=scope, has_step_map=d["has"])
    got, n = _valid(rows)
    want = oracle_rows(d["prompt"], d["pv"], d["resp"], d["sm"], d["lengths"], d["has"], d["b"],
                       shrink, post_num, scope)
    assert n == len(want)
    for i, (resp_idx, t, ext, p, pos) in enumerate(want):
        assert got.response_index[i] == resp_idx and got.round_index[i] == t
        np.testing.assert_array_equal(got.tokens[i], ext)
        np.testing.assert_array_equal(got.p_mask[i], p)
        np.testing.assert_array_equal(got.positions[i], pos)


@SETTINGS
@given(batches())
def test_scored_once_and_noised_is_sampler_state(batch):
    d = batch
    b = d["b"]
    L0, L1 = d["prompt"].shape[1], d["resp"].shape[1]
    rows = tr.build_rows(d["prompt"], d["pv"], d["resp"], d["sm"], d["lengths"], block_size=b,
                         mask_id=MASK, pad_id=PAD, post_num=None, has_step_map=d["has"])
    aligned, valid = map(np.asarray, tr.align_step_map(d["sm"], d["lengths"], d["has"]))
    p = np.asarray(rows.scored)
    noised = np.asarray(rows.tokens)[:, L0 + L1:]
    for n in range(3):
        mine = np.asarray(rows.response_index) == n
        counts = p[mine].sum(0)
        np.testing.assert_array_equal(counts, np.full(L1, int(valid[n])))  # every token exactly once
        if not valid[n]:
            continue
        for r in np.flatnonzero(mine & np.asarray(rows.row_valid)):
            for start in range(0, L1, b):
                blk = slice(start, start + b)
                ids = aligned[n, blk]
                sel = p[r, blk]
                if sel.any():
                    s = ids[sel][0]
                    assert (ids[sel] == s).all()  # one decoding step per block per row
                    np.testing.assert_array_equal(sel, ids == s)
                    # the sampler's block just before step s: undecoded tokens masked
                    want = np.where(ids >= s, MASK, d["resp"][n, blk])
                    np.testing.assert_array_equal(noised[r, blk], want)
                    np.testing.assert_array_equal(
                        noised[r, blk], tr.noised_copy(d["resp"][n, blk], ids, s, MASK))
                else:  # block already fully decoded in this round
                    np.testing.assert_array_equal(noised[r, blk], d["resp"][n, blk])
