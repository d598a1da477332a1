"""Building blocks of the Qwen3-style decoder: RMSNorm, RoPE, attention, SwiGLU.

Numerics follow docs/algorithms.md §12.1: norms in float32, RoPE tables in
float32 with half-rotation pairs ``(i, i + D/2)``, QK-norm per head over
``head_dim`` *before* RoPE, grouped-query attention with a float32 softmax.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from tracerl_jax.attention import MaskInfo, cached_attention, dot_product_attention, self_attention
from tracerl_jax.models.config import ModelConfig

# HF's initializer_range for Qwen3/SDAR; only matters for fresh (untrained) models.
INIT_STD = 0.02


def normal_init():
    return nnx.initializers.normal(stddev=INIT_STD)


class RMSNorm(nnx.Module):
    """``scale * x / sqrt(mean(x^2) + eps)`` over the last axis, computed in float32.

    The result is cast back to the input dtype (the residual stream's).
    """

    def __init__(self, dim: int, eps: float, param_dtype):
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        y = x32 * lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (self.scale[...].astype(jnp.float32) * y).astype(x.dtype)


def rope_inv_freq(head_dim: int, theta: float) -> np.ndarray:
    """``theta^(-2i/D)`` for ``i < D/2``; float64 maths rounded once to float32."""
    exponents = np.arange(0, head_dim, 2, dtype=np.float64) / head_dim
    return (1.0 / (theta ** exponents)).astype(np.float32)


def rope_tables(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """Cos/sin tables for explicit positions.

    Args:
      positions: int ``[B, Q]``.

    Returns:
      ``(cos, sin)``, each float32 ``[B, Q, D/2]``.
    """
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(rope_inv_freq(head_dim, theta))
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Half-rotation RoPE on ``x [B, Q, H, D]`` with tables ``[B, Q, D/2]``; float32 maths."""
    x32 = x.astype(jnp.float32)
    x1, x2 = jnp.split(x32, 2, axis=-1)
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    return jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1).astype(x.dtype)


def dense(layer: nnx.Linear, x: jax.Array) -> jax.Array:
    """``layer(x)`` on ``x [..., d_in]`` flattened to ``[prod(...), d_in]``; returns ``[..., d_out]``.

    Same product as ``layer(x)``. Why flatten: XLA:CPU differentiates a
    ``[B, Q, d]`` dot_general into weight-gradient dots whose operand it
    first transposes in a slow loop fusion (with the SwiGLU backward fused
    into it); on 2-D activations it emits plain GEMMs. That halved the MLP's
    forward+backward CPU time at the policy step's shapes
    (benchmarks/README.md, "2-D projections").
    """
    lead = x.shape[:-1]
    return layer(x.reshape(-1, x.shape[-1])).reshape(*lead, -1)


def _linear(cfg: ModelConfig, d_in: int, d_out: int, rngs: nnx.Rngs, bias: bool = False) -> nnx.Linear:
    return nnx.Linear(d_in, d_out, use_bias=bias, dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype,
                      kernel_init=normal_init(), rngs=rngs)


class Attention(nnx.Module):
    """Grouped-query self-attention with optional QK-norm, reading optional past K/V."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        d = cfg.hidden_size
        self.q_proj = _linear(cfg, d, cfg.num_heads * cfg.head_dim, rngs, cfg.qkv_bias)
        self.k_proj = _linear(cfg, d, cfg.num_kv_heads * cfg.head_dim, rngs, cfg.qkv_bias)
        self.v_proj = _linear(cfg, d, cfg.num_kv_heads * cfg.head_dim, rngs, cfg.qkv_bias)
        self.o_proj = _linear(cfg, cfg.num_heads * cfg.head_dim, d, rngs)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps, cfg.params_dtype)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps, cfg.params_dtype)
        self.qk_norm = cfg.qk_norm
        self.attention_impl = cfg.attention_impl
        self.tiles = (cfg.attention_q_tile, cfg.attention_k_tile)

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, mask,
                 past_k: Optional[jax.Array] = None, past_v: Optional[jax.Array] = None):
        """Args: x ``[B, Q, d]``; cos/sin ``[B, Q, D/2]``; mask bool ``[B, 1|H, Q, K]``, or
        the queries' ``MaskInfo`` (no past K/V: self-attention by ``config.attention_impl``);
        past_k ``[B, Hkv, D, T]`` / past_v ``[B, Hkv, T, D]`` (the cache layout) or None (then ``K = Q``, else ``K = T + Q``).

        Returns: ``(out [B, Q, d], k [B, Q, Hkv, D], v [B, Q, Hkv, D])`` where
        ``k`` is post-norm, post-RoPE (what a KV cache stores).
        """
        B, Q, _ = x.shape
        q = dense(self.q_proj, x).reshape(B, Q, self.num_heads, self.head_dim)
        k = dense(self.k_proj, x).reshape(B, Q, self.num_kv_heads, self.head_dim)
        v = dense(self.v_proj, x).reshape(B, Q, self.num_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if isinstance(mask, MaskInfo):
            if past_k is not None:
                raise ValueError("a MaskInfo mask is for self-attention without past K/V")
            out = self_attention(q, k, v, mask, implementation=self.attention_impl, q_tile=self.tiles[0],
                                 k_tile=self.tiles[1])
        elif past_k is not None:
            out = cached_attention(q, k, v, past_k, past_v, mask)
        else:
            out = dot_product_attention(q, k, v, mask)
        return dense(self.o_proj, out.reshape(B, Q, self.num_heads * self.head_dim)), k, v


class MLP(nnx.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.gate_proj = _linear(cfg, cfg.hidden_size, cfg.intermediate_size, rngs)
        self.up_proj = _linear(cfg, cfg.hidden_size, cfg.intermediate_size, rngs)
        self.down_proj = _linear(cfg, cfg.intermediate_size, cfg.hidden_size, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return dense(self.down_proj, jax.nn.silu(dense(self.gate_proj, x)) * dense(self.up_proj, x))


class DecoderLayer(nnx.Module):
    """Pre-norm block: ``h = x + attn(norm(x))``, ``y = h + mlp(norm(h))``."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.params_dtype)
        self.self_attn = Attention(cfg, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.params_dtype)
        self.mlp = MLP(cfg, rngs=rngs)

    def __call__(self, x, cos, sin, mask, past_k=None, past_v=None):
        """Returns ``(y [B, Q, d], k, v)`` with this layer's new K/V ``[B, Q, Hkv, D]``."""
        h, k, v = self.self_attn(self.input_layernorm(x), cos, sin, mask, past_k, past_v)
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x)), k, v
