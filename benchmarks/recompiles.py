"""XLA compilations of steady-state TraceRL iterations: the "zero recompiles" promise, counted.

Why. On an accelerator a recompilation costs seconds to minutes; an RL loop
whose shapes follow the data (prompt lengths, response lengths, how many
rows survive the group filter) would recompile every iteration. The library
buckets everything to static shapes (DESIGN.md principle 4); this script
counts what actually compiles.

What runs: the shipped RL iteration, ``tracerl_jax.rl.rl_step``, on a run
built by ``tracerl_jax.rl.build_run`` from the CPU recipe (configs/tracerl.py)
exactly as ``examples/tracerl.py`` runs it (single process, no checkpoints or
evaluation): rollout with the jitted block sampler on ``P`` prompts x ``k`` responses
(prompts of arithmetic with 1-3 digit operands and 2-3 operands, left-padded to one
bucket; responses ending at EOS, ragged),
rewards and group z-scores with the task verifier and the ``constant`` group
filter (so the number of surviving rows changes every iteration), TraceRL
rows, packing into fixed-size update batches on device, old log-probs, advantages and
the policy updates. The default model is the shipped ``arith_sft`` checkpoint (the
``small`` preset after SFT) on the arithmetic task with the CPU recipe's
settings, so prompts, responses and row counts are as ragged as in a real
run. ``--model random:tiny`` runs a random model whose rollouts emit EOS with
probability ``--eos-rate`` per token (so responses are ragged) and whose
reward is the parity of the response length (so groups survive the filter
at random).

Counting: the library's :class:`tracerl_jax.diagnostics.CompileCounter`
(a ``jax.monitoring`` listener on XLA backend compilations) per iteration,
and the names of the compiled functions from JAX's "Compiling <name>"
debug log line. The first ``--warmup`` iterations compile everything; the
following ``--iterations`` must compile nothing.

Usage::

    nice -n 10 python benchmarks/recompiles.py                     # 3 warm-up + 20 iterations
    nice -n 10 python benchmarks/recompiles.py --model random:tiny --iterations 5
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from tracerl_jax import rl  # noqa: E402
from tracerl_jax.data import ExampleIterator  # noqa: E402
from tracerl_jax.diagnostics import CompileCounter  # noqa: E402
from tracerl_jax.families import get_family  # noqa: E402
from tracerl_jax.models import cache_init_fn, sampler_forward_fn  # noqa: E402
from tracerl_jax.sampling import make_block_sampler  # noqa: E402
from tracerl_jax.tasks import get_task  # noqa: E402

import _common as common  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="shipped:arith_sft", help="shipped:<name> or random:<preset>")
    p.add_argument("--warmup", type=int, default=3, help="iterations allowed to compile")
    p.add_argument("--iterations", type=int, default=20, help="steady-state iterations counted")
    p.add_argument("--num-prompts", type=int, default=16)
    p.add_argument("--k", type=int, default=8, help="responses per prompt")
    p.add_argument("--prompt-len", type=int, default=24, help="prompt bucket L0")
    p.add_argument("--gen-length", type=int, default=24)
    p.add_argument("--block-size", type=int, default=4)
    p.add_argument("--batch-rows", type=int, default=64)
    p.add_argument("--grad-accum", type=int, default=2)
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--eos-rate", type=float, default=0.05, help="random models: EOS probability per token")
    p.add_argument("--pack-rounds", type=int, default=None, help="rl.pack_rounds (packed TraceRL rows)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/recompiles.json)")
    return p.parse_args(argv)


class CompileNames(logging.Handler):
    """Collects the function names of JAX's "Compiling <name> ..." log records."""

    LOGGERS = ("jax._src.interpreters.pxla",)

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.names: list[str] = []

    def emit(self, record):
        if record.msg.startswith("Compiling "):
            self.names.append(str(record.args[0]) if record.args else record.getMessage())

    def __enter__(self):
        for name in self.LOGGERS:
            lg = logging.getLogger(name)
            self._levels = getattr(self, "_levels", {}) | {name: lg.level}
            lg.setLevel(logging.DEBUG)
            lg.addHandler(self)
        return self

    def __exit__(self, *exc):
        for name in self.LOGGERS:
            lg = logging.getLogger(name)
            lg.removeHandler(self)
            lg.setLevel(self._levels[name])
        return False


