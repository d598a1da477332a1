"""ModelConfig.scan_layers: stacked layer params + lax.scan compute what the unrolled layers compute.

Every comparison moves the same weights between the layouts (a seed also gives the
same weights in both, checked first), so a difference is the scan's, not the init's.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from tracerl_jax import attention as attn
from tracerl_jax import kv_cache
from tracerl_jax.attention import MaskInfo, extended_info, generation_info
from tracerl_jax.models import (
    cache_init_fn,
    forward,
    full_sampler_forward_fn,
    get_preset,
    init_model,
    load_hf_checkpoint,
    make_cache,
    relayout_layers,
    sampler_forward_fn,
    save_hf_checkpoint,
    split_model,
    stack_layer_params,
    unstack_layer_params,
    value_forward,
    value_model_from_policy,
)

V = 64
MASK = 63
B, L0, L1 = 2, 4, 8
ATOL = 1e-6


def _cfg(name="tiny", **kw):
    # Two layers (the preset's): enough for the scan to tell layers apart, and each test
    # compiles the unrolled model too, whose compile time grows with depth.
    return get_preset(name, vocab_size=V, mask_token_id=MASK, **kw)


def _pair(cfg, seed=0):
    """(unrolled, scanned) models with the same weights."""
    unrolled = init_model(cfg, seed=seed)
    # Sharpen the distributions (a random tiny model is nearly uniform, so sampler decisions
    # would hinge on rounding-level differences of the logits).
    g, p = split_model(unrolled)
    unrolled = nnx.merge(g, jax.tree.map(lambda x: x * 3.0 if x.ndim == 2 else x, p))
    return unrolled, relayout_layers(unrolled, True)


@pytest.fixture(scope="module")
def tiny_pair():
    return _pair(_cfg())


def _extended_inputs(seed=0):
    rng = np.random.default_rng(seed)
    tok = jnp.asarray(rng.integers(0, V, (B, L0 + 2 * L1)), jnp.int32)
    pos = jnp.concatenate([jnp.arange(L0 + L1), jnp.arange(L0, L0 + L1)])[None].repeat(B, 0).astype(jnp.int32)
    valid = jnp.ones((B, L0), bool).at[1, 0].set(False)
    return tok, pos, extended_info(valid, L1, 4)


def _close(a, b, atol=ATOL):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol, rtol=0)


# ------------------------------------------------------------------- layout and init


def test_scanned_params_are_stacked_and_seed_gives_same_weights():
    cfg = _cfg()
    g_u, p_u = split_model(init_model(cfg, seed=5))
    g_s, p_s = split_model(init_model(cfg.replace(scan_layers=True), seed=5))
    pure_s = nnx.to_pure_dict(p_s)
    L = cfg.num_layers
    assert pure_s["layers"]["self_attn"]["q_proj"]["kernel"].shape == (L, cfg.hidden_size, cfg.num_heads * cfg.head_dim)
    assert pure_s["layers"]["input_layernorm"]["scale"].shape == (L, cfg.hidden_size)
    stacked = stack_layer_params(nnx.to_pure_dict(p_u))
    for a, b in zip(jax.tree.leaves(stacked), jax.tree.leaves(pure_s)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    back = unstack_layer_params(pure_s)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(nnx.to_pure_dict(p_u))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert relayout_layers(relayout_layers(init_model(cfg), True), False).config == cfg


def test_sharding_rules_shard_the_trailing_dims_of_stacked_params():
    from tracerl_jax.train.sharding import make_mesh, param_specs

    _, p_s = split_model(init_model(_cfg(scan_layers=True)))
    specs = nnx.to_pure_dict(param_specs(p_s, make_mesh(devices=jax.devices()[:1])))
    P = jax.sharding.PartitionSpec
    assert specs["layers"]["self_attn"]["q_proj"]["kernel"] == P(None, "fsdp", "tensor")
    assert specs["layers"]["self_attn"]["o_proj"]["kernel"] == P(None, "tensor", "fsdp")
    assert specs["layers"]["mlp"]["down_proj"]["kernel"] == P(None, "tensor", "fsdp")
    assert specs["layers"]["input_layernorm"]["scale"] == P()


# ------------------------------------------------------------------- forward and grads


@pytest.mark.parametrize("name", ["tiny", "tiny-llada", "tiny-dream"])
def test_forward_training_layout_equal(name):
    unrolled, scanned = _pair(_cfg(name))
    tok, pos, info = _extended_inputs()
    outs = [forward(*split_model(m), tok, pos, info) for m in (unrolled, scanned)]
    _close(outs[0].logits, outs[1].logits)
    _close(outs[0].hidden, outs[1].hidden)


def test_blockwise_attention_in_bf16_traces(tiny_pair):
    # The MaskInfo mask of blockwise attention is closed over by the scan body, and a bf16
    # residual stream must keep the scan carry's dtype. Tracing checks both (the numerics of
    # blockwise vs dense attention are tests/test_blockwise_attention.py's).
    tok, pos, info = _extended_inputs()
    u = tiny_pair[0]
    cfg = u.config.replace(attention_impl="blockwise", attention_q_tile=8, attention_k_tile=8, dtype="bfloat16",
                           scan_layers=True)
    g, p = _with_config(tiny_pair[1], cfg)
    out = jax.eval_shape(lambda p: forward(g, p, tok, pos, info), p)
    assert out.hidden.dtype == jnp.bfloat16 and out.logits.shape == (B, tok.shape[1], V)


def _with_config(model, cfg):
    """(graphdef, params) of ``model``'s weights under ``cfg`` (same shapes)."""
    g, _ = split_model(nnx.eval_shape(lambda: type(model)(cfg, rngs=nnx.Rngs(0))))
    return g, split_model(model)[1]


