"""Memory plan: per-device bytes of the policy step, value step and rollout sampler, proved by compilation.

A recipe that cannot fit its devices should fail as a ``ValueError`` before
anything is allocated, not as an out-of-memory error an hour into a run. This
module lowers and compiles, **ahead of time and on abstract shapes**, the
three programs an RL step runs:

* ``policy_step``: :func:`tracerl_jax.train.steps.make_policy_step` on the
  mesh (parameters and AdamW moments sharded by ``train/sharding.py``, the
  batch ``[GA, micro_B, ...]`` sharded over ``("data", "fsdp")``);
* ``value_step``: :func:`~tracerl_jax.train.steps.make_value_step` of the
  value model (policy backbone + value head), when planned;
* ``sampler``: the family's rollout sampler (block §1 or full attention §2)
  on the same sharded parameters, the rollout batch sharded over
  ``("data", "fsdp")``;

and reads XLA's own accounting of each compiled program:
``compiled.memory_analysis()`` (argument, output, alias, temporary and
generated-code bytes **per device**) and ``compiled.cost_analysis()``
(FLOPs, bytes accessed). Parameters and optimizer state come from
``jax.eval_shape`` / ``nnx.eval_shape``; every input is a
``jax.ShapeDtypeStruct`` carrying its ``NamedSharding``. Nothing is
allocated and nothing runs, so the devices need not exist: the mesh may be
built from CPU host-platform devices (``--xla_force_host_platform_device_count``)
or from a TPU topology's compile-only devices
(:func:`topology_devices`, libtpu required only then).

Reading the numbers:

* ``peak_bytes`` is the TPU compiler's ``peak_memory_in_bytes`` (a heap
  simulation of the program) on TPU, and ``argument + output - alias + temp
  + generated code`` elsewhere: XLA:CPU's ``peak_memory_in_bytes`` leaves out
  its temporaries (it reports ``argument + output``), and its temporaries
  are one preallocated block, so the sum is what a CPU run holds (the tests
  check it against a run).
* A CPU compile plans memory for the CPU backend. For a GPU-shaped mesh it is
  a proxy: same program, same shardings and SPMD partitioning, but CPU's
  fusion and scheduling, and XLA:CPU computes bfloat16 dots in float32, so it
  keeps float32 copies of large bfloat16 operands (the sampler's KV cache):
  an upper bound for bfloat16 compute. A TPU topology compile is the TPU
  compiler's own plan, and a TPU compiler refuses a program that does not
  fit the chip (the plan records the refusal and the bytes it names).
* FLOPs are XLA's static count: a loop body (the ``lax.scan`` over
  micro-batches, over layers with ``scan_layers``, the sampler's
  ``while_loop`` over blocks and steps) is counted **once**. ``flops`` is
  therefore the cost of one micro-batch (one layer when the layers are
  scanned) or of one denoising step, not of a whole update or rollout.
* The step is planned as the RL loop builds it: no buffer donation unless
  ``PlanSettings.donate``, so the input and output train states are both live.

Use :func:`make_plan` with explicit :class:`PlanSettings`, or
:func:`plan_for_config` / :func:`check_config_fits` with an RL config
(``configs/tracerl.py`` fields); :func:`check_fits` raises the ``ValueError``.
``benchmarks/memory_plan.py`` prints the plans of the published recipes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from types import SimpleNamespace
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

GIB = 1 << 30

# Nominal HBM per device (GiB): what the benchmark compares the plans with. A run also needs
# room for the runtime and fragmentation (see ``check_fits(headroom=...)``), and JAX on GPU
# preallocates only XLA_PYTHON_CLIENT_MEM_FRACTION (default 0.75) of the memory unless told more.
DEVICE_HBM_GIB = {"TPU v4": 32, "TPU v5e": 16, "TPU v5p": 95, "H100": 80, "H200": 141}

PROGRAMS = ("policy_step", "value_step", "sampler")

# What to change when a program does not fit, per program, with the config field that holds it.
_REMEDIES = {
    "policy_step": ("rl.batch_rows_per_device / rl.grad_accum (rows per micro-batch and device)",
                    "model.remat=True", "model.attention_impl='blockwise' (or 'splash' on TPU)",
                    "mesh (a larger fsdp/tensor split shards parameters, gradients and AdamW moments)",
                    "model.param_dtype / rl.opt_state_dtype = 'bfloat16'"),
    "value_step": ("rl.batch_rows_per_device / rl.grad_accum (rows per micro-batch and device)",
                   "model.remat=True", "model.attention_impl='blockwise' (or 'splash' on TPU)",
                   "mesh (a larger fsdp/tensor split)", "model.param_dtype / rl.opt_state_dtype = 'bfloat16'"),
    "sampler": ("rollout.rows_per_device (sample the step's responses in calls of fewer rows per device; the "
                "responses stay the same)", "model.dtype='bfloat16' (the KV cache is in the compute "
                "dtype)", "mesh (tensor parallelism shards the KV heads and the weights)"),
}


# ---------------------------------------------------------------------------
# Settings and results
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PlanSettings:
    """What one RL step compiles, by the names of the RL config (``configs/tracerl.py``).

    Attributes:
      prompt_len: ``L0`` (``prompt_len``).
      gen_length: ``L1``, the response canvas (``rollout.gen_length``).
      block_size: ``rollout.block_size``.
      batch_rows: rows per optimizer update, all devices (``rl.batch_rows``,
        or ``rl.batch_rows_per_device`` x devices).
      grad_accum: micro-batches per update (``rl.grad_accum``); a micro-batch
        of ``batch_rows / grad_accum`` rows is split over ``data x fsdp``.
      rollout_rows: rows of one sampler call, all devices (the RL loop samples
        ``rollout.num_prompts x rollout.k`` responses in one call); split over
        ``data x fsdp``.
      param_dtype, dtype: ``model.param_dtype`` / ``model.dtype``; None keeps
        the ``ModelConfig``'s.
      opt_state_dtype: ``rl.opt_state_dtype`` (AdamW moments); None = the
        parameters' dtype.
      remat, attention_impl, scan_layers: ``model.*``; None keeps the
        ``ModelConfig``'s.
      value: plan the value step too (``value.enabled``); the policy's
        advantages are then per token ``[R, L1]``.
      sampler: the rollout section (``rollout.*``: strategy, steps_per_block,
        steps, use_cache, further_horizon, ...), read by the model family.
      donate: plan the steps with their train state donated (the RL loop
        does not donate: both states are live).
      programs: which of :data:`PROGRAMS` to compile.
    """

    prompt_len: int
    gen_length: int
    block_size: int
    batch_rows: int
    grad_accum: int
    rollout_rows: int
    param_dtype: Optional[str] = None
    dtype: Optional[str] = None
    opt_state_dtype: Optional[str] = None
    remat: Optional[bool] = None
    attention_impl: Optional[str] = None
    scan_layers: Optional[bool] = None
    value: bool = False
    sampler: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    donate: bool = False
    programs: tuple = PROGRAMS

    def __post_init__(self):
        for name in ("prompt_len", "gen_length", "block_size", "batch_rows", "grad_accum", "rollout_rows"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if self.batch_rows % self.grad_accum:
            raise ValueError(f"batch_rows={self.batch_rows} must be divisible by grad_accum={self.grad_accum}")
        if self.gen_length % self.block_size or self.prompt_len % self.block_size:
            raise ValueError(f"gen_length={self.gen_length} and prompt_len={self.prompt_len} must be multiples "
                             f"of block_size={self.block_size}")
        unknown = set(self.programs) - set(PROGRAMS)
        if unknown:
            raise ValueError(f"programs must be among {PROGRAMS}, got {sorted(unknown)}")
        object.__setattr__(self, "sampler", dict(self.sampler))
        object.__setattr__(self, "programs", tuple(self.programs))

    def model_config(self, config):
        """``config`` with this plan's dtypes, remat, attention and layer layout."""
        changes = {k: getattr(self, k) for k in ("param_dtype", "dtype", "remat", "attention_impl", "scan_layers")
                   if getattr(self, k) is not None}
        return config.replace(**changes) if changes else config


