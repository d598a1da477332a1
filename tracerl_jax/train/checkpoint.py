"""Orbax checkpoints of training state, and exported models.

:class:`CheckpointManager` saves, at a step, a dict of named pytrees (train
states of the policy and value model, PRNG keys, ...) and a dict of named
JSON documents (data-iterator position, config). Orbax writes each step to a
temporary directory and renames it when complete, so a crash never leaves a
half-written step behind; ``max_to_keep`` prunes old steps; saving is
asynchronous by default (the arrays are copied, then written in the
background; :meth:`CheckpointManager.wait` / :meth:`close` block until done).
In a multi-host run every process calls ``save``/``restore`` with its
shards; Orbax coordinates the writes.

Restoring takes a *target*: a pytree of arrays or ``jax.ShapeDtypeStruct``
with the shardings the arrays should have now (:func:`abstract_like`). The
checkpoint may have been written under another mesh; Orbax reads whichever
slices each device needs. Typed PRNG keys, of any implementation and anywhere
in a pytree, are written by Orbax's array handler, which records the key
implementation and re-wraps them on restore (into the target's sharding).
Which items a step holds comes from Orbax's step metadata (the handler of
every item). :meth:`CheckpointManager.reached_preemption` tells a multi-host
run when to save before a preemption.

:func:`export_model` / :func:`load_model` write and read a standalone model
(parameters + ``model_config.json``) -- the hand-off from SFT to RL.

Example::

    ckpt = CheckpointManager(workdir / "checkpoints", max_to_keep=3)
    ckpt.save(step, {"policy": state, "rng": rng}, meta={"data": it.state, "config": cfg_dict})
    restored = ckpt.restore(target={"policy": abstract_like(state, shardings), "rng": rng})
    if restored is not None:
        state, rng = restored.state["policy"], restored.state["rng"]
        it.restore(restored.meta["data"])
    for step in ...:
        ...
        if ckpt.reached_preemption(step):
            ckpt.save(step, ..., force=True)
            ckpt.wait()
            break
"""

from __future__ import annotations

import dataclasses
import json as jsonlib
import os
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from tracerl_jax.models import ModelConfig, Transformer, ValueModel, split_model

# Every pytree item is stored under this key, so a bare array (a PRNG key, a
# step counter) is a valid Orbax "standard" item too.
_WRAP = "item"
# Steps written before the item kinds came from Orbax's step metadata also hold a
# JSON item of this name listing them; it stays reserved so those steps read alike.
_MANIFEST = "manifest"
# Orbax handler of an item (from the step metadata) -> the item's kind.
_KINDS = {ocp.StandardCheckpointHandler.typestr(): "state", ocp.JsonCheckpointHandler.typestr(): "meta"}


class Restored(NamedTuple):
    """What :meth:`CheckpointManager.restore` returns.

    Attributes:
      step: the restored step.
      state: name -> pytree, shaped and sharded like the target.
      meta: name -> JSON value, for every name asked for.
      skipped: ``(step, reason)`` of newer steps that did not restore and
        were passed over (``restore(fall_back=True)``).
    """

    step: int
    state: dict[str, Any]
    meta: dict[str, Any]
    skipped: tuple = ()


def _is_key(x) -> bool:
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key)


def abstract_like(tree, shardings=None):
    """``jax.ShapeDtypeStruct`` leaves describing ``tree`` (arrays or structs).

    Args:
      tree: a pytree of arrays / ``ShapeDtypeStruct``.
      shardings: optional pytree of ``jax.sharding.Sharding`` (same structure,
        e.g. :func:`tracerl_jax.train.step.state_shardings`) or one sharding
        for every leaf. Default: each leaf's current sharding, if any.

    Returns:
      A pytree of ``ShapeDtypeStruct`` usable as a restore target.
    """
    if shardings is None or isinstance(shardings, jax.sharding.Sharding):
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(
            np.shape(x), x.dtype, sharding=shardings if shardings is not None else getattr(x, "sharding", None)),
            tree)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), tree, shardings)


