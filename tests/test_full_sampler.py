"""Full-attention sampler semantics (docs/algorithms.md §2).

A deterministic toy forward function (logits from the position and the
canvas contents) isolates the sampler logic; every denoising call is captured
with a host callback and replayed against an independent NumPy statement of
the quota, threshold and Dream rules. A tiny real model checks greedy
determinism, batch independence under left padding, and the prefix cache.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from tracerl_jax.attention import full_info
from tracerl_jax.kv_cache import KVCache
from tracerl_jax.models import (ModelConfig, cache_init_fn, forward, full_sampler_forward_fn, init_model,
                                split_model)
from tracerl_jax.sampling import FullSamplerConfig, make_full_sampler
from tracerl_jax.sampling.full_sampler import prefix_pass, window_pass
from tracerl_jax.sampling.full_schedule import block_steps, dream_fraction_table

V, MASK, PAD, EOS = 24, 23, 0, 22
G, BL = 16, 4
PROMPTS = np.array([[PAD, PAD, 5, 6, 7], [8, 9, 10, 11, 12], [PAD, PAD, PAD, PAD, 13]], np.int32)
VALID = PROMPTS != PAD


def toy_forward(capture):
    table = jax.random.normal(jax.random.key(7), (512, V)) * 3.0

    def fwd(params, tokens, positions, info, cache, write, start, length):
        ctx = jnp.sum(jnp.where(tokens == MASK, 0, tokens), axis=-1, keepdims=True)
        pos = jnp.take(positions, start + jnp.arange(length), axis=1)
        logits = table[(pos * 7 + ctx) % 512] * params
        jax.debug.callback(lambda *a: capture.append(tuple(map(np.asarray, a))), tokens, logits, start)
        return logits, cache

    return fwd


def run_toy(**kw):
    base = dict(gen_length=G, mask_id=MASK, pad_id=PAD, eos_id=EOS, block_size=BL, temperature=0.0)
    base.update(kw)
    cfg = FullSamplerConfig(**base)
    capture = []
    ro = make_full_sampler(toy_forward(capture), None, cfg, vocab_size=V)(jnp.float32(1.0), PROMPTS, VALID)
    jax.block_until_ready(ro)
    return cfg, ro, capture


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def top(conf, cand, k):
    order = sorted(np.flatnonzero(cand), key=lambda i: (-conf[i], i))
    out = np.zeros_like(cand)
    out[order[:k]] = True
    return out


def expected_commit(cfg, conf, masked, i, S, batch_mean):
    """Independent statement of §2.3/§2.4 for one row (greedy)."""
    n = int(masked.sum())
    if cfg.family == "dream" and i == 0:
        if cfg.remasking != "threshold" and S == 1:
            return masked.copy()
        first = np.zeros_like(masked)
        first[0] = masked[0]
        return first
    if cfg.remasking == "threshold":
        high = masked & (conf >= cfg.threshold)
        return high if high.any() else top(conf, masked, 1)
    if cfg.family == "llada":
        k = BL // S + (i < BL % S)
    elif i >= S - 1:
        k = n
    else:
        t = np.linspace(1.0, 1e-3, S + 1)
        m = batch_mean if cfg.compat == "reference" else n
        k = int(np.floor(np.float32(m) * np.float32(1.0 - t[i + 1] / t[i])))
    return top(conf, masked, min(k, n))


def replay(cfg, ro, capture):
    """Replays every captured call; returns the expected step map."""
    Lp = PROMPTS.shape[1]
    S_tab = block_steps(cfg.total_steps, G // BL)
    g = np.zeros(len(PROMPTS), int)
    step = np.zeros((len(PROMPTS), G), int)
    final = np.concatenate([PROMPTS, np.asarray(ro.tokens)], axis=1)
    i, last_s = 0, None
    for k, (canvas, logits, s) in enumerate(capture):
        s = int(s)
        i = i + 1 if s == last_s else 0
        last_s = s
        nxt = capture[k + 1][0] if k + 1 < len(capture) else final
        S = int(S_tab[(s - Lp) // BL])
        blk = canvas[:, s:s + BL]
        masked = blk == MASK
        active = masked.any(-1)
        batch_mean = masked.sum(-1)[active].mean()
        for r in range(len(PROMPTS)):
            z = logits[r].astype(np.float64)
            zm = z.copy()
            zm[:, MASK] = -1e30
            x0 = zm.argmax(-1)
            p = softmax(z) if cfg.family == "llada" else softmax(zm)
            conf = p[np.arange(BL), x0]
            want = blk[r].copy()
            if active[r]:
                commit = expected_commit(cfg, conf, masked[r], i, S, batch_mean)
                want[commit] = x0[commit]
                step[r, s - Lp:s - Lp + BL][commit] = g[r] + 1
                g[r] += 1
            np.testing.assert_array_equal(nxt[r, s:s + BL], want, err_msg=f"call {k} row {r} (block step {i})")
            np.testing.assert_array_equal(np.delete(nxt[r], np.arange(s, s + BL)),
                                          np.delete(canvas[r], np.arange(s, s + BL)))
    np.testing.assert_array_equal(np.asarray(ro.num_steps), g)
    return step


CASES = [
    dict(family="llada", steps=8),
    dict(family="llada", steps=6),          # uneven: [2, 2, 1, 1] steps per block
    dict(family="llada", steps=32),         # more steps than tokens: quota 0 steps never run
    dict(family="llada", remasking="threshold", threshold=0.5),
    dict(family="dream", steps=16, early_stop=False),
    dict(family="dream", steps=4, early_stop=False),             # one step per block (Q-F3 fixed)
    dict(family="dream", steps=12, early_stop=False, compat="reference"),
    dict(family="dream", remasking="threshold", threshold=0.5, early_stop=False),
]


@pytest.mark.parametrize("kw", CASES, ids=lambda kw: "-".join(f"{v}" for v in kw.values()))
def test_replay_matches_rules_and_trajectory(kw):
    cfg, ro, capture = run_toy(**kw)
    step = replay(cfg, ro, capture)
    sm = np.asarray(ro.step_map)
    np.testing.assert_array_equal(sm, step)
    for r in range(sm.shape[0]):
        # Every generated token has exactly one step id; ids are 1..num_steps without gaps.
        assert np.all(sm[r] > 0)
        assert set(sm[r]) <= set(range(1, int(ro.num_steps[r]) + 1))
        blocks = sm[r].reshape(-1, BL)
        assert np.all(blocks[1:].min(-1) > blocks[:-1].max(-1))  # ids grow block by block
    if kw.get("remasking") != "threshold" and kw["family"] == "llada":
        S = block_steps(cfg.total_steps, G // BL)
        counts = [np.bincount(sm[0].reshape(-1, BL)[j] - sm[0].reshape(-1, BL)[j].min()) for j in range(G // BL)]
        for j, c in enumerate(counts):
            want = [BL // S[j] + (i < BL % S[j]) for i in range(min(S[j], BL))]
            np.testing.assert_array_equal(c, want)


def test_threshold_commits_several_per_step_and_is_inclusive():
    cfg, ro, capture = run_toy(family="llada", remasking="threshold", threshold=0.5)
    sm = np.asarray(ro.step_map)
    assert any(np.bincount(sm[r]).max() > 1 for r in range(3))  # the rule was really exercised
    assert np.all(np.asarray(ro.num_steps) < G)


def test_dream_schedule_table_and_forced_first_token():
    S = block_steps(10, 4)
    np.testing.assert_array_equal(S, [3, 3, 2, 2])
    tab = dream_fraction_table(S)
    for j, s in enumerate(S):
        t = np.linspace(1.0, 1e-3, s + 1)
        np.testing.assert_allclose(tab[j, :s], 1 - t[1:] / t[:-1], rtol=1e-6)
        assert np.all(tab[j, s:] == 0)
    _, ro, _ = run_toy(family="dream", steps=16, early_stop=False)
    sm = np.asarray(ro.step_map).reshape(3, -1, BL)
    # The first slot of every block is the block's first (forced) step, alone.
    assert np.all(sm[..., 0] == sm.min(-1))
    assert np.all((sm == sm[..., :1]).sum(-1) == 1)


def test_dream_early_stop_per_row():
    # A PAD-loving row 2 (its logits make PAD the argmax) stops after its first block; the others go on.
    capture = []
    base = toy_forward(capture)

    def fwd(params, tokens, positions, info, cache, write, start, length):
        logits, cache = base(params, tokens, positions, info, cache, write, start, length)
        return logits.at[2, :, PAD].add(100.0), cache

    cfg = FullSamplerConfig(gen_length=G, mask_id=MASK, pad_id=PAD, eos_id=EOS, block_size=BL, temperature=0.0,
                            family="dream", steps=8)
    ro = make_full_sampler(fwd, None, cfg, vocab_size=V)(jnp.float32(1.0), PROMPTS, VALID)
    tok, sm = np.asarray(ro.tokens), np.asarray(ro.step_map)
    assert np.all(tok[2] == PAD)
    first_block_steps = sm[2, :BL].max()
    np.testing.assert_array_equal(sm[2, BL:], first_block_steps + 1)  # one extra trace step for the fill
    assert ro.num_steps[2] == first_block_steps + 1 and ro.lengths[2] == BL
    assert np.all(sm[:2] > 0) and np.all(np.asarray(ro.num_steps)[:2] == 8)  # the other rows are unaffected


def _confident_rows(rows, **kw):
    """A toy rollout where ``rows`` are certain (token 5 everywhere): their blocks fill at the first step."""
    base = toy_forward([])

    def fwd(params, tokens, positions, info, cache, write, start, length):
        logits, cache = base(params, tokens, positions, info, cache, write, start, length)
        return logits.at[jnp.asarray(rows), :, 5].add(100.0), cache

    cfg = FullSamplerConfig(**{**dict(gen_length=G, mask_id=MASK, pad_id=PAD, block_size=BL, temperature=0.0,
                                      family="llada", remasking="threshold", threshold=0.9), **kw})
    ro = make_full_sampler(fwd, None, cfg, vocab_size=V)(jnp.float32(1.0), PROMPTS, VALID)
    return np.asarray(ro.step_map).reshape(3, -1, BL), np.asarray(ro.num_steps)


def test_reference_step_counter_is_shared_by_the_batch():
    nb = G // BL
    sm, n = _confident_rows([2])
    np.testing.assert_array_equal(sm[2], np.arange(1, nb + 1)[:, None] * np.ones(BL, int))  # per row: no gaps
    assert n[2] == nb and np.all(n[:2] > nb)
    sm, n = _confident_rows([2], compat="reference")
    assert np.all(n == n[0])  # every row consumed an id at every step of the batch
    for j in range(nb):
        # Row 2 commits its block at the block's first step, whose id the other rows share ...
        assert np.all(sm[2, j] == sm[:2, j].min())
        if j:  # ... and the block starts one id after the batch's last step of the block before
            assert sm[2, j, 0] == sm[:, j - 1].max() + 1
    assert sm[2, -1, 0] < n[2] and sm[:2].max() == n[0]


def test_reference_llada_makes_a_second_call_when_the_first_fills_the_block():
    nb = G // BL
    sm, n = _confident_rows([0, 1, 2])
    np.testing.assert_array_equal(sm[:, :, 0], np.broadcast_to(np.arange(1, nb + 1), (3, nb)))
    sm, n = _confident_rows([0, 1, 2], compat="reference")
    # The second, empty call of each block consumes an id: blocks get ids 1, 3, 5, ...
    np.testing.assert_array_equal(sm, np.broadcast_to((2 * np.arange(nb) + 1)[None, :, None], sm.shape))
    np.testing.assert_array_equal(n, 2 * nb)
    sm, n = _confident_rows([0, 1, 2], family="dream", compat="reference", early_stop=False)
    # Dream's loop tests for masks before it records a step: no skipped id (forced first token, then the rest).
    np.testing.assert_array_equal(sm[:, :, 0], np.broadcast_to(2 * np.arange(nb) + 1, (3, nb)))
    rest = np.broadcast_to((2 * np.arange(nb) + 2)[None, :, None], (3, nb, BL - 1))
    np.testing.assert_array_equal(sm[:, :, 1:], rest)
    np.testing.assert_array_equal(n, 2 * nb)


def test_completion_length_is_first_eos():
    capture = []
    base = toy_forward(capture)

    def fwd(params, tokens, positions, info, cache, write, start, length):
        logits, cache = base(params, tokens, positions, info, cache, write, start, length)
        pos = jnp.take(positions, start + jnp.arange(length), axis=1)
        return jnp.where((pos == 9)[..., None] & (jnp.arange(V) == EOS), 100.0, logits), cache

    cfg = FullSamplerConfig(gen_length=G, mask_id=MASK, pad_id=PAD, eos_id=EOS, block_size=BL, temperature=0.0)
    ro = make_full_sampler(fwd, None, cfg, vocab_size=V)(jnp.float32(1.0), PROMPTS, VALID)
    real = VALID.sum(1)
    np.testing.assert_array_equal(np.asarray(ro.lengths), 9 - real + 1)  # position 9 holds the EOS


def test_config_and_prompt_validation():
    with pytest.raises(ValueError, match="steps"):
        FullSamplerConfig(gen_length=16, mask_id=1, pad_id=0, block_size=4, steps=3)
    with pytest.raises(ValueError, match="multiple"):
        FullSamplerConfig(gen_length=10, mask_id=1, pad_id=0, block_size=4)
    with pytest.raises(ValueError, match="remasking"):
        FullSamplerConfig(gen_length=16, mask_id=1, pad_id=0, block_size=4, remasking="low_confidence_dynamic")
    cfg = FullSamplerConfig(gen_length=16, mask_id=MASK, pad_id=PAD, block_size=4, temperature=0.0)
    fn = make_full_sampler(toy_forward([]), None, cfg, vocab_size=V)
    with pytest.raises(ValueError, match="suffix"):
        fn(jnp.float32(1.0), PROMPTS, ~VALID)
    with pytest.raises(ValueError, match="rng"):
        make_full_sampler(toy_forward([]), None, FullSamplerConfig(gen_length=16, mask_id=MASK, pad_id=PAD,
                                                                   block_size=4), vocab_size=V)(1.0, PROMPTS, VALID)


@pytest.mark.parametrize("field, value, match", [
    ("further_horizon", -1, "further_horizon"), ("further_horizon", 1.5, "further_horizon"),
    ("further_horizon", True, "further_horizon"), ("further_horizon", "32", "further_horizon"),
    ("compat", "ref", "compat"), ("compat", None, "compat"), ("use_cache", "yes", "use_cache"),
])
def test_bad_cache_and_compat_settings_name_the_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        FullSamplerConfig(**{**dict(gen_length=16, mask_id=1, pad_id=0, block_size=4, use_cache=True), field: value})


def test_cache_options_are_refused_for_block_models_and_checked_for_full_attention():
    from tracerl_jax.families import get_family
    for field, value in (("use_cache", True), ("further_horizon", 32)):
        with pytest.raises(ValueError, match=rf"rollout\.{field}={value}.*full-attention"):
            get_family("sdar").check_sampler_section({field: value}, "rollout")
    tok = type("Tok", (), dict(mask_id=MASK, pad_id=PAD, eos_id=EOS))()
    with pytest.raises(ValueError, match=r"rollout: further_horizon must be None or an integer >= 0, got -4"):
        get_family("llada").sampler_config(dict(use_cache=True, further_horizon=-4), tok, block_size=4,
                                           gen_length=16, name="rollout")


# ----------------------------------------------------------------- tiny real model

CFG = ModelConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1,
                  head_dim=16, rope_theta=10000.0, max_position_embeddings=128, mask_token_id=31, pad_token_id=0,
                  eos_token_id=1, model_type="llada")
P2 = np.array([[0, 0, 0, 5, 6, 7], [8, 9, 10, 11, 12, 13], [0, 0, 0, 0, 0, 14]], np.int32)


def model(family):
    graphdef, params = split_model(init_model(CFG.replace(model_type=family), seed=3))
    return graphdef, jax.tree.map(lambda x: x * 2.0 if x.ndim == 2 else x, params)  # sharper distributions


def sampler(graphdef, family, **kw):
    base = dict(gen_length=12, mask_id=31, pad_id=0, eos_id=1, family=family, block_size=4, steps=6)
    base.update(kw)
    return make_full_sampler(full_sampler_forward_fn(graphdef), cache_init_fn(CFG), FullSamplerConfig(**base),
                             vocab_size=32)


def test_rows_are_independent_of_batch_and_reproducible():
    graphdef, params = model("dream")  # shifted logits: the block's first token reads the slot before it
    fn = sampler(graphdef, "dream", temperature=1.0)
    keys = jax.random.split(jax.random.key(5), 3)
    batched = fn(params, P2, P2 != 0, row_keys=keys)
    again = fn(params, P2, P2 != 0, row_keys=keys)
    for a, b in zip(batched, again):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The same rows in another order and with more padding: left padding is invisible.
    perm = np.array([2, 0, 1])
    wide = np.concatenate([np.zeros((3, 2), np.int32), P2[perm]], axis=1)
    other = fn(params, wide, wide != 0, row_keys=keys[perm])
    for a, b in zip(batched, other):
        np.testing.assert_allclose(np.asarray(a)[perm], np.asarray(b), atol=1e-5)


def _canvas_inputs():
    valid = np.concatenate([P2 != 0, np.ones((3, 12), bool)], 1)
    pos = np.where(valid, np.cumsum(valid, 1) - 1, 0).astype(np.int32)
    return jnp.asarray(valid), jnp.asarray(pos)


def test_greedy_cached_equals_uncached_with_one_step_per_block():
    """Greedy tokens are the model's argmax in their context; with one step per block every step is a
    block's first (full-canvas) step, so the prefix cache changes nothing."""
    graphdef, params = model("llada")
    a = sampler(graphdef, "llada", temperature=0.0, steps=3)(params, P2, P2 != 0)
    b = sampler(graphdef, "llada", temperature=0.0, steps=3, use_cache=True, further_horizon=2)(params, P2, P2 != 0)
    for x, y in zip(a, b):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5)
    assert np.all(np.asarray(a.step_map) > 0)
    # The tokens committed at the last step are the argmax of the model on the canvas before that step.
    canvas = np.concatenate([P2, np.asarray(a.tokens)], axis=1)
    last = np.asarray(a.step_map) == np.asarray(a.num_steps)[:, None]
    pre = np.where(np.concatenate([np.zeros_like(P2, bool), last], 1), 31, canvas)
    valid, pos = _canvas_inputs()
    fwd = jax.jit(full_sampler_forward_fn(graphdef), static_argnums=(5, 7))
    logits, _ = fwd(params, jnp.asarray(pre), pos, full_info(valid), None, False, 6, 12)
    z = np.array(logits)
    z[..., 31] = -np.inf
    np.testing.assert_array_equal(z.argmax(-1)[last], np.asarray(a.tokens)[last])