@dataclasses.dataclass
class ProgramPlan:
    """XLA's accounting of one compiled program, per device.

    Attributes:
      name: one of :data:`PROGRAMS`.
      argument_bytes, output_bytes, alias_bytes, temp_bytes,
        generated_code_bytes: ``memory_analysis()`` fields (None where the
        backend does not report one).
      peak_bytes: ``peak_memory_in_bytes`` where reported, else
        ``argument + output - alias + temp + generated code``.
      peak_source: which of the two ``peak_bytes`` is.
      flops, bytes_accessed: ``cost_analysis()`` (loop bodies counted once).
      compile_s: seconds to lower and compile.
      raw: every numeric ``memory_analysis()`` field.
      error: set when the compiler refused the program for lack of memory
        (TPU compilers check the plan against the chip's HBM): its message.
        The byte fields then hold what the message and the inputs say
        (arguments from the shardings, temporaries from the message).
    """

    name: str
    argument_bytes: Optional[int]
    output_bytes: Optional[int]
    alias_bytes: Optional[int]
    temp_bytes: Optional[int]
    generated_code_bytes: Optional[int]
    peak_bytes: int
    peak_source: str
    flops: Optional[float]
    bytes_accessed: Optional[float]
    compile_s: float
    raw: dict
    error: Optional[str] = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class MemoryPlan:
    """Plans of an RL step's programs on one mesh.

    Attributes:
      model: the planned :class:`~tracerl_jax.models.ModelConfig` (settings applied).
      settings: the :class:`PlanSettings`.
      mesh_shape: ``{"data": D, "fsdp": F, "tensor": T}``.
      platform, device_kind: of the mesh's devices.
      programs: ``name -> ProgramPlan``.
      param_count: parameters of the policy.
    """

    model: Any
    settings: PlanSettings
    mesh_shape: dict
    platform: str
    device_kind: str
    programs: dict
    param_count: int

    @property
    def peak_bytes(self) -> int:
        """The largest per-device peak of the planned programs (they never run at once)."""
        return max(p.peak_bytes for p in self.programs.values())

    @property
    def peak_program(self) -> str:
        return max(self.programs.values(), key=lambda p: p.peak_bytes).name

    def fits(self, device_bytes: int, headroom: float = 0.0) -> bool:
        """Whether every program fits ``device_bytes`` with ``headroom`` (a fraction) left.

        A program the compiler refused without saying how much memory it
        needed (e.g. TPU scoped-VMEM exhaustion) fits nowhere.
        """
        if any(p.error and p.temp_bytes is None for p in self.programs.values()):
            return False
        return self.peak_bytes <= device_bytes * (1.0 - headroom)

    def to_dict(self) -> dict:
        return {"model": dataclasses.asdict(self.model), "settings": dataclasses.asdict(self.settings),
                "mesh": self.mesh_shape, "platform": self.platform, "device_kind": self.device_kind,
                "param_count": self.param_count, "peak_bytes": self.peak_bytes, "peak_program": self.peak_program,
                "programs": {k: v.to_dict() for k, v in self.programs.items()}}


