"""What an RL recipe names by string: the policy (``model.init``), the data (``task.name``), a reward.

``model.init`` is one of

* ``shipped:<name>`` -- a checkpoint shipped with the package (``arith_sft``);
* a directory: a Hugging Face checkpoint of any supported family
  (``config.json`` + safetensors: TraDo/SDAR, LLaDA/MMaDA, Dream/DiffuCoder)
  or an ``examples/sft.py`` / ``examples/tracerl.py`` export
  (``model_config.json`` + ``params/``);
* ``random:<preset>`` -- a freshly initialised preset with the tokenizer's
  vocabulary (``tiny``, ``small-llada``, ...).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable, Optional

import jax

from tracerl_jax.models import (ModelConfig, get_preset, init_model, load_hf_checkpoint, read_hf_config,
                                relayout_layers, shipped_checkpoint)
from tracerl_jax.tasks import get_task, load_examples, load_reference
from tracerl_jax.train.checkpoint import MODEL_CONFIG_NAME, load_model, read_model_config


def policy_path(spec: str) -> Path:
    """The directory of a ``shipped:``/directory ``model.init``.

    Raises:
      ValueError: not a directory.
    """
    path = shipped_checkpoint(spec.split(":", 1)[1]) if spec.startswith("shipped:") else Path(spec)
    if not path.is_dir():
        raise ValueError(f"model.init={spec!r} is not a directory (an HF checkpoint, an examples/sft.py export, "
                         "shipped:<name> or random:<preset>); configs/tracerl_full.py explains how to make its "
                         "warm start with examples/sft.py")
    return path


def policy_family(spec: str) -> str:
    """The family (``"sdar"``, ``"llada"``, ``"dream"``) of a ``model.init``, read without loading weights."""
    if spec.startswith("random:"):
        return get_preset(spec.split(":", 1)[1]).family
    path = policy_path(spec)
    if (path / MODEL_CONFIG_NAME).is_file():
        return read_model_config(path)[0].family
    return ModelConfig.from_hf_config(read_hf_config(path)).family


def load_policy(spec: str, tokenizer, *, seed: int = 0, **model_settings):
    """``(model_config, model)`` of a ``model.init``, in the precision asked for.

    Args:
      spec: the ``model.init`` string (module docstring).
      tokenizer: supplies the vocabulary and special ids (checked against a
        checkpoint's).
      seed: init seed of ``random:``.
      **model_settings: :class:`ModelConfig` fields the run sets
        (``param_dtype``, ``dtype``, ``remat``, ``attention_impl``,
        ``scan_layers``); checkpoints load straight into ``param_dtype``.

    Raises:
      ValueError: a bad spec, or a checkpoint whose vocabulary or mask id does
        not match the tokenizer.
    """
    if spec.startswith("random:"):
        mcfg = get_preset(spec.split(":", 1)[1]).replace(
            vocab_size=tokenizer.vocab_size, mask_token_id=tokenizer.mask_id, pad_token_id=tokenizer.pad_id,
            eos_token_id=tokenizer.eos_id, **model_settings)
        return mcfg, init_model(mcfg, seed=seed)
    path = policy_path(spec)
    if (path / MODEL_CONFIG_NAME).is_file():
        from flax import nnx

        settings = dict(model_settings)
        scan = settings.pop("scan_layers", None)
        mcfg, graphdef, params = load_model(path, **settings)
        model = nnx.merge(graphdef, params)
        if scan is not None and bool(scan) != mcfg.scan_layers:  # an export keeps the layout it was saved in
            model = relayout_layers(model, bool(scan))
            mcfg = model.config
    else:
        settings = dict(model_settings)
        dtype = settings.pop("param_dtype", "float32")
        # The checkpoint may lack special ids; the tokenizer has them (§0).
        mcfg, model = load_hf_checkpoint(path, dtype, compute_dtype=settings.pop("dtype", None),
                                         mask_token_id=tokenizer.mask_id, pad_token_id=tokenizer.pad_id,
                                         eos_token_id=tokenizer.eos_id, **settings)
    if mcfg.vocab_size < tokenizer.vocab_size or mcfg.mask_token_id != tokenizer.mask_id:
        raise ValueError(f"checkpoint {path} (vocab {mcfg.vocab_size}, mask {mcfg.mask_token_id}) does not match "
                         f"the tokenizer (vocab {tokenizer.vocab_size}, mask {tokenizer.mask_id})")
    return mcfg, model


def load_data(cfg):
    """Train and held-out examples of ``cfg.task``.

    ``task.name``: a built-in task (generated, disjoint splits),
    ``math500``/``gsm8k`` (shipped test splits; training on them is for smoke
    runs only) or ``jsonl:<train path>[,<eval path>]`` in the reference
    format. ``task.num_eval = 0`` turns held-out evaluation off.
    """
    name = cfg.task.name
    if name.startswith("jsonl:"):
        paths = name.split(":", 1)[1].split(",")
        train = load_reference(paths[0])
        test = load_reference(paths[1]) if len(paths) > 1 else load_examples("math500", "test")
        return train, test[:cfg.task.num_eval]
    if name in ("math500", "gsm8k"):
        data = load_examples(name, "test")
        return data, data[:cfg.task.num_eval]
    task = get_task(name, **cfg.task.knobs)
    test = task.generate("test", cfg.task.num_eval, seed=cfg.seed + 1) if cfg.task.num_eval else []
    return task.generate("train", cfg.task.num_train, seed=cfg.seed), test


def load_scorer(spec: str) -> Callable:
    """A batch reward ``(texts, examples, lengths) -> scores`` named ``"package.module:function"``.

    Lets a run swap the task verifier for another reward without editing the
    loop (the module must be importable, e.g. from the repository root).

    Raises:
      ValueError: ``spec`` is not ``module:function`` or names nothing callable.
    """
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"reward must be 'package.module:function', got {spec!r}")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot load reward {spec!r}: {e}") from e
    if not callable(fn):
        raise ValueError(f"reward {spec!r} is not callable")
    return fn


# ---------------------------------------------------------------------------
# RL run directories as policies
# ---------------------------------------------------------------------------


def run_directory(spec) -> Optional[tuple[Path, Optional[int]]]:
    """``(workdir, step)`` when ``spec`` is an RL run's workdir (``step`` None) or one of its checkpoint
    steps (``<workdir>/checkpoints/<step>``); None for anything else."""
    p = Path(spec)
    if p.name.isdigit() and p.parent.name == "checkpoints" and (p.parent.parent / "config.json").is_file():
        return p.parent.parent, int(p.name)
    if (p / "config.json").is_file() and (p / "checkpoints").is_dir():
        return p, None
    return None


def load_run_policy(spec, *, tokenizer: Optional[str] = None):
    """The policy of an RL run directory or checkpoint step, for evaluation and sampling.

    A workdir gives its final export (``<workdir>/export``, written when the
    run finished) or, for an unfinished run, its newest checkpoint; a step
    directory gives the policy parameters saved at that step. The model's
    structure, precision and optimizer come from the run's ``config.json``.

    Args:
      spec: ``<workdir>`` or ``<workdir>/checkpoints/<step>``.
      tokenizer: tokenizer name/path; default: the run's.

    Returns:
      ``(model_config, graphdef, params, tokenizer_spec, step)``; ``step`` is
      None for the export.

    Raises:
      ValueError: not a run directory, or a step that does not restore (named).
    """
    import json

    import ml_collections
    from flax import nnx

    from tracerl_jax.models import Transformer, split_model
    from tracerl_jax.rl import config as rl_config
    from tracerl_jax.tokenizers import load_tokenizer
    from tracerl_jax.train.checkpoint import CheckpointManager, abstract_like
    from tracerl_jax.train.optimizer import OptimizerConfig, make_optimizer
    from tracerl_jax.train.step import init_train_state

    found = run_directory(spec)
    if found is None:
        raise ValueError(f"{spec!s} is not an RL run directory (config.json + checkpoints/) or one of its "
                         "checkpoint steps (<workdir>/checkpoints/<step>)")
    workdir, step = found
    cfg = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
    tok_spec = tokenizer or cfg.tokenizer
    if step is None and (workdir / "export" / MODEL_CONFIG_NAME).is_file():
        mcfg, graphdef, params = load_model(workdir / "export")
        return mcfg, graphdef, params, tok_spec, None
    tok = load_tokenizer(tok_spec)
    mcfg = model_config_of(cfg.model.init, tok, **rl_config.model_settings(cfg))
    graphdef, abstract = split_model(nnx.eval_shape(lambda: Transformer(mcfg, rngs=nnx.Rngs(0))))
    opt = make_optimizer(OptimizerConfig(state_dtype=cfg.rl.get("opt_state_dtype")))
    state = jax.eval_shape(lambda p: init_train_state(p, opt), abstract)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    with CheckpointManager(workdir / "checkpoints", create=False) as ckpt:
        step = ckpt.latest_step() if step is None else step
        if step is None:
            raise ValueError(f"{workdir} has no export and no checkpoint yet")
        restored = ckpt.restore(step, target={"policy": abstract_like(state, device)}, meta=())
    return mcfg, graphdef, restored.state["policy"].params, tok_spec, step


def model_config_of(spec: str, tokenizer, **model_settings) -> ModelConfig:
    """The :class:`ModelConfig` a ``model.init`` loads into (with the run's settings), read without weights."""
    if spec.startswith("random:"):
        return get_preset(spec.split(":", 1)[1]).replace(
            vocab_size=tokenizer.vocab_size, mask_token_id=tokenizer.mask_id, pad_token_id=tokenizer.pad_id,
            eos_token_id=tokenizer.eos_id, **model_settings)
    path = policy_path(spec)
    if (path / MODEL_CONFIG_NAME).is_file():
        return read_model_config(path)[0].replace(**model_settings)
    settings = dict(model_settings)
    dtype = settings.pop("param_dtype", "float32")
    compute = settings.pop("dtype", None) or dtype
    return ModelConfig.from_hf_config(read_hf_config(path), param_dtype=dtype, dtype=compute, **settings)
