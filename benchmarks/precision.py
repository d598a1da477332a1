"""Rollout/trainer agreement by precision: what bf16 rollouts and a bf16 trainer do to TraceRL's ratios.

Why. TraceRL's importance ratio compares the policy being trained with the
policy that sampled the data. The sampler (cached attention, committed
blocks, one token block at a time) and the trainer (the extended layout,
no cache) compute the same function by different paths, so their log-probs
agree only to rounding; in bfloat16 that rounding is ~1e-2. With
``rl.old_logprobs = "trainer"`` (the reference, §6.1) the first update's
ratio is exactly 1 by construction and the rollout/trainer gap is silently
absorbed; with ``"rollout"`` the ratio carries it. This script measures the
gap for every combination of rollout and trainer compute dtype (parameters
float32), on the shipped ``arith_sft`` model and arithmetic prompts.

Reported per combination, over the scored tokens of the TraceRL rows:
max and mean |log p_trainer - log p_rollout|, and the first-update ratio
``exp(log p_trainer - log p_rollout)``: min, max, standard deviation and the
fraction outside the PPO clip range [0.8, 1.2].

Usage::

    python benchmarks/precision.py                 # 64 prompts x 4 responses
    python benchmarks/precision.py --prompts 16 --k 2
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import _common as common  # noqa: E402
from tracerl_jax.evaluation import prompt_text  # noqa: E402
from tracerl_jax.families import family_of  # noqa: E402
from tracerl_jax.models import load_hf_checkpoint, shipped_checkpoint, split_model  # noqa: E402
from tracerl_jax.rl.run import rollout_model  # noqa: E402
from tracerl_jax.rows import response_mask  # noqa: E402
from tracerl_jax.scoring import trajectory_logprobs  # noqa: E402
from tracerl_jax.tasks import get_task  # noqa: E402
from tracerl_jax.tokenizers import load_tokenizer  # noqa: E402
from tracerl_jax.trajectory import rows_from_rollout  # noqa: E402

DTYPES = ("float32", "bfloat16")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--gen-length", type=int, default=24)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/precision.json)")
    return p.parse_args(argv)


def measure(args) -> list[dict]:
    tok = load_tokenizer("tasks")
    mcfg, model = load_hf_checkpoint(shipped_checkpoint("arith_sft"))
    graphdef, params = split_model(model)
    family = family_of(mcfg)
    examples = get_task("arithmetic", digits=2, operands=2, ops="+-").generate("test", args.prompts, seed=args.seed)
    prompts, valid = tok.encode_batch([prompt_text(tok, e) for e in examples for _ in range(args.k)],
                                      length=args.prompt_len)
    section = dict(strategy="low_confidence_dynamic", threshold=0.9, temperature=1.0, steps_per_block=4)
    scfg = family.sampler_config(section, tok, block_size=4, gen_length=args.gen_length)
    results = []
    for rollout_dtype in DTYPES:
        rcfg, rgraph = rollout_model(mcfg, graphdef, rollout_dtype)
        sample = family.make_sampler(rgraph, rcfg, scfg)
        ro = sample(params, prompts, valid, rng=jax.random.key(args.seed))
        rows = rows_from_rollout(jnp.asarray(prompts), jnp.asarray(valid), ro, block_size=4, mask_id=tok.mask_id,
                                 pad_id=tok.pad_id, post_num=None).rows
        scored = np.asarray(response_mask(rows))
        recorded = np.asarray(ro.logprobs)[np.asarray(rows.response_index)]
        for trainer_dtype in DTYPES:
            tcfg, tgraph = rollout_model(mcfg, graphdef, trainer_dtype)
            t0 = time.perf_counter()
            logp = np.asarray(jax.jit(trajectory_logprobs, static_argnums=0)(tgraph, params, rows))
            diff = (logp - recorded)[scored]
            ratio = np.exp(diff)
            results.append(dict(
                rollout_dtype=rollout_dtype, trainer_dtype=trainer_dtype, scored_tokens=int(scored.sum()),
                max_abs_diff=float(np.abs(diff).max()), mean_abs_diff=float(np.abs(diff).mean()),
                ratio_min=float(ratio.min()), ratio_max=float(ratio.max()), ratio_std=float(ratio.std()),
                clipped_fraction=float(np.mean((ratio < 0.8) | (ratio > 1.2))),
                trainer_seconds=time.perf_counter() - t0))
    return results


def main(argv=None):
    args = parse_args(argv)
    env = common.environment()
    rows = measure(args)
    print(f"rollout/trainer agreement, arith_sft (small), {args.prompts} prompts x {args.k}, parameters float32")
    print(f"{'rollout':>9} {'trainer':>9} {'tokens':>7} {'max|dlogp|':>11} {'mean|dlogp|':>12} "
          f"{'ratio min':>10} {'ratio max':>10} {'ratio std':>10} {'clipped':>8}")
    for r in rows:
        print(f"{r['rollout_dtype']:>9} {r['trainer_dtype']:>9} {r['scored_tokens']:>7} {r['max_abs_diff']:>11.2e} "
              f"{r['mean_abs_diff']:>12.2e} {r['ratio_min']:>10.4f} {r['ratio_max']:>10.4f} {r['ratio_std']:>10.2e} "
              f"{r['clipped_fraction']:>8.4f}")
    common.write_json("precision", dict(benchmark="precision", args=vars(args), env=env, results=rows), args.out)


if __name__ == "__main__":
    main()