# ---------------------------------------------------------------------------
# Devices and meshes
# ---------------------------------------------------------------------------


def topology_devices(name: str) -> list:
    """Compile-only devices of a TPU slice, e.g. ``"v5p:4x4x4"`` (64 chips), ``"v4:2x2x2"``, ``"v5e:4x4"``.

    Nothing runs on them; programs lowered for a mesh of them are compiled
    by libtpu's compiler, which must be installed (``pip install
    tracerl_jax[tpu-plan]``; it is not a run-time dependency).

    Raises:
      ValueError: libtpu is missing or the topology name is unknown.
    """
    from jax.experimental import topologies

    try:
        return list(topologies.get_topology_desc(platform="tpu", topology_name=name).devices)
    except Exception as e:  # libtpu missing: RuntimeError/ImportError; a bad name: a runtime error
        raise ValueError(f"cannot make the TPU topology {name!r} ({type(e).__name__}: {e}); compiling for a TPU "
                         "slice needs libtpu (pip install 'tracerl_jax[tpu-plan]') and a name like 'v5p:4x4x4'") from e


def mesh_for(mesh_shape: Sequence[int], devices: Optional[Sequence[Any]] = None) -> Mesh:
    """A ``(data, fsdp, tensor)`` mesh of ``devices`` (default: all); ``-1`` takes the devices left over.

    Raises:
      ValueError: the shape does not match the number of devices.
    """
    from tracerl_jax.train.sharding import make_mesh

    devices = list(jax.devices() if devices is None else devices)
    shape = [int(s) for s in mesh_shape]
    if len(shape) != 3:
        raise ValueError(f"mesh must be (data, fsdp, tensor), got {tuple(mesh_shape)}")
    if shape.count(-1) > 1:
        raise ValueError(f"mesh {tuple(shape)}: at most one axis may be -1")
    if -1 in shape:
        known = int(np.prod([s for s in shape if s != -1]))
        if known < 1 or len(devices) % known:
            raise ValueError(f"mesh {tuple(shape)} does not divide {len(devices)} devices")
        shape[shape.index(-1)] = len(devices) // known
    return make_mesh(*shape, devices=devices)


def device_memory_bytes(device=None) -> Optional[int]:
    """Usable bytes of ``device`` (default: the first device) as its runtime reports them, or None (CPU)."""
    device = jax.devices()[0] if device is None else device
    try:
        stats = device.memory_stats()
    except Exception:  # compile-only and CPU devices may not implement it
        return None
    if not stats:
        return None
    return stats.get("bytes_limit") or stats.get("bytes_reservable_limit")


@contextlib.contextmanager
def _platform_override(platform: str):
    """Makes ``jax.default_backend()`` answer ``platform`` while tracing for another platform's mesh.

    The library picks some kernels by ``jax.default_backend()`` (splash
    attention on TPU); when compiling for a TPU topology from a CPU host the
    default backend is the host's, so this makes tracing choose as it would
    on the slice. Only that public function is replaced, and only here.
    """
    if platform == jax.default_backend():
        yield
        return
    original = jax.default_backend
    jax.default_backend = lambda: platform
    try:
        yield
    finally:
        jax.default_backend = original


