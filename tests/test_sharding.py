"""Meshes of tracerl_jax.train.sharding (``jax.make_mesh`` with Auto axes).

The multi-device checks run this file as a script under 8 simulated CPU
devices (``python -m tests.test_sharding``): the device count is fixed when
JAX starts.
"""

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from tracerl_jax.train import sharding as shd

ROOT = Path(__file__).resolve().parents[1]


def test_default_mesh_over_all_devices():
    mesh = shd.make_mesh()
    assert mesh.axis_names == shd.AXES
    assert dict(mesh.shape) == {"data": jax.device_count(), "fsdp": 1, "tensor": 1}
    assert mesh.axis_types == (AxisType.Auto,) * 3


def test_count_mismatch_is_an_error():
    n = jax.device_count()
    with pytest.raises(ValueError, match=rf"mesh 2x1x{n}={2 * n} does not match {n} devices"):
        shd.make_mesh(2, 1, n)
    # more devices than the mesh uses: an error too (jax.make_mesh alone would drop the rest)
    with pytest.raises(ValueError, match=rf"mesh 1x1x1=1 does not match {2 * n} devices"):
        shd.make_mesh(1, 1, 1, devices=jax.devices() * 2)


def test_explicit_devices():
    device = jax.devices()[-1]
    mesh = shd.make_mesh(devices=[device])
    assert mesh.devices.shape == (1, 1, 1) and mesh.devices.flat[0] == device


def _eight_device_side() -> None:
    assert jax.device_count() == 8, jax.devices()
    devices = jax.devices()
    for shape in [(8, 1, 1), (2, 2, 2), (1, 4, 2)]:
        mesh = shd.make_mesh(*shape)
        assert mesh.devices.shape == shape and mesh.axis_types == (AxisType.Auto,) * 3
        # CPU devices keep their order (what the hand-built Mesh over a reshape gave).
        assert [d.id for d in mesh.devices.flat] == [d.id for d in devices]
        x = jax.device_put(jnp.arange(32.0).reshape(8, 4), NamedSharding(mesh, P(shd.BATCH_AXES, "tensor")))
        # Auto axes: a jitted function without annotations infers shardings (no explicit-typing errors).
        y = jax.jit(lambda a: (a @ a.T).sum(axis=1))(x)
        np.testing.assert_allclose(np.asarray(y), np.asarray(x) @ np.asarray(x).T @ np.ones(8), rtol=1e-6)
    sub = shd.make_mesh(2, 2, 1, devices=devices[4:])
    assert [d.id for d in sub.devices.flat] == [d.id for d in devices[4:]]
    with pytest.raises(ValueError, match="does not match 8 devices"):
        shd.make_mesh(2, 2, 1)


def test_meshes_on_8_devices():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "tests.test_sharding"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


if __name__ == "__main__":
    _eight_device_side()
