"""The decoder of every supported family and its pure forward function.

One pre-norm RMSNorm/RoPE/GQA/SwiGLU decoder; :class:`ModelConfig` flags give
SDAR/TraDo (Qwen3: QK-norm), LLaDA (LLaMA-like, no biases) and Dream (Qwen2:
q/k/v biases, logits shifted by one, see :func:`predictions`).

The model has no built-in causal mask: every forward pass takes the
queries' :class:`~tracerl_jax.attention.MaskInfo` and derives the mask from
the library's single predicate (docs/algorithms.md §12: the attention takes an
external mask). With a KV cache the keys are ``[cache slots (T) | the Q new
tokens]``; the cache is written only when ``write_cache=True`` (§1.6: the
K/V of a block still being denoised are never persisted).

Use it functionally::

    model = init_model(get_preset("tiny"), seed=0)
    graphdef, params = split_model(model)
    out = jax.jit(forward, static_argnums=0)(graphdef, params, tokens, positions, info)
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from tracerl_jax import attention as attn
from tracerl_jax import kv_cache as kvc
from tracerl_jax.attention import MaskInfo
from tracerl_jax.kv_cache import KVCache
from tracerl_jax.models.config import ModelConfig
from tracerl_jax.models.layers import DecoderLayer, RMSNorm, normal_init, rope_tables
from tracerl_jax.train.sharding import constrain_rows


class ForwardOutput(NamedTuple):
    """Result of :func:`forward`.

    Attributes:
      logits: float32 ``[B, Q, V]``.
      hidden: final-norm hidden states ``[B, Q, d]`` in the compute dtype.
      cache: the updated cache when ``write_cache``, else the input cache
        (``None`` without one).
    """

    logits: jax.Array
    hidden: jax.Array
    cache: Optional[KVCache]


def _layer_call(layer, x, cos, sin, mask, past_k, past_v):
    return layer(x, cos, sin, mask, past_k, past_v)


_remat_layer_call = nnx.remat(_layer_call)


def _stacked_layers(config: ModelConfig, rngs: nnx.Rngs) -> DecoderLayer:
    """One :class:`DecoderLayer` whose parameters are ``[num_layers, ...]``.

    The layers are drawn from ``rngs`` one after another, exactly as the
    unrolled model draws them, so a seed gives the same weights in both
    layouts (a layout switch never changes an experiment's initialisation).
    """
    layers = [DecoderLayer(config, rngs=rngs) for _ in range(config.num_layers)]
    graphdef, first = nnx.split(layers[0])
    treedef = jax.tree.structure(first)
    per_layer = [jax.tree.leaves(nnx.split(layer)[1]) for layer in layers]
    del layers, first
    stacked = []
    for j in range(treedef.num_leaves):
        stacked.append(jnp.stack([leaves[j] for leaves in per_layer]))
        # Drop each per-layer copy once it is stacked, so the layers' weights exist about once
        # (plus one parameter's stack) instead of twice.
        for leaves in per_layer:
            leaves[j] = None
    return nnx.merge(graphdef, jax.tree.unflatten(treedef, stacked))


class Transformer(nnx.Module):
    """Decoder LM of any family. Parameter names mirror the Qwen HF ones.

    Attributes:
      config: the :class:`ModelConfig` (static; part of the graphdef).
      embed_tokens: ``nnx.Embed`` ``[V, d]``.
      layers: ``nnx.List`` of :class:`DecoderLayer`; with
        ``config.scan_layers`` one :class:`DecoderLayer` whose parameters
        have a leading ``[num_layers]`` axis.
      norm: final RMSNorm.
      lm_head: ``nnx.Linear`` ``[d, V]``; absent when ``tie_word_embeddings``.
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.embed_tokens = nnx.Embed(config.vocab_size, config.hidden_size, dtype=config.compute_dtype,
                                      param_dtype=config.params_dtype, embedding_init=normal_init(), rngs=rngs)
        if config.scan_layers:
            self.layers = _stacked_layers(config, rngs)
        else:
            self.layers = nnx.List([DecoderLayer(config, rngs=rngs) for _ in range(config.num_layers)])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, config.params_dtype)
        if not config.tie_word_embeddings:
            self.lm_head = nnx.Linear(config.hidden_size, config.vocab_size, use_bias=False,
                                      dtype=config.compute_dtype, param_dtype=config.params_dtype,
                                      kernel_init=normal_init(), rngs=rngs)

    def encode(self, tokens: jax.Array, positions: jax.Array, mask_info: Optional[MaskInfo],
               cache: Optional[KVCache] = None, *, write_cache: bool = False,
               dense_mask: Optional[jax.Array] = None) -> tuple[jax.Array, Optional[KVCache]]:
        """Runs the backbone; see :func:`forward` for the arguments.

        Returns:
          ``(hidden [B, Q, d], cache)`` with ``hidden`` after the final norm.
        """
        cfg = self.config
        validate_inputs(cfg, tokens, positions, mask_info, cache, write_cache, dense_mask)
        mask_info = None if mask_info is None else MaskInfo(*mask_info)
        if dense_mask is not None:
            mask = dense_mask
        elif cache is None:
            # Dense: one [B, 1, Q, Q] mask shared by the layers; otherwise each layer's attention
            # reads the compact MaskInfo (config.attention_impl).
            mask = attn.dense_mask(mask_info, mask_info) if cfg.attention_impl == "dense" else mask_info
        else:
            mask = attn.dense_mask(mask_info, cache.info.concat(mask_info), q_offset=cache.max_len)
        cos, sin = rope_tables(positions, cfg.head_dim, cfg.rope_theta)
        x = jnp.take(self.embed_tokens.embedding[...], tokens, axis=0)
        if cfg.padding_idx is not None:
            # nn.Embedding(padding_idx) (Dream): the lookup passes no gradient to that row.
            x = jnp.where((tokens == cfg.padding_idx)[..., None], lax.stop_gradient(x), x)
        x = constrain_rows(x.astype(cfg.compute_dtype))
        if cfg.scan_layers:
            x, new_k, new_v = self._scan_layers(x, cos, sin, mask, cache, collect_kv=write_cache)
        else:
            call = _remat_layer_call if cfg.remat else _layer_call
            new_k, new_v = [], []
            for i, layer in enumerate(self.layers):
                past_k, past_v = (None, None) if cache is None else kvc.layer_kv(cache, i)
                x, k, v = call(layer, x, cos, sin, mask, past_k, past_v)
                x = constrain_rows(x)
                new_k.append(k)
                new_v.append(v)
        hidden = self.norm(x)
        if write_cache:
            cache = kvc.write(cache, new_k, new_v, mask_info)
        return hidden, cache

    def _scan_layers(self, x, cos, sin, mask, cache, *, collect_kv: bool):
        """The stacked layers as one ``lax.scan``: ``x [B, Q, d]`` -> ``(x, k, v)``.

        ``k``/``v`` are the new tokens' ``[L, B, Q, Hkv, D]`` when
        ``collect_kv``, else None (not stacking them keeps a read-only pass
        from materialising ``L`` layers of K/V it would throw away).
        """
        graphdef, stacked = nnx.split(self.layers)

        def body(x, xs):
            layer_params, past_k, past_v = xs
            x, k, v = nnx.merge(graphdef, layer_params)(x, cos, sin, mask, past_k, past_v)
            return constrain_rows(x), ((k, v) if collect_kv else None)

        if self.config.remat:
            # scan already keeps iterations apart, so CSE cannot undo the remat; prevent_cse=False
            # spares the optimisation barriers (the documented setting for a scanned body).
            body = jax.checkpoint(body, prevent_cse=False)
        past = (None, None) if cache is None else (cache.k, cache.v)
        x, kv = lax.scan(body, x, (stacked, *past))
        return (x, None, None) if kv is None else (x, *kv)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """LM head: ``hidden [B, Q, d]`` -> float32 logits ``[B, Q, V]``."""
        cfg = self.config
        if cfg.tie_word_embeddings:
            w, spec = self.embed_tokens.embedding[...].astype(cfg.compute_dtype), "nd,vd->nv"
        else:
            w, spec = self.lm_head.kernel[...].astype(cfg.compute_dtype), "nd,dv->nv"
        # 2-D for the same reason as layers.dense (plain GEMMs in the backward on XLA:CPU).
        flat = hidden.reshape(-1, hidden.shape[-1])
        return jnp.einsum(spec, flat, w, preferred_element_type=jnp.float32).reshape(*hidden.shape[:-1], -1)

    def __call__(self, tokens, positions, mask_info, cache=None, *, write_cache=False,
                 dense_mask=None) -> ForwardOutput:
        """Stateful convenience form of :func:`forward` (same arguments, same result)."""
        hidden, cache = self.encode(tokens, positions, mask_info, cache, write_cache=write_cache,
                                    dense_mask=dense_mask)
        return ForwardOutput(self.logits(hidden), hidden, cache)


