"""Slot engine vs block sampler, side by side in one run (``benchmarks/sampler.py --engine ...``).

Both decode the same queue of responses with the same per-response keys, so
they produce the same trajectories (tests/test_engine.py); what differs is how
many slot-forwards that takes and how long.

Workloads (``--workload``):

* ``default``: the shipped ``arith_sft`` checkpoint on the RL default recipe's
  rollout: ``rollout.num_prompts`` (16) arithmetic prompts x ``rollout.k`` (8)
  responses, prompt length 16, gen_length 24, block 4, 4 steps per block,
  ``low_confidence_dynamic`` at threshold 0.9, temperature 1, EOS on. The
  block sampler decodes all 128 responses as one batch (as the RL loop does).
* ``longtail``: random weights (``--preset``, default ``tiny``, with the
  tasks tokenizer's vocabulary), ``--responses`` prompts of random lengths
  (8 .. ``--prompt-len``, left-padded), ``--gen-length`` response canvas,
  ``low_confidence_static`` (one token per step). Response lengths follow a
  long-tailed distribution like the paper's rollouts (tens to thousands of
  tokens): the FORCED STOP (``--forced-stop lognormal``, the default) draws
  each response's length from a log-normal with median ``--median-len`` and
  sigma ``--sigma``, clipped to ``[4, gen_length]``, and passes it as the
  response's completion budget (``row_budgets``, the per-row
  ``max_new_tokens`` of both samplers) with ``ignore_eos=True``; a random
  model's EOS (about 1/vocab per token) would otherwise decide the lengths.
  The longest response is forced to ``gen_length`` so every run has the same
  tail. The block sampler decodes the queue as one batch.

Reported per sampler: generated tokens/s (median of the steady calls, after a
first call that compiles), process CPU tokens/s, slot utilisation (slot-forwards
that advanced a live response, a prefill chunk or a denoising step, / all
slot-forwards; the block sampler's slot-forwards are batch x its forwards, its
prefill counting one busy forward per row), forwards (the compiled program's
model calls) and slot-forwards per generated token.
"""

from __future__ import annotations

import numpy as np

import jax

import tracerl_jax as tj
from tracerl_jax.models import cache_init_fn, sampler_forward_fn
from tracerl_jax.sampling import EngineConfig, make_slot_engine

import _common as common


def add_args(p) -> None:
    p.add_argument("--engine", default=None, choices=("both", "engine", "block"),
                   help="compare the slot engine with the block sampler (this mode replaces the preset grid)")
    p.add_argument("--workload", default="default", choices=("default", "longtail"),
                   help="with --engine: default = arith_sft on the RL default's 16 x 8 prompts; longtail = random "
                        "weights, long-tailed response lengths set by --forced-stop")
    p.add_argument("--slots", type=int, default=None,
                   help="engine slots (default: 32 for the default workload, 16 for longtail)")
    p.add_argument("--responses", type=int, default=512, help="longtail: responses in the queue")
    p.add_argument("--fuse-cache-write", action="store_true",
                   help="engine: 2b-query forwards with the fused cache write (EngineConfig.fuse_cache_write)")
    p.add_argument("--preset", default="tiny", help="longtail: random-weight model preset")
    p.add_argument("--forced-stop", default="lognormal", choices=("lognormal",),
                   help="longtail: how response lengths are set (module docstring of benchmarks/engine_vs_block.py)")
    p.add_argument("--median-len", type=float, default=32.0, help="longtail: median response length")
    p.add_argument("--sigma", type=float, default=1.0, help="longtail: log-normal sigma of response lengths")


