"""Full-attention families (LLaDA, Dream): parity with transformers, config readers, presets.

* LLaDA-style: a transformers ``LlamaForCausalLM`` with tiny random weights,
  run with a full non-causal 4-D mask, its weights re-saved under the LLaDA
  checkpoint names with an OLMo-style ``config.json`` and loaded by our loader.
* Dream-style: a transformers ``Qwen2ForCausalLM`` (q/k/v biases), run
  non-causally; the Dream logit shift (§2.4) is checked on top.

transformers 5.x adds a 4-D float ``attention_mask`` to the scores as given
(``eager``), so "full attention" is an all-zero additive mask and padding keys
get ``finfo.min``.
"""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from tracerl_jax.attention import dense_mask, full_info
from tracerl_jax.models import (ModelConfig, forward, get_preset, init_model, load_hf_checkpoint, predictions,
                                save_hf_checkpoint, shift_logits, split_model)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
torch.set_num_threads(1)

VOCAB, TOL = 128, 1e-4


def _perturb_norms(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.2 * torch.randn_like(p))  # unit norms / zero biases would hide a wrong mapping
    return model


def _llama(seed=11):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, rope_theta=500000.0, max_position_embeddings=256, rms_norm_eps=1e-5,
        tie_word_embeddings=False, attention_bias=False, mlp_bias=False, attn_implementation="eager")
    return _perturb_norms(transformers.LlamaForCausalLM(cfg).float().eval())


def _qwen2(seed=12):
    torch.manual_seed(seed)
    cfg = transformers.Qwen2Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, rope_theta=1e6, max_position_embeddings=256, rms_norm_eps=1e-6,
        tie_word_embeddings=False, use_sliding_window=False, attn_implementation="eager")
    return _perturb_norms(transformers.Qwen2ForCausalLM(cfg).float().eval())


# HF Llama name -> LLaDA name (docs/algorithms.md §12.2: ff_proj is the gate).
_LLADA_NAMES = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ff_norm", "self_attn.q_proj": "q_proj",
    "self_attn.k_proj": "k_proj", "self_attn.v_proj": "v_proj", "self_attn.o_proj": "attn_out",
    "mlp.gate_proj": "ff_proj", "mlp.up_proj": "up_proj", "mlp.down_proj": "ff_out",
}


def _llada_key(hf_key: str) -> str:
    if hf_key == "model.embed_tokens.weight":
        return "model.transformer.wte.weight"
    if hf_key == "model.norm.weight":
        return "model.transformer.ln_f.weight"
    if hf_key == "lm_head.weight":
        return "model.transformer.ff_out.weight"
    _, _, i, rest = hf_key.split(".", 3)
    module, param = rest.rsplit(".", 1)
    return f"model.transformer.blocks.{i}.{_LLADA_NAMES[module]}.{param}"


def llada_config_json(hf_cfg, tokenizer_vocab=None) -> dict:
    """An OLMo-style config.json as published LLaDA checkpoints write it."""
    return {
        "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0, "architectures": ["LLaDAModelLM"],
        "attention_dropout": 0.0, "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
        "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama", "clip_qkv": None,
        "d_model": hf_cfg.hidden_size, "embedding_dropout": 0.0, "embedding_size": hf_cfg.vocab_size,
        "eos_token_id": 1, "flash_attention": False, "include_bias": False, "include_qkv_bias": False,
        "init_device": "meta", "init_fn": "mitchell", "init_std": 0.02, "input_emb_norm": False,
        "layer_norm_type": "rms", "layer_norm_with_affine": True, "mask_token_id": VOCAB - 1,
        "max_sequence_length": hf_cfg.max_position_embeddings, "mlp_hidden_size": hf_cfg.intermediate_size,
        "mlp_ratio": 4, "model_type": "llada", "multi_query_attention": None, "n_heads": hf_cfg.num_attention_heads,
        "n_kv_heads": hf_cfg.num_key_value_heads, "n_layers": hf_cfg.num_hidden_layers, "pad_token_id": 0,
        "precision": "amp_bf16", "residual_dropout": 0.0, "rms_norm_eps": hf_cfg.rms_norm_eps, "rope": True,
        "rope_full_precision": True, "rope_theta": 500000.0, "scale_logits": False,
        "use_cache": False, "vocab_size": tokenizer_vocab or hf_cfg.vocab_size, "weight_tying": False,
    }


