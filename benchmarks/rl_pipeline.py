"""Seconds per RL step of the CPU default: the on-device update pipeline against the host pipeline it replaced.

Why. Until the RL iteration moved into ``tracerl_jax.rl``, every step pulled
all training rows to the host, packed them with NumPy, scored each update
batch and brought the scores back, and rebuilt every update batch on the
host (``rl.pack_rows`` / ``to_host`` / ``update_batches``). Now rows, scores,
advantages and update batches stay on device and the host reads one count.
On a pod the old way is an all-gather per stage; on one CPU it is copies.

What runs: two runs of the CPU default recipe (configs/tracerl.py: shipped
``arith_sft``, 16 prompts x 8 responses, 64 rows per update) built by
``tracerl_jax.rl.build_run`` with the same seed, stepped alternately in one
process: ``rl.rl_step`` (on device) and :func:`host_pipeline_step` (the
former loop's update path, rebuilt here from the library's pieces). Both
runs see the same prompts, keys and rollouts, so their metrics must agree
(checked and reported); the script prints the median wall and process-CPU
seconds of the whole step and of its update part (everything after the
rollout and rewards) for each.

Usage::

    python benchmarks/rl_pipeline.py --steps 6
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import _common as common  # noqa: E402
from configs import tracerl as recipe  # noqa: E402
from tracerl_jax import rl  # noqa: E402
from tracerl_jax.rl import stages  # noqa: E402
from tracerl_jax.rl.loop import mean_metrics  # noqa: E402
from tracerl_jax.scoring import trajectory_logprobs  # noqa: E402
from tracerl_jax.train.optimizer import learning_rate  # noqa: E402
from tracerl_jax.train.step import to_microbatches  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=6, help="RL steps of each variant (the first includes compiling)")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/rl_pipeline.json)")
    return p.parse_args(argv)


def host_pipeline_step(run, step: int) -> dict:
    """The former RL step's update path: rows, scores and batches through host NumPy arrays."""
    cfg, c = run.cfg, run.cfg.rl
    key = jax.random.fold_in(run.base_key, step)
    examples = [run.train[i] for i in next(run.data)]
    batch = stages.rollout_and_reward(run.sample_fn, run.policy.state.params, run.tokenizer, examples,
                                      k=cfg.rollout.k, prompt_len=cfg.prompt_len, score_fn=run.score_fn,
                                      row_keys=stages.response_keys(jax.random.fold_in(key, 0), len(examples),
                                                                    cfg.rollout.k),
                                      group_filter=cfg.rollout.group_filter)
    out = stages.rollout_metrics(batch)
    t1 = time.perf_counter()
    rows, _ = stages.build_policy_rows(c.method, batch, family=run.family, settings=run.row_settings,
                                       key=jax.random.fold_in(key, 1))
    host = jax.tree.map(np.asarray, rows)                                # rows to the host
    R, B = host.row_valid.shape[0], c.batch_rows
    order = np.argsort(~host.row_valid, kind="stable")
    R_pad = -(-R // B) * B
    order = np.concatenate([order, np.full(R_pad - R, order[-1])])
    packed = jax.tree.map(lambda a: a[order], host)
    n_valid = int(host.row_valid.sum())
    pad = np.arange(R_pad) >= n_valid
    packed = packed._replace(row_valid=packed.row_valid & ~pad, p_mask=packed.p_mask & ~pad[:, None])
    count = -(-n_valid // B)
    out["rows"] = float(n_valid)
    if count == 0:
        return out
    L1_ref = float(max(int(np.max(np.asarray(batch.rollout.lengths))), 1))
    logp_old = np.zeros(packed.p_mask.shape, np.float32)
    for i in range(count):                                               # scores back to the host
        chunk = to_microbatches(jax.tree.map(lambda a: a[i * B:(i + 1) * B], packed), c.grad_accum)
        logp_old[i * B:(i + 1) * B] = np.asarray(run.host_scorer(run.policy.state.params, chunk)).reshape(B, -1)
    adv = np.asarray(batch.advantages)[packed.response_index]
    metrics = []
    for i in range(count):                                               # batches rebuilt on the host
        sl = lambda a: a[i * B:(i + 1) * B]  # noqa: E731
        b = {"rows": jax.tree.map(sl, packed), "logp_old": sl(logp_old), "advantages": sl(adv)}
        nb = max(int(b["rows"].row_valid.sum()), 1)
        b["num_rows"] = np.full((B,), nb / c.grad_accum, np.float32)
        b["L1_ref"] = np.full((B,), L1_ref, np.float32)
        b = jax.tree.map(jnp.asarray, to_microbatches(b, c.grad_accum))
        lr = learning_rate(run.opt_cfg, int(run.policy.state.step), count, i)
        run.policy.state, m = run.policy.step(run.policy.state, b, lr)
        metrics.append(m)
    out.update(mean_metrics(metrics, "policy"), updates=float(count))
    return out


def main(argv=None):
    args = parse_args(argv)
    env = common.environment()
    meter = common.LoadMeter()
    runs = {}
    for name in ("device", "host"):
        cfg = recipe.get_config()
        cfg.workdir = tempfile.mkdtemp(prefix=f"rl_pipeline_{name}_")
        cfg.task.num_eval = 0
        runs[name] = rl.build_run(cfg)
    graphdef = runs["host"].policy.graphdef
    runs["host"].host_scorer = jax.jit(lambda p, r: jax.lax.map(lambda x: trajectory_logprobs(graphdef, p, x), r))
    fns = {"device": rl.rl_step, "host": host_pipeline_step}
    times = {k: [] for k in fns}
    agree = []
    for step in range(1, args.steps + 1):
        got = {}
        for name, fn in fns.items():
            w0, c0 = time.perf_counter(), time.process_time()
            m = fn(runs[name], step)
            jax.block_until_ready(runs[name].policy.state)
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
            upd = wall - m.get("time_rollout", 0.0) if name == "device" else None
            times[name].append(dict(step=step, wall=wall, cpu=cpu, update_wall=upd))
            got[name] = m
        keys = ("reward", "rows", "policy/loss", "policy/grad_norm")
        agree.append({k: (got["device"].get(k), got["host"].get(k)) for k in keys})
        print(f"step {step}: device {times['device'][-1]['wall']:.2f}s wall / {times['device'][-1]['cpu']:.2f}s cpu, "
              f"host {times['host'][-1]['wall']:.2f}s / {times['host'][-1]['cpu']:.2f}s; "
              + ", ".join(f"{k} {a[0]:.6g} vs {a[1]:.6g}" for k, a in agree[-1].items() if a[0] is not None), flush=True)
    steady = lambda name, k: float(np.median([t[k] for t in times[name][1:]]))  # noqa: E731
    summary = {name: dict(wall=steady(name, "wall"), cpu=steady(name, "cpu")) for name in fns}
    summary["device_over_host_wall"] = summary["device"]["wall"] / summary["host"]["wall"]
    summary["device_over_host_cpu"] = summary["device"]["cpu"] / summary["host"]["cpu"]
    load = meter.summary()
    note = common.load_note(env, load)
    print(f"median over steps 2..{args.steps}: device pipeline {summary['device']['wall']:.2f}s wall / "
          f"{summary['device']['cpu']:.2f}s cpu; host pipeline {summary['host']['wall']:.2f}s / "
          f"{summary['host']['cpu']:.2f}s; ratio {summary['device_over_host_wall']:.3f} wall, "
          f"{summary['device_over_host_cpu']:.3f} cpu")
    print(note)
    common.write_json("rl_pipeline", dict(benchmark="rl_pipeline", args=vars(args), env=env, load=load,
                                          load_note=note, summary=summary, steps=times, agreement=agree), args.out)


if __name__ == "__main__":
    main()