def forced_lengths(n: int, gen_length: int, median: float, sigma: float, seed: int) -> np.ndarray:
    """Long-tailed response lengths: log-normal, clipped to ``[4, gen_length]``, the longest set to ``gen_length``."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.round(np.exp(rng.normal(np.log(median), sigma, size=n))), 4, gen_length).astype(np.int32)
    lengths[np.argmax(lengths)] = gen_length
    return lengths


def block_counts(step_map: np.ndarray, block_size: int) -> tuple[int, int]:
    """``(forwards, busy row-forwards)`` of one block-sampler call, from its step map.

    A block runs until its slowest row is done; a row's steps in a block are
    ``max - min + 1`` of its (gap-free, growing) step ids there. The prefill
    is one forward, busy for every row; cache writes are fused (no forwards of
    their own).
    """
    B, G = step_map.shape
    blocks = step_map.reshape(B, G // block_size, block_size)
    ran = (blocks > 0).any(-1)
    hi = np.where(blocks > 0, blocks, 0).max(-1)
    lo = np.where(blocks > 0, blocks, np.iinfo(np.int32).max).min(-1)
    per = np.where(ran, hi - lo + 1, 0)
    return 1 + int(per.max(0).sum()), B + int(per.sum())


def workload(args, tok):
    """``(label, graphdef, params, model config, sampler config, prompts, valid, row_budgets, slots)``."""
    if args.workload == "default":
        from importlib import resources

        from tracerl_jax.models import load_hf_checkpoint
        from tracerl_jax.rl.recipe import get_config

        from sampler import arithmetic_prompts

        rc = get_config()
        r = rc.rollout
        path = resources.files("tracerl_jax") / "assets" / "checkpoints" / "arith_sft"
        mcfg, model = load_hf_checkpoint(str(path))
        graphdef, params = tj.split_model(model)
        base, valid = arithmetic_prompts(tok, r.num_prompts, rc.prompt_len, args.seed)
        prompts, valid = np.repeat(base, r.k, axis=0), np.repeat(valid, r.k, axis=0)
        scfg = tj.BlockSamplerConfig(gen_length=r.gen_length, mask_id=tok.mask_id, eos_id=tok.eos_id,
                                     pad_id=tok.pad_id, block_size=r.block_size, steps_per_block=r.steps_per_block,
                                     strategy=r.strategy, threshold=r.threshold, temperature=r.temperature)
        label = f"arith_sft {r.num_prompts}x{r.k}"
        return label, graphdef, params, mcfg, scfg, prompts, valid, None, args.slots or 32
    base = tj.get_preset(args.preset)
    mcfg = base.replace(vocab_size=tok.vocab_size, mask_token_id=tok.mask_id, pad_token_id=tok.pad_id,
                        eos_token_id=tok.eos_id, max_position_embeddings=max(base.max_position_embeddings,
                                                                             args.prompt_len + args.gen_length))
    graphdef, params = tj.split_model(tj.init_model(mcfg, seed=args.seed))
    rng = np.random.default_rng(args.seed)
    n, Lq = args.responses, args.prompt_len
    prompts = np.full((n, Lq), tok.pad_id, np.int32)
    for i, L in enumerate(rng.integers(8, Lq + 1, size=n)):
        prompts[i, Lq - L:] = rng.integers(5, tok.vocab_size, size=L)   # ids 5.. avoid the specials
    valid = np.arange(Lq)[None] >= (Lq - (prompts != tok.pad_id).sum(1))[:, None]
    budgets = forced_lengths(n, args.gen_length, args.median_len, args.sigma, args.seed)
    scfg = tj.BlockSamplerConfig(gen_length=args.gen_length, mask_id=tok.mask_id, eos_id=tok.eos_id,
                                 pad_id=tok.pad_id, block_size=args.block_size, steps_per_block=args.steps_per_block,
                                 strategy="low_confidence_static", temperature=1.0, ignore_eos=True)
    label = (f"{args.preset} random, {n} responses, lengths lognormal(median {args.median_len:g}, sigma "
             f"{args.sigma:g}) mean {budgets.mean():.1f} max {budgets.max()}")
    return label, graphdef, params, mcfg, scfg, prompts, valid, budgets, args.slots or 16


def run(args, tok, env) -> list[dict]:
    label, graphdef, params, mcfg, scfg, prompts, valid, budgets, slots = workload(args, tok)
    n = prompts.shape[0]
    keys = jax.random.split(jax.random.key(args.seed), n)
    fwd, init = sampler_forward_fn(graphdef), cache_init_fn(mcfg)
    calls = {}
    if args.engine in ("both", "block"):
        block = tj.make_block_sampler(fwd, init, scfg)
        calls["block"] = lambda: block(params, prompts, valid, row_keys=keys, row_budgets=budgets)
    if args.engine in ("both", "engine"):
        eng = make_slot_engine(fwd, init, scfg, EngineConfig(num_slots=slots, max_prompt_len=prompts.shape[1],
                                                             fuse_cache_write=args.fuse_cache_write))
        calls["engine"] = lambda: eng(params, prompts, valid, row_keys=keys, row_budgets=budgets, return_stats=True)
    print(f"engine vs block sampler, workload {args.workload}: {label}; {n} responses, engine {slots} slots, "
          f"block batch {n}; {env['cpu_count']} cores", flush=True)
    first = {k: common.timed(f)[1] for k, f in calls.items()}  # compile
    wall, cpu, outs = common.interleaved_rounds(calls, args.repeats, args.budget_s, min_rounds=1)
    results = []
    for k in calls:
        if k == "engine":
            ro, st = outs[k]
            forwards, slot_fwd, busy = int(st.forwards), int(st.slot_forwards), int(st.busy_slot_forwards)
        else:
            ro = outs[k]
            forwards, busy = block_counts(np.asarray(ro.step_map), scfg.block_size)
            slot_fwd = forwards * n
        gen = int(np.asarray(ro.lengths).sum())
        t, c = common.median(wall[k]), common.median(cpu[k])
        results.append(dict(workload=args.workload, sampler=k, slots=slots if k == "engine" else n, responses=n,
                            tokens=gen, mean_length=gen / n, first_s=first[k], steady_s=t, steady_cpu_s=c,
                            steady_all_s=[round(x, 4) for x in wall[k]], tokens_per_s=gen / t,
                            tokens_per_cpu_s=gen / c, forwards=forwards, slot_forwards=slot_fwd,
                            busy_slot_forwards=busy, utilisation=busy / slot_fwd, forwards_per_token=forwards / gen,
                            slot_forwards_per_token=slot_fwd / gen))
    if len(results) == 2:
        lengths_equal = bool(np.array_equal(np.asarray(outs["engine"][0].lengths), np.asarray(outs["block"].lengths)))
        for x in results:
            x["same_lengths_as_other"] = lengths_equal
    common.print_table(results, [("sampler", "sampler", "{}"), ("slots", "slots/batch", "{}"),
                                 ("tokens", "tokens", "{}"), ("mean_length", "mean len", "{:.1f}"),
                                 ("tokens_per_s", "tok/s", "{:.1f}"), ("tokens_per_cpu_s", "tok/cpu-s", "{:.1f}"),
                                 ("steady_s", "steady s", "{:.3f}"), ("first_s", "first s", "{:.2f}"),
                                 ("utilisation", "slot util", "{:.3f}"), ("forwards", "forwards", "{}"),
                                 ("forwards_per_token", "fwd/tok", "{:.3f}"),
                                 ("slot_forwards_per_token", "slot-fwd/tok", "{:.3f}")])
    return results


def main(args) -> None:
    from tracerl_jax.tokenizers import load_tokenizer

    env = common.environment()
    meter = common.LoadMeter()
    tok = load_tokenizer("tasks")
    results = run(args, tok, env)
    load = meter.summary()
    note = common.load_note(env, load)
    print("\n" + note)
    common.write_json(f"engine_{args.workload}", dict(benchmark="engine_vs_block", args=vars(args), env=env, load=load,
                                                      load_note=note, results=results, doc=__doc__), args.out)
    if len(results) == 2:
        b, e = results
        print(f"engine vs block sampler: {e['tokens_per_s'] / b['tokens_per_s']:.2f}x tokens/s, "
              f"utilisation engine {e['utilisation']:.2f} block {b['utilisation']:.2f}")