# ---------------------------------------------------------------------------
# Abstract inputs
# ---------------------------------------------------------------------------


def _sds(shape, dtype, sharding=None):
    return jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype) if not _is_key(dtype) else dtype, sharding=sharding)


def _is_key(dtype) -> bool:
    return jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def abstract_model(config, value: bool = False):
    """``(graphdef, params)`` of a policy (or value model) with ``ShapeDtypeStruct`` leaves; nothing allocated."""
    from flax import nnx

    from tracerl_jax.models import init_model, init_value_model, split_model

    init = init_value_model if value else init_model
    return split_model(nnx.eval_shape(lambda: init(config, seed=0)))


def input_length(family: str, prompt_len: int, gen_length: int) -> int:
    """``N`` of a training row: ``L0 + 2 L1`` (block models, extended layout) or ``L0 + L1`` (LLaDA/Dream)."""
    return prompt_len + (2 * gen_length if family == "sdar" else gen_length)


def abstract_rows(family: str, lead: tuple, prompt_len: int, gen_length: int):
    """:class:`~tracerl_jax.rows.Rows` of ``ShapeDtypeStruct``s with leading dims ``lead`` (e.g. ``(GA, mb)``)."""
    from tracerl_jax.attention import MaskInfo
    from tracerl_jax.rows import Rows

    N = input_length(family, prompt_len, gen_length)
    n = lambda dt: _sds(lead + (N,), dt)  # noqa: E731
    l1 = lambda dt: _sds(lead + (gen_length,), dt)  # noqa: E731
    r = lambda dt: _sds(lead, dt)  # noqa: E731
    return Rows(tokens=n(jnp.int32), positions=n(jnp.int32), mask_info=MaskInfo(n(jnp.int32), n(bool), n(bool)),
                labels=l1(jnp.int32), p_mask=l1(bool), read_index=l1(jnp.int32), response_index=r(jnp.int32),
                round_index=r(jnp.int32), row_valid=r(bool))


def abstract_batch(kind: str, family: str, settings: PlanSettings) -> dict:
    """The update batch of the policy (``kind="policy"``) or value step, leaves ``[GA, micro_B, ...]``.

    The policy batch holds ``rows``, ``logp_old``, ``advantages`` (``[.., L1]``
    with the value model, else per row), ``num_rows``, ``L1_ref``; the value
    batch ``rows``, ``old_values``, ``returns``, ``num_rows``, ``L1_ref``.
    """
    s = settings
    lead = (s.grad_accum, s.batch_rows // s.grad_accum)
    per_token = _sds(lead + (s.gen_length,), jnp.float32)
    batch = {"rows": abstract_rows(family, lead, s.prompt_len, s.gen_length)}
    if kind == "policy":
        batch["logp_old"] = per_token
        batch["advantages"] = per_token if s.value else _sds(lead, jnp.float32)
    elif kind == "value":
        batch["old_values"] = per_token
        batch["returns"] = per_token
    else:
        raise ValueError(f"kind must be 'policy' or 'value', got {kind!r}")
    batch["num_rows"] = _sds(lead, jnp.float32)
    batch["L1_ref"] = _sds(lead, jnp.float32)
    return batch


def _with_sharding(tree, shardings):
    return jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), tree, shardings)


# ---------------------------------------------------------------------------
# Optimizer
# ---------------------------------------------------------------------------


def make_plan_optimizer(learning_rate: float, param_dtype: str, opt_state_dtype: Optional[str],
                        max_grad_norm: Optional[float] = 1.0):
    """The AdamW the RL run builds (:func:`~tracerl_jax.train.optimizer.make_optimizer`), moments in
    ``opt_state_dtype``.

    ``OptimizerConfig.state_dtype`` sets the dtype of Adam's first moment
    (``optax.adamw(mu_dtype=...)``); optax keeps the second moment in the
    parameters' dtype, and so does the plan. An ``OptimizerConfig`` without
    a moment-dtype field cannot hold a dtype other than the parameters':
    that is a ``ValueError`` naming ``rl.opt_state_dtype`` rather than a plan
    of an optimizer the run would not build.
    """
    from tracerl_jax.models.config import canonical_dtype
    from tracerl_jax.train.optimizer import OptimizerConfig, make_optimizer

    names = {f.name for f in dataclasses.fields(OptimizerConfig)}
    kw = dict(learning_rate=learning_rate, max_grad_norm=max_grad_norm)
    want = None if opt_state_dtype is None else canonical_dtype(opt_state_dtype, "rl.opt_state_dtype")
    field = next((n for n in ("state_dtype", "opt_state_dtype", "mu_dtype") if n in names), None)
    if field is not None:
        kw[field] = want
    elif want is not None and want != canonical_dtype(param_dtype, "model.param_dtype"):
        raise ValueError(f"rl.opt_state_dtype={want!r} differs from model.param_dtype={param_dtype!r}, but "
                         "train/optimizer.py's OptimizerConfig has no moment-dtype field (AdamW's moments follow "
                         "the parameters); set rl.opt_state_dtype to the parameters' dtype")
    return make_optimizer(OptimizerConfig(**kw))


