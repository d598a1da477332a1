r"""TraceRL: reinforcement learning of a block-diffusion LM on its own trajectories.

One RL step, as in the paper's algorithm box:

    1. sample prompts                      (a resumable data iterator)
    2. rollout with trajectories           (block sampler: tokens + step maps)
    3. rewards -> group z-scores           (task verifier, §7.4)
    4. training rows                       (TraceRL rounds, or a baseline's masks)
    5. [value model] old values -> step-level GAE (§8)
    6. old log-probs, policy updates       (PPO-clip on trajectory log-probs, §6)
    7. [value model] value updates
    8. periodic evaluation, metrics, checkpoint

Usage:
  python examples/tracerl.py                                   # CPU default (configs/tracerl.py)
  python examples/tracerl.py --config=configs/tracerl_value.py
  python examples/tracerl.py --config.rl.method=coupled --config.workdir=runs/coupled

Re-running with the same workdir resumes from the last checkpoint.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from examples import _rl_setup as setup  # noqa: E402
from tracerl_jax import rl  # noqa: E402
from tracerl_jax.evaluation import evaluate  # noqa: E402
from tracerl_jax.train.optimizer import learning_rate  # noqa: E402
from tracerl_jax.train.steps import old_logprobs  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", str(Path(__file__).resolve().parents[1] / "configs" / "tracerl.py"),
                                "RL recipe (ml_collections config file).")


def held_out_accuracy(run, params) -> float:
    result = evaluate(run.eval_sample_fn, params, run.tokenizer, run.test, batch_size=run.cfg.eval.batch_size,
                      block_size=run.cfg.rollout.block_size, rng=jax.random.key(run.cfg.seed + 7),
                      batch_verify_fn=run.score_fn, prompt_len=run.cfg.prompt_len, keep_step_maps=False)
    return float(result["accuracy"])


def policy_update(run, state, rows, num_batches, advantages, L1_ref):
    """Old log-probs of every row with the rollout weights (§6.1), then one pass of updates."""
    c = run.cfg.rl
    logp_old = np.zeros(rows.p_mask.shape[:1] + (run.cfg.rollout.gen_length,), np.float32)
    for i in range(num_batches):
        sl = slice(i * c.batch_rows, (i + 1) * c.batch_rows)
        logp_old[sl] = np.asarray(old_logprobs(run.graphdef, state.params, rl.slice_rows(rows, i, c.batch_rows),
                                               c.batch_rows // c.grad_accum))
    metrics = []
    for i, batch in enumerate(rl.update_batches(rows, num_batches, c.batch_rows, c.grad_accum, L1_ref,
                                                logp_old=logp_old, advantages=advantages)):
        lr = learning_rate(run.opt_cfg, int(state.step), num_batches, i)
        state, m = run.policy_step(state, batch, lr)
        metrics.append(m)
    return state, metrics


def value_update(run, vstate, rows, num_batches, old_values, returns, L1_ref):
    c = run.cfg.rl
    metrics = []
    for batch in rl.update_batches(rows, num_batches, c.batch_rows, c.grad_accum, L1_ref,
                                   old_values=old_values, returns=returns):
        vstate, m = run.value_step(vstate, batch, run.cfg.value.learning_rate)
        metrics.append(m)
    return vstate, metrics


def mean_metrics(ms, prefix):
    if not ms:
        return {}
    keys = ms[0].keys()
    return {f"{prefix}/{k}": float(np.mean([float(m[k]) for m in ms])) for k in keys}


def rl_step(run, step: int):
    """One TraceRL iteration; returns its metrics."""
    cfg, c = run.cfg, run.cfg.rl
    key = jax.random.fold_in(run.base_key, step)
    t0 = time.perf_counter()
    # 1-3. prompts -> rollouts with trajectories -> rewards and group z-scores
    examples = [run.train[i] for i in next(run.data)]
    batch = rl.rollout_and_reward(run.sample_fn, run.state.params, run.tokenizer, examples, k=cfg.rollout.k,
                                  prompt_len=cfg.prompt_len, rng=jax.random.fold_in(key, 0),
                                  score_fn=run.score_fn, group_filter=cfg.rollout.group_filter,
                                  truncation_cap=cfg.rollout.truncation_cap)
    t1 = time.perf_counter()
    # 4. training rows (TraceRL replays each trajectory; baselines draw masks)
    rows, completion = rl.build_policy_rows(c.method, batch, block_size=cfg.rollout.block_size,
                                            mask_id=run.tokenizer.mask_id, pad_id=run.tokenizer.pad_id,
                                            key=jax.random.fold_in(key, 1), shrink=c.shrink, post_num=c.post_num,
                                            lower_p=c.lower_p, upper_p=c.upper_p, mask_ratio=c.mask_ratio)
    rows, _, num_batches = rl.pack_rows(rows, c.batch_rows)
    L1_ref = float(max(int(np.max(np.asarray(batch.rollout.lengths))), 1))
    out = rl.rollout_metrics(batch)
    out["rows"] = float(np.asarray(rows.row_valid).sum())
    if num_batches == 0:  # every group was filtered out: nothing to learn from this step
        out.update(time_rollout=t1 - t0, time_update=0.0)
        return out
    # 5. value model: old values -> step-level GAE; else the scalar group advantage
    if run.value_step is not None:
        old_values, adv, returns = rl.value_advantages(
            run.value_graphdef, run.vstate.params, rows, num_batches, c.batch_rows, batch, completion,
            block_size=cfg.rollout.block_size, shrink=c.shrink, pad_id=run.tokenizer.pad_id, post_num=c.post_num,
            gamma=cfg.value.gamma, lam=cfg.value.lam, micro_batch=c.batch_rows // c.grad_accum)
    else:
        adv = batch.advantages[np.asarray(rows.response_index)]
    # 6. policy update(s)
    run.state, pms = policy_update(run, run.state, rows, num_batches, adv, L1_ref)
    out.update(mean_metrics(pms, "policy"))
    # 7. value update
    if run.value_step is not None and step % cfg.value.train_every == 0:
        run.vstate, vms = value_update(run, run.vstate, rows, num_batches, old_values, returns, L1_ref)
        out.update(mean_metrics(vms, "value"))
    out.update(time_rollout=t1 - t0, time_update=time.perf_counter() - t1)
    return out


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
    run = setup.build(FLAGS.config)
    cfg = run.cfg
    print(f"[tracerl] method={cfg.rl.method} value={cfg.value.enabled} model={cfg.model.init} "
          f"task={cfg.task.name} workdir={run.workdir}")
    if run.start_step == 0:
        acc = held_out_accuracy(run, run.state.params)
        run.writer.write(0, {"eval/accuracy": acc})
        run.initial_accuracy = acc
        print(f"[tracerl] held-out accuracy before RL: {acc:.3f}")
    else:
        print(f"[tracerl] resumed at RL step {run.start_step}")
    bar = tqdm(range(run.start_step + 1, cfg.rl.total_steps + 1), desc="RL", unit="step", dynamic_ncols=True)
    for step in bar:
        t = time.perf_counter()
        m = rl_step(run, step)
        m["time_step"] = time.perf_counter() - t
        if step % cfg.eval.every == 0 or step == cfg.rl.total_steps:
            m["eval/accuracy"] = held_out_accuracy(run, run.state.params)
        run.writer.write(step, m)
        bar.set_postfix(reward=f"{m['reward']:.2f}", acc=f"{m.get('eval/accuracy', float('nan')):.2f}")
        if step % cfg.checkpoint.every == 0 or step == cfg.rl.total_steps:
            setup.save(run, step)
    final = held_out_accuracy(run, run.state.params)
    summary = {"initial_accuracy": run.initial_accuracy, "final_accuracy": final, "steps": cfg.rl.total_steps}
    print(f"[tracerl] held-out accuracy before: {run.initial_accuracy} after: {final:.3f}")
    Path(run.workdir, "summary.json").write_text(json.dumps(summary, indent=2))
    setup.finish(run)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    app.run(main)
