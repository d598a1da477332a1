"""Checkpoint tensor names per family: HF key -> (param path, transpose?).

The NNX parameter tree is the same for every family (its names mirror the
Qwen ones: ``embed_tokens``, ``layers[i].self_attn.q_proj``, ...); only the
checkpoint names differ. PyTorch ``Linear`` weights are ``[out, in]`` and are
transposed to and from Flax kernels ``[in, out]``; biases and norm weights are
not.

* Qwen names (sdar/qwen3 §12.1, dream/qwen2 §12.3): ``model.embed_tokens``,
  ``model.layers.{i}.{input_layernorm,post_attention_layernorm}``,
  ``model.layers.{i}.self_attn.{q,k,v,o}_proj`` (+ ``{q,k,v}_proj.bias`` with
  ``qkv_bias``, + ``{q,k}_norm`` with ``qk_norm``),
  ``model.layers.{i}.mlp.{gate,up,down}_proj``, ``model.norm``, ``lm_head``.
* LLaDA names (llada/mmada §12.2): ``model.transformer.wte``,
  ``model.transformer.blocks.{i}.{attn_norm,ff_norm}``,
  ``model.transformer.blocks.{i}.{q_proj,k_proj,v_proj,attn_out}``, and the
  MLP ``ff_proj`` = **gate**, ``up_proj`` = up, ``ff_out`` = down;
  ``model.transformer.ln_f``; ``model.transformer.ff_out`` (the LM head).

A value model adds ``value_head.weight [1, hidden]`` in every family.
"""

from __future__ import annotations

from tracerl_jax.models.config import ModelConfig

KeyMap = dict[str, tuple[tuple, bool]]

VALUE_HEAD_KEY = "value_head.weight"
_EMBED_KEY = {"llada": "model.transformer.wte.weight", "qwen": "model.embed_tokens.weight"}
_HEAD_KEY = {"llada": "model.transformer.ff_out.weight", "qwen": "lm_head.weight"}


def _naming(config: ModelConfig) -> str:
    return "llada" if config.family == "llada" else "qwen"


def embed_key(config: ModelConfig) -> str:
    """The checkpoint name of the embedding matrix."""
    return _EMBED_KEY[_naming(config)]


def head_key(config: ModelConfig) -> str:
    """The checkpoint name of the (untied) LM head."""
    return _HEAD_KEY[_naming(config)]


def hf_key_map(config: ModelConfig, value_head: bool = False) -> KeyMap:
    """HF key -> (path in the pure param dict, transpose?) for every tensor of the model.

    Raises:
      ValueError: the config has a tensor its family has no checkpoint name
        for (QK-norm in a LLaDA layout).
    """
    m = _llada_keys(config) if _naming(config) == "llada" else _qwen_keys(config)
    if not config.tie_word_embeddings:
        m[head_key(config)] = (("lm_head", "kernel"), True)
    if value_head:
        m[VALUE_HEAD_KEY] = (("value_head", "kernel"), True)
    return m


def _qwen_keys(config: ModelConfig) -> KeyMap:
    m: KeyMap = {"model.embed_tokens.weight": (("embed_tokens", "embedding"), False)}
    for i in range(config.num_layers):
        pre = f"model.layers.{i}."
        m[pre + "input_layernorm.weight"] = (("layers", i, "input_layernorm", "scale"), False)
        m[pre + "post_attention_layernorm.weight"] = (("layers", i, "post_attention_layernorm", "scale"), False)
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            m[pre + f"self_attn.{proj}.weight"] = (("layers", i, "self_attn", proj, "kernel"), True)
        if config.qkv_bias:
            for proj in ("q_proj", "k_proj", "v_proj"):
                m[pre + f"self_attn.{proj}.bias"] = (("layers", i, "self_attn", proj, "bias"), False)
        if config.qk_norm:
            for norm in ("q_norm", "k_norm"):
                m[pre + f"self_attn.{norm}.weight"] = (("layers", i, "self_attn", norm, "scale"), False)
        for proj in ("gate_proj", "up_proj", "down_proj"):
            m[pre + f"mlp.{proj}.weight"] = (("layers", i, "mlp", proj, "kernel"), True)
    m["model.norm.weight"] = (("norm", "scale"), False)
    return m


# LLaDA block name -> our (module, projection); note ff_proj is the GATE (docs/algorithms.md §12.2).
_LLADA_PROJ = {
    "q_proj": ("self_attn", "q_proj"),
    "k_proj": ("self_attn", "k_proj"),
    "v_proj": ("self_attn", "v_proj"),
    "attn_out": ("self_attn", "o_proj"),
    "ff_proj": ("mlp", "gate_proj"),
    "up_proj": ("mlp", "up_proj"),
    "ff_out": ("mlp", "down_proj"),
}


def _llada_keys(config: ModelConfig) -> KeyMap:
    if config.qk_norm:
        raise ValueError(f"model_type {config.model_type!r}: qk_norm=True has no LLaDA checkpoint name "
                         "(LLaDA has no QK-norm)")
    m: KeyMap = {"model.transformer.wte.weight": (("embed_tokens", "embedding"), False)}
    for i in range(config.num_layers):
        pre = f"model.transformer.blocks.{i}."
        m[pre + "attn_norm.weight"] = (("layers", i, "input_layernorm", "scale"), False)
        m[pre + "ff_norm.weight"] = (("layers", i, "post_attention_layernorm", "scale"), False)
        for name, (module, proj) in _LLADA_PROJ.items():
            m[pre + f"{name}.weight"] = (("layers", i, module, proj, "kernel"), True)
        if config.qkv_bias:
            for name in ("q_proj", "k_proj", "v_proj"):
                m[pre + f"{name}.bias"] = (("layers", i, "self_attn", name, "bias"), False)
    m["model.transformer.ln_f.weight"] = (("norm", "scale"), False)
    return m
