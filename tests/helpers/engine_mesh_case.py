"""The slot engine on one device and through ``global_sampler`` on 2-device meshes, in one process.

``python -m tests.helpers.engine_mesh_case OUT.npz`` (with
``XLA_FLAGS=--xla_force_host_platform_device_count=2``) saves the engine's
rollout of one queue on device 0 alone, on the ``(data, fsdp, tensor) =
(2, 1, 1)`` mesh and on ``(1, 2, 1)`` with the parameters sharded by the
library's rule table, for tests/test_engine.py to compare.
"""

import sys

import jax
import numpy as np

from tests.test_engine import CFG, engine_fn, queue, sampler_config
from tracerl_jax.models import init_model, split_model
from tracerl_jax.rl.distributed import global_sampler
from tracerl_jax.train import sharding as shd


def main(out):
    graphdef, params = split_model(init_model(CFG, seed=0))
    prompts, valid = queue()
    prompts, valid = prompts[:6], valid[:6]   # rows divisible by the devices
    keys = jax.random.split(jax.random.key(3), prompts.shape[0])
    eng = engine_fn(graphdef, sampler_config(), num_slots=2)
    saved = {f"one/{k}": np.asarray(v) for k, v in eng(params, prompts, valid, row_keys=keys)._asdict().items()}
    for data, fsdp in ((2, 1), (1, 2)):
        mesh = shd.make_mesh(data=data, fsdp=fsdp)
        placed = jax.device_put(params, shd.named(mesh, shd.param_specs(params, mesh)))
        ro = global_sampler(eng, mesh)(placed, prompts, valid, row_keys=keys)
        saved.update({f"{data}x{fsdp}/{k}": np.asarray(v) for k, v in ro._asdict().items()})
    np.savez(out, **saved)


if __name__ == "__main__":
    main(sys.argv[1])
