"""Block sampler semantics on a deterministic toy forward function.

The toy forward reads only the row's own tokens and positions, so it isolates
the sampler logic (quotas, strategies, stopping, step ids, batching) from the
model. Every denoising call is captured with a host callback and replayed
against an independent NumPy statement of the rules of docs/algorithms.md §1.3-1.8.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tracerl_jax import kv_cache
from tracerl_jax.sampling import BlockSamplerConfig, make_block_sampler, step_quotas

V, MASK, EOS, PAD = 24, 23, 22, 21


def toy_forward(capture=None):
    table = jax.random.normal(jax.random.key(7), (512, V)) * 3.0

    def fwd(params, tokens, positions, info, cache, write):
        # Depends on position and on the current block contents (so commits change later logits);
        # a fused call ([final block | noised block]) sums each half on its own, as attention would.
        same = info.noised[:, :, None] == info.noised[:, None, :]
        ctx = jnp.sum(jnp.where(same & (tokens != MASK)[:, None, :], tokens[:, None, :], 0), axis=-1)
        logits = table[(positions * 7 + ctx) % 512] * params
        logits = logits.at[..., MASK].set(-1e9)
        if capture is not None:
            jax.debug.callback(lambda *a: capture.append(tuple(map(np.asarray, a))),
                               tokens, logits, positions, info.noised)
        if write:
            z = jnp.zeros((1,) + tokens.shape + (1, 1))
            cache = kv_cache.write(cache, z, z, info)
        return logits, cache

    return fwd


def init_cache(B, T):
    return kv_cache.init(1, B, T, 1, 1)


def make(capture=None, **kw):
    base = dict(gen_length=16, mask_id=MASK, eos_id=EOS, pad_id=PAD, block_size=4, steps_per_block=4,
                strategy="low_confidence_static", temperature=0.0)
    base.update(kw)
    cfg = BlockSamplerConfig(**base)
    return cfg, make_block_sampler(toy_forward(capture), init_cache, cfg, vocab_size=V)


PROMPTS = np.array([[PAD, PAD, 1, 2, 3], [4, 5, 6, 7, 8], [PAD, PAD, PAD, PAD, 9]], np.int32)
VALID = PROMPTS != PAD


def expected_commit(strategy, conf, masked, quota, tau):
    """Independent NumPy statement of §1.5 with the Q-S1 fix (k = min(quota, #masked))."""
    k = min(quota, int(masked.sum()))
    idx = np.flatnonzero(masked)
    if strategy == "sequential":
        chosen = idx[:k]
    else:
        order = sorted(idx, key=lambda i: (-conf[i], i))
        chosen = order[:k]
        if strategy == "low_confidence_dynamic":
            high = [i for i in idx if conf[i] > tau]
            if len(high) >= k:
                chosen = high
    out = np.zeros_like(masked)
    out[list(chosen)] = True
    return out


def denoising_view(call, b):
    """A captured call as the denoising step it is: a fused call keeps only its noised half."""
    tokens, logits, pos, noised = call
    if noised.shape[1] == 2 * b and noised[:, b:].all() and not noised[:, :b].any():
        return tokens[:, b:], logits[:, b:], pos[:, b:], noised[:, b:]
    return call


@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize("strategy,steps", [("sequential", 4), ("low_confidence_static", 3),
                                            ("low_confidence_static", 4), ("low_confidence_dynamic", 4),
                                            ("low_confidence_dynamic", 2)])
def test_replay_matches_rules(strategy, steps, fuse):
    capture = []
    cfg, sampler = make(capture, strategy=strategy, steps_per_block=steps, threshold=0.5, ignore_eos=True,
                        fuse_cache_write=fuse)
    r = sampler(jnp.float32(1.0), PROMPTS, VALID)
    jax.block_until_ready(r)
    capture[:] = [denoising_view(c, cfg.block_size) for c in capture]
    quotas = step_quotas(cfg.block_size, steps)
    checked = 0
    for row in range(PROMPTS.shape[0]):
        s = 0
        for i in range(len(capture) - 1):
            tokens, logits, pos, noised = (a[row] for a in capture[i])
            if not noised.all():
                continue  # prefill or saving pass
            masked = tokens == MASK
            if not masked.any():
                continue  # row idle in this batched call
            prev_pos = capture[i - 1][2][row]
            if i == 0 or not np.array_equal(prev_pos, pos) or not capture[i - 1][3][row].all():
                s = 0  # first denoising call of this block
            nxt_tokens, _, nxt_pos, _ = (a[row] for a in capture[i + 1])
            if np.array_equal(nxt_pos, pos):
                x0 = np.argmax(logits, -1)
                conf = np.asarray(jax.nn.softmax(logits, -1))[np.arange(len(x0)), x0]
                want = expected_commit(strategy, conf, masked, int(quotas[s]), 0.5)
                np.testing.assert_array_equal((nxt_tokens != MASK) & masked, want)
                np.testing.assert_array_equal(nxt_tokens[want], x0[want])
                # committed (and prompt) tokens never change
                np.testing.assert_array_equal(nxt_tokens[~masked], tokens[~masked])
                checked += 1
            s += 1
    assert checked >= 3 * cfg.gen_length // cfg.block_size
    # Static/sequential: each full block commits exactly the quota per step.
    if strategy != "low_confidence_dynamic":
        sm = np.asarray(r.step_map)
        b = cfg.block_size
        for row in range(sm.shape[0]):
            for blk in range(cfg.gen_length // b):
                ids = sm[row, blk * b:(blk + 1) * b]
                counts = [int((ids == u).sum()) for u in np.unique(ids)]
                np.testing.assert_array_equal(counts, [q for q in quotas if q > 0])


@pytest.mark.parametrize("fuse", [True, False])
def test_cache_write_forwards(fuse):
    """Forward calls: prefill, denoising steps, and a finished block's K/V written once, before the
    next block reads the cache: in its own clean forward, or fused into the next block's first step."""
    capture = []
    cfg, sampler = make(capture, strategy="low_confidence_static", steps_per_block=2, ignore_eos=True,
                        fuse_cache_write=fuse)
    r = sampler(jnp.float32(1.0), PROMPTS, VALID)
    jax.block_until_ready(r)
    b, nblk = cfg.block_size, cfg.gen_length // cfg.block_size
    tokens = np.asarray(r.tokens)
    kinds = []
    for tok, _, pos, noised in capture:
        if not noised.any():
            kinds.append("prefill" if not kinds else "save")
        elif noised.all():
            kinds.append("denoise")
        else:
            kinds.append("fused")
            assert tok.shape[1] == 2 * b and not noised[:, :b].any() and noised[:, b:].all()
            # the clean half is the previous block, final, at its own positions (block 0 has none:
            # its clean half is invalid padding, dropped again)
            j = sum(k in ("denoise", "fused") for k in kinds) // cfg.steps_per_block - 1
            if j >= 0:
                np.testing.assert_array_equal(tok[:, :b], tokens[:, j * b:(j + 1) * b])
                np.testing.assert_array_equal(pos[:, :b] + 1, pos[:, b:2 * b] - b + 1)
    steps = nblk * cfg.steps_per_block
    assert kinds[0] == "prefill"
    if fuse:
        assert kinds.count("save") == 0 and kinds.count("fused") == nblk  # every block's first step
        assert kinds.count("denoise") + kinds.count("fused") == steps
        assert len(kinds) == 1 + steps
    else:
        assert kinds.count("fused") == 0 and kinds.count("save") == nblk - 1
        assert kinds.count("denoise") == steps and len(kinds) == 1 + steps + nblk - 1


@pytest.mark.parametrize("strategy", ["sequential", "low_confidence_static", "low_confidence_dynamic"])
def test_step_ids_global_increasing_no_gaps(strategy):
    cfg, sampler = make(strategy=strategy, temperature=1.0, steps_per_block=3, threshold=0.3)
    r = sampler(jnp.float32(1.0), PROMPTS, VALID, rng=jax.random.key(3))
    sm, ln, tok = map(np.asarray, (r.step_map, r.lengths, r.tokens))
    b = cfg.block_size
    for row in range(sm.shape[0]):
        run = sm[row][sm[row] > 0]
        assert run.min() == 1
        np.testing.assert_array_equal(np.unique(run), np.arange(1, r.num_steps[row] + 1))
        nblk = len(run) // b
        assert len(run) % b == 0
        for j in range(nblk - 1):
            assert run[j * b:(j + 1) * b].max() < run[(j + 1) * b:(j + 2) * b].min()
        # completion ends at EOS or at the budget
        L = ln[row]
        assert L == cfg.gen_length or tok[row, L - 1] == EOS
        assert (tok[row, :L - 1] != EOS).all()
        # positions past the final block are padding with no step id
        assert (tok[row, nblk * b:] == PAD).all() and (sm[row, nblk * b:] == 0).all()


def test_greedy_deterministic_and_batch_equals_single():
    _, sampler = make(strategy="low_confidence_dynamic", threshold=0.6)
    a = sampler(jnp.float32(1.0), PROMPTS, VALID)
    b = sampler(jnp.float32(1.0), PROMPTS, VALID)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    for row in range(PROMPTS.shape[0]):
        p = PROMPTS[row:row + 1][:, VALID[row].argmax():]
        single = sampler(jnp.float32(1.0), p, p != PAD)
        for x, y in zip(a, single):
            np.testing.assert_allclose(np.asarray(x)[row], np.asarray(y)[0], rtol=1e-6, atol=1e-6)


def test_sampling_batch_equals_single_with_row_keys():
    _, sampler = make(strategy="low_confidence_static", temperature=1.0, top_k=5, top_p=0.9)
    keys = jax.random.split(jax.random.key(11), PROMPTS.shape[0])
    a = sampler(jnp.float32(1.0), PROMPTS, VALID, row_keys=keys)
    for row in range(PROMPTS.shape[0]):
        single = sampler(jnp.float32(1.0), PROMPTS[row:row + 1], VALID[row:row + 1], row_keys=keys[row:row + 1])
        np.testing.assert_array_equal(np.asarray(a.tokens)[row], np.asarray(single.tokens)[0])
        np.testing.assert_array_equal(np.asarray(a.step_map)[row], np.asarray(single.step_map)[0])


def test_budget_and_eos_at_cap():
    cfg, sampler = make(strategy="sequential", max_new_tokens=6, ignore_eos=True)
    r = sampler(jnp.float32(1.0), PROMPTS, VALID)
    np.testing.assert_array_equal(np.asarray(r.lengths), 6)
    # the final block (positions 4..7) is decoded whole; 6,7 are context only
    sm = np.asarray(r.step_map)
    assert (sm[:, :8] > 0).all() and (sm[:, 8:] == 0).all()


def test_reference_alignment_prompt_tail():
    cfg, sampler = make(strategy="sequential", compat="reference", ignore_eos=True)
    r = sampler(jnp.float32(1.0), PROMPTS, VALID)
    sm = np.asarray(r.step_map)
    # Row 0 has P=3: tail 3 shares block 0 with one response token (step 1); row 1 P=5: tail 1.
    assert sm[0, 0] == 1 and sm[0, 1] == 2
    assert list(sm[1, :3]) == [1, 2, 3] and sm[1, 3] == 4
    assert r.lengths.tolist() == [16, 16, 16]


def test_bad_input():
    with pytest.raises(ValueError, match="strategy"):
        make(strategy="low_confidence")
    with pytest.raises(ValueError, match="multiple of block_size"):
        make(gen_length=10)
    with pytest.raises(ValueError, match="mask_id"):
        cfg = BlockSamplerConfig(gen_length=8, mask_id=V + 3, eos_id=EOS, pad_id=PAD)
        make_block_sampler(toy_forward(), init_cache, cfg, vocab_size=V)(jnp.float32(1), PROMPTS, VALID)
    cfg = BlockSamplerConfig(gen_length=8, mask_id=MASK, eos_id=EOS, pad_id=PAD, temperature=0.0)
    s = make_block_sampler(toy_forward(), init_cache, cfg, vocab_size=V, max_positions=10)
    with pytest.raises(ValueError, match="max positions"):
        s(jnp.float32(1), PROMPTS, VALID)
    s = make_block_sampler(toy_forward(), init_cache, cfg, vocab_size=V)
    with pytest.raises(ValueError, match="prompt_valid shape"):
        s(jnp.float32(1), PROMPTS, VALID[:, 1:])
    with pytest.raises(ValueError, match="left-padded"):
        s(jnp.float32(1), PROMPTS, VALID[:, ::-1])
    with pytest.raises(ValueError, match=r"\[B, Lp\]"):
        s(jnp.float32(1), PROMPTS[0], VALID[0])
