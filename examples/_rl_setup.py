"""Plumbing for examples/tracerl.py: build everything a run needs, save and resume it.

Kept out of the loop file so ``tracerl.py`` reads like the algorithm. A run
is a plain namespace; nothing here is hidden state of the library.
"""

from __future__ import annotations

import dataclasses
import json
from importlib import resources
from pathlib import Path
from types import SimpleNamespace

import jax
import ml_collections

from tracerl_jax.data import ExampleIterator
from tracerl_jax.models import (cache_init_fn, get_preset, init_model, load_hf_checkpoint, sampler_forward_fn,
                                split_model, value_model_from_policy)
from tracerl_jax.sampling import BlockSamplerConfig, make_block_sampler
from tracerl_jax.evaluation import default_verifier
from tracerl_jax.tasks import get_task, load_examples, load_reference
from tracerl_jax.tokenizers import load_tokenizer
from tracerl_jax.train.checkpoint import CheckpointManager
from tracerl_jax.train.metrics import MetricsWriter, plot_curves
from tracerl_jax.train.optimizer import OptimizerConfig, make_optimizer
from tracerl_jax.train.step import init_train_state
from tracerl_jax.train.steps import PolicyLossConfig, make_policy_step, make_value_step


def shipped_checkpoint(name: str) -> Path:
    """Directory of a checkpoint shipped inside the package (``assets/checkpoints/<name>``)."""
    path = Path(str(resources.files("tracerl_jax") / "assets" / "checkpoints" / name))
    if not (path / "config.json").is_file():
        raise ValueError(f"no shipped checkpoint named {name!r} (looked in {path})")
    return path


def load_policy(cfg: ml_collections.ConfigDict, tokenizer):
    """``(model_config, model)`` from ``cfg.model.init``.

    ``random:<preset>`` initialises a preset with the tokenizer's vocabulary;
    ``shipped:<name>`` loads a checkpoint shipped with the package; anything
    else is a Hugging Face checkpoint directory (``config.json`` +
    safetensors), e.g. one exported by ``examples/sft.py``.
    """
    spec = cfg.model.init
    if spec.startswith("random:"):
        mcfg = get_preset(spec.split(":", 1)[1]).replace(
            vocab_size=tokenizer.vocab_size, mask_token_id=tokenizer.mask_id, pad_token_id=tokenizer.pad_id,
            eos_token_id=tokenizer.eos_id, remat=cfg.model.remat)
        return mcfg, init_model(mcfg, seed=cfg.seed)
    path = shipped_checkpoint(spec.split(":", 1)[1]) if spec.startswith("shipped:") else Path(spec)
    mcfg, model = load_hf_checkpoint(path, remat=cfg.model.remat)
    if mcfg.vocab_size < tokenizer.vocab_size or mcfg.mask_token_id != tokenizer.mask_id:
        raise ValueError(f"checkpoint {path} (vocab {mcfg.vocab_size}, mask {mcfg.mask_token_id}) does not match "
                         f"the tokenizer (vocab {tokenizer.vocab_size}, mask {tokenizer.mask_id})")
    return mcfg, model


def load_data(cfg):
    """Train and held-out examples: a built-in task (generated, disjoint splits),
    ``math500``/``gsm8k`` (shipped test splits; training on them is for smoke
    runs only) or ``jsonl:<train path>[,<eval path>]`` in the reference format."""
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
    return task.generate("train", cfg.task.num_train, seed=cfg.seed), task.generate("test", cfg.task.num_eval,
                                                                                   seed=cfg.seed + 1)


def sampler(cfg, tokenizer, mcfg, graphdef, *, strategy, temperature, threshold):
    scfg = BlockSamplerConfig(
        gen_length=cfg.rollout.gen_length, mask_id=tokenizer.mask_id, eos_id=tokenizer.eos_id,
        pad_id=tokenizer.pad_id, block_size=cfg.rollout.block_size, steps_per_block=cfg.rollout.steps_per_block,
        strategy=strategy, threshold=threshold, temperature=temperature, top_k=cfg.rollout.top_k,
        top_p=cfg.rollout.top_p)
    return make_block_sampler(sampler_forward_fn(graphdef), cache_init_fn(mcfg), scfg, vocab_size=mcfg.vocab_size,
                              max_positions=mcfg.max_position_embeddings)


