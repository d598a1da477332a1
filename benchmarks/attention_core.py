"""Where the policy step's time goes against the PyTorch peer: one layer's attention and the MLP matmuls.

Why. ``policy_step.py`` times whole updates; when the PyTorch peer wins, this
says which part it wins on. At the policy step's shapes (``small`` preset,
``R`` rows of ``N = L0 + 2*L1`` positions, the real extended-layout mask)
it times, side by side and interleaved, in process CPU time:

* attention of one layer, forward and forward+backward: ours
  (``tracerl_jax.attention.dot_product_attention``, the dense XLA einsum
  path the model uses by default), ``jax.nn.dot_product_attention`` (XLA's
  own), ours blockwise (``tracerl_jax.blockwise_attention``, default tiles),
  and
  ``torch.nn.functional.scaled_dot_product_attention`` with the same mask as
  a float additive mask (what the peer's ``sdpa`` attention runs);
* the decoder layer's matmul shapes (``[R*N, d] @ [d, inter]`` and back,
  ``[R*N, d] @ [d, d]``) in ``jnp.dot`` and ``torch.matmul``.

Usage::

    nice -n 10 python benchmarks/attention_core.py               # L1 = 256
    nice -n 10 python benchmarks/attention_core.py --l1 1024
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch_peer  # noqa: E402  (sets OMP_WAIT_POLICY before torch starts)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import tracerl_jax as tj  # noqa: E402
from tracerl_jax.attention import dense_mask, dot_product_attention, extended_info  # noqa: E402
from tracerl_jax.blockwise_attention import blockwise_attention  # noqa: E402

import _common as common  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--l0", type=int, default=64)
    p.add_argument("--l1", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--torch-threads", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/attention_core.json)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    env = common.environment()
    meter = common.LoadMeter()
    env["torch_threads"] = torch_peer.set_threads(args.torch_threads or None)
    env["OMP_WAIT_POLICY"] = torch_peer.os.environ.get("OMP_WAIT_POLICY")
    cfg = tj.get_preset(args.preset)
    B, H, Hkv, D, d, inter = args.batch, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.hidden_size, \
        cfg.intermediate_size
    N = args.l0 + 2 * args.l1
    rng = np.random.default_rng(0)
    q = rng.standard_normal((B, N, H, D)).astype(np.float32)
    k = rng.standard_normal((B, N, Hkv, D)).astype(np.float32)
    v = rng.standard_normal((B, N, Hkv, D)).astype(np.float32)
    info = extended_info(jnp.ones((B, args.l0), bool), args.l1, 4)
    mask = dense_mask(info, info)                                          # [B, 1, N, N] bool
    jq, jk, jv = map(jnp.asarray, (q, k, v))
    loss = lambda impl: (lambda q, k, v, m: jnp.sum(dot_product_attention(q, k, v, m, implementation=impl) ** 2))
    ours_f = jax.jit(lambda q, k, v, m: dot_product_attention(q, k, v, m))
    xla_f = jax.jit(lambda q, k, v, m: dot_product_attention(q, k, v, m, implementation="xla"))
    ours_b = jax.jit(jax.grad(loss(None), argnums=(0, 1, 2)))
    xla_b = jax.jit(jax.grad(loss("xla"), argnums=(0, 1, 2)))
    bw_f = jax.jit(lambda q, k, v: blockwise_attention(q, k, v, info))
    bw_b = jax.jit(jax.grad(lambda q, k, v: jnp.sum(blockwise_attention(q, k, v, info) ** 2), argnums=(0, 1, 2)))
    tq, tk, tv = (torch.from_numpy(x).transpose(1, 2).contiguous().requires_grad_() for x in (q, k, v))
    tmask = torch_peer.additive(torch.from_numpy(np.array(mask)))

    def sdpa_f():
        with torch.no_grad():
            return F.scaled_dot_product_attention(tq, tk, tv, attn_mask=tmask, enable_gqa=True)

    def sdpa_b():
        o = F.scaled_dot_product_attention(tq, tk, tv, attn_mask=tmask, enable_gqa=True)
        (o ** 2).sum().backward()
        return tq.grad

    M = B * N
    mats = {name: (rng.standard_normal((M, a)).astype(np.float32), rng.standard_normal((a, c)).astype(np.float32))
            for name, a, c in (("up/gate [RN,d]x[d,inter]", d, inter), ("down [RN,inter]x[inter,d]", inter, d),
                               ("o_proj [RN,H*D]x[H*D,d]", H * D, d))}
    jdot = jax.jit(jnp.dot)
    calls = {
        "attention fwd / ours (einsum)": lambda: ours_f(jq, jk, jv, mask),
        "attention fwd / jax.nn (xla)": lambda: xla_f(jq, jk, jv, mask),
        "attention fwd / ours blockwise": lambda: bw_f(jq, jk, jv),
        "attention fwd / torch sdpa": sdpa_f,
        "attention fwd+bwd / ours (einsum)": lambda: ours_b(jq, jk, jv, mask),
        "attention fwd+bwd / jax.nn (xla)": lambda: xla_b(jq, jk, jv, mask),
        "attention fwd+bwd / ours blockwise": lambda: bw_b(jq, jk, jv),
        "attention fwd+bwd / torch sdpa": sdpa_b,
    }
    flops = {}
    for name, (a, b) in mats.items():
        ja, jb, ta, tb = jnp.asarray(a), jnp.asarray(b), torch.from_numpy(a), torch.from_numpy(b)
        calls[f"matmul {name} / jax"] = (lambda ja=ja, jb=jb: jdot(ja, jb))
        calls[f"matmul {name} / torch"] = (lambda ta=ta, tb=tb: ta @ tb)
        flops[name] = 2.0 * a.shape[0] * a.shape[1] * b.shape[1]
    for fn in calls.values():
        common.timed(fn)  # compile / warm up
    cpu = {k: [] for k in calls}
    for _ in range(args.repeats):
        for k_, fn in calls.items():
            cpu[k_].append(common.timed(fn)[2])
    rows = []
    for k_ in calls:
        what, impl = k_.rsplit(" / ", 1)
        c = common.median(cpu[k_])
        fl = next((f for n, f in flops.items() if n in what), None)
        rows.append(dict(what=what, impl=impl, cpu_ms=1e3 * c, gflop_per_cpu_s=fl / c / 1e9 if fl else None))
    for r in rows:
        peer = next(x for x in rows if x["what"] == r["what"] and x["impl"] in ("torch sdpa", "torch"))
        r["vs_torch"] = r["cpu_ms"] / peer["cpu_ms"]
    print(f"one layer at R={B}, N={N} ({args.preset}: H={H}, Hkv={Hkv}, D={D}, d={d}, inter={inter}); "
          f"CPU time per call, median of {args.repeats}, torch threads {env['torch_threads']}")
    table = common.print_table(rows, [("what", "what", "{}"), ("impl", "impl", "{}"), ("cpu_ms", "CPU ms", "{:.1f}"),
                                      ("vs_torch", "CPU / torch", "{:.2f}"),
                                      ("gflop_per_cpu_s", "GFLOP per CPU-s", "{:.1f}")])
    load = meter.summary()
    note = common.load_note(env, load)
    print(note)
    common.write_json("attention_core", dict(benchmark="attention_core", args=vars(args), env=env, load=load,
                                             load_note=note, results=rows, table=table), args.out)


if __name__ == "__main__":
    main()
