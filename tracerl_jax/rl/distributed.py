"""Processes and devices of an RL run: ``jax.distributed``, preemption, and the global/local views.

Every process runs the same program on one mesh over all devices. Host-side
work (prompts, decoding, rewards) is per process, on that process's share of
the prompts; device arrays are *global* (``jax.Array`` spanning every
process). :func:`to_global` turns each process's rows into one global array
sharded over the mesh's batch axes, :func:`local_rows` takes a process's
rows back out, and :func:`global_sampler` wraps a sampler so that a process
calls it with its own prompts while the compiled program runs once over all
devices on the (FSDP/TP-sharded) parameters.
"""

from __future__ import annotations

import signal
from typing import Callable, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from tracerl_jax.sampling.block_sampler import Rollout
from tracerl_jax.train.sharding import BATCH_AXES

# Exit status of a run stopped by SIGTERM after its checkpoint was written:
# 128 + SIGTERM, what a shell reports for a process the signal killed, so a
# scheduler treats the run as interrupted (to be restarted), not finished.
EXIT_PREEMPTED = 128 + signal.SIGTERM


def init_distributed(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
                     process_id: Optional[int] = None, auto: bool = False) -> None:
    """Starts ``jax.distributed`` for a multi-process run (or does nothing).

    * All three arguments given: an explicit job, e.g. two processes on one
      machine with ``coordinator_address="localhost:12355"``.
    * None given and ``auto``: ``jax.distributed.initialize()`` detects the
      cluster (TPU pod slices, SLURM, Open MPI).
    * None given, not ``auto``: a single process; nothing to do.

    On CPU the cross-process collectives use Gloo (TCP).

    Raises:
      ValueError: only some of the three given, ``num_processes < 1``,
        ``process_id`` outside ``[0, num_processes)``, or an address that is
        not ``host:port``.
    """
    given = [v is not None for v in (coordinator_address, num_processes, process_id)]
    if not any(given):
        if auto:
            jax.distributed.initialize()
        return
    if not all(given):
        raise ValueError("a multi-process run needs all of coordinator_address, num_processes and process_id "
                         f"(got {coordinator_address!r}, {num_processes!r}, {process_id!r}); on a TPU pod "
                         "slice or SLURM pass none of them and --distributed to auto-detect")
    host, _, port = str(coordinator_address).rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"coordinator_address must be 'host:port', got {coordinator_address!r}")
    if int(num_processes) < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    if not 0 <= int(process_id) < int(num_processes):
        raise ValueError(f"process_id must be in [0, num_processes={num_processes}), got {process_id}")
    # Gloo is this jax version's default for CPU collectives; set it so another version cannot change it.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=int(num_processes),
                               process_id=int(process_id))


class StopRequest:
    """SIGTERM -> finish the current RL step, checkpoint it, exit with :data:`EXIT_PREEMPTED`.

    The handler only sets a flag; the loop asks :meth:`requested` after each
    step. In a multi-process run the processes agree (any process signalled
    -> all stop at the same step), because the checkpoint is a collective
    save. Use as a context manager; the previous handler is put back on exit.
    (Orbax's ``reached_preemption`` needs JAX's preemption service, which
    only runs under ``jax.distributed``; this flag works in one process too.)
    """

    def __init__(self):
        self._flag = False
        self._previous = None

    def _on_signal(self, signum, frame):
        del signum, frame
        self._flag = True

    def __enter__(self) -> "StopRequest":
        self._previous = signal.signal(signal.SIGTERM, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGTERM, self._previous)

    def requested(self) -> bool:
        return bool(allgather(np.asarray([self._flag], np.int32)).any())


# ---------------------------------------------------------------------------
# Global and local views
# ---------------------------------------------------------------------------


def rows_sharding(mesh: Mesh) -> NamedSharding:
    """Rows (the leading axis) split over the mesh's batch axes, everything else replicated."""
    return NamedSharding(mesh, P(BATCH_AXES))


def to_global(tree, sharding):
    """Each process's rows -> global ``jax.Array``\\ s (concatenated in process order).

    Args:
      tree: host arrays; on each process its own rows (the leading axis).
      sharding: a sharding (one, or a matching pytree) of the global arrays;
        with :func:`rows_sharding` each process's devices hold its own rows.
    """
    if isinstance(sharding, jax.sharding.Sharding):
        sharding = jax.tree.map(lambda _: sharding, tree)
    return jax.tree.map(lambda x, s: jax.make_array_from_process_local_data(s, np.asarray(x)), tree, sharding)


def to_global_replicated(tree, mesh: Mesh):
    """Host arrays identical on every process -> replicated global arrays on ``mesh``."""
    rep = NamedSharding(mesh, P())
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(rep, np.asarray(x), np.shape(x)), tree)


