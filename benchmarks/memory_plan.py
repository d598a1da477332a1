"""Per-device memory of a published recipe's RL step, proved by compiling it ahead of time.

What. For a recipe (``--preset``) and a mesh ``data,fsdp,tensor``, compiles
the policy step, the value step and the rollout sampler on abstract inputs
(:mod:`tracerl_jax.memory_plan`: nothing is allocated, nothing runs) and
prints XLA's per-device bytes (arguments, temporaries, outputs, peak) and
FLOPs next to the HBM of TPU v4 / v5e / v5p, H100 and H200.

Devices:

* ``--devices N`` (default: the mesh's size): N CPU host-platform devices
  (``--xla_force_host_platform_device_count``, set here before JAX starts),
  e.g. a GPU-shaped ``1,8,1`` mesh. XLA:CPU plans the memory: the same
  program and shardings as on the GPUs, CPU's fusion and scheduling.
* ``--topology v5p:4x4x4`` (or ``v4:2x2x2``, ``v5e:4x4``, ``v6e:4x4``): the
  compile-only devices of a TPU slice; libtpu's compiler plans the memory.
  Needs ``pip install 'tracerl_jax[tpu-plan]'`` (libtpu; never a run-time
  dependency).

Presets (each at its recipe's settings; model shapes from
``tracerl_jax.models.get_preset``):

* ``trado-4b`` / ``trado-8b`` / ``trado-4b-value``: ``configs/trado_4b.py``,
  ``trado_8b.py``, ``trado_4b_value.py`` (docs/algorithms.md §11.2: prompt
  784, generation 2000, block 4, 64 x 16 rollouts, 32 rows per device in 32
  micro-batches);
* ``llada-8b`` / ``dream-7b``: ``configs/llada_8b.py`` / ``dream_7b.py``
  (§11.3 reference settings);
* ``small``: the CPU recipe ``configs/tracerl.py`` on the ``small`` preset
  (a quick check, e.g. of ``--attention splash`` on a TPU topology).

Every recipe setting can be overridden (``--rollout-rows-per-device``,
``--batch-rows-per-device``, ``--grad-accum``, ``--remat``, ``--attention``,
``--param-dtype``, ``--dtype``, ``--opt-state-dtype``, ``--scan-layers``) to
find what makes a recipe fit.

Output: a table per program, the devices it fits (peak <= HBM x (1 -
``--headroom``), default 10% kept free), JSON in
``benchmarks/results/memory_plan_<preset>_<mesh>[_<topology>][_<tag>].json``,
and a last line ``PRESET MESH: peak GiB per device; fits: <devices>``.

Usage::

    nice python benchmarks/memory_plan.py --preset trado-4b --mesh 1,8,1
    nice python benchmarks/memory_plan.py --preset trado-8b --mesh 1,64,1 --topology v5p:4x4x4
    nice python benchmarks/memory_plan.py --preset small --mesh 1,4,1 --topology v5p:2x2x1 --attention splash
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

# preset -> (recipe module in configs/, model preset)
PRESETS = {
    "trado-4b": ("trado_4b", "trado-4b"),
    "trado-8b": ("trado_8b", "trado-8b"),
    "trado-4b-value": ("trado_4b_value", "trado-4b"),
    "llada-8b": ("llada_8b", "llada-8b"),
    "dream-7b": ("dream_7b", "dream-7b"),
    "small": ("tracerl", "small"),
}


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a bool, got {text!r}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", required=True, choices=sorted(PRESETS))
    p.add_argument("--mesh", default=None, help="data,fsdp,tensor (-1 = the devices left); default: the recipe's")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--devices", type=int, default=None, help="CPU host-platform devices to compile for")
    g.add_argument("--topology", default=None, help="TPU slice to compile for, e.g. v5p:4x4x4 (needs libtpu)")
    p.add_argument("--programs", default="policy_step,value_step,sampler")
    p.add_argument("--rollout-rows-per-device", type=int, default=None,
                   help="rows per sampler call and data x fsdp device (default: num_prompts x k / devices)")
    p.add_argument("--batch-rows-per-device", type=int, default=None, help="rl.batch_rows_per_device")
    p.add_argument("--grad-accum", type=int, default=None, help="rl.grad_accum")
    p.add_argument("--remat", type=_bool, default=None, help="model.remat")
    p.add_argument("--attention", default=None, help="model.attention_impl: dense | blockwise | splash")
    p.add_argument("--param-dtype", default=None, help="model.param_dtype")
    p.add_argument("--dtype", default=None, help="model.dtype (compute)")
    p.add_argument("--opt-state-dtype", default=None, help="rl.opt_state_dtype (Adam's first moment)")
    p.add_argument("--scan-layers", type=_bool, default=None, help="model.scan_layers")
    p.add_argument("--value", type=_bool, default=None, help="plan the value step (value.enabled)")
    p.add_argument("--headroom", type=float, default=0.1, help="fraction of HBM kept free when judging 'fits'")
    p.add_argument("--tag", default="", help="suffix of the JSON name")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/memory_plan_...json)")
    return p.parse_args(argv)


def _mesh_text(shape) -> str:
    return "x".join(str(int(s)) for s in shape)


def _apply_overrides(cfg, args):
    m, rl = cfg.model, cfg.rl
    for field, value in (("remat", args.remat), ("attention_impl", args.attention), ("param_dtype", args.param_dtype),
                         ("dtype", args.dtype), ("scan_layers", args.scan_layers)):
        if value is not None:
            m[field] = value
    if args.opt_state_dtype is not None:
        rl.opt_state_dtype = args.opt_state_dtype
    if args.batch_rows_per_device is not None:
        rl.batch_rows_per_device = args.batch_rows_per_device
    if args.grad_accum is not None:
        rl.grad_accum = args.grad_accum
    if args.value is not None:
        cfg.value.enabled = args.value
    if args.mesh is not None:
        cfg.mesh = tuple(int(x) for x in args.mesh.split(","))


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if args.topology is None:
        # Before JAX starts: N CPU devices. The compile-only TPU devices need no backend of their own.
        mesh_arg = [int(x) for x in args.mesh.split(",")] if args.mesh else None
        n = args.devices or (int(abs(mesh_arg[0] * mesh_arg[1] * mesh_arg[2])) if mesh_arg and -1 not in mesh_arg
                             else 8)
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_force_host_platform_device_count" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
    else:
        # Compile-only: nothing touches a TPU, so several planning processes may load libtpu at once.
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

    import jax

    import _common
    from tracerl_jax import memory_plan as mp
    from tracerl_jax.models import get_preset

    module, model_preset = PRESETS[args.preset]
    cfg = importlib.import_module(f"configs.{module}").get_config()
    _apply_overrides(cfg, args)
    if args.preset == "small":
        cfg.model.scan_layers = bool(cfg.model.get("scan_layers", False)) if args.scan_layers is None else \
            args.scan_layers
    env = _common.environment()
    load = _common.LoadMeter()
    if args.topology:
        devices = mp.topology_devices(args.topology)
    else:
        devices = jax.devices()[:args.devices] if args.devices else jax.devices()
    shape = mp.config_mesh_shape(cfg)
    if -1 not in shape and int(abs(shape[0] * shape[1] * shape[2])) < len(devices):
        devices = devices[:shape[0] * shape[1] * shape[2]]   # a sub-slice, e.g. one chip of a topology
    mesh = mp.mesh_for(shape, devices)
    shape = tuple(mesh.shape[a] for a in ("data", "fsdp", "tensor"))
    row_devices = shape[0] * shape[1]
    overrides = {"programs": tuple(x for x in args.programs.split(",") if x)}
    if args.rollout_rows_per_device is not None:
        overrides["rollout_rows"] = args.rollout_rows_per_device * row_devices
    model_config = get_preset(model_preset)
    t0 = time.perf_counter()
    plan = mp.plan_for_config(cfg, model_config, mesh, **overrides)
    wall = time.perf_counter() - t0
    s = plan.settings
    where = f"{len(devices)} x {plan.device_kind}" + (f" (topology {args.topology})" if args.topology else
                                                       " (CPU host-platform devices)")
    m = plan.model
    print(f"{args.preset}: {plan.param_count / 1e9:.2f}B params, {m.num_layers} layers; mesh data x fsdp x tensor = "
          f"{_mesh_text(shape)} on {where}")
    print(f"  L0 {s.prompt_len}, L1 {s.gen_length}, block {s.block_size}; update {s.batch_rows} rows in "
          f"{s.grad_accum} micro-batches ({s.batch_rows // s.grad_accum // row_devices} row(s) per device each); "
          f"rollout {s.rollout_rows} rows ({s.rollout_rows // row_devices} per device)")
    print(f"  params {m.param_dtype}, compute {m.dtype}, Adam first moment {s.opt_state_dtype or m.param_dtype}, "
          f"remat {m.remat}, attention {m.attention_impl}, scan_layers {m.scan_layers}, value step {s.value}")
    gib = lambda b: None if b is None else b / mp.GIB  # noqa: E731
    rows = []
    for p in plan.programs.values():
        rows.append(dict(program=p.name, args=gib(p.argument_bytes), temp=gib(p.temp_bytes), out=gib(p.output_bytes),
                         alias=gib(p.alias_bytes), code=gib(p.generated_code_bytes), peak=gib(p.peak_bytes),
                         tflops=None if p.flops is None else p.flops / 1e12, compile_s=p.compile_s))
    print("per device, GiB (peak: " + ", ".join(sorted({p.peak_source for p in plan.programs.values()})) +
          "; TFLOPs: XLA's count, loop bodies once)")
    table = _common.print_table(rows, [("program", "program", "{}"), ("args", "arguments", "{:.2f}"),
                                       ("temp", "temporaries", "{:.2f}"), ("out", "outputs", "{:.2f}"),
                                       ("alias", "aliased", "{:.2f}"), ("code", "code", "{:.3f}"),
                                       ("peak", "peak", "{:.2f}"), ("tflops", "TFLOPs", "{:.3f}"),
                                       ("compile_s", "compile s", "{:.0f}")])
    for p in plan.programs.values():
        if p.error:
            print(f"  {p.name}: the compiler refused it ({p.peak_source}): {p.error[:400]}")
    peak = plan.peak_bytes
    fits, hbm_rows = [], []
    for name, hbm in mp.DEVICE_HBM_GIB.items():
        ok = plan.fits(hbm * mp.GIB, args.headroom)
        hbm_rows.append(dict(device=name, hbm=hbm, used=100.0 * peak / (hbm * mp.GIB), fits="yes" if ok else "no"))
        if ok:
            fits.append(name)
    print(f"largest program: {plan.peak_program}; against HBM ({args.headroom:.0%} kept free):")
    hbm_table = _common.print_table(hbm_rows, [("device", "device", "{}"), ("hbm", "HBM GiB", "{}"),
                                               ("used", "peak % of HBM", "{:.0f}"), ("fits", "fits", "{}")])
    summary = load.summary()
    print(_common.load_note(env, summary))
    mesh_name = _mesh_text(shape)
    name = f"memory_plan_{args.preset}_{mesh_name}"
    if args.topology:
        name += "_" + args.topology.replace(":", "-")
    if args.tag:
        name += "_" + args.tag
    _common.write_json(name, {"preset": args.preset, "mesh": mesh_name, "topology": args.topology,
                              "devices": where, "headroom": args.headroom, "plan": plan.to_dict(),
                              "peak_gib": peak / mp.GIB, "fits": fits, "table": table, "hbm_table": hbm_table,
                              "plan_wall_s": round(wall, 1), "argv": sys.argv[1:], "env": env, "load": summary},
                       args.out)
    print(f"{args.preset} {mesh_name}: peak {peak / mp.GIB:.2f} GiB per device; fits: {', '.join(fits) or 'none'}")
    return plan


if __name__ == "__main__":
    main()
