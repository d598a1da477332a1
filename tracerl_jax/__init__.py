"""tracerl_jax: TraceRL (trajectory-aware RL for diffusion language models) in JAX/Flax.

The public API, re-exported. Pure functions over explicit pytrees; models are
Flax NNX modules split once into ``(graphdef, params)``.

* Models: :mod:`tracerl_jax.models` (``ModelConfig``, ``get_preset``,
  ``init_model``, ``split_model``, ``forward``, HF safetensors I/O, value model).
* Masks and cache: :mod:`tracerl_jax.attention` (``MaskInfo`` and the one mask
  predicate), :mod:`tracerl_jax.kv_cache`.
* Sampling with trajectories: :mod:`tracerl_jax.sampling` (block:
  ``BlockSamplerConfig``/``make_block_sampler``; full attention, LLaDA/Dream:
  ``FullSamplerConfig``/``make_full_sampler``).
* Training rows: :mod:`tracerl_jax.rows` (``Rows``: one type for every model
  family, model input ``[R, N]`` and per-token arrays ``[R, L1]``; the
  extended and single-sequence layouts), built by :mod:`tracerl_jax.trajectory`
  (TraceRL rounds) and :mod:`tracerl_jax.baselines` (random masking, coupled,
  SFT rows); scored by :mod:`tracerl_jax.scoring`.
* Losses, advantages: :mod:`tracerl_jax.losses`, :mod:`tracerl_jax.advantages`.
* Model families as strategies (sampler, row layout, loss form, SFT rows):
  :mod:`tracerl_jax.families`; methods by name: :mod:`tracerl_jax.registry`.
* Sharded train steps: :mod:`tracerl_jax.train`.
* One RL iteration's stages: :mod:`tracerl_jax.rl`.
* Rewards, tasks, data, tokenizers: :mod:`tracerl_jax.rewards`,
  :mod:`tracerl_jax.tasks`, :mod:`tracerl_jax.data`, :mod:`tracerl_jax.tokenizers`.
"""

from tracerl_jax import (advantages, attention, baselines, families, kv_cache, losses, registry, rl, rows, scoring,
                         trajectory)
from tracerl_jax.advantages import ADVANTAGE_ESTIMATORS, group_normalize, step_gae, step_gae_rows
from tracerl_jax.attention import MaskInfo, dense_mask, extended_info, full_info
from tracerl_jax.baselines import ar_sft_rows, coupled_rows, random_masking_rows, semi_ar_sft_rows
from tracerl_jax.families import FAMILIES, Family, RowSettings, family_of, get_family
from tracerl_jax.losses import POLICY_LOSSES, masked_nll, policy_loss, value_loss
from tracerl_jax.models import (ModelConfig, cache_init_fn, forward, full_sampler_forward_fn, get_preset, init_model,
                                load_hf_checkpoint, sampler_forward_fn, save_hf_checkpoint, split_model)
from tracerl_jax.registry import Registry
from tracerl_jax.rows import ExtendedLayout, Rows, SequenceLayout, flat_rounds, pack_rows, response_mask
from tracerl_jax.sampling import (BlockSamplerConfig, FullSamplerConfig, Rollout, make_block_sampler,
                                  make_full_sampler)
from tracerl_jax.scoring import trajectory_logprobs, trajectory_values
from tracerl_jax.tokenizers import load_tokenizer
from tracerl_jax.trajectory import build_rows, rows_from_rollout

__version__ = "0.1.0"

__all__ = [
    "ADVANTAGE_ESTIMATORS", "BlockSamplerConfig", "ExtendedLayout", "FAMILIES", "Family", "FullSamplerConfig",
    "MaskInfo", "ModelConfig", "POLICY_LOSSES", "Registry", "Rollout", "RowSettings", "Rows", "SequenceLayout",
    "advantages", "ar_sft_rows", "attention", "baselines", "build_rows", "cache_init_fn", "coupled_rows",
    "dense_mask", "extended_info", "families", "family_of", "flat_rounds", "forward", "full_info", "full_sampler_forward_fn",
    "get_family", "get_preset", "group_normalize", "init_model", "kv_cache", "load_hf_checkpoint", "load_tokenizer",
    "losses", "make_block_sampler", "make_full_sampler", "masked_nll", "pack_rows", "policy_loss", "random_masking_rows",
    "registry", "response_mask", "rl", "rows", "rows_from_rollout", "sampler_forward_fn", "save_hf_checkpoint",
    "scoring", "semi_ar_sft_rows", "split_model", "step_gae", "step_gae_rows", "trajectory", "trajectory_logprobs",
    "trajectory_values", "value_loss",
]
