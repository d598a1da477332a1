"""``config.json`` readers and writers, one pair per checkpoint family (docs/algorithms.md §12).

* ``sdar``/``qwen3``: Qwen3 names (``hidden_size``, ``num_hidden_layers``, ...,
  explicit ``head_dim``), QK-norm, no biases.
* ``llada``/``mmada``: OLMo names (``d_model``, ``n_heads``, ``n_kv_heads``,
  ``n_layers``, ``mlp_hidden_size``, ``embedding_size``, ``max_sequence_length``,
  ``weight_tying``, ``include_bias``, ``include_qkv_bias``, ...); MMaDA adds
  ``llm_vocab_size`` (the text ids; the embedding rows after them are image
  codes) and multimodal fields the text model ignores. Only the
  "llama" block with RMSNorm, SiLU gating and RoPE is implemented; every other
  OLMo switch is rejected by name. Several of these switches default to a
  *different* architecture in the OLMo config class (``block_type``
  "sequential", ``layer_norm_type`` "default", ``rope`` false,
  ``weight_tying`` true, ``include_bias`` true), so they must be present.
* ``Dream``/``dream``/``qwen2``: Qwen2 names, q/k/v biases (hard-coded in
  ``modeling_dream.py`` and transformers' Qwen2, whatever ``attention_bias``
  says), no o_proj bias, ``head_dim = hidden_size / num_attention_heads``.

``rope_theta`` is always read explicitly (Q-M1: the config classes default to
10000 while the checkpoints use 5e5 / 1e6).
"""

from __future__ import annotations

from typing import Any, Mapping

from tracerl_jax.models.config import FAMILY_LAYOUT, MODEL_FAMILIES, SUPPORTED_MODEL_TYPES

_ARCHITECTURES = {"sdar": "SDARForCausalLM", "qwen3": "Qwen3ForCausalLM", "llada": "LLaDAModelLM",
                  "mmada": "MMadaModelLM", "dream": "DreamModel", "qwen2": "Qwen2ForCausalLM"}
# Published Dream configs spell it "Dream" (DreamConfig.model_type); the port's name is lower case.
_HF_MODEL_TYPE = {"dream": "Dream"}


def canonical_model_type(model_type: Any) -> str:
    """The port's ``model_type`` for a ``config.json`` one (``"Dream"`` -> ``"dream"``).

    Raises:
      ValueError: an unsupported model type.
    """
    name = model_type.lower() if isinstance(model_type, str) and model_type.lower() == "dream" else model_type
    if name not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"config.json model_type {model_type!r} is not supported; expected one of "
                         f"{SUPPORTED_MODEL_TYPES} ('Dream' is accepted for dream)")
    return name


def read_fields(hf: Mapping[str, Any]) -> dict:
    """``ModelConfig`` keyword arguments read from a ``config.json`` dict.

    Raises:
      ValueError: unsupported ``model_type``, a missing, invalid or
        unsupported field (named).
    """
    if not isinstance(hf, Mapping):
        raise ValueError(f"config.json must be a JSON object, got {type(hf).__name__}")
    model_type = canonical_model_type(hf.get("model_type"))
    reader = {"sdar": _read_sdar, "llada": _read_llada, "dream": _read_dream}[MODEL_FAMILIES[model_type]]
    fields = reader(hf, model_type)
    fields["model_type"] = model_type
    return fields


def write_config(cfg) -> dict:
    """The ``config.json`` dict of a :class:`~tracerl_jax.models.ModelConfig`.

    Raises:
      ValueError: a layout flag or field the family's format cannot express.
    """
    family = cfg.family
    expressible = dict(FAMILY_LAYOUT[family])
    if family == "llada":
        expressible.pop("qkv_bias")  # include_qkv_bias
    for name, want in expressible.items():
        if getattr(cfg, name) != want:
            raise ValueError(f"to_hf_config: {name}={getattr(cfg, name)} cannot be expressed in a "
                             f"{cfg.model_type} config.json (its checkpoints always have {name}={want})")
    if cfg.tokenizer_vocab_size is not None and family != "llada":
        raise ValueError("to_hf_config: tokenizer_vocab_size is only expressible in a llada/mmada config.json "
                         "(vocab_size < embedding_size)")
    if cfg.padding_idx is not None and not (family == "dream" and cfg.padding_idx == cfg.pad_token_id):
        raise ValueError(f"to_hf_config: padding_idx={cfg.padding_idx} is only expressible in a Dream config.json, "
                         f"as its pad_token_id (got pad_token_id={cfg.pad_token_id})")
    out = {"llada": _write_llada, "sdar": _write_qwen, "dream": _write_qwen}[family](cfg)
    out["architectures"] = [_ARCHITECTURES[cfg.model_type]]
    out["model_type"] = _HF_MODEL_TYPE.get(cfg.model_type, cfg.model_type)
    out["torch_dtype"] = cfg.param_dtype
    out["use_cache"] = False
    for name in ("mask_token_id", "pad_token_id", "eos_token_id"):
        if getattr(cfg, name) is not None:
            out[name] = getattr(cfg, name)
    return dict(sorted(out.items()))


