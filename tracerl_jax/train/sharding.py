"""Device mesh and parameter sharding rules -- the one place PartitionSpecs live.

Mesh axes: ``data`` (pure data parallel), ``fsdp`` (data parallel with
parameters and optimizer state sharded), ``tensor`` (Megatron-style tensor
parallel). Batches shard their leading (row) axis over ``("data", "fsdp")``.

Parameter rules map a regex on the parameter path (``"layers/0/attn/q_proj/kernel"``)
to a spec for the *trailing* dimensions; extra leading dims (stacked layers)
are replicated. A mesh axis that does not divide its dimension is dropped for
that parameter, so tiny test models shard wherever they can and replicate
elsewhere instead of failing.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# (regex on the parameter path, spec of the trailing dims). First match wins.
# Column-parallel kernels [in, out] split `out` over tensor; row-parallel
# kernels split `in`; fsdp takes the other dim.
DEFAULT_RULES: tuple[tuple[str, tuple], ...] = (
    (r"(q_proj|k_proj|v_proj|gate_proj|up_proj)/kernel", ("fsdp", "tensor")),
    (r"(q_proj|k_proj|v_proj)/bias", ("tensor",)),
    (r"(o_proj|down_proj)/kernel", ("tensor", "fsdp")),
    (r"embed\w*/embedding", ("tensor", "fsdp")),
    (r"lm_head/kernel", ("fsdp", "tensor")),
    (r"value_head/kernel", ("fsdp", None)),
)


def make_mesh(data: int = 1, fsdp: int = 1, tensor: int = 1, devices: Sequence[Any] | None = None) -> Mesh:
    """A ``(data, fsdp, tensor)`` mesh over ``devices`` (default: all), by ``jax.make_mesh``.

    ``jax.make_mesh`` orders the devices by the physical topology (TPU rings,
    GPU ids). The axes are ``Auto``: shardings come from the ``NamedSharding``
    annotations and XLA's propagation, not from explicit-sharding types.

    Raises:
      ValueError: if the product does not equal the number of devices.
    """
    devices = list(jax.devices() if devices is None else devices)
    n = data * fsdp * tensor
    # jax.make_mesh silently uses the first n of too many devices; a mesh that leaves
    # devices idle is a configuration error here.
    if n != len(devices):
        raise ValueError(f"mesh {data}x{fsdp}x{tensor}={n} does not match {len(devices)} devices")
    return jax.make_mesh((data, fsdp, tensor), AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devices)


def _path_str(path) -> str:
    parts = []
    for k in path:
        parts.append(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))))
    return "/".join(parts)


def _fit(spec: tuple, shape: tuple, mesh: Mesh) -> P:
    spec = (None,) * (len(shape) - len(spec)) + tuple(spec[-len(shape):] if shape else ())
    out = []
    for dim, ax in zip(shape, spec):
        if ax is not None and dim % mesh.shape[ax] != 0:
            ax = None
        out.append(ax)
    return P(*out)


def param_specs(params, mesh: Mesh, rules=DEFAULT_RULES):
    """PartitionSpec for every leaf of ``params`` (same tree structure)."""
    compiled = [(re.compile(r), s) for r, s in rules]

    def spec(path, leaf):
        name = _path_str(path)
        for rx, s in compiled:
            if rx.search(name):
                return _fit(s, np.shape(leaf), mesh)
        return P()

    return jax.tree_util.tree_map_with_path(spec, params)


def named(mesh: Mesh, specs):
    """Maps a tree of PartitionSpecs to NamedShardings."""
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh: Mesh, leading_none: int = 0) -> NamedSharding:
    """Sharding of a batch array whose row axis follows ``leading_none`` unsharded axes."""
    return NamedSharding(mesh, P(*([None] * leading_none), BATCH_AXES))


def check_mesh_shards(params, mesh: Mesh, rules=DEFAULT_RULES, field: str = "mesh") -> None:
    """Raises ``ValueError`` if a model-parallel axis of ``mesh`` (``fsdp``, ``tensor``; size > 1) shards
    no parameter of ``params``: every dimension it would split is indivisible by it, so the run would
    silently replicate what the mesh promises to shard.

    Args:
      params: the parameter pytree (arrays or ``ShapeDtypeStruct``).
      mesh: the mesh.
      rules: the rule table.
      field: the config field named in the message.
    """
    used = {ax for spec in jax.tree.leaves(param_specs(params, mesh, rules), is_leaf=lambda x: isinstance(x, P))
            for ax in spec if ax is not None}
    for axis in ("fsdp", "tensor"):
        if mesh.shape[axis] > 1 and axis not in used:
            raise ValueError(f"{field}: the {axis} axis ({mesh.shape[axis]} devices) divides no parameter "
                             f"dimension it would shard (the rules of tracerl_jax.train.sharding); choose a size "
                             f"that divides the model's widths (e.g. its KV heads x head_dim, hidden, vocab)")


def constrain_rows(x: jax.Array) -> jax.Array:
    """Pins an activation's rows (axis 0) to the mesh's batch axes, the other axes replicated.

    Applies only while tracing under a mesh (``jax.set_mesh``, as the train
    steps, scorers and :func:`tracerl_jax.rl.distributed.global_sampler` do)
    that has the batch axes; elsewhere it is the identity. XLA's propagation
    from FSDP-sharded weights otherwise tends to shard the hidden size of an
    embedding lookup instead of its rows, which all-gathers activations.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not set(BATCH_AXES) <= set(mesh.axis_names):
        return x
    return jax.lax.with_sharding_constraint(x, P(BATCH_AXES))