def save_as_llada(ref, path, tokenizer_vocab=None):
    """Re-saves a transformers Llama model under LLaDA checkpoint names."""
    path.mkdir(parents=True, exist_ok=True)
    tensors = {_llada_key(k): v.detach().numpy().copy() for k, v in ref.state_dict().items()}
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(llada_config_json(ref.config, tokenizer_vocab)))


def _batch(B=3, L=14, pads=(0, 3, 6), seed=0):
    rng = np.random.default_rng(seed)
    tok = rng.integers(1, VOCAB - 1, (B, L)).astype(np.int32)
    valid = np.ones((B, L), bool)
    for b, n in enumerate(pads):
        valid[b, :n] = False
        tok[b, :n] = 0
    pos = np.where(valid, np.cumsum(valid, 1) - 1, 0).astype(np.int32)
    return tok, valid, pos


def _hf_logits(ref, tok, pos, float_mask):
    with torch.no_grad():
        out = ref(input_ids=torch.tensor(tok, dtype=torch.long), position_ids=torch.tensor(pos, dtype=torch.long),
                  attention_mask=torch.tensor(float_mask))
    return out.logits.numpy()


def _full_float_mask(valid):
    """Bidirectional additive mask: every query sees every real key."""
    m = np.broadcast_to(valid[:, None, None, :], (valid.shape[0], 1, valid.shape[1], valid.shape[1]))
    return np.where(m, 0.0, np.finfo(np.float32).min).astype(np.float32)


def _ours(graphdef, params, tok, valid, pos):
    return np.asarray(forward(graphdef, params, jnp.asarray(tok), jnp.asarray(pos),
                              full_info(jnp.asarray(valid))).logits)


@pytest.fixture(scope="module")
def llada_pair(tmp_path_factory):
    ref = _llama()
    path = tmp_path_factory.mktemp("llada")
    save_as_llada(ref, path)
    cfg, model = load_hf_checkpoint(path)
    return ref, cfg, split_model(model), path


@pytest.fixture(scope="module")
def dream_pair(tmp_path_factory):
    ref = _qwen2()
    path = tmp_path_factory.mktemp("qwen2")
    ref.save_pretrained(path, safe_serialization=True)
    # A plain Qwen2 checkpoint has no MASK id (a Dream one does): name one, as a tokenizer would.
    cfg, model = load_hf_checkpoint(path, mask_token_id=ref.config.vocab_size - 1)
    return ref, cfg, split_model(model), path


def test_llada_logits_parity_full_attention(llada_pair):
    ref, cfg, (graphdef, params), _ = llada_pair
    assert cfg.family == "llada" and not cfg.qkv_bias and not cfg.qk_norm and not cfg.logits_shift
    tok, valid, pos = _batch(pads=(0, 0, 0))
    want = _hf_logits(ref, tok, pos, np.zeros((3, 1, 14, 14), np.float32))
    got = _ours(graphdef, params, tok, valid, pos)
    assert np.abs(got - want).max() <= TOL
    # Guard: the full mask must matter (HF's own causal mask gives something else).
    with torch.no_grad():
        causal = ref(input_ids=torch.tensor(tok, dtype=torch.long)).logits.numpy()
    assert np.abs(causal - want).max() > 1e-2


def test_llada_logits_parity_left_padded(llada_pair):
    ref, _, (graphdef, params), _ = llada_pair
    tok, valid, pos = _batch()
    want = _hf_logits(ref, tok, pos, _full_float_mask(valid))
    got = _ours(graphdef, params, tok, valid, pos)
    assert np.abs(got - want)[valid].max() <= TOL  # pad queries are garbage in both


def test_dream_logits_parity_and_shift(dream_pair):
    ref, cfg, (graphdef, params), path = dream_pair
    assert cfg.model_type == "qwen2" and cfg.family == "dream" and cfg.qkv_bias and cfg.logits_shift
    tok, valid, pos = _batch()
    want = _hf_logits(ref, tok, pos, _full_float_mask(valid))
    got = _ours(graphdef, params, tok, valid, pos)
    assert np.abs(got - want)[valid].max() <= TOL
    # Dream semantics: the distribution of token i is the output at i-1 (slot 0 keeps its own).
    shifted = np.asarray(predictions(cfg, jnp.asarray(got)))
    np.testing.assert_array_equal(shifted[:, 1:], got[:, :-1])
    np.testing.assert_array_equal(shifted[:, 0], got[:, 0])
    ref_shift = np.concatenate([want[:, :1], want[:, :-1]], axis=1)
    assert np.abs(shifted - ref_shift)[valid].max() <= TOL
    assert np.array_equal(np.asarray(predictions(get_preset("tiny", model_type="llada"), jnp.asarray(got))), got)


