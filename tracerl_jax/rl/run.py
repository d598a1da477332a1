"""Everything one RL run holds, built from a recipe; checkpoint, resume and held-out evaluation.

:func:`build_run` reads an RL recipe (``configs/tracerl.py`` and the recipes
built on it), checks it (:mod:`tracerl_jax.rl.config`), loads the policy in
the recipe's precision, builds the mesh ``(data, fsdp, tensor)`` of
``cfg.mesh`` over every process's devices, shards the policy, value and
frozen-reference train states by the one rule table
(:mod:`tracerl_jax.train.sharding`: FSDP on ``fsdp``, Megatron-style TP on
``tensor``), compiles the sharded steps and samplers, and restores the latest
checkpoint of ``cfg.workdir`` if there is one.

Checkpoints hold everything a resumed run needs to continue *bit-exactly*:
the train states (step, parameters, optimizer states), the base PRNG key
(every rollout/mask key is ``fold_in(key, rl_step)``), the data iterator's
position and the pre-RL accuracy. They restore under another mesh or process
count (Orbax reads the slices each device needs).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from tracerl_jax.data import ExampleIterator
from tracerl_jax.evaluation import default_verifier, evaluate
from tracerl_jax.families import Family, RowSettings, get_family
from tracerl_jax.models import split_model, value_model_from_policy
from tracerl_jax.rl import config as rl_config
from tracerl_jax.rl import pipeline, specs
from tracerl_jax.rl.distributed import allgather, chunked_sampler, global_sampler, to_host
from tracerl_jax.scoring import trajectory_logprobs, trajectory_values
from tracerl_jax.tokenizers import load_tokenizer
from tracerl_jax.train import sharding as shd
from tracerl_jax.train.checkpoint import CheckpointManager, export_model
from tracerl_jax.train.metrics import MetricsWriter, plot_curves
from tracerl_jax.train.optimizer import OptimizerConfig, make_optimizer
from tracerl_jax.train.step import TrainState, init_train_state, state_shardings
from tracerl_jax.train.steps import make_policy_step, make_value_step


@dataclasses.dataclass
class Model:
    """One trained model of a run: its structure, sharded train state, update and scorer.

    Attributes:
      graphdef: the split model's structure.
      state: :class:`~tracerl_jax.train.step.TrainState` (global arrays).
      sharding: the state's ``NamedSharding`` pytree.
      step: the compiled, sharded update ``(state, batch, lr) -> (state, metrics)``.
      score: ``(params, UpdateBatches) -> [NB, GA, mb, L1]`` old log-probs or values.
    """

    graphdef: Any
    state: TrainState
    sharding: TrainState
    step: Callable
    score: Callable


@dataclasses.dataclass
class Run:
    """An RL run: what :func:`build_run` made and the loop (:mod:`tracerl_jax.rl.loop`) reads and updates.

    Attributes:
      cfg: the recipe.
      workdir: checkpoints, metrics, exports.
      family: the policy's :class:`~tracerl_jax.families.Family`.
      tokenizer, train, test, score_fn: data and reward.
      mesh: ``(data, fsdp, tensor)`` over every process's devices.
      row_settings: how training rows are built.
      advantage: the advantage estimator's name.
      model_config: the policy's ``ModelConfig``.
      policy: the policy :class:`Model`; value: the value :class:`Model` or None.
      reference_params: the frozen initial policy (``rl.reference="initial"``) or None.
      sample_fn, eval_sample_fn: rollout and evaluation samplers
        (:func:`~tracerl_jax.rl.distributed.global_sampler`).
      opt_cfg: the policy optimizer's settings (its schedule).
      data: the resumable prompt iterator; base_key: the run's PRNG key.
      ckpt, writer: checkpoints and metrics.
      start_step, initial_accuracy: where the run (re)starts.
    """

    cfg: Any
    workdir: Path
    family: Family
    tokenizer: Any
    train: list
    test: list
    score_fn: Callable
    mesh: Mesh
    row_settings: RowSettings
    advantage: str
    model_config: Any
    policy: Model
    value: Optional[Model]
    reference_params: Any
    sample_fn: Callable
    eval_sample_fn: Callable
    opt_cfg: OptimizerConfig
    data: ExampleIterator
    base_key: jax.Array
    ckpt: CheckpointManager
    writer: MetricsWriter
    start_step: int = 0
    initial_accuracy: Optional[float] = None


def make_run_mesh(cfg) -> Mesh:
    """The ``(data, fsdp, tensor)`` mesh of ``cfg.mesh`` over every device of every process."""
    return shd.make_mesh(*rl_config.mesh_shape(cfg.get("mesh", (-1, 1, 1)), jax.device_count()))


def rollout_model(model_config, graphdef, dtype: Optional[str]):
    """``(config, graphdef)`` the sampler runs: the policy's, in the compute dtype ``dtype`` (None: its own).

    The parameters are the policy's (same structure and storage dtype); only
    the compute dtype, a static part of the graphdef, differs.
    """
    if dtype is None or model_config.replace(dtype=dtype).dtype == model_config.dtype:
        return model_config, graphdef
    from flax import nnx

    from tracerl_jax.models import Transformer

    config = model_config.replace(dtype=dtype)
    return config, split_model(nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0))))[0]


def place(tree, shardings):
    """A pytree identical on every process (host or single-device arrays) -> global arrays of ``shardings``."""
    if isinstance(shardings, jax.sharding.Sharding):
        shardings = jax.tree.map(lambda _: shardings, tree)
    return jax.tree.map(lambda x, s: jax.make_array_from_process_local_data(s, np.asarray(x), np.shape(x)),
                        tree, shardings)


def _train_model(graphdef, params, opt, mesh: Mesh, make_step: Callable, score_fn) -> Model:
    shd.check_mesh_shards(params, mesh)
    state = init_train_state(params, opt)
    sharding = state_shardings(state, opt, mesh)
    state = place(state, sharding)
    step = make_step(mesh=mesh, state_sharding=sharding)
    score = pipeline.make_batch_scorer(score_fn, graphdef, param_sharding=sharding.params, mesh=mesh)
    return Model(graphdef, state, sharding, step, score)


def check_memory(cfg, tokenizer, mesh: Mesh):
    """Plans the run's programs by compiling them on abstract shapes; a ``ValueError`` if one cannot fit.

    The budget is ``cfg.device_memory_gib`` per device, else what the device
    reports (nothing on CPU: then the plan is only made). Nothing is allocated.

    Returns:
      The :class:`tracerl_jax.memory_plan.MemoryPlan`.

    Raises:
      ValueError: a program needs more than the budget (naming the setting to change).
    """
    from tracerl_jax import memory_plan   # compiles; only runs that ask for a plan pay for the import

    model_config = specs.model_config_of(cfg.model.init, tokenizer, **rl_config.model_settings(cfg))
    gib = cfg.get("device_memory_gib")
    if gib is not None and not (isinstance(gib, (int, float)) and gib > 0):
        raise ValueError(f"device_memory_gib must be a positive number of GiB or None, got {gib!r}")
    return memory_plan.check_config_fits(cfg, model_config, mesh,
                                         device_bytes=None if gib is None else int(gib * memory_plan.GIB))


def build_run(cfg, *, score_fn: Optional[Callable] = None) -> Run:
    """Everything one run needs; restores the latest checkpoint of ``cfg.workdir`` if there is one.

    Args:
      cfg: the RL recipe (``configs/tracerl.py``).
      score_fn: batch reward ``(texts, examples, lengths) -> scores``;
        default: the task's verifier.

    Raises:
      ValueError: a recipe that cannot run (see :func:`tracerl_jax.rl.config.check_config`).
    """
    family = get_family(specs.policy_family(cfg.model.init))
    rl_config.resolve_batch_rows(cfg, jax.device_count())
    rl_config.check_config(cfg, family=family, process_count=jax.process_count(), device_count=jax.device_count(),
                           platform=jax.default_backend())
    workdir = Path(cfg.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(cfg.tokenizer)
    train, test = specs.load_data(cfg)
    mesh = make_run_mesh(cfg)
    if cfg.get("memory_plan", False):
        check_memory(cfg, tokenizer, mesh)

    model_config, model = specs.load_policy(cfg.model.init, tokenizer, seed=cfg.seed,
                                            **rl_config.model_settings(cfg))
    graphdef, params = split_model(model)
    r = cfg.rollout
    rollout_config, rollout_graphdef = rollout_model(model_config, graphdef, r.get("dtype"))

    rows_per_call = rl_config.rollout_rows_per_call(cfg, mesh.shape["data"] * mesh.shape["fsdp"], jax.process_count())

    def sampler(strategy, temperature, threshold, engine=None):
        section = dict(r.to_dict(), strategy=strategy, temperature=temperature, threshold=threshold)
        scfg = family.sampler_config(section, tokenizer, block_size=r.block_size, gen_length=r.gen_length,
                                     name="rollout")
        return global_sampler(family.make_sampler(rollout_graphdef, rollout_config, scfg, engine), mesh)

    c = cfg.rl
    # total_updates counts RL steps: rl.loop clocks the schedule by the RL step.
    opt_cfg = OptimizerConfig(learning_rate=c.learning_rate, schedule=c.schedule, warmup=c.get("warmup", 0),
                              min_lr_scale=c.get("min_lr_scale", 1.0), max_grad_norm=c.max_grad_norm,
                              total_updates=max(c.total_steps, 1), state_dtype=c.get("opt_state_dtype"))
    opt = make_optimizer(opt_cfg)
    loss_cfg = rl_config.policy_loss_config(cfg, family)
    policy = _train_model(graphdef, params, opt, mesh,
                          lambda **kw: make_policy_step(graphdef, opt, loss_cfg, **kw), trajectory_logprobs)
    reference = place(params, policy.sharding.params) if c.get("reference", "rollout") == "initial" else None
    value = None
    if cfg.value.enabled:
        vgraphdef, vparams = split_model(value_model_from_policy(model))
        vopt = make_optimizer(OptimizerConfig(learning_rate=cfg.value.learning_rate, max_grad_norm=c.max_grad_norm,
                                              state_dtype=c.get("opt_state_dtype")))
        normalizer = c.normalizer or family.normalizer
        value = _train_model(vgraphdef, vparams, vopt, mesh,
                             lambda **kw: make_value_step(vgraphdef, vopt, clip=cfg.value.clip, normalizer=normalizer,
                                                          **kw), trajectory_values)
    del model, params

    run = Run(
        cfg=cfg, workdir=workdir, family=family, tokenizer=tokenizer, train=train, test=test,
        score_fn=score_fn or default_verifier(train[:1] + test[:1]), mesh=mesh,
        row_settings=rl_config.row_settings(cfg, tokenizer), advantage=rl_config.advantage_estimator(cfg),
        model_config=model_config, policy=policy, value=value, reference_params=reference,
        # rollout.engine: the block sampler or the slot engine (evaluation always uses the block sampler)
        sample_fn=chunked_sampler(sampler(r.strategy, r.temperature, r.threshold, rl_config.rollout_engine(
            cfg, rows_per_call or r.num_prompts * r.k // jax.process_count())), rows_per_call),
        eval_sample_fn=sampler(cfg.eval.strategy, cfg.eval.temperature, cfg.eval.threshold), opt_cfg=opt_cfg,
        # Every process walks the same global prompt stream and takes its slice of each batch.
        data=ExampleIterator(num_examples=len(train), batch_size=r.num_prompts, seed=cfg.seed,
                             process_index=jax.process_index(), process_count=jax.process_count()),
        base_key=jax.random.key(cfg.seed), ckpt=CheckpointManager(workdir / "checkpoints", max_to_keep=cfg.checkpoint.keep),
        writer=MetricsWriter(workdir))
    restore(run)
    if jax.process_index() == 0:
        (workdir / "config.json").write_text(cfg.to_json_best_effort(indent=2))
    return run


def _state_tree(run: Run) -> dict:
    # The base key is kept on the host for the rollouts; the checkpoint holds its key data as a
    # replicated global array.
    key_data = np.asarray(jax.random.key_data(run.base_key))
    tree = {"policy": run.policy.state, "rng": place(key_data, NamedSharding(run.mesh, P()))}
    if run.value is not None:
        tree["value"] = run.value.state
    if run.reference_params is not None:
        tree["reference"] = run.reference_params
    return tree


def restore(run: Run) -> bool:
    """Restores the newest checkpoint of ``run.workdir`` that restores cleanly into ``run`` (this run's
    shardings; damaged newer steps are reported and skipped) and drops metrics logged after it; False if none."""
    restored = run.ckpt.restore(target=_state_tree(run), fall_back=True)
    if restored is None:
        return False
    for step, reason in restored.skipped:
        where = run.ckpt.set_aside(step)   # the resumed run writes this step again
        if jax.process_index() == 0:
            print(f"[tracerl] checkpoint step {step} does not restore; resuming from step {restored.step} "
                  f"instead (moved to {where}): {reason}")
    run.start_step = restored.step
    dropped = run.writer.resume_at(restored.step)
    if dropped and jax.process_index() == 0:
        print(f"[tracerl] metrics.jsonl: dropped {dropped} lines after step {restored.step} (they will be redone)")
    run.policy.state = restored.state["policy"]
    if run.value is not None:
        run.value.state = restored.state["value"]
    if run.reference_params is not None:
        run.reference_params = restored.state["reference"]
    run.base_key = jax.random.wrap_key_data(np.asarray(to_host(restored.state["rng"])),
                                            impl=jax.random.key_impl(run.base_key))
    run.data.restore(restored.meta["data"])
    run.initial_accuracy = restored.meta["progress"]["initial_accuracy"]
    return True


def save(run: Run, step: int) -> None:
    """Checkpoints the train states, the PRNG key and the data position at ``step``."""
    meta = {"data": run.data.state, "progress": {"initial_accuracy": run.initial_accuracy, "step": step}}
    run.ckpt.save(step, _state_tree(run), meta=meta, force=True)


def held_out_accuracy(run: Run, params) -> Optional[float]:
    """Mean reward of the evaluation sampler on the held-out prompts (None when ``task.num_eval = 0``).

    Each process evaluates an equal share of the prompts (the last share is
    padded with repeats that do not count), so every process calls the
    global sampler the same number of times; reward sums and counts are
    added up over processes, so the number does not depend on the process
    count. (Row keys are per share, so a *sampled* evaluation,
    ``eval.temperature > 0``, does.)
    """
    if not run.test:
        return None
    n, procs = len(run.test), jax.process_count()
    per = -(-n // procs)
    idx = np.arange(jax.process_index() * per, (jax.process_index() + 1) * per)
    real = idx < n
    examples = [run.test[i if i < n else 0] for i in idx]
    result = evaluate(run.eval_sample_fn, params, run.tokenizer, examples, batch_size=run.cfg.eval.batch_size,
                      block_size=run.cfg.rollout.block_size, rng=jax.random.key(run.cfg.seed + 7),
                      batch_verify_fn=run.score_fn, prompt_len=run.cfg.prompt_len, keep_step_maps=False)
    counted = [g for g in result["generations"] if real[g["index"]]]
    total = allgather(np.array([sum(g["reward"] for g in counted), len(counted)], np.float64)).sum(axis=0)
    return float(total[0]) / float(total[1])


def export(run: Run, directory: Optional[Path] = None) -> Path:
    """Writes the current policy (and value model) as exports every tool loads (``examples/evaluate.py``,
    ``examples/sample.py``, ``model.init``): ``<workdir>/export`` and ``<workdir>/export_value``."""
    directory = Path(directory or run.workdir / "export")
    extra = {"tokenizer": run.cfg.tokenizer, "task": {"name": run.cfg.task.name,
                                                      "knobs": dict(run.cfg.task.get("knobs", {}) or {})},
             "block_size": run.cfg.rollout.block_size, "gen_length": run.cfg.rollout.gen_length}
    out = export_model(directory, run.policy.state.params, run.model_config, extra=extra)
    if run.value is not None:
        export_model(Path(str(directory) + "_value"), run.value.state.params, run.model_config, value_model=True,
                     extra=extra)
    return out


def finish(run: Run) -> None:
    """Flushes metrics and checkpoints and draws the learning curves."""
    run.ckpt.close()
    run.writer.close()
    if jax.process_index() != 0:
        return
    jsonl = run.workdir / "metrics.jsonl"
    plot_curves(jsonl, run.workdir / "curves.png", ["reward"] + (["eval/accuracy"] if run.test else []),
                title=f"{run.cfg.rl.method} on {run.cfg.task.name}")
    print(f"[tracerl] metrics: {jsonl}  plot: {run.workdir / 'curves.png'}")