# ---------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------


def _need(hf: Mapping[str, Any], key: str):
    if key not in hf or hf[key] is None:
        raise ValueError(f"config.json is missing required field {key!r}")
    return hf[key]


def _expect(hf: Mapping[str, Any], key: str, want, *, required: bool = True) -> None:
    """``hf[key]`` must equal ``want``; absent is an error when ``required``."""
    if key not in hf or hf[key] is None:
        if required:
            raise ValueError(f"config.json is missing required field {key!r} (the port implements {key}={want!r})")
        return
    if hf[key] != want:
        raise ValueError(f"config.json {key}={hf[key]!r} is not supported (the port implements {key}={want!r})")


def _reject_true(hf: Mapping[str, Any], *keys: str) -> None:
    for key in keys:
        if hf.get(key):
            raise ValueError(f"config.json {key}={hf[key]!r} is not supported (must be false or absent)")


def _bool(hf: Mapping[str, Any], key: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"config.json {key} must be true or false, got {value!r}")
    return value


def _eos(hf: Mapping[str, Any]):
    eos = hf.get("eos_token_id")
    if isinstance(eos, (list, tuple)):
        # Qwen-style configs may list several stop ids; the sampler takes one
        # (the first); pass eos_token_id= to choose another.
        eos = eos[0] if eos else None
    return eos


def _special_ids(hf: Mapping[str, Any]) -> dict:
    return dict(mask_token_id=hf.get("mask_token_id"), pad_token_id=hf.get("pad_token_id"), eos_token_id=_eos(hf))


def _read_rope_theta(hf: Mapping[str, Any]) -> float:
    top = hf.get("rope_theta")
    params = hf.get("rope_parameters")
    nested = None
    if params is not None:
        if not isinstance(params, Mapping):
            raise ValueError(f"config.json rope_parameters must be a dict, got {params!r}")
        if params.get("rope_type", "default") != "default":
            raise ValueError(f"config.json rope_parameters.rope_type {params.get('rope_type')!r} is not "
                             "supported (only 'default')")
        nested = params.get("rope_theta")
    if top is None and nested is None:
        raise ValueError("config.json is missing required field 'rope_theta' (checked top level and "
                         "rope_parameters); it is never defaulted (docs/algorithms.md Q-M1)")
    if top is not None and nested is not None and float(top) != float(nested):
        raise ValueError(f"config.json rope_theta ({top}) disagrees with rope_parameters.rope_theta ({nested})")
    return float(top if top is not None else nested)


def _check_qwen_common(hf: Mapping[str, Any]) -> None:
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"config.json hidden_act {hf['hidden_act']!r} is not supported (expected 'silu')")
    if hf.get("rope_scaling") is not None:
        raise ValueError(f"config.json rope_scaling must be null, got {hf['rope_scaling']!r}")
    if hf.get("use_sliding_window", False):
        raise ValueError("config.json use_sliding_window must be false")
    layer_types = hf.get("layer_types")
    if layer_types is not None and any(t != "full_attention" for t in layer_types):
        raise ValueError(f"config.json layer_types must all be 'full_attention', got {sorted(set(layer_types))}")


def _qwen_shape(hf: Mapping[str, Any]) -> dict:
    return dict(
        vocab_size=_need(hf, "vocab_size"),
        hidden_size=_need(hf, "hidden_size"),
        intermediate_size=_need(hf, "intermediate_size"),
        num_layers=_need(hf, "num_hidden_layers"),
        num_heads=_need(hf, "num_attention_heads"),
        num_kv_heads=_need(hf, "num_key_value_heads"),
        rope_theta=_read_rope_theta(hf),
        max_position_embeddings=_need(hf, "max_position_embeddings"),
        rms_norm_eps=_need(hf, "rms_norm_eps"),
    )


