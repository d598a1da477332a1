"""The RL iteration, as in the paper's algorithm box, and the loop that repeats it.

One step (:func:`rl_step`)::

    1. sample prompts                      (a resumable iterator; each process takes its share)
    2. rollout with trajectories           (one compiled program over all devices, sharded parameters)
    3. rewards -> group z-scores           (per process, §7.4); the step's arrays become global
    4. training rows                       (rl.method: TraceRL rounds, or a baseline's masks) -> update batches
    5. [value model] old values; advantages (rl.advantage: group z-scores, or step-level GAE §8)
    6. old log-probs, policy updates       (PPO-clip on trajectory log-probs, §6)
    7. [value model] value updates

Steps 4-7 stay on device: rows, scores, advantages and update batches are
global arrays sharded over the mesh; the host reads back the number of
valid rows and the metrics. :func:`train` adds held-out evaluation,
metrics, checkpoints, SIGTERM preemption and the final export.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import jax
import numpy as np
from tqdm import tqdm

from tracerl_jax.rl import pipeline, stages
from tracerl_jax.rl.distributed import StopRequest
from tracerl_jax.rl.run import Run, export, finish, held_out_accuracy, save
from tracerl_jax.train.optimizer import learning_rate


def mean_metrics(ms: list, prefix: str) -> dict:
    """``{prefix/name: mean over updates}`` of a list of metric dicts (device scalars)."""
    if not ms:
        return {}
    host = jax.device_get(ms)
    return {f"{prefix}/{k}": float(np.mean([float(m[k]) for m in host])) for k in host[0]}


def rl_step(run: Run, step: int) -> dict:
    """One TraceRL iteration; returns its metrics (the same on every process)."""
    cfg, c = run.cfg, run.cfg.rl
    key = jax.random.fold_in(run.base_key, step)
    t0 = time.perf_counter()
    # 1-3. this process's prompts -> rollouts with trajectories -> rewards and group z-scores. Keys come
    # from the global prompt index, so the responses do not depend on the process count.
    examples = [run.train[i] for i in next(run.data)]
    first_prompt = run.data.process_index * run.data.local_batch_size
    local = stages.rollout_and_reward(
        run.sample_fn, run.policy.state.params, run.tokenizer, examples, k=cfg.rollout.k, prompt_len=cfg.prompt_len,
        score_fn=run.score_fn, row_keys=stages.response_keys(jax.random.fold_in(key, 0), len(examples),
                                                             cfg.rollout.k, first_prompt),
        group_filter=cfg.rollout.group_filter, truncation_cap=cfg.rollout.truncation_cap)
    batch = stages.globalize(local, run.mesh)
    out = stages.rollout_metrics(local)
    # The reward's share of the step (the sandbox, for a code task); time_rollout includes it.
    out.update(time_reward=local.score_seconds,
               reward_responses_per_s=len(local.texts) / max(local.score_seconds, 1e-9))
    t1 = time.perf_counter()
    # 4. training rows in the family's layout, packed into update batches on device
    rows, completion = stages.build_policy_rows(c.method, batch, family=run.family, settings=run.row_settings,
                                                key=jax.random.fold_in(key, 1))
    batches = pipeline.pack(rows, batch_rows=c.batch_rows, grad_accum=c.grad_accum, mesh=run.mesh)
    out["rows"] = float(batches.num_valid)
    if batches.count == 0:  # every group was filtered out: nothing to learn from this step
        out.update(time_rollout=t1 - t0, time_update=0.0)
        return out
    L1_ref = float(max(int(jax.device_get(batch.rollout.lengths.max())), 1))
    # 5. advantages: [value model: old values ->] step-level GAE, or the group z-scores
    old_values = run.value.score(run.value.state.params, batches) if run.value is not None else None
    step_ids, trainable = stages.response_targets(batch, completion, family=run.family, settings=run.row_settings)
    adv, returns = pipeline.batch_advantages(run.advantage, batches, rewards=batch.advantages, step_ids=step_ids,
                                             trainable=trainable, old_values=old_values, gamma=cfg.value.gamma,
                                             lam=cfg.value.lam)
    # 6. old log-probs with the rollout weights (§6.1; or the sampler's own), then one pass of policy updates
    if c.get("old_logprobs", "trainer") == "rollout":
        logp_old = pipeline.recorded_scores(batches, batch.rollout.logprobs)
    else:
        logp_old = run.policy.score(run.policy.state.params, batches)
    ref = {} if run.reference_params is None else {"logp_ref": run.policy.score(run.reference_params, batches)}
    metrics = []
    for i in range(batches.count):
        # The schedule's clock is the RL step (0-based): the updates a step runs vary with filtering,
        # so rl.total_steps is the only horizon known in advance (the saw-tooth uses i instead).
        lr = learning_rate(run.opt_cfg, step - 1, batches.count, i)
        update = pipeline.take_batch(batches, i, L1_ref, logp_old=logp_old, advantages=adv, **ref)
        run.policy.state, m = run.policy.step(run.policy.state, update, lr)
        metrics.append(m)
    out.update(mean_metrics(metrics, "policy"), updates=float(batches.count))
    # 7. value updates
    if run.value is not None and step % cfg.value.train_every == 0:
        metrics = []
        for i in range(batches.count):
            update = pipeline.take_batch(batches, i, L1_ref, old_values=old_values, returns=returns)
            run.value.state, m = run.value.step(run.value.state, update, cfg.value.learning_rate)
            metrics.append(m)
        out.update(mean_metrics(metrics, "value"))
    out.update(time_rollout=t1 - t0, time_update=time.perf_counter() - t1)
    return out


def _fmt(acc: Optional[float]) -> str:
    return "n/a (task.num_eval=0)" if acc is None else f"{acc:.3f}"


def train(run: Run, *, step_fn=rl_step, progress: bool = True) -> dict:
    """Runs (or resumes) ``run`` to ``rl.total_steps``: steps, evaluation, metrics, checkpoints, export.

    SIGTERM (preemption) finishes the current step, checkpoints it and
    returns with ``preempted`` set (the example exits 143 then).

    Args:
      run: from :func:`tracerl_jax.rl.run.build_run`.
      step_fn: the RL iteration, ``(run, step) -> metrics`` (default :func:`rl_step`).
      progress: a tqdm bar on process 0.

    Returns:
      The summary also written to ``<workdir>/summary.json``:
      ``initial_accuracy``, ``final_accuracy`` (None without held-out
      prompts), ``steps`` (the last completed RL step), ``preempted`` and
      ``export`` (the exported policy's directory, when finished).
    """
    with StopRequest() as stop:
        return _train(run, stop, step_fn, progress)


def _train(run: Run, stop: StopRequest, step_fn, progress: bool) -> dict:
    cfg = run.cfg
    lead = jax.process_index() == 0
    say = print if lead else (lambda *a, **k: None)
    say(f"[tracerl] method={cfg.rl.method} value={cfg.value.enabled} model={cfg.model.init} ({run.family.name}) "
        f"task={cfg.task.name} workdir={run.workdir} processes={jax.process_count()} devices={jax.device_count()} "
        f"mesh={dict(run.mesh.shape)}")
    if run.start_step == 0:
        run.initial_accuracy = held_out_accuracy(run, run.policy.state.params)
        if run.initial_accuracy is not None:
            run.writer.write(0, {"eval/accuracy": run.initial_accuracy})
        say(f"[tracerl] held-out accuracy before RL: {_fmt(run.initial_accuracy)}")
    else:
        say(f"[tracerl] resumed at RL step {run.start_step}")
    step, preempted, last_acc, shown = run.start_step, False, None, {}
    bar = tqdm(range(run.start_step + 1, cfg.rl.total_steps + 1), desc="RL", unit="step", dynamic_ncols=True,
               disable=not (lead and progress))
    for step in bar:
        t = time.perf_counter()
        m = step_fn(run, step)
        m["time_step"] = time.perf_counter() - t
        if step % cfg.eval.every == 0 or step == cfg.rl.total_steps:
            last_acc = (step, held_out_accuracy(run, run.policy.state.params))
            if last_acc[1] is not None:
                m["eval/accuracy"] = last_acc[1]
        run.writer.write(step, m)
        if "eval/accuracy" in m:
            shown["acc"] = f"{m['eval/accuracy']:.2f}"   # the latest held-out accuracy, once there is one
        bar.set_postfix(reward=f"{m['reward']:.2f}", **shown)
        preempted = step < cfg.rl.total_steps and stop.requested()
        if step % cfg.checkpoint.every == 0 or step == cfg.rl.total_steps or preempted:
            save(run, step)
        if preempted:
            say(f"[tracerl] SIGTERM: checkpointed RL step {step} in {run.ckpt.directory}; stopping")
            break
    summary = {"initial_accuracy": run.initial_accuracy, "final_accuracy": None, "steps": step,
               "preempted": preempted}
    if not preempted:
        if last_acc is not None and last_acc[0] == step:   # the last step was just evaluated
            summary["final_accuracy"] = last_acc[1]
        else:
            summary["final_accuracy"] = held_out_accuracy(run, run.policy.state.params)
        summary["export"] = str(export(run))
        say(f"[tracerl] held-out accuracy before: {_fmt(run.initial_accuracy)} after: "
            f"{_fmt(summary['final_accuracy'])}")
    if lead:
        Path(run.workdir, "summary.json").write_text(json.dumps(summary, indent=2))
    finish(run)
    return summary
