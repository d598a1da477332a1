"""HF safetensors save/load: bit-exact round trips, sharding, value head, bad checkpoints."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from tracerl_jax.models import (
    ValueModel,
    get_preset,
    init_model,
    load_hf_checkpoint,
    save_hf_checkpoint,
    split_model,
    value_model_from_policy,
)


def _flat(model_or_state):
    state = nnx.state(model_or_state, nnx.Param) if isinstance(model_or_state, nnx.Module) else model_or_state
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(state)[0]}


def _assert_identical(a, b):
    fa, fb = _flat(a), _flat(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        assert fa[k].dtype == fb[k].dtype, k
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


def _tiny(**kw):
    return get_preset("tiny", vocab_size=96, mask_token_id=95, **kw)


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("model_type", ["sdar", "qwen3"])
def test_round_trip_bit_exact(tmp_path, tie, model_type):
    cfg = _tiny(tie_word_embeddings=tie, model_type=model_type)
    model = init_model(cfg, seed=5)
    names = save_hf_checkpoint(model, cfg, tmp_path)
    assert names == ["model.safetensors"] and not (tmp_path / "model.safetensors.index.json").exists()
    keys = set(load_file(str(tmp_path / "model.safetensors")))
    assert ("lm_head.weight" in keys) == (not tie)
    assert load_file(str(tmp_path / "model.safetensors"))["model.layers.0.self_attn.q_proj.weight"].shape == (64, 64)
    cfg2, loaded = load_hf_checkpoint(tmp_path)
    assert cfg2 == cfg
    _assert_identical(model, loaded)


def test_sharded_round_trip(tmp_path):
    cfg = _tiny()
    model = init_model(cfg, seed=1)
    limit = 40_000
    names = save_hf_checkpoint(split_model(model)[1], cfg, tmp_path, max_shard_bytes=limit)
    assert len(names) > 2 and names[0] == f"model-00001-of-{len(names):05d}.safetensors"
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(names)
    sizes = {n: sum(a.nbytes for a in load_file(str(tmp_path / n)).values()) for n in names}
    assert index["metadata"]["total_size"] == sum(sizes.values())
    for n, size in sizes.items():
        assert size <= limit or len(load_file(str(tmp_path / n))) == 1  # only a lone oversize tensor may exceed
    _, loaded = load_hf_checkpoint(tmp_path)
    _assert_identical(model, loaded)
    # A later single-file save into the same directory must not leave stale shards behind.
    save_hf_checkpoint(model, cfg, tmp_path)
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == ["model.safetensors"]
    assert not (tmp_path / "model.safetensors.index.json").exists()
    _, again = load_hf_checkpoint(tmp_path)
    _assert_identical(model, again)


def test_bf16_round_trip_and_cast(tmp_path):
    cfg = _tiny(param_dtype="bfloat16", dtype="bfloat16")
    model = init_model(cfg, seed=2)
    save_hf_checkpoint(model, cfg, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    cfg2, loaded = load_hf_checkpoint(tmp_path, dtype="bfloat16")
    assert cfg2.param_dtype == "bfloat16"
    _assert_identical(model, loaded)
    # Loading bf16 weights as fp32 is exact (widening).
    _, wide = load_hf_checkpoint(tmp_path, dtype="float32", compute_dtype="bfloat16")
    assert wide.config.dtype == "bfloat16"
    for a, b in zip(jax.tree.leaves(nnx.state(model, nnx.Param)), jax.tree.leaves(nnx.state(wide, nnx.Param))):
        assert b.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b))


def test_value_model_round_trip(tmp_path):
    cfg = _tiny()
    vm = value_model_from_policy(init_model(cfg, seed=3))
    vm.value_head.kernel[...] = jnp.arange(cfg.hidden_size, dtype=jnp.float32)[:, None] / 100
    save_hf_checkpoint(vm, cfg, tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    assert tensors["value_head.weight"].shape == (1, cfg.hidden_size)
    assert "lm_head.weight" in tensors  # the value model keeps the policy's head (§8.1)
    _, loaded = load_hf_checkpoint(tmp_path)
    assert isinstance(loaded, ValueModel)
    _assert_identical(vm, loaded)
    with pytest.raises(ValueError, match="value_head.weight"):
        load_hf_checkpoint(tmp_path, value_model=False)


def test_policy_checkpoint_is_not_a_value_model(tmp_path):
    cfg = _tiny()
    save_hf_checkpoint(init_model(cfg), cfg, tmp_path)
    with pytest.raises(ValueError, match="value_head.weight"):
        load_hf_checkpoint(tmp_path, value_model=True)


# ---------------------------------------------------------------- bad input


@pytest.fixture()
def saved(tmp_path):
    cfg = _tiny()
    save_hf_checkpoint(init_model(cfg, seed=4), cfg, tmp_path)
    return cfg, tmp_path


def _edit_tensors(path, fn):
    f = str(path / "model.safetensors")
    tensors = dict(load_file(f))
    fn(tensors)
    save_file(tensors, f, metadata={"format": "pt"})


def _edit_config(path, **kw):
    hf = json.loads((path / "config.json").read_text())
    hf.update(kw)
    (path / "config.json").write_text(json.dumps(hf))


def test_missing_tensor(saved):
    _, path = saved
    _edit_tensors(path, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(ValueError, match=r"missing tensors.*model\.layers\.1\.mlp\.up_proj\.weight"):
        load_hf_checkpoint(path)


def test_unexpected_tensor(saved):
    _, path = saved
    _edit_tensors(path, lambda t: t.__setitem__("model.layers.0.self_attn.o_proj.bias", np.zeros(64, np.float32)))
    with pytest.raises(ValueError, match=r"unexpected tensors.*o_proj\.bias"):
        load_hf_checkpoint(path)


def test_wrong_shape(saved):
    _, path = saved
    _edit_tensors(path, lambda t: t.__setitem__("model.norm.weight", np.ones(63, np.float32)))
    with pytest.raises(ValueError, match=r"model\.norm\.weight.*\(63,\)"):
        load_hf_checkpoint(path)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "header"])
def test_corrupt_file(saved, damage):
    _, path = saved
    f = path / "model.safetensors"
    raw = f.read_bytes()
    if damage == "truncate":
        f.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        f.write_bytes(b"\x00not a safetensors file at all" * 10)
    else:
        f.write_bytes(raw[:8] + b"{" * 16 + raw[24:])
    with pytest.raises(ValueError, match="model.safetensors"):
        load_hf_checkpoint(path)


def test_unknown_model_type(saved):
    _, path = saved
    _edit_config(path, model_type="llama")
    with pytest.raises(ValueError, match="model_type"):
        load_hf_checkpoint(path)


@pytest.mark.parametrize("change, key", [
    (dict(hidden_size=32), "model.embed_tokens.weight"),
    (dict(num_hidden_layers=3), "model.layers.2."),
    (dict(num_hidden_layers=1), "model.layers.1."),
    (dict(intermediate_size=100), "mlp.gate_proj.weight"),
    (dict(tie_word_embeddings=True), "lm_head.weight"),
])
def test_config_tensor_mismatch(saved, change, key):
    _, path = saved
    _edit_config(path, **change)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        load_hf_checkpoint(path)


def test_missing_config_and_bad_index(saved):
    _, path = saved
    index = {"weight_map": {"model.norm.weight": "nope.safetensors"}}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="nope.safetensors"):
        load_hf_checkpoint(path)
    (path / "model.safetensors.index.json").unlink()
    (path / "config.json").unlink()
    with pytest.raises(ValueError, match="config.json"):
        load_hf_checkpoint(path)


def test_tied_checkpoint_with_explicit_head(tmp_path):
    cfg = _tiny(tie_word_embeddings=True)
    save_hf_checkpoint(init_model(cfg), cfg, tmp_path)
    _edit_tensors(tmp_path, lambda t: t.__setitem__("lm_head.weight", t["model.embed_tokens.weight"].copy()))
    load_hf_checkpoint(tmp_path)  # equal to the embedding: accepted
    _edit_tensors(tmp_path, lambda t: t.__setitem__("lm_head.weight", t["lm_head.weight"] + 1))
    with pytest.raises(ValueError, match="lm_head.weight"):
        load_hf_checkpoint(tmp_path)


def test_save_rejects_params_of_another_config(tmp_path):
    model = init_model(_tiny(), seed=0)
    with pytest.raises(ValueError, match="embed_tokens"):
        save_hf_checkpoint(model, _tiny(hidden_size=32, num_heads=2, num_kv_heads=1), tmp_path)
    with pytest.raises(ValueError, match="lm_head"):
        save_hf_checkpoint(init_model(_tiny(tie_word_embeddings=True)), _tiny(), tmp_path)