# ---------------------------------------------------------------------------
# Functional surface
# ---------------------------------------------------------------------------


def init_model(config: ModelConfig, rngs: Optional[nnx.Rngs] = None, *, seed: int = 0) -> Transformer:
    """A freshly initialised :class:`Transformer` (normal(0.02) weights, unit norms)."""
    return Transformer(config, rngs=rngs if rngs is not None else nnx.Rngs(seed))


def split_model(model: nnx.Module) -> tuple[Any, nnx.State]:
    """``(graphdef, params)``: the static structure and the ``nnx.Param`` state pytree.

    Raises:
      ValueError: if the model holds state other than parameters (it would be
        lost by the functional API).
    """
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    if jax.tree.leaves(rest):
        raise ValueError("model holds non-Param state; split it explicitly with nnx.split")
    return graphdef, params


def forward(graphdef, params, tokens: jax.Array, positions: jax.Array, mask_info: Optional[MaskInfo],
            cache: Optional[KVCache] = None, *, write_cache: bool = False,
            dense_mask: Optional[jax.Array] = None) -> ForwardOutput:
    """Pure forward pass of a :class:`Transformer`.

    Without a cache the keys are the queries themselves, masked by
    ``dense_mask(mask_info, mask_info)`` (computed densely or tile by tile as
    ``config.attention_impl`` says). With a cache the keys are the ``T``
    cache slots followed by the ``Q`` new tokens, masked by
    ``dense_mask(mask_info, cache.info.concat(mask_info), q_offset=T)``.

    Args:
      graphdef: from :func:`split_model` (static under ``jax.jit``).
      params: the parameter state (any sharding).
      tokens: int ``[B, Q]``.
      positions: int ``[B, Q]`` RoPE positions (explicit; padding arbitrary).
      mask_info: ``MaskInfo`` of the queries, fields ``[B, Q]`` (``block``
        int, ``noised``/``valid`` bool). May be None when ``dense_mask`` is
        given and ``write_cache`` is False (nothing else reads it then).
      cache: optional ``KVCache`` in the model's layout (per layer keys
        ``[B, Hkv, D, T]`` and values ``[B, Hkv, T, D]``; with
        ``scan_layers`` the stacked ``[L, ...]`` buffers): build it with
        :func:`make_cache`.
      write_cache: write the new tokens' K/V (post-norm, post-RoPE) and
        ``mask_info`` at the cache cursor and return the updated cache.
        Otherwise the input cache is returned unchanged.
      dense_mask: optional bool ``[B, 1|H, Q, K]`` overriding the predicate
        (``K = Q`` without a cache, ``T + Q`` with one).

    Returns:
      :class:`ForwardOutput` ``(logits f32 [B, Q, V], hidden [B, Q, d], cache)``.

    Raises:
      ValueError: on a malformed argument (checked before any tracing; token
        ids are range-checked too when they are concrete host-local arrays).

    The computation is compiled (``jax.jit``) even when called eagerly; under
    an outer ``jit``/``grad``/``vmap`` it is simply inlined.
    """
    model_cfg = _config_of(graphdef, params)
    validate_inputs(model_cfg, tokens, positions, mask_info, cache, write_cache, dense_mask)
    return _forward_jit(graphdef, params, tokens, positions, None if mask_info is None else MaskInfo(*mask_info),
                        cache, write_cache=bool(write_cache), dense_mask=dense_mask)