def _derived_head_dim(hidden, heads, hidden_key: str, heads_key: str) -> int:
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (hidden, heads)):
        raise ValueError(f"config.json {hidden_key} ({hidden!r}) and {heads_key} ({heads!r}) must be positive ints")
    if hidden % heads:
        raise ValueError(f"config.json {hidden_key} ({hidden}) must be divisible by {heads_key} ({heads}): "
                         "head_dim = hidden / heads")
    return hidden // heads


# ---------------------------------------------------------------------------
# SDAR / TraDo / Qwen3 (§12.1)
# ---------------------------------------------------------------------------


def _read_sdar(hf: Mapping[str, Any], model_type: str) -> dict:
    _check_qwen_common(hf)
    if hf.get("attention_bias", False):
        # Qwen3's attention_bias also adds an o_proj bias, which this port does not model.
        raise ValueError("config.json attention_bias=true is not supported for sdar/qwen3")
    return dict(_qwen_shape(hf), head_dim=_need(hf, "head_dim"),
                tie_word_embeddings=_need(hf, "tie_word_embeddings"), **FAMILY_LAYOUT["sdar"], **_special_ids(hf))


def _write_qwen(cfg) -> dict:
    """Qwen2/Qwen3-named fields (``rope_theta`` top-level, as the published
    SDAR/TraDo/Dream checkpoints write it; transformers 5.x accepts it there)."""
    out = {
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": None,
        "attention_dropout": 0.0,
        "use_sliding_window": False,
        "sliding_window": None,
        "tie_word_embeddings": cfg.tie_word_embeddings,
    }
    if cfg.family == "sdar":
        out.update(head_dim=cfg.head_dim, attention_bias=False)
    else:
        derived = cfg.hidden_size // cfg.num_heads if cfg.hidden_size % cfg.num_heads == 0 else None
        if cfg.head_dim != derived:
            if cfg.model_type == "dream":
                raise ValueError(f"to_hf_config: head_dim={cfg.head_dim} cannot be expressed in a Dream config "
                                 f"(modeling_dream.py uses hidden_size / num_attention_heads = {derived})")
            out["head_dim"] = cfg.head_dim  # transformers' Qwen2 reads an explicit head_dim
    return out


# ---------------------------------------------------------------------------
# Dream / DiffuCoder / Qwen2 (§12.3)
# ---------------------------------------------------------------------------


def _read_dream(hf: Mapping[str, Any], model_type: str) -> dict:
    _check_qwen_common(hf)
    _reject_true(hf, "use_mrope", "mlp_bias")
    fields = _qwen_shape(hf)
    derived = _derived_head_dim(fields["hidden_size"], fields["num_heads"], "hidden_size", "num_attention_heads")
    head_dim = hf.get("head_dim")
    if head_dim is None:
        head_dim = derived
    elif model_type == "dream" and head_dim != derived:
        raise ValueError(f"config.json head_dim ({head_dim}) differs from hidden_size / num_attention_heads "
                         f"({derived}), which modeling_dream.py uses")
    # Both DreamConfig and Qwen2Config default to untied, so absence is unambiguous.
    tie = _bool(hf, "tie_word_embeddings", hf.get("tie_word_embeddings", False))
    ids = _special_ids(hf)
    # modeling_dream.py: nn.Embedding(vocab, hidden, padding_idx=config.pad_token_id).
    return dict(fields, head_dim=head_dim, tie_word_embeddings=tie, **FAMILY_LAYOUT["dream"], **ids,
                padding_idx=ids["pad_token_id"])


# ---------------------------------------------------------------------------
# LLaDA / MMaDA (§12.2; OLMo-style names)
# ---------------------------------------------------------------------------