def local_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of a global array sharded (or replicated) along its leading axis, as NumPy."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return np.asarray(x)
    pieces = {}
    for s in x.addressable_shards:
        start = (s.index[0].start or 0) if s.index else 0
        pieces.setdefault(start, s.data)
    return np.concatenate([np.asarray(pieces[k]) for k in sorted(pieces)])


def to_host(tree):
    """Global arrays -> full NumPy arrays on every process (an all-gather; for small arrays only)."""
    def leaf(x):
        if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
            return np.asarray(x)
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(leaf, tree)


def allgather(x: np.ndarray) -> np.ndarray:
    """``[P, ...]``: a small host array from every process (``x[None]`` with one process)."""
    x = np.asarray(x)
    if jax.process_count() == 1:
        return x[None]
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x))


def global_sampler(sample_fn: Callable, mesh: Mesh) -> Callable:
    """A sampler every process calls with its own prompts; one compiled program over all devices.

    The prompts and keys of all processes become one global batch sharded
    over the mesh's batch axes, the sampler runs on the parameters as they
    are sharded (FSDP/TP), and each process gets back the :class:`Rollout`
    of its own rows as NumPy arrays. Every process must call it at the same
    time with the same number of rows, divisible by its devices on the
    batch axes. With one device this is ``sample_fn`` on host arrays.

    Args:
      sample_fn: from ``make_block_sampler`` / ``make_full_sampler``.
      mesh: the run's mesh.
    """
    rows = rows_sharding(mesh)

    def fn(params, prompts, prompt_valid, rng=None, row_keys=None) -> Rollout:
        B = np.shape(prompts)[0]
        if row_keys is None:
            row_keys = jax.random.split(rng if rng is not None else jax.random.key(0), B)
        impl = jax.random.key_impl(row_keys)
        data = np.asarray(jax.random.key_data(row_keys))
        g_prompts, g_valid, g_keys = to_global((np.asarray(prompts, np.int32), np.asarray(prompt_valid, bool), data),
                                               rows)
        with jax.set_mesh(mesh):   # the model's activation constraints see the mesh axes
            out = sample_fn(params, g_prompts, g_valid, row_keys=jax.random.wrap_key_data(g_keys, impl=impl))
        return Rollout(*(local_rows(jax.device_put(x, rows)) for x in out))

    return fn


def chunked_sampler(sample_fn: Callable, rows_per_call: Optional[int]) -> Callable:
    """Samples a batch in calls of ``rows_per_call`` rows each and concatenates the rollouts.

    The sampler's memory grows with its rows (the KV cache is ``[B, L, ...]``
    per layer), so a step's ``P x k`` responses may not fit one call on an
    accelerator. Each response has its own key (``row_keys``), so a response
    does not depend on the chunk it is sampled in: chunked and one-call
    rollouts are equal. Every call has the same shape (one compile).

    Args:
      sample_fn: ``(params, prompts [B, L0], prompt_valid [B, L0], *, rng=None,
        row_keys=None) -> Rollout`` with host (NumPy) outputs, e.g. from
        :func:`global_sampler`.
      rows_per_call: rows per call (this process's rows; with
        :func:`global_sampler` each call is split over the process's devices);
        ``None`` samples the whole batch in one call.

    Returns:
      A sampler with the same signature; ``B`` must be a multiple of
      ``rows_per_call``.
    """
    if rows_per_call is None:
        return sample_fn
    if not isinstance(rows_per_call, int) or isinstance(rows_per_call, bool) or rows_per_call < 1:
        raise ValueError(f"rows_per_call must be an int >= 1 or None, got {rows_per_call!r}")

    def fn(params, prompts, prompt_valid, rng=None, row_keys=None) -> Rollout:
        B = np.shape(prompts)[0]
        if B <= rows_per_call:
            return sample_fn(params, prompts, prompt_valid, rng=rng, row_keys=row_keys)
        if B % rows_per_call:
            raise ValueError(f"a rollout of {B} rows does not split into calls of {rows_per_call} rows")
        if row_keys is None:   # the keys one call would have drawn, so chunking does not change the sample
            row_keys = jax.random.split(rng if rng is not None else jax.random.key(0), B)
        parts = [sample_fn(params, prompts[i:i + rows_per_call], prompt_valid[i:i + rows_per_call],
                           row_keys=row_keys[i:i + rows_per_call]) for i in range(0, B, rows_per_call)]
        return Rollout(*(np.concatenate([np.asarray(x) for x in xs]) for xs in zip(*parts)))

    return fn