def _forward_impl(graphdef, params, tokens, positions, mask_info, cache, *, write_cache, dense_mask):
    return nnx.merge(graphdef, params)(tokens, positions, mask_info, cache, write_cache=write_cache,
                                       dense_mask=dense_mask)


# Compiled even when called eagerly (op-by-op dispatch of a whole transformer
# costs seconds per new shape); under an outer jit/grad/vmap it simply inlines.
_forward_jit = jax.jit(_forward_impl, static_argnums=0, static_argnames="write_cache")


@functools.lru_cache(maxsize=64)
def _static_config(graphdef) -> Optional[ModelConfig]:
    # The root module's ``config`` is a static attribute of the graphdef; reading
    # it avoids rebuilding the module just to validate shapes.
    for name, attr in getattr(graphdef, "attributes", ()):
        if name == "config" and isinstance(getattr(attr, "value", None), ModelConfig):
            return attr.value
    return None


def _config_of(graphdef, params) -> ModelConfig:
    """The :class:`ModelConfig` of the model a graphdef describes."""
    try:
        cfg = _static_config(graphdef)
    except TypeError:  # unhashable: not a GraphDef
        cfg = None
    if cfg is None:  # graphdef layout changed across Flax versions: rebuild the module instead
        cfg = getattr(nnx.merge(graphdef, params), "config", None)
    if not isinstance(cfg, ModelConfig):
        raise ValueError("graphdef must come from split_model(Transformer or ValueModel)")
    return cfg


