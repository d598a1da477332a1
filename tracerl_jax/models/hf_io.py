"""Hugging Face safetensors checkpoints in and out (docs/algorithms.md §12).

A checkpoint directory holds ``config.json`` and either ``model.safetensors``
or shards ``model-0000i-of-0000n.safetensors`` listed by
``model.safetensors.index.json``. ``config.json``'s ``model_type`` picks the
family (SDAR/Qwen3, LLaDA/MMaDA, Dream/Qwen2); its reader is
:mod:`tracerl_jax.models.hf_config` and its tensor names are
:mod:`tracerl_jax.models.hf_keys`. PyTorch ``Linear`` weights are
``[out, in]`` and are transposed to and from Flax kernels ``[in, out]``. The
LM head (``lm_head.weight`` / ``model.transformer.ff_out.weight``) is absent
when the embeddings are tied; a value model adds ``value_head.weight
[1, hidden]``.

Loading builds the model abstractly (no allocation) and fills it one tensor
at a time from memory-mapped files, so at most one full copy of the weights
(plus one tensor in flight) exists at once.

Checkpoints are per layer (``model.layers.{i}.*``) whatever the model's
layout. A model with ``scan_layers`` gets each layer parameter as one
``[num_layers, ...]`` array: loading stacks the ``num_layers`` tensors of a
parameter as it reads them (one parameter's layers in flight), saving
writes each layer's slice under its own name.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from tracerl_jax.models.config import ModelConfig, canonical_dtype
from tracerl_jax.models.hf_keys import VALUE_HEAD_KEY, embed_key, head_key, hf_key_map
from tracerl_jax.models.transformer import Transformer
from tracerl_jax.models.value import ValueModel

SHIPPED_CHECKPOINTS = Path(__file__).resolve().parents[1] / "assets" / "checkpoints"


def shipped_checkpoint(name: str, root: Union[str, os.PathLike, None] = None) -> Path:
    """Directory of a checkpoint shipped inside the package.

    Args:
      name: e.g. ``"arith_sft"`` (the SFT warm start of the CPU TraceRL
        example; each directory's README says how it was made).
      root: where to look instead of ``tracerl_jax/assets/checkpoints``.

    Returns:
      ``root / name``, a directory with ``config.json`` (a Hugging Face
      checkpoint, :func:`load_hf_checkpoint`) or ``model_config.json`` (an
      :func:`~tracerl_jax.train.checkpoint.export_model` directory).

    Raises:
      ValueError: no such checkpoint; the message lists the shipped ones.
    """
    root = Path(root) if root is not None else SHIPPED_CHECKPOINTS
    path = root / name
    if not name or not ((path / "config.json").is_file() or (path / "model_config.json").is_file()):
        have = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        raise ValueError(f"no shipped checkpoint {name!r} in {root}; shipped: {have or 'none'}")
    return path

CONFIG_NAME = "config.json"
SINGLE_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
_SHARD_RE = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3
# Non-persistent rotary buffers some older exports contain; they carry no weights.
_IGNORED_KEY_RE = re.compile(r".*rotary_emb\.inv_freq$")


def _get(tree, path):
    for p in path:
        tree = tree[p]
    return tree


def _set(tree, path, value):
    for p in path[:-1]:
        tree = tree[p]
    tree[path[-1]] = value


def _slot(ppath: tuple, scanned: bool) -> tuple[tuple, Optional[int]]:
    """Where a per-layer key-map path lives in a model's pure dict.

    ``("layers", i, *rest)`` of a scanned model is row ``i`` of the stacked
    ``("layers", *rest)``; every other path is itself (layer ``None``).
    """
    if scanned and ppath[0] == "layers":
        return ("layers",) + tuple(ppath[2:]), ppath[1]
    return tuple(ppath), None


def _has_stacked_layers(pure: dict) -> bool:
    """Whether a pure param dict has the scanned layout (one layer tree, not ``{i: layer}``)."""
    layers = pure.get("layers")
    return isinstance(layers, dict) and "self_attn" in layers


def _abstract(config: ModelConfig, value_head: bool):
    cls = ValueModel if value_head else Transformer
    model = nnx.eval_shape(lambda: cls(config, rngs=nnx.Rngs(0)))
    return nnx.split(model, nnx.Param)


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------


def read_hf_config(path: Union[str, os.PathLike]) -> dict:
    """The parsed ``config.json`` of a checkpoint directory."""
    f = Path(path) / CONFIG_NAME
    if not f.is_file():
        raise ValueError(f"checkpoint {path}: missing {CONFIG_NAME}")
    try:
        return json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"checkpoint {path}: {CONFIG_NAME} is not valid JSON ({e})") from e


def _tensor_files(path: Path) -> dict[str, Path]:
    """Key -> file, from the index when there is one, else from every ``*.safetensors``."""
    index = path / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise ValueError(f"{index}: not a valid safetensors index ({e})") from e
        files = {}
        for key, name in weight_map.items():
            f = path / name
            if not f.is_file():
                raise ValueError(f"{index}: tensor {key!r} maps to missing file {name!r}")
            files[key] = f
        listed = _keys_by_file(sorted(set(files.values())))
        for f, keys in listed.items():
            for key in keys:
                if files.get(key) != f and not _IGNORED_KEY_RE.match(key):
                    raise ValueError(f"{index}: tensor {key!r} is in {f.name} but the index does not map it there")
        for key, f in files.items():
            if key not in listed[f]:
                raise ValueError(f"{index}: tensor {key!r} is not in {f.name}")
        return files
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        raise ValueError(f"checkpoint {path}: no *.safetensors files")
    files = {}
    for f, keys in _keys_by_file(shards).items():
        for key in keys:
            if key in files:
                raise ValueError(f"checkpoint {path}: tensor {key!r} is in both {files[key].name} and {f.name}")
            files[key] = f
    return files


def _keys_by_file(files) -> dict[Path, set]:
    out = {}
    for f in files:
        try:
            with safe_open(str(f), framework="np") as h:
                out[f] = set(h.keys())
        except Exception as e:  # safetensors raises its own error types for bad headers
            raise ValueError(f"corrupt safetensors file {f}: {e}") from e
    return out


def _read_tensor(f: Path, key: str) -> np.ndarray:
    try:
        with safe_open(str(f), framework="np") as h:
            return h.get_tensor(key)
    except Exception as e:
        raise ValueError(f"corrupt safetensors file {f} (tensor {key!r}): {e}") from e


def load_hf_checkpoint(path: Union[str, os.PathLike], dtype: Any = "float32", *,
                       compute_dtype: Any = None, value_model: Optional[bool] = None,
                       **config_overrides) -> tuple[ModelConfig, Transformer]:
    """Loads a safetensors checkpoint of any supported family into a Flax model.

    Args:
      path: checkpoint directory (``config.json`` + safetensors).
      dtype: parameter dtype the tensors are cast to.
      compute_dtype: activation dtype (default: ``dtype``).
      value_model: ``None`` detects a value model from ``value_head.weight``;
        ``True`` requires it; ``False`` treats it as an unexpected tensor.
      **config_overrides: :class:`ModelConfig` fields overriding the file
        (``remat``, special ids the file lacks, ...).

    Returns:
      ``(config, model)``; ``model`` is a :class:`ValueModel` when the
      checkpoint has a value head.

    Raises:
      ValueError: unsupported ``model_type``, missing/invalid config field,
        missing, unexpected or shape-mismatched tensor (named), a corrupt file.
    """
    path = Path(path)
    hf = read_hf_config(path)
    param_dtype = canonical_dtype(dtype, "dtype")
    config = ModelConfig.from_hf_config(hf, **{"param_dtype": param_dtype,
                                               "dtype": compute_dtype or param_dtype, **config_overrides})
    if config.mask_token_id is None:
        raise ValueError(f"checkpoint {path}: config.json has no mask_token_id (the MASK id a diffusion LM decodes "
                         "from); pass mask_token_id= (the tokenizer's mask id)")
    files = _tensor_files(path)
    has_vh = VALUE_HEAD_KEY in files
    if value_model is None:
        value_model = has_vh
    if value_model and not has_vh:
        raise ValueError(f"checkpoint {path}: missing tensor {VALUE_HEAD_KEY!r} (value_model=True)")
    key_map = hf_key_map(config, value_model)
    head, emb = head_key(config), embed_key(config)

    extra = {k for k in files if k not in key_map and not _IGNORED_KEY_RE.match(k)}
    # Some exporters keep a tied head as its own tensor; accept it if it is the embedding.
    tied_head = config.tie_word_embeddings and head in extra
    if tied_head:
        extra.discard(head)
    if extra:
        raise ValueError(f"checkpoint {path}: unexpected tensors {sorted(extra)[:8]} "
                         f"({len(extra)} in all) for config {config.model_type} with {config.num_layers} layers")
    missing = [k for k in key_map if k not in files]
    if missing:
        raise ValueError(f"checkpoint {path}: missing tensors {missing[:8]} ({len(missing)} in all)")

    graphdef, state = _abstract(config, value_model)
    abstract = nnx.to_pure_dict(state)
    target = config.params_dtype

    def read(handle, f, key, want):
        transpose = key_map[key][1]
        hf_shape = want[::-1] if transpose else want
        try:
            arr = handle.get_tensor(key)
        except Exception as e:
            raise ValueError(f"corrupt safetensors file {f} (tensor {key!r}): {e}") from e
        if tuple(arr.shape) != hf_shape:
            raise ValueError(f"checkpoint {path}: tensor {key!r} has shape {tuple(arr.shape)}, "
                             f"expected {hf_shape} from config.json")
        # One host array in flight at a time; the device copy replaces it.
        return jnp.asarray(arr.T if transpose else arr, dtype=target)

    if config.scan_layers:
        _load_stacked(abstract, key_map, files, read)
    else:
        by_file: dict[Path, list[str]] = {}
        for key in key_map:
            by_file.setdefault(files[key], []).append(key)
        for f, keys in by_file.items():
            with _open(f) as handle:
                for key in keys:
                    ppath = key_map[key][0]
                    _set(abstract, ppath, read(handle, f, key, tuple(_get(abstract, ppath).shape)))
    if tied_head:
        # Compare the file's own tensors: the loaded embedding may be rounded to a narrower dtype.
        head_arr, emb_arr = _read_tensor(files[head], head), _read_tensor(files[emb], emb)
        if head_arr.shape != emb_arr.shape or not np.array_equal(head_arr, emb_arr):
            raise ValueError(f"checkpoint {path}: tensor {head!r} differs from {emb!r} although the "
                             "embeddings are tied (tie_word_embeddings / weight_tying)")
    nnx.replace_by_pure_dict(state, abstract)
    return config, nnx.merge(graphdef, state)


def _open(f: Path):
    try:
        return safe_open(str(f), framework="np")
    except Exception as e:
        raise ValueError(f"corrupt safetensors file {f}: {e}") from e


def _load_stacked(abstract: dict, key_map, files: dict, read) -> None:
    """Fills a scanned model's pure dict: each layer parameter is its layers' tensors stacked."""
    groups: dict[tuple, list[tuple[Optional[int], str]]] = {}
    for key, (ppath, _) in key_map.items():
        spath, layer = _slot(ppath, True)
        groups.setdefault(spath, []).append((layer, key))
    with contextlib.ExitStack() as stack:
        # A parameter's layers may sit in different shards: keep each file open once.
        handles: dict[Path, Any] = {}

        def handle(f):
            if f not in handles:
                handles[f] = stack.enter_context(_open(f))
            return handles[f]

        for spath, members in groups.items():
            want = tuple(_get(abstract, spath).shape)
            if members[0][0] is None:
                (_, key), = members
                _set(abstract, spath, read(handle(files[key]), files[key], key, want))
                continue
            members.sort()
            parts = [read(handle(files[key]), files[key], key, want[1:]) for _, key in members]
            # One parameter's layers in flight: the stack replaces them.
            _set(abstract, spath, jnp.stack(parts))
            del parts


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------


def _leaf_paths(tree, prefix=()):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _leaf_paths(v, prefix + (k,))
    else:
        yield prefix


def _to_pure(model_or_params) -> dict:
    if isinstance(model_or_params, nnx.Module):
        return nnx.to_pure_dict(nnx.state(model_or_params, nnx.Param))
    if isinstance(model_or_params, nnx.State):
        return nnx.to_pure_dict(model_or_params)
    if isinstance(model_or_params, dict):
        return model_or_params
    raise ValueError(f"model_or_params must be an nnx Module, nnx.State or dict, got "
                     f"{type(model_or_params).__name__}")


def save_hf_checkpoint(model_or_params, config: ModelConfig, path: Union[str, os.PathLike], *,
                       max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, dtype: Any = None) -> list[str]:
    """Writes ``config.json`` and safetensors in the HF layout.

    A model larger than ``max_shard_bytes`` is split into
    ``model-0000i-of-0000n.safetensors`` plus ``model.safetensors.index.json``
    (a tensor is never split; one larger than the limit gets its own shard).
    Earlier ``model*.safetensors`` files and index in ``path`` are removed so
    a reader never mixes two saves.

    Args:
      model_or_params: a :class:`Transformer`/:class:`ValueModel`, its
        ``nnx.State`` of params, or the pure dict of one.
      config: the model's :class:`ModelConfig`.
      path: output directory (created).
      max_shard_bytes: shard size limit.
      dtype: optional dtype to cast tensors to (default: keep, bit-exact).

    Returns:
      The names of the safetensors files written.

    Raises:
      ValueError: a parameter missing or of the wrong shape for ``config``,
        or a config its family's ``config.json`` cannot express.
    """
    if max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    pure = _to_pure(model_or_params)
    value_head = "value_head" in pure
    # Both raise on a layout the family's format cannot express: fail before writing anything.
    hf = config.to_hf_config()
    key_map = hf_key_map(config, value_head)
    # The params say which layout they have (scan_layers is not a checkpoint property, so a
    # config that disagrees on it alone still describes these tensors).
    scanned = _has_stacked_layers(pure)
    _, state = _abstract(config.replace(scan_layers=scanned), value_head)
    abstract = nnx.to_pure_dict(state)
    cast = None if dtype is None else jnp.dtype(canonical_dtype(dtype, "dtype"))

    sizes = {}
    for key, (ppath, transpose) in key_map.items():
        spath, layer = _slot(ppath, scanned)
        try:
            leaf = _get(pure, spath)
        except (KeyError, IndexError, TypeError):
            raise ValueError(f"save_hf_checkpoint: parameter {'/'.join(map(str, spath))} (for {key!r}) is missing")
        want = tuple(_get(abstract, spath).shape)
        if tuple(leaf.shape) != want:
            raise ValueError(f"save_hf_checkpoint: parameter {'/'.join(map(str, spath))} has shape "
                             f"{tuple(leaf.shape)}, expected {want} for {key!r}")
        sizes[key] = int(np.prod(want if layer is None else want[1:])) * (cast or leaf.dtype).itemsize

    mapped = {_slot(ppath, scanned)[0] for ppath, _ in key_map.values()}
    unmapped = sorted("/".join(map(str, p)) for p in _leaf_paths(pure) if p not in mapped)
    if unmapped:
        # e.g. q/k/v biases saved under a config without qkv_bias: they would be dropped silently.
        raise ValueError(f"save_hf_checkpoint: parameters {unmapped[:8]} ({len(unmapped)} in all) have no "
                         f"checkpoint name for config {config.model_type} (wrong config for these params?)")

    shards, cur, cur_bytes = [], [], 0
    for key, n in sizes.items():
        if cur and cur_bytes + n > max_shard_bytes:
            shards.append(cur)
            cur, cur_bytes = [], 0
        cur.append(key)
        cur_bytes += n
    shards.append(cur)

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    for old in list(out.glob("model*.safetensors")) + [out / INDEX_NAME]:
        if old.name == SINGLE_NAME or _SHARD_RE.fullmatch(old.name) or old.name == INDEX_NAME:
            old.unlink(missing_ok=True)

    names = [SINGLE_NAME] if len(shards) == 1 else [
        f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for name, keys in zip(names, shards):
        tensors = {}
        for key in keys:
            ppath, transpose = key_map[key]
            spath, layer = _slot(ppath, scanned)
            leaf = _get(pure, spath)
            if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
                raise ValueError(f"save_hf_checkpoint: parameter for {key!r} is not fully addressable from this "
                                 "process; gather it (e.g. jax.experimental.multihost_utils) before saving")
            # Slice a stacked parameter on its device: only this layer's tensor travels to the host.
            arr = np.asarray(jax.device_get(leaf if layer is None else leaf[layer]))
            if cast is not None:
                arr = arr.astype(cast)
            tensors[key] = np.ascontiguousarray(arr.T if transpose else arr)
            weight_map[key] = name
        save_file(tensors, str(out / name), metadata={"format": "pt"})
        del tensors
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}
        (out / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True))
    if cast is not None:
        hf["torch_dtype"] = cast.name
    (out / CONFIG_NAME).write_text(json.dumps(hf, indent=2, sort_keys=True))
    return names