def test_prefix_cache_window_matches_full_pass_on_the_same_canvas():
    """With the canvas unchanged since the block's first step the cached prefix is exact, so a window
    covering the rest of the canvas gives the full-pass logits; a short horizon changes them."""
    graphdef, params = model("dream")
    fwd = jax.jit(full_sampler_forward_fn(graphdef), static_argnums=(5, 7))
    rng = np.random.default_rng(0)
    canvas = jnp.asarray(np.concatenate([P2, np.where(rng.random((3, 12)) < 0.5, 31, rng.integers(2, 30, (3, 12)))], 1))
    valid, pos = _canvas_inputs()
    s = 6 + 4  # second block: the window is [10, 18), the prefix [0, 10) holds the first block
    want = fwd(params, canvas, pos, full_info(valid), None, False, s, 4)[0]
    first, cache = prefix_pass(fwd, cache_init_fn(CFG), params, canvas, pos, valid, s, 4)
    np.testing.assert_allclose(first, want, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(cache.info.valid), np.asarray(valid) & (np.arange(18) < s))
    # Dream reads the window's first slot from its own output (§2.4); the others match the full pass.
    got = window_pass(fwd, params, canvas, pos, valid, cache, s, 4, 8, 0, None)
    np.testing.assert_allclose(got[:, 1:], want[:, 1:], atol=1e-5)
    padded = window_pass(fwd, params, canvas, pos, valid, cache, s, 4, 12, 4, None)  # 4 invisible slots past T
    np.testing.assert_allclose(padded, got, atol=1e-5)
    short = window_pass(fwd, params, canvas, pos, valid, cache, s, 4, 8, 0, 1)
    assert np.abs(np.asarray(short) - np.asarray(want))[:, 1:].max() > 1e-3


