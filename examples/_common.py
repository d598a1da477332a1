"""Plumbing shared by the example scripts (sft.py, evaluate.py, sample.py, tracerl.py).

Everything here turns an ``ml_collections`` config into library objects:
model configs from presets and tokenizers, samplers, example lists, and
policies loaded from our exports or from Hugging Face checkpoints. The
algorithms themselves live in the ``tracerl_jax`` package.

The scripts put this directory on ``sys.path`` (Python does so for the
script being run), so ``import _common`` works from the repository root or
from anywhere else.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, NamedTuple, Optional

import jax
import ml_collections
import numpy as np

from tracerl_jax.models import (ModelConfig, cache_init_fn, full_sampler_forward_fn, get_preset, init_model,
                                load_hf_checkpoint, sampler_forward_fn, split_model)
from tracerl_jax.sampling import BlockSamplerConfig, FullSamplerConfig, make_block_sampler, make_full_sampler
from tracerl_jax.sampling.full_sampler import TARGETS as FULL_TARGETS
from tracerl_jax.tasks import Example, load_examples
from tracerl_jax.tokenizers import Tokenizer, load_tokenizer
from tracerl_jax.train import checkpoint as ckpt_lib

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"

# ModelConfig fields that a config's ``model`` section may override (None = keep the preset's).
MODEL_OVERRIDES = ("hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                   "max_position_embeddings", "tie_word_embeddings", "dtype", "param_dtype", "remat",
                   "attention_impl")

# Sampler-section fields only the full-attention sampler reads (ALGORITHMS.md §2), with the value
# that leaves each one off. A block model rejects any other value: silently ignoring a prefix
# cache or a Dream selection rule would make a run look like something it is not.
FULL_ONLY = {"steps": None, "target": "confidence", "alg_temp": 0.0, "pad_target_penalty": 1.0,
             "early_stop": None, "use_cache": False, "further_horizon": None}
# Block strategy names -> the full-attention remasking rule (§2.3/§2.4): a static quota, or every
# candidate at or above the threshold (inclusive there, strict for block models).
FULL_REMASKING = {"low_confidence_static": "low_confidence_static", "low_confidence_dynamic": "threshold"}


def config_to_dict(config: ml_collections.ConfigDict) -> dict:
    """The config as plain JSON (for checkpoints and exports)."""
    return json.loads(config.to_json_best_effort())


# ---------------------------------------------------------------------------
# Models and samplers
# ---------------------------------------------------------------------------


def model_config(model: ml_collections.ConfigDict, tokenizer: Tokenizer) -> ModelConfig:
    """A preset with the tokenizer's vocabulary and special ids and the config's overrides.

    Args:
      model: a config section with ``preset`` and optional fields named in
        :data:`MODEL_OVERRIDES` (None keeps the preset's value).
      tokenizer: supplies ``vocab_size`` and the mask/pad/eos ids.
    """
    overrides = {k: model.get(k) for k in MODEL_OVERRIDES if model.get(k) is not None}
    return get_preset(model.preset).replace(
        vocab_size=tokenizer.vocab_size, mask_token_id=tokenizer.mask_id, pad_token_id=tokenizer.pad_id,
        eos_token_id=tokenizer.eos_id, **overrides)


def num_params(params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def check_sampler_section(s, family: str, section: str = "sampler") -> None:
    """Rejects sampler settings the model family cannot use, naming the config field.

    Args:
      s: a sampler config section (``ConfigDict`` or dict).
      family: the model's ``config.family`` (``"sdar"``, ``"llada"``, ``"dream"``).
      section: the section's name in the config, for the messages.

    Raises:
      ValueError: a full-attention-only field (:data:`FULL_ONLY`) set for a
        block model; for a full-attention model, a strategy without a
        full-attention rule, an unknown ``target`` (Dream/LLaDA selection
        score), or ``further_horizon`` without ``use_cache``.
    """
    if family == "sdar":
        for name, off in FULL_ONLY.items():
            if s.get(name, off) != off:
                raise ValueError(f"{section}.{name}={s.get(name)!r} applies to full-attention models (LLaDA/Dream) "
                                 f"only; this is a block-diffusion model (family {family!r}); leave it at {off!r}")
        return
    strategy = s.get("strategy", "low_confidence_static")
    if strategy not in FULL_REMASKING:
        raise ValueError(f"{section}.strategy={strategy!r} has no full-attention rule; a {family} model takes one of "
                         f"{tuple(FULL_REMASKING)} (static quota, or threshold >= {section}.threshold)")
    if s.get("target", "confidence") not in FULL_TARGETS:
        raise ValueError(f"{section}.target must be one of {FULL_TARGETS}, got {s.get('target')!r}")
    if s.get("further_horizon") is not None and not s.get("use_cache", False):
        raise ValueError(f"{section}.further_horizon={s.get('further_horizon')} needs {section}.use_cache=True "
                         "(without the prefix cache every step sees the whole canvas)")


def sampler_config(s, tokenizer: Tokenizer, *, block_size: int, gen_length: int, family: str = "sdar",
                   section: str = "sampler"):
    """The sampler settings of a config section for a model of ``family``.

    Block models (``sdar``) get a :class:`BlockSamplerConfig`; LLaDA/Dream a
    :class:`FullSamplerConfig` (ALGORITHMS.md §2) built from the same fields
    (``strategy`` -> ``remasking`` by :data:`FULL_REMASKING`; ``steps``
    default ``steps_per_block`` per block) plus the full-only ones of
    :data:`FULL_ONLY`.

    Args:
      s: the section (``strategy``, ``temperature``, ``threshold``, ``top_k``,
        ``top_p``, ``steps_per_block``, ``compat``, and for full attention
        ``steps``, ``target``, ``alg_temp``, ``pad_target_penalty``,
        ``early_stop``, ``use_cache``, ``further_horizon``).
      tokenizer: supplies the special ids.
      block_size, gen_length: the canvas (``gen_length % block_size == 0``).
      family: the model's ``config.family``.
      section: the section's name, for error messages.

    Raises:
      ValueError: see :func:`check_sampler_section`; invalid values are
        reported with the section name.
    """
    check_sampler_section(s, family, section)
    try:
        if family == "sdar":
            return BlockSamplerConfig(
                gen_length=gen_length, mask_id=tokenizer.mask_id, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
                block_size=block_size, steps_per_block=s.get("steps_per_block", block_size),
                strategy=s.get("strategy", "low_confidence_dynamic"), threshold=s.get("threshold", 0.9),
                temperature=s.get("temperature", 1.0), top_k=s.get("top_k", 0), top_p=s.get("top_p", 1.0),
                max_new_tokens=s.get("max_new_tokens", None), compat=s.get("compat", "recommended"))
        steps = s.get("steps")
        if steps is None:  # the block models' per-block budget: steps_per_block in every block
            steps = s.get("steps_per_block", block_size) * (gen_length // max(block_size, 1))
        return FullSamplerConfig(
            gen_length=gen_length, mask_id=tokenizer.mask_id, pad_id=tokenizer.pad_id, eos_id=tokenizer.eos_id,
            family=family, block_size=block_size, steps=steps,
            remasking=FULL_REMASKING[s.get("strategy", "low_confidence_static")],
            threshold=s.get("threshold", 0.95), target=s.get("target", "confidence"),
            temperature=s.get("temperature", 1.0), top_p=s.get("top_p", 1.0), top_k=s.get("top_k", 0),
            alg_temp=s.get("alg_temp", 0.0), pad_target_penalty=s.get("pad_target_penalty", 1.0),
            early_stop=s.get("early_stop"), use_cache=s.get("use_cache", False),
            further_horizon=s.get("further_horizon"), compat=s.get("compat", "recommended"))
    except ValueError as e:
        raise ValueError(f"{section}: {e}") from None


def make_sampler(graphdef, config: ModelConfig, scfg):
    """The compiled sampler of a model: block (:class:`BlockSamplerConfig`) or
    full attention (:class:`FullSamplerConfig`, with the prefix KV cache when
    ``scfg.use_cache``)."""
    if isinstance(scfg, FullSamplerConfig):
        if scfg.family != config.family:
            raise ValueError(f"sampler family {scfg.family!r} does not match the model's {config.family!r}")
        return make_full_sampler(full_sampler_forward_fn(graphdef), cache_init_fn(config), scfg,
                                 vocab_size=config.vocab_size, max_positions=config.max_position_embeddings)
    return make_block_sampler(sampler_forward_fn(graphdef), cache_init_fn(config), scfg,
                              vocab_size=config.vocab_size, max_positions=config.max_position_embeddings)


class Policy(NamedTuple):
    """A loaded (or freshly initialised) policy.

    Attributes:
      config: its :class:`ModelConfig`.
      graphdef, params: from ``split_model``.
      tokenizer: the matching tokenizer.
      source: ``"export"``, ``"hf"`` or ``"random"``.
      extra: what the export recorded beside the weights (task, lengths, ...).
    """

    config: ModelConfig
    graphdef: Any
    params: Any
    tokenizer: Tokenizer
    source: str
    extra: dict


def is_export_dir(path) -> bool:
    return (Path(path) / ckpt_lib.MODEL_CONFIG_NAME).is_file()


def is_hf_dir(path) -> bool:
    p = Path(path)
    return (p / "config.json").is_file() and any(p.glob("*.safetensors"))


def load_policy(checkpoint: str, *, tokenizer: Optional[str] = None, dtype: str = "float32",
                model: Optional[ml_collections.ConfigDict] = None, seed: int = 0) -> Policy:
    """Loads a policy from an export, a Hugging Face directory, or random init.

    Args:
      checkpoint: an :func:`~tracerl_jax.train.checkpoint.export_model`
        directory (``model_config.json`` + ``params/``), a Hugging Face
        directory of any supported family (SDAR/TraDo, LLaDA/MMaDA,
        Dream/DiffuCoder: ``config.json`` + safetensors), or ``""`` for a
        randomly initialised model from ``model``.
      tokenizer: tokenizer name/path; default: what the export recorded, the
        HF directory itself, or ``"tasks"``.
      dtype: parameter dtype for HF checkpoints.
      model: model config section for random init.
      seed: init seed for random init.

    Raises:
      ValueError: ``checkpoint`` is neither kind of directory.
    """
    if not checkpoint:
        tok = load_tokenizer(tokenizer or "tasks")
        cfg = model_config(model if model is not None else ml_collections.ConfigDict({"preset": "tiny"}), tok)
        graphdef, params = split_model(init_model(cfg, seed=seed))
        return Policy(cfg, graphdef, params, tok, "random", {})
    if is_export_dir(checkpoint):
        extra = ckpt_lib.read_extra(checkpoint)
        tok = load_tokenizer(tokenizer or extra.get("tokenizer", "tasks"))
        cfg, graphdef, params = ckpt_lib.load_model(checkpoint)
        return Policy(cfg, graphdef, params, tok, "export", extra)
    if is_hf_dir(checkpoint):
        tok = load_tokenizer(tokenizer or checkpoint)
        # The checkpoint may lack special ids; the tokenizer has them (§0).
        cfg, model_ = load_hf_checkpoint(checkpoint, dtype=dtype, mask_token_id=tok.mask_id,
                                         pad_token_id=tok.pad_id, eos_token_id=tok.eos_id)
        graphdef, params = split_model(model_)
        return Policy(cfg, graphdef, params, tok, "hf", {})
    raise ValueError(f"checkpoint {checkpoint!r} is neither an exported model ({ckpt_lib.MODEL_CONFIG_NAME}) "
                     "nor a Hugging Face directory (config.json + *.safetensors)")


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def task_knobs(task: ml_collections.ConfigDict) -> dict:
    knobs = task.get("knobs")
    return dict(knobs.to_dict() if isinstance(knobs, ml_collections.ConfigDict) else (knobs or {}))


def eval_examples(data: ml_collections.ConfigDict) -> list[Example]:
    """Held-out examples from a config section.

    ``data.name``: a built-in task (``arithmetic``, ``sudoku4``, ``countdown``;
    ``knobs``, ``num``, ``seed`` apply), ``math500``, ``gsm8k`` or
    ``reference`` (``path``). ``num`` <= 0 means all (data sets only).
    """
    num = data.get("num", None)
    num = None if num is None or num <= 0 else int(num)
    kwargs = {}
    if data.get("path"):
        kwargs["path"] = data.path
    if data.name in ("math500", "gsm8k", "reference"):
        return load_examples(data.name, "test", num=num, **kwargs)
    return load_examples(data.name, data.get("split", "test"), num=num, seed=int(data.get("seed", 0)),
                         **task_knobs(data))


def print_eval(tag: str, result: dict, write=print) -> None:
    write(f"[{tag}] accuracy {result['accuracy']:.3f} over {result['num_responses']} responses | "
          f"mean length {result['mean_length']:.1f} | tokens/forward {result['tokens_per_forward']:.2f} | "
          f"{result['tokens_per_second']:.0f} tokens/s" + ("" if result["steady_state"] else " (incl. compile)"))


def dataclass_dict(x) -> dict:
    return dataclasses.asdict(x)