def _with_eos_rate(forward_fn, eos_id: int, rate: float):
    """``forward_fn`` whose EOS logit gives EOS probability ``rate`` at every position.

    A random model almost never emits EOS, so every response would run to the
    full canvas; with this its rollouts end at ragged (geometric) lengths.
    Only the sampler sees it (the trainer scores tokens with the model as is).
    """
    import jax.numpy as jnp

    def fn(params, tokens, positions, mask_info, cache, write_cache):
        logits, cache = forward_fn(params, tokens, positions, mask_info, cache, write_cache)
        rest = jax.nn.logsumexp(logits.at[..., eos_id].set(-jnp.inf), axis=-1)
        return logits.at[..., eos_id].set(rest + np.log(rate / (1.0 - rate))), cache

    return fn


class RecordingSampler:
    """Wraps a run's sampler to record the raggedness it saw (prompt token counts, response lengths)."""

    def __init__(self, sample_fn):
        self.sample_fn, self.prompt_tokens, self.lengths = sample_fn, set(), []

    def __call__(self, params, prompts, prompt_valid, rng=None, row_keys=None):
        out = self.sample_fn(params, prompts, prompt_valid, rng=rng, row_keys=row_keys)
        self.prompt_tokens |= {int(v) for v in np.asarray(prompt_valid).sum(1)}
        self.lengths.extend(int(x) for x in np.asarray(out.lengths))
        return out


def build(model: str, *, num_prompts: int, k: int, prompt_len: int, gen_length: int, block_size: int,
          batch_rows: int, grad_accum: int, lr: float, seed: int, eos_rate: float = 0.05, workdir: str = "",
          pack_rounds: int | None = None):
    """The run of ``tracerl_jax.rl.build_run`` for the CPU recipe with these settings.

    ``model``: ``shipped:<name>`` or ``random:<preset>``; a random model's
    rollouts emit EOS with probability ``eos_rate`` per token, and its
    reward is the parity of the response length. ``pack_rounds``: the
    recipe's ``rl.pack_rounds`` (packed TraceRL rows).
    """
    import tempfile

    from configs import tracerl as recipe

    cfg = recipe.get_config()
    cfg.seed, cfg.model.init, cfg.prompt_len = seed, model, prompt_len
    cfg.workdir = workdir or tempfile.mkdtemp(prefix="recompiles_")
    cfg.rollout.update(num_prompts=num_prompts, k=k, gen_length=gen_length, block_size=block_size)
    cfg.rl.update(batch_rows=batch_rows, grad_accum=grad_accum, learning_rate=lr, total_steps=10 ** 6,
                  pack_rounds=pack_rounds)
    cfg.task.num_eval = 0
    # A random model never solves anything (every group would be filtered out): reward it by length
    # parity instead, so groups, rows and update counts vary from iteration to iteration.
    score_fn = None if not model.startswith("random:") else (
        lambda texts, exs, lengths: (np.asarray(lengths) % 2).astype(np.float32))
    run = rl.build_run(cfg, score_fn=score_fn)
    if model.startswith("random:"):
        family = get_family(run.model_config.family)
        scfg = family.sampler_config(dict(cfg.rollout.to_dict()), run.tokenizer, block_size=block_size,
                                     gen_length=gen_length)
        forward_fn = _with_eos_rate(sampler_forward_fn(run.policy.graphdef), run.tokenizer.eos_id, eos_rate)
        run.sample_fn = rl.global_sampler(make_block_sampler(forward_fn, cache_init_fn(run.model_config), scfg),
                                          run.mesh)
    # Ragged prompts: a mixture of operand sizes and counts (prompt lengths 11 to 19 tokens in one bucket).
    run.train = [ex for d in (1, 2, 3) for o in (2, 3)
                 for ex in get_task("arithmetic", digits=d, operands=o, ops="+-").generate("train", 150, seed=seed)]
    run.data = ExampleIterator(num_examples=len(run.train), batch_size=num_prompts, seed=seed)
    run.sample_fn = RecordingSampler(run.sample_fn)
    return run


