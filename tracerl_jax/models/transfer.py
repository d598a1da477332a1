"""Carrying trained weights into a model of another family layout.

The three families are one decoder with layout flags (config.py): SDAR has
per-head q/k RMSNorm, Dream has q/k/v biases and shifted logits, LLaDA has
neither. A checkpoint of one layout can therefore start a model of another
of the same shape: every weight both layouts have is copied, the source's
extra weights (SDAR's ``q_norm``/``k_norm``) are dropped, and the target's
extra weights (Dream's biases) keep their initial values (zeros). The result
is a different function -- without the q/k norms attention logits change
scale, and a Dream model reads the logits one position earlier -- so it is a
warm start for fine-tuning in the new layout, not a conversion.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
from flax import nnx

from tracerl_jax.models.config import ModelConfig
from tracerl_jax.models.transformer import Transformer, relayout_layers

# Shape fields that must agree for weights to carry over; the layout flags and
# special ids may differ.
_SHAPE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                 "head_dim", "tie_word_embeddings")


class TransferReport(NamedTuple):
    """Which parameter paths :func:`transfer_weights` copied, dropped or left at init."""
    copied: tuple[str, ...]
    dropped: tuple[str, ...]  # in the source only
    kept_init: tuple[str, ...]  # in the target only


def _flat(model: Transformer) -> dict[str, Any]:
    pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(pure)}


def transfer_weights(source: Transformer, target: Transformer) -> tuple[Transformer, TransferReport]:
    """``target`` with every weight it shares with ``source`` replaced by the source's.

    Args:
      source: a trained model (any family).
      target: a freshly initialised model of the layout wanted; its config
        (family, layout flags, special ids, dtypes) is kept. Layers may be
        scanned or not in either.

    Returns:
      ``(model, report)``: a new model with the target's config, and the paths
      copied, dropped (source only) and left at their initial value (target
      only).

    Raises:
      ValueError: the two configs differ in a shape field (vocabulary, width,
        depth, heads, tied embeddings), or a shared path has another shape.
    """
    if not isinstance(source, Transformer) or not isinstance(target, Transformer):
        raise ValueError(f"transfer_weights takes two Transformers, got {type(source).__name__} and "
                         f"{type(target).__name__}")
    src_cfg: ModelConfig = source.config
    dst_cfg: ModelConfig = target.config
    differ = [f"{f}: {getattr(src_cfg, f)} vs {getattr(dst_cfg, f)}" for f in _SHAPE_FIELDS
              if getattr(src_cfg, f) != getattr(dst_cfg, f)]
    if differ:
        raise ValueError("cannot carry weights between models of different shapes (source vs target): "
                         + "; ".join(differ))
    source = relayout_layers(source, dst_cfg.scan_layers)
    src, dst = _flat(source), _flat(target)
    copied = tuple(sorted(src.keys() & dst.keys()))
    for path in copied:
        if src[path].shape != dst[path].shape:
            raise ValueError(f"parameter {path}: source shape {src[path].shape} != target shape {dst[path].shape}")
    report = TransferReport(copied=copied, dropped=tuple(sorted(src.keys() - dst.keys())),
                            kept_init=tuple(sorted(dst.keys() - src.keys())))

    graphdef, state = nnx.split(target, nnx.Param)

    def carried(path, leaf):
        key = jax.tree_util.keystr(path)
        return src[key].astype(leaf.dtype) if key in src else leaf

    nnx.replace_by_pure_dict(state, jax.tree_util.tree_map_with_path(carried, nnx.to_pure_dict(state)))
    return nnx.merge(graphdef, state), report
