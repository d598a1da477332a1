r"""Full-attention (LLaDA-style) sampler and TraceRL on a CPU: cache speed/agreement, RL accuracy before/after.

Stages (each writes ``<workdir>/<stage>.json``; later stages reuse earlier outputs):

1. ``sft``: a ``small``-preset model adapted to full attention. It starts from
   the shipped block-SFT checkpoint ``arith_sft`` (same weights, SDAR layout)
   and is fine-tuned with full-attention semi-AR SFT rows (§10.2) on the
   built-in arithmetic task, so every forward pass is bidirectional over the
   whole ``[prompt | 32-token response]`` canvas as the sampler sees it.
2. ``cache``: greedy decoding of held-out prompts with the uncached sampler
   and with the prefix cache at several horizons, timed side by side in one
   process (after compilation; best of ``--repeats``), plus the token
   agreement rate and the accuracy of each.
3. ``rl``: TraceRL (§5, shrink ``--shrink``) for ``--rl_steps`` steps with the
   uncached sampler; held-out greedy accuracy before and after.
4. ``speed`` (not in the default stages; needs no other stage): no cache vs the
   §2.2 prefix cache at horizons None / 32 / 128, random-weight ``small-llada``
   and ``small-dream`` models, block 32, one token per step (the reference's
   configs, scaled), greedy: compile time, wall and CPU time of one rollout,
   forwards and query slots per token, token agreement with no cache. Writes
   ``benchmarks/results/full_attention_cache.json``; table and numbers in
   benchmarks/README.md ("Full-attention prefix cache").

Usage::

    python benchmarks/full_attention.py --workdir=runs/full_attention            # sft, cache, rl
    python benchmarks/full_attention.py --workdir=runs/full_attention --stages=cache
    python benchmarks/full_attention.py --stages=speed                    # generation 256, ~10 min here
    python benchmarks/full_attention.py --stages=speed --gens 512         # ~40 min here

Measured on a shared, heavily loaded 2-core CPU (default arguments, ``--rl_lr=3e-5``;
128 held-out problems, greedy, LLaDA static, 1 token per step, gen 32, block 4):

* sft: the block checkpoint decoded with full attention scores 0.008; after
  200 full-attention SFT updates, 0.398.
* cache (batch 128, best of 3, interleaved; agreement with the uncached tokens):

  ============  =======  ==============  ============  =====================  ========
  variant       seconds  vs uncached     token agree.  completion tok. agree  accuracy
  ============  =======  ==============  ============  =====================  ========
  uncached      15.3     1.00x           1.000         1.000                  0.398
  horizon 0     6.4      2.40x           0.976         0.954                  0.422
  horizon 4     7.3      2.08x           0.984         0.968                  0.383
  horizon 12    10.0     1.53x           0.987         0.975                  0.398
  horizon None  14.8     1.03x           0.994         0.988                  0.375
  ============  =======  ==============  ============  =====================  ========

  (Measured with the earlier cache, before issue 14: a window ``[s-1, s-1+W)``
  and, with horizon None, a prefix of the prompt only. The cache now follows
  §2.2 -- the prefix holds the finished blocks too -- so these rows are
  history; the ``speed`` stage measures the current one.)
* rl: TraceRL, shrink 4, 8 prompts x 8 responses per step: held-out accuracy
  0.398 -> 0.547 (10 steps) -> 0.625 (20 steps), 350 s for the 20 steps.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from _common import LoadMeter, environment, load_note, median, print_table, timed, write_json  # noqa: E402

from tracerl_jax import evaluation, rl  # noqa: E402
from tracerl_jax.rl import pipeline  # noqa: E402
from tracerl_jax.scoring import trajectory_logprobs  # noqa: E402
from tracerl_jax.baselines import semi_ar_sft_rows  # noqa: E402
from tracerl_jax.families import RowSettings, get_family  # noqa: E402
from tracerl_jax.rows import SequenceLayout  # noqa: E402
from tracerl_jax.data import encode_sft_pairs  # noqa: E402
from tracerl_jax.models import (cache_init_fn, full_sampler_forward_fn, get_preset, init_model,  # noqa: E402
                                load_hf_checkpoint, save_hf_checkpoint, split_model)
from tracerl_jax.sampling import FullSamplerConfig, make_full_sampler  # noqa: E402
from tracerl_jax.sampling.full_sampler import WINDOW_SHAPES  # noqa: E402
from tracerl_jax.sampling.full_schedule import block_steps  # noqa: E402
from tracerl_jax.tasks import get_task  # noqa: E402
from tracerl_jax.tokenizers import load_tokenizer  # noqa: E402
from tracerl_jax.train.optimizer import OptimizerConfig, make_optimizer  # noqa: E402
from tracerl_jax.train.step import init_train_state, to_microbatches  # noqa: E402
from tracerl_jax.train.steps import FULL_ATTENTION_REF, batch_scalars, make_policy_step, make_sft_step  # noqa: E402

PROMPT_LEN, GEN, BLOCK = 16, 32, 4
KNOBS = dict(digits=2, operands=2, ops="+-")


def sampler(tok, mcfg, graphdef, **kw):
    base = dict(gen_length=GEN, mask_id=tok.mask_id, pad_id=tok.pad_id, eos_id=tok.eos_id, family="llada",
                block_size=BLOCK, steps=GEN, temperature=0.0)
    base.update(kw)
    return make_full_sampler(full_sampler_forward_fn(graphdef), cache_init_fn(mcfg), FullSamplerConfig(**base),
                             vocab_size=mcfg.vocab_size)


def accuracy(sample_fn, params, tok, examples, batch_size=64):
    res = evaluation.evaluate(sample_fn, params, tok, examples, batch_size=batch_size, block_size=BLOCK,
                              prompt_len=PROMPT_LEN, keep_step_maps=False)
    return float(res["accuracy"]), res


def stage_sft(args, tok, task, out):
    mcfg, model = load_hf_checkpoint(Path(__file__).resolve().parents[1] / "tracerl_jax/assets/checkpoints/arith_sft")
    graphdef, params = split_model(model)
    held_out = task.generate("test", args.num_eval, seed=1)
    before, _ = accuracy(sampler(tok, mcfg, graphdef), params, tok, held_out)
    print(f"[sft] block checkpoint decoded with full attention: accuracy {before:.3f}", flush=True)
    train = task.generate("train", 4000, seed=0)
    pairs = encode_sft_pairs(tok, [evaluation.prompt_text(tok, e) for e in train], [e.solution for e in train],
                             block_size=BLOCK, prompt_len=PROMPT_LEN, response_len=GEN)
    opt = make_optimizer(OptimizerConfig(learning_rate=args.sft_lr))
    step = make_sft_step(graphdef, opt, normalizer="row_tokens")
    state = init_train_state(params, opt)
    rng = np.random.default_rng(0)
    t0, log = time.perf_counter(), []
    for i in range(args.sft_steps):
        idx = rng.choice(len(pairs.kept), args.sft_batch, replace=False)
        b = pairs.take(idx)
        rows = semi_ar_sft_rows(jax.random.key(i), b.prompt_ids, b.prompt_valid, b.response_ids,
                                layout=SequenceLayout("llada", pad_id=tok.pad_id), mask_id=tok.mask_id,
                                pad_id=tok.pad_id, group_size=BLOCK,
                                post_num=None)  # LLaDA-style: the PAD filler after EOS is trained too
        batch = dict(rows=rows, **batch_scalars(rows.row_valid, 1, GEN))
        state, m = step(state, to_microbatches(batch, 1), args.sft_lr)
        log.append(float(m["loss"]))
        if (i + 1) % 25 == 0:
            print(f"[sft] step {i + 1} loss {np.mean(log[-25:]):.4f} ({time.perf_counter() - t0:.0f}s)", flush=True)
    after, _ = accuracy(sampler(tok, mcfg, graphdef), state.params, tok, held_out)
    print(f"[sft] full-attention SFT: accuracy {after:.3f}", flush=True)
    save_hf_checkpoint(state.params, mcfg, out / "full_sft")
    return {"accuracy_block_checkpoint": before, "accuracy_after_full_sft": after, "steps": args.sft_steps,
            "seconds": time.perf_counter() - t0}


def stage_cache(args, tok, task, out):
    mcfg, model = load_hf_checkpoint(out / "full_sft")
    graphdef, params = split_model(model)
    examples = task.generate("test", args.num_eval, seed=1)
    from tracerl_jax.tokenizers import encode_batch
    prompts, valid = encode_batch(tok, [evaluation.prompt_text(tok, e) for e in examples], side="left",
                                  length=PROMPT_LEN)
    variants = {"uncached": dict()}
    for h in args.horizons:
        variants[f"cache_h{h}"] = dict(use_cache=True, further_horizon=h)
    variants["cache_hNone"] = dict(use_cache=True)
    fns = {name: sampler(tok, mcfg, graphdef, **kw) for name, kw in variants.items()}
    outs, times = {}, {name: [] for name in fns}
    for name, fn in fns.items():  # compile
        jax.block_until_ready(fn(params, prompts, valid))
    for _ in range(args.repeats):  # interleaved, so a load change hits every variant alike
        for name, fn in fns.items():
            t = time.perf_counter()
            outs[name] = jax.block_until_ready(fn(params, prompts, valid))
            times[name].append(time.perf_counter() - t)
    base = outs["uncached"]
    res = {}
    for name, ro in outs.items():
        tokens = np.asarray(ro.tokens)
        n = np.asarray(base.lengths)
        comp = np.arange(GEN)[None] < n[:, None]
        texts = rl.decode_completions(tok, ro)
        acc = float(np.mean([float(task.verify(t, e)) for t, e in zip(texts, examples)]))
        res[name] = {"seconds": min(times[name]), "speedup_vs_uncached": min(times["uncached"]) / min(times[name]),
                     "token_agreement": float(np.mean(tokens == np.asarray(base.tokens))),
                     "completion_token_agreement": float(np.mean((tokens == np.asarray(base.tokens))[comp])),
                     "sequence_agreement": float(np.mean(np.all(tokens == np.asarray(base.tokens), axis=1))),
                     "accuracy": acc}
        print(f"[cache] {name:12s} {res[name]}", flush=True)
    return {"batch": int(prompts.shape[0]), "gen_length": GEN, "block": BLOCK, "steps": GEN, "variants": res}


def _query_slots(cfg: FullSamplerConfig, prompt_len: int, num_steps: int) -> int:
    """Query slots the model runs for one row, static schedule (every block uses all its steps)."""
    T = prompt_len + cfg.gen_length
    S = block_steps(cfg.total_steps, cfg.num_blocks)
    if not cfg.use_cache:
        return T * num_steps
    plan = cfg.window_plan(prompt_len)
    return sum(T + (int(S[j]) - 1) * plan.lengths[plan.bucket[j]] for j in range(cfg.num_blocks))


def stage_speed(args, tok, task, out):
    """No cache vs the §2.2 prefix cache, random-weight ``small`` models in both layouts (no training needed)."""
    env, meter = environment(), LoadMeter()
    if not jax.config.jax_compilation_cache_dir:  # lets the first call reuse the program compiled apart below
        jax.config.update("jax_compilation_cache_dir", str(out / "xla_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    variants = {"no cache": dict()}
    for h in args.speed_horizons:
        variants[f"cache h={h}"] = dict(use_cache=True, further_horizon=None if h == "None" else int(h))
    rows, rng = [], np.random.default_rng(0)
    for family in args.speed_families:
        mcfg = get_preset(f"small-{family}")
        graphdef, params = split_model(init_model(mcfg, seed=0))
        for G in args.gens:
            prompts = rng.integers(5, mcfg.vocab_size, (args.speed_batch, args.speed_prompt)).astype(np.int32)
            valid = np.ones_like(prompts, bool)
            cfgs = {name: FullSamplerConfig(gen_length=G, mask_id=mcfg.mask_token_id, pad_id=mcfg.pad_token_id,
                                            family=family, block_size=args.speed_block, steps=G, temperature=0.0,
                                            early_stop=False, **kw) for name, kw in variants.items()}
            fns = {name: make_full_sampler(full_sampler_forward_fn(graphdef), cache_init_fn(mcfg), c)
                   for name, c in cfgs.items()}
            keys = jax.random.split(jax.random.key(0), prompts.shape[0])
            compile_s, outs, wall, cpu = {}, {}, {n: [] for n in fns}, {n: [] for n in fns}
            for name, fn in fns.items():
                # Compile apart (the persistent XLA cache then serves the first call), so every timed
                # call is a run: a single run per variant is a fair sample on a busy machine.
                t0 = time.perf_counter()
                fn.lower_core(params, prompts, valid, keys).compile()
                compile_s[name] = time.perf_counter() - t0
            for _ in range(max(1, args.speed_repeats)):  # interleaved, so a load change hits every variant alike
                for name, fn in fns.items():
                    outs[name], w, c = timed(fn, params, prompts, valid, row_keys=keys)
                    wall[name].append(w)
                    cpu[name].append(c)
                    print(f"[speed] {family} gen {G} {name}: {w:.1f} s wall, {c:.1f} cpu-s", flush=True)
            base = outs["no cache"]
            for name, ro in outs.items():
                n_tok = prompts.shape[0] * G
                steps = int(np.max(np.asarray(ro.num_steps)))
                rows.append({
                    "family": family, "gen": G, "variant": name, "compile_s": compile_s[name],
                    "seconds": median(wall[name]), "cpu_s": median(cpu[name]),
                    "tok_s": n_tok / median(wall[name]), "tok_cpu_s": n_tok / median(cpu[name]),
                    "fwd_per_tok": steps / G,
                    "slots_per_tok": _query_slots(cfgs[name], prompts.shape[1], steps) / G,
                    "speedup": median(wall["no cache"]) / median(wall[name]),
                    "speedup_cpu": median(cpu["no cache"]) / median(cpu[name]),
                    "agree": float(np.mean(np.asarray(ro.tokens) == np.asarray(base.tokens)))})
                print(f"[speed] {rows[-1]}", flush=True)
    load = meter.summary()
    table = print_table(rows, [("family", "model", "{}"), ("gen", "gen", "{}"), ("variant", "variant", "{}"),
                               ("compile_s", "compile s", "{:.1f}"), ("seconds", "s", "{:.1f}"),
                               ("tok_s", "tok/s", "{:.2f}"), ("tok_cpu_s", "tok/cpu-s", "{:.2f}"),
                               ("fwd_per_tok", "fwd/tok", "{:.2f}"), ("slots_per_tok", "query slots/tok", "{:.0f}"),
                               ("speedup", "vs no cache (wall)", "{:.2f}x"),
                               ("speedup_cpu", "vs no cache (cpu)", "{:.2f}x"), ("agree", "token agree", "{:.3f}")])
    note = load_note(env, load)
    print(note, flush=True)
    payload = {"env": env, "load": load, "note": note, "table": table, "rows": rows,
               "settings": {"batch": args.speed_batch, "prompt": args.speed_prompt, "block": args.speed_block,
                            "gens": args.gens, "steps": "= gen (one token per step)", "greedy": True,
                            "weights": "random init (small-llada / small-dream presets)",
                            "repeats": args.speed_repeats, "window_shapes": WINDOW_SHAPES}}
    write_json("full_attention_cache", payload, args.speed_out)
    return payload



def stage_rl(args, tok, task, out):
    mcfg, model = load_hf_checkpoint(out / "full_sft")
    graphdef, params = split_model(model)
    held_out = task.generate("test", args.num_eval, seed=1)
    train = task.generate("train", 4000, seed=2)
    greedy = sampler(tok, mcfg, graphdef)
    rollout = sampler(tok, mcfg, graphdef, temperature=1.0)
    before, _ = accuracy(greedy, params, tok, held_out)
    print(f"[rl] held-out accuracy before: {before:.3f}", flush=True)
    opt = make_optimizer(OptimizerConfig(learning_rate=args.rl_lr))
    policy_step = make_policy_step(graphdef, opt, FULL_ATTENTION_REF)
    state = init_train_state(params, opt)
    score = pipeline.make_batch_scorer(trajectory_logprobs, graphdef)
    verify = evaluation.default_verifier(train[:1])
    rng = np.random.default_rng(3)
    history, t0 = [], time.perf_counter()
    for step in range(1, args.rl_steps + 1):
        exs = [train[i] for i in rng.choice(len(train), args.prompts, replace=False)]
        batch = rl.rollout_and_reward(rollout, state.params, tok, exs, k=args.k, prompt_len=PROMPT_LEN,
                                      rng=jax.random.key(step), score_fn=verify, group_filter="constant")
        settings = RowSettings(mask_id=tok.mask_id, pad_id=tok.pad_id, block_size=BLOCK, shrink=args.shrink, post_num=0)
        family = get_family("llada")
        rows, completion = rl.build_policy_rows("TraceRL", batch, family=family, settings=settings,
                                                key=jax.random.key(step))
        batches = pipeline.pack(rows, batch_rows=args.batch_rows, grad_accum=1)
        rec = {"step": step, "reward": float(batch.scores.mean()), "rows": batches.num_valid}
        if batches.count:
            logp_old = score(state.params, batches)
            step_ids, trainable = rl.response_targets(batch, completion, family=family, settings=settings)
            adv, _ = pipeline.batch_advantages("group", batches, rewards=batch.advantages,
                                               step_ids=step_ids, trainable=trainable)
            for i in range(batches.count):
                state, m = policy_step(state, pipeline.take_batch(batches, i, GEN, logp_old=logp_old,
                                                                  advantages=adv), args.rl_lr)
            rec["loss"] = float(m["loss"])
        rec["seconds"] = time.perf_counter() - t0
        if step % args.eval_every == 0 or step == args.rl_steps:
            rec["accuracy"], _ = accuracy(greedy, state.params, tok, held_out)
        history.append(rec)
        print(f"[rl] {rec}", flush=True)
    after = history[-1]["accuracy"]
    print(f"[rl] held-out accuracy before {before:.3f} after {after:.3f}", flush=True)
    return {"accuracy_before": before, "accuracy_after": after, "history": history, "shrink": args.shrink,
            "prompts": args.prompts, "k": args.k, "lr": args.rl_lr}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="runs/full_attention")
    p.add_argument("--stages", default="sft,cache,rl")
    p.add_argument("--num_eval", type=int, default=128)
    p.add_argument("--sft_steps", type=int, default=150)
    p.add_argument("--sft_batch", type=int, default=16)
    p.add_argument("--sft_lr", type=float, default=3e-4)
    p.add_argument("--horizons", type=int, nargs="*", default=[0, 4, 12])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rl_steps", type=int, default=20)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--shrink", type=int, default=4)
    p.add_argument("--batch_rows", type=int, default=64)
    p.add_argument("--rl_lr", type=float, default=1e-5)
    p.add_argument("--eval_every", type=int, default=10)
    p.add_argument("--speed_families", nargs="*", default=["llada", "dream"])
    p.add_argument("--gens", type=int, nargs="*", default=[256], help="speed: generation lengths (512 too: slow)")
    p.add_argument("--speed_horizons", nargs="*", default=["None", "32", "128"])
    p.add_argument("--speed_block", type=int, default=32)
    p.add_argument("--speed_batch", type=int, default=1, help="speed: rows per call (the reference uses 2)")
    p.add_argument("--speed_prompt", type=int, default=64)
    p.add_argument("--speed_repeats", type=int, default=1, help="speed: timed runs per variant (after compiling)")
    p.add_argument("--speed_out", default=None, help="speed: JSON path (default benchmarks/results/...)")
    args = p.parse_args()
    out = Path(args.workdir)
    out.mkdir(parents=True, exist_ok=True)
    tok = load_tokenizer("tasks")
    task = get_task("arithmetic", **KNOBS)
    for stage in args.stages.split(","):
        stages = {"sft": stage_sft, "cache": stage_cache, "speed": stage_speed, "rl": stage_rl}
        res = stages[stage](args, tok, task, out)
        (out / f"{stage}.json").write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
