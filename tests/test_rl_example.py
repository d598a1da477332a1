"""examples/tracerl.py end to end: smoke runs of every RL recipe, and bit-exact resume.

Every run is a subprocess of the real command line, on a tiny randomly
initialised model (the shipped SFT checkpoint is not needed). The runs of this
module share a persistent XLA compilation cache, so only the first run of a
program pays for compiling it.

A random model never earns a task reward, so every group would be filtered
and nothing would be learned. Runs that must update the model use
:func:`digit_reward` (``--reward=tests.test_rl_example:digit_reward``): the
fraction of digits in a completion, a deterministic, varied reward.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from tests.helpers.once import run_once

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "tracerl.py"
REWARD = "--reward=tests.test_rl_example:digit_reward"

# The default recipe shrunk to a smoke size (a run is a few seconds of compute).
TINY = ("--config.model.init=random:tiny", "--config.task.num_train=32", "--config.task.num_eval=4",
        "--config.rollout.num_prompts=4", "--config.rollout.k=2", "--config.rollout.gen_length=16",
        "--config.rl.batch_rows=8", "--config.eval.batch_size=4")


def digit_reward(texts, examples, lengths):
    """Toy batch reward: the share of digit characters in each completion."""
    del examples, lengths
    return [sum(ch.isdigit() for ch in t) / max(len(t), 1) for t in texts]


@pytest.fixture(scope="session")
def run_env(tmp_path_factory):
    """Environment of the example subprocesses: CPU, a persistent compilation cache shared by the session
    (conftest.py's, which the pytest-xdist workers share, else one of this worker's own)."""
    env = dict(os.environ)
    cache = os.environ.get("TRACERL_TEST_XLA_CACHE") or str(tmp_path_factory.mktemp("xla_cache"))
    env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO), JAX_COMPILATION_CACHE_DIR=cache,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    env.pop("XLA_FLAGS", None)   # one CPU device per process
    # Compiling dominates these tiny runs; fewer XLA passes cut it by about a third (as in test_notebook).
    # Every run of a comparison (resume, processes) compiles alike, so exact comparisons still hold.
    env["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"
    return env


def command(workdir, *args, config="configs/tracerl.py"):
    return [sys.executable, str(SCRIPT), f"--config={REPO / config}", f"--config.workdir={workdir}", *TINY, *args]


def run_example(env, workdir, *args, config="configs/tracerl.py", expect_rc=0):
    proc = subprocess.run(command(workdir, *args, config=config), env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == expect_rc, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def read_metrics(workdir):
    with open(Path(workdir) / "metrics.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def checkpoint_steps(workdir):
    d = Path(workdir) / "checkpoints"
    # A step directory is complete once Orbax has renamed it from its temporary name.
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def restore_item(workdir, step, item):
    """A checkpointed pytree (e.g. the policy ``TrainState``) as a dict of arrays."""
    import orbax.checkpoint as ocp

    return ocp.StandardCheckpointer().restore(Path(workdir) / "checkpoints" / str(step) / item)["item"]


def assert_trees_equal(a, b):
    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (path, x), (_, y) in zip(la, lb):
        assert np.array_equal(np.asarray(x), np.asarray(y)), jax.tree_util.keystr(path)


def wait_for(cond, proc, timeout=300.0):
    """Polls ``cond()`` while ``proc`` runs; fails if it ends first (nothing was interrupted)."""
    t0 = time.monotonic()
    while not cond():
        assert proc.poll() is None, "the run ended before it could be interrupted:\n" + proc.stdout.read()[-3000:]
        assert time.monotonic() - t0 < timeout, "timed out waiting for the run"
        time.sleep(0.02)


# ---------------------------------------------------------------------------
# Smoke runs of the four recipes
# ---------------------------------------------------------------------------


def check_outputs(workdir, steps, proc, *, value=False):
    workdir = Path(workdir)
    records = read_metrics(workdir)
    assert [r["step"] for r in records] == list(range(steps + 1))
    assert "eval/accuracy" in records[0] and "eval/accuracy" in records[-1]
    for r in records[1:]:
        assert 0.0 <= r["reward"] <= 1.0 and r["rows"] > 0
        assert np.isfinite(r["policy/loss"]) and r["policy/skipped"] == 0.0
        if value:
            assert np.isfinite(r["value/loss"])
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    assert (workdir / "curves.png").stat().st_size > 0
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["steps"] == steps and not summary["preempted"]
    assert summary["initial_accuracy"] == records[0]["eval/accuracy"]
    assert summary["final_accuracy"] == records[-1]["eval/accuracy"]
    assert "held-out accuracy before RL:" in proc.stdout
    assert f"held-out accuracy before: {summary['initial_accuracy']:.3f} after: " \
           f"{summary['final_accuracy']:.3f}" in proc.stdout
    assert checkpoint_steps(workdir)[-1] == steps


def test_default_recipe_smoke(run_env, tmp_path):
    # The task verifier itself (a random model scores 0, so keep every group
    # to still run the update path).
    proc = run_example(run_env, tmp_path, "--config.rl.total_steps=2", "--config.rollout.group_filter=none")
    check_outputs(tmp_path, 2, proc)
    # The finished run exported its policy; the run and each checkpoint step load as a policy.
    sys.path.insert(0, str(REPO / "examples"))
    import evaluate

    final = restore_item(tmp_path, 2, "policy")["params"]
    for spec, source in ((tmp_path, "run"), (tmp_path / "checkpoints" / "2", "run"), (tmp_path / "export", "export")):
        policy = evaluate.load_checkpoint(str(spec))
        assert policy.source == source and policy.config.family == "sdar"
        assert len(jax.tree.leaves(policy.params)) == len(jax.tree.leaves(final))
        for a, b in zip(jax.tree.leaves(policy.params), jax.tree.leaves(final)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("config,value", [("configs/tracerl_value.py", True), ("configs/random_masking.py", False),
                                          ("configs/coupled.py", False)])
def test_variant_recipe_smoke(run_env, tmp_path, config, value):
    proc = run_example(run_env, tmp_path, "--config.rl.total_steps=2", REWARD, config=config)
    check_outputs(tmp_path, 2, proc, value=value)
    assert int(restore_item(tmp_path, 2, "policy")["step"]) >= 2   # applied updates
    assert (tmp_path / "export" / "model_config.json").is_file()
    if value:
        assert int(restore_item(tmp_path, 2, "value")["step"]) >= 2
        assert json.loads((tmp_path / "export_value" / "model_config.json").read_text())["value_model"]


def test_rl_schedule_is_clocked_by_the_rl_step(run_env, tmp_path):
    # Updates per RL step vary with filtering, so rl.total_steps is the cosine's horizon and every update
    # of RL step k runs at the rate of k (warm-up included).
    from tracerl_jax.train.optimizer import OptimizerConfig, learning_rate

    run_example(run_env, tmp_path, "--config.rl.total_steps=4", "--config.rl.schedule=cosine", "--config.rl.warmup=1",
                "--config.rl.min_lr_scale=0.5", "--config.rl.learning_rate=1e-4", "--config.eval.every=4",
                "--config.rl.batch_rows=2", "--config.rollout.group_filter=none", REWARD)
    want = OptimizerConfig(learning_rate=1e-4, schedule="cosine", warmup=1, min_lr_scale=0.5, total_updates=4)
    records = read_metrics(tmp_path)[1:]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(r["updates"] >= 2 for r in records)   # several updates per step share the step's rate
    np.testing.assert_allclose([r["policy/lr"] for r in records], [learning_rate(want, k) for k in range(4)],
                               rtol=1e-6)
    assert records[0]["policy/lr"] == pytest.approx(5e-5, rel=1e-6)   # warm-up: lr / 2 at step 0


# ---------------------------------------------------------------------------
# Resume: killed or preempted runs continue bit-exactly
# ---------------------------------------------------------------------------

STEPS = 5
RESUME_ARGS = (f"--config.rl.total_steps={STEPS}", "--config.checkpoint.keep=10", "--config.eval.every=2",
               "--config.value.enabled=True", REWARD)


@pytest.fixture(scope="module")
def uninterrupted(run_env, tmp_path_factory):
    """Workdir of a run of ``STEPS`` steps that nobody interrupted (once per session, see helpers/once.py)."""
    return run_once(tmp_path_factory, "rl_example_uninterrupted",
                    lambda workdir: run_example(run_env, workdir, *RESUME_ARGS, "--config.checkpoint.every=1"))


def assert_same_run(workdir, reference):
    for item in ("policy", "value", "rng"):
        assert_trees_equal(restore_item(workdir, STEPS, item), restore_item(reference, STEPS, item))
    last, ref_last = read_metrics(workdir)[-1], read_metrics(reference)[-1]
    assert last["step"] == ref_last["step"] == STEPS
    for k, v in ref_last.items():
        if not (k.startswith("time") or k.endswith("_per_s")):  # wall-clock timings and rates differ
            assert last[k] == v, k
    # The updates really moved the model (else equality would prove nothing).
    first = restore_item(reference, 1, "policy")
    assert not all(np.array_equal(np.asarray(a), np.asarray(b))
                   for a, b in zip(jax.tree.leaves(first["params"]), jax.tree.leaves(
                       restore_item(reference, STEPS, "policy")["params"])))


def test_resume_after_sigkill_is_bit_exact(run_env, tmp_path, uninterrupted):
    args = (*RESUME_ARGS, "--config.checkpoint.every=1")
    proc = subprocess.Popen(command(tmp_path, *args), env=run_env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: 2 in checkpoint_steps(tmp_path), proc)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        proc.kill()
        proc.stdout.close()
    assert max(checkpoint_steps(tmp_path)) < STEPS and not (tmp_path / "summary.json").exists()
    proc = run_example(run_env, tmp_path, *args)
    assert "resumed at RL step" in proc.stdout
    assert_same_run(tmp_path, uninterrupted)


def test_sigterm_checkpoints_the_current_step_and_resumes_bit_exact(run_env, tmp_path, uninterrupted):
    args = (*RESUME_ARGS, "--config.checkpoint.every=100")
    proc = subprocess.Popen(command(tmp_path, *args), env=run_env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        # checkpoint.every=100: a checkpoint before the end can only be the SIGTERM one.
        wait_for(lambda: (tmp_path / "metrics.jsonl").exists() and any(
            r["step"] >= 1 for r in read_metrics(tmp_path)), proc)
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=120)[0]
    finally:
        proc.kill()
    assert proc.returncode == 143, out[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["preempted"] and 1 <= summary["steps"] < STEPS
    assert checkpoint_steps(tmp_path) == [summary["steps"]]
    assert f"SIGTERM: checkpointed RL step {summary['steps']}" in out
    run_example(run_env, tmp_path, *args)
    assert_same_run(tmp_path, uninterrupted)


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------


def test_bad_config_is_a_clear_value_error():
    from configs import tracerl as recipe
    from tracerl_jax.rl import config as setup
    from tracerl_jax.rl import distributed, specs

    def cfg(**changes):
        c = recipe.get_config()
        for path, v in changes.items():
            section, field = path.split("__")
            c[section][field] = v
        return c

    setup.check_config(cfg(), process_count=2, device_count=2)
    with pytest.raises(ValueError, match=r"rollout.num_prompts=15 must be divisible by the number of processes"):
        setup.check_config(cfg(rollout__num_prompts=15), process_count=2)
    with pytest.raises(ValueError, match=r"micro-batch of .* = 32 rows must be divisible by the mesh's data x fsdp"):
        setup.check_config(cfg(), device_count=3)
    with pytest.raises(ValueError, match="rl.batch_rows=64 must be divisible by rl.grad_accum=3"):
        setup.check_config(cfg(rl__grad_accum=3))
    with pytest.raises(ValueError, match="rollout.k must be an int >= 1"):
        setup.check_config(cfg(rollout__k=0))
    with pytest.raises(ValueError, match="rl.method must be one of"):
        setup.check_config(cfg(rl__method="grpo"))
    with pytest.raises(ValueError, match=r"rl.warmup must be an int >= 0"):
        setup.check_config(cfg(rl__warmup=-1))
    with pytest.raises(ValueError, match=r"rl.warmup is not defined for rl.schedule='cosine_per_rl_step'"):
        setup.check_config(cfg(rl__warmup=2, rl__schedule="cosine_per_rl_step"))
    with pytest.raises(ValueError, match=r"rl.min_lr_scale must be in \[0, 1\]"):
        setup.check_config(cfg(rl__min_lr_scale=1.5))
    with pytest.raises(ValueError, match="multiples of rollout.block_size"):
        setup.check_config(cfg(rollout__gen_length=30))
    with pytest.raises(ValueError, match="value model supports rl.method='TraceRL' only"):
        setup.check_config(cfg(rl__method="coupled", value__enabled=True))
    with pytest.raises(ValueError, match=r"rollout.rows_per_device must be an int >= 1 or None"):
        setup.check_config(cfg(rollout__rows_per_device=0))
    # 16 x 8 = 128 responses: calls of 3 x 2 devices do not divide them, calls of 8 x 2 do
    with pytest.raises(ValueError, match=r"rollout.rows_per_device=3: each process's 128 responses .* 6 rows"):
        setup.check_config(cfg(rollout__rows_per_device=3), device_count=2)
    setup.check_config(cfg(rollout__rows_per_device=8), device_count=2)
    with pytest.raises(ValueError, match="needs all of coordinator_address, num_processes and process_id"):
        distributed.init_distributed("localhost:1234", None, 0)
    with pytest.raises(ValueError, match=r"process_id must be in \[0, num_processes=2\)"):
        distributed.init_distributed("localhost:1234", 2, 2)
    with pytest.raises(ValueError, match="coordinator_address must be 'host:port'"):
        distributed.init_distributed("localhost", 2, 0)
    with pytest.raises(ValueError, match="reward must be 'package.module:function'"):
        specs.load_scorer("digit_reward")
    with pytest.raises(ValueError, match="cannot load reward"):
        specs.load_scorer("tests.test_rl_example:no_such_reward")
    assert specs.load_scorer("tests.test_rl_example:digit_reward") is digit_reward


@pytest.mark.parametrize("recipe_name,family,per_device,accum", [
    ("trado_4b", "sdar", 32, 32), ("trado_4b_value", "sdar", 32, 32), ("trado_8b", "sdar", 32, 32),
    ("llada_8b", "llada", 256, 128), ("dream_7b", "dream", 256, 128)])
@pytest.mark.parametrize("devices", [1, 8, 16, 64])
def test_accelerator_recipes_split_over_any_device_count(recipe_name, family, per_device, accum, devices):
    # The reference states its update per GPU (batch_size_lm 1 x GA 32); a fixed global
    # batch_rows would leave 1-row micro-batches that cannot split over 8 devices.
    import importlib

    from tracerl_jax.rl import config as setup

    c = importlib.import_module(f"configs.{recipe_name}").get_config()
    setup.resolve_batch_rows(c, devices)
    assert c.rl.batch_rows == per_device * devices and c.rl.grad_accum == accum
    setup.check_config(c, family=family, device_count=devices, process_count=1)


def test_batch_rows_per_device_is_checked():
    from configs import tracerl as recipe
    from tracerl_jax.rl import config as setup

    c = recipe.get_config()
    setup.resolve_batch_rows(c, 4)
    assert c.rl.batch_rows == 64  # unset: the global batch_rows stays
    c.rl.batch_rows_per_device = 0
    with pytest.raises(ValueError, match="rl.batch_rows_per_device must be an int >= 1"):
        setup.resolve_batch_rows(c, 4)
