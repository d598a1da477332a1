"""Published full-attention checkpoint configs, read the way their config.json files name things.

* MMaDA (``model_type: "mmada"``, ``MMadaModelLM``, a ``LLaDAModelLM``
  subclass): a tiny config.json with the field set of a published MMaDA
  config.json (``tyfeld/MMaDA-Parallel-M``; the MMaDA-8B checkpoints carry
  the same keys: ``llm_vocab_size`` 126464 text ids, ``new_vocab_size`` /
  ``embedding_size`` 134656 = text + ``codebook_size`` 8192 image codes,
  ``num_vq_tokens``, ``num_new_special_tokens``, OLMo names otherwise) over
  LLaDA-named safetensors loads as a LLaDA-layout model.
* DiffuCoder-7B: the ``diffucoder-7b`` preset against the facts of
  ``apple/DiffuCoder-7B-Instruct/config.json``.

No torch needed: the weights are written by :func:`save_hf_checkpoint`.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import safe_open

from tracerl_jax.attention import full_info
from tracerl_jax.models import (ModelConfig, forward, get_preset, init_model, load_hf_checkpoint,
                                save_hf_checkpoint, split_model)

TEXT_VOCAB, CODEBOOK = 40, 24            # tiny stand-ins for 126464 text ids + 8192 image codes
ROWS = TEXT_VOCAB + CODEBOOK
MASK, EOS = 36, 37


def mmada_config_json(**changes) -> dict:
    """A tiny MMaDA config.json: the published file's keys, tiny numbers."""
    hf = {
        "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0, "architectures": ["MMadaModelLM"],
        "attention_dropout": 0.0, "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
        "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig", "AutoModel": "modeling_llada.LLaDAModelLM",
                     "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM"},
        "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama", "codebook_size": CODEBOOK,
        "d_model": 32, "embedding_dropout": 0.0, "embedding_size": ROWS, "eos_token_id": EOS,
        "flash_attention": False, "include_bias": False, "include_qkv_bias": False, "init_cutoff_factor": None,
        "init_device": "meta", "init_fn": "mitchell", "init_std": 0.02, "input_emb_norm": False,
        "layer_norm_type": "rms", "layer_norm_with_affine": True, "llm_vocab_size": TEXT_VOCAB,
        "mask_token_id": MASK, "max_sequence_length": 64, "mlp_hidden_size": 64, "mlp_ratio": 4,
        "model_type": "mmada", "multi_query_attention": None, "n_heads": 4, "n_kv_heads": 4, "n_layers": 2,
        "new_vocab_size": ROWS, "num_new_special_tokens": 0, "num_vq_tokens": 16, "pad_token_id": EOS,
        # The keys after pad_token_id as LLaDA-8B's config.json has them.
        "precision": "amp_bf16", "residual_dropout": 0.0, "rms_norm_eps": 1e-5, "rope": True,
        "rope_full_precision": True, "rope_theta": 500000.0, "scale_logits": False, "use_cache": False,
        "vocab_size": ROWS, "weight_tying": False, "torch_dtype": "bfloat16",
    }
    hf.update(changes)
    return hf


def test_mmada_config_reads_as_a_llada_text_model():
    cfg = ModelConfig.from_hf_config(mmada_config_json())
    assert (cfg.model_type, cfg.family) == ("mmada", "llada")
    # Logits over every embedding row; the tokenizer's (text) ids are the first llm_vocab_size.
    assert (cfg.vocab_size, cfg.tokenizer_vocab_size) == (ROWS, TEXT_VOCAB)
    assert (cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.intermediate_size) == (32, 4, 4, 8, 64)
    assert (cfg.rope_theta, cfg.rms_norm_eps, cfg.max_position_embeddings) == (500000.0, 1e-5, 64)
    assert not (cfg.qk_norm or cfg.qkv_bias or cfg.logits_shift or cfg.tie_word_embeddings)
    assert (cfg.mask_token_id, cfg.pad_token_id, cfg.eos_token_id) == (MASK, EOS, EOS)
    # Written back, it keeps MMaDA's name for the text vocabulary and reads the same.
    out = cfg.to_hf_config()
    assert out["llm_vocab_size"] == TEXT_VOCAB and out["embedding_size"] == ROWS
    assert out["architectures"] == ["MMadaModelLM"] and ModelConfig.from_hf_config(out) == cfg
    with pytest.raises(ValueError, match=r"llm_vocab_size must be an int in \(0, embedding rows 64\]"):
        ModelConfig.from_hf_config(mmada_config_json(llm_vocab_size=ROWS + 1))


def test_mmada_checkpoint_loads_into_the_same_model(tmp_path):
    cfg = ModelConfig.from_hf_config(mmada_config_json())
    graphdef, params = split_model(init_model(cfg, seed=4))
    save_hf_checkpoint(params, cfg, tmp_path)
    # The checkpoint's own config.json (MMaDA's keys) replaces ours; the tensors keep LLaDA's names.
    (tmp_path / "config.json").write_text(json.dumps(mmada_config_json()))
    names = set()
    for f in tmp_path.glob("*.safetensors"):
        with safe_open(f, framework="numpy") as st:
            names |= set(st.keys())
    assert "model.transformer.wte.weight" in names and "model.transformer.ff_out.weight" in names
    loaded_cfg, model = load_hf_checkpoint(tmp_path)
    assert loaded_cfg == cfg
    g2, p2 = split_model(model)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, TEXT_VOCAB, (2, 12)), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(12), (2, 12))
    info = full_info(jnp.ones((2, 12), bool))
    want = forward(graphdef, params, tokens, positions, info).logits
    got = forward(g2, p2, tokens, positions, info).logits
    assert got.shape == (2, 12, ROWS)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)
    assert jax.tree.structure(p2) == jax.tree.structure(params)


def test_diffucoder_preset_matches_the_published_config():
    # apple/DiffuCoder-7B-Instruct config.json (model_type "Dream", DreamModel).
    hf = {"architectures": ["DreamModel"], "attention_dropout": 0.0,
          "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
          "bos_token_id": 151643, "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 3584,
          "initializer_range": 0.02, "intermediate_size": 18944, "mask_token_id": 151666,
          "max_position_embeddings": 131072, "max_window_layers": 28, "model_type": "Dream",
          "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4, "pad_token_id": 151643,
          "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000.0, "sliding_window": None,
          "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.51.3",
          "use_cache": False, "use_mrope": False, "use_sliding_window": False, "vocab_size": 152064}
    preset = get_preset("diffucoder-7b")
    # The preset keeps the tokenizer's <|dlm_pad|> (151667) where config.json says 151643.
    assert ModelConfig.from_hf_config(hf) == preset.replace(pad_token_id=151643)
    assert preset.max_position_embeddings == 131072 and preset.rope_theta == 1e6
    assert preset.head_dim == 128 and preset.qkv_bias and preset.logits_shift