def test_dream_named_checkpoint_loads_same_weights(dream_pair, tmp_path):
    """A ``model_type: "Dream"`` config.json (DreamModel) reads as the same model."""
    ref, _, (graphdef, params), path = dream_pair
    hf = json.loads((path / "config.json").read_text())
    hf.update(model_type="Dream", architectures=["DreamModel"], mask_token_id=VOCAB - 1, pad_token_id=0)
    (tmp_path / "config.json").write_text(json.dumps(hf))
    (tmp_path / "model.safetensors").write_bytes((path / "model.safetensors").read_bytes())
    cfg, model = load_hf_checkpoint(tmp_path)
    assert cfg.model_type == "dream" and cfg.mask_token_id == VOCAB - 1 and cfg.logits_shift
    tok, valid, pos = _batch(seed=3)
    got = _ours(*split_model(model), tok, valid, pos)
    np.testing.assert_array_equal(got, _ours(graphdef, params, tok, valid, pos))


def test_transformers_loads_our_qwen2_save(dream_pair, tmp_path):
    ref, cfg, (graphdef, params), _ = dream_pair
    save_hf_checkpoint(params, cfg, tmp_path)
    back = transformers.Qwen2ForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").float().eval()
    tok, valid, pos = _batch(seed=4)
    m = _full_float_mask(valid)
    np.testing.assert_allclose(_hf_logits(back, tok, pos, m), _hf_logits(ref, tok, pos, m), atol=1e-6, rtol=0)


def test_llada_round_trip_keeps_names_and_embedding_rows(tmp_path):
    """embedding_size > vocab_size: logits have embedding_size columns; names and config survive a save."""
    ref = _llama(seed=13)
    save_as_llada(ref, tmp_path / "src", tokenizer_vocab=VOCAB - 8)
    cfg, model = load_hf_checkpoint(tmp_path / "src")
    assert cfg.vocab_size == VOCAB and cfg.tokenizer_vocab_size == VOCAB - 8
    save_hf_checkpoint(model, cfg, tmp_path / "out")
    keys = set(load_file(str(tmp_path / "out" / "model.safetensors")))
    assert keys == set(load_file(str(tmp_path / "src" / "model.safetensors")))
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert written["embedding_size"] == VOCAB and written["vocab_size"] == VOCAB - 8
    cfg2, model2 = load_hf_checkpoint(tmp_path / "out")
    assert cfg2 == cfg
    tok, valid, pos = _batch(seed=5)
    got = _ours(*split_model(model2), tok, valid, pos)
    assert got.shape[-1] == VOCAB
    want = _hf_logits(ref, tok, pos, _full_float_mask(valid))
    assert np.abs(got - want)[valid].max() <= TOL


# ------------------------------------------------------------------ presets / configs


def test_llada_8b_preset_matches_published_config():
    hf = llada_config_json(transformers.LlamaConfig(
        vocab_size=126464, hidden_size=4096, intermediate_size=12288, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5))
    hf.update(mask_token_id=126336, eos_token_id=126081, pad_token_id=126081)
    assert ModelConfig.from_hf_config(hf) == get_preset("llada-8b")


def test_dream_presets_match_qwen25_shape():
    hf = {"model_type": "Dream", "architectures": ["DreamModel"], "hidden_size": 3584, "intermediate_size": 18944,
          "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
          "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "max_position_embeddings": 131072, "hidden_act": "silu",
          "tie_word_embeddings": False, "use_sliding_window": False, "rope_scaling": None,
          "mask_token_id": 151666, "pad_token_id": 151643, "eos_token_id": 151643, "bos_token_id": 151643}
    assert ModelConfig.from_hf_config(hf) == get_preset("dream-7b")
    coder = get_preset("diffucoder-7b")
    assert coder.replace(max_position_embeddings=131072, pad_token_id=151643) == get_preset("dream-7b")
    assert coder.head_dim == 128 and coder.qkv_bias and coder.logits_shift