# ---------------------------------------------------------------------------
# Compiling
# ---------------------------------------------------------------------------


def _first(d, *names):
    for n in names:
        v = d.get(n)
        if v is not None:
            return v
    return None


def summarize(name: str, compiled, compile_s: float, platform: str = "cpu") -> ProgramPlan:
    """A :class:`ProgramPlan` from a ``jax.stages.Compiled`` of ``platform`` (absent fields are None)."""
    mem = compiled.memory_analysis()
    raw = {}
    if mem is not None:
        for attr in dir(mem):
            if attr.startswith("_"):
                continue
            v = getattr(mem, attr, None)
            if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
                raw[attr] = int(v)
    arg, out, alias, temp, code = (raw.get(k) for k in (
        "argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes",
        "generated_code_size_in_bytes"))
    live = sum(v or 0 for v in (arg, out, temp, code)) - (alias or 0)
    peak_reported = raw.get("peak_memory_in_bytes")
    # XLA:CPU reports peak_memory_in_bytes = argument + output, without its temporaries (measured on
    # jax 0.10), so the CPU plan takes the live sum; TPU's is a heap simulation of the whole program.
    if peak_reported and platform != "cpu":
        peak, source = int(peak_reported), "peak_memory_in_bytes"
    else:
        peak, source = live, "argument+output-alias+temp+code"
    try:
        cost = compiled.cost_analysis()
    except Exception:  # some backends do not implement it
        cost = None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    cost = dict(cost or {})
    flops = _first(cost, "flops")
    accessed = _first(cost, "bytes accessed", "bytes_accessed")
    return ProgramPlan(name=name, argument_bytes=arg, output_bytes=out, alias_bytes=alias, temp_bytes=temp,
                       generated_code_bytes=code, peak_bytes=int(peak), peak_source=source,
                       flops=None if flops is None else float(flops),
                       bytes_accessed=None if accessed is None else float(accessed),
                       compile_s=round(compile_s, 2), raw=raw)


# XLA:CPU options that only make LLVM's code generation cheaper; buffer assignment (the memory plan)
# runs before it and is unchanged (tests/test_memory_plan.py checks the argument/temporary bytes
# against a run of the compiled program). About 40% off a CPU compile.
FAST_CPU_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _compile(name: str, lower, platform: str, fast: bool = True, args=()) -> ProgramPlan:
    t0 = time.perf_counter()
    with _platform_override(platform):
        try:
            lowered = lower()
        except NotImplementedError as e:
            if "Mosaic kernels cannot be automatically partitioned" not in str(e):
                raise
            raise ValueError(f"model.attention_impl: the {name} calls a Pallas/Mosaic kernel (splash attention) that "
                             "XLA cannot partition; splash runs per device in a shard_map only when traced under "
                             "the mesh (jax.set_mesh, as the library's steps are), which this program was not; use "
                             "attention_impl='dense' or trace it under the mesh") from e
        try:
            compiled = lowered.compile(FAST_CPU_COMPILE) if fast and platform == "cpu" else lowered.compile()
        except Exception as e:  # noqa: BLE001 - only an out-of-memory refusal becomes a plan
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            return _refused(name, str(e), args, time.perf_counter() - t0)
    plan = summarize(name, compiled, time.perf_counter() - t0, platform)
    plan.compiled, plan.args = compiled, args   # not dataclass fields: kept out of to_dict()
    return plan


_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _parse_bytes(text: str) -> Optional[int]:
    import re

    m = re.match(r"\s*([0-9.]+)\s*([KMGT]?)i?B?", text)
    return None if m is None else int(float(m.group(1)) * _UNITS[m.group(2)])


def _itemsize(dtype) -> int:
    if _is_key(dtype):   # a typed PRNG key is its key data (2 x uint32 for the default implementation)
        data = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct((), dtype))
        return int(np.prod(data.shape, dtype=np.int64)) * jnp.dtype(data.dtype).itemsize
    return jnp.dtype(dtype).itemsize


