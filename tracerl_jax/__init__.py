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
* Training rows, scores, losses, advantages: :mod:`tracerl_jax.trajectory`,
  :mod:`tracerl_jax.scoring`, :mod:`tracerl_jax.losses`,
  :mod:`tracerl_jax.advantages`, :mod:`tracerl_jax.baselines`; for
  full-attention models :mod:`tracerl_jax.trajectory_full` (``FullRows``,
  ``build_full_rows``, ``rows_from_full_rollout``) and
  :mod:`tracerl_jax.baselines_full` (random-masking/coupled RL rows, SFT rows).
* Sharded train steps: :mod:`tracerl_jax.train`.
* One RL iteration's stages: :mod:`tracerl_jax.rl` (and :mod:`tracerl_jax.rl_full`
  for the stages whose rows differ under full attention).
* Rewards, tasks, data, tokenizers: :mod:`tracerl_jax.rewards`,
  :mod:`tracerl_jax.tasks`, :mod:`tracerl_jax.data`, :mod:`tracerl_jax.tokenizers`.
"""

from tracerl_jax import (advantages, attention, baselines, baselines_full, kv_cache, losses, rl, rl_full, scoring,
                         trajectory, trajectory_full)
from tracerl_jax.advantages import group_normalize, step_gae
from tracerl_jax.attention import MaskInfo, dense_mask, extended_info, full_info
from tracerl_jax.baselines_full import full_ar_sft_rows, full_random_masking_rows, full_semi_ar_sft_rows
from tracerl_jax.losses import masked_nll, policy_loss, value_loss
from tracerl_jax.models import (ModelConfig, forward, full_sampler_forward_fn, get_preset, init_model,
                                load_hf_checkpoint, sampler_forward_fn, save_hf_checkpoint, split_model)
from tracerl_jax.sampling import (BlockSamplerConfig, FullSamplerConfig, Rollout, make_block_sampler,
                                  make_full_sampler)
from tracerl_jax.scoring import rows_from_rollout, trajectory_logprobs, trajectory_values
from tracerl_jax.tokenizers import load_tokenizer
from tracerl_jax.trajectory import TrainRows, build_rows
from tracerl_jax.trajectory_full import FullRows, build_full_rows, rows_from_full_rollout

__version__ = "0.1.0"

__all__ = [
    "BlockSamplerConfig", "FullRows", "FullSamplerConfig", "MaskInfo", "ModelConfig", "Rollout", "TrainRows",
    "advantages", "attention", "baselines", "baselines_full", "build_full_rows", "build_rows", "dense_mask",
    "extended_info", "forward", "full_ar_sft_rows", "full_info", "full_random_masking_rows",
    "full_sampler_forward_fn", "full_semi_ar_sft_rows", "get_preset", "group_normalize", "init_model", "kv_cache",
    "load_hf_checkpoint", "load_tokenizer", "losses", "make_block_sampler", "make_full_sampler", "masked_nll",
    "policy_loss", "rl", "rl_full", "rows_from_full_rollout", "rows_from_rollout", "sampler_forward_fn",
    "save_hf_checkpoint", "scoring", "split_model", "step_gae", "trajectory", "trajectory_full",
    "trajectory_logprobs", "trajectory_values", "value_loss",
]
