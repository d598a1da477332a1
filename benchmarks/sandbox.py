"""Programs per second through the library's sandbox, against what starting one interpreter costs.

Why. Inside the ``codefn`` RL loop the sandbox scored about 62 responses/s (docs/results.md).
Every program runs in its own ``python -I -S`` process, in fresh namespaces and under its
own uid (rewards/sandbox.py), ``max_workers`` at a time (default: the CPU count), so the
ceiling is about ``workers / (interpreter start + isolation set-up + tests)``. This script
measures those pieces side by side, interleaved round by round:

=============== ==========================================================================
variant         what
=============== ==========================================================================
interpreter     ``python -I -S -c pass`` launched with ``subprocess.run``, one after
                another: the floor of one process, no isolation
sandbox_w<N>    ``--programs`` distinct correct ``codefn`` programs (the task's solutions,
                four hidden tests each) through ``rewards.score_code`` on a
                ``LocalSandbox`` with N workers (1, and the CPU count)
verify_batch    one RL step's batch, ``--prompts`` x ``--k`` responses, scored by
                ``CodeFunction.verify_batch`` on the CPU-count sandbox; each prompt's
                responses are drawn from its solution and two wrong answers (as a policy
                repeats itself), so identical programs run once
=============== ==========================================================================

Columns: ``programs`` processes run per call; ``wall s`` median seconds per call;
``programs/s`` and ``ms/program`` from it; ``cpu s`` CPU seconds per call of this process
plus its finished children (the programs); ``cpu/wall``.

Usage::

    nice -n 10 python benchmarks/sandbox.py                 # 128 programs, 16 x 8 responses
    python benchmarks/sandbox.py --programs 64 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _common as common  # noqa: E402
from tracerl_jax import tasks  # noqa: E402
from tracerl_jax.rewards import CodeTask, LocalSandbox, score_code  # noqa: E402
from tracerl_jax.tasks.codefn import TEST_TIME_LIMIT, candidate_programs  # noqa: E402


def _cpu_with_children() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _wrong(expr: str) -> str:
    """A plausible wrong answer: the expression plus one."""
    return f"{expr}+1"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--programs", type=int, default=128, help="distinct programs per sandbox call")
    p.add_argument("--prompts", type=int, default=16, help="prompts of the verify_batch call")
    p.add_argument("--k", type=int, default=8, help="responses per prompt of the verify_batch call")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (the first is reported apart)")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/sandbox.json)")
    args = p.parse_args(argv)
    if min(args.programs, args.prompts, args.k) < 1 or args.rounds < 2:
        raise ValueError("--programs, --prompts and --k must be >= 1 and --rounds >= 2")

    env, meter = common.environment(), common.LoadMeter()
    task = tasks.get_task("codefn")
    examples = task.generate("test", args.programs, seed=0)
    programs, code_tasks = [], []
    for ex in examples:
        (program,) = candidate_programs(ex.solution, ex)
        programs.append(f"```python\n{program}```")
        code_tasks.append(CodeTask("function", tests=tuple(ex.meta["tests"])))
    rng = random.Random(0)
    step_examples, responses = [], []
    for ex in examples[:args.prompts]:
        choices = [ex.solution, f"\\boxed{{{_wrong(ex.answer)}}}", f"\\boxed{{{_wrong(_wrong(ex.answer))}}}"]
        for _ in range(args.k):
            step_examples.append(ex)
            responses.append(rng.choice(choices))
    distinct = len({(r, ex.question) for r, ex in zip(responses, step_examples)})

    workers = sorted({1, os.cpu_count() or 1})
    boxes = {w: LocalSandbox(max_workers=w) for w in workers}
    wide = boxes[workers[-1]]

    def interpreter():
        for _ in range(args.programs):
            subprocess.run([sys.executable, "-I", "-S", "-c", "pass"], check=True)
        return args.programs

    def sandbox(w):
        def call():
            results = score_code(programs, code_tasks, executor=boxes[w], test_time_limit=TEST_TIME_LIMIT)
            if not all(r.passed and all(r.passed) for r in results):
                raise RuntimeError("a correct codefn solution failed its tests in the sandbox")
            return len(programs)
        return call

    def verify():
        rewards = task.verify_batch(responses, step_examples, executor=wide)
        want = [1.0 if r == ex.solution else 0.0 for r, ex in zip(responses, step_examples)]
        if rewards != want:
            raise RuntimeError("verify_batch scored the benchmark's responses wrongly")
        return distinct

    calls = {"interpreter": interpreter, **{f"sandbox_w{w}": sandbox(w) for w in workers},
             "verify_batch": verify}
    samples = {k: [] for k in calls}
    try:
        for r in range(args.rounds):
            line = []
            for name, fn in calls.items():
                w0, c0 = time.perf_counter(), _cpu_with_children()
                ran = fn()
                wall, cpu = time.perf_counter() - w0, _cpu_with_children() - c0
                samples[name].append({"wall_s": wall, "cpu_s": cpu, "programs": ran})
                line.append(f"{name} {wall:.2f}s")
            print(f"  round {r}: " + ", ".join(line), flush=True)
    finally:
        for box in boxes.values():
            box.close()

    rows = []
    for name, runs in samples.items():
        steady = runs[1:]  # the first round starts the workers and warms the page cache
        wall = common.median([s["wall_s"] for s in steady])
        cpu = common.median([s["cpu_s"] for s in steady])
        n = steady[0]["programs"]
        rows.append({"variant": name, "programs": n, "first_s": runs[0]["wall_s"], "wall_s": wall,
                     "programs_per_s": n / wall, "ms_per_program": 1e3 * wall / n, "cpu_s": cpu,
                     "cpu_per_wall": cpu / wall,
                     "responses_per_s": len(responses) / wall if name == "verify_batch" else None})
    print(f"\ncodefn: {args.programs} distinct programs; verify_batch: {len(responses)} responses, "
          f"{distinct} distinct programs; workers {workers}")
    common.print_table(rows, [("variant", "variant", "{}"), ("programs", "programs", "{}"),
                              ("first_s", "first s", "{:.2f}"), ("wall_s", "wall s", "{:.2f}"),
                              ("programs_per_s", "programs/s", "{:.1f}"),
                              ("ms_per_program", "ms/program", "{:.1f}"),
                              ("responses_per_s", "responses/s", "{:.1f}"),
                              ("cpu_s", "cpu s", "{:.2f}"), ("cpu_per_wall", "cpu/wall", "{:.2f}")])
    load = meter.summary()
    print(common.load_note(env, load))
    common.write_json("sandbox", {"env": env, "load": load, "args": vars(args), "rows": rows,
                                  "samples": samples}, args.out)


if __name__ == "__main__":
    main()
