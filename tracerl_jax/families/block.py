"""Block-diffusion models (SDAR / TraDo): the block sampler and the extended layout (§1, §3, §4, §9.1, §10.1)."""

from __future__ import annotations

from typing import Mapping, Optional

import numpy as np

from tracerl_jax import baselines, trajectory
from tracerl_jax.families.base import FAMILIES, SEQUENCE_SAMPLER_FIELDS, Family, RowSettings, section_get
from tracerl_jax.rows import ExtendedLayout, Rows
from tracerl_jax.sampling import BlockSamplerConfig, make_block_sampler


class BlockFamily(Family):
    """SDAR/TraDo: generated block by block with a KV cache, trained on ``[prompt | clean | noised]`` rows."""

    name = "sdar"
    policy_loss_defaults = {}  # PolicyLossConfig's defaults are this family's reference loss (§6.2)
    normalizer = "global_L1"
    sft_methods = ("semi-ar", "trace")

    def layout(self, settings: RowSettings) -> ExtendedLayout:
        return ExtendedLayout(settings.block_size)

    def sft_rows(self, method, key, pairs, settings: RowSettings, *, ratio=None, num_draws=1) -> Rows:
        """``semi-ar``: random in-block masks (§10.1); ``trace``: the left-to-right rounds of a step map
        that commits one token per step (the trajectory SFT of a response without a recorded trace)."""
        self.check_sft_settings(method, ratio, num_draws)
        if method == "semi-ar":
            return baselines.semi_ar_sft_rows(key, pairs.prompt_ids, pairs.prompt_valid, pairs.response_ids,
                                              layout=self.layout(settings), mask_id=settings.mask_id,
                                              pad_id=settings.pad_id, lower_p=settings.lower_p,
                                              upper_p=settings.upper_p, ratio=ratio or "block",
                                              post_num=settings.post_num)
        N, L1 = np.shape(pairs.response_ids)
        return trajectory.build_rows(pairs.prompt_ids, pairs.prompt_valid, pairs.response_ids,
                                     np.zeros((N, L1), np.int32), pairs.response_lengths,
                                     layout=self.layout(settings), mask_id=settings.mask_id, pad_id=settings.pad_id,
                                     shrink=settings.shrink, post_num=settings.post_num,
                                     has_step_map=np.zeros((N,), bool))

    def check_sampler_section(self, section: Mapping, name: str = "sampler") -> None:
        for field, off in SEQUENCE_SAMPLER_FIELDS.items():
            if section_get(section, field, off) != off:
                raise ValueError(f"{name}.{field}={section_get(section, field)!r} applies to full-attention models "
                                 f"(LLaDA/Dream) only; this is a block-diffusion model (family {self.name!r}); "
                                 f"leave it at {off!r}")

    def sampler_config(self, section: Mapping, tokenizer, *, block_size: int, gen_length: int,
                       name: str = "sampler") -> BlockSamplerConfig:
        self.check_sampler_section(section, name)
        get = lambda k, d=None: section_get(section, k, d)  # noqa: E731
        try:
            return BlockSamplerConfig(
                gen_length=gen_length, mask_id=tokenizer.mask_id, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
                block_size=block_size, steps_per_block=get("steps_per_block", block_size),
                strategy=get("strategy", "low_confidence_dynamic"), threshold=get("threshold", 0.9),
                temperature=get("temperature", 1.0), top_k=get("top_k", 0), top_p=get("top_p", 1.0),
                max_new_tokens=get("max_new_tokens", None), compat=get("compat", "recommended"))
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None

    def make_sampler(self, graphdef, model_config, sampler_config, engine=None):
        from tracerl_jax.models import cache_init_fn, sampler_forward_fn
        from tracerl_jax.sampling import make_slot_engine

        if not isinstance(sampler_config, BlockSamplerConfig):
            raise ValueError(f"a {self.name} model takes a BlockSamplerConfig, got {type(sampler_config).__name__}")
        if engine is not None:   # the slot engine: the same rollouts, continuously batched
            return make_slot_engine(sampler_forward_fn(graphdef), cache_init_fn(model_config), sampler_config, engine,
                                    vocab_size=model_config.vocab_size,
                                    max_positions=model_config.max_position_embeddings)
        return make_block_sampler(sampler_forward_fn(graphdef), cache_init_fn(model_config), sampler_config,
                                  vocab_size=model_config.vocab_size,
                                  max_positions=model_config.max_position_embeddings)

    def check_rl_settings(self, rollout: Mapping, rl: Mapping) -> None:
        if section_get(rollout, "compat", "recommended") != "recommended":
            raise ValueError("rollout.compat='reference' is implemented in the RL loop for full-attention models "
                             "only (block models: BlockSamplerConfig(compat=...) in the library)")
        pack = section_get(rl, "pack_rounds")
        if pack is not None and (isinstance(pack, bool) or not isinstance(pack, int) or pack < 1):
            raise ValueError(f"rl.pack_rounds must be None or an int >= 1, got {pack!r}")
        if pack is not None and section_get(rl, "method", "TraceRL") != "TraceRL":
            raise ValueError(f"rl.pack_rounds packs the rounds of TraceRL rows; rl.method="
                             f"{section_get(rl, 'method')!r} builds one row per draw: leave it None")
        if section_get(rl, "num_draws", 1) != 1:
            raise ValueError(f"rl.num_draws={section_get(rl, 'num_draws')} applies to full-attention models only "
                             "(block baselines draw one row per response, §9.1)")

    def check_sft_settings(self, method: str, ratio: Optional[str], num_draws: int) -> None:
        super().check_sft_settings(method, ratio, num_draws)
        if num_draws != 1:
            raise ValueError(f"sft.num_draws={num_draws} applies to full-attention random_masking only")


FAMILIES.register("sdar", BlockFamily())
