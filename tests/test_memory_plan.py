"""The memory plan: ahead-of-time compiles of the RL step's programs, checked against a real run on CPU.

* 1 device, in process: the ``small`` preset's policy step and rollout
  sampler are planned on abstract inputs; the abstract batch has exactly the
  shapes and dtypes of rows the library builds; the planned policy step is
  then run once on real arrays, and
  - its argument bytes equal the bytes of the real parameters + AdamW state
    + batch + learning rate **exactly**, its output bytes those of the
    outputs it returned;
  - the process's peak resident memory grows, while it runs, by
    ``temporaries + outputs`` within a factor of 2 (``RSS_FACTOR``).
* 8 host devices, in a subprocess: the same plan on a ``1 x 8 x 1`` (FSDP)
  mesh; every per-device argument byte count equals the sum of the shards
  the shardings put on one device, and FSDP divides the policy step's
  arguments by about 8.
* ``check_fits`` raises a ``ValueError`` naming the setting to change.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tracerl_jax import memory_plan as mp
from tracerl_jax.models import get_preset, init_model, split_model

ROOT = Path(__file__).resolve().parents[1]
RSS_FACTOR = 2.0
SAMPLER = dict(steps_per_block=4, strategy="low_confidence_dynamic", threshold=0.9, temperature=1.0)
# Long enough responses that the step's temporaries (~100 MB) dominate allocator noise in the RSS check.
SETTINGS = dict(prompt_len=16, gen_length=128, block_size=4, batch_rows=8, grad_accum=1, rollout_rows=8,
                sampler=SAMPLER, programs=("policy_step", "sampler"))


def _nbytes(tree) -> int:
    return int(sum(np.asarray(x).nbytes for x in jax.tree.leaves(tree)))


def _real_batch(settings: mp.PlanSettings, vocab: int):
    """A policy batch the library builds: TraceRL rows of synthetic rollouts, split into micro-batches."""
    from tracerl_jax import build_rows
    from tracerl_jax.train.step import to_microbatches
    from tracerl_jax.train.steps import batch_scalars

    s, b = settings, settings.block_size
    rng = np.random.default_rng(0)
    n_resp = s.batch_rows // b          # one token per step in random order: b rows (rounds) per response
    prompts = rng.integers(5, vocab, size=(n_resp, s.prompt_len)).astype(np.int32)
    response = rng.integers(5, vocab, size=(n_resp, s.gen_length)).astype(np.int32)
    nb = s.gen_length // b
    order = np.argsort(rng.random((n_resp, nb, b)), axis=-1)
    step_map = (order + 1 + b * np.arange(nb)[None, :, None]).reshape(n_resp, s.gen_length).astype(np.int32)
    rows = build_rows(prompts, np.ones_like(prompts, bool), response, step_map,
                      np.full((n_resp,), s.gen_length, np.int32), block_size=b, mask_id=4, pad_id=0)
    R = rows.tokens.shape[0]
    assert R == s.batch_rows
    batch = dict(rows=rows, logp_old=jnp.asarray(rng.normal(size=(R, s.gen_length)) * 0.1 - 3.0, jnp.float32),
                 advantages=jnp.asarray(rng.normal(size=(R,)), jnp.float32),
                 **batch_scalars(rows.row_valid, s.grad_accum, s.gen_length))
    return to_microbatches(batch, s.grad_accum)


def _vm(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")   # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def plan1():
    settings = mp.PlanSettings(**SETTINGS)
    return mp.make_plan(get_preset("small"), settings, mesh_shape=(1, 1, 1), devices=jax.devices()[:1])


def test_plan_matches_a_real_run_on_one_device(plan1):
    assert set(plan1.programs) == {"policy_step", "sampler"}
    step = plan1.programs["policy_step"]
    assert step.error is None and step.flops and step.flops > 0
    assert step.peak_source == "argument+output-alias+temp+code"   # CPU: the live sum
    assert step.peak_bytes >= step.argument_bytes + step.output_bytes + step.temp_bytes

    # The abstract batch is what the library builds.
    settings = plan1.settings
    real = _real_batch(settings, plan1.model.vocab_size)
    abstract = mp.abstract_batch("policy", "sdar", settings)
    assert jax.tree.structure(real) == jax.tree.structure(abstract)
    for r, a in zip(jax.tree.leaves(real), jax.tree.leaves(abstract)):
        assert (r.shape, jnp.dtype(r.dtype)) == (a.shape, jnp.dtype(a.dtype))

    # Run the planned program once on real arrays.
    from tracerl_jax.train.step import init_train_state

    opt = mp.make_plan_optimizer(1e-6, plan1.model.param_dtype, settings.opt_state_dtype)
    _, params = split_model(init_model(plan1.model, seed=0))
    state = init_train_state(params, opt)
    lr = jnp.float32(1e-6)
    # Exactly the real parameters, AdamW state, batch and learning rate (less the inputs the program never
    # reads, which jit drops: a few optimizer scalars).
    real_args = (state, real, lr)
    kept = jax.tree.leaves(step.compiled.input_shardings, is_leaf=lambda x: x is None)
    assert step.argument_bytes == sum(np.asarray(x).nbytes for x, sh in zip(jax.tree.leaves(real_args), kept)
                                      if sh is not None)
    assert 0 <= _nbytes(real_args) - step.argument_bytes <= 4 * 32
    assert step.argument_bytes == mp.kept_argument_bytes(step.compiled, step.args)
    jax.block_until_ready((state, real))
    rss0 = _vm("VmRSS")
    measured = _reset_peak()
    new_state, metrics = step.compiled(*real_args)
    jax.block_until_ready((new_state, metrics))
    assert float(metrics["skipped"]) == 0.0 and np.isfinite(float(metrics["loss"]))
    # The outputs, plus XLA:CPU's output tuple (one 8-byte pointer per output buffer).
    outputs = jax.tree.leaves((new_state, metrics))
    assert 0 <= step.output_bytes - _nbytes(outputs) <= 8 * len(outputs)
    if measured:
        growth = _vm("VmHWM") - rss0
        planned = step.temp_bytes + step.output_bytes
        assert planned / RSS_FACTOR <= growth <= planned * RSS_FACTOR, (growth, planned)

    sampler = plan1.programs["sampler"]
    # Sampler arguments: the parameters, prompts, their mask and the row keys (2 x uint32 each).
    L0, B = settings.prompt_len, settings.rollout_rows
    assert sampler.argument_bytes == _nbytes(params) + B * L0 * 4 + B * L0 + B * 8
    assert sampler.argument_bytes == mp.kept_argument_bytes(sampler.compiled, sampler.args)
    assert sampler.temp_bytes > 0


def test_check_fits_names_the_setting(plan1):
    mp.check_fits(plan1, 10 * mp.GIB)   # fits: no error
    with pytest.raises(ValueError, match=r"rl\.batch_rows_per_device / rl\.grad_accum.*policy_step"):
        mp.check_fits(plan1, plan1.programs["policy_step"].peak_bytes - 1)
    only_sampler = mp.MemoryPlan(plan1.model, plan1.settings, plan1.mesh_shape, "cpu", "cpu",
                                 {"sampler": plan1.programs["sampler"]}, plan1.param_count)
    with pytest.raises(ValueError, match=r"^rollout\.rows_per_device \(.*\): the sampler needs"):
        mp.check_fits(only_sampler, 1000)
    with pytest.raises(ValueError, match=r"^model\.remat: the policy_step needs .* change model\.remat"):
        mp.check_fits(plan1, 1000, "model.remat")
    with pytest.raises(ValueError, match=r"10% kept free"):
        mp.check_fits(plan1, plan1.peak_bytes, headroom=0.1)


def test_opt_state_dtype_is_adams_first_moment():
    from tracerl_jax.train.step import init_train_state

    config = get_preset("tiny")
    _, params = mp.abstract_model(config)
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    size = {}
    for dt in ("float32", "bfloat16"):
        opt = mp.make_plan_optimizer(1e-6, "float32", dt)
        state = jax.eval_shape(lambda p: init_train_state(p, opt), params)
        size[dt] = sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(state.opt_state))
    assert size["float32"] - size["bfloat16"] == 2 * n   # mu in bf16, nu stays float32 (optax)


_SCRIPT = """
import json, sys
import jax
from tracerl_jax import memory_plan as mp
from tracerl_jax.models import get_preset
from tests.test_memory_plan import SETTINGS
assert jax.device_count() == 8
plan = mp.make_plan(get_preset("small"), mp.PlanSettings(**SETTINGS), mesh_shape=(1, 8, 1))
json.dump({"mesh": plan.mesh_shape, "args": {k: p.argument_bytes for k, p in plan.programs.items()},
           "expected_args": {k: mp.kept_argument_bytes(p.compiled, p.args) for k, p in plan.programs.items()}},
          open(sys.argv[1], "w"))