def _restore_target(tree):
    """A restore target for ``tree``: ``ShapeDtypeStruct`` leaves with their shardings."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=getattr(x, "sharding", None)),
                        tree)


def _rewrap_legacy_keys(restored, target):
    """Typed keys of steps written with key data and no recorded implementation.

    Those steps stored ``jax.random.key_data``; Orbax returns it as plain
    ``uint32``, so the key implementation comes from the target.
    """
    def leaf(r, t):
        if not _is_key(t) or _is_key(r):
            return r
        impl = jax.random.key_impl(t) if isinstance(t, jax.Array) else getattr(t.dtype, "_impl", None)
        return jax.random.wrap_key_data(r, impl=impl)

    return jax.tree.map(leaf, restored, target)


class CheckpointManager:
    """Orbax ``CheckpointManager`` over named pytrees and named JSON documents.

    Args:
      directory: where steps are written (``<directory>/<step>/...``).
      max_to_keep: keep the newest this many steps (None keeps all).
      save_interval_steps: ``save`` without ``force`` skips steps that are
        not a multiple of this (except the first save into an empty
        directory, which Orbax always writes).
      async_save: write in a background thread after copying the arrays.
      create: create ``directory`` if missing.
    """

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: Optional[int] = 3,
                 save_interval_steps: int = 1, async_save: bool = True, create: bool = True):
        self.directory = Path(directory).absolute()
        if not create and not self.directory.is_dir():
            raise ValueError(f"checkpoint directory {self.directory} does not exist")
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                               save_interval_steps=save_interval_steps, create=create,
                                               enable_async_checkpointing=async_save)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    # ------------------------------------------------------------- queries

    def latest_step(self) -> Optional[int]:
        """The newest complete step, or None when there is none."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """All complete steps, ascending."""
        return sorted(self._manager.all_steps())

    # ---------------------------------------------------------------- save

    def save(self, step: int, state: Mapping[str, Any], *, meta: Optional[Mapping[str, Any]] = None,
             force: bool = False) -> bool:
        """Saves ``state`` (pytrees) and ``meta`` (JSON values) as ``step``.

        Args:
          step: the step number (an int; existing steps are not overwritten).
          state: name -> pytree of arrays (``TrainState``, params, typed PRNG
            keys of any implementation, scalars).
          meta: name -> JSON-serialisable value (data-iterator state, config).
          force: save even if ``step`` is off the ``save_interval_steps`` grid.

        Returns:
          Whether a save was started.

        Raises:
          ValueError: a name used twice or reserved (``"manifest"``), or a
            value that is not JSON-serialisable.
        """
        meta = dict(meta or {})
        clash = (set(state) & set(meta)) | ({_MANIFEST} & (set(state) | set(meta)))
        if clash:
            raise ValueError(f"item names {sorted(clash)} are used twice or reserved")
        items = {name: ocp.args.StandardSave({_WRAP: tree}) for name, tree in state.items()}
        for name, value in meta.items():
            try:
                jsonlib.dumps(value)
            except (TypeError, ValueError) as e:
                raise ValueError(f"meta item {name!r} is not JSON-serialisable: {e}") from e
            items[name] = ocp.args.JsonSave(value)
        return bool(self._manager.save(int(step), args=ocp.args.Composite(**items), force=force))

    # ------------------------------------------------------------- restore

    def restore(self, step: Optional[int] = None, *, target: Optional[Mapping[str, Any]] = None,
                meta: Optional[tuple[str, ...] | list[str]] = None, fall_back: bool = False) -> Optional[Restored]:
        """Restores named pytrees (into ``target``'s shapes/shardings) and JSON items.

        Args:
          step: the step to restore; None = the latest.
          fall_back: with ``step`` None, a newest step that does not restore
            (an empty or incomplete directory, missing metadata, truncated
            tensor files, with or without a commit marker) is passed over for
            the newest one that does; :attr:`Restored.skipped` says which and
            why. If none restores, the newest step's error is raised.
          target: name -> pytree of arrays or ``ShapeDtypeStruct`` (see
            :func:`abstract_like`); only these names are read, each with the
            target's dtype and sharding (possibly another mesh than at save).
          meta: JSON item names to read; None = every JSON item of the step.

        Returns:
          :class:`Restored`, or None when ``step`` is None and the directory
          holds no checkpoint yet (a fresh run).

        Raises:
          FileNotFoundError: ``step`` was given but is not in the directory
            (the message lists the steps there).
          ValueError: a name not in the checkpoint, a shape or structure
            mismatch with ``target``, or a corrupt/incomplete step (the
            message names the step and directory).
        """
        self.wait()
        if step is None and fall_back:
            skipped, first_error = [], None
            for candidate in reversed(self.all_steps()):
                try:
                    restored = self.restore(candidate, target=target, meta=meta)
                    return restored._replace(skipped=tuple(skipped))
                except ValueError as e:
                    skipped.append((candidate, str(e)))
                    first_error = first_error or e
            if first_error is not None:
                raise first_error
            return None
        if step is None:
            step = self.latest_step()
            if step is None:
                return None
        step = self._check_step(step)
        saved = self.item_names(step)
        target = dict(target or {})
        names = list(meta) if meta is not None else [n for n, kind in saved.items() if kind == "meta"]
        wrong = [n for n in target if saved.get(n) != "state"] + [n for n in names if saved.get(n) != "meta"]
        if wrong:
            raise ValueError(f"checkpoint step {step} in {self.directory} has no such items {wrong}; "
                             f"it has {saved}")
        args = {n: ocp.args.StandardRestore({_WRAP: _restore_target(t)}) for n, t in target.items()}
        args.update({n: ocp.args.JsonRestore() for n in names})
        try:
            out = self._manager.restore(step, args=ocp.args.Composite(**args))
        except (ValueError, KeyError, OSError) as e:
            # Orbax/TensorStore report a damaged file or a mismatched target deep in a
            # zarr spec; say which checkpoint, step and items were being read.
            raise ValueError(f"cannot restore items {sorted(args)} of checkpoint step {step} in "
                             f"{self.directory} (corrupt files, or a target whose shapes/structure "
                             f"differ from the saved ones): {type(e).__name__}: {e}") from e
        state = {n: _rewrap_legacy_keys(out[n][_WRAP], target[n]) for n in target}
        return Restored(step, state, {n: out[n] for n in names})

    def set_aside(self, step: int) -> Path:
        """Moves a damaged step out of the way (``<directory>/corrupt-<step>``), so the step can be written again.

        Kept, not deleted: what was there may help find out what went wrong.
        Collective in a multi-process run (process 0 moves, everyone reloads).

        Returns:
          Where the step now lies.
        """
        self.wait()
        src, dst = self.directory / str(int(step)), self.directory / f"corrupt-{int(step)}"
        if jax.process_index() == 0 and src.exists():
            k = 1
            while dst.exists():
                dst, k = self.directory / f"corrupt-{int(step)}.{k}", k + 1
            src.rename(dst)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"set_aside_{int(step)}")
        self._manager.reload()
        return dst

    def item_names(self, step: int) -> dict[str, str]:
        """Item name -> ``"state"`` or ``"meta"`` of a saved step (from Orbax's step metadata).

        Raises:
          FileNotFoundError: no such step.
          ValueError: the step's metadata cannot be read or lists no items (an
            incomplete or corrupt step, e.g. a directory copied in by hand).
        """
        self.wait()
        step = self._check_step(step)
        try:
            handlers = self._manager.metadata(step).item_handlers or {}
        except (ValueError, KeyError, OSError) as e:
            handlers, error = {}, f" ({type(e).__name__}: {e})"
        else:
            error = ""
        if not handlers:
            others = [s for s in self.all_steps() if s != step]
            raise ValueError(f"checkpoint step {step} in {self.directory} is incomplete or corrupt: its Orbax "
                             f"step metadata lists no items{error}; delete {self.directory / str(step)} or "
                             f"restore another step ({others or 'none'})")
        return {n: _KINDS[h] for n, h in handlers.items() if n != _MANIFEST and h in _KINDS}

    def _check_step(self, step) -> int:
        steps = self.all_steps()
        if int(step) not in steps:
            raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory}; "
                                    f"available steps: {steps or 'none'}")
        return int(step)

    def reached_preemption(self, step: int) -> bool:
        """Whether every process has reached the step at which to save before a preemption.

        Call it once after every training step, with the same ``step`` on
        every process (Orbax's ``reached_preemption``, i.e. JAX's preemption
        sync point). When some host receives a preemption notice (SIGTERM),
        the processes agree on a step; this returns True on all of them at
        that step, and the loop should ``save(step, ..., force=True)``,
        :meth:`wait` and exit. It needs ``jax.distributed.initialize()``
        (which starts the sync manager unless ``jax_enable_preemption_service``
        is off); in a single process without it, or with the service off, it
        is always False.
        """
        return bool(self._manager.reached_preemption(int(step)))

    # ----------------------------------------------------------- lifecycle

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases Orbax's resources."""
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> "CheckpointManager":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------
# Exported models (SFT -> RL hand-off)
# ---------------------------------------------------------------------------

MODEL_CONFIG_NAME = "model_config.json"
PARAMS_DIR = "params"


def model_config_to_dict(config: ModelConfig) -> dict:
    """A JSON-serialisable dict of every :class:`ModelConfig` field."""
    return dataclasses.asdict(config)


def model_config_from_dict(d: Mapping[str, Any]) -> ModelConfig:
    """The inverse of :func:`model_config_to_dict` (unknown keys are an error)."""
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = set(d) - fields
    if unknown:
        raise ValueError(f"model config has unknown fields {sorted(unknown)}")
    return ModelConfig(**d)


def export_model(path: str | os.PathLike, params, config: ModelConfig, *, value_model: bool = False,
                 extra: Optional[Mapping[str, Any]] = None) -> Path:
    """Writes a standalone model: ``params/`` (Orbax) and ``model_config.json``.

    Args:
      path: output directory (created; an existing ``params/`` is replaced).
      params: the parameter pytree (``split_model(model)[1]``), any sharding.
      config: its :class:`ModelConfig`.
      value_model: the params belong to a :class:`~tracerl_jax.models.ValueModel`.
      extra: optional JSON written beside (``extra.json``: tokenizer name,
        task, training config, ...).

    Returns:
      The directory.
    """
    path = Path(path).absolute()
    path.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path / PARAMS_DIR, params, force=True)
        ckptr.wait_until_finished()
    if jax.process_index() == 0:
        meta = {"model_config": model_config_to_dict(config), "value_model": bool(value_model)}
        (path / MODEL_CONFIG_NAME).write_text(jsonlib.dumps(meta, indent=2, sort_keys=True))
        if extra is not None:
            (path / "extra.json").write_text(jsonlib.dumps(dict(extra), indent=2, sort_keys=True))
    return path


