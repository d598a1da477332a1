"""Full-attention models (LLaDA / MMaDA, Dream / DiffuCoder): the full-attention sampler and
single-sequence rows (§2, §5, §6.4, §9.2, §10.2)."""

from __future__ import annotations

from typing import Mapping, Optional

from tracerl_jax import baselines
from tracerl_jax.families.base import FAMILIES, Family, RowSettings, section_get
from tracerl_jax.rows import Rows, SequenceLayout
from tracerl_jax.sampling import FullSamplerConfig, make_full_sampler
from tracerl_jax.sampling.full_sampler import TARGETS

# Block-sampler strategy names -> the full-attention remasking rule (§2.3/§2.4): a static quota, or
# every candidate at or above the threshold (inclusive here, strict for block models).
REMASKING = {"low_confidence_static": "low_confidence_static", "low_confidence_dynamic": "threshold"}


class SequenceFamily(Family):
    """LLaDA (``"llada"``) or Dream (``"dream"``, logits shifted by one): bidirectional attention over the
    whole canvas, trained on ``[prompt | noisy response]`` rows.

    Args:
      name: ``"llada"`` or ``"dream"``.
    """

    # §6.4 [REF]: no log-ratio clamp, a per-row token mean, an unnormalised KL.
    policy_loss_defaults = {"log_ratio_clip": None, "normalizer": "row_tokens", "kl_normalizer": "sum"}
    normalizer = "row_tokens"

    def __init__(self, name: str):
        self.name = name
        self.sft_methods = ("semi-ar", "random_masking") + (("ar",) if name == "dream" else ())

    def layout(self, settings: RowSettings) -> SequenceLayout:
        return SequenceLayout(self.name, pad_id=settings.pad_id, compat=settings.compat)

    def scores_completion_only(self, settings: RowSettings) -> bool:
        # The reference scores every canvas position but the tail pads (§5).
        return settings.compat != "reference"

    def sft_lengths(self, gen_length: int, max_response_len: Optional[int]) -> dict:
        # Train on the sampler's canvas (the response, EOS, PAD filler): the model attends to every
        # canvas position while it decodes (§10.2 pads to max_gen_length).
        return dict(response_len=gen_length, max_response_len=min(max_response_len or gen_length, gen_length))

    def sft_rows(self, method, key, pairs, settings: RowSettings, *, ratio=None, num_draws=1) -> Rows:
        """``semi-ar`` (groups of ``block_size`` positions left to right), ``random_masking``
        (``num_draws`` rows, one ratio each) or Dream's ``ar`` (§10.2)."""
        self.check_sft_settings(method, ratio, num_draws)
        p, v, r = pairs.prompt_ids, pairs.prompt_valid, pairs.response_ids
        kw = dict(layout=self.layout(settings), mask_id=settings.mask_id, pad_id=settings.pad_id,
                  lower_p=settings.lower_p, upper_p=settings.upper_p, post_num=settings.post_num)
        if method == "semi-ar":
            return baselines.semi_ar_sft_rows(key, p, v, r, group_size=settings.block_size, ratio=ratio, **kw)
        if method == "random_masking":
            return baselines.random_masking_rows(key, p, v, r, num_draws=num_draws, **kw)
        return baselines.ar_sft_rows(p, v, r, pad_id=settings.pad_id, post_num=settings.post_num)

    def check_sampler_section(self, section: Mapping, name: str = "sampler") -> None:
        strategy = section_get(section, "strategy", "low_confidence_static")
        if strategy not in REMASKING:
            raise ValueError(f"{name}.strategy={strategy!r} has no full-attention rule; a {self.name} model takes "
                             f"one of {tuple(REMASKING)} (static quota, or threshold >= {name}.threshold)")
        if section_get(section, "target", "confidence") not in TARGETS:
            raise ValueError(f"{name}.target must be one of {TARGETS}, got {section_get(section, 'target')!r}")
        if section_get(section, "further_horizon") is not None and not section_get(section, "use_cache", False):
            raise ValueError(f"{name}.further_horizon={section_get(section, 'further_horizon')} needs "
                             f"{name}.use_cache=True (without the prefix cache every step sees the whole canvas)")

    def sampler_config(self, section: Mapping, tokenizer, *, block_size: int, gen_length: int,
                       name: str = "sampler") -> FullSamplerConfig:
        self.check_sampler_section(section, name)
        get = lambda k, d=None: section_get(section, k, d)  # noqa: E731
        steps = get("steps")
        if steps is None:  # the block models' per-block budget: steps_per_block in every block
            steps = get("steps_per_block", block_size) * (gen_length // max(block_size, 1))
        try:
            return FullSamplerConfig(
                gen_length=gen_length, mask_id=tokenizer.mask_id, pad_id=tokenizer.pad_id, eos_id=tokenizer.eos_id,
                family=self.name, block_size=block_size, steps=steps,
                remasking=REMASKING[get("strategy", "low_confidence_static")], threshold=get("threshold", 0.95),
                target=get("target", "confidence"), temperature=get("temperature", 1.0), top_p=get("top_p", 1.0),
                top_k=get("top_k", 0), alg_temp=get("alg_temp", 0.0),
                pad_target_penalty=get("pad_target_penalty", 1.0), early_stop=get("early_stop"),
                use_cache=get("use_cache", False), further_horizon=get("further_horizon"),
                compat=get("compat", "recommended"))
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None

    def make_sampler(self, graphdef, model_config, sampler_config, engine=None):
        from tracerl_jax.models import cache_init_fn, full_sampler_forward_fn

        if engine is not None:
            raise ValueError(f"the slot engine decodes block-diffusion models only, not {self.name!r} models")

        if not isinstance(sampler_config, FullSamplerConfig):
            raise ValueError(f"a {self.name} model takes a FullSamplerConfig, got {type(sampler_config).__name__}")
        if sampler_config.family != self.name:
            raise ValueError(f"sampler family {sampler_config.family!r} does not match the model's {self.name!r}")
        return make_full_sampler(full_sampler_forward_fn(graphdef), cache_init_fn(model_config), sampler_config,
                                 vocab_size=model_config.vocab_size,
                                 max_positions=model_config.max_position_embeddings)

    def check_rl_settings(self, rollout: Mapping, rl: Mapping) -> None:
        if section_get(rl, "pack_rounds") is not None:
            raise ValueError(f"rl.pack_rounds={section_get(rl, 'pack_rounds')!r} applies to block models only: "
                             "full-attention rows have no clean copy for the rounds to share")
        if section_get(rl, "mask_ratio") not in (None, "row"):
            raise ValueError(f"rl.mask_ratio={section_get(rl, 'mask_ratio')!r} applies to block models only; "
                             "full-attention baselines draw one masking ratio per row (§9.2): leave it None "
                             "(or 'row')")

    def check_sft_settings(self, method: str, ratio: Optional[str], num_draws: int) -> None:
        super().check_sft_settings(method, ratio, num_draws)
        if ratio not in (None, "row", "token"):
            raise ValueError(f"sft.ratio={ratio!r}: full-attention semi-ar draws one ratio per row or per token "
                             "(None = row, token [REF]); 'block' is for block models")
        if not isinstance(num_draws, int) or isinstance(num_draws, bool) or num_draws < 1:
            raise ValueError(f"sft.num_draws must be an int >= 1, got {num_draws!r}")


FAMILIES.register("llada", SequenceFamily("llada"))
FAMILIES.register("dream", SequenceFamily("dream"))