def _read_llada(hf: Mapping[str, Any], model_type: str) -> dict:
    _expect(hf, "block_type", "llama")
    _expect(hf, "layer_norm_type", "rms")
    _expect(hf, "activation_type", "silu")
    _expect(hf, "rope", True)
    _expect(hf, "layer_norm_with_affine", True, required=False)
    _reject_true(hf, "alibi", "attention_layer_norm", "input_emb_norm", "scale_logits", "bias_for_layer_norm")
    if hf.get("clip_qkv") is not None:
        raise ValueError(f"config.json clip_qkv={hf['clip_qkv']!r} is not supported (must be null)")
    if _bool(hf, "include_bias", _need(hf, "include_bias")):
        # Biases on every projection, the LM head and the norms; no LLaDA/MMaDA checkpoint uses them.
        raise ValueError("config.json include_bias=true is not supported (only include_qkv_bias)")
    # A LLaDA addition to the OLMo config, defaulting to false there.
    qkv_bias = _bool(hf, "include_qkv_bias", hf.get("include_qkv_bias", False))

    d_model, n_heads = _need(hf, "d_model"), _need(hf, "n_heads")
    head_dim = _derived_head_dim(d_model, n_heads, "d_model", "n_heads")
    # OLMo semantics: null n_kv_heads means multi-head (or one head with multi_query_attention).
    mqa = hf.get("multi_query_attention")
    n_kv = hf.get("n_kv_heads")
    if n_kv is None:
        n_kv = 1 if mqa else n_heads
    elif mqa and n_kv != 1:
        raise ValueError(f"config.json multi_query_attention=true needs n_kv_heads 1 or null, got {n_kv!r}")
    mlp = hf.get("mlp_hidden_size")
    if mlp is None:
        if hf.get("mlp_ratio") is None:
            raise ValueError("config.json is missing required field 'mlp_hidden_size' (and 'mlp_ratio')")
        mlp = hf["mlp_ratio"] * d_model
    vocab = _need(hf, "vocab_size")
    emb = hf.get("embedding_size")
    rows = vocab if emb is None else emb
    if emb is not None and isinstance(emb, int) and isinstance(vocab, int) and emb < vocab:
        raise ValueError(f"config.json embedding_size ({emb}) must be >= vocab_size ({vocab})")
    text_vocab = vocab
    if model_type == "mmada" and hf.get("llm_vocab_size") is not None:
        # MMaDA's embedding holds the LLaDA text vocabulary (llm_vocab_size) followed by image
        # codes (codebook_size, new_vocab_size rows in all); only the text ids come from the tokenizer.
        text_vocab = hf["llm_vocab_size"]
        if not isinstance(text_vocab, int) or isinstance(text_vocab, bool) or not 0 < text_vocab <= rows:
            raise ValueError(f"config.json llm_vocab_size must be an int in (0, embedding rows {rows}], "
                             f"got {text_vocab!r}")
    return dict(
        vocab_size=rows,
        tokenizer_vocab_size=text_vocab if rows != text_vocab else None,
        hidden_size=d_model,
        intermediate_size=mlp,
        num_layers=_need(hf, "n_layers"),
        num_heads=n_heads,
        num_kv_heads=n_kv,
        head_dim=head_dim,
        rope_theta=_need(hf, "rope_theta"),
        max_position_embeddings=_need(hf, "max_sequence_length"),
        rms_norm_eps=_need(hf, "rms_norm_eps"),
        tie_word_embeddings=_bool(hf, "weight_tying", _need(hf, "weight_tying")),
        qk_norm=False,
        qkv_bias=qkv_bias,
        logits_shift=False,
        **_special_ids(hf),
    )


def _write_llada(cfg) -> dict:
    if cfg.head_dim * cfg.num_heads != cfg.hidden_size:
        raise ValueError(f"to_hf_config: head_dim={cfg.head_dim} cannot be expressed in a LLaDA config "
                         f"(d_model / n_heads = {cfg.hidden_size / cfg.num_heads})")
    out = _llada_fields(cfg)
    if cfg.model_type == "mmada" and cfg.tokenizer_vocab_size is not None:
        out["llm_vocab_size"] = cfg.tokenizer_vocab_size  # MMaDA's name for the text vocabulary
    return out


def _llada_fields(cfg) -> dict:
    return {
        "d_model": cfg.hidden_size,
        "n_heads": cfg.num_heads,
        "n_kv_heads": cfg.num_kv_heads,
        "n_layers": cfg.num_layers,
        "mlp_hidden_size": cfg.intermediate_size,
        "vocab_size": cfg.tokenizer_vocab_size or cfg.vocab_size,
        "embedding_size": cfg.vocab_size,
        "max_sequence_length": cfg.max_position_embeddings,
        "rope_theta": cfg.rope_theta,
        "rms_norm_eps": cfg.rms_norm_eps,
        "weight_tying": cfg.tie_word_embeddings,
        "include_bias": False,
        "include_qkv_bias": cfg.qkv_bias,
        "bias_for_layer_norm": False,
        "block_type": "llama",
        "layer_norm_type": "rms",
        "layer_norm_with_affine": True,
        "activation_type": "silu",
        "rope": True,
        "rope_full_precision": True,
        "alibi": False,
        "attention_layer_norm": False,
        "input_emb_norm": False,
        "scale_logits": False,
        "clip_qkv": None,
        "multi_query_attention": None,
        "attention_dropout": 0.0,
        "residual_dropout": 0.0,
        "embedding_dropout": 0.0,
    }