def make_cache(config: ModelConfig, batch: int, max_len: int, dtype=None) -> KVCache:
    """An empty ``KVCache`` for ``config`` (``dtype`` defaults to the compute dtype).

    Per-layer buffers (keys ``[B, Hkv, D, T]``, values ``[B, Hkv, T, D]``)
    for unrolled layers; the stacked ``[L, B, Hkv, D, T]`` / ``[L, B, Hkv,
    T, D]`` buffers when ``config.scan_layers``.
    """
    return kvc.init(config.num_layers, batch, max_len, config.num_kv_heads, config.head_dim,
                    dtype=config.compute_dtype if dtype is None else dtype, stacked=config.scan_layers)


def stack_layer_params(pure: dict) -> dict:
    """Pure param dict of unrolled layers -> the scanned layout.

    Args:
      pure: ``nnx.to_pure_dict`` of a model's params, ``pure["layers"]`` a
        dict ``{0: layer params, ..., L-1: ...}``.

    Returns:
      A new dict whose ``"layers"`` entry is one layer's tree with every leaf
      stacked to ``[L, ...]``; the other entries are shared.
    """
    layers = pure.get("layers")
    if not isinstance(layers, dict) or not layers or set(layers) != set(range(len(layers))):
        raise ValueError("stack_layer_params: pure['layers'] must be {0: ..., 1: ...} (unrolled layers)")
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *(layers[i] for i in range(len(layers))))
    return {**pure, "layers": stacked}


def unstack_layer_params(pure: dict) -> dict:
    """The inverse of :func:`stack_layer_params`: ``[L, ...]`` leaves -> ``{i: layer}``."""
    layers = pure.get("layers")
    if not isinstance(layers, dict) or "self_attn" not in layers:
        raise ValueError("unstack_layer_params: pure['layers'] must be one layer tree with stacked "
                         "[L, ...] leaves (scanned layers)")
    n = {np.shape(x)[0] if np.ndim(x) else None for x in jax.tree.leaves(layers)}
    if len(n) != 1 or None in n:
        raise ValueError(f"unstack_layer_params: stacked leaves disagree on the layer count: {sorted(map(str, n))}")
    (n,) = n
    return {**pure, "layers": {i: jax.tree.map(lambda x: x[i], layers) for i in range(n)}}


