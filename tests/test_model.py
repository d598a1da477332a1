"""Model config, presets, transforms (jit/grad/vmap/remat), dtypes, sharding, bad input."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from tracerl_jax.attention import MaskInfo, extended_info, generation_info
from tracerl_jax.models import (
    PRESET_NAMES,
    ModelConfig,
    Transformer,
    cache_init_fn,
    forward,
    get_preset,
    init_model,
    make_cache,
    sampler_forward_fn,
    split_model,
)

B, L = 2, 8


def _inputs(vocab=512, b=B, l=L, seed=0):
    rng = np.random.default_rng(seed)
    tok = jnp.asarray(rng.integers(0, vocab, (b, l)), jnp.int32)
    pos = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
    info = generation_info(jnp.ones((b, l), bool), 4)
    return tok, pos, info


@pytest.fixture(scope="module")
def tiny():
    cfg = get_preset("tiny")
    graphdef, params = split_model(init_model(cfg, seed=0))
    return cfg, graphdef, params


# ----------------------------------------------------------------- config


def _cfg(**kw):
    base = dict(vocab_size=32, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=4, num_kv_heads=2,
                head_dim=8, rope_theta=1e4, max_position_embeddings=64)
    base.update(kw)
    return ModelConfig(**base)


@pytest.mark.parametrize("kw, field", [
    (dict(num_kv_heads=3), "num_kv_heads"),
    (dict(mask_token_id=32), "mask_token_id"),
    (dict(pad_token_id=-1), "pad_token_id"),
    (dict(head_dim=7), "head_dim"),
    (dict(rope_theta=None), "rope_theta"),
    (dict(rope_theta=0.0), "rope_theta"),
    (dict(dtype="int8"), "dtype"),
    (dict(param_dtype="float64"), "param_dtype"),
    (dict(vocab_size=0), "vocab_size"),
    (dict(model_type="llama"), "model_type"),
    (dict(remat=1), "remat"),
])
def test_config_validation_names_field(kw, field):
    with pytest.raises(ValueError, match=field):
        _cfg(**kw)


def test_config_dtype_aliases_and_hashable():
    c = _cfg(dtype="bf16", param_dtype=jnp.float32)
    assert c.dtype == "bfloat16" and c.param_dtype == "float32" and c.compute_dtype == jnp.bfloat16
    assert hash(c) == hash(_cfg(dtype=jnp.bfloat16))


def test_rope_theta_has_no_default():
    with pytest.raises(TypeError):
        ModelConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=4,
                    num_kv_heads=2, head_dim=8, max_position_embeddings=64)


def test_hf_config_round_trip():
    cfg = get_preset("sdar-1.7b")
    hf = cfg.to_hf_config()
    assert hf["model_type"] == "sdar" and hf["architectures"] == ["SDARForCausalLM"]
    assert ModelConfig.from_hf_config(hf) == cfg


def _hf(**kw):
    hf = get_preset("tiny").to_hf_config()
    hf.update(kw)
    return hf


def test_from_hf_config_reads_rope_parameters_and_eos_list():
    hf = _hf(rope_parameters={"rope_type": "default", "rope_theta": 5e5}, eos_token_id=[2, 5])
    del hf["rope_theta"]
    cfg = ModelConfig.from_hf_config(hf, remat=True, dtype="bfloat16")
    assert cfg.rope_theta == 5e5 and cfg.eos_token_id == 2 and cfg.remat and cfg.dtype == "bfloat16"


@pytest.mark.parametrize("change, field", [
    (dict(model_type="llama"), "model_type"),
    (dict(rope_theta=None), "rope_theta"),
    (dict(rope_scaling={"type": "yarn", "factor": 4.0}), "rope_scaling"),
    (dict(use_sliding_window=True), "use_sliding_window"),
    (dict(attention_bias=True), "attention_bias"),
    (dict(hidden_act="gelu"), "hidden_act"),
    (dict(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4}), "rope_type"),
    (dict(rope_parameters={"rope_type": "default", "rope_theta": 1.0}), "rope_theta"),
    (dict(num_key_value_heads=3), "num_kv_heads"),
    (dict(mask_token_id=10**6), "mask_token_id"),
])
def test_from_hf_config_rejects(change, field):
    with pytest.raises(ValueError, match=field):
        ModelConfig.from_hf_config(_hf(**change))


@pytest.mark.parametrize("key", ["vocab_size", "head_dim", "num_key_value_heads", "rms_norm_eps",
                                 "max_position_embeddings", "tie_word_embeddings"])
def test_from_hf_config_missing_field(key):
    hf = _hf()
    del hf[key]
    with pytest.raises(ValueError, match=key):
        ModelConfig.from_hf_config(hf)


# JetLM/SDAR-1.7B-Chat config.json as published (vendored copy in hxhcreate/DARE).
SDAR_1P7B_CONFIG = {
    "architectures": ["SDARForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "attn_implementation": "flex_attention", "bos_token_id": 151643, "debug": False, "eos_token_id": 151643,
    "block_size": 4, "mask_token_id": 151669, "ep_size": 1, "fuse_cross_entropy": True, "head_dim": 128,
    "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 6144,
    "max_position_embeddings": 32768, "max_window_layers": 28, "micro_forward": False, "model_type": "sdar",
    "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8, "rms_norm_eps": 1e-06,
    "rope_scaling": None, "rope_theta": 1000000, "skip_checkpoint": False, "sliding_window": None,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.52.4", "use_cache": False,
    "use_deepep": False, "use_sliding_window": False, "vocab_size": 151936,
}


def test_sdar_preset_matches_published_config():
    cfg = ModelConfig.from_hf_config(SDAR_1P7B_CONFIG, pad_token_id=151643)
    assert cfg == get_preset("sdar-1.7b")


def _param_count(cfg):
    model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_presets():
    for name in PRESET_NAMES:
        cfg = get_preset(name)
        assert cfg.num_heads % cfg.num_kv_heads == 0
    with pytest.raises(ValueError, match="preset"):
        get_preset("gpt-5")
    assert get_preset("tiny", vocab_size=1000).vocab_size == 1000
    c = get_preset("sdar-1.7b")
    d, h, kv, hd, f, V = c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, c.intermediate_size, c.vocab_size
    per_layer = d * h * hd * 2 + d * kv * hd * 2 + 3 * d * f + 2 * d + 2 * hd
    # Two layers are enough to check the module structure against the formula.
    assert _param_count(c.replace(num_layers=2)) == 2 * V * d + 2 * per_layer + d
    assert 2.0e9 < 2 * V * d + c.num_layers * per_layer + d < 2.1e9  # Qwen3-1.7B / SDAR-1.7B: ~2.03B, untied


# --------------------------------------------------------------- transforms


def test_jit_matches_eager_and_tied_head(tiny):
    cfg, graphdef, params = tiny
    tok, pos, info = _inputs()
    eager = forward(graphdef, params, tok, pos, info)
    jitted = jax.jit(forward, static_argnums=0)(graphdef, params, tok, pos, info)
    assert eager.logits.shape == (B, L, cfg.vocab_size) and eager.logits.dtype == jnp.float32
    assert eager.hidden.shape == (B, L, cfg.hidden_size) and eager.cache is None
    np.testing.assert_allclose(np.asarray(eager.logits), np.asarray(jitted.logits), atol=1e-5)
    tied = init_model(cfg.replace(tie_word_embeddings=True))
    assert not hasattr(tied, "lm_head")
    g2, p2 = split_model(tied)
    assert jnp.all(jnp.isfinite(forward(g2, p2, tok, pos, info).logits))


def _loss(params, graphdef, tok, pos, info):
    logits = forward(graphdef, params, tok, pos, info).logits
    return -jnp.mean(jax.nn.log_softmax(logits)[..., 0])


def test_grad_reaches_every_parameter(tiny):
    cfg, graphdef, params = tiny
    tok, pos, info = _inputs()
    grads = jax.jit(jax.grad(_loss), static_argnums=1)(params, graphdef, tok, pos, info)
    for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
        assert np.all(np.isfinite(np.asarray(g))), path
        assert np.abs(np.asarray(g)).max() > 0, path


def test_vmap_over_leading_axis(tiny):
    cfg, graphdef, params = tiny
    toks, poss, infos = zip(*[_inputs(seed=s) for s in range(3)])
    tok, pos = jnp.stack(toks), jnp.stack(poss)
    info = MaskInfo(*(jnp.stack(f) for f in zip(*infos)))
    f = lambda t, p, i: forward(graphdef, params, t, p, i).logits  # noqa: E731
    batched = jax.vmap(f)(tok, pos, info)
    for s in range(3):
        np.testing.assert_allclose(np.asarray(batched[s]), np.asarray(f(toks[s], poss[s], infos[s])), atol=1e-5)


def test_remat_same_loss_and_grads(tiny):
    cfg, graphdef, params = tiny
    g_remat, _ = split_model(init_model(cfg.replace(remat=True)))
    tok, pos, info = _inputs()
    vg = jax.jit(jax.value_and_grad(_loss), static_argnums=1)
    l0, g0 = vg(params, graphdef, tok, pos, info)
    l1, g1 = vg(params, g_remat, tok, pos, info)
    np.testing.assert_allclose(float(l0), float(l1), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


@pytest.mark.parametrize("param_dtype", ["float32", "bfloat16"])
def test_bf16_compute(tiny, param_dtype):
    cfg, graphdef, params = tiny
    tok, pos, info = _inputs()
    ref = forward(graphdef, params, tok, pos, info).logits
    m = init_model(cfg.replace(dtype="bfloat16", param_dtype=param_dtype), seed=0)
    g, p = split_model(m)
    assert all(x.dtype == jnp.dtype(param_dtype) for x in jax.tree.leaves(p))
    p = jax.tree.map(lambda x: x.astype(param_dtype), params)  # same weights as the fp32 reference
    out = jax.jit(forward, static_argnums=0)(g, p, tok, pos, info)
    assert out.logits.dtype == jnp.float32 and out.hidden.dtype == jnp.bfloat16
    assert np.all(np.isfinite(np.asarray(out.logits)))
    assert np.abs(np.asarray(out.logits) - np.asarray(ref)).max() < 0.03  # measured ~5e-3
    cache = make_cache(m.config, B, L + 4)
    assert all(a.dtype == jnp.bfloat16 for a in cache.k + cache.v)
    out2 = forward(g, p, tok, pos, info, cache, write_cache=True)
    assert int(out2.cache.length) == L


def test_sampler_protocol(tiny):
    cfg, graphdef, params = tiny
    fn = jax.jit(sampler_forward_fn(graphdef), static_argnums=5)
    cache = cache_init_fn(cfg)(B, L)
    tok, pos, info = _inputs()
    logits, cache2 = fn(params, tok, pos, info, cache, True)
    assert logits.shape == (B, L, cfg.vocab_size) and int(cache2.length) == L
    _, cache3 = fn(params, tok, pos, info, cache2, False)
    assert int(cache3.length) == L


def test_training_layout_runs(tiny):
    cfg, graphdef, params = tiny
    L0, L1 = 4, 8
    info = extended_info(jnp.ones((B, L0), bool), L1, 4)
    tok = jnp.zeros((B, L0 + 2 * L1), jnp.int32)
    pos = jnp.concatenate([jnp.arange(L0 + L1), jnp.arange(L0, L0 + L1)])[None].repeat(B, 0).astype(jnp.int32)
    assert forward(graphdef, params, tok, pos, info).logits.shape == (B, L0 + 2 * L1, cfg.vocab_size)


# ----------------------------------------------------------------- sharding


def test_sharded_params_one_device_mesh(tiny):
    cfg, graphdef, params = tiny
    mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("fsdp", "tensor"))
    specs = jax.tree.map(lambda x: P("fsdp", "tensor") if x.ndim == 2 else P(), params)
    sharded = jax.device_put(params, jax.tree.map(lambda s: NamedSharding(mesh, s), specs))
    tok, pos, info = _inputs()
    want = forward(graphdef, params, tok, pos, info).logits
    got = jax.jit(forward, static_argnums=0)(graphdef, sharded, tok, pos, info).logits
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)


_FOUR_DEVICE_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from tracerl_jax.attention import generation_info
    from tracerl_jax.models import forward, get_preset, init_model, split_model, make_cache
    assert jax.device_count() == 4, jax.devices()
    cfg = get_preset("tiny")
    graphdef, params = split_model(init_model(cfg, seed=1))
    B, L = 4, 8
    tok = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (B, L)), jnp.int32)
    pos = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L))
    info = generation_info(jnp.ones((B, L), bool), 4)
    want = forward(graphdef, params, tok, pos, info).logits
    mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("fsdp", "tensor"))
    def spec(x):
        if x.ndim == 2:
            return P("fsdp" if x.shape[0] % 2 == 0 else None, "tensor" if x.shape[1] % 2 == 0 else None)
        return P()
    sharded = jax.device_put(params, jax.tree.map(lambda x: NamedSharding(mesh, spec(x)), params))
    assert any(len(x.sharding.device_set) == 4 and not x.sharding.is_fully_replicated
               for x in jax.tree.leaves(sharded))
    rows = NamedSharding(mesh, P("fsdp"))
    tok_s, pos_s = jax.device_put(tok, rows), jax.device_put(pos, rows)
    info_s = jax.tree.map(lambda a: jax.device_put(a, rows), info)
    got = jax.jit(forward, static_argnums=0)(graphdef, sharded, tok_s, pos_s, info_s).logits
    err = float(jnp.abs(got - want).max())
    print("MAXDIFF", err)
    assert err < 1e-5, err
""")


