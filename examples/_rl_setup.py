"""Plumbing for examples/tracerl.py: build everything a run needs, save and resume it.

Kept out of the loop file so ``tracerl.py`` reads like the algorithm. A run
is a plain namespace; nothing here is hidden state of the library.

Devices and processes. One mesh ``(data=all devices, fsdp=1, tensor=1)``
spans every process (``jax.distributed``); train states live on it as
global arrays (replicated parameters, see ``train/sharding.py``) and every
update batch is sharded over its rows. Rollouts and evaluation are
per-process: each process samples its share of the prompts on its own
devices with a local view of the (replicated) parameters.

Checkpoints hold everything a resumed run needs to continue *bit-exactly*:
the policy and value train states (step, parameters, optimizer states), the
base PRNG key (every rollout/mask key is ``fold_in(key, rl_step)``), the data
iterator's position, and the pre-RL accuracy.
"""

from __future__ import annotations

import dataclasses
import importlib
import signal
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Optional

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from examples import _common
from tracerl_jax import rl
from tracerl_jax.advantages import ADVANTAGE_ESTIMATORS
from tracerl_jax.data import ExampleIterator
from tracerl_jax.evaluation import default_verifier, evaluate
from tracerl_jax.families import Family, RowSettings, get_family
from tracerl_jax.losses import POLICY_LOSSES
from tracerl_jax.models import (ModelConfig, get_preset, init_model, load_hf_checkpoint, read_hf_config,
                                shipped_checkpoint, split_model, value_model_from_policy)
from tracerl_jax.scoring import trajectory_logprobs, trajectory_values
from tracerl_jax.tasks import get_task, load_examples, load_reference
from tracerl_jax.tokenizers import load_tokenizer
from tracerl_jax.train import sharding as shd
from tracerl_jax.train.checkpoint import MODEL_CONFIG_NAME, CheckpointManager, load_model, read_model_config
from tracerl_jax.train.metrics import MetricsWriter, plot_curves
from tracerl_jax.train.optimizer import OptimizerConfig, make_optimizer
from tracerl_jax.train.step import init_train_state, state_shardings
from tracerl_jax.registry import check_name
from tracerl_jax.train.steps import PolicyLossConfig, make_policy_step, make_value_step

# Exit status of a run stopped by SIGTERM after its checkpoint was written:
# 128 + SIGTERM, what a shell reports for a process the signal killed, so a
# scheduler treats the run as interrupted (to be restarted), not finished.
EXIT_PREEMPTED = 128 + signal.SIGTERM


# ---------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------


def init_distributed(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
                     process_id: Optional[int] = None, auto: bool = False) -> None:
    """Starts ``jax.distributed`` for a multi-process run (or does nothing).

    * All three arguments given: an explicit job, e.g. two processes on one
      machine with ``coordinator_address="localhost:12355"``.
    * None given and ``auto``: ``jax.distributed.initialize()`` detects the
      cluster (TPU pod slices, SLURM, Open MPI).
    * None given, not ``auto``: a single process; nothing to do.

    On CPU the cross-process collectives use Gloo (TCP).

    Raises:
      ValueError: only some of the three given, ``num_processes < 1``,
        ``process_id`` outside ``[0, num_processes)``, or an address that is
        not ``host:port``.
    """
    given = [v is not None for v in (coordinator_address, num_processes, process_id)]
    if not any(given):
        if auto:
            jax.distributed.initialize()
        return
    if not all(given):
        raise ValueError("a multi-process run needs all of coordinator_address, num_processes and process_id "
                         f"(got {coordinator_address!r}, {num_processes!r}, {process_id!r}); on a TPU pod "
                         "slice or SLURM pass none of them and --distributed to auto-detect")
    host, _, port = str(coordinator_address).rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"coordinator_address must be 'host:port', got {coordinator_address!r}")
    if int(num_processes) < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    if not 0 <= int(process_id) < int(num_processes):
        raise ValueError(f"process_id must be in [0, num_processes={num_processes}), got {process_id}")
    # Cross-process collectives on CPU devices (tests, CPU clusters): Gloo over
    # TCP. It is this jax version's default; set it so another version's
    # default cannot change it. Accelerator backends ignore the option.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=int(num_processes),
                               process_id=int(process_id))


