"""Block-diffusion generation with trajectory recording (TraDo / SDAR, docs/algorithms.md §1).

The whole generation is one compiled program: a ``lax.while_loop`` over
blocks, an inner ``lax.while_loop`` over denoising steps, static shapes.

Canvas. Every row lives on one fixed canvas ``[prompt region (Lg) | response
region (G)]`` whose block boundaries are shared by all rows, so committing a
block is a single ``dynamic_update_slice`` into the KV cache. Left padding is
masked as keys (``MaskInfo.valid``) and RoPE positions count real tokens only,
so a row's result does not depend on its neighbours.

Block alignment (``compat``):

* ``"recommended"`` (default): the prompt is right-aligned to the response
  start and prefilled whole, with prompt blocks counted back from its end;
  response blocks start at the response start. This is exactly the training
  layout of §3.3, so the trainer re-creates each token's decoding context
  (the agreement test proves it).
* ``"reference"``: blocks are aligned to absolute position 0 of the unpadded
  prompt as the reference engine does (§1.2): ``floor(P/b)*b`` prompt tokens
  are prefilled and the prompt tail shares the first denoising block with the
  first response tokens. It also reproduces quirk Q-S1 (a quota larger than
  the masks left overwrites committed/prompt-tail tokens). The reference
  trainer does not describe this context exactly (Q-T3).

KV cache writes. A finished block's clean K/V enter the cache once, before
the next block reads it. By default (``fuse_cache_write``) that happens in
the next block's first denoising forward, over ``[finished block (clean) |
new block (noised)]``: the clean queries cannot see the noised keys, so the
written K/V are those a forward of the finished block alone would give, and
the K/V written for the noised half are dropped again
(:func:`tracerl_jax.kv_cache.truncate`). This saves one forward per block.

Trajectory. ``step_map`` holds, per response token, the 1-based, per-row
global index of the denoising forward pass that committed it (§1.8): ids
restart nowhere, grow across blocks, have no gaps, and saving/prefill passes
do not count.

Stopping (§1.7, Q-S7): when a block is committed it is scanned in order; an
EOS is appended and ends the row, a token beyond ``max_new_tokens`` ends it
without being appended. Tokens of that final block after the stop are not
part of the completion (``lengths``), but the rollout keeps them, with their
step ids, as *context*: they were on the canvas while the completion's last
tokens were decoded, and the trainer needs them to reproduce that context.
Positions after the final block hold ``pad_id`` and step id 0.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from tracerl_jax import kv_cache as kvc
from tracerl_jax.attention import MaskInfo, generation_info
from tracerl_jax.sampling import remasking
from tracerl_jax.sampling.token_sampling import row_keys_for, sample

COMPAT = ("recommended", "reference")


@dataclasses.dataclass(frozen=True)
class BlockSamplerConfig:
    """Settings of the block-diffusion sampler (hashable, static under jit).

    Attributes:
      gen_length: response canvas length; a multiple of ``block_size``.
      mask_id, eos_id, pad_id: special token ids.
      block_size: ``b``.
      steps_per_block: ``S_blk``; the per-step quotas follow §1.3.
      strategy: ``sequential`` | ``low_confidence_static`` |
        ``low_confidence_dynamic``.
      threshold: ``tau`` for ``low_confidence_dynamic`` (strict ``>``).
      temperature: 0 = greedy.
      top_k: 0 = off.
      top_p: 1.0 = off.
      max_new_tokens: completion budget (default ``gen_length``).
      ignore_eos: keep decoding through EOS.
      compat: ``"recommended"`` or ``"reference"`` (module docstring).
      fuse_cache_write: write a finished block's K/V in the next block's
        first denoising forward (one forward of ``[final block | noised
        block]``) instead of in a forward of its own. The same function up to
        float rounding (the final block's queries cannot see the noised
        keys, the noised queries see what they saw before); it saves one
        forward per block: 20% of the forwards of ``low_confidence_static``
        with ``b = S``, half of them when blocks commit in one step.
    """

    gen_length: int
    mask_id: int
    eos_id: int
    pad_id: int
    block_size: int = 4
    steps_per_block: int = 4
    strategy: str = "low_confidence_dynamic"
    threshold: float = 0.9
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    max_new_tokens: Optional[int] = None
    ignore_eos: bool = False
    compat: str = "recommended"
    fuse_cache_write: bool = True

    def __post_init__(self):
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        if self.steps_per_block < 1:
            raise ValueError(f"steps_per_block must be >= 1, got {self.steps_per_block}")
        if self.gen_length < 1 or self.gen_length % self.block_size:
            raise ValueError(
                f"gen_length ({self.gen_length}) must be a positive multiple of block_size ({self.block_size})")
        remasking.check_strategy(self.strategy)
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1] (a confidence; strict > for low_confidence_dynamic), "
                             f"got {self.threshold}")
        if self.compat not in COMPAT:
            raise ValueError(f"compat must be one of {COMPAT}, got {self.compat!r}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens is not None and not 1 <= self.max_new_tokens <= self.gen_length:
            raise ValueError(f"max_new_tokens must be in [1, gen_length={self.gen_length}], got {self.max_new_tokens}")

    @property
    def budget(self) -> int:
        return self.gen_length if self.max_new_tokens is None else self.max_new_tokens

    @property
    def canvas_length(self) -> int:
        """Response region ``G``: one extra block in reference mode holds the prompt tail."""
        return self.gen_length + (self.block_size if self.compat == "reference" else 0)


class Rollout(NamedTuple):
    """Generated responses and their trajectories.

    Attributes:
      tokens: int32 ``[B, G]`` response tokens: the completion, then the
        context-only tail of the final block, then ``pad_id``.
      step_map: int32 ``[B, G]`` 1-based global step id per token (0 after the
        final block).
      logprobs: float32 ``[B, G]`` ``log pi(token)`` at temperature 1 under the
        context the token was committed in (0 where no token).
      confidences: float32 ``[B, G]`` confidence at commit (§1.4).
      lengths: int32 ``[B]`` completion lengths (EOS included).
      num_steps: int32 ``[B]`` denoising forward passes per row (the largest
        step id).
    """

    tokens: jax.Array
    step_map: jax.Array
    logprobs: jax.Array
    confidences: jax.Array
    lengths: jax.Array
    num_steps: jax.Array

    @property
    def completion_mask(self) -> jax.Array:
        """bool ``[B, G]``: positions inside the completion."""
        return jnp.arange(self.tokens.shape[1])[None] < self.lengths[:, None]


ForwardFn = Callable[..., tuple]
"""``forward_fn(params, tokens [B,Q], positions [B,Q], mask_info, cache, write_cache) -> (logits [B,Q,V], cache)``.