def test_sharded_params_four_devices_subprocess():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
               JAX_DEFAULT_MATMUL_PRECISION="highest")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-c", _FOUR_DEVICE_SCRIPT], env=env, capture_output=True, text=True,
                       timeout=300, cwd=root)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "MAXDIFF" in r.stdout


# ---------------------------------------------------------------- bad input


def test_bad_inputs_name_the_argument(tiny):
    cfg, graphdef, params = tiny
    tok, pos, info = _inputs()
    cache = make_cache(cfg, B, 16)

    def call(*a, **k):
        return forward(graphdef, params, *a, **k)

    cases = [
        (lambda: call(tok[0], pos[0], info), "tokens"),
        (lambda: call(tok.astype(jnp.float32), pos, info), "tokens"),
        (lambda: call(tok, pos[:, :4], info), "positions"),
        (lambda: call(tok, pos.astype(jnp.float32), info), "positions"),
        (lambda: call(tok, pos, MaskInfo(info.block[:, :4], info.noised, info.valid)), "mask_info.block"),
        (lambda: call(tok, pos, info._replace(valid=info.valid.astype(jnp.int32))), "mask_info.valid"),
        (lambda: call(tok, pos, (info.block, info.noised)), "mask_info"),
        (lambda: call(tok, pos, info, make_cache(cfg, B + 1, 16)), "cache.k"),
        (lambda: call(tok, pos, info, write_cache=True), "write_cache"),
        (lambda: call(tok, pos, info, dense_mask=jnp.ones((B, 1, L, L + 1), bool)), "dense_mask"),
        (lambda: call(tok, pos, info, cache, dense_mask=jnp.ones((B, 1, L, L), bool)), "dense_mask"),
        (lambda: call(tok, pos, info, dense_mask=jnp.ones((B, 1, L, L), jnp.float32)), "dense_mask"),
        (lambda: call(tok.at[0, 0].set(cfg.vocab_size), pos, info), "tokens"),
        (lambda: call(tok.at[0, 0].set(-1), pos, info), "tokens"),
    ]
    for fn, name in cases:
        with pytest.raises(ValueError, match=name.replace(".", r"\.")):
            fn()
