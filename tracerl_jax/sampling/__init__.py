"""Samplers that return tokens AND their trajectories (step maps)."""

from tracerl_jax.sampling.block_sampler import (BlockSamplerConfig, Rollout, make_block_sampler,
                                                validate_prompts)
from tracerl_jax.sampling.engine import EngineConfig, EngineStats, make_slot_engine
from tracerl_jax.sampling.full_sampler import FullSamplerConfig, make_full_sampler
from tracerl_jax.sampling.remasking import STRATEGIES, select, step_quotas
from tracerl_jax.sampling.token_sampling import Sampled, filter_logits, sample

__all__ = ["BlockSamplerConfig", "Rollout", "make_block_sampler", "validate_prompts", "EngineConfig",
           "EngineStats", "make_slot_engine", "FullSamplerConfig",
           "make_full_sampler", "STRATEGIES",
           "select", "step_quotas", "Sampled", "filter_logits", "sample"]
