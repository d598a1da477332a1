"""Peak resident memory of one TraceRL policy update vs response length, ours and the PyTorch peer.

Why. A TraceRL row is ``L0 + 2*L1`` positions long and its attention is
computed densely (``N x N`` scores per head and layer, kept for the
backward), so memory, not time, is what stops long responses. This script
measures it, and what the two usual remedies buy: rematerialising each layer
in the backward (``ModelConfig.remat``; the peer's
``gradient_checkpointing_enable()``) and splitting the update into
gradient-accumulation micro-batches (``--ga``): modes ``plain``, ``remat``,
``ga`` and ``remat_ga`` (both); and, ours only, ``blockwise`` /
``blockwise_ga``: the model with ``attention_impl="blockwise"`` (tiles of
the mask, flash-style recomputing backward, no ``N x N`` buffers).

Each point (implementation x L1 x mode) runs in a **fresh subprocess** (so
peaks never carry over), ``small`` preset, ``--batch`` rows (default 8),
``L0 = 64``, rows built by ``policy_step.synthetic_rows`` (every row valid),
random advantages and old log-probs (the old-log-prob forward is not part of
the update). The child reports, in MiB:

* ``maxrss``: ``ru_maxrss`` of the child: the peak of the whole process
  (imports, model, data, and for ours the XLA compilation);
* ``base``: resident memory just before the step (model, optimizer state,
  batch, framework);
* ``step_peak``: the peak resident memory *while the step runs* (the
  kernel's ``VmHWM`` after resetting it through ``/proc/self/clear_refs``
  right before the call); ``step_peak - base`` is what the update itself
  needs (activations kept for the backward, gradients, temporaries);
* ours only: ``compile_peak`` (``VmHWM`` during ``jit(...).lower().compile()``)
  and ``xla_temp``, XLA's own ``memory_analysis()`` of the compiled step
  (temporary buffers, i.e. the planned activation memory).

Safety: every child runs under an address-space limit (``--limit-gb``,
default 12), so a point that would need more memory than the machine can
spare fails cleanly (reported as ``over limit``) instead of pushing other
processes out; the peer at large L1 is skipped unless asked for
(``--peer-l1``) because it is slow.

Usage::

    nice -n 10 python benchmarks/memory.py                       # L1 256, 512; plain, ga, blockwise; peer at 256
    nice -n 10 python benchmarks/memory.py --l1 256,512,1024,2048 --peer-l1 256,512,1024 \
        --modes plain,remat,ga,remat_ga,blockwise,blockwise_ga --limit-gb 10 --timeout-s 1800   # full grid
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

# ga=None: --ga micro-batches; blockwise: ours with attention_impl="blockwise" (the peer has no such mode)
MODES = {"plain": dict(remat=False, ga=1), "remat": dict(remat=True, ga=1), "ga": dict(remat=False, ga=None),
         "remat_ga": dict(remat=True, ga=None), "blockwise": dict(remat=False, ga=1, blockwise=True),
         "blockwise_ga": dict(remat=False, ga=None, blockwise=True)}
MiB = 1024.0 * 1024.0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--l0", type=int, default=64)
    p.add_argument("--l1", default="256,512", help="response lengths for ours (full grid: 256,512,1024,2048)")
    p.add_argument("--peer-l1", default="256",
                   help="response lengths for the PyTorch peer ('' to skip it; it is slow at large L1)")
    p.add_argument("--modes", default="plain,ga,blockwise", help=f"subset of {list(MODES)}")
    p.add_argument("--ga", type=int, default=4, help="micro-batches of the 'ga' mode")
    p.add_argument("--limit-gb", type=float, default=12.0, help="address-space limit of every child (GiB)")
    p.add_argument("--timeout-s", type=float, default=600.0, help="per child")
    p.add_argument("--torch-threads", type=int, default=0, help="0: the cores this process may use")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/memory.json)")
    # child mode
    p.add_argument("--child", choices=("ours", "peer"), default=None, help=argparse.SUPPRESS)
    p.add_argument("--mode", default="plain", help=argparse.SUPPRESS)
    p.add_argument("--one-l1", type=int, default=256, help=argparse.SUPPRESS)
    p.add_argument("--data", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# --------------------------------------------------------------------------
# Child side: one step, memory read from the kernel
# --------------------------------------------------------------------------


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def _mib(kib: int) -> float:
    return kib / 1024.0


def child_ours(args) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import tracerl_jax as tj
    from tracerl_jax.tokenizers import load_tokenizer
    from tracerl_jax.train.optimizer import OptimizerConfig, make_optimizer
    from tracerl_jax.train.step import init_train_state, to_microbatches
    from tracerl_jax.train.steps import PolicyLossConfig, batch_scalars, make_policy_step
    from policy_step import synthetic_rows

    mode = MODES[args.mode]
    ga = args.ga if mode["ga"] is None else 1
    tok = load_tokenizer("tasks")
    cfg = tj.get_preset(args.preset).replace(vocab_size=tok.vocab_size, mask_token_id=tok.mask_id,
                                             pad_token_id=tok.pad_id, eos_token_id=tok.eos_id, remat=mode["remat"])
    if mode.get("blockwise"):
        cfg = cfg.replace(attention_impl="blockwise")
    graphdef, params = tj.split_model(tj.init_model(cfg, seed=0))
    R, L1 = args.batch, args.one_l1
    rows = synthetic_rows(tok, args.l0, L1, R // 4, 4, 0)
    rng = np.random.default_rng(0)
    logp_old = jnp.asarray(rng.normal(-5.0, 0.3, (R, L1)), jnp.float32)
    adv = jnp.asarray(rng.normal(size=(R,)), jnp.float32)
    batch = to_microbatches(dict(rows=rows, logp_old=logp_old, advantages=adv,
                                 **batch_scalars(rows.row_valid, ga, L1)), ga)
    opt = make_optimizer(OptimizerConfig(learning_rate=1e-5))
    state = init_train_state(params, opt)
    step = make_policy_step(graphdef, opt, PolicyLossConfig())
    jax.block_until_ready((state, batch))
    _reset_peak()
    t0 = time.perf_counter()
    compiled = step.lower(state, batch, 1e-5).compile()
    compile_s = time.perf_counter() - t0
    compile_peak = _status_kib("VmHWM")
    ma = compiled.memory_analysis()
    xla_temp = getattr(ma, "temp_size_in_bytes", None) if ma is not None else None
    base = _status_kib("VmRSS")
    _reset_peak()
    t0 = time.perf_counter()
    _, m = compiled(state, batch, 1e-5)
    jax.block_until_ready(m)
    step_s = time.perf_counter() - t0
    return dict(base=_mib(base), step_peak=_mib(_status_kib("VmHWM")), compile_peak=_mib(compile_peak),
                xla_temp=None if xla_temp is None else xla_temp / MiB, step_s=step_s, compile_s=compile_s,
                loss=float(m["loss"]), ga=ga)


def child_peer(args) -> dict:
    import numpy as np
    import torch

    import torch_peer as tp

    threads = tp.set_threads(args.torch_threads or None)
    mode = MODES[args.mode]
    ga = args.ga if mode["ga"] is None else 1
    d = np.load(Path(args.data) / f"rows_{args.one_l1}.npz")
    model = tp.load_model(Path(args.data) / "model")
    step = tp.PeerPolicyStep(model, lr=1e-5, remat=mode["remat"])
    R = d["tokens"].shape[0]
    mb = R // ga
    L1 = d["labels"].shape[1]
    num_rows = float(R) / ga
    micros = []
    for i in range(ga):
        s = slice(i * mb, (i + 1) * mb)
        micros.append(dict(
            tokens=torch.as_tensor(d["tokens"][s], dtype=torch.long),
            positions=torch.as_tensor(d["positions"][s], dtype=torch.long),
            block=torch.as_tensor(d["block"][s], dtype=torch.long),
            noised=torch.as_tensor(d["noised"][s]), valid=torch.as_tensor(d["valid"][s]),
            labels=torch.as_tensor(d["labels"][s], dtype=torch.long), p_mask=torch.as_tensor(d["p_mask"][s]),
            logp_old=torch.as_tensor(d["logp_old"][s]), advantages=torch.as_tensor(d["advantages"][s]),
            num_rows=num_rows, L1_ref=float(L1)))
    base = _status_kib("VmRSS")
    _reset_peak()
    t0 = time.perf_counter()
    m = step(micros)
    step_s = time.perf_counter() - t0
    return dict(base=_mib(base), step_peak=_mib(_status_kib("VmHWM")), compile_peak=None, xla_temp=None,
                step_s=step_s, compile_s=None, loss=m["loss"], ga=ga, torch_threads=threads,
                omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"))


# --------------------------------------------------------------------------
# Parent side
# --------------------------------------------------------------------------


def write_peer_data(args, directory: Path, l1s) -> None:
    """Exports the model (same seed as the ``ours`` children) and each L1's rows for the peer children."""
    import numpy as np

    import tracerl_jax as tj
    import torch_peer as tp
    from tracerl_jax.tokenizers import load_tokenizer
    from policy_step import synthetic_rows

    tok = load_tokenizer("tasks")
    cfg = tj.get_preset(args.preset).replace(vocab_size=tok.vocab_size, mask_token_id=tok.mask_id,
                                             pad_token_id=tok.pad_id, eos_token_id=tok.eos_id)
    _, params = tj.split_model(tj.init_model(cfg, seed=0))
    tp.export_weights(params, cfg, directory / "model")
    for L1 in l1s:
        R = args.batch
        rows = synthetic_rows(tok, args.l0, L1, R // 4, 4, 0)
        rng = np.random.default_rng(0)
        a = lambda x: np.asarray(x)
        np.savez(directory / f"rows_{L1}.npz", tokens=a(rows.tokens), positions=a(rows.positions),
                 block=a(rows.mask_info.block), noised=a(rows.mask_info.noised), valid=a(rows.mask_info.valid),
                 labels=a(rows.labels), p_mask=a(rows.scored),
                 logp_old=rng.normal(-5.0, 0.3, (R, L1)).astype(np.float32),
                 advantages=rng.normal(size=(R,)).astype(np.float32))


def run_child(args, impl: str, L1: int, mode: str, data_dir: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", impl, "--mode", mode, "--one-l1", str(L1),
           "--preset", args.preset, "--batch", str(args.batch), "--l0", str(args.l0), "--ga", str(args.ga),
           "--torch-threads", str(args.torch_threads), "--data", str(data_dir)]
    limit = int(args.limit_gb * 1024 ** 3)

    def preexec():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout_s, preexec_fn=preexec,
                           env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    except subprocess.TimeoutExpired:
        return dict(status=f"timeout > {args.timeout_s:.0f}s")
    wall = time.perf_counter() - t0
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode != 0 or not line:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        oom = any(s in (p.stderr or "") for s in ("RESOURCE_EXHAUSTED", "MemoryError", "std::bad_alloc",
                                                  "can't allocate", "Cannot allocate", "out of memory"))
        return dict(status=f"over limit ({args.limit_gb:g} GiB address space)" if oom or p.returncode < 0
                    else f"failed rc={p.returncode}", error=" | ".join(tail), child_wall_s=wall)
    res = json.loads(line[-1][len("RESULT "):])
    res.update(status="ok", child_wall_s=wall)
    return res


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        res = child_ours(args) if args.child == "ours" else child_peer(args)
        res["maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        print("RESULT " + json.dumps(res), flush=True)
        return

    import _common as common

    env = common.environment()
    meter = common.LoadMeter()
    l1s = common.parse_ints(args.l1)
    peer_l1s = common.parse_ints(args.peer_l1)
    modes = common.parse_strs(args.modes)
    print(f"memory benchmark: {args.preset}, R={args.batch}, L0={args.l0}, L1 {l1s} (peer {peer_l1s}), modes {modes} "
          f"(ga = {args.ga} micro-batches); child address-space limit {args.limit_gb:g} GiB; "
          f"loadavg {env['loadavg_start']}", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        if peer_l1s:
            write_peer_data(args, data_dir, peer_l1s)
        # Interleave ours and the peer per (L1, mode) so load changes hit both alike.
        for L1 in sorted(set(l1s) | set(peer_l1s)):
            for mode in modes:
                for impl in ("ours", "peer"):
                    if L1 not in (l1s if impl == "ours" else peer_l1s) or (impl == "peer" and MODES[mode].get("blockwise")):
                        continue
                    r = run_child(args, impl, L1, mode, data_dir)
                    r.update(impl=impl, L1=L1, N=args.l0 + 2 * L1, mode=mode,
                             grad_accum=args.ga if MODES[mode]["ga"] is None else 1)
                    if r.get("status") == "ok":
                        r["step_extra"] = r["step_peak"] - r["base"]
                    results.append(r)
                    if r["status"] == "ok":
                        print(f"  {impl:<4} L1={L1:<5} {mode:<5} maxrss {r['maxrss']:8.0f} MiB  base {r['base']:7.0f}  "
                              f"step peak {r['step_peak']:8.0f} (+{r['step_extra']:.0f})  step {r['step_s']:7.1f}s"
                              + (f"  xla temp {r['xla_temp']:.0f} MiB" if r.get("xla_temp") is not None else ""),
                              flush=True)
                    else:
                        print(f"  {impl:<4} L1={L1:<5} {mode:<5} {r['status']} {r.get('error', '')[:200]}", flush=True)
    print()
    cols = [("impl", "impl", "{}"), ("L1", "L1", "{}"), ("N", "N", "{}"), ("mode", "mode", "{}"),
            ("grad_accum", "GA", "{}"), ("status", "status", "{}"), ("maxrss", "maxrss MiB", "{:.0f}"),
            ("base", "base MiB", "{:.0f}"), ("step_peak", "step peak MiB", "{:.0f}"),
            ("step_extra", "step - base MiB", "{:.0f}"), ("xla_temp", "XLA temp MiB", "{:.0f}"),
            ("compile_peak", "compile peak MiB", "{:.0f}"), ("step_s", "step s", "{:.1f}")]
    table = common.print_table(results, cols)
    ratios = []
    for r in results:
        if r["impl"] != "ours" or r["status"] != "ok":
            continue
        p = next((x for x in results if x["impl"] == "peer" and x["L1"] == r["L1"] and x["mode"] == r["mode"]
                  and x["status"] == "ok"), None)
        if p is not None:
            ratios.append(dict(L1=r["L1"], mode=r["mode"], step_extra_ours_over_peer=r["step_extra"] / p["step_extra"],
                               step_peak_ours_over_peer=r["step_peak"] / p["step_peak"],
                               maxrss_ours_over_peer=r["maxrss"] / p["maxrss"]))
    if ratios:
        print("\nours / peer (same L1, same mode)")
        common.print_table(ratios, [("L1", "L1", "{}"), ("mode", "mode", "{}"),
                                    ("step_extra_ours_over_peer", "step - base", "{:.2f}"),
                                    ("step_peak_ours_over_peer", "step peak", "{:.2f}"),
                                    ("maxrss_ours_over_peer", "maxrss", "{:.2f}")])
    load = meter.summary()
    note = common.load_note(env, load)
    print("\n" + note)
    common.write_json("memory", dict(
        benchmark="memory", args=vars(args), env=env, load=load, load_note=note,
        definitions={
            "maxrss": "ru_maxrss of the child process (MiB): its whole-life peak, compilation included",
            "base": "VmRSS just before the step (model, optimizer state, batch, framework)",
            "step_peak": "VmHWM while the step ran (reset through /proc/self/clear_refs just before it)",
            "step_extra": "step_peak - base: memory the update itself needs",
            "xla_temp": "XLA memory_analysis().temp_size_in_bytes of the compiled step (ours)",
            "compile_peak": "VmHWM during lower().compile() of the step (ours)",
        },
        results=results, ratios=ratios, table=table), args.out)


if __name__ == "__main__":
    main()
