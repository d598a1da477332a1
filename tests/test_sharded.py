"""FSDP/TP-sharded rollouts and value step equal the single-device ones, and a checkpoint saved on one
device in float32 restores sharded in bfloat16 (8 CPU devices, in a subprocess).

Tolerances: rollouts (temperature 1, the RL setting) sample the same tokens in
the same steps exactly on this case (a flip would need a uniform draw within
~1e-6 of a CDF boundary: logits agree to float rounding) and their log-probs
agree to 1e-5. The value
update's loss agrees to 1e-5 relative and every parameter tensor to 1e-5 in
norm (sums over sharded axes run in another order).
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
MESHES = ("1x4x2", "1x8x1")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("sharded") / "sharded.npz"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    subprocess.run([sys.executable, "-m", "tests.helpers.sharded_case", str(out)], cwd=ROOT, env=env, check=True,
                   timeout=600)
    return dict(np.load(out))


@pytest.mark.parametrize("mesh", MESHES + ("1x8x1-chunked",))
def test_sharded_rollout_equals_one_device(results, mesh):
    get = lambda tag, k: results[f"rollout/1.0/{tag}/{k}"]  # noqa: E731
    for k in ("tokens", "step_map", "lengths", "num_steps"):
        np.testing.assert_array_equal(get(mesh, k), get("one", k), err_msg=k)
    decoded = get("one", "step_map") > 0
    assert decoded.sum() > 100 and len(set(get("one", "lengths"))) > 1   # a real, ragged rollout
    np.testing.assert_allclose(get(mesh, "logprobs")[decoded], get("one", "logprobs")[decoded], atol=1e-5)


@pytest.mark.parametrize("mesh", MESHES)
def test_sharded_value_step_equals_one_device(results, mesh):
    np.testing.assert_allclose(results[f"value/{mesh}/loss"], results["value/one/loss"], rtol=1e-5)
    names = [k[len("value/one/param"):] for k in results if k.startswith("value/one/param")]
    assert len(names) > 10
    for name in names:
        a, b = results[f"value/{mesh}/param{name}"], results[f"value/one/param{name}"]
        assert np.linalg.norm(a - b) <= 1e-5 * np.linalg.norm(b), name
    np.testing.assert_allclose(results[f"value/{mesh}/values"], results["value/one/values"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mesh", MESHES)
def test_checkpoint_from_one_device_in_float32_restores_sharded_in_bfloat16(results, mesh):
    assert float(results[f"checkpoint/{mesh}/err"]) == 0.0   # exactly the cast values
    assert bool(results[f"checkpoint/{mesh}/placed"])        # with the target shardings, really sharded


def test_a_mesh_axis_that_shards_no_parameter_is_a_value_error(results):
    assert "the tensor axis (3 devices) divides no parameter" in str(results["bad_axis"])