@pytest.mark.parametrize("change, field", [
    (dict(block_type="sequential"), "block_type"),
    (dict(layer_norm_type="default"), "layer_norm_type"),
    (dict(include_bias=True), "include_bias"),
    (dict(alibi=True), "alibi"),
    (dict(scale_logits=True), "scale_logits"),
    (dict(rope_theta=None), "rope_theta"),
])
def test_llada_reader_rejects_other_architectures(change, field):
    hf = llada_config_json(transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                                    num_hidden_layers=1, num_attention_heads=4,
                                                    num_key_value_heads=4, max_position_embeddings=64))
    hf.update(change)
    with pytest.raises(ValueError, match=field):
        ModelConfig.from_hf_config(hf)


def test_family_models_have_the_family_tensors():
    for model_type, bias, qk in (("llada", False, False), ("dream", True, False), ("sdar", False, True)):
        cfg = get_preset("tiny", model_type=model_type)
        _, params = split_model(init_model(cfg))
        attn = params["layers"][0]["self_attn"]
        assert ("bias" in attn["q_proj"]) == bias and ("bias" in attn["o_proj"]) is False
        assert ("q_norm" in attn) == qk


def test_shift_logits_moves_outputs_to_the_token_they_predict():
    x = jnp.arange(2 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 3)
    y = np.asarray(shift_logits(x))
    np.testing.assert_array_equal(y[:, 1:], np.asarray(x)[:, :-1])
    np.testing.assert_array_equal(y[:, 0], np.asarray(x)[:, 0])


def test_full_mask_is_bidirectional_over_real_keys():
    valid = jnp.asarray([[False, True, True, True]])
    m = np.asarray(dense_mask(full_info(valid), full_info(valid)))[0, 0]
    np.testing.assert_array_equal(m[1:], np.broadcast_to([False, True, True, True], (3, 4)))


def test_cpu_size_presets_in_full_attention_layouts():
    for size in ("tiny", "small"):
        for family in ("llada", "dream"):
            cfg = get_preset(f"{size}-{family}")
            assert cfg == get_preset(size, model_type=family) and cfg.family == family
            assert cfg.hidden_size == get_preset(size).hidden_size and not cfg.qk_norm


def test_dream_padding_idx_row_gets_no_gradient():
    """Dream's nn.Embedding(padding_idx=pad_token_id): the pad row of the embedding gets no gradient
    through the lookup; the forward pass and every other row's gradient are unchanged."""
    import jax

    hf = {"model_type": "Dream", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
          "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 40, "rms_norm_eps": 1e-6,
          "rope_theta": 1e6, "max_position_embeddings": 64, "tie_word_embeddings": True,
          "mask_token_id": 39, "pad_token_id": 3, "eos_token_id": 3}
    cfg = ModelConfig.from_hf_config(hf)
    assert cfg.padding_idx == 3 and ModelConfig.from_hf_config(cfg.to_hf_config()) == cfg
    assert get_preset("dream-7b").padding_idx == 151643 and get_preset("llada-8b").padding_idx is None
    tokens = jnp.asarray([[5, 3, 3, 7, 9, 3]])
    pos = jnp.arange(6)[None]
    info = full_info(jnp.ones((1, 6), bool))

    def grads(c):
        graphdef, params = split_model(init_model(c, seed=2))

        def loss(p):
            return jnp.sum(forward(graphdef, p, tokens, pos, info).logits[..., :8] ** 2)

        out = forward(graphdef, params, tokens, pos, info).logits
        return out, jax.grad(loss)(params)["embed_tokens"]["embedding"][...]

    out_pad, g_pad = grads(cfg)
    out_off, g_off = grads(cfg.replace(padding_idx=None))
    np.testing.assert_array_equal(np.asarray(out_pad), np.asarray(out_off))
    emb_only = grads(cfg.replace(tie_word_embeddings=False))[1]  # untied (Dream): the lookup alone trains the table
    assert np.all(np.asarray(emb_only)[3] == 0) and np.abs(np.asarray(emb_only)[[5, 7, 9]]).min() > 0
    assert np.abs(np.asarray(g_off)[3] - np.asarray(g_pad)[3]).max() > 0  # tied: the head still trains row 3
    rows = np.delete(np.arange(40), 3)
    np.testing.assert_allclose(np.asarray(g_pad)[rows], np.asarray(g_off)[rows], rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="padding_idx"):
        get_preset("tiny").replace(padding_idx=0).to_hf_config()
    with pytest.raises(ValueError, match="padding_idx"):
        cfg.replace(padding_idx=40)
