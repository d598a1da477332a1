"""Model configuration for the block-diffusion decoder family (SDAR / TraDo).

One frozen dataclass describes every shape and numeric choice of a model, so
it can be a static argument of ``jax.jit`` and part of an NNX graphdef.
Numeric fields are never silently defaulted when read from a checkpoint
(ALGORITHMS.md §12, quirk Q-M1): ``from_hf_config`` reads each one
explicitly from ``config.json`` and names the missing field otherwise.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Mapping, Optional

import jax.numpy as jnp

SUPPORTED_MODEL_TYPES = ("sdar", "qwen3")
_ARCHITECTURES = {"sdar": "SDARForCausalLM", "qwen3": "Qwen3ForCausalLM"}
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def canonical_dtype(value: Any, field: str) -> str:
    """Normalises a dtype spec (``"bf16"``, ``jnp.bfloat16``, ...) to a name in ``_DTYPES``."""
    aliases = {"fp32": "float32", "f32": "float32", "bf16": "bfloat16", "fp16": "float16", "f16": "float16"}
    if isinstance(value, str):
        name = aliases.get(value.lower(), value.lower())
    else:
        try:
            name = jnp.dtype(value).name
        except TypeError as e:
            raise ValueError(f"{field}: {value!r} is not a dtype") from e
    if name not in _DTYPES:
        raise ValueError(f"{field}: unsupported dtype {value!r}; expected one of {sorted(_DTYPES)}")
    return name


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shapes and numerics of a Qwen3-style (SDAR/TraDo) decoder.

    Attributes:
      vocab_size: rows of the embedding and columns of the logits.
      hidden_size: model width ``d``.
      intermediate_size: SwiGLU hidden width.
      num_layers: decoder layers.
      num_heads: query heads ``H``.
      num_kv_heads: key/value heads ``Hkv`` (``H % Hkv == 0``, GQA).
      head_dim: per-head width ``D`` (Qwen3 sets it explicitly; it need not
        equal ``hidden_size / num_heads``).
      rope_theta: RoPE base. Required: the reference's fallbacks disagree (Q-M1).
      max_position_embeddings: largest position the checkpoint was trained for.
      rms_norm_eps: epsilon of every RMSNorm (layer norms and QK-norm).
      tie_word_embeddings: logits use the embedding matrix (no ``lm_head``).
      qk_norm: per-head RMSNorm over ``head_dim`` on q and k (Qwen3/SDAR).
      qkv_bias: biases on q/k/v projections (Dream/Qwen2).
      logits_shift: logits at ``i`` predict token ``i+1`` (Dream). Carried for
        callers; the forward pass itself never shifts.
      param_dtype: storage dtype of parameters.
      dtype: compute dtype of activations and matmuls (norms, softmax and
        logits are float32 regardless).
      remat: rematerialise each layer in the backward pass.
      mask_token_id, pad_token_id, eos_token_id: special ids (``None`` if
        unknown; read them from the tokenizer where the checkpoint lacks them).
      model_type: ``"sdar"`` or ``"qwen3"`` (written back to ``config.json``).
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float
    max_position_embeddings: int
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    qk_norm: bool = True
    qkv_bias: bool = False
    logits_shift: bool = False
    param_dtype: str = "float32"
    dtype: str = "float32"
    remat: bool = False
    mask_token_id: Optional[int] = None
    pad_token_id: Optional[int] = None
    eos_token_id: Optional[int] = None
    model_type: str = "sdar"

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "head_dim", "max_position_embeddings"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be divisible by num_kv_heads ({self.num_kv_heads})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim ({self.head_dim}) must be even for half-rotation RoPE")
        for name in ("rope_theta", "rms_norm_eps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not v > 0:
                raise ValueError(f"{name} must be a positive number, got {v!r}")
            object.__setattr__(self, name, float(v))
        for name in ("tie_word_embeddings", "qk_norm", "qkv_bias", "logits_shift", "remat"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        object.__setattr__(self, "param_dtype", canonical_dtype(self.param_dtype, "param_dtype"))
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype, "dtype"))
        for name in ("mask_token_id", "pad_token_id", "eos_token_id"):
            v = getattr(self, name)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < self.vocab_size:
                raise ValueError(f"{name} must be an int in [0, vocab_size={self.vocab_size}), got {v!r}")
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"model_type must be one of {SUPPORTED_MODEL_TYPES}, got {self.model_type!r}")

    # ------------------------------------------------------------------ dtypes

    @property
    def compute_dtype(self):
        """The ``jnp`` compute dtype."""
        return _DTYPES[self.dtype]

    @property
    def params_dtype(self):
        """The ``jnp`` parameter dtype."""
        return _DTYPES[self.param_dtype]

    def replace(self, **changes) -> "ModelConfig":
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------ HF config

    @classmethod
    def from_hf_config(cls, hf: Mapping[str, Any], **overrides) -> "ModelConfig":
        """Reads a Hugging Face ``config.json`` dict (``model_type`` ``sdar``/``qwen3``).

        Every numeric field is read explicitly; a missing one is a ValueError
        naming it. ``rope_theta`` may be top-level (SDAR, transformers 4.x) or
        inside ``rope_parameters`` (transformers 5.x); RoPE scaling and sliding
        windows are rejected because the port does not implement them.

        Args:
          hf: the parsed ``config.json``.
          **overrides: ``ModelConfig`` fields that win over the file (dtypes,
            ``remat``, special ids the file lacks).

        Raises:
          ValueError: unsupported ``model_type``, a missing or invalid field.
        """
        model_type = hf.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"config.json model_type {model_type!r} is not supported; expected one of "
                             f"{SUPPORTED_MODEL_TYPES}")

        def need(key):
            if key not in hf or hf[key] is None:
                raise ValueError(f"config.json is missing required field {key!r}")
            return hf[key]

        if hf.get("hidden_act", "silu") != "silu":
            raise ValueError(f"config.json hidden_act {hf['hidden_act']!r} is not supported (expected 'silu')")
        if hf.get("attention_bias", False):
            # Qwen3's attention_bias also adds an o_proj bias, which this port does not model.
            raise ValueError("config.json attention_bias=true is not supported for sdar/qwen3")
        if hf.get("rope_scaling") is not None:
            raise ValueError(f"config.json rope_scaling must be null, got {hf['rope_scaling']!r}")
        if hf.get("use_sliding_window", False):
            raise ValueError("config.json use_sliding_window must be false")
        rope_theta = _read_rope_theta(hf)

        eos = hf.get("eos_token_id")
        if isinstance(eos, (list, tuple)):
            # Qwen-style configs may list several stop ids; the sampler takes one
            # (the first); pass eos_token_id= to choose another.
            eos = eos[0] if eos else None
        fields = dict(
            vocab_size=need("vocab_size"),
            hidden_size=need("hidden_size"),
            intermediate_size=need("intermediate_size"),
            num_layers=need("num_hidden_layers"),
            num_heads=need("num_attention_heads"),
            num_kv_heads=need("num_key_value_heads"),
            head_dim=need("head_dim"),
            rope_theta=rope_theta,
            max_position_embeddings=need("max_position_embeddings"),
            rms_norm_eps=need("rms_norm_eps"),
            tie_word_embeddings=need("tie_word_embeddings"),
            qk_norm=True,
            qkv_bias=False,
            mask_token_id=hf.get("mask_token_id"),
            pad_token_id=hf.get("pad_token_id"),
            eos_token_id=eos,
            model_type=model_type,
        )
        fields.update(overrides)
        return cls(**fields)

    def to_hf_config(self) -> dict:
        """The ``config.json`` dict that :meth:`from_hf_config` reads back.

        ``rope_theta`` is written top-level (as the published SDAR/TraDo
        checkpoints do; transformers 5.x also accepts it there).
        """
        if self.qkv_bias or not self.qk_norm:
            raise ValueError("to_hf_config: only the sdar/qwen3 layout (qk_norm, no qkv_bias) has an HF config here")
        out = {
            "architectures": [_ARCHITECTURES[self.model_type]],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": None,
            "attention_bias": False,
            "attention_dropout": 0.0,
            "use_sliding_window": False,
            "sliding_window": None,
            "tie_word_embeddings": self.tie_word_embeddings,
            "torch_dtype": self.param_dtype,
            "use_cache": False,
        }
        for name in ("mask_token_id", "pad_token_id", "eos_token_id"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out


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
                         "rope_parameters); it is never defaulted (ALGORITHMS.md Q-M1)")
    if top is not None and nested is not None and float(top) != float(nested):
        raise ValueError(f"config.json rope_theta ({top}) disagrees with rope_parameters.rope_theta ({nested})")
    return float(top if top is not None else nested)
