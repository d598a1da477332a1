"""Model families as strategies over one rows type, chosen by the model's ``config.family``.

A :class:`Family` says everything that differs between block-diffusion models
(SDAR/TraDo, ``"sdar"``) and full-attention models (LLaDA/MMaDA ``"llada"``,
Dream/DiffuCoder ``"dream"``): the sampler its sampler-config section builds,
the layout of its training rows (:mod:`tracerl_jax.rows`), the form of its
policy loss, its SFT rows, and which settings it cannot use. Everything else
of an RL or SFT loop (rewards, advantages, losses, updates) is shared::

    family = get_family(model_config.family)
    scfg = family.sampler_config(cfg.rollout, tokenizer, block_size=4, gen_length=256)
    sample_fn = family.make_sampler(graphdef, model_config, scfg)
    layout = family.layout(settings)          # rows for trajectory / baselines builders

A new family is a subclass registered in :data:`FAMILIES` under the
``ModelConfig.family`` name of its models.
"""

from tracerl_jax.families.base import FAMILIES, Family, RowSettings, family_of, get_family
from tracerl_jax.families.block import BlockFamily
from tracerl_jax.families.sequence import SequenceFamily

__all__ = ["FAMILIES", "BlockFamily", "Family", "RowSettings", "SequenceFamily", "family_of", "get_family"]