def per_device_bytes(args) -> int:
    """Bytes one device holds of abstract ``args`` (``ShapeDtypeStruct``s with shardings; none = whole).

    With an even sharding this is what ``memory_analysis()`` reports as a
    program's argument bytes.
    """
    total = 0
    for x in jax.tree.leaves(args):
        sh = getattr(x, "sharding", None)
        shape = sh.shard_shape(x.shape) if sh is not None else x.shape
        total += int(np.prod(shape, dtype=np.int64)) * _itemsize(x.dtype)
    return total


def kept_argument_bytes(compiled, args) -> int:
    """:func:`per_device_bytes` of the ``args`` the compiled program reads.

    ``jax.jit`` drops inputs the program never reads (an optimizer
    hyper-parameter the step overwrites, say); ``compiled.input_shardings``
    holds None for them. What remains is ``memory_analysis()``'s argument
    bytes.
    """
    shardings = jax.tree.leaves(compiled.input_shardings, is_leaf=lambda x: x is None)
    leaves = jax.tree.leaves(args)
    if len(shardings) != len(leaves):
        raise ValueError(f"{len(leaves)} arguments but {len(shardings)} input shardings")
    return per_device_bytes([x for x, sh in zip(leaves, shardings) if sh is not None])


def _refused(name: str, message: str, args, compile_s: float) -> ProgramPlan:
    """The plan of a program the compiler refused as too large for the device (TPU: "Ran out of memory")."""
    import re

    arg = per_device_bytes(args)
    m = re.search(r"HLO temporaries \(([^)]+)\)", message)
    temp = _parse_bytes(m.group(1)) if m else None
    source = ("refused by the compiler for lack of HBM: arguments + the temporaries it reported" if temp is not None
              else "refused by the compiler (no byte count): arguments only; does not fit")
    return ProgramPlan(name=name, argument_bytes=arg, output_bytes=None, alias_bytes=None, temp_bytes=temp,
                       generated_code_bytes=None, peak_bytes=arg + (temp or 0), peak_source=source,
                       flops=None, bytes_accessed=None, compile_s=round(compile_s, 2), raw={},
                       error=" ".join(message.split())[:2000])


def _step_plan(name, make_step, graphdef, abstract_params, optimizer, batch, mesh, donate, platform, fast):
    from tracerl_jax.train.sharding import BATCH_AXES
    from tracerl_jax.train.step import init_train_state, state_shardings

    state = jax.eval_shape(lambda p: init_train_state(p, optimizer), abstract_params)
    state_sh = state_shardings(state, optimizer, mesh)
    step = make_step(graphdef, optimizer, mesh=mesh, state_sharding=state_sh, donate=donate)
    batch_sh = NamedSharding(mesh, P(None, BATCH_AXES))
    args = (_with_sharding(state, state_sh), jax.tree.map(lambda x: _sds(x.shape, x.dtype, batch_sh), batch),
            jax.ShapeDtypeStruct((), jnp.float32))
    return _compile(name, lambda: step.lower(*args), platform, fast, args), state_sh


def _sampler_plan(config, graphdef, abstract_params, param_sh, settings: PlanSettings, mesh, platform, fast):
    from tracerl_jax.families import get_family
    from tracerl_jax.train.sharding import BATCH_AXES

    family = get_family(config.family)
    tokens = SimpleNamespace(mask_id=config.mask_token_id, pad_id=config.pad_token_id, eos_id=config.eos_token_id)
    section = dict(settings.sampler)
    scfg = family.sampler_config(section, tokens, block_size=settings.block_size, gen_length=settings.gen_length,
                                 name="rollout")
    sample_fn = family.make_sampler(graphdef, config, scfg)
    if not hasattr(sample_fn, "lower_core"):
        raise ValueError("this sampler does not expose lower_core (ahead-of-time lowering)")
    rows = NamedSharding(mesh, P(BATCH_AXES))
    B, L0 = settings.rollout_rows, settings.prompt_len
    keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), B))
    args = (_with_sharding(abstract_params, param_sh), _sds((B, L0), jnp.int32, rows), _sds((B, L0), bool, rows),
            jax.ShapeDtypeStruct(keys.shape, keys.dtype, sharding=rows))
    def lower():
        with jax.set_mesh(mesh):   # as rl.distributed.global_sampler: the model's activation constraints see it
            return sample_fn.lower_core(*args)

    return _compile("sampler", lower, platform, fast, args)