A function with the attribute ``supports_logits_from = True`` also takes the
keyword ``logits_from`` (a Python int) and then returns logits for positions
``>= logits_from`` only (:func:`tracerl_jax.models.sampler_forward_fn` does)."""


def _prompt_layout(prompt_valid: jax.Array, cfg: BlockSamplerConfig, Lg: int):
    """Per-row canvas start of the prompt and length of its tail in block 0."""
    b = cfg.block_size
    P = jnp.sum(prompt_valid, axis=-1).astype(jnp.int32)
    if cfg.compat == "reference":
        n_prefill = (P // b) * b
        return Lg - n_prefill, P - n_prefill, P
    return Lg - P, jnp.zeros_like(P), P


def _generate(forward_fn: ForwardFn, init_cache: Callable, cfg: BlockSamplerConfig, params,
              prompts: jax.Array, prompt_valid: jax.Array, row_keys: jax.Array,
              row_budgets: Optional[jax.Array] = None) -> Rollout:
    B, Lp = prompts.shape
    # Completion budget per row (§1.7's max_tokens): the config's, or one per row (a forced stop).
    budget = jnp.full((B,), cfg.budget, jnp.int32) if row_budgets is None else row_budgets.astype(jnp.int32)
    b, S = cfg.block_size, cfg.steps_per_block
    G = cfg.canvas_length
    Lg = -(-Lp // b) * b
    T = Lg + G
    num_blocks = G // b
    quotas = jnp.asarray(remasking.step_quotas(b, S))
    overwrite = cfg.compat == "reference"

    start, tail, P = _prompt_layout(prompt_valid, cfg, Lg)
    # Real prompt tokens sit at [Lp-P, Lp) of the left-padded input; move them to [start, start+P).
    c = jnp.arange(T)[None]
    src = c - start[:, None] + (Lp - P)[:, None]
    is_prompt = (c >= start[:, None]) & (c < (start + P)[:, None])
    gathered = jnp.take_along_axis(prompts, jnp.clip(src, 0, Lp - 1), axis=1)
    canvas = jnp.where(is_prompt, gathered, jnp.where(c < Lg, cfg.pad_id, cfg.mask_id)).astype(jnp.int32)
    positions = jnp.maximum(c - start[:, None], 0).astype(jnp.int32)
    canvas_valid = c >= start[:, None]

    cache = init_cache(B, T)
    if Lg > 0:
        info = generation_info(canvas_valid[:, :Lg], b, grid_start=Lg)
        _, cache = forward_fn(params, canvas[:, :Lg], positions[:, :Lg], info, cache, True)

    resp = canvas[:, Lg:]
    zeros_f = jnp.zeros((B, G), jnp.float32)
    state0 = dict(
        j=jnp.zeros((), jnp.int32), resp=resp, step=jnp.zeros((B, G), jnp.int32), logp=zeros_f,
        conf=zeros_f, finished=jnp.zeros((B,), bool), appended=jnp.zeros((B,), jnp.int32),
        blocks_done=jnp.zeros((B,), jnp.int32), g=jnp.zeros((B,), jnp.int32), cache=cache,
        # The finished block whose K/V are not in the cache yet (fuse_cache_write).
        pend=jnp.zeros((), bool), pend_blk=jnp.zeros((B, b), jnp.int32), pend_pos=jnp.zeros((B, b), jnp.int32))
    ones_bb = jnp.ones((B, b), bool)
    clean_info = lambda j: MaskInfo(jnp.full((B, b), j, jnp.int32), jnp.zeros((B, b), bool), ones_bb)

    def block_body(st):
        j = st["j"]
        off = j * b
        live = ~st["finished"]
        blk_pos = lax.dynamic_slice_in_dim(positions, Lg + off, b, axis=1)
        sl = lambda a: lax.dynamic_slice_in_dim(a, off, b, axis=1)
        noised_info = MaskInfo(jnp.full((B, b), j, jnp.int32), ones_bb, ones_bb)

        def step_cond(ss):
            active = live & jnp.any(ss["blk"] == cfg.mask_id, axis=-1)
            return (ss["s"] < S) & jnp.any(active)

        def denoise(ss, logits):
            masked = ss["blk"] == cfg.mask_id
            active = live & jnp.any(masked, axis=-1)
            keys = jax.vmap(jax.random.fold_in)(row_keys, ss["g"])
            out = jax.vmap(lambda k, z: sample(k, z, cfg.temperature, cfg.top_k, cfg.top_p,
                                                                 exclude_id=cfg.mask_id))(keys, logits)
            commit = remasking.select(cfg.strategy, out.confidence, masked, quotas[ss["s"]],
                                      cfg.threshold, overwrite_committed=overwrite)
            commit = commit & active[:, None]
            first = commit & (ss["bstep"] == 0)
            return dict(
                s=ss["s"] + 1,
                blk=jnp.where(commit, out.tokens, ss["blk"]),
                bstep=jnp.where(first, (ss["g"] + 1)[:, None], ss["bstep"]),
                blogp=jnp.where(commit, out.logprob, ss["blogp"]),
                bconf=jnp.where(commit, out.confidence, ss["bconf"]),
                g=ss["g"] + active.astype(jnp.int32))

        ss = dict(s=jnp.zeros((), jnp.int32), blk=sl(st["resp"]), bstep=sl(st["step"]), blogp=sl(st["logp"]),
                  bconf=sl(st["conf"]), g=st["g"])
        cache = st["cache"]
        if cfg.fuse_cache_write:
            # First step of the block, peeled: one forward of [pending block (clean) | this block
            # (noised)] writes the pending K/V and gives this block's logits; the write of the noised
            # half is dropped. Without a pending block (block 0) the clean half is invalid padding that
            # nothing attends to and nothing is kept of. No lax.cond: a branch that passes the cache
            # through costs XLA a copy of it per block. The step is safe to run unconditionally: a live
            # row always has masks at a block's start, and with none active it commits nothing.
            pend_info = MaskInfo(jnp.full((B, b), j - 1, jnp.int32), jnp.zeros((B, b), bool),
                                 jnp.broadcast_to(st["pend"], (B, b)))
            toks = jnp.concatenate([st["pend_blk"], ss["blk"]], axis=1)
            pos = jnp.concatenate([st["pend_pos"], blk_pos], axis=1)
            if getattr(forward_fn, "supports_logits_from", False):  # no vocabulary projection of the clean half
                logits, c = forward_fn(params, toks, pos, pend_info.concat(noised_info), cache, True, logits_from=b)
            else:
                logits, c = forward_fn(params, toks, pos, pend_info.concat(noised_info), cache, True)
                logits = logits[:, b:]
            ss = denoise(ss, logits)
            cache = kvc.truncate(c, cache.length + b * st["pend"].astype(jnp.int32))

        def step_body(carry):
            ss, cache = carry
            return denoise(ss, forward_fn(params, ss["blk"], blk_pos, noised_info, cache, False)[0]), cache

        # The cache rides in the carry, unchanged: closed over, XLA copied the whole cache into the
        # loop once per block when the fused write had just produced it.
        ss, cache = lax.while_loop(lambda carry: step_cond(carry[0]), step_body, (ss, cache))
        blk = ss["blk"]

        # Commit scan (§1.7): EOS is checked before the budget, so EOS at the cap is kept.
        idx = off + jnp.arange(b)[None] - tail[:, None]
        is_resp = idx >= 0
        is_eos = (blk == cfg.eos_id) & (not cfg.ignore_eos)
        stop = is_resp & (is_eos | (idx >= budget[:, None]))
        first_stop = jnp.where(jnp.any(stop, -1), jnp.argmax(stop, -1), b)[:, None]
        pos_in = jnp.arange(b)[None]
        appended = is_resp & ((pos_in < first_stop) | ((pos_in == first_stop) & is_eos))
        n_app = st["appended"] + jnp.where(live, jnp.sum(appended, -1), 0).astype(jnp.int32)
        finished = st["finished"] | (live & (jnp.any(stop, -1) | (n_app >= budget)))

        more = jnp.any(~finished) & (j + 1 < num_blocks)   # another block follows: it needs this one's K/V
        if not cfg.fuse_cache_write:
            save = lambda c: forward_fn(params, blk, blk_pos, clean_info(j), c, True)[1]
            cache = lax.cond(more, save, lambda c_: c_, cache)
        up = lambda a, v: lax.dynamic_update_slice_in_dim(a, v, off, axis=1)
        return dict(
            j=j + 1, resp=up(st["resp"], blk), step=up(st["step"], ss["bstep"]), logp=up(st["logp"], ss["blogp"]),
            conf=up(st["conf"], ss["bconf"]), finished=finished, appended=n_app,
            blocks_done=st["blocks_done"] + live.astype(jnp.int32), g=ss["g"], cache=cache,
            pend=more & cfg.fuse_cache_write, pend_blk=blk, pend_pos=blk_pos)

    st = lax.while_loop(lambda s: (s["j"] < num_blocks) & jnp.any(~s["finished"]), block_body, state0)

    # Response coordinates: drop the prompt tail (reference mode) and blank everything past the final block.
    shift = jnp.arange(G)[None] + tail[:, None]
    take = lambda a: jnp.take_along_axis(a, jnp.clip(shift, 0, G - 1), axis=1)
    in_run = shift < (st["blocks_done"] * b)[:, None]
    tokens = jnp.where(in_run, take(st["resp"]), cfg.pad_id)
    step = jnp.where(in_run, take(st["step"]), 0)
    logp = jnp.where(in_run, take(st["logp"]), 0.0)
    conf = jnp.where(in_run, take(st["conf"]), 0.0)
    return Rollout(tokens.astype(jnp.int32), step.astype(jnp.int32), logp, conf, st["appended"], st["g"])


def validate_prompts(prompts, prompt_valid, cfg: BlockSamplerConfig, vocab_size: Optional[int] = None,
                     max_positions: Optional[int] = None) -> None:
    """Host-side checks before tracing; raises ``ValueError`` naming the problem.

    Args:
      prompts: int ``[B, Lp]`` left-padded prompt ids.
      prompt_valid: bool ``[B, Lp]``, True at real tokens (a suffix of each row).
      cfg: sampler settings.
      vocab_size: if given, special ids must lie inside it.
      max_positions: if given, prompt + response must fit.
    """
    if prompts.ndim != 2:
        raise ValueError(f"prompts must be [B, Lp], got shape {tuple(prompts.shape)}")
    if tuple(prompt_valid.shape) != tuple(prompts.shape):
        raise ValueError(f"prompt_valid shape {tuple(prompt_valid.shape)} != prompts shape {tuple(prompts.shape)}")
    if not jnp.issubdtype(prompts.dtype, jnp.integer):
        raise ValueError(f"prompts must be integer token ids, got {prompts.dtype}")
    if vocab_size is not None:
        for name in ("mask_id", "eos_id", "pad_id"):
            v = getattr(cfg, name)
            if not 0 <= v < vocab_size:
                raise ValueError(f"{name}={v} is outside the vocabulary [0, {vocab_size})")
    if max_positions is not None:
        Lp = prompts.shape[1]
        need = -(-Lp // cfg.block_size) * cfg.block_size + cfg.canvas_length
        if need > max_positions:
            raise ValueError(f"prompt length {Lp} + generation {cfg.canvas_length} (= {need} after block padding) "
                             f"exceeds the model's max positions {max_positions}")
    try:
        pv = host_view(prompt_valid).astype(bool)
    except jax.errors.TracerArrayConversionError:
        pv = None  # traced by an outer jit: cannot inspect values
    if pv is not None:
        if pv.shape[1] and np.any(pv[:, :-1] & ~pv[:, 1:]):
            raise ValueError("prompt_valid must mark a suffix of each row (prompts are left-padded)")
        if pv.shape[1] and not np.all(pv[:, -1]):
            raise ValueError("every prompt needs at least one real token (prompt_valid[:, -1] is False)")


def validate_row_budgets(row_budgets, batch: int, cfg: BlockSamplerConfig) -> Optional[jax.Array]:
    """Checks per-row completion budgets before tracing; returns them as int32 ``[batch]`` (or None).

    Raises:
      ValueError: naming ``row_budgets``: not ``[batch]`` integers, or a value
        outside ``[1, cfg.budget]``.
    """
    if row_budgets is None:
        return None
    shape = tuple(np.shape(row_budgets))
    if shape != (batch,):
        raise ValueError(f"row_budgets must have shape ({batch},) (one budget per row), got {shape}")
    if not jnp.issubdtype(jnp.asarray(row_budgets).dtype, jnp.integer):
        raise ValueError(f"row_budgets must be integers, got {jnp.asarray(row_budgets).dtype}")
    try:
        rb = host_view(row_budgets)
    except jax.errors.TracerArrayConversionError:
        rb = None
    if rb is not None and rb.size and (rb.min() < 1 or rb.max() > cfg.budget):
        raise ValueError(f"row_budgets must lie in [1, {cfg.budget}] (max_new_tokens or gen_length), "
                         f"got range [{rb.min()}, {rb.max()}]")
    return jnp.asarray(row_budgets, jnp.int32)


def host_view(x) -> np.ndarray:
    """The values of ``x`` this process can see: all of a local array, this process's shards of a global one
    (row-wise checks of a multi-process batch then run on each process's own rows)."""
    if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer) and not x.is_fully_addressable:
        return np.concatenate([np.asarray(s.data) for s in x.addressable_shards])
    return np.asarray(x)


