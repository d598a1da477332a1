"""KV-cache consistency: incremental block-by-block decoding equals one full pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tracerl_jax.attention import MaskInfo, generation_info
from tracerl_jax.models import forward, get_preset, init_model, make_cache, split_model

B, LP, BLOCK, NBLOCKS = 3, 8, 4, 3
T = LP + BLOCK * NBLOCKS
TOL = 1e-5


@pytest.fixture(scope="module")
def setup():
    cfg = get_preset("tiny", vocab_size=64, mask_token_id=63)
    graphdef, params = split_model(init_model(cfg, seed=3))
    rng = np.random.default_rng(0)
    tok = rng.integers(1, 63, (B, T)).astype(np.int32)
    pads = [0, 3, 6]  # left padding of the prompt
    valid = np.ones((B, T), bool)
    for b, n in enumerate(pads):
        valid[b, :n] = False
        tok[b, :n] = 0
    pos = np.maximum(np.cumsum(valid, 1) - 1, 0).astype(np.int32)
    info = generation_info(jnp.asarray(valid), BLOCK, grid_start=LP)
    fwd = jax.jit(forward, static_argnums=0, static_argnames="write_cache")
    return cfg, graphdef, params, jnp.asarray(tok), jnp.asarray(pos), info, fwd


def _slice(info, a, b):
    return MaskInfo(*(x[:, a:b] for x in info))


def test_incremental_blocks_equal_full_pass(setup):
    cfg, graphdef, params, tok, pos, info, fwd = setup
    full = fwd(graphdef, params, tok, pos, info).logits

    cache = make_cache(cfg, B, T)
    out = fwd(graphdef, params, tok[:, :LP], pos[:, :LP], _slice(info, 0, LP), cache, write_cache=True)
    pieces, cache = [out.logits], out.cache
    assert int(cache.length) == LP
    for j in range(NBLOCKS):
        a, b = LP + j * BLOCK, LP + (j + 1) * BLOCK
        out = fwd(graphdef, params, tok[:, a:b], pos[:, a:b], _slice(info, a, b), cache, write_cache=True)
        pieces.append(out.logits)
        cache = out.cache
    assert int(cache.length) == T
    inc = jnp.concatenate(pieces, axis=1)
    np.testing.assert_allclose(np.asarray(inc), np.asarray(full), atol=TOL, rtol=0)


def test_denoising_pass_reads_but_never_writes_cache(setup):
    """A noised block with the cache == the same block after the clean prefix
    in one pass, and the cache comes back untouched (§1.6)."""
    cfg, graphdef, params, tok, pos, info, fwd = setup
    j = 1
    a, b = LP + j * BLOCK, LP + (j + 1) * BLOCK
    cache = fwd(graphdef, params, tok[:, :a], pos[:, :a], _slice(info, 0, a), make_cache(cfg, B, T),
                write_cache=True).cache
    blk = tok[:, a:b].at[:, 1:3].set(cfg.mask_token_id)
    binfo = _slice(info, a, b)._replace(noised=jnp.ones((B, BLOCK), bool))
    out = fwd(graphdef, params, blk, pos[:, a:b], binfo, cache, write_cache=False)
    for x, y in zip(jax.tree.leaves(out.cache), jax.tree.leaves(cache)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

    seq = jnp.concatenate([tok[:, :a], blk], axis=1)
    seq_pos = jnp.concatenate([pos[:, :a], pos[:, a:b]], axis=1)
    seq_info = _slice(info, 0, a).concat(binfo)
    ref = fwd(graphdef, params, seq, seq_pos, seq_info).logits[:, a:]
    np.testing.assert_allclose(np.asarray(out.logits), np.asarray(ref), atol=TOL, rtol=0)


def test_cache_write_fills_only_the_new_slots(setup):
    cfg, graphdef, params, tok, pos, info, fwd = setup
    cache0 = make_cache(cfg, B, T)
    c1 = fwd(graphdef, params, tok[:, :LP], pos[:, :LP], _slice(info, 0, LP), cache0, write_cache=True).cache
    # Untouched slots stay zero and invalid; written slots carry the queries' info, clean.
    assert all(np.all(np.asarray(k[..., LP:]) == 0) for k in c1.k)  # keys [B, Hkv, D, T]
    assert all(np.all(np.asarray(v[:, :, LP:]) == 0) for v in c1.v)  # values [B, Hkv, T, D]
    assert not np.any(np.asarray(c1.info.valid[:, LP:]))
    np.testing.assert_array_equal(np.asarray(c1.info.valid[:, :LP]), np.asarray(info.valid[:, :LP]))
    assert not np.any(np.asarray(c1.info.noised))
    assert all(np.abs(np.asarray(k[..., :LP])).max() > 0 for k in c1.k)
    assert all(np.abs(np.asarray(v[:, :, :LP])).max() > 0 for v in c1.v)


def test_truncate_forgets_slots(setup):
    """Writing [block | next] then truncating to the first block == writing the block alone."""
    cfg, graphdef, params, tok, pos, info, fwd = setup
    from tracerl_jax import kv_cache

    c0 = fwd(graphdef, params, tok[:, :LP], pos[:, :LP], _slice(info, 0, LP), make_cache(cfg, B, T),
             write_cache=True).cache
    a, b = LP, LP + 2 * BLOCK
    both = fwd(graphdef, params, tok[:, a:b], pos[:, a:b], _slice(info, a, b), c0, write_cache=True).cache
    kept = kv_cache.truncate(both, LP + BLOCK)
    one = fwd(graphdef, params, tok[:, a:a + BLOCK], pos[:, a:a + BLOCK], _slice(info, a, a + BLOCK), c0,
              write_cache=True).cache
    assert int(kept.length) == LP + BLOCK
    for x, y in zip(kept.info, one.info):
        np.testing.assert_array_equal(np.asarray(x)[:, :LP + BLOCK], np.asarray(y)[:, :LP + BLOCK])
    assert not np.asarray(kept.info.valid)[:, LP + BLOCK:].any()
    for x, y in zip(kept.k + kept.v, one.k + one.v):  # keys [B, Hkv, D, T], values [B, Hkv, T, D]
        xs = np.asarray(x)[..., :LP + BLOCK] if x.shape[-1] == T else np.asarray(x)[:, :, :LP + BLOCK]
        ys = np.asarray(y)[..., :LP + BLOCK] if y.shape[-1] == T else np.asarray(y)[:, :, :LP + BLOCK]
        np.testing.assert_allclose(xs, ys, atol=TOL, rtol=0)
    # A later forward reads the truncated cache exactly as the one-block cache.
    nxt = slice(LP + BLOCK, LP + 2 * BLOCK)
    ni = _slice(info, nxt.start, nxt.stop)
    np.testing.assert_allclose(np.asarray(fwd(graphdef, params, tok[:, nxt], pos[:, nxt], ni, kept).logits),
                               np.asarray(fwd(graphdef, params, tok[:, nxt], pos[:, nxt], ni, one).logits),
                               atol=TOL, rtol=0)


@pytest.mark.parametrize("compat", ["recommended", "reference"])
def test_fused_cache_write_samples_the_same(setup, compat):
    """BlockSamplerConfig.fuse_cache_write computes the unfused sampler's rollout (float rounding aside)."""
    cfg, graphdef, params, *_ = setup
    from tracerl_jax.models import cache_init_fn, sampler_forward_fn
    from tracerl_jax.sampling import BlockSamplerConfig, make_block_sampler

    rng = np.random.default_rng(1)
    prompts = rng.integers(5, 60, (4, 9)).astype(np.int32)
    valid = np.ones_like(prompts, bool)
    for row, n in enumerate([0, 2, 5, 7]):
        valid[row, :n] = False
    outs = []
    for fuse in (False, True):
        # with eos 50 rows stop in different blocks (lengths 16, 16, 2, 1 / 16, 16, 2, 16)
        scfg = BlockSamplerConfig(gen_length=16, mask_id=63, eos_id=50, pad_id=0, block_size=4, steps_per_block=2,
                                  strategy="low_confidence_dynamic", threshold=0.05, temperature=1.0,
                                  compat=compat, fuse_cache_write=fuse)
        sample = make_block_sampler(sampler_forward_fn(graphdef), cache_init_fn(cfg), scfg)
        outs.append(sample(params, prompts, valid, rng=jax.random.key(2)))
    a, b = outs
    assert len(set(np.asarray(a.lengths).tolist())) > 1  # some rows stopped early
    for name in ("tokens", "step_map", "lengths", "num_steps"):
        np.testing.assert_array_equal(np.asarray(getattr(a, name)), np.asarray(getattr(b, name)), err_msg=name)
    np.testing.assert_allclose(np.asarray(a.logprobs), np.asarray(b.logprobs), atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(a.confidences), np.asarray(b.confidences), atol=1e-5, rtol=0)


def test_sampler_forward_logits_from(setup):
    """``logits_from`` projects only the later positions: the same logits as slicing, the same cache."""
    cfg, graphdef, params, tok, pos, info, fwd = setup
    from tracerl_jax.models import sampler_forward_fn

    fn = sampler_forward_fn(graphdef)
    assert fn.supports_logits_from
    c0 = fwd(graphdef, params, tok[:, :LP], pos[:, :LP], _slice(info, 0, LP), make_cache(cfg, B, T),
             write_cache=True).cache
    a, b = LP, LP + 2 * BLOCK
    full, c_full = jax.jit(fn, static_argnums=5)(params, tok[:, a:b], pos[:, a:b], _slice(info, a, b), c0, True)
    part, c_part = jax.jit(fn, static_argnums=(5, 6))(params, tok[:, a:b], pos[:, a:b], _slice(info, a, b), c0,
                                                      True, BLOCK)
    assert part.shape == (B, BLOCK, cfg.vocab_size)
    np.testing.assert_allclose(np.asarray(part), np.asarray(full)[:, BLOCK:], atol=TOL, rtol=0)
    for x, y in zip(jax.tree.leaves(c_full), jax.tree.leaves(c_part)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
