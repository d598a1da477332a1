"""tracerl_jax: TraceRL (trajectory-aware RL for diffusion language models) in JAX/Flax.

The public API, re-exported. Pure functions over explicit pytrees; models are
Flax NNX modules split once into ``(graphdef, params)``.

* Models: :mod:`tracerl_jax.models` (``ModelConfig``, ``get_preset``,
  ``init_model``, ``split_model``, ``forward``, HF safetensors I/O, value model).
* Masks and cache: :mod:`tracerl_jax.attention` (``MaskInfo`` and the one mask
  predicate), :mod:`tracerl_jax.kv_cache`.
* Sampling with trajectories: :mod:`tracerl_jax.sampling`.
* Training rows, scores, losses, advantages: :mod:`tracerl_jax.trajectory`,
  :mod:`tracerl_jax.scoring`, :mod:`tracerl_jax.losses`,
  :mod:`tracerl_jax.advantages`, :mod:`tracerl_jax.baselines`.
* Sharded train steps: :mod:`tracerl_jax.train`.
* One RL iteration's stages: :mod:`tracerl_jax.rl`.
* Rewards, tasks, data, tokenizers: :mod:`tracerl_jax.rewards`,
  :mod:`tracerl_jax.tasks`, :mod:`tracerl_jax.data`, :mod:`tracerl_jax.tokenizers`.
"""

from tracerl_jax import advantages, attention, baselines, kv_cache, losses, scoring, trajectory
from tracerl_jax.advantages import group_normalize, step_gae
from tracerl_jax.attention import MaskInfo, dense_mask, extended_info
from tracerl_jax.losses import masked_nll, policy_loss, value_loss
from tracerl_jax.models import (ModelConfig, forward, get_preset, init_model, load_hf_checkpoint,
                                save_hf_checkpoint, split_model)
from tracerl_jax.sampling import BlockSamplerConfig, Rollout, make_block_sampler
from tracerl_jax.scoring import rows_from_rollout, trajectory_logprobs, trajectory_values
from tracerl_jax.tokenizers import load_tokenizer
from tracerl_jax.trajectory import TrainRows, build_rows

__version__ = "0.1.0"

__all__ = [
    "BlockSamplerConfig", "MaskInfo", "ModelConfig", "Rollout", "TrainRows", "advantages", "attention",
    "baselines", "build_rows", "dense_mask", "extended_info", "forward", "get_preset", "group_normalize",
    "init_model", "kv_cache", "load_hf_checkpoint", "load_tokenizer", "losses", "make_block_sampler",
    "masked_nll", "policy_loss", "rows_from_rollout", "save_hf_checkpoint", "scoring", "split_model",
    "step_gae", "trajectory", "trajectory_logprobs", "trajectory_values", "value_loss",
]