def relayout_layers(model: "Transformer", scan_layers: bool) -> "Transformer":
    """The same model (same weights, same class) with scanned or unrolled layers.

    Args:
      model: a :class:`Transformer` or :class:`~tracerl_jax.models.ValueModel`.
      scan_layers: the layout wanted.

    Returns:
      ``model`` itself when it already has that layout, else a new model whose
      config differs only in ``scan_layers`` (the arrays are restacked once).
    """
    if not isinstance(model, Transformer):
        raise ValueError(f"model must be a Transformer, got {type(model).__name__}")
    if model.config.scan_layers == bool(scan_layers):
        return model
    config = model.config.replace(scan_layers=bool(scan_layers))
    cls = type(model)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: cls(config, rngs=nnx.Rngs(0))), nnx.Param)
    pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    nnx.replace_by_pure_dict(state, stack_layer_params(pure) if scan_layers else unstack_layer_params(pure))
    return nnx.merge(graphdef, state)


def shift_logits(x: jax.Array) -> jax.Array:
    """Dream's one-position logit shift (docs/algorithms.md §2.4, §12.3).

    An AR-initialised model's output at ``i`` predicts token ``i+1``; the
    shift moves it to the slot it predicts: ``out[:, i] = x[:, i-1]`` for
    ``i >= 1`` and ``out[:, 0] = x[:, 0]`` (the first slot keeps its own
    output, as the reference does; it is never a generated position).

    Args:
      x: ``[B, Q, ...]`` per-position outputs (logits, hidden states).

    Returns:
      ``[B, Q, ...]``, same dtype.
    """
    return jnp.concatenate([x[:, :1], x[:, :-1]], axis=1)


def predictions(config: ModelConfig, logits: jax.Array) -> jax.Array:
    """Logits aligned with the tokens they score: :func:`shift_logits` when
    ``config.logits_shift`` (Dream), unchanged otherwise (SDAR, LLaDA).

    Args:
      config: the model's :class:`ModelConfig`.
      logits: ``[B, Q, V]`` from :func:`forward`.

    Returns:
      ``[B, Q, V]``; entry ``[:, i]`` is the distribution of token ``i``.
    """
    return shift_logits(logits) if config.logits_shift else logits


def cache_init_fn(config: ModelConfig, dtype=None) -> Callable[[int, int], KVCache]:
    """``(batch, max_len) -> KVCache``, the ``init_cache`` the samplers take."""
    return lambda batch, max_len: make_cache(config, batch, max_len, dtype)


def sampler_forward_fn(graphdef) -> Callable:
    """Adapts :func:`forward` to the samplers' ``forward_fn`` protocol.

    Returns:
      ``fn(params, tokens, positions, mask_info, cache, write_cache,
      logits_from=0) -> (logits [B, Q - logits_from, V] f32, cache)`` with
      ``write_cache`` a Python bool and ``logits_from`` a Python int: only
      positions ``>= logits_from`` go through the vocabulary projection (the
      block sampler's fused cache write needs no logits for its clean half).
      The function carries ``supports_logits_from = True`` and the model's
      ``model_config`` (the samplers check special ids and lengths against it).
    """

    def fn(params, tokens, positions, mask_info, cache, write_cache, logits_from: int = 0):
        if not logits_from:
            out = forward(graphdef, params, tokens, positions, mask_info, cache, write_cache=bool(write_cache))
            return out.logits, out.cache
        model = nnx.merge(graphdef, params)
        validate_inputs(model.config, tokens, positions, mask_info, cache, write_cache)
        hidden, cache = model.encode(tokens, positions, MaskInfo(*mask_info), cache, write_cache=bool(write_cache))
        return model.logits(hidden[:, logits_from:]), cache

    fn.supports_logits_from = True
    fn.model_config = _static_config(graphdef)
    return fn


