"""Compile time of the model, scanned layers (``ModelConfig.scan_layers``) vs unrolled, by depth.

Why. An unrolled decoder puts every layer's ops into the program, so tracing,
lowering and XLA compilation grow with depth; TraDo-4B/8B have 36 layers and
the policy step compiles forward and backward. ``scan_layers=True`` stacks the
layers' parameters and runs one ``lax.scan`` whose body is one layer, so the
program (and its compile time) should not grow with depth.

What runs: for each depth in ``--layers`` and each layout, a fresh jitted
function (a new closure per measurement, so no trace or compile cache is
reused; the persistent compilation cache is off) is lowered (trace +
StableHLO) and compiled (XLA), timing each stage's wall and process CPU
time, for

* ``forward``: :func:`tracerl_jax.models.forward` on a TraceRL training row
  layout (``extended_info``: prompt + clean copy + noised copy), logits out;
* ``fwd+bwd``: ``value_and_grad`` of a policy-style loss (token log-probs of
  the noised copy through :func:`tracerl_jax.losses.policy_loss`) w.r.t. the
  parameters (the policy step's program without the optimizer);
* ``sampler``: the block sampler (:func:`tracerl_jax.sampling.make_block_sampler`,
  ``--batch`` x ``--prompt-len`` prompts, ``--response-len`` tokens, greedy),
  which inlines several cached forwards. Its compiled program is private to
  the sampler, so it is timed through the public call: the first call
  (trace + lower + compile + one rollout) minus the median later call
  (``total_*``; ``lower``/``compile`` are not separated, ``hlo_kb`` is not
  recorded).

The model is the ``tiny`` preset's width (d = 64, 4/2 heads, vocab 512) at
each depth: compile time depends on the number of ops, not on their sizes,
so a small width keeps the run to minutes on a 2-core CPU. Layouts are
interleaved within each depth so a change in background load hits both.
The compiled HLO text size is recorded too (``hlo_kb``), and the median
time of ``--runs`` executions of each compiled program (``run_ms``: what
the scan costs, or saves, at run time).

Usage::

    nice -n 10 python benchmarks/compile_time.py                      # 2, 8, 36 layers
    nice -n 10 python benchmarks/compile_time.py --layers 2,8 --remat
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from tracerl_jax.attention import extended_info  # noqa: E402
from tracerl_jax.losses import policy_loss, token_logprobs  # noqa: E402
from tracerl_jax.models import (cache_init_fn, forward, get_preset, init_model, sampler_forward_fn,  # noqa: E402
                                split_model)
from tracerl_jax.sampling import BlockSamplerConfig, make_block_sampler  # noqa: E402

import _common as common  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", default="2,8,36", help="depths to compile")
    p.add_argument("--preset", default="tiny", help="width of the model (num_layers is overridden)")
    p.add_argument("--batch", type=int, default=2, help="training rows B")
    p.add_argument("--prompt-len", type=int, default=16, help="L0")
    p.add_argument("--response-len", type=int, default=32, help="L1 (rows are L0 + 2 L1 long)")
    p.add_argument("--block-size", type=int, default=4)
    p.add_argument("--programs", default="forward,fwd+bwd,sampler")
    p.add_argument("--rounds", type=int, default=1, help="measurements per (depth, layout, program)")
    p.add_argument("--remat", action="store_true", help="ModelConfig.remat=True (per layer / per scan step)")
    p.add_argument("--runs", type=int, default=5,
                   help="also time this many executions of each compiled program (median; 0 = off)")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/compile_time.json)")
    return p.parse_args(argv)


def _inputs(args, vocab):
    rng = np.random.default_rng(0)
    B, L0, L1 = args.batch, args.prompt_len, args.response_len
    tokens = jnp.asarray(rng.integers(0, vocab, (B, L0 + 2 * L1)), jnp.int32)
    positions = jnp.broadcast_to(jnp.concatenate([jnp.arange(L0 + L1), jnp.arange(L0, L0 + L1)]),
                                 (B, L0 + 2 * L1)).astype(jnp.int32)
    info = extended_info(jnp.ones((B, L0), bool), L1, args.block_size)
    p_mask = jnp.asarray(rng.random((B, L1)) < 0.5)
    logp_old = jnp.asarray(-rng.random((B, L1)) * 3, jnp.float32)
    adv = jnp.asarray(rng.standard_normal(B), jnp.float32)
    return tokens, positions, info, p_mask, logp_old, adv


def _program(kind: str, graphdef, L0: int, L1: int):
    """A fresh function object: jit's trace cache is keyed on it, so nothing is reused across rounds."""
    if kind == "forward":
        def fn(params, tokens, positions, info, p_mask, logp_old, adv):
            return forward(graphdef, params, tokens, positions, info).logits
        return fn

    def loss(params, tokens, positions, info, p_mask, logp_old, adv):
        logits = forward(graphdef, params, tokens, positions, info).logits[:, L0 + L1:]
        logp = token_logprobs(logits, tokens[:, L0 + L1:])
        return policy_loss(logp, logp_old, adv, p_mask, L1_ref=L1)[0]

    grad = jax.value_and_grad(loss)

    def fn(*a):
        return grad(*a)
    return fn