def rl_iteration(run, step: int) -> dict:
    """One shipped TraceRL iteration (``tracerl_jax.rl.rl_step``) and the raggedness its rollout had."""
    rec = run.sample_fn
    rec.prompt_tokens, rec.lengths = set(), []
    out = rl.rl_step(run, step)
    jax.block_until_ready(run.policy.state)
    return dict(out, num_batches=int(out.get("updates", 0)), prompt_tokens=sorted(rec.prompt_tokens),
                response_lengths=[min(rec.lengths), max(rec.lengths)])


def count_iterations(run, first: int, n: int) -> list[dict]:
    """Runs iterations ``first .. first+n-1``; per iteration: compilations, their names, wall time, stats."""
    out = []
    for step in range(first, first + n):
        t0 = time.perf_counter()
        with CompileCounter() as cc, CompileNames() as names:
            stats = rl_iteration(run, step)
        out.append(dict(step=step, compiles=cc.count, compiled=names.names, wall_s=time.perf_counter() - t0,
                        **stats))
    return out


def main(argv=None):
    args = parse_args(argv)
    env = common.environment()
    meter = common.LoadMeter()
    run = build(args.model, num_prompts=args.num_prompts, k=args.k, prompt_len=args.prompt_len,
                gen_length=args.gen_length, block_size=args.block_size, batch_rows=args.batch_rows,
                grad_accum=args.grad_accum, lr=args.lr, seed=args.seed,
                eos_rate=args.eos_rate, pack_rounds=args.pack_rounds)
    print(f"recompiles: {args.model}, {args.num_prompts} prompts x {args.k}, L0={args.prompt_len}, "
          f"gen {args.gen_length}, {args.batch_rows} rows per update (GA {args.grad_accum}); "
          f"{args.warmup} warm-up + {args.iterations} counted iterations", flush=True)
    results = []
    for phase, first, n in (("warmup", 1, args.warmup), ("steady", 1 + args.warmup, args.iterations)):
        for r in count_iterations(run, first, n):
            r["phase"] = phase
            results.append(r)
            print(f"  {phase:<6} step {r['step']:>3}: {r['compiles']:>3} compiles  {r['wall_s']:6.1f}s  "
                  f"rows {r['rows']:>3} ({r['num_batches']} updates)  prompt tokens {r['prompt_tokens'][0]}.."
                  f"{r['prompt_tokens'][-1]}  response len {r['response_lengths'][0]}..{r['response_lengths'][1]}"
                  f"  reward {r['reward']:.2f}" + (f"  compiled: {sorted(set(r['compiled']))}" if r['compiled'] else ""),
                  flush=True)
    steady = [r for r in results if r["phase"] == "steady"]
    total = sum(r["compiles"] for r in steady)
    warm = sum(r["compiles"] for r in results if r["phase"] == "warmup")
    ragged = dict(
        prompt_tokens=sorted({t for r in steady for t in r["prompt_tokens"]}),
        response_length_min=min(r["response_lengths"][0] for r in steady),
        response_length_max=max(r["response_lengths"][1] for r in steady),
        rows=sorted({r["rows"] for r in steady}), num_batches=sorted({r["num_batches"] for r in steady}))
    print(f"\nwarm-up: {warm} compilations; steady state: {total} compilations in {len(steady)} iterations "
          f"({'MET' if total == 0 else 'NOT MET'}: target 0)")
    print(f"raggedness seen in steady state: prompt token counts {ragged['prompt_tokens']}, response lengths "
          f"{ragged['response_length_min']}..{ragged['response_length_max']}, valid rows {ragged['rows']}, "
          f"updates per iteration {ragged['num_batches']}")
    load = meter.summary()
    note = common.load_note(env, load)
    print(note)
    common.write_json("recompiles", dict(
        benchmark="recompiles", args=vars(args), env=env, load=load, load_note=note,
        warmup_compiles=warm, steady_compiles=total, ragged=ragged, iterations=results), args.out)
    return total


if __name__ == "__main__":
    main()
