"""Packed TraceRL rows: all rounds of a response in one input, the same scores, losses and gradients.

For the same rollouts, packed rows (``rows_from_rollout(..., pack=C)``) and
the unpacked rows must give the same per-token log-probs and values, the
same policy, value and SFT losses and the same gradients, up to float32
rounding (packing changes which positions share a matmul and a softmax, so
the sums run in a different order). Covered: static and dynamic decoding,
left-padded prompts of different lengths, EOS inside a block, ``shrink > 1``,
``post_num``, a value model, and packing all rounds (C = T) or two of them.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tracerl_jax.attention import allowed, extended_info, packed_info
from tracerl_jax.models import (ModelConfig, cache_init_fn, init_model, init_value_model, sampler_forward_fn,
                                split_model)
from tracerl_jax.rows import flat_rounds, gather, pack_rows, response_mask
from tracerl_jax.sampling import BlockSamplerConfig, make_block_sampler
from tracerl_jax.scoring import trajectory_logprobs, trajectory_values
from tracerl_jax.train.steps import PolicyLossConfig, batch_scalars, policy_loss_fn, sft_loss_fn, value_loss_fn
from tracerl_jax.trajectory import rows_from_rollout

PAD, EOS, MASK = 0, 1, 2
CFG = ModelConfig(vocab_size=32, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                  num_kv_heads=2, head_dim=16, rope_theta=10000.0, rms_norm_eps=1e-6,
                  tie_word_embeddings=False, mask_token_id=MASK, pad_token_id=PAD, eos_token_id=EOS,
                  model_type="sdar", max_position_embeddings=256)
GEN, BLOCK = 16, 4


@pytest.fixture(scope="module")
def model():
    graphdef, params = split_model(init_model(CFG, seed=0))
    params = jax.tree.map(lambda x: x * 1.5 if x.ndim == 2 else x, params)  # sharper: dynamic commits several
    return graphdef, params


@pytest.fixture(scope="module")
def value_model():
    graphdef, params = split_model(init_value_model(CFG, seed=1))
    # The value head starts at zero; give it weights so values differ per position.
    params = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(3), x.shape, x.dtype)
                          if x.ndim == 2 else x, params)
    return graphdef, params


def _rollout(model, strategy, steps):
    graphdef, params = model
    rng = np.random.default_rng(0)
    L0, n = 8, 6
    ids = np.full((n, L0), PAD, np.int32)
    for i, L in enumerate(rng.integers(1, L0 + 1, size=n)):
        ids[i, L0 - L:] = rng.integers(3, CFG.vocab_size, size=L)
    scfg = BlockSamplerConfig(gen_length=GEN, mask_id=MASK, eos_id=EOS, pad_id=PAD, block_size=BLOCK,
                              steps_per_block=steps, strategy=strategy, threshold=0.045, temperature=1.0)
    sampler = make_block_sampler(sampler_forward_fn(graphdef), cache_init_fn(CFG), scfg, vocab_size=CFG.vocab_size)
    ro = sampler(params, ids, ids != PAD, rng=jax.random.key(7))
    return jnp.asarray(ids), jnp.asarray(ids != PAD), ro


CASES = [  # strategy, steps per block, shrink, post_num, copies
    ("low_confidence_static", 4, 1, 0, 4),
    ("low_confidence_dynamic", 4, 1, None, 4),
    ("low_confidence_dynamic", 4, 2, 1, 2),
]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0][15:]}-shrink{c[2]}-post{c[3]}-C{c[4]}")
def case(request, model):
    strategy, steps, shrink, post_num, copies = request.param
    prompts, valid, ro = _rollout(model, strategy, steps)
    kw = dict(block_size=BLOCK, mask_id=MASK, pad_id=PAD, shrink=shrink, post_num=post_num)
    T = -(-(-(-BLOCK // shrink)) // copies) * copies
    flat = rows_from_rollout(prompts, valid, ro, max_rounds=T, **kw).rows
    packed = rows_from_rollout(prompts, valid, ro, pack=copies, **kw).rows
    return ro, flat, packed, copies


def test_packed_rows_hold_the_same_rounds(case):
    ro, flat, packed, C = case
    lengths = np.asarray(ro.lengths)
    assert np.any((lengths < GEN) & (lengths % BLOCK != 0)), "the rollout must end inside a block"
    assert packed.rounds_per_input == C and packed.tokens.shape[0] * C == flat.tokens.shape[0]
    for name in ("labels", "p_mask", "response_index", "round_index", "row_valid"):
        np.testing.assert_array_equal(np.asarray(flat_rounds(getattr(packed, name), packed)),
                                      np.asarray(getattr(flat, name)), err_msg=name)
    # The packed input holds the prompt and clean response once, then the rounds' noised copies.
    L1, head = flat.response_len, flat.tokens.shape[1] - flat.response_len
    np.testing.assert_array_equal(np.asarray(packed.tokens[:, :head]), np.asarray(flat.tokens[::C, :head]))
    np.testing.assert_array_equal(np.asarray(packed.tokens[:, head:]).reshape(-1, L1),
                                  np.asarray(flat.tokens[:, head:]))
    assert packed.tokens.shape[1] == head + C * L1


def test_packed_scores_equal_unpacked(case, model, value_model):
    ro, flat, packed, C = case
    scored = np.asarray(response_mask(flat))
    assert scored.sum() > 40
    for fn, (graphdef, params) in ((trajectory_logprobs, model), (trajectory_values, value_model)):
        score = jax.jit(fn, static_argnums=0)
        a = np.asarray(score(graphdef, params, flat))
        b = np.asarray(flat_rounds(score(graphdef, params, packed), packed))
        np.testing.assert_allclose(b[scored], a[scored], rtol=2e-5, atol=2e-5, err_msg=fn.__name__)
    # Per-response values (e.g. V_old for GAE) come out the same from either row form.
    g = lambda rows, v: gather(v, response_mask(rows), rows.response_index, ro.tokens.shape[0])  # noqa: E731
    v = jax.jit(trajectory_values, static_argnums=0)
    np.testing.assert_allclose(np.asarray(g(packed, v(*value_model, packed))), np.asarray(g(flat, v(*value_model, flat))),
                               rtol=2e-5, atol=2e-5)


def _batch(rows, logp_old, extra):
    return dict(rows=rows, logp_old=logp_old, **batch_scalars(rows.row_valid, 1, float(GEN)), **extra)


def _assert_same_loss_and_grads(loss_fn, params, flat_batch, packed_batch):
    grad = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    (la, ma), ga = grad(params, flat_batch)
    (lb, mb), gb = grad(params, packed_batch)
    np.testing.assert_allclose(float(lb), float(la), rtol=1e-5, atol=1e-7)
    for k in ma:
        np.testing.assert_allclose(float(mb[k]), float(ma[k]), rtol=1e-4, atol=1e-6, err_msg=k)
    leaves_a, leaves_b = jax.tree.leaves(ga), jax.tree.leaves(gb)
    scale = max(float(jnp.max(jnp.abs(x))) for x in leaves_a)
    assert scale > 0
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-4, atol=1e-5 * scale)


def test_packed_losses_and_gradients_equal_unpacked(case, model, value_model):
    ro, flat, packed, C = case
    graphdef, params = model
    N = ro.tokens.shape[0]
    rng = np.random.default_rng(1)
    # Old log-probs slightly off the current ones so the ratio, clip and KL all act.
    logp = jax.jit(trajectory_logprobs, static_argnums=0)(graphdef, params, flat)
    logp_old = logp + jnp.asarray(rng.normal(0, 0.1, logp.shape), jnp.float32)
    adv = jnp.asarray(rng.normal(size=(N, GEN)), jnp.float32)[flat.response_index]
    pack = lambda x: x.reshape(-1, C, *x.shape[1:])  # noqa: E731
    cfg = PolicyLossConfig(beta=0.05)
    _assert_same_loss_and_grads(policy_loss_fn(graphdef, cfg), params, _batch(flat, logp_old, {"advantages": adv}),
                                _batch(packed, pack(logp_old), {"advantages": pack(adv)}))
    # Per-row (sequence-level) advantages [R] -> [P, C].
    adv_row = jnp.asarray(rng.normal(size=N), jnp.float32)[flat.response_index]
    _assert_same_loss_and_grads(policy_loss_fn(graphdef, cfg), params,
                                _batch(flat, logp_old, {"advantages": adv_row}),
                                _batch(packed, pack(logp_old), {"advantages": pack(adv_row)}))
    _assert_same_loss_and_grads(sft_loss_fn(graphdef), params, _batch(flat, logp_old, {}),
                                _batch(packed, pack(logp_old), {}))
    vg, vp = value_model
    old_v = jax.jit(trajectory_values, static_argnums=0)(vg, vp, flat)
    ret = old_v + jnp.asarray(rng.normal(0, 0.5, old_v.shape), jnp.float32)
    _assert_same_loss_and_grads(value_loss_fn(vg), vp, _batch(flat, logp_old, {"old_values": old_v, "returns": ret}),
                                _batch(packed, pack(logp_old), {"old_values": pack(old_v), "returns": pack(ret)}))


def test_packed_logprobs_equal_sampler_logprobs(model):
    """Rollout/trainer agreement on packed rows: each committed token's log-prob as the sampler had it."""
    graphdef, params = model
    prompts, valid, ro = _rollout(model, "low_confidence_dynamic", 4)
    rr = rows_from_rollout(prompts, valid, ro, block_size=BLOCK, mask_id=MASK, pad_id=PAD, post_num=None, pack=4)
    rows = rr.rows
    logp = np.asarray(flat_rounds(jax.jit(trajectory_logprobs, static_argnums=0)(graphdef, params, rows), rows))
    scored = np.asarray(flat_rounds(response_mask(rows), rows))
    idx = np.asarray(flat_rounds(rows.response_index, rows))
    counts = np.zeros(np.shape(rr.completion), int)
    np.add.at(counts, idx, scored.astype(int))
    np.testing.assert_array_equal(counts, np.asarray(rr.completion).astype(int))  # every token scored once
    np.testing.assert_allclose(logp[scored], np.asarray(ro.logprobs)[idx][scored], atol=1e-4)


