"""Extended-layout attention: dense (score all N x N, mask) vs blockwise (skip masked tiles).

Why. The TraceRL policy update runs attention over ``[prompt L0 | clean L1 |
noised L1]`` (docs/algorithms.md §3.3) whose mask allows about 31% of the
``N x N`` pairs at ``L1 = 256`` and ~26% at ``L1 = 1024``. The dense path
(``dot_product_attention`` on ``dense_mask``) scores them all;
``tracerl_jax.blockwise_attention`` visits only the query/key tiles that can
hold an allowed pair. This script times both on the same inputs, side by
side, round by round (so background load hits them alike), and checks that
their outputs and gradients agree.

What is timed, for each ``L1`` (``N = L0 + 2*L1``), on ``[B, N, H, D]``
queries and ``[B, N, Hkv, D]`` keys/values (head shapes of ``--preset``;
left-padded prompts of random lengths):

* ``fwd``: the attention output;
* ``fwd+bwd``: ``jax.grad`` of ``sum(out * w)`` with respect to ``q, k, v``
  (the dense backward is XLA's autodiff; the blockwise one is its custom
  VJP, which recomputes the visited tiles).

Each jitted function is called once to compile (reported apart), then the
steady rounds interleave every variant; medians of wall and process-CPU
seconds are reported with ``time / dense`` and ``CPU / dense``. ``max|diff|``
is the largest absolute difference from dense over the output (fwd) or the
three gradients (fwd+bwd), ``max|ref|`` the largest absolute dense value (its
scale). ``tiles`` is the fraction of tile pairs the
blockwise path visits, ``allowed`` the fraction of pairs the mask allows.

Usage::

    nice -n 10 python benchmarks/attention.py                     # L1 = 256, 1024; tiles 64x64, 128x128
    nice -n 10 python benchmarks/attention.py --l1s 2048 --tiles 64x64 --no-dense-bwd
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np

import tracerl_jax as tj
from tracerl_jax.attention import allowed, dense_mask, dot_product_attention, extended_info
from tracerl_jax.blockwise_attention import blockwise_attention, visited_fraction

import _common as common


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small", help="model preset whose head shapes are used")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--l0", type=int, default=64, help="prompt length L0")
    p.add_argument("--l1s", default="256,1024", help="response lengths L1, comma separated")
    p.add_argument("--block-size", type=int, default=4)
    p.add_argument("--tiles", default="64x64,128x128", help="blockwise q_tile x k_tile variants")
    p.add_argument("--no-dense-bwd", action="store_true", help="skip dense fwd+bwd (memory at large N)")
    p.add_argument("--repeats", type=int, default=5, help="max steady rounds")
    p.add_argument("--budget-s", type=float, default=90.0, help="stop rounds of one L1 after this (>= 2 rounds)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/attention.json)")
    return p.parse_args(argv)


def _tiles(text):
    out = []
    for t in common.parse_strs(text):
        q, k = t.lower().split("x")
        out.append((int(q), int(k)))
    return out


def inputs(B, L0, L1, H, Hkv, D, block_size, seed):
    rng = np.random.default_rng(seed)
    valid = np.ones((B, L0), bool)
    for i in range(B):
        valid[i, :rng.integers(0, L0 // 2)] = False      # left padding, up to half the prompt
    info = extended_info(jnp.asarray(valid), L1, block_size)
    N = L0 + 2 * L1
    f = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
    return info, f(B, N, H, D), f(B, N, Hkv, D), f(B, N, Hkv, D), f(B, N, H, D)


def variants(tiles, w):
    """name -> attention function ``(q, k, v, info) -> out``."""
    fns = {"dense": lambda q, k, v, info: dot_product_attention(q, k, v, dense_mask(info, info))}
    for qt, kt in tiles:
        fns[f"blockwise {qt}x{kt}"] = (lambda qt, kt: lambda q, k, v, info: blockwise_attention(
            q, k, v, info, q_tile=qt, k_tile=kt))(qt, kt)
    return fns


def grad_of(fn, w):
    return jax.grad(lambda q, k, v, info: jnp.sum(fn(q, k, v, info) * w), argnums=(0, 1, 2))


def main(argv=None):
    args = parse_args(argv)
    env = common.environment()
    meter = common.LoadMeter()
    cfg = tj.get_preset(args.preset)
    B, L0, b = args.batch, args.l0, args.block_size
    H, Hkv, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    tiles = _tiles(args.tiles)
    print(f"attention benchmark: {args.preset} heads H={H}, Hkv={Hkv}, D={D}; B={B}, L0={L0}, block {b}; "
          f"{env['cpu_model']}, {env['cpu_count']} cores, loadavg {env['loadavg_start']}", flush=True)
    rows = []
    for L1 in common.parse_ints(args.l1s):
        N = L0 + 2 * L1
        info, q, k, v, w = inputs(B, L0, L1, H, Hkv, D, b, args.seed)
        allowed_frac = float(np.mean(np.asarray(allowed(info, info))))
        fns = variants(tiles, w)
        calls, ref = {}, {}
        for name, fn in fns.items():
            calls[(name, "fwd")] = jax.jit(fn)
            if not (name == "dense" and args.no_dense_bwd):
                calls[(name, "fwd+bwd")] = jax.jit(grad_of(fn, w))
        first, outs = {}, {}
        for key, fn in calls.items():
            outs[key], first[key], _ = common.timed(fn, q, k, v, info)
            print(f"  L1={L1} first call {key[0]:<18} {key[1]:<8} {first[key]:7.2f}s", flush=True)
        diffs = {}
        for (name, kind), out in outs.items():
            ref_out = outs.get(("dense", kind))
            if ref_out is None:
                # dense fwd+bwd skipped: compare the blockwise gradients with the first blockwise variant
                ref_out = outs.get((f"blockwise {tiles[0][0]}x{tiles[0][1]}", kind))
            pairs = list(zip(jax.tree.leaves(out), jax.tree.leaves(ref_out)))
            diffs[(name, kind)] = (max(float(jnp.max(jnp.abs(a - r))) for a, r in pairs),
                                   max(float(jnp.max(jnp.abs(r))) for _, r in pairs))
        del outs
        bound = {key: functools.partial(fn, q, k, v, info) for key, fn in calls.items()}
        wall, cpu, _ = common.interleaved_rounds(bound, args.repeats, args.budget_s,
                                                 tag=lambda key: f"{key[0]} {key[1]}", label=f"L1={L1} ")
        for (name, kind) in calls:
            t, c = common.median(wall[(name, kind)]), common.median(cpu[(name, kind)])
            dk = ("dense", kind)
            td = common.median(wall[dk]) if dk in wall else None
            cd = common.median(cpu[dk]) if dk in cpu else None
            tile = name.split()[-1] if name != "dense" else None
            rows.append(dict(
                L1=L1, N=N, impl=name, pass_=kind, steady_s=t, cpu_s=c, first_s=first[(name, kind)],
                time_ratio=t / td if td else None, cpu_ratio=c / cd if cd else None,
                max_diff=diffs[(name, kind)][0], ref_max=diffs[(name, kind)][1], allowed=allowed_frac,
                tiles=(visited_fraction(info, *map(int, tile.split("x"))) if tile else 1.0),
                cpu_per_wall=c / t if t > 0 else None, rounds=len(wall[(name, kind)]),
                wall_all=[round(x, 4) for x in wall[(name, kind)]], cpu_all=[round(x, 4) for x in cpu[(name, kind)]]))
    load = meter.summary()
    print()
    table = common.print_table(rows, [
        ("L1", "L1", "{}"), ("N", "N", "{}"), ("impl", "attention", "{}"), ("pass_", "pass", "{}"),
        ("steady_s", "steady s", "{:.3f}"), ("time_ratio", "time / dense", "{:.2f}"),
        ("cpu_s", "CPU s", "{:.3f}"), ("cpu_ratio", "CPU / dense", "{:.2f}"),
        ("first_s", "first s", "{:.1f}"), ("max_diff", "max|diff|", "{:.1e}"), ("ref_max", "max|ref|", "{:.1f}"),
        ("tiles", "tiles", "{:.2f}"), ("allowed", "allowed", "{:.2f}"), ("cpu_per_wall", "cpu/wall", "{:.2f}")])
    note = common.load_note(env, load)
    print(note)
    common.write_json("attention", {"args": vars(args), "environment": env, "load": load, "load_note": note,
                                    "heads": dict(H=H, Hkv=Hkv, D=D), "rows": rows, "table": table}, args.out)


if __name__ == "__main__":
    main()