def model_limits(forward_fn, vocab_size: Optional[int], max_positions: Optional[int]):
    """``(vocab_size, max_positions)``: the given ones, else those of the model behind ``forward_fn``.

    The forward functions of :mod:`tracerl_jax.models` carry their
    ``model_config``, so a sampler built on them always checks its special
    ids and lengths against the model.
    """
    model_cfg = getattr(forward_fn, "model_config", None)
    if model_cfg is not None:
        vocab_size = model_cfg.vocab_size if vocab_size is None else vocab_size
        max_positions = model_cfg.max_position_embeddings if max_positions is None else max_positions
    return vocab_size, max_positions


def make_block_sampler(forward_fn: ForwardFn, init_cache: Callable[[int, int], kvc.KVCache],
                       cfg: BlockSamplerConfig, *, vocab_size: Optional[int] = None,
                       max_positions: Optional[int] = None):
    """Builds a compiled block-diffusion sampler.

    Args:
      forward_fn: ``(params, tokens, positions, mask_info, cache, write_cache)
        -> (logits [B,Q,V], cache)``; see :func:`tracerl_jax.models.sampler_forward_fn`.
      init_cache: ``(batch, max_len) -> KVCache`` sized for the canvas.
      cfg: :class:`BlockSamplerConfig`.
      vocab_size: for validating special ids; default: the model's, when
        ``forward_fn`` comes from :mod:`tracerl_jax.models` (it carries its
        ``model_config``).
      max_positions: for validating lengths; default: the model's, likewise.

    Returns:
      ``sample_fn(params, prompts [B,Lp], prompt_valid [B,Lp], rng=None,
      row_keys=None, row_budgets=None) -> Rollout``. Pass either one ``rng``
      (split per row) or ``row_keys [B]`` (reproducible per row, whatever the
      batch). ``row_budgets`` (int ``[B]``, each in ``[1, budget]``) gives
      each row its own completion budget (``max_new_tokens`` per row; the
      forced stop of ``benchmarks/sampler.py --workload longtail``). The
      compiled program is reused for every call with the same shapes.
    """
    vocab_size, max_positions = model_limits(forward_fn, vocab_size, max_positions)
    core = jax.jit(lambda params, prompts, valid, keys, row_budgets=None: _generate(
        forward_fn, init_cache, cfg, params, prompts, valid, keys, row_budgets))

    def sample_fn(params, prompts, prompt_valid, rng=None, row_keys=None, row_budgets=None) -> Rollout:
        prompts = jnp.asarray(prompts)
        prompt_valid = jnp.asarray(prompt_valid, bool)
        validate_prompts(prompts, prompt_valid, cfg, vocab_size, max_positions)
        row_budgets = validate_row_budgets(row_budgets, prompts.shape[0], cfg)
        row_keys = row_keys_for(prompts.shape[0], rng, row_keys, random=cfg.temperature != 0.0)
        if row_budgets is None:   # the program memory_plan lowers (lower_core's four arguments)
            return core(params, prompts.astype(jnp.int32), prompt_valid, row_keys)
        return core(params, prompts.astype(jnp.int32), prompt_valid, row_keys, row_budgets)

    # Ahead-of-time lowering of the compiled program (tracerl_jax.memory_plan): ``sample_fn.lower_core(
    # params, prompts int32 [B, Lp], prompt_valid bool [B, Lp], row_keys [B])`` takes abstract
    # (ShapeDtypeStruct, sharded) arguments and returns the ``jax.stages.Lowered``; nothing runs.
    sample_fn.lower_core = core.lower
    return sample_fn