def build(cfg: ml_collections.ConfigDict) -> SimpleNamespace:
    """Everything one run needs; restores the latest checkpoint of ``cfg.workdir`` if there is one."""
    if cfg.rollout.gen_length % cfg.rollout.block_size or cfg.prompt_len % cfg.rollout.block_size:
        raise ValueError("rollout.gen_length and prompt_len must be multiples of rollout.block_size")
    if cfg.rl.batch_rows % cfg.rl.grad_accum:
        raise ValueError(f"rl.batch_rows={cfg.rl.batch_rows} must be divisible by rl.grad_accum={cfg.rl.grad_accum}")
    if cfg.value.enabled and cfg.rl.method != "TraceRL":
        raise ValueError("the value model supports rl.method='TraceRL' only (as the reference)")
    run = SimpleNamespace(cfg=cfg, workdir=Path(cfg.workdir))
    run.workdir.mkdir(parents=True, exist_ok=True)
    run.tokenizer = load_tokenizer(cfg.tokenizer)
    run.train, run.test = load_data(cfg)
    run.score_fn = default_verifier(run.train[:1] + run.test[:1])

    run.model_config, model = load_policy(cfg, run.tokenizer)
    run.graphdef, params = split_model(model)
    run.sample_fn = sampler(cfg, run.tokenizer, run.model_config, run.graphdef, strategy=cfg.rollout.strategy,
                            temperature=cfg.rollout.temperature, threshold=cfg.rollout.threshold)
    run.eval_sample_fn = sampler(cfg, run.tokenizer, run.model_config, run.graphdef, strategy=cfg.eval.strategy,
                                 temperature=cfg.eval.temperature, threshold=cfg.eval.threshold)

    c = cfg.rl
    run.opt_cfg = OptimizerConfig(learning_rate=c.learning_rate, schedule=c.schedule, max_grad_norm=c.max_grad_norm,
                                  total_updates=max(c.total_steps, 1))
    opt = make_optimizer(run.opt_cfg)
    run.state = init_train_state(params, opt)
    loss_cfg = PolicyLossConfig(eps=c.eps, beta=c.beta, kl_estimator=c.kl_estimator, normalizer=c.normalizer)
    run.policy_step = make_policy_step(run.graphdef, opt, loss_cfg)
    run.value_step = None
    if cfg.value.enabled:
        run.value_graphdef, vparams = split_model(value_model_from_policy(model))
        vopt = make_optimizer(OptimizerConfig(learning_rate=cfg.value.learning_rate, max_grad_norm=c.max_grad_norm))
        run.vstate = init_train_state(vparams, vopt)
        run.value_step = make_value_step(run.value_graphdef, vopt, clip=cfg.value.clip, normalizer=c.normalizer)

    run.data = ExampleIterator(num_examples=len(run.train), batch_size=cfg.rollout.num_prompts, seed=cfg.seed)
    run.base_key = jax.random.key(cfg.seed)
    run.ckpt = CheckpointManager(run.workdir / "checkpoints", max_to_keep=cfg.checkpoint.keep)
    run.writer = MetricsWriter(run.workdir)
    run.start_step, run.initial_accuracy = 0, None
    restored = run.ckpt.restore(target=_state_tree(run))
    if restored is not None:
        run.start_step = restored.step
        run.state = restored.state["policy"]
        if cfg.value.enabled:
            run.vstate = restored.state["value"]
        run.base_key = restored.state["rng"]
        run.data.restore(restored.meta["data"])
        run.initial_accuracy = restored.meta["progress"]["initial_accuracy"]
    (run.workdir / "config.json").write_text(cfg.to_json_best_effort(indent=2))
    return run


def _state_tree(run) -> dict:
    tree = {"policy": run.state, "rng": run.base_key}
    if run.cfg.value.enabled:
        tree["value"] = run.vstate
    return tree


def save(run, step: int) -> None:
    """Checkpoints policy (+ value) train states, PRNG key and data position at ``step``."""
    meta = {"data": run.data.state, "progress": {"initial_accuracy": run.initial_accuracy, "step": step}}
    run.ckpt.save(step, _state_tree(run), meta=meta, force=True)


def finish(run) -> None:
    """Flushes metrics and checkpoints and draws the learning curves."""
    run.ckpt.wait()
    run.writer.close()
    jsonl = run.workdir / "metrics.jsonl"
    plot_curves(jsonl, run.workdir / "curves.png", ["reward", "eval/accuracy"],
                title=f"{run.cfg.rl.method} on {run.cfg.task.name}")
    print(f"[tracerl] metrics: {jsonl}  plot: {run.workdir / 'curves.png'}")