class StopRequest:
    """SIGTERM -> finish the current RL step, checkpoint it, exit with :data:`EXIT_PREEMPTED`.

    The handler only sets a flag; the loop asks :meth:`requested` after each
    step. In a multi-process run the processes agree (any process signalled
    -> all stop at the same step), because the checkpoint is a collective
    save. Use as a context manager; the previous handler is put back on exit.
    """

    def __init__(self):
        self._flag = False
        self._previous = None

    def _on_signal(self, signum, frame):
        del signum, frame
        self._flag = True

    def __enter__(self) -> "StopRequest":
        self._previous = signal.signal(signal.SIGTERM, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGTERM, self._previous)

    def requested(self) -> bool:
        if jax.process_count() == 1:
            return self._flag
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.asarray([self._flag], np.int32))
        return bool(np.any(flags))


# ---------------------------------------------------------------------------
# Model, data, sampler, reward
# ---------------------------------------------------------------------------


def _policy_path(spec: str) -> Path:
    path = shipped_checkpoint(spec.split(":", 1)[1]) if spec.startswith("shipped:") else Path(spec)
    if not path.is_dir():
        raise ValueError(f"model.init={spec!r} is not a directory (an HF checkpoint, an examples/sft.py export, "
                         "shipped:<name> or random:<preset>); configs/tracerl_full.py explains how to make its "
                         "warm start with examples/sft.py")
    return path


def policy_family(cfg: ml_collections.ConfigDict) -> str:
    """The family name (``"sdar"``, ``"llada"``, ``"dream"``) of ``cfg.model.init``, read without loading weights.

    Its :class:`~tracerl_jax.families.Family` picks the sampler (block, or
    full attention §2), the training rows (extended layout §4, or single
    sequence §5) and the loss form (§6.4).
    """
    spec = cfg.model.init
    if spec.startswith("random:"):
        return get_preset(spec.split(":", 1)[1]).family
    path = _policy_path(spec)
    if (path / MODEL_CONFIG_NAME).is_file():
        return read_model_config(path)[0].family
    return ModelConfig.from_hf_config(read_hf_config(path)).family


def load_policy(cfg: ml_collections.ConfigDict, tokenizer):
    """``(model_config, model)`` from ``cfg.model.init``.

    ``random:<preset>`` initialises a preset with the tokenizer's vocabulary
    (``tiny-llada``, ``small-dream``, ...: the CPU sizes in a full-attention
    layout); ``shipped:<name>`` loads a checkpoint shipped with the package;
    anything else is a directory: a Hugging Face checkpoint of any supported
    family (``config.json`` + safetensors) or an ``examples/sft.py`` export
    (``model_config.json`` + ``params/``). Every process loads the same weights.
    """
    spec = cfg.model.init
    if spec.startswith("random:"):
        mcfg = get_preset(spec.split(":", 1)[1]).replace(
            vocab_size=tokenizer.vocab_size, mask_token_id=tokenizer.mask_id, pad_token_id=tokenizer.pad_id,
            eos_token_id=tokenizer.eos_id, remat=cfg.model.remat, attention_impl=cfg.model.attention_impl)
        return mcfg, init_model(mcfg, seed=cfg.seed)
    path = _policy_path(spec)
    if (path / MODEL_CONFIG_NAME).is_file():
        from flax import nnx

        mcfg, graphdef, params = load_model(path, remat=cfg.model.remat, attention_impl=cfg.model.attention_impl)
        model = nnx.merge(graphdef, params)
    else:
        mcfg, model = load_hf_checkpoint(path, remat=cfg.model.remat, attention_impl=cfg.model.attention_impl)
    if mcfg.vocab_size < tokenizer.vocab_size or mcfg.mask_token_id != tokenizer.mask_id:
        raise ValueError(f"checkpoint {path} (vocab {mcfg.vocab_size}, mask {mcfg.mask_token_id}) does not match "
                         f"the tokenizer (vocab {tokenizer.vocab_size}, mask {tokenizer.mask_id})")
    return mcfg, model


