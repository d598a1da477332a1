"""Named model configurations: tiny test models and the published checkpoint shapes.

The published presets exist for sizing (memory plans, sharding dry runs,
random-init benchmarks). A real checkpoint is always loaded through its own
``config.json`` (:func:`tracerl_jax.models.load_hf_checkpoint`), never through
a preset, so a wrong guess here cannot silently change a loaded model.

Sources (public files found by code search; "[UNSURE]" = not verified
against the checkpoint's own config.json):

* SDAR-1.7B-Chat: a copy of ``JetLM/SDAR-1.7B-Chat/config.json`` vendored in
  ``hxhcreate/DARE`` (``models/SDAR-1dot7B-Chat/config.json``): hidden 2048,
  28 layers, 16/8 heads, head_dim 128, intermediate 6144, vocab 151936,
  rope_theta 1e6, eps 1e-6, max_position 32768, tie_word_embeddings false,
  mask_token_id 151669, eos/bos 151643, no pad_token_id (the presets use the
  Qwen tokenizer pad <|endoftext|> 151643, docs/algorithms.md §0). Verified.
* Qwen3-4B / Qwen3-8B shapes (which SDAR-4B/8B and TraDo-4B/8B inherit):
  hidden 2560/4096, 36 layers, 32/8 heads, head_dim 128, intermediate
  9728/12288, vocab 151936, rope_theta 1e6, eps 1e-6 (Megatron model scripts
  in ``zyzshishui/slime``; Qwen3 config dicts in test suites; Qwen3-4B tied,
  Qwen3-8B untied). Verified for Qwen3; inherited by SDAR/TraDo [UNSURE].
* LLaDA-8B (Instruct and Base share the architecture): config.json fields
  quoted by several public checkpoint validators (``d_model`` 4096,
  ``n_layers`` 32, ``n_heads`` = ``n_kv_heads`` 32, ``mlp_hidden_size`` 12288,
  ``vocab_size`` = ``embedding_size`` 126464, ``rope_theta`` 5e5,
  ``rms_norm_eps`` 1e-5, ``max_sequence_length`` 4096, ``weight_tying``
  false, ``include_bias`` false, ``mask_token_id`` 126336, ``eos_token_id``
  126081) and a published LLaDA-style config.json with ``pad_token_id``
  126081 (docs/algorithms.md §12.2 [UNSURE] values, all confirmed).
* Dream-v0-7B: the Qwen2.5-7B shape (``hidden_size`` 3584, 28 layers, 28/4
  heads, head_dim 128, ``intermediate_size`` 18944, ``vocab_size`` 152064,
  ``rope_theta`` 1e6, eps 1e-6, untied, ``max_position_embeddings`` 131072)
  as public Dream config parsers and tests quote it; mask 151666, pad and
  config eos 151643 (§12.3), as config.json has them. The chat EOS of the
  rollouts is ``<|im_end|>`` 151645: read it from the tokenizer.
* DiffuCoder-7B: Dream architecture adapted from Qwen2.5-Coder-7B, which has
  the Qwen2.5-7B shape above. ``apple/DiffuCoder-7B-Instruct/config.json``
  (``model_type`` "Dream", ``DreamModel``): ``max_position_embeddings``
  131072 (not Qwen2.5-Coder-7B's 32768), ``rope_theta`` 1e6,
  ``rope_scaling`` null, ``use_sliding_window`` false, ``use_mrope`` false,
  mask 151666, bos/eos/pad 151643. Verified; the Base checkpoint's
  config.json (same size, same architecture) was not read [UNSURE]. Its
  tokenizer pads with ``<|dlm_pad|>`` 151667 while config.json says 151643
  (public checkpoint registries note the difference); the preset keeps the
  tokenizer's pad.
"""

from __future__ import annotations

from tracerl_jax.models.config import ModelConfig

QWEN_MASK_ID = 151669  # <|MASK|> (docs/algorithms.md §0)
QWEN_PAD_ID = 151643   # <|endoftext|>
QWEN_VOCAB = 151936
QWEN2_VOCAB = 152064   # Qwen2.5-7B / Dream / DiffuCoder embedding rows
DREAM_MASK_ID = 151666
LLADA_MASK_ID = 126336  # <|mdm_mask|>
LLADA_EOS_ID = 126081   # <|endoftext|> (also the pad id)


def _sdar(hidden, layers, heads, kv, inter, tie, **kw) -> ModelConfig:
    return ModelConfig(
        vocab_size=QWEN_VOCAB, hidden_size=hidden, intermediate_size=inter, num_layers=layers,
        num_heads=heads, num_kv_heads=kv, head_dim=128, rope_theta=1_000_000.0,
        max_position_embeddings=kw.pop("max_position_embeddings", 32768), rms_norm_eps=1e-6,
        tie_word_embeddings=tie, mask_token_id=QWEN_MASK_ID, pad_token_id=QWEN_PAD_ID,
        eos_token_id=kw.pop("eos_token_id", QWEN_PAD_ID), model_type="sdar", **kw)