def read_model_config(path: str | os.PathLike) -> tuple[ModelConfig, bool]:
    """``(ModelConfig, value_model)`` of an exported model directory."""
    f = Path(path) / MODEL_CONFIG_NAME
    if not f.is_file():
        raise FileNotFoundError(f"{path} is not an exported model: {MODEL_CONFIG_NAME} is missing")
    meta = jsonlib.loads(f.read_text())
    return model_config_from_dict(meta["model_config"]), bool(meta.get("value_model", False))


def load_model(path: str | os.PathLike, *, shardings=None, **config_overrides):
    """Reads a model written by :func:`export_model`.

    Args:
      path: the export directory.
      shardings: optional sharding (one, or a pytree matching the params) to
        place the parameters with; default: the default device.
      **config_overrides: :class:`ModelConfig` fields to change (e.g.
        ``remat=True``, ``dtype="bfloat16"``); shapes must stay the same.

    Returns:
      ``(config, graphdef, params)``.

    Raises:
      FileNotFoundError: not an export directory.
      ValueError: parameters that do not match the recorded config, or
        corrupt parameter files.
    """
    path = Path(path).absolute()
    config, value_model = read_model_config(path)
    if config_overrides:
        config = config.replace(**config_overrides)
    cls = ValueModel if value_model else Transformer
    from flax import nnx

    graphdef, abstract = split_model(nnx.eval_shape(lambda: cls(config, rngs=nnx.Rngs(0))))
    if shardings is None:
        shardings = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = abstract_like(abstract, shardings)
    if not (path / PARAMS_DIR).is_dir():
        raise FileNotFoundError(f"{path}: missing {PARAMS_DIR}/")
    with ocp.StandardCheckpointer() as ckptr:
        try:
            params = ckptr.restore(path / PARAMS_DIR, target)
        except (ValueError, KeyError, OSError) as e:
            raise ValueError(f"{path}: {PARAMS_DIR}/ does not hold the parameters that {MODEL_CONFIG_NAME} "
                             f"describes (corrupt files, or a config written for another model): "
                             f"{type(e).__name__}: {e}") from e
    return config, graphdef, params


def read_extra(path: str | os.PathLike) -> dict:
    """The ``extra.json`` of an exported model ({} when absent)."""
    f = Path(path) / "extra.json"
    return jsonlib.loads(f.read_text()) if f.is_file() else {}