def make_plan(model_config, settings: PlanSettings, mesh: Optional[Mesh] = None, *,
              mesh_shape: Optional[Sequence[int]] = None, devices: Optional[Sequence[Any]] = None,
              learning_rate: float = 1e-6, max_grad_norm: Optional[float] = 1.0,
              policy_loss=None, value_clip: Optional[float] = 0.2, fast_compile: bool = True) -> MemoryPlan:
    """Compiles the RL step's programs ahead of time on abstract inputs and returns their per-device bytes.

    Args:
      model_config: the policy's :class:`~tracerl_jax.models.ModelConfig`
        (``settings`` may override dtypes, remat, attention and layout).
      settings: :class:`PlanSettings`.
      mesh: a ``(data, fsdp, tensor)`` mesh; or give ``mesh_shape`` (``-1``
        allowed) and optionally ``devices`` (default all; e.g.
        :func:`topology_devices`).
      learning_rate, max_grad_norm: of the AdamW (no effect on memory).
      policy_loss: a :class:`~tracerl_jax.train.steps.PolicyLossConfig`;
        default: the family's reference loss.
      value_clip: the value loss clip.
      fast_compile: on CPU, compile with :data:`FAST_CPU_COMPILE` (same memory plan, cheaper codegen).

    Returns:
      :class:`MemoryPlan`.

    Raises:
      ValueError: inconsistent settings (rows that do not split over the
        mesh, an optimizer-state dtype the optimizer cannot hold, ...),
        naming the setting.
    """
    from tracerl_jax.families import get_family
    from tracerl_jax.train.step import init_train_state, state_shardings
    from tracerl_jax.train.steps import PolicyLossConfig, make_policy_step, make_value_step

    if mesh is None:
        if mesh_shape is None:
            raise ValueError("give a mesh or a mesh_shape")
        mesh = mesh_for(mesh_shape, devices)
    shape = {k: int(v) for k, v in mesh.shape.items()}
    rows_split = shape.get("data", 1) * shape.get("fsdp", 1)
    micro = settings.batch_rows // settings.grad_accum
    if {"policy_step", "value_step"} & set(settings.programs) and micro % rows_split:
        raise ValueError(f"a micro-batch of batch_rows/grad_accum = {micro} rows does not split over data x fsdp "
                         f"= {rows_split} devices (rl.batch_rows_per_device / rl.grad_accum)")
    if "sampler" in settings.programs and settings.rollout_rows % rows_split:
        raise ValueError(f"rollout_rows={settings.rollout_rows} does not split over data x fsdp = {rows_split} "
                         "devices")
    config = settings.model_config(model_config)
    family = get_family(config.family)
    device = mesh.devices.flat[0]
    platform = device.platform
    programs = {}
    graphdef, params = abstract_model(config)
    opt = make_plan_optimizer(learning_rate, config.param_dtype, settings.opt_state_dtype, max_grad_norm)
    loss_cfg = policy_loss if policy_loss is not None else PolicyLossConfig(**family.policy_loss_defaults)
    # The sampler runs on the policy's train-state parameter shardings.
    param_sh = state_shardings(jax.eval_shape(lambda p: init_train_state(p, opt), params), opt, mesh).params
    if "policy_step" in settings.programs:
        policy_step = lambda g, o, **kw: make_policy_step(g, o, loss_cfg, **kw)  # noqa: E731
        programs["policy_step"], _ = _step_plan("policy_step", policy_step, graphdef, params, opt,
                                                abstract_batch("policy", config.family, settings), mesh,
                                                settings.donate, platform, fast_compile)
    if "value_step" in settings.programs and settings.value:
        vgraph, vparams = abstract_model(config, value=True)
        value_step = lambda g, o, **kw: make_value_step(  # noqa: E731
            g, o, clip=value_clip, normalizer=family.normalizer, **kw)
        programs["value_step"], _ = _step_plan("value_step", value_step, vgraph, vparams, opt,
                                               abstract_batch("value", config.family, settings), mesh,
                                               settings.donate, platform, fast_compile)
    if "sampler" in settings.programs:
        programs["sampler"] = _sampler_plan(config, graphdef, params, param_sh, settings, mesh, platform,
                                            fast_compile)
    if not programs:
        raise ValueError(f"nothing to plan: programs={settings.programs}, value={settings.value}")
    order = [p for p in PROGRAMS if p in programs]
    return MemoryPlan(model=config, settings=settings, mesh_shape=shape, platform=platform,
                      device_kind=str(getattr(device, "device_kind", platform)),
                      programs={k: programs[k] for k in order},
                      param_count=int(sum(np.prod(x.shape, dtype=np.int64) for x in jax.tree.leaves(params))))


# ---------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------