def _measure(fn, args_, runs: int):
    w0, c0 = time.perf_counter(), time.process_time()
    lowered = jax.jit(fn).lower(*args_)
    w1, c1 = time.perf_counter(), time.process_time()
    compiled = lowered.compile()
    w2, c2 = time.perf_counter(), time.process_time()
    out = dict(lower_wall_s=w1 - w0, lower_cpu_s=c1 - c0, compile_wall_s=w2 - w1, compile_cpu_s=c2 - c1,
               total_wall_s=w2 - w0, total_cpu_s=c2 - c0, hlo_kb=len(compiled.as_text()) / 1024)
    if runs:
        jax.block_until_ready(compiled(*args_))  # first run: allocations, thread pools
        out["run_ms"] = 1e3 * common.median([common.timed(compiled, *args_)[1] for _ in range(runs)])
    return out


def _measure_sampler(graphdef, params, config, args, runs: int):
    scfg = BlockSamplerConfig(gen_length=args.response_len, mask_id=config.mask_token_id, eos_id=config.eos_token_id,
                              pad_id=config.pad_token_id, block_size=args.block_size, steps_per_block=args.block_size,
                              strategy="low_confidence_static", temperature=0.0, ignore_eos=True)
    # A new sampler per measurement: a new jit, so nothing compiled before is reused.
    sample = make_block_sampler(sampler_forward_fn(graphdef), cache_init_fn(config), scfg)
    prompts = np.random.default_rng(0).integers(5, config.vocab_size, (args.batch, args.prompt_len)).astype(np.int32)
    valid = np.ones_like(prompts, bool)
    _, w_first, c_first = common.timed(sample, params, prompts, valid)
    later = [common.timed(sample, params, prompts, valid)[1:] for _ in range(max(runs, 1))]
    w_run, c_run = common.median([w for w, _ in later]), common.median([c for _, c in later])
    out = dict(total_wall_s=w_first - w_run, total_cpu_s=c_first - c_run)
    if runs:
        out["run_ms"] = 1e3 * w_run
    return out


def main(argv=None):
    args = parse_args(argv)
    # A persistent cache would turn a repeated program into a cache read.
    jax.config.update("jax_enable_compilation_cache", False)
    env = common.environment()
    meter = common.LoadMeter()
    programs = common.parse_strs(args.programs)
    rows = []
    for L in common.parse_ints(args.layers):
        cfg = get_preset(args.preset, num_layers=L, remat=args.remat)
        models = {scan: split_model(init_model(cfg.replace(scan_layers=scan), seed=0)) for scan in (False, True)}
        inputs = _inputs(args, cfg.vocab_size)
        for kind in programs:
            per = {False: [], True: []}
            for _ in range(args.rounds):
                for scan in (False, True):  # interleaved: background load hits both layouts alike
                    graphdef, params = models[scan]
                    if kind == "sampler":
                        per[scan].append(_measure_sampler(graphdef, params, cfg.replace(scan_layers=scan), args,
                                                          args.runs))
                    else:
                        per[scan].append(_measure(_program(kind, graphdef, args.prompt_len, args.response_len),
                                                  (params,) + inputs, args.runs))
            for scan in (False, True):
                row = dict(layers=L, layout="scanned" if scan else "unrolled", program=kind, rounds=args.rounds)
                for key in per[scan][0]:
                    row[key] = common.median([m[key] for m in per[scan]])
                rows.append(row)
                nan = float("nan")
                print(f"L={L:3d} {row['layout']:9s} {kind:8s} lower {row.get('lower_wall_s', nan):6.2f}s "
                      f"compile {row.get('compile_wall_s', nan):6.2f}s total {row['total_wall_s']:6.2f}s "
                      f"(cpu {row['total_cpu_s']:6.2f}s) hlo {row.get('hlo_kb', nan):7.0f} KiB "
                      f"run {row.get('run_ms', nan):8.2f} ms", flush=True)
    by = {(r["layers"], r["program"], r["layout"]): r for r in rows}
    for r in rows:
        if r["layout"] == "scanned":
            u = by[(r["layers"], r["program"], "unrolled")]
            r["unrolled_over_scanned_wall"] = u["total_wall_s"] / r["total_wall_s"]
            r["unrolled_over_scanned_cpu"] = u["total_cpu_s"] / r["total_cpu_s"]
    print()
    table = common.print_table(rows, [
        ("layers", "layers", "{}"), ("program", "program", "{}"), ("layout", "layout", "{}"),
        ("lower_wall_s", "lower s", "{:.2f}"), ("compile_wall_s", "compile s", "{:.2f}"),
        ("total_wall_s", "total wall s", "{:.2f}"), ("total_cpu_s", "total CPU s", "{:.2f}"),
        ("hlo_kb", "HLO KiB", "{:.0f}"), ("unrolled_over_scanned_wall", "unrolled/scanned", "{:.1f}x"),
        ("run_ms", "run ms", "{:.2f}"),
    ])
    load = meter.summary()
    note = common.load_note(env, load)
    print(note)
    common.write_json("compile_time", dict(benchmark="compile_time", args=vars(args), env=env, load=load,
                                           load_note=note, results=rows, table=table), args.out)


if __name__ == "__main__":
    main()
