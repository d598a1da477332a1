"""Model configuration for every supported decoder family.

One frozen dataclass describes every shape and numeric choice of a model, so
it can be a static argument of ``jax.jit`` and part of an NNX graphdef. The
three checkpoint families of docs/algorithms.md §12 are one architecture (pre-norm
RMSNorm decoder, half-rotation RoPE, GQA, SwiGLU, external attention mask)
that differs only in a few flags:

============  ===============  =======  ========  ============  ==========================
family        model_type       qk_norm  qkv_bias  logits_shift  checkpoint names
============  ===============  =======  ========  ============  ==========================
``sdar``      sdar, qwen3      True     False     False         Qwen (``model.layers.*``)
``llada``     llada, mmada     False    False*    False         OLMo (``model.transformer.*``)
``dream``     dream, qwen2     False    True      True          Qwen (``model.layers.*``)
============  ===============  =======  ========  ============  ==========================

(*) ``include_qkv_bias`` in a LLaDA config turns it on. The flags default
to the family's values (``None`` means "the family default") and may be
overridden for experiments; a checkpoint can only be written for layouts its
config format can express (:meth:`ModelConfig.to_hf_config` says which flag
is in the way). ``mmada`` is MMaDA's text backbone (``MMadaModelLM`` is a
``LLaDAModelLM``); ``qwen2`` is a plain Qwen2 checkpoint read in the Dream
layout (an AR model's logits predict the next token, which is the Dream shift).

Numeric fields are never silently defaulted when read from a checkpoint
(docs/algorithms.md §12, quirk Q-M1): ``from_hf_config`` (in
:mod:`tracerl_jax.models.hf_config`) reads each one explicitly from
``config.json`` and names the missing field otherwise.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Mapping, Optional

import jax.numpy as jnp

SUPPORTED_MODEL_TYPES = ("sdar", "qwen3", "llada", "mmada", "dream", "qwen2")
MODEL_FAMILIES = {"sdar": "sdar", "qwen3": "sdar", "llada": "llada", "mmada": "llada", "dream": "dream",
                  "qwen2": "dream"}
# The layout each family's checkpoints have (and the only one its config format can express,
# except LLaDA's qkv_bias).
FAMILY_LAYOUT = {
    "sdar": dict(qk_norm=True, qkv_bias=False, logits_shift=False),
    "llada": dict(qk_norm=False, qkv_bias=False, logits_shift=False),
    "dream": dict(qk_norm=False, qkv_bias=True, logits_shift=True),
}
_LAYOUT_FLAGS = ("qk_norm", "qkv_bias", "logits_shift")
ATTENTION_IMPLS = ("dense", "blockwise", "splash")
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
    """Shapes and numerics of a decoder of any supported family (see the module docstring).

    Attributes:
      vocab_size: rows of the embedding matrix **and** columns of the logits
        ``V``. For LLaDA this is ``embedding_size`` (which may exceed the
        tokenizer's ``vocab_size``: the logits then have ``embedding_size``
        columns, as in the reference, and the extra rows are never produced
        by the tokenizer). Token ids are validated against it.
      hidden_size: model width ``d``.
      intermediate_size: SwiGLU hidden width.
      num_layers: decoder layers.
      num_heads: query heads ``H``.
      num_kv_heads: key/value heads ``Hkv`` (``H % Hkv == 0``, GQA).
      head_dim: per-head width ``D`` (Qwen3 sets it explicitly; LLaDA and
        Dream use ``hidden_size / num_heads``).
      rope_theta: RoPE base. Required: the reference's fallbacks disagree (Q-M1).
      max_position_embeddings: largest position the checkpoint was trained for
        (LLaDA: ``max_sequence_length``).
      rms_norm_eps: epsilon of every RMSNorm (layer norms and QK-norm).
      tokenizer_vocab_size: the tokenizer's id count when it is smaller than
        ``vocab_size`` (LLaDA's ``vocab_size`` < ``embedding_size``); ``None``
        when they agree. Recorded so a LLaDA config round-trips and so callers
        can restrict sampling to real ids; the model itself ignores it.
      tie_word_embeddings: logits use the embedding matrix (no ``lm_head``;
        LLaDA's ``weight_tying``).
      qk_norm: per-head RMSNorm over ``head_dim`` on q and k (Qwen3/SDAR).
        ``None`` = the family default.
      qkv_bias: biases on q/k/v projections (Dream/Qwen2; LLaDA's
        ``include_qkv_bias``). ``None`` = the family default.
      logits_shift: logits at ``i`` predict token ``i+1`` (Dream). Recorded
        for samplers and trainers, which apply the shift (docs/algorithms.md §2.4,
        §5); :func:`~tracerl_jax.models.forward` always returns **unshifted**
        logits. ``None`` = the family default.
      param_dtype: storage dtype of parameters.
      dtype: compute dtype of activations and matmuls (norms, softmax and
        logits are float32 regardless).
      remat: rematerialise each layer in the backward pass (with
        ``scan_layers``: each step of the scan).
      scan_layers: store the decoder layers' parameters stacked (a leading
        ``[num_layers]`` axis on every layer parameter) and run them with one
        ``lax.scan``, so compile time does not grow with depth
        (benchmarks/README.md, "Compile time"). Same function as the
        unrolled layers (float rounding aside) and, for a given seed, the
        same initial weights; its KV cache uses the stacked layout
        (:mod:`tracerl_jax.kv_cache`). Not a checkpoint property: HF
        checkpoints are per-layer either way, and ``relayout_layers``
        converts a model.
      attention_impl: attention of the no-cache forward (training rows,
        scoring): ``"dense"`` scores all ``N x N`` pairs and masks them (XLA
        einsums, bit-stable, the reference path); ``"blockwise"`` visits only
        the query/key tiles the mask allows
        (:mod:`tracerl_jax.blockwise_attention`; on a TPU backend it routes to
        Pallas splash attention); ``"splash"`` requires splash (TPU). Same
        results up to float rounding. Cached (sampler) forwards are dense.
      attention_q_tile, attention_k_tile: query/key tile lengths of the
        blockwise path (defaults measured best on CPU; splash uses
        ``attention_k_tile`` rounded up to a multiple of 128 as its block). A
        multiple of the block size skips block structure cleanly.
      mask_token_id, pad_token_id, eos_token_id: special ids (``None`` if
        unknown; read them from the tokenizer where the checkpoint lacks them).
      model_type: one of ``SUPPORTED_MODEL_TYPES`` (written back to
        ``config.json``; selects the checkpoint key names).
      padding_idx: an embedding row that gets no gradient through the token
        lookup (PyTorch's ``nn.Embedding(padding_idx=...)``), or None. Dream's
        model builds its embedding with ``padding_idx = pad_token_id``, so
        reading a Dream ``config.json`` sets it (docs/algorithms.md §12.3);
        the forward pass is unchanged. A tied LM head still trains that row.
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
    qk_norm: Optional[bool] = None
    qkv_bias: Optional[bool] = None
    logits_shift: Optional[bool] = None
    param_dtype: str = "float32"
    dtype: str = "float32"
    remat: bool = False
    mask_token_id: Optional[int] = None
    pad_token_id: Optional[int] = None
    eos_token_id: Optional[int] = None
    model_type: str = "sdar"
    tokenizer_vocab_size: Optional[int] = None
    attention_impl: str = "dense"
    attention_q_tile: int = 64
    attention_k_tile: int = 64
    scan_layers: bool = False
    padding_idx: Optional[int] = None

    def __post_init__(self):
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"model_type must be one of {SUPPORTED_MODEL_TYPES}, got {self.model_type!r}")
        for name, default in FAMILY_LAYOUT[self.family].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}, got {self.attention_impl!r}")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "head_dim", "max_position_embeddings", "attention_q_tile", "attention_k_tile"):
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
        for name in ("tie_word_embeddings", "remat", "scan_layers") + _LAYOUT_FLAGS:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        object.__setattr__(self, "param_dtype", canonical_dtype(self.param_dtype, "param_dtype"))
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype, "dtype"))
        tv = self.tokenizer_vocab_size
        if tv is not None:
            if isinstance(tv, bool) or not isinstance(tv, int) or not 0 < tv <= self.vocab_size:
                raise ValueError(f"tokenizer_vocab_size must be an int in (0, vocab_size={self.vocab_size}] "
                                 f"(the embedding rows), got {tv!r}")
            if tv == self.vocab_size:
                # One canonical form, so configs compare equal however they were built.
                object.__setattr__(self, "tokenizer_vocab_size", None)
        for name in ("mask_token_id", "pad_token_id", "eos_token_id", "padding_idx"):
            v = getattr(self, name)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < self.vocab_size:
                raise ValueError(f"{name} must be an int in [0, vocab_size={self.vocab_size}), got {v!r}")

    # ------------------------------------------------------------------ dtypes

    @property
    def compute_dtype(self):
        """The ``jnp`` compute dtype."""
        return _DTYPES[self.dtype]

    @property
    def params_dtype(self):
        """The ``jnp`` parameter dtype."""
        return _DTYPES[self.param_dtype]

    @property
    def family(self) -> str:
        """``"sdar"``, ``"llada"`` or ``"dream"`` (see the module docstring)."""
        return MODEL_FAMILIES[self.model_type]

    def replace(self, **changes) -> "ModelConfig":
        """A copy with ``changes`` applied (validated again).

        Changing ``model_type`` to another family resets the layout flags
        (``qk_norm``, ``qkv_bias``, ``logits_shift``) that ``changes`` does not
        set to the new family's defaults, so ``get_preset("tiny",
        model_type="dream")`` is a Dream-layout model rather than a Dream
        model with SDAR's QK-norm.
        """
        new_type = changes.get("model_type", self.model_type)
        if new_type in MODEL_FAMILIES and MODEL_FAMILIES[new_type] != self.family:
            for name in _LAYOUT_FLAGS:
                changes.setdefault(name, None)
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------ HF config

    @classmethod
    def from_hf_config(cls, hf: Mapping[str, Any], **overrides) -> "ModelConfig":
        """Reads a Hugging Face ``config.json`` dict of any supported family.

        ``model_type`` selects the reader: ``sdar``/``qwen3`` (Qwen3 names),
        ``llada``/``mmada`` (OLMo names: ``d_model``, ``n_heads``, ...),
        ``Dream``/``dream``/``qwen2`` (Qwen2 names). Every numeric field is read
        explicitly; a missing one is a ValueError naming it. Architecture
        switches the port does not implement (RoPE scaling, sliding windows,
        ALiBi, LayerNorm, ...) are rejected by name.

        Args:
          hf: the parsed ``config.json``.
          **overrides: ``ModelConfig`` fields that win over the file (dtypes,
            ``remat``, special ids the file lacks).

        Raises:
          ValueError: unsupported ``model_type``, a missing or invalid field.
        """
        from tracerl_jax.models import hf_config

        fields = hf_config.read_fields(hf)
        fields.update(overrides)
        return cls(**fields)

    def to_hf_config(self) -> dict:
        """The ``config.json`` dict that :meth:`from_hf_config` reads back.

        Raises:
          ValueError: the config's layout flags cannot be expressed in its
            family's config format (e.g. ``qk_norm`` for LLaDA).
        """
        from tracerl_jax.models import hf_config

        return hf_config.write_config(self)