def full_sampler_forward_fn(graphdef) -> Callable:
    """Adapts the model to the full-attention samplers' ``forward_fn`` protocol.

    The sampler asks for the distributions of the tokens at query slots
    ``[start, start + length)``; the model's own logit convention is applied
    here (Dream's shift reads the outputs at ``[start - 1, start - 1 +
    length)``, §2.4; a query slot 0 keeps its own output), so the sampler
    never needs to know it. Only those ``length`` positions go through the
    vocabulary projection.

    Returns:
      ``fn(params, tokens [B, Q], positions [B, Q], mask_info, cache,
      write_cache, start, length) -> (logits f32 [B, length, V], cache)``;
      ``write_cache`` and ``length`` are Python values, ``start`` may be
      traced. The function carries the model's ``model_config``.
    """
    cfg = _static_config(graphdef)
    shift = bool(cfg.logits_shift) if cfg is not None else None

    def fn(params, tokens, positions, mask_info, cache, write_cache, start, length):
        model = nnx.merge(graphdef, params)
        s = shift if shift is not None else bool(model.config.logits_shift)
        validate_inputs(model.config, tokens, positions, mask_info, cache, write_cache)
        hidden, cache = model.encode(tokens, positions, MaskInfo(*mask_info), cache, write_cache=bool(write_cache))
        idx = jnp.asarray(start, jnp.int32) + jnp.arange(length, dtype=jnp.int32) - int(s)
        hidden = jnp.take(hidden, jnp.maximum(idx, 0), axis=1)
        return model.logits(hidden), cache

    fn.model_config = cfg
    return fn


# ---------------------------------------------------------------------------
# Input validation (shapes are static, so this runs before/while tracing)
# ---------------------------------------------------------------------------


def _host_value(x) -> Optional[np.ndarray]:
    """``x`` as NumPy when it is concrete and local, else None (traced or multi-host)."""
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, jax.core.Tracer) or not getattr(x, "is_fully_addressable", False):
        return None
    return np.asarray(x)


def validate_inputs(cfg: ModelConfig, tokens, positions, mask_info, cache=None, write_cache=False,
                    dense_mask=None) -> None:
    """Checks the forward arguments; raises ValueError naming the bad one.

    ``mask_info`` may be None only with a ``dense_mask`` and no cache write;
    a cache must have the model's layout (per-layer, or stacked with
    ``cfg.scan_layers``) and shapes.
    """
    shape = getattr(tokens, "shape", None)
    if shape is None or len(shape) != 2:
        raise ValueError(f"tokens must be a 2-D [B, Q] int array, got shape {shape}")
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"tokens must have an integer dtype, got {tokens.dtype}")
    B, Q = shape
    if B == 0 or Q == 0:
        raise ValueError(f"tokens is empty (shape {tuple(shape)}): a forward needs at least one row and one position")
    if getattr(positions, "shape", None) != (B, Q):
        raise ValueError(f"positions must have shape {(B, Q)} like tokens, got {getattr(positions, 'shape', None)}")
    if not jnp.issubdtype(positions.dtype, jnp.integer):
        raise ValueError(f"positions must have an integer dtype, got {positions.dtype}")
    if mask_info is None:
        # Only the predicate and the cache write read the MaskInfo; a dense_mask replaces the first.
        if dense_mask is None:
            raise ValueError("mask_info is required unless a dense_mask is given")
        if write_cache:
            raise ValueError("write_cache=True needs mask_info: the cache records the MaskInfo of the slots "
                             "it writes (a dense_mask only replaces the attention mask)")
    else:
        _check_info(mask_info, (B, Q), "mask_info")
    if cache is not None:
        if not isinstance(cache, KVCache):
            raise ValueError(f"cache must be a KVCache, got {type(cache).__name__}")
        T = _check_cache_layout(cfg, cache, B)
        _check_info(cache.info, (B, T), "cache.info")
    if write_cache and cache is None:
        raise ValueError("write_cache=True needs a cache")
    if dense_mask is not None:
        K = Q if cache is None else cache.max_len + Q
        ms = getattr(dense_mask, "shape", None)
        if ms is None or len(ms) != 4 or ms[0] != B or ms[1] not in (1, cfg.num_heads) or ms[2:] != (Q, K):
            raise ValueError(f"dense_mask must have shape [B, 1|H, Q, K] = [{B}, 1|{cfg.num_heads}, {Q}, {K}], "
                             f"got {ms}")
        if dense_mask.dtype != jnp.bool_:
            raise ValueError(f"dense_mask must be bool, got {dense_mask.dtype}")
    host = _host_value(tokens)
    if host is not None and host.size:
        lo, hi = int(host.min()), int(host.max())
        if lo < 0 or hi >= cfg.vocab_size:
            raise ValueError(f"tokens must lie in [0, vocab_size={cfg.vocab_size}), got range [{lo}, {hi}]")
    pos = _host_value(positions)
    if pos is not None and pos.size:
        lo, hi = int(pos.min()), int(pos.max())
        if lo < 0 or hi >= cfg.max_position_embeddings:
            raise ValueError(f"positions must lie in [0, max_position_embeddings={cfg.max_position_embeddings}), "
                             f"got range [{lo}, {hi}]")


