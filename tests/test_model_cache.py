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