"""


def test_fsdp_shards_the_arguments_on_eight_devices(plan1, tmp_path):
    out = tmp_path / "plan8.json"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    subprocess.run([sys.executable, "-c", _SCRIPT, str(out)], cwd=ROOT, env=env, check=True, timeout=600)
    res = json.loads(out.read_text())
    assert res["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
    # Exactly the bytes of the shards one device holds (computed from the shardings in the subprocess) ...
    assert res["args"] == res["expected_args"]
    # ... and FSDP divides the state (nearly all of the policy step's arguments) by about 8: norms and
    # dims that 8 does not divide stay replicated.
    one = plan1.programs["policy_step"].argument_bytes
    assert one / 8 <= res["args"]["policy_step"] <= one / 8 * 1.1
    assert res["args"]["sampler"] <= plan1.programs["sampler"].argument_bytes / 8 * 1.1


def test_recipe_settings():
    from configs import llada_8b, trado_4b

    s = mp.settings_from_config(trado_4b.get_config(), 8)
    # 1024 responses a step, sampled in calls of 32 rows per device (rollout.rows_per_device)
    assert (s.prompt_len, s.gen_length, s.block_size, s.batch_rows, s.grad_accum, s.rollout_rows) == \
        (784, 2000, 4, 256, 32, 256)
    assert (s.param_dtype, s.dtype, s.opt_state_dtype, s.remat, s.scan_layers) == \
        ("float32", "bfloat16", "float32", True, True)
    assert mp.input_length("sdar", 784, 2000) == 784 + 2 * 2000
    c = llada_8b.get_config()
    s = mp.settings_from_config(c, 8)
    assert (s.prompt_len, s.gen_length, s.block_size, s.batch_rows, s.grad_accum) == (512, 512, 32, 2048, 128)
    assert s.sampler["use_cache"] and s.sampler["further_horizon"] == 128 and s.sampler["steps"] == 512
    assert mp.input_length("llada", 512, 512) == 1024
    c.rollout.rows_per_device = 8    # a rollout sampled in chunks of 8 rows per data x fsdp device
    assert mp.settings_from_config(c, 8, 2).rollout_rows == 16
    assert len(mp.config_mesh_shape(c)) == 3


def test_compiler_refusals_become_plans():
    args = [jax.ShapeDtypeStruct((1024, 1024), jnp.float32)]
    hbm = mp._refused("sampler", "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
                      "temporaries (104.98G) exceeds available HBM (95.74G).", args, 1.0)
    assert hbm.argument_bytes == 4 << 20 and hbm.temp_bytes == int(104.98 * mp.GIB)
    plan = mp.MemoryPlan(get_preset("tiny"), mp.PlanSettings(**SETTINGS), {"data": 1, "fsdp": 8, "tensor": 1},
                         "tpu", "TPU v5", {"sampler": hbm}, 0)
    assert not plan.fits(95 * mp.GIB) and plan.fits(141 * mp.GIB)
    vmem = mp._refused("sampler", "RESOURCE_EXHAUSTED: E1001: CompileTimeScopedVmemOom: ...", args, 1.0)
    plan.programs["sampler"] = vmem
    assert vmem.temp_bytes is None and not plan.fits(1 << 50)
    with pytest.raises(ValueError, match="the sampler needs"):
        mp.check_fits(plan, 1 << 50)


def test_a_run_whose_plan_exceeds_the_device_stops_before_loading_weights(tmp_path, monkeypatch):
    from configs import tracerl as recipe
    from tracerl_jax.rl import run as rl_run
    from tracerl_jax.rl import specs

    c = recipe.get_config()
    c.workdir = str(tmp_path)
    c.model.init = "random:tiny"
    c.task.num_train, c.task.num_eval = 32, 4
    c.rollout.num_prompts, c.rollout.k, c.rollout.gen_length = 4, 2, 16
    c.rl.batch_rows = 8
    c.memory_plan = True
    c.device_memory_gib = 1e-4   # 100 KiB: no program fits

    def no_weights(*args, **kwargs):
        raise AssertionError("weights loaded before the memory check")

    monkeypatch.setattr(specs, "load_policy", no_weights)
    with pytest.raises(ValueError, match=r"needs [0-9.]+ GiB per device on mesh 1x1x1 .* more than the 0\.00 GiB"):
        rl_run.build_run(c)
    c.device_memory_gib = -1.0
    with pytest.raises(ValueError, match="device_memory_gib must be a positive number"):
        rl_run.build_run(c)
    # A budget the plan fits passes the check and goes on to load the weights.
    c.device_memory_gib = 64.0
    with pytest.raises(AssertionError, match="weights loaded before"):
        rl_run.build_run(c)