def _check_cache_layout(cfg: ModelConfig, cache: KVCache, B: int) -> int:
    """Checks the K/V buffers against the model; returns the slot count ``T``."""
    L, Hkv, D = cfg.num_layers, cfg.num_kv_heads, cfg.head_dim
    if cache.stacked != cfg.scan_layers:
        have, want = ("stacked", "per-layer") if cache.stacked else ("per-layer", "stacked")
        raise ValueError(f"cache has the {have} KV layout but this model (scan_layers={cfg.scan_layers}) "
                         f"needs the {want} one; build the cache with make_cache(config, ...) / "
                         f"cache_init_fn(config) for this config, or convert it with kv_cache.to_layout")
    if cache.stacked:
        v_shape = tuple(getattr(cache.v, "shape", ()))
        T = v_shape[3] if len(v_shape) == 5 else -1
        for name, want, dims in (("k", (L, B, Hkv, D, T), "[L, B, Hkv, D, T]"),
                                 ("v", (L, B, Hkv, T, D), "[L, B, Hkv, T, D]")):
            got = tuple(getattr(getattr(cache, name), "shape", ()))
            if got != want:
                raise ValueError(f"cache.{name} must be a stacked array of shape {dims} = {want} "
                                 f"for this model and batch, got {got}")
        return T
    T = cache.v[0].shape[2] if len(cache.v) and getattr(cache.v[0], "ndim", 0) == 4 else -1
    for name, want, dims in (("k", (B, Hkv, D, T), "[B, Hkv, D, T]"),
                             ("v", (B, Hkv, T, D), "[B, Hkv, T, D]")):
        got = [tuple(getattr(a, "shape", ())) for a in getattr(cache, name)]
        if got != [want] * L:
            raise ValueError(f"cache.{name} must be {L} layers of shape {dims} = {want} "
                             f"for this model and batch, got {got}")
    return T


def _check_info(info, shape, name) -> None:
    if not isinstance(info, tuple) or len(info) != 3:
        raise ValueError(f"{name} must be a MaskInfo(block, noised, valid), got {type(info).__name__}")
    info = MaskInfo(*info)
    for field in ("block", "noised", "valid"):
        a = getattr(info, field)
        if getattr(a, "shape", None) != shape:
            raise ValueError(f"{name}.{field} must have shape {shape}, got {getattr(a, 'shape', None)}")
    if not jnp.issubdtype(info.block.dtype, jnp.integer):
        raise ValueError(f"{name}.block must be an integer array, got {info.block.dtype}")
    for field in ("noised", "valid"):
        # The predicate uses ~ and &, which are wrong on 0/1 integers.
        if getattr(info, field).dtype != jnp.bool_:
            raise ValueError(f"{name}.{field} must be bool, got {getattr(info, field).dtype}")