def _policy_loss(graphdef, params, tok, pos, info, adv):
    logits = forward(graphdef, params, tok, pos, info).logits
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits), tok[..., None], -1)[..., 0]
    return -jnp.mean(logp * adv * info.noised)


def test_gradients_equal():
    """Policy-loss gradients of the scanned layers with remat == the unrolled layers' (no remat)."""
    unrolled, scanned = _pair(_cfg(), seed=1)
    remat = nnx.merge(*_with_config(scanned, scanned.config.replace(remat=True)))
    tok, pos, info = _extended_inputs(1)
    adv = jnp.asarray([[1.0], [-0.5]])
    grad_fn = jax.value_and_grad(_policy_loss, argnums=1)
    (loss_u, gu), (loss_s, gs) = [jax.jit(grad_fn, static_argnums=0)(*split_model(m), tok, pos, info, adv)
                                  for m in (unrolled, remat)]
    _close(loss_u, loss_s)
    gu = stack_layer_params(nnx.to_pure_dict(gu))
    scale = max(float(jnp.abs(x).max()) for x in jax.tree.leaves(gu))
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(gu), jax.tree.leaves(nnx.to_pure_dict(gs))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6 * scale, rtol=0,
                                   err_msg=jax.tree_util.keystr(path))
    # remat=True checkpoints the scan body; remat=False differentiates the same body without it
    # (one program fewer to compile: it differs only by the checkpoint).
    for m, want in ((remat, True), (scanned, False)):
        jaxpr = str(jax.make_jaxpr(grad_fn, static_argnums=0)(*split_model(m), tok, pos, info, adv))
        assert (" checkpoint[" in jaxpr or " remat" in jaxpr) == want and " scan[" in jaxpr


def test_value_model_equal(tiny_pair):
    unrolled, scanned = tiny_pair
    vu, vs = value_model_from_policy(unrolled), value_model_from_policy(scanned)
    assert vs.config.scan_layers and vs.value_head.kernel.shape == (vs.config.hidden_size, 1)
    w = jax.random.normal(jax.random.key(0), (vu.config.hidden_size, 1))
    vu.value_head.kernel[...] = w
    vs.value_head.kernel[...] = w
    tok, pos, info = _extended_inputs()
    _close(value_forward(*split_model(vu), tok, pos, info), value_forward(*split_model(vs), tok, pos, info))
    assert isinstance(relayout_layers(vu, True), type(vu))


# ------------------------------------------------------------------- KV cache


def _gen_inputs():
    T = L0 + 2 * 4
    rng = np.random.default_rng(2)
    tok = jnp.asarray(rng.integers(1, MASK, (B, T)), jnp.int32)
    valid = jnp.ones((B, T), bool).at[1, :2].set(False)
    pos = jnp.maximum(jnp.cumsum(valid, 1) - 1, 0).astype(jnp.int32)
    return tok, pos, generation_info(valid, 4, grid_start=L0), T


def _sl(info, a, b):
    return MaskInfo(*(x[:, a:b] for x in info))


