"""Throughput of one TraceRL policy update, against a plain LM step and the machine's matmul peak.

Why. A TraceRL update trains on rows in the extended layout ``[prompt L0 |
clean L1 | noised L1]`` (docs/algorithms.md §3.3): every row is ``L0 + 2*L1``
positions long and carries the block-diffusion mask, and a response yields
one row per decoding round. The question a user asks is what that layout and
the TraceRL machinery (trajectory log-probs, PPO-clip + KL loss, gradient
accumulation scan, NaN/Inf guard, clipping, AdamW) cost compared with the
cheapest thing the same model could do with the same positions: one plain
forward+backward of a language-model loss and an optax update. The ratio
``policy_step / plain_step`` answers it; it is measured side by side, the two
steps interleaved round by round in one process.

What is timed (each call ends with ``block_until_ready``; the first call of
each, which compiles, is reported separately; steady numbers are medians):

* ``policy_step``: ``tracerl_jax.train.steps.make_policy_step`` on ``R =
  --batch`` rows (default 8, ``--grad-accum`` micro-batches), ``small``
  preset, vocabulary of the shipped ``tasks`` tokenizer, random weights.
  The rows are built by ``tracerl_jax.trajectory.build_rows`` from a synthetic
  trajectory: ``R / 4`` responses of ``L1`` random tokens whose step map is
  what ``low_confidence_static`` at block 4 / 4 steps produces (one token per
  step, in a random order inside each block), so each response gives 4 rows
  (one per round) and every row is valid. ``logp_old`` comes from the same
  model (``old_logprobs``), advantages are random normal.
* ``plain_step``: ``jax.value_and_grad`` of a next-token cross-entropy over
  the very same ``[R, L0+2*L1]`` token array (positions ``0..N-1``, causal
  mask by default, ``--plain-mask full`` for bidirectional), then the same
  optax optimiser (clip + AdamW), same micro-batching (at ``--grad-accum 1``
  it is exactly one forward+backward).
* ``plain_step_L0+L1``: the plain step on ``[R, L0+L1]`` (the prompt and
  the clean response, no noised copy): the price of the extended layout
  itself is ``policy_step / plain_step_L0+L1``.
* ``policy_forward``: ``old_logprobs`` on the same rows (forward only), to
  show the backward/forward split.
* ``matmul``: ``k`` float32 ``[n, n] @ [n, n]`` ``jnp.dot`` products in one
  jitted loop (``--matmul-n``, default 2048; ``k`` sized so the call lasts
  about one policy step): the machine's achievable peak FLOP/s under the
  current load. A single short product would overstate the peak on a shared
  CPU, where a burst gets a whole core and a long step gets time-sliced.

What "tokens" means (both are printed):

* ``response tokens trained / s``: tokens with a policy-gradient term, i.e.
  ``sum(p_mask)`` over the response part of the batch. With block 4 and no
  ``shrink`` each response token is trained in exactly one round, so this is
  ``R/4 * L1`` per update (512 at the defaults).
* ``positions / s``: sequence positions through the transformer, forward and
  backward: ``R * (L0 + 2*L1)`` per update (4608 at the defaults). This is
  the unit in which the policy step and the plain step do the same work.

Model FLOPs (matmul FLOPs only; the usual 6N rule, made explicit):

    flops = 6 * P_layers * R*N                  # decoder-layer matmuls, fwd (2) + bwd (4)
          + 6 * d * V * R*N_head                # LM head on the positions that reach it
          + 12 * n_layers * H * D * R * N**2    # QK^T and PV, fwd 4*N^2*H*D, bwd twice that

with ``N = L0 + 2*L1``, ``P_layers`` the parameters of the decoder layers (no
embedding: a lookup is not a matmul; no norms), ``N_head = L1`` for the policy
step (only the noised copy is projected to the vocabulary) and ``N - 1`` for
the plain step. Attention runs densely (the XLA path scores all ``N^2`` pairs
and masks them), so ``N^2`` is the work done; the fraction the mask allows is
printed too. Elementwise work (norms, RoPE, softmax, loss, optimiser) is
ignored. ``MFU = flops / step time / matmul FLOP/s``, both measured in this
run. Every call's process CPU time is recorded as well; ``cpu / plain`` and
``MFU(cpu)`` use CPU seconds instead of wall seconds, which other jobs
time-slicing a shared CPU do not inflate.

Usage::

    nice -n 10 python benchmarks/policy_step.py
    nice -n 10 python benchmarks/policy_step.py --l1 1024 --grad-accum 4
    nice -n 10 python benchmarks/policy_step.py --attention both    # + the step with blockwise attention
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import tracerl_jax as tj  # noqa: E402
from tracerl_jax.attention import causal_info, dense_mask, full_info  # noqa: E402
from tracerl_jax.rows import pack_rows  # noqa: E402
from tracerl_jax.tokenizers import load_tokenizer  # noqa: E402
from tracerl_jax.train.optimizer import OptimizerConfig, make_optimizer  # noqa: E402
from tracerl_jax.train.step import init_train_state, to_microbatches  # noqa: E402
from tracerl_jax.train.steps import PolicyLossConfig, batch_scalars, make_policy_step, old_logprobs  # noqa: E402

import _common as common  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--batch", type=int, default=8, help="rows per update (multiple of the block size)")
    p.add_argument("--l0", type=int, default=64, help="prompt length L0")
    p.add_argument("--l1", type=int, default=256, help="response length L1 (e.g. 1024)")
    p.add_argument("--block-size", type=int, default=4)
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per update (both steps)")
    p.add_argument("--plain-mask", choices=("causal", "full"), default="causal")
    p.add_argument("--matmul-n", type=int, default=2048)
    p.add_argument("--max-matmul-reps", type=int, default=64,
                   help="cap on the products per timed matmul call (sized to last about one policy step)")
    p.add_argument("--repeats", type=int, default=5, help="max steady rounds")
    p.add_argument("--budget-s", type=float, default=120.0,
                   help="stop steady rounds once this much time is spent (>= 2 rounds)")
    p.add_argument("--no-forward", action="store_true", help="skip the forward-only timing")
    p.add_argument("--attention", choices=("dense", "blockwise", "both"), default=None,
                   help="model attention_impl for every step; 'both' adds a blockwise policy step beside the dense one "
                        "(default: dense; with --rows: blockwise, the attention packed rows are meant for)")
    p.add_argument("--attention-tiles", default="64x64", help="blockwise q_tile x k_tile")
    p.add_argument("--no-peer", action="store_true", help="skip the PyTorch eager peer (benchmarks/torch_peer.py)")
    p.add_argument("--peer-attn", default="sdpa", choices=("sdpa", "eager"), help="transformers attention of the peer")
    p.add_argument("--torch-threads", type=int, default=0,
                   help="torch intra-op threads (0: the cores this process may use, as XLA)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="model parameters and compute (and the peak matmul's operands); bfloat16 for the "
                        "TraDo-4B-shaped GPU run: --preset trado-4b --preset-vocab --dtype bfloat16 --no-peer")
    p.add_argument("--preset-vocab", action="store_true",
                   help="keep the preset's vocabulary size (e.g. 151936) instead of the tasks tokenizer's; "
                        "token ids still come from the tokenizer, so they are valid either way")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/policy_step.json)")
    p.add_argument("--rows", default=None,
                   help="'packed,unpacked': compare the two row forms of the same rounds instead (see "
                        "compare_rows); with --attention both, each under dense and blockwise attention")
    p.add_argument("--rounds", type=int, default=4,
                   help="--rows mode: TraceRL rounds per response (decoding steps per block), a divisor of the "
                        "block size; packed rows hold all of them")
    args = p.parse_args(argv)
    if args.attention is None:
        args.attention = "blockwise" if args.rows is not None else "dense"
    if args.rows is not None:
        forms = common.parse_strs(args.rows)
        if not forms or any(f not in ("packed", "unpacked") for f in forms):
            p.error(f"--rows takes 'packed', 'unpacked' or both, got {args.rows!r}")
        if args.block_size % args.rounds:
            p.error("--rounds must divide --block-size")
    if args.batch % args.block_size:
        p.error("--batch must be a multiple of --block-size (one row per round, block_size rounds)")
    if args.batch % args.grad_accum:
        p.error("--batch must be divisible by --grad-accum")
    if args.l1 % args.block_size:
        p.error("--l1 must be a multiple of --block-size")
    return args


def synthetic_rows(tok, L0: int, L1: int, n_resp: int, block_size: int, seed: int, rounds: int | None = None,
                   pack: bool = False):
    """Rows of ``n_resp`` responses decoded ``b / rounds`` tokens per step in random order inside each block.

    Args:
      rounds: decoding steps per block (default ``block_size``: one token per step).
      pack: pack each response's rounds into one row (``tracerl_jax.rows.pack_rows``).

    Returns:
      :class:`tracerl_jax.Rows` with ``n_resp * rounds`` rows (packed: ``n_resp`` rows of ``rounds``
      rounds), all valid.
    """
    rounds = rounds or block_size
    rng = np.random.default_rng(seed)
    prompts = rng.integers(5, tok.vocab_size, size=(n_resp, L0)).astype(np.int32)
    valid = np.ones_like(prompts, bool)
    response = rng.integers(5, tok.vocab_size, size=(n_resp, L1)).astype(np.int32)
    nb = L1 // block_size
    order = np.argsort(rng.random((n_resp, nb, block_size)), axis=-1)   # decoding order in each block
    step_in_block = order // (block_size // rounds)                      # b / rounds tokens per step
    step_map = (step_in_block + 1 + rounds * np.arange(nb)[None, :, None]).reshape(n_resp, L1).astype(np.int32)
    lengths = np.full((n_resp,), L1, np.int32)
    rows = tj.build_rows(prompts, valid, response, step_map, lengths, block_size=block_size,
                         mask_id=tok.mask_id, pad_id=tok.pad_id, max_rounds=rounds)
    assert bool(np.all(np.asarray(rows.row_valid))), "every synthetic row should be valid"
    return pack_rows(rows, rounds, block_size=block_size) if pack else rows


def compare_rows(args, env, meter, tok, cfg, bw_cfg):
    """Packed against unpacked rows: the same rounds, the same update, timed side by side.

    ``--batch`` unpacked rows are ``batch / rounds`` responses of ``--rounds``
    rounds each; the packed batch holds the same responses, one row each. Both
    run ``make_policy_step`` on identical data (the loss and gradient norm of
    the two must agree, printed), interleaved round by round; with
    ``--attention both`` each form also runs with blockwise attention. Peak
    memory is XLA's compiled temporary buffer size of each step (what the
    step allocates beyond its inputs and outputs).
    """
    R, L0, L1, GA, b, C = args.batch, args.l0, args.l1, args.grad_accum, args.block_size, args.rounds
    if R % C or (R // C) % GA:
        raise SystemExit(f"--batch {R} must be a multiple of --rounds {C}, and --batch/--rounds of --grad-accum")
    n_resp = R // C
    forms = common.parse_strs(args.rows)
    impls = ("dense", "blockwise") if args.attention == "both" else (args.attention,)
    print(f"packed vs unpacked rows: preset {args.preset}, {n_resp} responses x {C} rounds, L0={L0}, L1={L1}, "
          f"b={b}, GA={GA}; {env['cpu_model']}, {env['cpu_count']} cores, loadavg {env['loadavg_start']}", flush=True)
    opt = make_optimizer(OptimizerConfig(learning_rate=1e-5))
    rng = np.random.default_rng(args.seed)
    adv = jnp.asarray(rng.normal(size=(n_resp,)), jnp.float32)
    calls, work, mem = {}, {}, {}
    for impl in impls:
        graphdef, params = tj.split_model(tj.init_model(cfg if impl == "dense" else bw_cfg, seed=args.seed))
        state = init_train_state(params, opt)
        step = make_policy_step(graphdef, opt, PolicyLossConfig())
        for form in forms:
            rows = synthetic_rows(tok, L0, L1, n_resp, b, args.seed, rounds=C, pack=form == "packed")
            per = rows.tokens.shape[0]
            logp_old = old_logprobs(graphdef, params, rows, per // GA)
            batch = to_microbatches(dict(rows=rows, logp_old=logp_old, advantages=adv[rows.response_index],
                                         **batch_scalars(rows.row_valid, GA, L1)), GA)
            name = f"{form}/{impl}"
            calls[name] = partial(step, state, batch, 1e-5)
            work[name] = dict(inputs=per, positions=int(np.prod(rows.tokens.shape)),
                              trained=int(np.asarray(rows.scored).sum()))
            mem[name] = step.lower(state, batch, 1e-5).compile().memory_analysis().temp_size_in_bytes
    first, metrics = {}, {}
    for k, fn in calls.items():
        (_, metrics[k]), first[k], _ = common.timed(fn)
        print(f"  first call {k:<20} {first[k]:8.2f}s  loss {float(metrics[k]['loss']):.6g} "
              f"grad norm {float(metrics[k]['grad_norm']):.6g}", flush=True)
    wall, cpu, _ = common.interleaved_rounds(calls, args.repeats, args.budget_s, tag=str)
    t = {k: common.median(v) for k, v in wall.items()}
    tc = {k: common.median(v) for k, v in cpu.items()}
    ref = f"unpacked/{impls[0]}"
    results = [dict(name=k, rows=work[k]["inputs"], positions=work[k]["positions"], steady_s=t[k], cpu_s=tc[k],
                    first_s=first[k], response_tokens_per_s=work[k]["trained"] / t[k],
                    temp_mib=mem[k] / 2 ** 20, loss=float(metrics[k]["loss"]),
                    grad_norm=float(metrics[k]["grad_norm"]),
                    vs_unpacked=t[ref] / t[k] if ref in t else None) for k in calls]
    table = common.print_table(results, [
        ("name", "rows/attention", "{}"), ("rows", "inputs", "{}"), ("positions", "positions", "{}"),
        ("steady_s", "s/update", "{:.3f}"), ("cpu_s", "cpu s", "{:.3f}"),
        ("response_tokens_per_s", "trained tok/s", "{:.0f}"), ("temp_mib", "temp MiB", "{:.1f}"),
        ("loss", "loss", "{:.6g}"), ("grad_norm", "grad norm", "{:.6g}"), ("vs_unpacked", "speed-up", "{:.2f}x")])
    load = meter.summary()
    note = common.load_note(env, load)
    print(note, flush=True)
    path = common.write_json("policy_step_packed", dict(args=vars(args), env=env, load=load, results=results,
                                                        table=table), args.out)
    del path  # write_json reports it
    # Same attention on both sides; the last line is the last attention of the run (blockwise under
    # --attention both), the others name theirs.
    for impl in impls:
        p, u = f"packed/{impl}", f"unpacked/{impl}"
        if p in t and u in t:
            label = "" if impl == impls[-1] else f" ({impl} attention)"
            print(f"packed vs unpacked update{label}: {t[u] / t[p]:.2f}x wall, {tc[u] / tc[p]:.2f}x cpu")


def make_plain_step(graphdef, optimizer, mask_kind: str):
    """One plain LM update: next-token CE over every position, value_and_grad, optax update.

    The batch is ``tokens [GA, mb, N]``; gradients of the ``GA`` micro-batches
    are summed in a ``lax.scan`` as the policy step does (``GA = 1``: a single
    forward+backward).
    """

    def loss_fn(params, tokens):
        B, N = tokens.shape
        positions = jnp.broadcast_to(jnp.arange(N, dtype=jnp.int32)[None], (B, N))
        valid = jnp.ones((B, N), bool)
        info = causal_info(valid) if mask_kind == "causal" else full_info(valid)
        logits = tj.forward(graphdef, params, tokens, positions, info).logits[:, :-1]
        logp = tj.losses.token_logprobs(logits, tokens[:, 1:])
        return -jnp.mean(logp)

    @jax.jit
    def step(params, opt_state, tokens):
        def body(acc, micro):
            loss, g = jax.value_and_grad(loss_fn)(params, micro)
            return (jax.tree.map(jnp.add, acc[0], g), acc[1] + loss), None

        zeros = (jax.tree.map(jnp.zeros_like, params), jnp.zeros((), jnp.float32))
        (grads, loss), _ = jax.lax.scan(body, zeros, tokens)
        ga = tokens.shape[0]
        grads = jax.tree.map(lambda g: g / ga, grads)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss / ga

    return step


def model_flops(cfg, n_layer_params: int, R: int, N: int, n_head: int) -> float:
    """Matmul FLOPs of one forward+backward (see the module docstring)."""
    dense = 6.0 * n_layer_params * R * N
    head = 6.0 * cfg.hidden_size * cfg.vocab_size * R * n_head
    attn = 12.0 * cfg.num_layers * cfg.num_heads * cfg.head_dim * R * float(N) ** 2
    return dense + head + attn


def main(argv=None):
    args = parse_args(argv)
    env = common.environment()
    meter = common.LoadMeter()
    tok = load_tokenizer("tasks")
    base = tj.get_preset(args.preset, dtype=args.dtype, param_dtype=args.dtype)
    cfg = base.replace(vocab_size=base.vocab_size if args.preset_vocab else tok.vocab_size, mask_token_id=tok.mask_id,
                                             pad_token_id=tok.pad_id, eos_token_id=tok.eos_id)
    q_tile, k_tile = (int(x) for x in args.attention_tiles.lower().split("x"))
    bw_cfg = cfg.replace(attention_impl="blockwise", attention_q_tile=q_tile, attention_k_tile=k_tile)
    if args.attention == "blockwise":
        cfg = bw_cfg
    if args.rows is not None:
        return compare_rows(args, env, meter, tok, cfg, bw_cfg)
    graphdef, params = tj.split_model(tj.init_model(cfg, seed=args.seed))
    n_params = int(sum(x.size for x in jax.tree.leaves(params)))
    n_layer_params = int(sum(x.size for x in jax.tree.leaves(params["layers"])))
    R, L0, L1, GA, b = args.batch, args.l0, args.l1, args.grad_accum, args.block_size
    N = L0 + 2 * L1
    print(f"policy-step benchmark: preset {args.preset} ({n_params / 1e6:.2f}M params, "
          f"{n_layer_params / 1e6:.2f}M in layers), R={R} rows, L0={L0}, L1={L1}, N={N}, GA={GA}; "
          f"{env['cpu_model']}, {env['cpu_count']} cores, loadavg {env['loadavg_start']}", flush=True)

    rows = synthetic_rows(tok, L0, L1, R // b, b, args.seed)
    opt = make_optimizer(OptimizerConfig(learning_rate=1e-5))
    logp_old = old_logprobs(graphdef, params, rows, R // GA)
    adv = jnp.asarray(np.random.default_rng(args.seed).normal(size=(R,)), jnp.float32)
    batch = to_microbatches(dict(rows=rows, logp_old=logp_old, advantages=adv,
                                 **batch_scalars(rows.row_valid, GA, L1)), GA)
    policy_step = make_policy_step(graphdef, opt, PolicyLossConfig())
    state = init_train_state(params, opt)
    plain_step = make_plain_step(graphdef, opt, args.plain_mask)
    plain_tokens = rows.tokens.reshape(GA, R // GA, N)
    # [prompt | response] only: what a plain LM step on the same rows would see without the noised copy
    short_tokens = rows.tokens[:, :L0 + L1].reshape(GA, R // GA, L0 + L1)
    opt_state = opt.init(params)
    forward_only = partial(old_logprobs, graphdef)
    n = args.matmul_n
    a = jax.random.normal(jax.random.key(1), (n, n), args.dtype)
    bmat = jax.random.normal(jax.random.key(2), (n, n), args.dtype)

    @jax.jit
    def matmul(x, y, k):
        # k dependent-free products in one call (``x + i`` keeps XLA from hoisting the dot out of
        # the loop), so the timed call lasts about as long as a step: on a shared CPU a short
        # burst would get a whole core while the long steps get time-sliced.
        body = lambda i, acc: acc + jnp.dot(x + i.astype(x.dtype), y, precision=jax.lax.Precision.HIGHEST)
        return jax.lax.fori_loop(0, k, body, jnp.zeros_like(x))

    # Each call starts from the same initial state so every round does identical work.
    calls = {
        "policy_step": lambda: policy_step(state, batch, 1e-5),
        "plain_step": lambda: plain_step(params, opt_state, plain_tokens),
        "plain_step_L0+L1": lambda: plain_step(params, opt_state, short_tokens),
        "matmul": lambda: matmul(a, bmat, mm_reps),
    }
    if not args.no_forward:
        calls["policy_forward"] = lambda: forward_only(params, rows, R // GA)
    if not args.no_peer:
        # The same weights in a transformers Qwen3, the same rows, the same loss, torch AdamW.
        import torch_peer

        env["torch_threads"] = torch_peer.set_threads(args.torch_threads or None)
        env["torch"] = torch_peer.torch.__version__
        env["transformers"] = torch_peer.transformers.__version__
        env["peer_attention"] = args.peer_attn
        env["OMP_WAIT_POLICY"] = os.environ.get("OMP_WAIT_POLICY")
        tmp = tempfile.TemporaryDirectory()
        peer_model = torch_peer.load_model(torch_peer.export_weights(params, cfg, Path(tmp.name)), attn=args.peer_attn)
        peer_step = torch_peer.PeerPolicyStep(peer_model, lr=1e-5)
        micros = torch_peer.rows_to_torch(rows, logp_old, adv, grad_accum=GA, L1_ref=L1)

        def peer_policy_step():
            peer_step.reset()  # every round from the same weights and a fresh AdamW, as ours
            return peer_step(micros)

        calls["peer_policy_step"] = peer_policy_step
        if not args.no_forward:
            calls["peer_policy_forward"] = lambda: torch_peer.peer_old_logprobs(peer_model, micros)
    if args.attention == "both":  # same params, blockwise attention (the graphdef carries attention_impl)
        bw_graphdef, _ = tj.split_model(tj.init_model(bw_cfg, seed=args.seed))
        bw_step = make_policy_step(bw_graphdef, opt, PolicyLossConfig())
        calls["policy_step_blockwise"] = lambda: bw_step(state, batch, 1e-5)
    first, outs = {}, {}
    mm_reps = 1
    for k, fn in calls.items():
        outs[k], first[k], _ = common.timed(fn)
        print(f"  first call {k:<15} {first[k]:8.2f}s", flush=True)
    same = None
    if "peer_policy_step" in calls:  # the peer computes the same update (tests/test_torch_peer.py checks it too)
        ours_m, peer_m = outs["policy_step"][1], outs["peer_policy_step"]
        same = dict(loss_ours=float(ours_m["loss"]), loss_peer=peer_m["loss"],
                    grad_norm_ours=float(ours_m["grad_norm"]), grad_norm_peer=peer_m["grad_norm"])
        print(f"  same update: loss ours {same['loss_ours']:.6g} peer {same['loss_peer']:.6g}; grad norm ours "
              f"{same['grad_norm_ours']:.6g} peer {same['grad_norm_peer']:.6g}", flush=True)
    # Size the matmul call to last about one policy step (k is traced: no recompile).
    _, t_step, _ = common.timed(calls["policy_step"])
    _, t_dot, _ = common.timed(calls["matmul"])
    mm_reps = int(np.clip(round(t_step / max(t_dot, 1e-6)), 1, args.max_matmul_reps))
    print(f"  matmul: {mm_reps} products of {n}x{n} per timed call", flush=True)
    steady, cpu, _ = common.interleaved_rounds(calls, args.repeats, args.budget_s, tag=str)
    t = {k: common.median(v) for k, v in steady.items()}
    tc = {k: common.median(v) for k, v in cpu.items()}

    # Work accounting.
    p_mask = np.asarray(rows.scored)
    trained = int(p_mask.sum())
    positions = R * N
    peak = 2.0 * n ** 3 * mm_reps / t["matmul"]
    peak_cpu = 2.0 * n ** 3 * mm_reps / tc["matmul"]  # FLOP per CPU-second
    info = rows.mask_info
    allowed_policy = float(np.asarray(dense_mask(jax.tree.map(lambda x: x[:1], info),
                                                 jax.tree.map(lambda x: x[:1], info))).mean())
    allowed_plain = (N + 1) / (2 * N) if args.plain_mask == "causal" else 1.0
    f_policy = model_flops(cfg, n_layer_params, R, N, n_head=L1)
    f_plain = model_flops(cfg, n_layer_params, R, N, n_head=N - 1)
    f_forward = f_policy / 3.0
    results = [
        dict(name="policy_step", what=f"TraceRL policy update (fwd+bwd+AdamW), R={R}, N={N}",
             steady_s=t["policy_step"], first_s=first["policy_step"],
             response_tokens_per_s=trained / t["policy_step"], positions_per_s=positions / t["policy_step"],
             model_flops=f_policy, flops_per_s=f_policy / t["policy_step"],
             mfu=f_policy / t["policy_step"] / peak, vs_plain=t["policy_step"] / t["plain_step"],
             mask_allowed=allowed_policy),
        dict(name="plain_step", what=f"plain {args.plain_mask} LM fwd+bwd+AdamW, same [R, N] tokens",
             steady_s=t["plain_step"], first_s=first["plain_step"],
             response_tokens_per_s=None, positions_per_s=positions / t["plain_step"],
             model_flops=f_plain, flops_per_s=f_plain / t["plain_step"], mfu=f_plain / t["plain_step"] / peak,
             vs_plain=1.0, mask_allowed=allowed_plain),
    ]
    Ns = L0 + L1
    f_short = model_flops(cfg, n_layer_params, R, Ns, n_head=Ns - 1)
    results.append(dict(
        name="plain_step_L0+L1", what=f"plain {args.plain_mask} LM step on [R, L0+L1] (no noised copy)",
        steady_s=t["plain_step_L0+L1"], first_s=first["plain_step_L0+L1"], response_tokens_per_s=None,
        positions_per_s=R * Ns / t["plain_step_L0+L1"], model_flops=f_short,
        flops_per_s=f_short / t["plain_step_L0+L1"], mfu=f_short / t["plain_step_L0+L1"] / peak,
        vs_plain=t["plain_step_L0+L1"] / t["plain_step"], mask_allowed=(Ns + 1) / (2 * Ns)))
    if "policy_forward" in t:
        results.append(dict(
            name="policy_forward", what="old_logprobs on the same rows (forward only)",
            steady_s=t["policy_forward"], first_s=first["policy_forward"],
            response_tokens_per_s=trained / t["policy_forward"], positions_per_s=positions / t["policy_forward"],
            model_flops=f_forward, flops_per_s=f_forward / t["policy_forward"],
            mfu=f_forward / t["policy_forward"] / peak, vs_plain=t["policy_forward"] / t["plain_step"],
            mask_allowed=allowed_policy))
    if "policy_step_blockwise" in t:
        tb = t["policy_step_blockwise"]
        results.append(dict(
            name="policy_step_blockwise", what=f"the policy step with blockwise attention ({args.attention_tiles})",
            steady_s=tb, first_s=first["policy_step_blockwise"], response_tokens_per_s=trained / tb,
            positions_per_s=positions / tb, model_flops=f_policy, flops_per_s=f_policy / tb,
            mfu=f_policy / tb / peak, vs_plain=tb / t["plain_step"], mask_allowed=allowed_policy))
    if "peer_policy_step" in t:
        results.append(dict(
            name="peer_policy_step", what=f"PyTorch eager peer: same update (transformers Qwen3, {args.peer_attn}, "
                                        f"torch AdamW, {env['torch_threads']} threads)",
            steady_s=t["peer_policy_step"], first_s=first["peer_policy_step"],
            response_tokens_per_s=trained / t["peer_policy_step"], positions_per_s=positions / t["peer_policy_step"],
            model_flops=f_policy, flops_per_s=f_policy / t["peer_policy_step"],
            mfu=f_policy / t["peer_policy_step"] / peak, vs_plain=t["peer_policy_step"] / t["plain_step"],
            mask_allowed=allowed_policy))
    if "peer_policy_forward" in t:
        results.append(dict(
            name="peer_policy_forward", what="PyTorch eager peer: trajectory log-probs, forward only (no_grad)",
            steady_s=t["peer_policy_forward"], first_s=first["peer_policy_forward"],
            response_tokens_per_s=trained / t["peer_policy_forward"],
            positions_per_s=positions / t["peer_policy_forward"], model_flops=f_forward,
            flops_per_s=f_forward / t["peer_policy_forward"], mfu=f_forward / t["peer_policy_forward"] / peak,
            vs_plain=t["peer_policy_forward"] / t["plain_step"], mask_allowed=allowed_policy))
    results.append(dict(name="matmul", what=f"{mm_reps} x fp32 jnp.dot {n}x{n}x{n} (peak)", steady_s=t["matmul"],
                        first_s=first["matmul"], response_tokens_per_s=None, positions_per_s=None,
                        model_flops=2.0 * n ** 3 * mm_reps, flops_per_s=peak, mfu=1.0, vs_plain=None, mask_allowed=None))
    for res in results:
        res["steady_all_s"] = [round(x, 4) for x in steady[res["name"]]]
        k = res["name"]
        res["steady_all_cpu_s"] = [round(x, 4) for x in cpu[k]]
        res["steady_cpu_s"] = tc[k]
        res["cpu_per_wall"] = sum(cpu[k]) / max(sum(steady[k]), 1e-9)
        res["vs_plain_cpu"] = tc[k] / tc["plain_step"] if k != "matmul" else None
        res["mfu_cpu"] = res["model_flops"] / tc[k] / peak_cpu
        scale = t[k] / tc[k]  # per CPU-second instead of per wall-second
        res["response_tokens_per_cpu_s"] = (res["response_tokens_per_s"] * scale
                                            if res["response_tokens_per_s"] is not None else None)
        res["positions_per_cpu_s"] = res["positions_per_s"] * scale if res["positions_per_s"] is not None else None
        res["gflops_per_s"] = res["flops_per_s"] / 1e9
        res["model_gflops"] = res["model_flops"] / 1e9

    print()
    table = common.print_table(results, [
        ("name", "step", "{}"), ("steady_s", "steady s", "{:.3f}"), ("first_s", "first s", "{:.2f}"),
        ("response_tokens_per_s", "resp tok/s", "{:.1f}"), ("response_tokens_per_cpu_s", "resp tok/cpu-s", "{:.1f}"),
        ("positions_per_s", "positions/s", "{:.0f}"), ("positions_per_cpu_s", "positions/cpu-s", "{:.0f}"),
        ("vs_plain", "time / plain", "{:.2f}"), ("steady_cpu_s", "cpu s", "{:.2f}"),
        ("vs_plain_cpu", "cpu / plain", "{:.2f}"), ("model_gflops", "GFLOP", "{:.1f}"),
        ("gflops_per_s", "GFLOP/s", "{:.2f}"), ("mfu", "MFU", "{:.3f}"), ("mfu_cpu", "MFU(cpu)", "{:.3f}"),
        ("cpu_per_wall", "cpu/wall", "{:.2f}")])
    print(f"\nper update: {trained} response tokens trained (p_mask), {positions} positions "
          f"(R={R} x N={N}); mask allows {allowed_policy:.3f} of N^2 pairs (plain: {allowed_plain:.3f})")
    print(f"policy step / plain fwd+bwd = {t['policy_step'] / t['plain_step']:.2f}x wall time "
          f"({tc['policy_step'] / tc['plain_step']:.2f}x CPU time) on the same positions; "
          f"MFU {results[0]['mfu']:.3f} of {peak / 1e9:.1f} GFLOP/s fp32 matmul "
          f"({results[0]['mfu_cpu']:.3f} of {peak_cpu / 1e9:.1f} GFLOP per CPU-second)")
    print(f"extended layout vs plain step on [R, L0+L1]: {t['policy_step'] / t['plain_step_L0+L1']:.2f}x wall "
          f"({tc['policy_step'] / tc['plain_step_L0+L1']:.2f}x CPU time)")
    if "policy_step_blockwise" in t:
        print(f"policy step blockwise / dense attention = {t['policy_step_blockwise'] / t['policy_step']:.2f}x wall "
              f"({tc['policy_step_blockwise'] / tc['policy_step']:.2f}x CPU time)")
    vs_peer, targets = {}, {}
    if "peer_policy_step" in t:
        vs_peer = dict(step_speedup=t["peer_policy_step"] / t["policy_step"],
                       step_speedup_cpu=tc["peer_policy_step"] / tc["policy_step"])
        if "peer_policy_forward" in t:
            vs_peer.update(forward_speedup=t["peer_policy_forward"] / t["policy_forward"],
                           forward_speedup_cpu=tc["peer_policy_forward"] / tc["policy_forward"])
        print(f"speed ours / PyTorch eager peer ({env['torch_threads']} torch threads, {args.peer_attn}; > 1: ours "
              f"faster): policy step {vs_peer['step_speedup']:.2f}x wall ({vs_peer['step_speedup_cpu']:.2f}x CPU time)"
              + (f"; forward only {vs_peer['forward_speedup']:.2f}x wall ({vs_peer['forward_speedup_cpu']:.2f}x CPU)"
                 if "forward_speedup" in vs_peer else ""))
        targets["policy_step_over_peer"] = dict(value=vs_peer["step_speedup"], cpu_value=vs_peer["step_speedup_cpu"],
                                                target=1.5, met=min(vs_peer["step_speedup"], vs_peer["step_speedup_cpu"]) >= 1.5)
        if "policy_step_blockwise" in t:
            vs_peer.update(blockwise_step_speedup=t["peer_policy_step"] / t["policy_step_blockwise"],
                           blockwise_step_speedup_cpu=tc["peer_policy_step"] / tc["policy_step_blockwise"])
            print(f"speed ours with blockwise attention / peer: {vs_peer['blockwise_step_speedup']:.2f}x wall "
                  f"({vs_peer['blockwise_step_speedup_cpu']:.2f}x CPU time)")
            targets["policy_step_blockwise_over_peer"] = dict(
                value=vs_peer["blockwise_step_speedup"], cpu_value=vs_peer["blockwise_step_speedup_cpu"], target=1.5,
                met=min(vs_peer["blockwise_step_speedup"], vs_peer["blockwise_step_speedup_cpu"]) >= 1.5)
    targets["policy_step_mfu"] = dict(value=results[0]["mfu"], cpu_value=results[0]["mfu_cpu"], target=0.5,
                                      met=min(results[0]["mfu"], results[0]["mfu_cpu"]) >= 0.5)
    for k, v in targets.items():
        print(f"target {k}: {v['value']:.3f} (CPU time: {v['cpu_value']:.3f}), target >= {v['target']:g}: "
              f"{'MET' if v['met'] else 'NOT MET'} (speed-ups: met only if wall and CPU-time ratios both pass)")
    load = meter.summary()
    note = common.load_note(env, load)
    print(note)
    common.write_json("policy_step", dict(
        benchmark="policy_step", args=vars(args), env=env, load=load, load_note=note, vs_peer=vs_peer,
        targets=targets, same_update=same,
        model=dict(preset=args.preset, params=n_params, layer_params=n_layer_params, hidden=cfg.hidden_size,
                   vocab=cfg.vocab_size, layers=cfg.num_layers, heads=cfg.num_heads, head_dim=cfg.head_dim),
        work=dict(rows=R, L0=L0, L1=L1, N=N, grad_accum=GA, response_tokens_trained=trained,
                  positions=positions),
        definitions={
            "response_tokens_per_s": "sum(p_mask over responses) per update / step time",
            "positions_per_s": "R * (L0 + 2*L1) per update / step time",
            "model_flops": "6*P_layers*R*N + 6*d*V*R*N_head + 12*layers*H*D*R*N^2 (N_head = L1 policy, N-1 plain; "
                           "forward only = 1/3 of the policy figure)",
            "mfu": "model_flops / steady time / fp32 matmul FLOP/s measured in the same run (blockwise rows: the "
                   "same dense-attention FLOP count, so the figure is comparable, not the work done)",
            "vs_plain": "steady time / plain_step steady time",
            "vs_plain_cpu, mfu_cpu": "the same with process CPU seconds instead of wall seconds (robust to other jobs "
                                     "time-slicing the CPU)",
        },
        peak_flops_per_s=peak, peak_flops_per_cpu_s=peak_cpu, results=results, table=table), args.out)


if __name__ == "__main__":
    main()
