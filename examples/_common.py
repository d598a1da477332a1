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
from pathlib import Path
from typing import Any, NamedTuple, Optional

import jax
import ml_collections
import numpy as np

from tracerl_jax.families import get_family
from tracerl_jax.models import ModelConfig, get_preset, init_model, load_hf_checkpoint, split_model
from tracerl_jax.tasks import Example, load_examples
from tracerl_jax.tokenizers import Tokenizer, load_tokenizer
from tracerl_jax.train import checkpoint as ckpt_lib

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"

# ModelConfig fields that a config's ``model`` section may override (None = keep the preset's).
MODEL_OVERRIDES = ("hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                   "max_position_embeddings", "tie_word_embeddings", "dtype", "param_dtype", "remat",
                   "attention_impl", "scan_layers")

def config_help(path: Path, variant: Optional[str] = None) -> str:
    """Every field of a config file as ``--config.<field>=<default>  <its comment>`` lines (for ``--help``).

    Values come from the file's ``get_config()``; each field's comment is the
    ``# ...`` after its assignment in the file.
    """
    import importlib.util
    import re

    spec = importlib.util.spec_from_file_location(f"_help_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(variant) if variant else module.get_config()
    comments = {}
    for line in path.read_text().splitlines():
        m = re.match(r"\s*c\.([\w.]+)\s*=.*?#\s*(.*)$", line)
        if m:
            comments.setdefault(m.group(1), m.group(2).strip())

    def flat(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict) and k != "knobs":
                yield from flat(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}", v

    rows = [(f"--config.{k}={v!r}", comments.get(k, "")) for k, v in flat(config.to_dict())]
    width = max(len(a) for a, _ in rows)
    lines = [f"  {a:<{width}}  {c}".rstrip() for a, c in rows]
    where = path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path.name
    return (f"\nConfig fields (defaults of {where}; other recipes set the same fields; "
            "override any with --config.<field>=<value>):\n\n" + "\n".join(lines) + "\n")


def define_config_flag(config_file: str, help_text: str, flag_values=None, argv: Optional[list[str]] = None):
    """Defines ``--config`` (default ``configs/<config_file>``, with ``--config.<field>`` overrides).

    Tests pass their own ``absl.flags.FlagValues`` so that several examples,
    each defining ``--config``, can be imported into one process.
    """
    from absl import flags
    from ml_collections import config_flags

    return config_flags.DEFINE_config_file("config", str(CONFIG_DIR / config_file), help_text,
                                           flag_values=flags.FLAGS if flag_values is None else flag_values,
                                           sys_argv=argv)


def script_main(run):
    """An ``absl.app`` main that rejects positional arguments, quiets Orbax's INFO logs and calls ``run()``."""
    from absl import app, logging

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        logging.set_verbosity(logging.WARNING)  # Orbax logs every file it reads or writes at INFO
        run()

    return main


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


def make_sampler(section, tokenizer: Tokenizer, graphdef, config: ModelConfig, *, block_size: int,
                 gen_length: int, name: str = "sampler"):
    """The compiled sampler of a config section for a model of any family.

    The model's family (:func:`tracerl_jax.families.family_of`) reads the
    section: block models get the block sampler, LLaDA/Dream the
    full-attention one; a setting the family cannot use is a ``ValueError``
    naming ``<name>.<field>``.
    """
    family = get_family(config.family)
    scfg = family.sampler_config(section, tokenizer, block_size=block_size, gen_length=gen_length, name=name)
    return family.make_sampler(graphdef, config, scfg)


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
                compute_dtype: Optional[str] = None,
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
      dtype: parameter dtype (HF checkpoints load straight into it; exports
        are cast to it).
      compute_dtype: activation/matmul dtype (None: ``dtype`` for HF
        checkpoints, the recorded one for exports).
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
        overrides = {k: v for k, v in (("param_dtype", dtype), ("dtype", compute_dtype)) if v}
        cfg, graphdef, params = ckpt_lib.load_model(checkpoint, **overrides)
        return Policy(cfg, graphdef, params, tok, "export", extra)
    if is_hf_dir(checkpoint):
        tok = load_tokenizer(tokenizer or checkpoint)
        # The checkpoint may lack special ids; the tokenizer has them (§0).
        cfg, model_ = load_hf_checkpoint(checkpoint, dtype=dtype, compute_dtype=compute_dtype,
                                         mask_token_id=tok.mask_id,
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