def test_kv_cache_functions_agree_across_layouts():
    L, T, Q = 3, 10, 4
    per, st = kv_cache.init(L, B, T, 2, 4), kv_cache.init(L, B, T, 2, 4, stacked=True)
    assert (per.max_len, per.num_layers, st.max_len, st.num_layers) == (T, L, T, L)
    assert not per.stacked and st.stacked
    rng = np.random.default_rng(0)
    k, v = (jnp.asarray(rng.standard_normal((L, B, Q, 2, 4)), jnp.float32) for _ in range(2))
    info = generation_info(jnp.ones((B, Q), bool), 2)

    @jax.jit  # one compile per layout instead of one per eager op
    def ops(cache):
        # A list of per-layer arrays, then one [L, ...] array, then forget the second write's tail.
        return kv_cache.truncate(kv_cache.write(kv_cache.write(cache, list(k), list(v), info), k, v, info), 6)

    per, st = ops(per), ops(st)
    assert not per.stacked and st.stacked
    for a, b in zip(jax.tree.leaves(kv_cache.to_layout(per, True)), jax.tree.leaves(st)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(kv_cache.to_layout(st, False)), jax.tree.leaves(per)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for i in range(L):
        for a, b in zip(kv_cache.layer_kv(per, i), kv_cache.layer_kv(st, i)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="3 layers"):
        kv_cache.write(st, k[:2], v[:2], info)


def test_block_sampler_equal(tiny_pair):
    """The block sampler's forwards write (fused with the next block's first step), truncate and read
    the cache: the same rollout in both layouts."""
    from tracerl_jax.sampling import BlockSamplerConfig, make_block_sampler

    rng = np.random.default_rng(1)
    prompts = rng.integers(5, 60, (3, 6)).astype(np.int32)
    valid = np.ones_like(prompts, bool)
    valid[1, :2] = False
    scfg = BlockSamplerConfig(gen_length=8, mask_id=MASK, eos_id=50, pad_id=0, block_size=4, steps_per_block=2,
                              strategy="low_confidence_dynamic", threshold=0.3, temperature=0.0,
                              fuse_cache_write=True)
    outs = []
    for m in tiny_pair:
        g, p = split_model(m)
        sample = make_block_sampler(sampler_forward_fn(g), cache_init_fn(m.config), scfg)
        outs.append(sample(p, prompts, valid, rng=jax.random.key(3)))
    a, b = outs
    for name in ("tokens", "step_map", "lengths", "num_steps"):
        np.testing.assert_array_equal(np.asarray(getattr(a, name)), np.asarray(getattr(b, name)), err_msg=name)
    _close(a.logprobs, b.logprobs)


def test_full_sampler_forward_with_cache_equal():
    """Dream's full-attention forward (shifted logits) writing a prefix cache."""
    unrolled, scanned = _pair(_cfg("tiny-dream"), seed=2)
    tok, pos, info, T = _gen_inputs()
    outs = []
    for m in (unrolled, scanned):
        g, p = split_model(m)
        fn = jax.jit(full_sampler_forward_fn(g), static_argnums=(5, 7))
        outs.append(fn(p, tok, pos, info, make_cache(m.config, B, T), True, L0, 4))
    (lu, cu), (ls, cs) = outs
    assert lu.shape == (B, 4, V)
    _close(lu, ls)
    L = unrolled.config.num_layers
    assert cs.stacked and cs.k.shape == (L, B, 2, 16, T) and cs.v.shape == (L, B, 2, T, 16)
    assert int(cs.length) == int(cu.length) == T
    for a, b in zip(jax.tree.leaves(kv_cache.to_layout(cu, True)), jax.tree.leaves(cs)):
        _close(a, b)


# ------------------------------------------------------------------- bad input, mask_info=None


def test_cache_of_the_wrong_layout_is_rejected(tiny_pair):
    unrolled, scanned = tiny_pair
    tok, pos, info, T = _gen_inputs()
    args = (tok[:, :L0], pos[:, :L0], _sl(info, 0, L0))
    with pytest.raises(ValueError, match="per-layer KV layout.*scan_layers=True"):
        forward(*split_model(scanned), *args, make_cache(unrolled.config, B, T))
    with pytest.raises(ValueError, match="stacked KV layout.*scan_layers=False"):
        forward(*split_model(unrolled), *args, make_cache(scanned.config, B, T))
    with pytest.raises(ValueError, match=r"cache.k must be a stacked array of shape \[L, B, Hkv, D, T\]"):
        forward(*split_model(scanned), *args, make_cache(scanned.config, B + 1, T))


def test_dense_mask_without_mask_info(tiny_pair):
    m = tiny_pair[0]
    g, p = split_model(m)
    tok, pos, info = _extended_inputs()
    ref = forward(g, p, tok, pos, info)
    out = forward(g, p, tok, pos, None, dense_mask=attn.dense_mask(info, info))
    _close(out.logits, ref.logits, atol=0)
    # value_forward takes the same arguments (traced only: its numerics are the policy's hidden states).
    gv, pv = split_model(value_model_from_policy(m))
    values = jax.eval_shape(lambda p: value_forward(gv, p, tok, pos, None, dense_mask=attn.dense_mask(info, info)), pv)
    assert values.shape == tok.shape
    # With a cache: a read-only pass works; writing needs the MaskInfo the cache records.
    tok, pos, ginfo, T = _gen_inputs()
    q = _sl(ginfo, L0, L0 + 4)
    # Zero K/V with a valid prefix: the attention weights still depend on the mask.
    cache = make_cache(m.config, B, T)
    cache = cache._replace(info=cache.info._replace(valid=ginfo.valid.at[:, L0:].set(False),
                                                     block=ginfo.block), length=jnp.int32(L0))
    dm = attn.dense_mask(q, cache.info.concat(q), q_offset=T)
    ref = forward(g, p, tok[:, L0:L0 + 4], pos[:, L0:L0 + 4], q, cache)
    out = forward(g, p, tok[:, L0:L0 + 4], pos[:, L0:L0 + 4], None, cache, dense_mask=dm)
    _close(out.logits, ref.logits, atol=0)
    with pytest.raises(ValueError, match="write_cache=True needs mask_info"):
        forward(g, p, tok[:, L0:L0 + 4], pos[:, L0:L0 + 4], None, cache, write_cache=True, dense_mask=dm)
    with pytest.raises(ValueError, match="mask_info is required unless a dense_mask"):
        forward(g, p, tok[:, L0:L0 + 4], pos[:, L0:L0 + 4], None, cache)


# ------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("name", ["tiny", "tiny-llada", "tiny-dream"])
def test_hf_save_load_across_layouts(tmp_path, name):
    unrolled, scanned = _pair(_cfg(name), seed=4)
    save_hf_checkpoint(scanned, scanned.config, tmp_path / "from_scanned")
    # Tiny shards: a stacked parameter's layers land in different files.
    save_hf_checkpoint(unrolled, unrolled.config, tmp_path / "from_unrolled", max_shard_bytes=20_000)
    a = load_file(str(tmp_path / "from_scanned" / "model.safetensors"))
    assert "model.layers.1.mlp.up_proj.weight" in a or "model.transformer.blocks.1.up_proj.weight" in a
    _, u = load_hf_checkpoint(tmp_path / "from_scanned")
    _, s = load_hf_checkpoint(tmp_path / "from_unrolled", scan_layers=True)
    assert not u.config.scan_layers and s.config.scan_layers
    for got, want in ((u, unrolled), (s, scanned)):
        for x, y in zip(jax.tree.leaves(nnx.state(got, nnx.Param)), jax.tree.leaves(nnx.state(want, nnx.Param))):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # The scanned save writes exactly the unrolled save's tensors.
    _, again = load_hf_checkpoint(tmp_path / "from_unrolled")
    for x, y in zip(jax.tree.leaves(nnx.state(again, nnx.Param)), jax.tree.leaves(nnx.state(u, nnx.Param))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_hf_value_model_scanned_roundtrip(tmp_path, tiny_pair):
    vs = value_model_from_policy(tiny_pair[1])
    vs.value_head.kernel[...] = jnp.full((vs.config.hidden_size, 1), 0.5)
    save_hf_checkpoint(vs, vs.config, tmp_path)
    _, back = load_hf_checkpoint(tmp_path, scan_layers=True)
    assert type(back) is type(vs)
    for x, y in zip(jax.tree.leaves(nnx.state(back, nnx.Param)), jax.tree.leaves(nnx.state(vs, nnx.Param))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_orbax_export_load_scanned(tmp_path, tiny_pair):
    from tracerl_jax.train.checkpoint import export_model, load_model

    scanned = tiny_pair[1]
    g, p = split_model(scanned)
    export_model(tmp_path / "m", p, scanned.config)
    cfg, g2, p2 = load_model(tmp_path / "m")
    assert cfg == scanned.config and cfg.scan_layers
    for x, y in zip(jax.tree.leaves(p2), jax.tree.leaves(p)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    tok, pos, info = _extended_inputs()
    _close(forward(g2, p2, tok, pos, info).logits, forward(g, p, tok, pos, info).logits, atol=0)


def test_config_field():
    with pytest.raises(ValueError, match="scan_layers"):
        _cfg(scan_layers=1)
    assert "scan_layers" in {f.name for f in dataclasses.fields(_cfg())}