def test_window_plan_shapes():
    cfg = lambda **kw: FullSamplerConfig(gen_length=512, mask_id=1, pad_id=0, block_size=32, use_cache=True, **kw)
    plan = cfg().window_plan(64)  # 16 blocks in four runs of four; the window shrinks from 512 to 32 slots
    assert plan.lengths == (512, 384, 256, 128) and plan.bucket == tuple(j // 4 for j in range(16))
    assert plan.prefixes == (64 + 96, 64 + 224, 64 + 352, 64 + 480)  # each run's last block start
    for j in range(16):
        k = plan.bucket[j]
        assert plan.lengths[k] >= 512 - 32 * j and plan.prefixes[k] >= 64 + 32 * j
        assert 64 + 32 * j + plan.lengths[k] <= 64 + 512 + plan.pad
    assert plan.pad == 96  # the last block: 32 slots of canvas, 96 invisible
    plan = cfg(further_horizon=128).window_plan(64)
    assert plan.lengths == (160, 160, 160, 128) and plan.pad == 96 and plan.prefixes[-1] == 64 + 480
    assert cfg(further_horizon=0).window_plan(8).lengths == (32,) * 4 and cfg(further_horizon=0).window_plan(8).pad == 0
    assert cfg(further_horizon=10_000).window_plan(8).lengths == (512, 384, 256, 128)
    small = FullSamplerConfig(gen_length=8, mask_id=1, pad_id=0, block_size=4, use_cache=True).window_plan(3)
    assert small == ((8, 4), (3, 7), (0, 1), 0)  # no more blocks than shapes: every window exact


# ------------------------------------------------ the §2.2 rule, emulated without a cache

EMU_G, EMU_BL = 24, 4


def emulated_prefix_cache(graphdef, further_horizon):
    """A cache-free statement of §2.2 for the sampler's ``forward_fn`` protocol.

    The "cache" only remembers the canvas of the block's first (full) pass and the block start ``s``
    (in its cursor field, which the sampler never reads; its K/V buffers are dummies).
    A later step runs one forward over ``[first-pass canvas | current canvas]`` (2T slots) under a
    dense mask: the first copy attends to itself exactly as the first pass did, so its K/V at every
    layer are the first pass's; the second copy attends to the first copy's ``[0, s)`` (the stale
    prefix) and to its own ``[s, min(s + b + h, T))``. The block's logits are the second copy's,
    shifted inside the window for Dream. Nothing of the sampler's windows, buckets or padding is used.
    """
    base = full_sampler_forward_fn(graphdef)
    shift = int(base.model_config.logits_shift)

    def snapshot(B, T, s, tokens, positions, valid):
        dummy_k, dummy_v = jnp.zeros((B, 1, 1, T)), jnp.zeros((B, 1, T, 1))
        return KVCache((dummy_k,), (dummy_v,), full_info(valid), (jnp.asarray(s, jnp.int32), tokens, positions, valid))

    def init_cache(B, T):
        z = jnp.zeros((B, T), jnp.int32)
        return snapshot(B, T, 0, z, z, jnp.zeros((B, T), bool))

    def fwd(params, tokens, positions, info, cache, write, start, length):
        if cache is None:
            return base(params, tokens, positions, info, None, False, start, length)
        if write:  # the block's first step
            logits, _ = base(params, tokens, positions, info, None, False, start, length)
            return logits, snapshot(*tokens.shape, start, tokens, positions, info.valid)
        s, first, pos, valid = cache.length
        B, T = first.shape
        # Only the block changes between a block's steps: the current canvas is the first one with it.
        cur = lax.dynamic_update_slice_in_dim(first, lax.dynamic_slice_in_dim(tokens, start, length, 1), s, 1)
        slot = jnp.arange(T)
        end = T if further_horizon is None else jnp.minimum(s + length + further_horizon, T)
        rows_first = jnp.concatenate([jnp.broadcast_to(valid[:, None, :], (B, T, T)), jnp.zeros((B, T, T), bool)], -1)
        keys_prefix = valid & (slot < s)[None]
        keys_window = valid & ((slot >= s) & (slot < end))[None]
        rows_cur = jnp.broadcast_to(jnp.concatenate([keys_prefix, keys_window], -1)[:, None, :], (B, T, 2 * T))
        mask = jnp.concatenate([rows_first, rows_cur], 1)
        dead = ~jnp.any(mask, -1, keepdims=True)
        mask = mask | (dead & jnp.eye(2 * T, dtype=bool)[None])
        out = forward(graphdef, params, jnp.concatenate([first, cur], 1), jnp.concatenate([pos, pos], 1), None,
                      dense_mask=mask[:, None])
        rows = T + s + jnp.maximum(jnp.arange(length) - shift, 0)  # Dream: shifted inside the window
        return jnp.take(out.logits, rows, axis=1), cache

    return fwd, init_cache


EMU_CASES = [
    dict(family="llada", further_horizon=None),
    dict(family="llada", further_horizon=2),
    dict(family="llada", further_horizon=0, compat="reference"),
    dict(family="llada", further_horizon=None, remasking="threshold", threshold=0.3),
    dict(family="dream", further_horizon=None),
    dict(family="dream", further_horizon=2, compat="reference"),
    dict(family="dream", further_horizon=6, temperature=1.0, top_p=0.9),
]


@pytest.mark.parametrize("kw", EMU_CASES, ids=lambda kw: "-".join(f"{v}" for v in kw.values()))
def test_prefix_cache_equals_cache_free_emulation(kw):
    """Cached rollouts (prefix ``[0, s)`` from the block's first pass, finished blocks included; window
    ``[s, min(e + h, T))``; 6 blocks, so ``h=None`` uses three window shapes with invisible slots past
    the canvas) equal the cache-free emulation of the rule: same tokens and step maps, log-probs to
    float rounding. A 2-layer model, so stale K/V differ from fresh ones past the first layer."""
    family = kw["family"]
    graphdef, params = split_model(init_model(CFG.replace(model_type=family, num_layers=2), seed=3))
    params = jax.tree.map(lambda x: x * 2.0 if x.ndim == 2 else x, params)
    base = dict(gen_length=EMU_G, mask_id=31, pad_id=0, eos_id=1, block_size=EMU_BL, steps=12, temperature=0.0,
                early_stop=False, use_cache=True)
    base.update(kw)
    cfg = FullSamplerConfig(**base)
    keys = jax.random.split(jax.random.key(11), 3)
    got = make_full_sampler(full_sampler_forward_fn(graphdef), cache_init_fn(CFG.replace(num_layers=2)), cfg,
                            vocab_size=32)(params, P2, P2 != 0, row_keys=keys)
    emu_fwd, emu_init = emulated_prefix_cache(graphdef, cfg.further_horizon)
    want = make_full_sampler(emu_fwd, emu_init, cfg, vocab_size=32)(params, P2, P2 != 0, row_keys=keys)
    np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(want.tokens))
    np.testing.assert_array_equal(np.asarray(got.step_map), np.asarray(want.step_map))
    np.testing.assert_array_equal(np.asarray(got.num_steps), np.asarray(want.num_steps))
    np.testing.assert_allclose(np.asarray(got.logprobs), np.asarray(want.logprobs), atol=1e-4)
    # The rule is not the cache-free sampler: the stale prefix shows in the log-probs.
    plain = make_full_sampler(full_sampler_forward_fn(graphdef), None,
                              dataclasses.replace(cfg, use_cache=False, further_horizon=None),
                              vocab_size=32)(params, P2, P2 != 0, row_keys=keys)
    assert np.abs(np.asarray(plain.logprobs) - np.asarray(got.logprobs)).max() > 1e-3


def test_prefix_cache_with_scanned_layers_matches_unrolled():
    """The windows read a prefix of the cache in either layout (stacked buffers with scan_layers)."""
    from tracerl_jax.models import relayout_layers

    mcfg = CFG.replace(model_type="dream", num_layers=2)
    unrolled = init_model(mcfg, seed=5)
    scanned = relayout_layers(unrolled, True)
    cfg = FullSamplerConfig(gen_length=EMU_G, mask_id=31, pad_id=0, block_size=EMU_BL, steps=12, temperature=0.0,
                            family="dream", early_stop=False, use_cache=True)
    outs = []
    for m in (unrolled, scanned):
        graphdef, params = split_model(m)
        outs.append(make_full_sampler(full_sampler_forward_fn(graphdef), cache_init_fn(m.config), cfg,
                                      vocab_size=32)(params, P2, P2 != 0))
    np.testing.assert_array_equal(np.asarray(outs[0].tokens), np.asarray(outs[1].tokens))
    np.testing.assert_array_equal(np.asarray(outs[0].step_map), np.asarray(outs[1].step_map))
    np.testing.assert_allclose(np.asarray(outs[0].logprobs), np.asarray(outs[1].logprobs), atol=1e-5)
