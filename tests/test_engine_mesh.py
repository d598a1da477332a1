"""The slot engine on 2 CPU devices (rl.distributed.global_sampler) equals it on one, in a subprocess."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.test_engine import FIELDS

ROOT = Path(__file__).resolve().parents[1]


def test_engine_under_a_mesh_equals_one_device(tmp_path):
    """Through rl.distributed.global_sampler on 2 CPU devices (a data mesh, and an FSDP mesh with sharded
    parameters), in a subprocess: the same trajectories as on one device (log-probs to float32 rounding:
    sharded sums run in another order)."""
    out = tmp_path / "engine_mesh.npz"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    subprocess.run([sys.executable, "-m", "tests.helpers.engine_mesh_case", str(out)], cwd=ROOT, env=env,
                   check=True, timeout=600)
    res = dict(np.load(out))
    assert len(set(res["one/lengths"])) > 1
    for mesh in ("2x1", "1x2"):
        for f in FIELDS:
            np.testing.assert_array_equal(res[f"{mesh}/{f}"], res[f"one/{f}"], err_msg=f"{mesh} {f}")
        np.testing.assert_allclose(res[f"{mesh}/logprobs"], res["one/logprobs"], atol=1e-5)
