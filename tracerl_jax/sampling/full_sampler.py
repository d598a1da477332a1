"""Full-attention (LLaDA / Dream) generation with trajectory recording (docs/algorithms.md §2).

The canvas is ``[left-padded prompt (Lp) | MASK * gen_length]``; the model
attends bidirectionally over all of it (later blocks' ``MASK`` tokens
included). Blocks of ``block_size`` are decoded in order (semi-autoregressive,
§2.1) and the whole generation is one compiled program: a ``lax.while_loop``
over blocks with an inner ``lax.while_loop`` over denoising steps.

Per step, every position of the current block gets a sampled token, a
confidence and its policy log-prob; the remasking rule picks which masked
positions are committed:

* ``family="llada"`` (§2.3): tokens drawn from ``softmax(z/T)`` (the
  reference's float64 Gumbel-max draws from the same distribution) and
  confidence from the **untempered** softmax (Q-F6, by design in LLaDA);
  static quota = the §1.3 rule over the block's
  masks at block start; ``threshold``: every candidate with confidence
  ``>= tau``, else the single best (no step budget: Q-F2 fixed).
* ``family="dream"`` (§2.4): temperature -> top-p -> top-k sampling with the
  confidence under that same distribution; the first position of each block
  is committed unconditionally at the block's first step; the static count is
  the linspace rule (:mod:`full_schedule`); ``pad_target_penalty``,
  ``alg_temp`` (positions drawn without replacement from
  ``softmax(conf/alg_temp)``, via Gumbel top-k) and the early stop after a
  block of only ``PAD``.

Trajectory (§2.5). ``step_map`` holds, per response position, the 1-based
index of the denoising forward pass that committed it (the reference's
snapshot index + 1; ids are global and grow across blocks). By default the
counter is per row and has no gaps: a row whose block is done while other
rows still decode it consumes no ids. Under ``compat="reference"`` the
counter is shared by the batch, as the reference's history snapshots are:
every row consumes an id at every step, and LLaDA makes a second model call
in a block even when its first call filled it (the reference's loop tests
for masks after the call), which consumes an id and commits nothing. A row
whose just-finished block is all ``PAD`` stops (Dream): its later positions
become ``PAD`` with one extra step id, like the reference's extra snapshot.
Every response position therefore has exactly one step id.

Padding (``compat``):

* ``"recommended"``: left-padding is masked as keys and RoPE positions count
  real tokens only, so a row's result does not depend on its neighbours
  (Q-F4 fixed); Dream's static count uses the row's own masks and the early
  stop is per row (Q-F3, Q-F5 fixed); ``neg_entropy`` is ``Σ p log p``
  (Q-F1 fixed).
* ``"reference"``: positions are canvas indices ``0..T-1``; LLaDA attends to
  pads, Dream masks them; Dream's count uses the batch mean of the masks left
  and the early stop needs every row; LLaDA's ``neg_entropy`` is ``+entropy``.

Prefix cache (``use_cache``, §2.2, the Fast-dLLM rule of the reference): the
first step of each block runs on the whole canvas, takes that step's logits
from it and keeps the K/V of ``[0, s)`` (``s`` = block start): the prompt
**and every finished block**. Every later step of the block runs only the
window ``x[s : w_end]`` against that stale prefix, ``w_end = min(e +
further_horizon, T)`` (``e`` = block end; ``further_horizon=None``: ``T``);
canvas slots at or past ``w_end`` are invisible. The prefix therefore grows
block by block and the window shrinks towards the end of the canvas. Shapes
stay static with a few compiled shapes (:func:`window_plan`), one per run
of consecutive blocks: the run's largest window and largest prefix. A
window's slots past ``w_end`` (past ``T`` near the end, where the canvas is
padded) are invisible keys whose outputs are never read, and it reads only
the cache slots up to its run's last block start. A shifted (Dream) model
reads the window's first slot from its own output, as the reference does;
that slot is the block's first position, committed at the block's first
step (§2.4), so its logits are never used. The cache is the same under both
``compat`` values.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from tracerl_jax.attention import NEG_INF, full_info
from tracerl_jax.sampling import remasking
from tracerl_jax.sampling.block_sampler import Rollout, host_view, model_limits
from tracerl_jax.sampling.full_schedule import (block_steps, dream_count, dream_fraction_table,
                                                llada_quota)
from tracerl_jax.sampling.token_sampling import filter_logits, row_keys_for

FAMILIES = ("llada", "dream")
REMASKING = ("low_confidence_static", "threshold")
TARGETS = ("confidence", "margin_confidence", "neg_entropy", "random")
COMPAT = ("recommended", "reference")


@dataclasses.dataclass(frozen=True)
class FullSamplerConfig:
    """Settings of the full-attention sampler (hashable, static under jit).

    Attributes:
      gen_length: response canvas length ``G``; a multiple of ``block_size``.
      mask_id, pad_id: special ids (``pad_id`` fills stopped rows, §2.4).
      eos_id: the completion ends at the first ``eos_id`` (included); None:
        the completion is the whole canvas (up to an early stop).
      family: ``"llada"`` (§2.3) or ``"dream"`` (§2.4), see the module docstring.
      block_size: semi-AR block length.
      steps: total denoising steps, split across blocks by §2.1 (default
        ``gen_length``: one token per step).
      remasking: ``"low_confidence_static"`` or ``"threshold"`` (the
        reference treats every other strategy name as threshold).
      threshold: ``tau`` of the threshold rule (``>=``).
      target: ``confidence`` | ``margin_confidence`` | ``neg_entropy`` | ``random``.
      temperature: 0 = greedy.
      top_p, top_k: sampling filters (1.0 / 0 = off); Dream applies top-p first.
      alg_temp: > 0 draws the static positions from ``softmax(score/alg_temp)``
        without replacement instead of taking the top ones.
      pad_target_penalty: a candidate whose sampled token is ``pad_id`` has its
        confidence divided by this (1.0 = off).
      early_stop: stop a row after a block of only ``pad_id`` (default: Dream).
      use_cache: prefix KV cache (module docstring).
      further_horizon: with the cache, the canvas positions after the block
        that later steps see (an integer >= 0; None = up to the end of the
        canvas, §2.2).
      compat: ``"recommended"`` or ``"reference"`` (module docstring).
    """

    gen_length: int
    mask_id: int
    pad_id: int
    eos_id: Optional[int] = None
    family: str = "llada"
    block_size: int = 32
    steps: Optional[int] = None
    remasking: str = "low_confidence_static"
    threshold: float = 0.95
    target: str = "confidence"
    temperature: float = 0.8
    top_p: float = 1.0
    top_k: int = 0
    alg_temp: float = 0.0
    pad_target_penalty: float = 1.0
    early_stop: Optional[bool] = None
    use_cache: bool = False
    further_horizon: Optional[int] = None
    compat: str = "recommended"

    def __post_init__(self):
        def check(ok, msg):
            if not ok:
                raise ValueError(msg)

        check(self.family in FAMILIES, f"family must be one of {FAMILIES}, got {self.family!r}")
        check(self.remasking in REMASKING, f"remasking must be one of {REMASKING}, got {self.remasking!r}")
        check(self.target in TARGETS, f"target must be one of {TARGETS}, got {self.target!r}")
        check(self.compat in COMPAT, f"compat must be one of {COMPAT}, got {self.compat!r}")
        check(self.block_size >= 1, f"block_size must be >= 1, got {self.block_size}")
        check(self.gen_length >= 1 and self.gen_length % self.block_size == 0,
              f"gen_length ({self.gen_length}) must be a positive multiple of block_size ({self.block_size})")
        block_steps(self.total_steps, self.num_blocks)  # raises if a block gets no step
        check(0.0 < self.threshold <= 1.0, f"threshold must be in (0, 1] (a confidence, >=), got {self.threshold}")
        check(self.temperature >= 0, f"temperature must be >= 0, got {self.temperature}")
        check(0.0 < self.top_p <= 1.0, f"top_p must be in (0, 1], got {self.top_p}")
        check(self.top_k >= 0, f"top_k must be >= 0, got {self.top_k}")
        check(self.alg_temp >= 0, f"alg_temp must be >= 0, got {self.alg_temp}")
        check(self.pad_target_penalty > 0, f"pad_target_penalty must be > 0, got {self.pad_target_penalty}")
        h = self.further_horizon
        check(h is None or (isinstance(h, (int, np.integer)) and not isinstance(h, bool) and h >= 0),
              f"further_horizon must be None or an integer >= 0, got {h!r}")
        check(isinstance(self.use_cache, (bool, np.bool_)), f"use_cache must be a bool, got {self.use_cache!r}")

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block_size

    @property
    def total_steps(self) -> int:
        return self.gen_length if self.steps is None else self.steps

    @property
    def stops_early(self) -> bool:
        return self.family == "dream" if self.early_stop is None else bool(self.early_stop)

    def window_plan(self, prompt_len: int) -> "WindowPlan":
        """The static shapes of the cached steps (:func:`window_plan`)."""
        return window_plan(self, prompt_len)


FullForwardFn = Callable[..., tuple]
"""``fn(params, tokens [B,Q], positions [B,Q], mask_info, cache, write_cache, start, length)
-> (logits [B, length, V], cache)``: the distributions of the tokens at query slots
``[start, start+length)``; see :func:`tracerl_jax.models.full_sampler_forward_fn`."""


# --------------------------------------------------------------------------
# One denoising step: tokens, confidences, selection
# --------------------------------------------------------------------------


def _confidence(cfg: FullSamplerConfig, probs: jax.Array, tokens: jax.Array, key: jax.Array) -> jax.Array:
    """The selection score of each position (§2.3/§2.4 ``target``) from ``probs [.., V]``."""
    if cfg.target == "confidence":
        return jnp.take_along_axis(probs, tokens[..., None], axis=-1)[..., 0]
    if cfg.target == "margin_confidence":
        top2 = lax.top_k(probs, 2)[0]
        return top2[..., 0] - top2[..., 1]
    if cfg.target == "neg_entropy":
        neg_ent = jnp.sum(probs * jnp.log(probs + 1e-10), axis=-1)
        # Q-F1: LLaDA's reference returns +entropy (prefers uncertain tokens).
        return -neg_ent if (cfg.compat == "reference" and cfg.family == "llada") else neg_ent
    return jax.random.uniform(key, tokens.shape, jnp.float32)


def sample_positions(cfg: FullSamplerConfig, key: jax.Array, logits: jax.Array):
    """Samples a token for every position and scores it.

    Args:
      cfg: sampler settings (``family`` picks the confidence distribution).
      key: PRNG key for this row and step.
      logits: float ``[b, V]`` distributions of the block's positions.

    Returns:
      ``(tokens int32 [b], confidence f32 [b], logprob f32 [b])``;
      ``logprob`` is ``log softmax(logits)[token]`` at temperature 1 (the
      policy log-prob the trainer recomputes). The mask id is never sampled.
    """
    k_tok, k_conf = jax.random.split(key)
    raw = logits.astype(jnp.float32)
    z = raw.at[..., cfg.mask_id].set(NEG_INF)
    t = cfg.temperature
    if cfg.family == "dream":
        # Dream order: temperature -> top-p -> top-k; the confidence is under that distribution.
        zf = filter_logits(filter_logits(z, t if t > 0 else 1.0, 0, cfg.top_p), 1.0, cfg.top_k, 1.0)
        tokens = jnp.argmax(zf, -1) if t == 0 else jax.random.categorical(k_tok, zf, axis=-1)
        probs = jax.nn.softmax(zf, axis=-1)
    else:
        tokens = jnp.argmax(z, -1) if t == 0 else jax.random.categorical(
            k_tok, filter_logits(z, t, cfg.top_k, cfg.top_p), axis=-1)
        probs = jax.nn.softmax(raw, axis=-1)  # untempered (Q-F6)
    tokens = tokens.astype(jnp.int32)
    conf = _confidence(cfg, probs, tokens, k_conf)
    logp = jnp.take_along_axis(jax.nn.log_softmax(raw, axis=-1), tokens[..., None], axis=-1)[..., 0]
    return tokens, conf, logp


def select_commits(cfg: FullSamplerConfig, key: jax.Array, score: jax.Array, masked: jax.Array,
                   i: jax.Array, steps_in_block: jax.Array, fraction: jax.Array,
                   batch_masks: jax.Array) -> jax.Array:
    """Positions of the block committed at in-block iteration ``i`` (§2.3, §2.4).

    Args:
      cfg: sampler settings.
      key: PRNG key ``[B]`` (used by ``alg_temp``).
      score: float ``[B, b]`` selection score (confidence, after the pad penalty).
      masked: bool ``[B, b]`` positions still ``MASK``.
      i: int scalar in-block iteration (0-based).
      steps_in_block: int scalar ``S_j``.
      fraction: float scalar, Dream's ``1 - t_{i+1}/t_i`` for this step.
      batch_masks: float scalar, the batch mean of masks left (Dream,
        ``compat="reference"``).

    Returns:
      bool ``[B, b]``, a subset of ``masked``.
    """
    B, b = masked.shape
    n_masked = jnp.sum(masked, axis=-1).astype(jnp.int32)
    if cfg.remasking == "threshold":
        high = masked & (score >= cfg.threshold)
        best = remasking.select("low_confidence_static", score, masked, 1)
        commit = jnp.where(jnp.any(high, -1, keepdims=True), high, best)
    else:
        if cfg.family == "llada":
            # Blocks start fully masked, so the §1.3 rule runs on m = block_size.
            quota = llada_quota(b, steps_in_block, i)
        else:
            m = batch_masks if cfg.compat == "reference" else n_masked.astype(jnp.float32)
            quota = dream_count(n_masked, m, fraction, i >= steps_in_block - 1)
        sel = score
        if cfg.alg_temp > 0:
            # Gumbel top-k == sampling positions without replacement from softmax(score / alg_temp).
            g = jax.vmap(lambda k: jax.random.gumbel(jax.random.fold_in(k, 7), (b,)))(key)
            sel = score / cfg.alg_temp + g
        commit = remasking.select("low_confidence_static", sel, masked, quota)
    if cfg.family == "dream":
        # The block's first step commits its first position unconditionally
        # (a single-step static block commits everything, Q-F3 fixed).
        first = masked & (jnp.arange(b)[None] == 0)
        forced = masked if cfg.remasking != "threshold" else first
        forced = jnp.where(steps_in_block <= 1, forced, first)
        commit = jnp.where(i == 0, forced, commit)
    return commit & masked


# --------------------------------------------------------------------------
# Prefix cache (§2.2)
# --------------------------------------------------------------------------


WINDOW_SHAPES = 4
"""Most compiled window shapes of the prefix cache: more shapes waste fewer invisible slots but
compile one more model forward each (benchmarks/README.md, "Full-attention prefix cache")."""


class WindowPlan(NamedTuple):
    """Static shapes of the cached steps (§2.2).

    Attributes:
      lengths: per shape, the window's query length.
      prefixes: per shape, the cache slots ``[0, C)`` the window attends to
        (the largest block start ``s`` of its blocks: the prefix ``[0, s)``
        fits, and the stale K/V past it are never read).
      bucket: per block, the index of its shape.
      pad: invisible slots appended to the canvas so every window fits past ``T``.
    """

    lengths: tuple
    prefixes: tuple
    bucket: tuple
    pad: int


def window_plan(cfg: "FullSamplerConfig", prompt_len: int) -> WindowPlan:
    """Static shapes of the cached steps (§2.2).

    Block ``j`` (start ``s_j = Lp + j*b``) needs ``n_j = min(b + h, G - j*b)``
    query slots (``G - j*b`` with ``further_horizon=None``: the rest of the
    canvas) and the prefix ``[0, s_j)``. The blocks are cut into at most
    :data:`WINDOW_SHAPES` runs of consecutive blocks; a run's shape has the
    largest window (its first block's) and the largest prefix (its last
    block's), so the cost per query is about ``T + b * blocks per run`` keys
    instead of ``T + n_j``. Window slots past ``n_j`` are invisible.

    Args:
      cfg: sampler settings.
      prompt_len: ``Lp``.

    Returns:
      :class:`WindowPlan`.
    """
    G, b, nb, h = cfg.gen_length, cfg.block_size, cfg.num_blocks, cfg.further_horizon
    need = [G - j * b if h is None else min(b + h, G - j * b) for j in range(nb)]
    per = -(-nb // WINDOW_SHAPES)
    runs = [range(k, min(k + per, nb)) for k in range(0, nb, per)]
    lengths = tuple(max(need[j] for j in r) for r in runs)
    prefixes = tuple(prompt_len + max(r) * b for r in runs)
    bucket = tuple(j // per for j in range(nb))
    pad = max(0, max(lengths[bucket[j]] - (G - j * b) for j in range(nb)))
    return WindowPlan(lengths, prefixes, bucket, pad)


def _cache_prefix(cache, length: int):
    """The cache's first ``length`` slots (static) for a forward that only reads them.

    The write cursor is left as it is: the window pass never writes.
    """
    if cache.stacked:
        k, v = cache.k[..., :length], cache.v[..., :length, :]
    else:
        k, v = tuple(x[..., :length] for x in cache.k), tuple(x[..., :length, :] for x in cache.v)
    return cache._replace(k=k, v=v, info=type(cache.info)(*(a[:, :length] for a in cache.info)))


def prefix_pass(forward_fn: FullForwardFn, init_cache: Callable, params, canvas: jax.Array, positions: jax.Array,
                valid: jax.Array, s, b: int):
    """First step of a block with the prefix cache: a full-canvas pass.

    Args:
      forward_fn: see :data:`FullForwardFn`.
      init_cache: ``(batch, max_len) -> KVCache``.
      params: model parameters.
      canvas, positions: int ``[B, T]``; valid: bool ``[B, T]`` (keys).
      s: int scalar, canvas slot of the block start.
      b: block size.

    Returns:
      ``(logits [B, b, V], cache)``: the block's logits from the whole canvas
      (exact), and a cache holding the K/V of every slot of this pass with
      only the prefix ``[0, s)`` (prompt and finished blocks) marked valid.
    """
    B, T = canvas.shape
    logits, cache = forward_fn(params, canvas, positions, full_info(valid), init_cache(B, T), True, s, b)
    keep = cache.info.valid & (jnp.arange(T)[None] < s)
    return logits, cache._replace(info=cache.info._replace(valid=keep))


def window_pass(forward_fn: FullForwardFn, params, canvas: jax.Array, positions: jax.Array, valid: jax.Array,
                cache, s, b: int, length: int, pad: int, further_horizon: Optional[int],
                prefix: Optional[int] = None) -> jax.Array:
    """A later step of a block: the window ``[s, s + length)`` against the cached prefix.

    Slots at or past ``w_end = min(s + b + further_horizon, T)`` (``T`` with
    ``further_horizon=None``) are invisible; the canvas gets ``pad``
    invisible slots at its end so a window near the end keeps its length.

    Args:
      forward_fn, params: as :func:`prefix_pass`.
      canvas, positions: int ``[B, T]``; valid: bool ``[B, T]`` (keys).
      cache: from :func:`prefix_pass` of this block.
      s: int scalar, canvas slot of the block start.
      b: block size; length: window length (``>= b``, static);
      pad: static, ``>= s + length - T`` for every ``s`` this is called with.
      further_horizon: window slots after the block, None = to the end.
      prefix: static, ``>= s``: only the cache slots ``[0, prefix)`` are read
        (None: all ``T``).

    Returns:
      float32 ``[B, b, V]``, the logits of the block's tokens.
    """
    T = canvas.shape[1]
    end = T if further_horizon is None else jnp.minimum(s + b + further_horizon, T)
    padded = lambda a, v: jnp.pad(a, ((0, 0), (0, pad)), constant_values=v) if pad else a
    sl = lambda a: lax.dynamic_slice_in_dim(a, s, length, axis=1)
    w_valid = sl(padded(valid, False)) & ((s + jnp.arange(length))[None] < end)
    if prefix is not None and prefix < T:
        cache = _cache_prefix(cache, prefix)
    return forward_fn(params, sl(padded(canvas, 0)), sl(padded(positions, 0)), full_info(w_valid), cache, False,
                      0, b)[0]


# --------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------


def _canvas_layout(cfg: FullSamplerConfig, prompts, prompt_valid):
    B, Lp = prompts.shape
    T = Lp + cfg.gen_length
    canvas = jnp.concatenate([prompts.astype(jnp.int32), jnp.full((B, cfg.gen_length), cfg.mask_id, jnp.int32)], 1)
    valid = jnp.concatenate([prompt_valid, jnp.ones((B, cfg.gen_length), bool)], axis=1)
    if cfg.compat == "reference":
        positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32)[None], (B, T))
        if cfg.family == "llada":
            valid = jnp.ones((B, T), bool)  # Q-F4: LLaDA passes no mask, pads are attended
    else:
        positions = jnp.where(valid, jnp.cumsum(valid, axis=1) - 1, 0).astype(jnp.int32)
    return canvas, positions, valid


def _generate(forward_fn: FullForwardFn, init_cache: Optional[Callable], cfg: FullSamplerConfig, params,
              prompts: jax.Array, prompt_valid: jax.Array, row_keys: jax.Array) -> Rollout:
    B, Lp = prompts.shape
    b, G = cfg.block_size, cfg.gen_length
    T, nb = Lp + G, cfg.num_blocks
    S_np = block_steps(cfg.total_steps, nb)
    S_tab = jnp.asarray(S_np)
    frac_tab = jnp.asarray(dream_fraction_table(S_np))
    max_iters = int(S_np.max()) if cfg.remasking != "threshold" else b + 1
    reference = cfg.compat == "reference"
    # LLaDA's reference always makes a second call in a block (its loop tests for masks after the call).
    forced_second = reference and cfg.family == "llada"
    if forced_second:
        max_iters = max(max_iters, 2)
    canvas, positions, valid = _canvas_layout(cfg, prompts, prompt_valid)
    info = full_info(valid)
    plan = window_plan(cfg, Lp) if cfg.use_cache else None
    slot = jnp.arange(T, dtype=jnp.int32)

    def run_model(ss, s, j, i):
        """Logits ``[B, b, V]`` of block ``j`` (starting at canvas slot ``s``) at in-block step ``i``."""
        if not cfg.use_cache:
            return forward_fn(params, ss["canvas"], positions, info, None, False, s, b)[0], ss["cache"]

        def full(_):
            return prefix_pass(forward_fn, init_cache, params, ss["canvas"], positions, valid, s, b)

        def window(length, prefix):
            return lambda cache: (window_pass(forward_fn, params, ss["canvas"], positions, valid, cache, s, b,
                                              length, plan.pad, cfg.further_horizon, prefix), cache)

        windows = [window(L, C) for L, C in zip(plan.lengths, plan.prefixes)]
        later = windows[0] if len(windows) == 1 else (
            lambda cache: lax.switch(jnp.asarray(plan.bucket, jnp.int32)[j], windows, cache))
        return lax.cond(i == 0, full, later, ss["cache"])

    def block_body(st):
        j = st["j"]
        s, off = Lp + j * b, j * b
        S_j = S_tab[j]
        blk_of = lambda c: lax.dynamic_slice_in_dim(c, s, b, axis=1)

        def step_cond(ss):
            active = ~st["stopped"] & jnp.any(blk_of(ss["canvas"]) == cfg.mask_id, axis=-1)
            go = (jnp.any(active) | (ss["i"] == 1)) if forced_second else jnp.any(active)
            return go & (ss["i"] < max_iters)

        def step_body(ss):
            i = ss["i"]
            blk = blk_of(ss["canvas"])
            masked = blk == cfg.mask_id
            active = ~st["stopped"] & jnp.any(masked, axis=-1)
            logits, cache = run_model(ss, s, j, i)
            keys = jax.vmap(jax.random.fold_in)(row_keys, ss["g"])
            tokens, conf, logp = jax.vmap(lambda k, z: sample_positions(cfg, k, z))(keys, logits)
            score = jnp.where(tokens == cfg.pad_id, conf / cfg.pad_target_penalty, conf)
            n_left = jnp.sum(masked, axis=-1).astype(jnp.float32)
            batch_masks = jnp.sum(jnp.where(active, n_left, 0.0)) / jnp.maximum(jnp.sum(active), 1)
            commit = select_commits(cfg, keys, score, masked, i, S_j, frac_tab[j, jnp.minimum(i, S_np.max() - 1)],
                                    batch_masks) & active[:, None]
            put = lambda a, v: lax.dynamic_update_slice_in_dim(a, v, off, axis=1)
            take = lambda a: lax.dynamic_slice_in_dim(a, off, b, axis=1)
            return dict(
                i=i + 1,
                canvas=lax.dynamic_update_slice_in_dim(ss["canvas"], jnp.where(commit, tokens, blk), s, axis=1),
                step=put(ss["step"], jnp.where(commit, (ss["g"] + 1)[:, None], take(ss["step"]))),
                logp=put(ss["logp"], jnp.where(commit, logp, take(ss["logp"]))),
                conf=put(ss["conf"], jnp.where(commit, conf, take(ss["conf"]))),
                # The reference snapshots the whole batch at every step: a shared counter.
                g=ss["g"] + (~st["stopped"] if reference else active).astype(jnp.int32),
                cache=cache)

        ss = lax.while_loop(step_cond, step_body, dict(
            i=jnp.zeros((), jnp.int32), canvas=st["canvas"], step=st["step"], logp=st["logp"], conf=st["conf"],
            g=st["g"], cache=st["cache"]))
        stopped, fill_from, canvas, step, g = st["stopped"], st["fill_from"], ss["canvas"], ss["step"], ss["g"]
        if cfg.stops_early:
            all_pad = jnp.all(blk_of(canvas) == cfg.pad_id, axis=-1)
            if cfg.compat == "reference":  # Q-F5: only when every row of the batch is PAD there
                newly = jnp.all(all_pad | stopped) & ~stopped
            else:
                newly = all_pad & ~stopped
            after = slot[None] >= s + b
            canvas = jnp.where(newly[:, None] & after, cfg.pad_id, canvas)
            # The fill is one more trace step (the reference's extra snapshot).
            step = jnp.where(newly[:, None] & after[:, Lp:], (g + 1)[:, None], step)
            g = g + newly.astype(jnp.int32)
            fill_from = jnp.where(newly, off + b, fill_from)
            stopped = stopped | newly
        return dict(j=j + 1, canvas=canvas, step=step, logp=ss["logp"], conf=ss["conf"], g=g, stopped=stopped,
                    fill_from=fill_from, cache=ss["cache"])

    zeros_f = jnp.zeros((B, G), jnp.float32)
    cache0 = init_cache(B, T) if cfg.use_cache else None
    st = lax.while_loop(lambda s_: (s_["j"] < nb) & jnp.any(~s_["stopped"]), block_body, dict(
        j=jnp.zeros((), jnp.int32), canvas=canvas, step=jnp.zeros((B, G), jnp.int32), logp=zeros_f, conf=zeros_f,
        g=jnp.zeros((B,), jnp.int32), stopped=jnp.zeros((B,), bool), fill_from=jnp.full((B,), G, jnp.int32),
        cache=cache0))
    tokens = st["canvas"][:, Lp:]
    lengths = st["fill_from"]
    if cfg.eos_id is not None:
        is_eos = (tokens == cfg.eos_id) & (jnp.arange(G)[None] < st["fill_from"][:, None])
        lengths = jnp.where(jnp.any(is_eos, -1), jnp.argmax(is_eos, -1) + 1, lengths)
    return Rollout(tokens, st["step"], st["logp"], st["conf"], lengths.astype(jnp.int32), st["g"])


def validate_full_prompts(prompts, prompt_valid, cfg: FullSamplerConfig, vocab_size: Optional[int] = None,
                          max_positions: Optional[int] = None) -> None:
    """Host-side checks before tracing; raises ``ValueError`` naming the problem.

    Args:
      prompts: int ``[B, Lp]`` left-padded prompt ids.
      prompt_valid: bool ``[B, Lp]``, True at real tokens (a suffix of each row,
        at least one per row).
      cfg: sampler settings.
      vocab_size: if given, special ids must lie inside it.
      max_positions: if given, prompt + response must fit.
    """
    if prompts.ndim != 2 or prompts.shape[1] < 1:
        raise ValueError(f"prompts must be [B, Lp] with Lp >= 1, got shape {tuple(prompts.shape)}")
    if tuple(prompt_valid.shape) != tuple(prompts.shape):
        raise ValueError(f"prompt_valid shape {tuple(prompt_valid.shape)} != prompts shape {tuple(prompts.shape)}")
    if not jnp.issubdtype(prompts.dtype, jnp.integer):
        raise ValueError(f"prompts must be integer token ids, got {prompts.dtype}")
    if vocab_size is not None:
        for name in ("mask_id", "pad_id", "eos_id"):
            v = getattr(cfg, name)
            if v is not None and not 0 <= v < vocab_size:
                raise ValueError(f"{name}={v} is outside the vocabulary [0, {vocab_size})")
    if max_positions is not None and prompts.shape[1] + cfg.gen_length > max_positions:
        raise ValueError(f"prompt length {prompts.shape[1]} + gen_length {cfg.gen_length} exceeds the model's "
                         f"max positions {max_positions}")
    try:
        pv = host_view(prompt_valid).astype(bool)
    except jax.errors.TracerArrayConversionError:
        return  # traced by an outer jit: cannot inspect values
    if np.any(pv[:, :-1] & ~pv[:, 1:]):
        raise ValueError("prompt_valid must mark a suffix of each row (prompts are left-padded)")
    if not np.all(pv[:, -1]):
        raise ValueError("every prompt needs at least one real token (prompt_valid[:, -1] is False)")


def make_full_sampler(forward_fn: FullForwardFn, init_cache: Optional[Callable], cfg: FullSamplerConfig, *,
                      vocab_size: Optional[int] = None, max_positions: Optional[int] = None):
    """Builds a compiled full-attention sampler.

    Args:
      forward_fn: see :data:`FullForwardFn`
        (:func:`tracerl_jax.models.full_sampler_forward_fn`).
      init_cache: ``(batch, max_len) -> KVCache``; needed with ``use_cache``.
      cfg: :class:`FullSamplerConfig`.
      vocab_size: for validating special ids; default: the model's, when
        ``forward_fn`` comes from :mod:`tracerl_jax.models` (it carries its
        ``model_config``).
      max_positions: for validating lengths; default: the model's, likewise.

    Returns:
      ``sample_fn(params, prompts [B,Lp], prompt_valid [B,Lp], rng=None,
      row_keys=None) -> Rollout`` (the block sampler's record: ``tokens``,
      ``step_map``, ``logprobs``, ``confidences`` ``[B, G]``, ``lengths``,
      ``num_steps`` ``[B]``). Pass one ``rng`` (split per row) or ``row_keys
      [B]``. The compiled program is reused for every call with the same shapes.
    """
    if cfg.use_cache and init_cache is None:
        raise ValueError("use_cache=True needs init_cache")
    vocab_size, max_positions = model_limits(forward_fn, vocab_size, max_positions)
    core = jax.jit(lambda params, prompts, valid, keys: _generate(
        forward_fn, init_cache, cfg, params, prompts, valid, keys))

    def sample_fn(params, prompts, prompt_valid, rng=None, row_keys=None) -> Rollout:
        prompts = jnp.asarray(prompts)
        prompt_valid = jnp.asarray(prompt_valid, bool)
        validate_full_prompts(prompts, prompt_valid, cfg, vocab_size, max_positions)
        row_keys = row_keys_for(prompts.shape[0], rng, row_keys,
                                random=cfg.temperature != 0.0 or cfg.target == "random" or cfg.alg_temp > 0,
                                what="temperature > 0, target='random' or alg_temp > 0")
        return core(params, prompts.astype(jnp.int32), prompt_valid, row_keys)

    # Ahead-of-time lowering of the compiled program (tracerl_jax.memory_plan): ``sample_fn.lower_core(
    # params, prompts int32 [B, Lp], prompt_valid bool [B, Lp], row_keys [B])`` takes abstract
    # (ShapeDtypeStruct, sharded) arguments and returns the ``jax.stages.Lowered``; nothing runs.
    sample_fn.lower_core = core.lower
    return sample_fn