def test_packed_mask_is_the_extended_mask_per_copy():
    """Copy c of a packed input sees exactly what its own extended-layout row sees; copies never meet."""
    rng = np.random.default_rng(0)
    L0, L1, b, C = 6, 8, 4, 3
    pv = jnp.asarray(rng.random((2, L0)) > 0.3)
    ext = extended_info(pv, L1, b)
    pk = packed_info(pv, L1, b, C)
    a_ext = np.asarray(allowed(ext, ext))                       # [B, L0+2L1, L0+2L1]
    a_pk = np.asarray(allowed(pk, pk))
    head = L0 + L1
    np.testing.assert_array_equal(a_pk[:, :head, :head], a_ext[:, :head, :head])
    for c in range(C):
        q = slice(head + c * L1, head + (c + 1) * L1)
        np.testing.assert_array_equal(a_pk[:, q, :head], a_ext[:, head:, :head])
        np.testing.assert_array_equal(a_pk[:, q, q], a_ext[:, head:, head:])
        for c2 in range(C):
            if c2 != c:
                assert not a_pk[:, q, head + c2 * L1:head + (c2 + 1) * L1].any()
    assert not a_pk[:, :head, head:].any()                       # clean positions never see a noised copy


def test_pack_rows_rejects_bad_input(case):
    ro, flat, packed, C = case
    with pytest.raises(ValueError, match="packed already"):
        pack_rows(packed, C, block_size=BLOCK)
    with pytest.raises(ValueError, match="do not split"):
        pack_rows(jax.tree.map(lambda x: x[:-1], flat), C, block_size=BLOCK)
    with pytest.raises(ValueError, match="copies"):
        pack_rows(flat, 0, block_size=BLOCK)
    # A run that mixes two responses.
    shifted = jax.tree.map(lambda x: jnp.roll(x, 1, axis=0), flat)
    with pytest.raises(ValueError, match="different responses"):
        pack_rows(shifted, C, block_size=BLOCK)
    # Noised positions that are not the response positions.
    L1 = flat.response_len
    bad_pos = flat._replace(positions=flat.positions.at[:, -L1:].add(1))
    with pytest.raises(ValueError, match="positions of its noised copy"):
        pack_rows(bad_pos, C, block_size=BLOCK)
    with pytest.raises(ValueError, match="extended layout of block_size"):
        pack_rows(flat, C, block_size=2 * BLOCK)
    # Packing what pack_rows builds itself gives the rows_from_rollout result.
    again = pack_rows(flat, C, block_size=BLOCK)
    for x, y in zip(jax.tree.leaves(again), jax.tree.leaves(packed)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_blockwise_attention_skips_exactly_the_empty_tiles_of_packed_rows():
    from tracerl_jax.attention import dense_mask, dot_product_attention
    from tracerl_jax.blockwise_attention import blockwise_attention, pad_info, tile_schedule

    rng = np.random.default_rng(0)
    L0, L1, b, C, t = 16, 32, 4, 4, 16   # every tile lies in one part (prompt+clean, or one copy)
    pv = jnp.asarray(np.arange(L0)[None] >= rng.integers(0, 4, size=(2, 1)))
    info = packed_info(pv, L1, b, C)
    N = L0 + (C + 1) * L1
    q, k, v = (jnp.asarray(rng.normal(size=(2, N, h, 8)), jnp.float32) for h in (4, 2, 2))
    np.testing.assert_allclose(np.asarray(blockwise_attention(q, k, v, info, q_tile=t, k_tile=t)),
                               np.asarray(dot_product_attention(q, k, v, dense_mask(info, info))), atol=2e-5)
    Lp = -(-N // t) * t
    sched = tile_schedule(pad_info(info, Lp), t, t)
    pinfo = pad_info(info, Lp)
    need = np.asarray(allowed(pinfo, pinfo)).any(0).reshape(Lp // t, t, Lp // t, t).any(axis=(1, 3))
    order, count = np.asarray(sched.order), np.asarray(sched.count)
    visited = np.zeros_like(need)
    for i in range(need.shape[0]):
        visited[i, order[i, :count[i]]] = True
    # Every needed tile is visited, and no tile pair between two different noised copies is.
    assert np.all(visited >= need)
    copy_of_tile = (np.arange(Lp // t) * t - (L0 + L1)) // L1            # < 0: prompt/clean tiles
    for i in range(need.shape[0]):
        for j in range(need.shape[1]):
            if copy_of_tile[i] >= 0 and copy_of_tile[j] >= 0 and copy_of_tile[i] != copy_of_tile[j]:
                assert not visited[i, j], (i, j)


def _rl_recipe(tmp_path, pack):
    from tracerl_jax.rl.recipe import get_config

    c = get_config()
    c.workdir = str(tmp_path / f"run_{pack}")
    c.model.init = "shipped:arith_sft"
    c.task.num_train, c.task.num_eval = 64, 0
    c.rollout.update(num_prompts=2, k=4, group_filter="none", strategy="low_confidence_static")
    # One update holds every row in either form, so both take the same gradient step.
    c.rl.update(batch_rows=32, grad_accum=1, total_steps=1, pack_rounds=pack)
    return c


def test_rl_step_on_packed_rows_takes_the_unpacked_update(tmp_path):
    from tracerl_jax import rl

    out = {}
    for pack in (None, 4):
        run = rl.build_run(_rl_recipe(tmp_path, pack))
        out[pack] = (rl.rl_step(run, 1), run.policy.state.params)
    m0, m4 = out[None][0], out[4][0]
    assert m0["reward"] == m4["reward"] and m0["updates"] == m4["updates"] == 1
    assert m0["rows"] == 4 * m4["rows"]              # static 4-step blocks: 4 rounds per response, one packed row
    for k in ("policy/loss", "policy/grad_norm", "policy/ratio_mean", "policy/num_tokens", "policy/kl"):
        np.testing.assert_allclose(m4[k], m0[k], rtol=1e-4, atol=1e-7, err_msg=k)
    for a, b in zip(jax.tree.leaves(out[None][1]), jax.tree.leaves(out[4][1])):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=2e-6)


@pytest.mark.parametrize("field,value,match", [
    ("rl.pack_rounds", 0, "rl.pack_rounds must be None or an int >= 1"),
    ("rl.method", "coupled", "rl.pack_rounds packs the rounds of TraceRL rows"),
    ("model.init", "random:tiny-llada", "applies to block models only"),
])
def test_rl_config_rejects_bad_packing(tmp_path, field, value, match):
    from tracerl_jax import rl
    from tracerl_jax.families import get_family
    from tracerl_jax.rl import specs

    c = _rl_recipe(tmp_path, 2)
    section, name = field.split(".")
    c[section][name] = value
    with pytest.raises(ValueError, match=match):
        rl.config.check_config(c, family=get_family(specs.policy_family(c.model.init)), process_count=1,
                               device_count=1, platform="cpu")
