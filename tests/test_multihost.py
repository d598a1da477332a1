"""examples/tracerl.py as two processes (jax.distributed, Gloo on CPU) equals one process.

The same global batch (4 prompts x 2 responses) is trained for 2 RL steps by

* one process with one CPU device (the reference),
* two processes with one CPU device each (each rolls out 2 prompts; the
  rollouts and updates run on a data-parallel mesh over both processes' devices),
* two processes with two CPU devices each, mesh ``(data 1, fsdp 2, tensor 2)``:
  parameters, optimizer states and rollouts FSDP- and tensor-sharded across
  the processes,
* one process with two CPU devices.

What must match, and why:

* Sampled tokens, and so rewards, lengths, kept groups and row counts, are
  equal exactly: every response samples with a key derived from its global
  prompt index, and a row's sample never depends on the other rows.
* Losses, gradient norms and parameters agree to float rounding only. With
  two devices each runs the forward/backward pass on half of every
  micro-batch and an all-reduce sums the gradients, so sums are taken in
  another order (and XLA's CPU matmuls block differently for another batch
  size): ~1e-7 relative per operation. Loss-like metrics are means of O(1)
  terms that largely cancel, so their rounding error is absolute
  (``atol=1e-6``), not relative to their small value.
* Parameters: Adam divides each coordinate's step by that coordinate's RMS
  gradient, so a coordinate whose gradient is itself at rounding level gets a
  step of rounding-dependent size (up to the learning rate). A handful of
  such coordinates (3 of 84k in the runs we looked at, off by <= 6e-7 with
  lr 2e-5) differ by more than rounding; everything else agrees to
  ``rtol=1e-5, atol=1e-8`` (1-2 ulp). The test asks exactly that: at most
  0.1% of the coordinates of a tensor outside ``rtol=1e-5, atol=1e-8``, none
  off by more than Adam's step bound (lr per update), and each tensor's
  total update equal to 1e-3 in norm.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import jax
import numpy as np
import pytest

from tests.helpers.once import run_once
from tests.test_rl_example import REPO, REWARD, command, read_metrics, run_env  # noqa: F401  (fixture)

STEPS = 2
LR = 2e-5
ARGS = (f"--config.rl.total_steps={STEPS}", f"--config.rl.learning_rate={LR}", REWARD)
EXACT = ("reward", "kept_groups", "response_length", "tokens_per_forward", "rows", "policy/num_tokens",
         "eval/accuracy")
CLOSE = ("policy/loss", "policy/pg_loss", "policy/grad_norm", "policy/ratio_mean", "policy/kl", "policy/lr")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def run_processes(env, workdir, num_processes: int, *, local_devices: int = 1, extra=()):
    """Runs the example as ``num_processes`` processes sharing ``workdir``; returns their outputs."""
    env = dict(env)
    env.pop("XLA_FLAGS", None)
    if local_devices > 1:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={local_devices}"
    dist = []
    if num_processes > 1:
        port = free_port()
        dist = [f"--coordinator_address=localhost:{port}", f"--num_processes={num_processes}"]
    procs = [subprocess.Popen(command(workdir, *ARGS, *extra, *dist, *([f"--process_id={i}"] if dist else [])),
                              env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(num_processes)]
    try:
        outs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    return outs


@pytest.fixture(scope="module")
def one_process(run_env, tmp_path_factory):
    # Once per session, whichever xdist worker asks first (see helpers/once.py).
    return run_once(tmp_path_factory, "multihost_one_process", lambda workdir: run_processes(run_env, workdir, 1))


def policy_params(workdir, step):
    """Policy parameters at ``step``, restored onto this process's one device.

    A two-process run saved them from a mesh over two devices; an explicit
    one-device target reads them whatever mesh wrote them.
    """
    import orbax.checkpoint as ocp

    path = Path(workdir) / "checkpoints" / str(step) / "policy"
    with ocp.StandardCheckpointer() as ckptr:
        saved = ckptr.metadata(path).item_metadata.tree   # shapes and dtypes
        dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=dev), saved)
        item = ckptr.restore(path, target)["item"]
    return jax.tree.map(np.asarray, item["params"]), int(item["step"])


def initial_params():
    """The random:tiny initialisation both runs start from."""
    from configs import tracerl as recipe
    from tracerl_jax.models import split_model
    from tracerl_jax.rl import config, specs
    from tracerl_jax.tokenizers import load_tokenizer

    cfg = recipe.get_config()
    _, model = specs.load_policy("random:tiny", load_tokenizer(cfg.tokenizer), seed=cfg.seed,
                                 **config.model_settings(cfg))
    return jax.tree.map(np.asarray, split_model(model)[1])


def assert_same_training(workdir, reference):
    got, want = read_metrics(workdir), read_metrics(reference)
    assert [r["step"] for r in got] == [r["step"] for r in want] == list(range(STEPS + 1))
    for g, w in zip(got, want):
        for k in EXACT:
            assert g.get(k) == w.get(k), (g["step"], k)
        for k in CLOSE:
            if k in w:
                np.testing.assert_allclose(g[k], w[k], rtol=1e-5, atol=1e-6, err_msg=f"step {g['step']} {k}")
    assert any(r["reward"] > 0 for r in want[1:])   # there was something to learn from

    (ref, updates), (params, updates_got) = policy_params(reference, STEPS), policy_params(workdir, STEPS)
    assert updates_got == updates >= STEPS   # the same number of optimizer updates, at least one per step
    start = initial_params()
    assert jax.tree.structure(params) == jax.tree.structure(ref)
    # The NNX state flattens in the same (sorted path) order as the checkpoint's dict.
    assert [np.shape(x) for x in jax.tree.leaves(start)] == [np.shape(x) for x in jax.tree.leaves(ref)]
    for (path, a), b, a0 in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(ref),
                                jax.tree.leaves(start)):
        name = jax.tree_util.keystr(path)
        off = ~np.isclose(a, b, rtol=1e-5, atol=1e-8)
        assert off.mean() <= 1e-3, (name, int(off.sum()), a.size)
        assert np.abs(a - b).max() <= LR * updates, name
        d_ref, d_got = b - a0, a - a0
        assert np.linalg.norm(d_got - d_ref) <= 1e-3 * np.linalg.norm(d_ref) + 1e-12, name


def test_two_processes_match_one_process(run_env, tmp_path, one_process):
    outs = run_processes(run_env, tmp_path, 2)
    assert "processes=2 devices=2" in outs[0]
    assert "held-out accuracy before:" in outs[0] and "held-out accuracy" not in outs[1]   # process 0 reports
    assert_same_training(tmp_path, one_process)


def test_fsdp_and_tensor_parallel_over_two_processes_match_one_process(run_env, tmp_path, one_process):
    # mesh (data 1, fsdp 2, tensor 2) over 2 processes x 2 devices: parameters, optimizer state and rollouts
    # are sharded across the processes (no process holds a full replica).
    outs = run_processes(run_env, tmp_path, 2, local_devices=2, extra=("--config.mesh=(1,2,2)",))
    assert "processes=2 devices=4 mesh={'data': 1, 'fsdp': 2, 'tensor': 2}" in outs[0]
    assert_same_training(tmp_path, one_process)


def test_two_local_devices_match_one_device(run_env, tmp_path, one_process):
    outs = run_processes(run_env, tmp_path, 1, local_devices=2)
    assert "processes=1 devices=2" in outs[0]
    assert_same_training(tmp_path, one_process)


def test_response_keys_of_a_share_are_a_slice_of_the_global_keys():
    from tracerl_jax import rl

    key = jax.random.key(3)
    full = jax.random.key_data(rl.response_keys(key, num_prompts=4, k=2))
    second_half = jax.random.key_data(rl.response_keys(key, num_prompts=2, k=2, first_prompt=2))
    assert full.shape[0] == 8 and len({tuple(r) for r in np.asarray(full)}) == 8   # all distinct
    np.testing.assert_array_equal(full[4:], second_half)
    with pytest.raises(ValueError, match="first_prompt >= 0"):
        rl.response_keys(key, num_prompts=2, k=2, first_prompt=-1)


def test_rollout_and_reward_takes_one_kind_of_key():
    from tracerl_jax import rl

    with pytest.raises(ValueError, match="exactly one of rng"):
        rl.rollout_and_reward(None, None, None, [object()], k=2, prompt_len=8, score_fn=None)
    with pytest.raises(ValueError, match=r"row_keys must have shape \[P\*k\] = \[2\]"):
        rl.rollout_and_reward(None, None, None, [object()], k=2, prompt_len=8, score_fn=None,
                              row_keys=jax.random.split(jax.random.key(0), 3))