def check_fits(plan: MemoryPlan, device_bytes: int, field_name: Optional[str] = None, *,
               headroom: float = 0.0, device_name: str = "the device") -> None:
    """Raises ``ValueError`` if a planned program needs more than ``device_bytes`` per device.

    Args:
      plan: from :func:`make_plan`.
      device_bytes: usable bytes per device (e.g. :func:`device_memory_bytes`,
        or ``DEVICE_HBM_GIB[name] * GIB``).
      field_name: the config field/setting to name first as the one to
        change; default: the first remedy of the program that does not fit.
      headroom: fraction of ``device_bytes`` to keep free (runtime,
        fragmentation).
      device_name: for the message.

    Raises:
      ValueError: naming the program, its bytes, ``device_bytes``, the field
        to change and the other settings that lower that program's memory.
    """
    budget = int(device_bytes * (1.0 - headroom))
    over = [p for p in plan.programs.values() if p.peak_bytes > budget or (p.error and p.temp_bytes is None)]
    if not over:
        return
    worst = max(over, key=lambda p: p.peak_bytes)
    remedies = list(_REMEDIES[worst.name])
    first = field_name or remedies.pop(0)
    others = "; ".join(r for r in remedies if r != first)
    mesh = "x".join(str(plan.mesh_shape.get(a, 1)) for a in ("data", "fsdp", "tensor"))
    raise ValueError(
        f"{first}: the {worst.name} needs {worst.peak_bytes / GIB:.2f} GiB per device on mesh {mesh} "
        f"(data x fsdp x tensor), more than the {budget / GIB:.2f} GiB of {device_name}"
        f"{f' ({headroom:.0%} kept free)' if headroom else ''}; change {first}"
        f"{f', or: {others}' if others else ''}")


def settings_from_config(cfg, num_devices: int, row_devices: Optional[int] = None, **overrides) -> PlanSettings:
    """:class:`PlanSettings` of an RL config (``configs/tracerl.py`` fields) on ``num_devices`` devices.

    ``rl.batch_rows_per_device`` (if set) times ``num_devices`` gives the rows
    per update, as the RL loop resolves it; the rollout batch is one sampler
    call: the step's ``rollout.num_prompts x rollout.k`` responses, or
    ``rollout.rows_per_device`` x ``row_devices`` (the mesh's data x fsdp
    devices) when that is set and smaller. ``overrides`` replace any field.
    """
    model, rl, r = cfg.model, cfg.rl, cfg.rollout
    per = rl.get("batch_rows_per_device")
    batch_rows = per * num_devices if per is not None else rl.batch_rows
    rollout_rows = r.num_prompts * r.k
    if r.get("rows_per_device") is not None:
        rollout_rows = min(rollout_rows, r.rows_per_device * (row_devices or num_devices))
    fields = dict(prompt_len=cfg.prompt_len, gen_length=r.gen_length, block_size=r.block_size,
                  batch_rows=batch_rows, grad_accum=rl.grad_accum, rollout_rows=rollout_rows,
                  param_dtype=model.get("param_dtype"), dtype=model.get("dtype"),
                  opt_state_dtype=rl.get("opt_state_dtype"), remat=model.get("remat"),
                  attention_impl=model.get("attention_impl"), scan_layers=model.get("scan_layers"),
                  value=bool(cfg.value.enabled), sampler=r.to_dict())
    fields.update(overrides)
    return PlanSettings(**fields)


def config_mesh_shape(cfg) -> tuple:
    """``cfg.mesh`` as a ``(data, fsdp, tensor)`` tuple (``-1`` kept); ``(-1, 1, 1)`` without one."""
    mesh = cfg.get("mesh", None)
    return tuple(int(x) for x in (mesh if mesh is not None else (-1, 1, 1)))


def plan_for_config(cfg, model_config, mesh: Optional[Mesh] = None, *, devices=None, **overrides) -> MemoryPlan:
    """:func:`make_plan` of an RL config (its ``mesh`` over ``devices`` unless ``mesh`` is given)."""
    if mesh is None:
        mesh = mesh_for(config_mesh_shape(cfg), devices)
    settings = settings_from_config(cfg, mesh.size, mesh.shape["data"] * mesh.shape["fsdp"], **overrides)
    return make_plan(model_config, settings, mesh, learning_rate=cfg.rl.learning_rate,
                     max_grad_norm=cfg.rl.get("max_grad_norm", 1.0))


def check_config_fits(cfg, model_config, mesh: Optional[Mesh] = None, *, device_bytes: Optional[int] = None,
                      headroom: float = 0.05, devices=None) -> Optional[MemoryPlan]:
    """For the RL run: plans ``cfg`` and raises ``ValueError`` before anything is allocated if it cannot fit.

    ``device_bytes`` defaults to what the first device's runtime reports
    (:func:`device_memory_bytes`); with neither (CPU) the plan is returned
    unchecked.
    """
    plan = plan_for_config(cfg, model_config, mesh, devices=devices)
    if device_bytes is None:
        dev = (mesh.devices.flat[0] if mesh is not None else None)
        device_bytes = device_memory_bytes(dev)
    if device_bytes is not None:
        check_fits(plan, device_bytes, headroom=headroom, device_name=plan.device_kind)
    return plan
