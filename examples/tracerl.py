r"""TraceRL: reinforcement learning of a diffusion LM on its own trajectories.

One RL step, as in the paper's algorithm box:

    1. sample prompts                      (a resumable data iterator; each process takes its share)
    2. rollout with trajectories           (block or full-attention sampler: tokens + step maps)
    3. rewards -> group z-scores           (task verifier, §7.4), then every process gets the whole batch
    4. training rows                       (TraceRL rounds, or a baseline's masks)
    5. [value model] old values -> step-level GAE (§8)
    6. old log-probs, policy updates       (PPO-clip on trajectory log-probs, §6)
    7. [value model] value updates
    8. periodic evaluation, metrics, checkpoint

Usage:
  python examples/tracerl.py                                   # CPU default (configs/tracerl.py)
  python examples/tracerl.py --config=configs/tracerl_value.py
  python examples/tracerl.py --config.rl.method=coupled --config.workdir=runs/coupled
  # full attention (LLaDA / Dream): the model decides; see configs/tracerl_full.py
  python examples/tracerl.py --config=configs/tracerl_full.py --config.model.init=runs/sft_llada/export
  python examples/tracerl.py --config.model.init=/ckpt/LLaDA-8B-Instruct --config.tokenizer=/ckpt/LLaDA-8B-Instruct
  # two processes on one machine (see docs/multihost.md); same global batch as one process:
  python examples/tracerl.py --coordinator_address=localhost:12355 --num_processes=2 --process_id=0 &
  python examples/tracerl.py --coordinator_address=localhost:12355 --num_processes=2 --process_id=1
  # TPU pod slice: the same command on every host
  python examples/tracerl.py --distributed --config=configs/trado_4b.py

The policy's family (``tracerl_jax.families``) picks the sampler, the layout
of the rows and the form of the loss: a block model (SDAR/TraDo) is rolled out
block by block and trained on the extended layout (§1, §4, §9.1); a
LLaDA/MMaDA or Dream/DiffuCoder model is rolled out with the full-attention
sampler (§2) and trained on single-sequence rows with whole-response
shrinkage ``rl.shrink`` (§5, §9.2) and the full-attention loss (§6.4). The
loop itself has no family branch. Methods are chosen by name: ``rl.method``
(row builders, ``rl.ROW_BUILDERS``), ``rl.advantage``
(``advantages.ADVANTAGE_ESTIMATORS``), ``rl.loss`` (``losses.POLICY_LOSSES``).

Re-running with the same workdir resumes from the last checkpoint and continues
exactly as an uninterrupted run would. SIGTERM (preemption) finishes the current
step, checkpoints it and exits with status 143 (128 + SIGTERM) -- "interrupted,
restart me" -- while a finished run exits 0.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from absl import app, flags, logging
from ml_collections import config_flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from examples import _rl_setup as setup  # noqa: E402
from tracerl_jax import rl  # noqa: E402
from tracerl_jax.train.optimizer import learning_rate  # noqa: E402
from tracerl_jax.train.step import to_microbatches  # noqa: E402

FLAGS = flags.FLAGS
__doc__ = (__doc__ or "") + setup._common.config_help(setup._common.CONFIG_DIR / "tracerl.py")
config_flags.DEFINE_config_file("config", str(Path(__file__).resolve().parents[1] / "configs" / "tracerl.py"),
                                "RL recipe (ml_collections config file).")
flags.DEFINE_string("reward", None, "Batch reward 'package.module:function' with signature (texts, examples, "
                    "lengths) -> scores, replacing the task verifier.")
flags.DEFINE_string("coordinator_address", os.environ.get("JAX_COORDINATOR_ADDRESS"),
                    "host:port of process 0, for a multi-process run (env JAX_COORDINATOR_ADDRESS).")
flags.DEFINE_integer("num_processes", int(os.environ["JAX_NUM_PROCESSES"]) if "JAX_NUM_PROCESSES" in os.environ
                     else None, "Processes in a multi-process run (env JAX_NUM_PROCESSES).")
flags.DEFINE_integer("process_id", int(os.environ["JAX_PROCESS_ID"]) if "JAX_PROCESS_ID" in os.environ else None,
                     "This process's index in [0, num_processes) (env JAX_PROCESS_ID).")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() with auto-detection (TPU pod "
                  "slices, SLURM) when no coordinator is given.")


def mean_metrics(ms, prefix):
    if not ms:
        return {}
    keys = ms[0].keys()
    return {f"{prefix}/{k}": float(np.mean([float(m[k]) for m in ms])) for k in keys}


def row_scores(run, fn, params, rows, num_batches):
    """``fn`` (old log-probs or old values) of every packed row, in the update batches' layout.

    Returns float32 ``[R_pad, L1]`` on the host of every process.
    """
    c = run.cfg.rl
    out = np.zeros(rows.p_mask.shape[:1] + (run.cfg.rollout.gen_length,), np.float32)
    for i in range(num_batches):
        chunk = to_microbatches(rl.slice_rows(rows, i, c.batch_rows), c.grad_accum)   # [GA, mb, ...]
        scores = rl.to_host(fn(params, rl.to_global(chunk, run.batch_sharding)))     # [GA, mb, L1]
        out[i * c.batch_rows:(i + 1) * c.batch_rows] = scores.reshape(c.batch_rows, -1)
    return out


def policy_update(run, rows, num_batches, advantages, L1_ref):
    """Old log-probs of every row with the rollout weights (§6.1), then one pass of updates."""
    c = run.cfg.rl
    logp_old = row_scores(run, run.old_logprobs, run.state.params, rows, num_batches)
    place = lambda b: rl.to_global(b, run.batch_sharding)
    metrics = []
    for i, batch in enumerate(rl.update_batches(rows, num_batches, c.batch_rows, c.grad_accum, L1_ref,
                                                place=place, logp_old=logp_old, advantages=advantages)):
        lr = learning_rate(run.opt_cfg, int(run.state.step), num_batches, i)
        run.state, m = run.policy_step(run.state, batch, lr)
        metrics.append(m)
    return metrics


def value_update(run, rows, num_batches, old_values, returns, L1_ref):
    c = run.cfg.rl
    place = lambda b: rl.to_global(b, run.batch_sharding)
    metrics = []
    for batch in rl.update_batches(rows, num_batches, c.batch_rows, c.grad_accum, L1_ref, place=place,
                                   old_values=old_values, returns=returns):
        run.vstate, m = run.value_step(run.vstate, batch, run.cfg.value.learning_rate)
        metrics.append(m)
    return metrics


def rl_step(run, step: int):
    """One TraceRL iteration; returns its metrics (global: every process returns the same)."""
    cfg, c = run.cfg, run.cfg.rl
    key = jax.random.fold_in(run.base_key, step)
    t0 = time.perf_counter()
    # 1-3. this process's prompts -> rollouts with trajectories -> rewards and group z-scores.
    # Keys come from the global prompt index, so the responses do not depend on the process count.
    examples = [run.train[i] for i in next(run.data)]
    first_prompt = run.data.process_index * run.data.local_batch_size
    local = rl.rollout_and_reward(run.sample_fn, setup.local_params(run, run.state.params), run.tokenizer,
                                  examples, k=cfg.rollout.k, prompt_len=cfg.prompt_len, score_fn=run.score_fn,
                                  row_keys=rl.response_keys(jax.random.fold_in(key, 0), len(examples),
                                                            cfg.rollout.k, first_prompt),
                                  group_filter=cfg.rollout.group_filter, truncation_cap=cfg.rollout.truncation_cap)
    batch = rl.gather_rollouts(local, run.tokenizer)   # the whole step's batch, on every process
    t1 = time.perf_counter()
    # 4. training rows (TraceRL replays each trajectory; baselines draw masks), in the family's layout
    rows, completion = rl.build_policy_rows(c.method, batch, family=run.family, settings=run.row_settings,
                                            key=jax.random.fold_in(key, 1))
    rows, _, num_batches = rl.pack_rows(rows, c.batch_rows)
    L1_ref = float(max(int(np.max(np.asarray(batch.rollout.lengths))), 1))
    out = rl.rollout_metrics(batch)
    out["rows"] = float(np.asarray(rows.row_valid).sum())
    if num_batches == 0:  # every group was filtered out: nothing to learn from this step
        out.update(time_rollout=t1 - t0, time_update=0.0)
        return out
    # 5. advantages: [value model: old values ->] step-level GAE, or the group z-scores
    old_values = None
    if run.value_step is not None:
        old_values = row_scores(run, run.old_values, run.vstate.params, rows, num_batches)
    inputs = rl.advantage_inputs(rows, batch, completion, family=run.family, settings=run.row_settings,
                                 old_values=old_values)
    adv, returns = rl.compute_advantages(run.advantage, inputs, gamma=cfg.value.gamma, lam=cfg.value.lam)
    # 6. policy update(s)
    out.update(mean_metrics(policy_update(run, rows, num_batches, adv, L1_ref), "policy"))
    # 7. value update
    if run.value_step is not None and step % cfg.value.train_every == 0:
        out.update(mean_metrics(value_update(run, rows, num_batches, old_values, returns, L1_ref), "value"))
    out.update(time_rollout=t1 - t0, time_update=time.perf_counter() - t1)
    return out


def train(cfg: ml_collections.ConfigDict, *, score_fn: Optional[Callable] = None) -> dict:
    """Runs (or resumes) the RL loop of ``cfg`` to ``cfg.rl.total_steps``.

    Args:
      cfg: an RL config (``configs/tracerl.py``).
      score_fn: batch reward ``(texts, examples, lengths) -> scores``;
        default: the task's verifier.

    Returns:
      The summary also written to ``<workdir>/summary.json``:
      ``initial_accuracy``, ``final_accuracy`` (None without held-out
      prompts), ``steps`` (the last completed RL step) and ``preempted``
      (stopped early by SIGTERM after checkpointing ``steps``).
    """
    with setup.StopRequest() as stop:   # SIGTERM from here on: stop after the current step
        return _train(setup.build(cfg, score_fn=score_fn), stop)


def _fmt(acc: Optional[float]) -> str:
    return "n/a (task.num_eval=0)" if acc is None else f"{acc:.3f}"


def _train(run, stop: "setup.StopRequest") -> dict:
    cfg = run.cfg
    lead = jax.process_index() == 0
    say = print if lead else (lambda *a, **k: None)
    say(f"[tracerl] method={cfg.rl.method} value={cfg.value.enabled} model={cfg.model.init} ({run.family.name}) "
        f"task={cfg.task.name} workdir={run.workdir} processes={jax.process_count()} devices={jax.device_count()}")
    if run.start_step == 0:
        run.initial_accuracy = setup.held_out_accuracy(run, run.state.params)
        if run.initial_accuracy is not None:
            run.writer.write(0, {"eval/accuracy": run.initial_accuracy})
        say(f"[tracerl] held-out accuracy before RL: {_fmt(run.initial_accuracy)}")
    else:
        say(f"[tracerl] resumed at RL step {run.start_step}")
    step, preempted, last_acc = run.start_step, False, None
    bar = tqdm(range(run.start_step + 1, cfg.rl.total_steps + 1), desc="RL", unit="step", dynamic_ncols=True,
               disable=not lead)
    for step in bar:
        t = time.perf_counter()
        m = rl_step(run, step)
        m["time_step"] = time.perf_counter() - t
        if step % cfg.eval.every == 0 or step == cfg.rl.total_steps:
            last_acc = (step, setup.held_out_accuracy(run, run.state.params))
            if last_acc[1] is not None:
                m["eval/accuracy"] = last_acc[1]
        run.writer.write(step, m)
        bar.set_postfix(reward=f"{m['reward']:.2f}", acc=f"{m.get('eval/accuracy', float('nan')):.2f}")
        preempted = step < cfg.rl.total_steps and stop.requested()
        if step % cfg.checkpoint.every == 0 or step == cfg.rl.total_steps or preempted:
            setup.save(run, step)
        if preempted:
            say(f"[tracerl] SIGTERM: checkpointed RL step {step} in {run.ckpt.directory}; stopping")
            break
    if preempted:
        final = None
    elif last_acc is not None and last_acc[0] == step:   # the last step was just evaluated
        final = last_acc[1]
    else:
        final = setup.held_out_accuracy(run, run.state.params)
    summary = {"initial_accuracy": run.initial_accuracy, "final_accuracy": final, "steps": step,
               "preempted": preempted}
    if not preempted:
        say(f"[tracerl] held-out accuracy before: {_fmt(run.initial_accuracy)} after: {_fmt(final)}")
    if lead:
        Path(run.workdir, "summary.json").write_text(json.dumps(summary, indent=2))
    setup.finish(run)
    return summary


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
    setup.init_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                           auto=FLAGS.distributed)
    summary = train(FLAGS.config, score_fn=setup.load_scorer(FLAGS.reward) if FLAGS.reward else None)
    if summary["preempted"]:
        sys.exit(setup.EXIT_PREEMPTED)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    app.run(main)