def load_data(cfg):
    """Train and held-out examples: a built-in task (generated, disjoint splits),
    ``math500``/``gsm8k`` (shipped test splits; training on them is for smoke
    runs only) or ``jsonl:<train path>[,<eval path>]`` in the reference format.
    ``task.num_eval = 0`` turns held-out evaluation off."""
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


def sampler(cfg, tokenizer, mcfg, graphdef, *, strategy, temperature, threshold):
    """The rollout (or evaluation) sampler of the policy's family.

    ``cfg.rollout`` gives every setting but the three arguments (which differ
    between rollouts and evaluation).
    """
    section = dict(cfg.rollout.to_dict(), strategy=strategy, temperature=temperature, threshold=threshold)
    return _common.make_sampler(section, tokenizer, graphdef, mcfg, block_size=cfg.rollout.block_size,
                                gen_length=cfg.rollout.gen_length, name="rollout")


def policy_loss_config(cfg, family: Family | str) -> PolicyLossConfig:
    """The policy loss (§6) of ``cfg.rl`` in the family's reference form (block §6.2; full attention
    §6.4: no log-ratio clamp, a per-row token mean, an unnormalised KL)."""
    c = cfg.rl
    family = get_family(family) if isinstance(family, str) else family
    return dataclasses.replace(PolicyLossConfig(**family.policy_loss_defaults), name=c.loss, eps=c.eps, beta=c.beta,
                               kl_estimator=c.kl_estimator, normalizer=c.normalizer or family.normalizer)


def advantage_estimator(cfg) -> str:
    """``rl.advantage``, or step-level GAE with the value model and group z-scores without (§7.4, §8)."""
    return cfg.rl.advantage or ("step_gae" if cfg.value.enabled else "group")


def row_settings(cfg, tokenizer) -> RowSettings:
    """The row fields of the RL config."""
    c = cfg.rl
    return RowSettings(mask_id=tokenizer.mask_id, pad_id=tokenizer.pad_id, block_size=cfg.rollout.block_size,
                       shrink=c.shrink, post_num=c.post_num, lower_p=c.lower_p, upper_p=c.upper_p,
                       mask_ratio=c.mask_ratio, num_draws=c.num_draws, compat=cfg.rollout.compat)


def shard_rows_locally(sample_fn, local_mesh: Mesh):
    """Runs a sampler data-parallel over this process's devices.

    The batch rows (prompts and their keys) are split over ``local_mesh``
    when they divide evenly; the compiled sampler then runs SPMD with the
    replicated parameters. With one local device this is ``sample_fn``.
    """
    n = local_mesh.size
    if n == 1:
        return sample_fn
    rows = NamedSharding(local_mesh, P("data"))

    def fn(params, prompts, prompt_valid, rng=None, row_keys=None):
        B = np.shape(prompts)[0]
        if B % n:
            return sample_fn(params, prompts, prompt_valid, rng=rng, row_keys=row_keys)
        if row_keys is None:
            row_keys = jax.random.split(rng if rng is not None else jax.random.key(0), B)
        put = lambda x: jax.device_put(x, rows)
        return sample_fn(params, put(np.asarray(prompts)), put(np.asarray(prompt_valid)), row_keys=put(row_keys))

    return fn


# ---------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------


def resolve_batch_rows(cfg: ml_collections.ConfigDict, device_count: int) -> None:
    """Sets ``rl.batch_rows`` from ``rl.batch_rows_per_device`` when that is given.

    The reference's recipes state the update size per GPU (``batch_size_lm``
    x GA); a global ``batch_rows`` written for one device count would leave
    micro-batches that do not split over another, so the accelerator recipes
    give rows per device and the run multiplies by its device count.
    """
    per = cfg.rl.get("batch_rows_per_device")
    if per is None:
        return
    if not isinstance(per, int) or isinstance(per, bool) or per < 1:
        raise ValueError(f"rl.batch_rows_per_device must be an int >= 1 or None, got {per!r}")
    cfg.rl.batch_rows = per * device_count


