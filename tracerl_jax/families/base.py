"""The :class:`Family` interface, its registry and the settings row builders take."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import numpy as np

from tracerl_jax.registry import Registry
from tracerl_jax import rows as rows_lib
from tracerl_jax.rows import COMPAT, Layout, Rows

# Sampler-section fields that only the full-attention sampler reads (docs/algorithms.md §2), with
# the value that leaves each off. A block model rejects any other value: silently ignoring a prefix
# cache or a Dream selection rule would make a run look like something it is not.
SEQUENCE_SAMPLER_FIELDS = {"steps": None, "target": "confidence", "alg_temp": 0.0, "pad_target_penalty": 1.0,
                           "early_stop": None, "use_cache": False, "further_horizon": None}


@dataclasses.dataclass(frozen=True)
class RowSettings:
    """How training rows are built, whatever the family (the RL/SFT config's row fields).

    Attributes:
      mask_id, pad_id: special token ids.
      block_size: ``b`` of the sampler (block models: the extended layout's blocks).
      shrink: decoding steps merged per TraceRL round (§4.2, §5).
      post_num: ``PAD`` tokens trained per sequence (None: the rule is off).
      lower_p, upper_p: the baselines' masking-ratio range (§9).
      mask_ratio: block baselines' ratio (``block`` | ``row`` | ``token``;
        None = the family default).
      num_draws: full-attention baselines' rows per response (§9.2).
      compat: ``recommended`` | ``reference`` (full attention: the rows'
        positions/padding and scoring convention, §5).
      pack: TraceRL rows of block models: ``C`` rounds of a response per
        packed model input (:func:`tracerl_jax.rows.pack_rows`); None: one
        round per row.
    """

    mask_id: int
    pad_id: int
    block_size: int
    shrink: int = 1
    post_num: Optional[int] = 0
    lower_p: float = 0.1
    upper_p: float = 0.9
    mask_ratio: Optional[str] = None
    num_draws: int = 1
    compat: str = "recommended"
    pack: Optional[int] = None

    def __post_init__(self):
        if self.compat not in COMPAT:
            raise ValueError(f"compat must be one of {COMPAT}, got {self.compat!r}")
        for name in ("block_size", "shrink", "num_draws"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if self.pack is not None:
            rows_lib.check_copies(self.pack)


class Family:
    """What differs between model families; one instance per family, in :data:`FAMILIES`.

    Attributes:
      name: the ``ModelConfig.family`` of its models.
      policy_loss_defaults: ``PolicyLossConfig`` field values of the
        reference's loss for these models (§6).
      normalizer: the reference's loss normaliser (§6.4): the default of the
        policy, value and SFT losses.
      sft_methods: the SFT row kinds it supports (§10).
    """

    name: str = ""
    policy_loss_defaults: Mapping[str, Any] = {}
    normalizer: str = "global_L1"
    sft_methods: tuple[str, ...] = ()

    # ---- rows ---------------------------------------------------------------

    def layout(self, settings: RowSettings) -> Layout:
        """The layout of this family's training rows."""
        raise NotImplementedError

    def scores_completion_only(self, settings: RowSettings) -> bool:
        """Whether TraceRL rows of a rollout score only completion tokens (else all but tail pads)."""
        return True

    def sft_rows(self, method: str, key, prompt_ids, prompt_valid, response_ids, settings: RowSettings, *,
                 ratio: Optional[str] = None, num_draws: int = 1) -> Rows:
        """SFT rows of one batch of ``(prompt, response)`` pairs (§10); shapes as the row builders."""
        raise NotImplementedError

    def sft_lengths(self, gen_length: int, max_response_len: Optional[int]) -> dict:
        """``encode_sft_pairs`` length arguments for this family's SFT rows."""
        return dict(max_response_len=max_response_len or None)

    # ---- sampling -----------------------------------------------------------

    def check_sampler_section(self, section: Mapping, name: str = "sampler") -> None:
        """Raises ``ValueError`` naming ``<name>.<field>`` for a setting these models cannot use."""
        raise NotImplementedError

    def sampler_config(self, section: Mapping, tokenizer, *, block_size: int, gen_length: int,
                       name: str = "sampler"):
        """The sampler settings of a config section (``strategy``, ``temperature``, ...)."""
        raise NotImplementedError

    def make_sampler(self, graphdef, model_config, sampler_config, engine=None):
        """``sample_fn(params, prompts, prompt_valid, rng=None, row_keys=None) -> Rollout``; with ``engine`` (a
        :class:`~tracerl_jax.sampling.EngineConfig`, block models only) the slot engine's."""
        raise NotImplementedError

    # ---- checks -------------------------------------------------------------

    def check_rl_settings(self, rollout: Mapping, rl: Mapping) -> None:
        """Raises ``ValueError`` naming the field for RL settings of the other family."""

    def check_sft_settings(self, method: str, ratio: Optional[str], num_draws: int) -> None:
        """Raises ``ValueError`` for SFT settings these models cannot use."""
        if method not in self.sft_methods:
            raise ValueError(f"sft.method must be one of {self.sft_methods} for a {self.name} model, got {method!r}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


FAMILIES: Registry = Registry("model family")


def get_family(name: str) -> Family:
    """The registered :class:`Family` named ``name`` (``"sdar"``, ``"llada"``, ``"dream"``)."""
    return FAMILIES.get(name)


def family_of(model_config) -> Family:
    """The :class:`Family` of a :class:`~tracerl_jax.models.ModelConfig`."""
    return get_family(model_config.family)


def section_get(section: Mapping, name: str, default=None):
    """``section[name]`` with a default, for dicts and ``ml_collections.ConfigDict`` alike."""
    getter = getattr(section, "get", None)
    return getter(name, default) if getter is not None else default
