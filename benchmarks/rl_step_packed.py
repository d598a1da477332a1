"""Seconds per RL step of the CPU default with packed TraceRL rows against unpacked ones.

Why. ``benchmarks/policy_step.py --rows packed,unpacked`` times one update on
synthetic rounds; this asks what packing does to a whole RL step of the CPU
default (configs/tracerl.py: shipped ``arith_sft``, 16 prompts x 8
responses, dynamic decoding at threshold 0.9, so about 2-3 rounds per
response rather than 4).

What runs: two runs of the recipe built by ``tracerl_jax.rl.build_run`` with
the same seed, stepped alternately in one process: unpacked rows (64 rows
per update, the default) and ``rl.pack_rounds = --pack`` (``--batch-rows``
packed rows per update). The first step of each samples the same rollouts
(same prompts, keys, weights); later steps differ as the updates do. The
script prints, per step, the wall and process-CPU seconds of the whole step
and of its update part (everything after the rollout and rewards), the
rows and updates of each, and the medians over steps 2.. (step 1 compiles).

Usage::

    python benchmarks/rl_step_packed.py --steps 6 --pack 4 --batch-rows 32
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import _common as common  # noqa: E402
from configs import tracerl as recipe  # noqa: E402
from tracerl_jax import rl  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=6, help="RL steps of each variant (the first includes compiling)")
    p.add_argument("--pack", type=int, default=4, help="rl.pack_rounds of the packed run")
    p.add_argument("--batch-rows", type=int, default=32, help="rl.batch_rows of the packed run (packed rows)")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/rl_step_packed.json)")
    args = p.parse_args(argv)
    if args.steps < 2:
        p.error("--steps must be >= 2 (step 1 compiles)")
    return args


def main(argv=None):
    args = parse_args(argv)
    env = common.environment()
    meter = common.LoadMeter()
    runs = {}
    for name in ("unpacked", "packed"):
        cfg = recipe.get_config()
        cfg.workdir = tempfile.mkdtemp(prefix=f"rl_step_{name}_")
        cfg.task.num_eval = 0
        if name == "packed":
            cfg.rl.pack_rounds, cfg.rl.batch_rows = args.pack, args.batch_rows
        runs[name] = rl.build_run(cfg)
    times = {k: [] for k in runs}
    for step in range(1, args.steps + 1):
        line = []
        for name, run in runs.items():
            w0, c0 = time.perf_counter(), time.process_time()
            m = rl.rl_step(run, step)
            jax.block_until_ready(run.policy.state)
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
            times[name].append(dict(step=step, wall=wall, cpu=cpu, update_wall=wall - m.get("time_rollout", 0.0),
                                    rows=m.get("rows"), updates=m.get("updates"), reward=m.get("reward"),
                                    loss=m.get("policy/loss")))
            line.append(f"{name} {wall:.2f}s wall / {cpu:.2f}s cpu (update {times[name][-1]['update_wall']:.2f}s, "
                        f"{m.get('rows', 0):.0f} rows, {m.get('updates', 0):.0f} updates, reward {m['reward']:.3f})")
        print(f"step {step}: " + "; ".join(line), flush=True)
    med = lambda name, k: float(np.median([t[k] for t in times[name][1:]]))  # noqa: E731
    summary = {name: dict(wall=med(name, "wall"), cpu=med(name, "cpu"), update_wall=med(name, "update_wall"))
               for name in runs}
    for k in ("wall", "cpu", "update_wall"):
        summary[f"unpacked_over_packed_{k}"] = summary["unpacked"][k] / summary["packed"][k]
    load = meter.summary()
    note = common.load_note(env, load)
    print(f"median over steps 2..{args.steps}: unpacked {summary['unpacked']['wall']:.2f}s wall / "
          f"{summary['unpacked']['cpu']:.2f}s cpu (update {summary['unpacked']['update_wall']:.2f}s); packed "
          f"{summary['packed']['wall']:.2f}s / {summary['packed']['cpu']:.2f}s (update "
          f"{summary['packed']['update_wall']:.2f}s); speed-up {summary['unpacked_over_packed_wall']:.2f}x wall, "
          f"{summary['unpacked_over_packed_cpu']:.2f}x cpu, update {summary['unpacked_over_packed_update_wall']:.2f}x")
    print(note)
    common.write_json("rl_step_packed", dict(benchmark="rl_step_packed", args=vars(args), env=env, load=load,
                                             load_note=note, summary=summary, steps=times), args.out)


if __name__ == "__main__":
    main()