def _dream(max_position: int, pad: int, model_type: str = "dream") -> ModelConfig:
    return ModelConfig(
        vocab_size=QWEN2_VOCAB, hidden_size=3584, intermediate_size=18944, num_layers=28, num_heads=28,
        num_kv_heads=4, head_dim=128, rope_theta=1_000_000.0, max_position_embeddings=max_position,
        rms_norm_eps=1e-6, tie_word_embeddings=False, mask_token_id=DREAM_MASK_ID, pad_token_id=pad,
        eos_token_id=QWEN_PAD_ID, model_type=model_type,
        padding_idx=QWEN_PAD_ID)  # modeling_dream.py: nn.Embedding(padding_idx=config.json's pad_token_id)


def _presets() -> dict:
    return {
        # vocab 512 covers the shipped task SentencePiece tokenizer (160 ids:
        # <pad> 0, </s> 1 = eos, <mask> 4); examples override vocab_size and
        # the special ids from the tokenizer they load.
        "tiny": ModelConfig(
            vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
            num_kv_heads=2, head_dim=16, rope_theta=10_000.0, max_position_embeddings=2048,
            rms_norm_eps=1e-6, tie_word_embeddings=False, mask_token_id=4, pad_token_id=0,
            eos_token_id=1, model_type="sdar"),
        # A model a 2-core CPU can train for a few hundred steps (~4.9M params
        # at vocab 512).
        "small": ModelConfig(
            vocab_size=512, hidden_size=256, intermediate_size=768, num_layers=6, num_heads=8,
            num_kv_heads=4, head_dim=32, rope_theta=10_000.0, max_position_embeddings=4096,
            rms_norm_eps=1e-6, tie_word_embeddings=True, mask_token_id=4, pad_token_id=0,
            eos_token_id=1, model_type="sdar"),
        # Verified against the vendored config.json (see module docstring).
        "sdar-1.7b": _sdar(2048, 28, 16, 8, 6144, tie=False),
        # [UNSURE] tie_word_embeddings: Qwen3-4B is tied (docs/algorithms.md §12.1
        # expects TraDo-4B tied too) but SDAR-1.7B unties its tied Qwen3
        # base, so SDAR-4B may be untied. max_position 32768 and eos 151643
        # copied from SDAR-1.7B [UNSURE].
        "sdar-4b": _sdar(2560, 36, 32, 8, 9728, tie=True),
        # [UNSURE] max_position / eos copied from SDAR-1.7B; untied like Qwen3-8B.
        "sdar-8b": _sdar(4096, 36, 32, 8, 12288, tie=False),
        # TraDo = SDAR + TraceRL, same architecture [UNSURE: tie, max_position;
        # chat EOS may be <|im_end|> 151645, read it from the tokenizer].
        "trado-4b": _sdar(2560, 36, 32, 8, 9728, tie=True),
        "trado-8b": _sdar(4096, 36, 32, 8, 12288, tie=False),
        # Full-attention families (module docstring). LLaDA: OLMo-style names,
        # bidirectional, no biases, logits at i score token i.
        "llada-8b": ModelConfig(
            vocab_size=126464, hidden_size=4096, intermediate_size=12288, num_layers=32, num_heads=32,
            num_kv_heads=32, head_dim=128, rope_theta=500_000.0, max_position_embeddings=4096,
            rms_norm_eps=1e-5, tie_word_embeddings=False, mask_token_id=LLADA_MASK_ID,
            pad_token_id=LLADA_EOS_ID, eos_token_id=LLADA_EOS_ID, model_type="llada"),
        # Dream: Qwen2 layout with q/k/v biases; logits at i score token i+1.
        "dream-7b": _dream(131072, QWEN_PAD_ID),
        "diffucoder-7b": _dream(131072, 151667),
    }


def _with_full_attention_variants(presets: dict) -> dict:
    # tiny-llada, small-dream, ...: the test/CPU sizes in each full-attention layout, so a
    # config string ("random:small-llada") can pick a family without code.
    for size in ("tiny", "small"):
        for family in ("llada", "dream"):
            presets[f"{size}-{family}"] = presets[size].replace(model_type=family)
    return presets


PRESET_NAMES = tuple(_with_full_attention_variants(_presets()))


def get_preset(name: str, **overrides) -> ModelConfig:
    """A named :class:`ModelConfig`, optionally with fields overridden.

    Args:
      name: one of ``PRESET_NAMES`` (``tiny``, ``small``, ``sdar-1.7b``,
        ``sdar-4b``, ``sdar-8b``, ``trado-4b``, ``trado-8b``, ``llada-8b``,
        ``dream-7b``, ``diffucoder-7b``, and ``tiny-llada``, ``tiny-dream``,
        ``small-llada``, ``small-dream``: the SDAR-layout ``tiny``/``small``
        sizes in a full-attention layout, the same as passing
        ``model_type="llada"`` / ``"dream"``).
      **overrides: fields to replace (e.g. ``vocab_size`` from a tokenizer,
        ``dtype="bfloat16"``, ``remat=True``).

    Raises:
      ValueError: unknown name or invalid override.
    """
    presets = _with_full_attention_variants(_presets())
    if name not in presets:
        raise ValueError(f"unknown preset {name!r}; expected one of {sorted(presets)}")
    cfg = presets[name]
    return cfg.replace(**overrides) if overrides else cfg
