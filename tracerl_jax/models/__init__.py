"""Model families (SDAR/TraDo, LLaDA/MMaDA, Dream/DiffuCoder: one NNX decoder with
layout flags), value model, presets and HF checkpoint I/O."""

from tracerl_jax.models.config import SUPPORTED_MODEL_TYPES, ModelConfig
from tracerl_jax.models.hf_io import (hf_key_map, load_hf_checkpoint, read_hf_config, save_hf_checkpoint,
                                     shipped_checkpoint)
from tracerl_jax.models.presets import PRESET_NAMES, get_preset
from tracerl_jax.models.transformer import (
    ForwardOutput,
    Transformer,
    cache_init_fn,
    forward,
    full_sampler_forward_fn,
    init_model,
    make_cache,
    predictions,
    relayout_layers,
    sampler_forward_fn,
    shift_logits,
    split_model,
    stack_layer_params,
    unstack_layer_params,
    validate_inputs,
)
from tracerl_jax.models.value import ValueModel, init_value_model, value_forward, value_model_from_policy

__all__ = [
    "ForwardOutput",
    "ModelConfig",
    "PRESET_NAMES",
    "SUPPORTED_MODEL_TYPES",
    "Transformer",
    "ValueModel",
    "cache_init_fn",
    "forward",
    "full_sampler_forward_fn",
    "get_preset",
    "hf_key_map",
    "init_model",
    "init_value_model",
    "load_hf_checkpoint",
    "make_cache",
    "predictions",
    "read_hf_config",
    "relayout_layers",
    "shipped_checkpoint",
    "sampler_forward_fn",
    "save_hf_checkpoint",
    "shift_logits",
    "split_model",
    "stack_layer_params",
    "unstack_layer_params",
    "validate_inputs",
    "value_forward",
    "value_model_from_policy",
]