def check_config(cfg: ml_collections.ConfigDict, *, family: Family | str = "sdar", process_count: int = 1,
                 device_count: int = 1) -> None:
    """Rejects a config that cannot run, before anything is built.

    Args:
      cfg: the RL config.
      family: the policy's family (:func:`policy_family`): some settings
        exist for block models only, others for full attention only.
      process_count, device_count: of the run.

    Raises:
      ValueError: naming the field and what it must satisfy (lengths that are
        not block multiples, batches that do not split over the processes'
        prompts or the devices' rows, non-positive counts, settings of the
        other model family, ...).
    """
    r, c = cfg.rollout, cfg.rl
    family = get_family(family) if isinstance(family, str) else family
    check_name(rl.ROW_BUILDERS, c.method, "rl.method")
    check_name(POLICY_LOSSES, c.loss, "rl.loss")
    estimator = advantage_estimator(cfg)
    check_name(ADVANTAGE_ESTIMATORS, estimator, "rl.advantage")
    if getattr(ADVANTAGE_ESTIMATORS.get(estimator), "needs_values", False) != bool(cfg.value.enabled):
        raise ValueError(f"rl.advantage={estimator!r} {'needs' if not cfg.value.enabled else 'does not use'} the "
                         f"value model; set value.enabled={not cfg.value.enabled} or choose another estimator")
    for name, v in (("rollout.num_prompts", r.num_prompts), ("rollout.k", r.k), ("rollout.block_size",
                    r.block_size), ("rl.batch_rows", c.batch_rows), ("rl.grad_accum", c.grad_accum),
                    ("eval.every", cfg.eval.every), ("eval.batch_size", cfg.eval.batch_size),
                    ("checkpoint.every", cfg.checkpoint.every), ("task.num_train", cfg.task.num_train)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    if c.total_steps < 0 or cfg.task.num_eval < 0:
        raise ValueError(f"rl.total_steps and task.num_eval must be >= 0, got {c.total_steps}, {cfg.task.num_eval}")
    if r.gen_length % r.block_size or cfg.prompt_len % r.block_size:
        raise ValueError(f"rollout.gen_length={r.gen_length} and prompt_len={cfg.prompt_len} must be multiples of "
                         f"rollout.block_size={r.block_size}")
    _check_family_settings(cfg, family)
    if c.batch_rows % c.grad_accum:
        raise ValueError(f"rl.batch_rows={c.batch_rows} must be divisible by rl.grad_accum={c.grad_accum}")
    if cfg.value.enabled and c.method != "TraceRL":
        raise ValueError("the value model supports rl.method='TraceRL' only (as the reference)")
    if r.num_prompts % process_count:
        raise ValueError(f"rollout.num_prompts={r.num_prompts} must be divisible by the number of processes "
                         f"({process_count}): each process rolls out whole prompt groups")
    micro = c.batch_rows // c.grad_accum
    if micro % device_count:
        raise ValueError(f"a micro-batch of rl.batch_rows/rl.grad_accum = {micro} rows must be divisible by the "
                         f"number of devices ({device_count}); raise rl.batch_rows or lower rl.grad_accum")


def _check_family_settings(cfg, family: Family) -> None:
    r, c = cfg.rollout, cfg.rl
    family.check_sampler_section(r, "rollout")
    family.check_sampler_section(dict(r.to_dict(), strategy=cfg.eval.strategy), "eval")
    if r.compat not in ("recommended", "reference"):
        raise ValueError(f"rollout.compat must be 'recommended' or 'reference', got {r.compat!r}")
    if not isinstance(c.num_draws, int) or isinstance(c.num_draws, bool) or c.num_draws < 1:
        raise ValueError(f"rl.num_draws must be an int >= 1, got {c.num_draws!r}")
    family.check_rl_settings(r, c)


# ---------------------------------------------------------------------------
# Build / resume
# ---------------------------------------------------------------------------


def _row_map(fn, graphdef, param_sharding, batch_sharding):
    """``(params, rows [GA, mb, ...]) -> fn(...) [GA, mb, L1]``, one compiled, sharded pass.

    The micro-batch layout of the updates, so old log-probs/values are
    computed on exactly the rows (and devices) the update will see.
    """
    def f(params, rows):
        return jax.lax.map(lambda r: fn(graphdef, params, r), rows)

    return jax.jit(f, in_shardings=(param_sharding, batch_sharding), out_shardings=batch_sharding)


def build(cfg: ml_collections.ConfigDict, *, score_fn: Optional[Callable] = None) -> SimpleNamespace:
    """Everything one run needs; restores the latest checkpoint of ``cfg.workdir`` if there is one.

    Args:
      cfg: the RL config (``configs/tracerl.py``).
      score_fn: batch reward ``(texts, examples, lengths) -> scores``;
        default: the task's verifier.
    """
    family = get_family(policy_family(cfg))
    resolve_batch_rows(cfg, jax.device_count())
    check_config(cfg, family=family, process_count=jax.process_count(), device_count=jax.device_count())
    run = SimpleNamespace(cfg=cfg, workdir=Path(cfg.workdir), family=family)
    run.workdir.mkdir(parents=True, exist_ok=True)
    run.tokenizer = load_tokenizer(cfg.tokenizer)
    run.row_settings = row_settings(cfg, run.tokenizer)
    run.advantage = advantage_estimator(cfg)
    run.train, run.test = load_data(cfg)
    run.score_fn = score_fn or default_verifier(run.train[:1] + run.test[:1])

    # One data-parallel mesh over every process's devices; a local one for rollouts.
    run.mesh = shd.make_mesh(data=jax.device_count())
    run.local_mesh = Mesh(np.asarray(jax.local_devices()), ("data",))
    run.replicated = NamedSharding(run.mesh, P())
    run.batch_sharding = shd.batch_sharding(run.mesh, leading_none=1)  # [GA, micro rows, ...]

    run.model_config, model = load_policy(cfg, run.tokenizer)
    run.graphdef, params = split_model(model)
    run.sample_fn = shard_rows_locally(sampler(
        cfg, run.tokenizer, run.model_config, run.graphdef, strategy=cfg.rollout.strategy,
        temperature=cfg.rollout.temperature, threshold=cfg.rollout.threshold), run.local_mesh)
    run.eval_sample_fn = shard_rows_locally(sampler(
        cfg, run.tokenizer, run.model_config, run.graphdef, strategy=cfg.eval.strategy,
        temperature=cfg.eval.temperature, threshold=cfg.eval.threshold), run.local_mesh)

    c = cfg.rl
    run.opt_cfg = OptimizerConfig(learning_rate=c.learning_rate, schedule=c.schedule, max_grad_norm=c.max_grad_norm,
                                  total_updates=max(c.total_steps, 1))
    opt = make_optimizer(run.opt_cfg)
    state = init_train_state(params, opt)
    state_sh = state_shardings(state, opt, run.mesh)
    run.state = rl.to_global(state, state_sh)
    run.policy_step = make_policy_step(run.graphdef, opt, policy_loss_config(cfg, family), mesh=run.mesh,
                                       state_sharding=state_sh)
    run.old_logprobs = _row_map(trajectory_logprobs, run.graphdef, state_sh.params, run.batch_sharding)
    run.value_step = None
    if cfg.value.enabled:
        run.value_graphdef, vparams = split_model(value_model_from_policy(model))
        vopt = make_optimizer(OptimizerConfig(learning_rate=cfg.value.learning_rate, max_grad_norm=c.max_grad_norm))
        vstate = init_train_state(vparams, vopt)
        vstate_sh = state_shardings(vstate, vopt, run.mesh)
        run.vstate = rl.to_global(vstate, vstate_sh)
        run.value_step = make_value_step(run.value_graphdef, vopt, clip=cfg.value.clip,
                                         normalizer=cfg.rl.normalizer or family.normalizer, mesh=run.mesh,
                                         state_sharding=vstate_sh)
        run.old_values = _row_map(trajectory_values, run.value_graphdef, vstate_sh.params, run.batch_sharding)
    del model, params, state

    # Every process walks the same global prompt stream and takes its slice of each batch.
    run.data = ExampleIterator(num_examples=len(run.train), batch_size=cfg.rollout.num_prompts, seed=cfg.seed,
                               process_index=jax.process_index(), process_count=jax.process_count())
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
        run.base_key = jax.random.wrap_key_data(np.asarray(rl.to_host(restored.state["rng"])),
                                                impl=jax.random.key_impl(run.base_key))
        run.data.restore(restored.meta["data"])
        run.initial_accuracy = restored.meta["progress"]["initial_accuracy"]
    if jax.process_index() == 0:
        (run.workdir / "config.json").write_text(cfg.to_json_best_effort(indent=2))
    return run


def _state_tree(run) -> dict:
    # The base key is kept process-local for the rollouts; the checkpoint
    # holds its key data as a replicated global array (what Orbax saves).
    key_data = np.asarray(jax.random.key_data(run.base_key))
    tree = {"policy": run.state, "rng": rl.to_global(key_data, run.replicated)}
    if run.cfg.value.enabled:
        tree["value"] = run.vstate
    return tree


def save(run, step: int) -> None:
    """Checkpoints policy (+ value) train states, PRNG key and data position at ``step``."""
    meta = {"data": run.data.state, "progress": {"initial_accuracy": run.initial_accuracy, "step": step}}
    run.ckpt.save(step, _state_tree(run), meta=meta, force=True)


# ---------------------------------------------------------------------------
# Per-process views and evaluation
# ---------------------------------------------------------------------------


def local_params(run, params):
    """This process's replica of replicated global parameters, on its local devices.

    No copy: the local shards already hold the whole array. The rollout and
    evaluation samplers run on it.
    """
    if jax.process_count() == 1:
        return params
    sharding = NamedSharding(run.local_mesh, P())

    def leaf(x):
        if not x.is_fully_replicated:
            raise ValueError("rollouts need replicated parameters; this mesh shards them across processes")
        return jax.make_array_from_single_device_arrays(x.shape, sharding, [s.data for s in x.addressable_shards])

    return jax.tree.map(leaf, params)


def held_out_accuracy(run, params) -> Optional[float]:
    """Mean reward of greedy decoding on the held-out prompts (None when ``task.num_eval = 0``).

    Each process evaluates a contiguous share of the prompts; the reward
    sums and counts are added up over processes, so the number is the same
    for any process count. (Row keys are per-share, so a *sampled*
    evaluation, ``eval.temperature > 0``, depends on the process count.)
    """
    if not run.test:
        return None
    share = np.array_split(np.arange(len(run.test)), jax.process_count())[jax.process_index()]
    total = np.zeros(2, np.float64)  # [sum of rewards, responses]
    if share.size:
        result = evaluate(run.eval_sample_fn, local_params(run, params), run.tokenizer,
                          [run.test[i] for i in share], batch_size=run.cfg.eval.batch_size,
                          block_size=run.cfg.rollout.block_size, rng=jax.random.key(run.cfg.seed + 7),
                          batch_verify_fn=run.score_fn, prompt_len=run.cfg.prompt_len, keep_step_maps=False)
        total[:] = (sum(g["reward"] for g in result["generations"]), result["num_responses"])
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        total = np.asarray(multihost_utils.process_allgather(total)).sum(axis=0)
    return float(total[0]) / float(total[1])


def finish(run) -> None:
    """Flushes metrics and checkpoints and draws the learning curves."""
    run.ckpt.close()
    run.writer.close()
    if jax.process_index() != 0:
        return
    jsonl = run.workdir / "metrics.jsonl"
    plot_curves(jsonl, run.workdir / "curves.png", ["reward"] + (["eval/accuracy"] if run.test else []),
                title=f"{run.cfg.rl.method} on {run.cfg.task.name}")
    print(f"[tracerl] metrics: {jsonl}  plot: {run.workdir / 'curves.png'}")
