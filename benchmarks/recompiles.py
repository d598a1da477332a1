"""XLA compilations of steady-state TraceRL iterations: the "zero recompiles" promise, counted.

Why. On an accelerator a recompilation costs seconds to minutes; an RL loop
whose shapes follow the data (prompt lengths, response lengths, how many
rows survive the group filter) would recompile every iteration. The library
buckets everything to static shapes (DESIGN.md principle 4); this script
counts what actually compiles.

What runs: the stages of ``tracerl_jax.rl`` wired as ``examples/tracerl.py``
wires them (single process, default device, no checkpoints or evaluation):
rollout with the jitted block sampler on ``P`` prompts x ``k`` responses
(prompts of arithmetic with 1-3 digit operands and 2-3 operands, left-padded to one
bucket; responses ending at EOS, ragged),
rewards and group z-scores with the task verifier and the ``constant`` group
filter (so the number of surviving rows changes every iteration), TraceRL
rows, packing into fixed-size update batches, old log-probs and the policy
updates. The default model is the shipped ``arith_sft`` checkpoint (the
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
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from tracerl_jax import rl  # noqa: E402
from tracerl_jax.data import ExampleIterator  # noqa: E402
from tracerl_jax.diagnostics import CompileCounter  # noqa: E402
from tracerl_jax.evaluation import default_verifier  # noqa: E402
from tracerl_jax.families import RowSettings, get_family  # noqa: E402
from tracerl_jax.models import (cache_init_fn, get_preset, init_model, load_hf_checkpoint,  # noqa: E402
                                sampler_forward_fn, shipped_checkpoint, split_model)
from tracerl_jax.sampling import BlockSamplerConfig, make_block_sampler  # noqa: E402
from tracerl_jax.scoring import trajectory_logprobs  # noqa: E402
from tracerl_jax.tasks import get_task  # noqa: E402
from tracerl_jax.tokenizers import load_tokenizer  # noqa: E402
from tracerl_jax.train.optimizer import OptimizerConfig, make_optimizer  # noqa: E402
from tracerl_jax.train.step import init_train_state, to_microbatches  # noqa: E402
from tracerl_jax.train.steps import PolicyLossConfig, make_policy_step  # noqa: E402

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


def build(model: str, *, num_prompts: int, k: int, prompt_len: int, gen_length: int, block_size: int,
          batch_rows: int, grad_accum: int, lr: float, seed: int, eos_rate: float = 0.05):
    """Everything an RL iteration needs (a plain namespace, as ``examples/_rl_setup.build`` makes).

    ``model``: ``shipped:<name>`` or ``random:<preset>``; a random model's
    rollouts emit EOS with probability ``eos_rate`` per token.
    """
    tok = load_tokenizer("tasks")
    if model.startswith("random:"):
        mcfg = get_preset(model.split(":", 1)[1]).replace(
            vocab_size=tok.vocab_size, mask_token_id=tok.mask_id, pad_token_id=tok.pad_id, eos_token_id=tok.eos_id)
        graphdef, params = split_model(init_model(mcfg, seed=seed))
        forward_fn = _with_eos_rate(sampler_forward_fn(graphdef), tok.eos_id, eos_rate)
    else:
        mcfg, m = load_hf_checkpoint(shipped_checkpoint(model.split(":", 1)[1]))
        graphdef, params = split_model(m)
        forward_fn = sampler_forward_fn(graphdef)
    # Ragged prompts: a mixture of operand sizes and counts (prompt lengths 11 to 19 tokens in one bucket).
    train = [ex for d in (1, 2, 3) for o in (2, 3)
             for ex in get_task("arithmetic", digits=d, operands=o, ops="+-").generate("train", 150, seed=seed)]
    # A random model never solves anything (every group would be filtered out): reward it by length
    # parity instead, so groups, rows and update counts vary from iteration to iteration.
    score_fn = (default_verifier(train[:1]) if not model.startswith("random:")
                else lambda texts, exs, lengths: (np.asarray(lengths) % 2).astype(np.float32))
    scfg = BlockSamplerConfig(gen_length=gen_length, mask_id=tok.mask_id, eos_id=tok.eos_id, pad_id=tok.pad_id,
                              block_size=block_size, steps_per_block=4, strategy="low_confidence_dynamic",
                              threshold=0.9, temperature=1.0)
    sample_fn = make_block_sampler(forward_fn, cache_init_fn(mcfg), scfg,
                                   vocab_size=mcfg.vocab_size, max_positions=mcfg.max_position_embeddings)
    opt = make_optimizer(OptimizerConfig(learning_rate=lr))
    policy_step = make_policy_step(graphdef, opt, PolicyLossConfig(eps=0.2, beta=0.01))
    old_logprobs = jax.jit(lambda p, r: jax.lax.map(lambda x: trajectory_logprobs(graphdef, p, x), r))
    return SimpleNamespace(
        tok=tok, mcfg=mcfg, graphdef=graphdef, state=init_train_state(params, opt), sample_fn=sample_fn,
        policy_step=policy_step, old_logprobs=old_logprobs, train=train, score_fn=score_fn,
        data=ExampleIterator(num_examples=len(train), batch_size=num_prompts, seed=seed),
        key=jax.random.key(seed), k=k, prompt_len=prompt_len, gen_length=gen_length, block_size=block_size,
        batch_rows=batch_rows, grad_accum=grad_accum, lr=lr)


def rl_iteration(run, step: int) -> dict:
    """One TraceRL iteration from the library's stages (as ``examples/tracerl.py``'s ``rl_step``)."""
    key = jax.random.fold_in(run.key, step)
    examples = [run.train[i] for i in next(run.data)]
    batch = rl.rollout_and_reward(run.sample_fn, run.state.params, run.tok, examples, k=run.k,
                                  prompt_len=run.prompt_len, score_fn=run.score_fn,
                                  row_keys=rl.response_keys(jax.random.fold_in(key, 0), len(examples), run.k),
                                  group_filter="constant")
    settings = RowSettings(mask_id=run.tok.mask_id, pad_id=run.tok.pad_id, block_size=run.block_size)
    family = get_family(run.mcfg.family)
    rows, completion = rl.build_policy_rows("TraceRL", batch, family=family, settings=settings,
                                            key=jax.random.fold_in(key, 1))
    rows, _, num_batches = rl.pack_rows(rows, run.batch_rows)
    lengths = np.asarray(batch.rollout.lengths)
    L1_ref = float(max(int(lengths.max()), 1))
    out = dict(rl.rollout_metrics(batch), rows=int(np.asarray(rows.row_valid).sum()), num_batches=num_batches,
               prompt_tokens=sorted({int(v) for v in np.asarray(batch.prompt_valid).sum(1)}),
               response_lengths=[int(lengths.min()), int(lengths.max())])
    if num_batches == 0:
        return out
    logp_old = np.zeros(rows.p_mask.shape[:1] + (run.gen_length,), np.float32)
    for i in range(num_batches):
        chunk = to_microbatches(rl.slice_rows(rows, i, run.batch_rows), run.grad_accum)
        logp_old[i * run.batch_rows:(i + 1) * run.batch_rows] = np.asarray(
            run.old_logprobs(run.state.params, jax.tree.map(np.asarray, chunk))).reshape(run.batch_rows, -1)
    inputs = rl.advantage_inputs(rows, batch, completion, family=family, settings=settings)
    adv, _ = rl.compute_advantages("group", inputs)
    for b in rl.update_batches(rows, num_batches, run.batch_rows, run.grad_accum, L1_ref, logp_old=logp_old,
                               advantages=adv):
        run.state, m = run.policy_step(run.state, b, run.lr)
    jax.block_until_ready(run.state)
    out["loss"] = float(m["loss"])
    return out


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
                eos_rate=args.eos_rate)
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
