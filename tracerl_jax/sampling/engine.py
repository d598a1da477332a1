"""A slot engine: continuous batching of block-diffusion rollouts (docs/algorithms.md §1).

The block sampler runs a static batch in lockstep: a row waits for the slowest
row of its block, and a finished row keeps its place until the longest
response ends. The engine instead keeps a fixed number of *slots*. Each slot
serves one response at a time and has its own prompt, current block, steps
taken in that block, PRNG key and KV-cache region; a slot whose response ends
(EOS or budget) takes the next waiting prompt of a queue. The whole run is one
compiled ``lax.while_loop`` with static shapes, and every iteration is ONE
forward of ``b`` query positions for all slots, each slot doing what it needs:

* ``prefill``: one block of its prompt (clean, block-causal) written to its
  cache; logits unused;
* ``save``: its block finished last, clean, written to its cache (the
  block sampler's cache-saving forward, §1.6);
* ``denoise``: one denoising step of its current block (nothing written);
* ``idle``: nothing (no prompts left); all positions invalid.

With ``EngineConfig.fuse_cache_write`` every forward has ``2b`` positions
instead: a prefill writes two prompt blocks, and a denoising step runs
``[pending clean block | noised block]``, writing the block finished last (or
the prompt's last block) in the same forward as the block sampler's fused
write does; without one the clean half is invalid padding whose K/V are
dropped again. That saves a slot-forward per block but doubles every
forward; on CPU the b-wide engine measured as fast or slightly faster on both
benchmark workloads (benchmarks/README.md, "Slot engine").

Per-slot cache cursors. The KV cache has one write cursor per batch, so the
forward runs ``vmap``-ed over slots, each slot a batch of one with its own
:class:`~tracerl_jax.kv_cache.KVCache` (its own ``length``). A slot's cache
holds exactly what the block sampler's cache holds for that prompt alone, at
the same indices: the prompt region ``[0, ceil(P/b) b)`` (left padding of its
first block invalid), then response block ``j`` at ``ceil(P/b) b + j b``; one
extra block of slack at the end takes the dropped half of a write.

Same trajectories. A response sees the forward inputs the block sampler gives
that prompt alone (tokens, RoPE positions, block ids, validity), its PRNG key
is its own (``fold_in(key, g)`` with ``g`` its own step counter), and the
step map, commit scan and stopping rules are the block sampler's. Outputs are
therefore equal to those of :func:`make_block_sampler` on the prompt alone up
to float32 rounding: the engine's attention reduces over a longer key axis
(the slot's cache length, the padding half of a step) and prefills in chunks,
so sums run in another order; a sampled token differs only where that
rounding flips a comparison (tests/test_engine.py).

Only the ``"recommended"`` block alignment is supported (the prompt
right-aligned to the response start); ``BlockSamplerConfig.fuse_cache_write``
is not read (the engine's own flag decides; both give the same trajectories).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from tracerl_jax import kv_cache as kvc
from tracerl_jax.attention import MaskInfo
from tracerl_jax.sampling import remasking
from tracerl_jax.sampling.block_sampler import (BlockSamplerConfig, ForwardFn, Rollout, host_view, model_limits,
                                                validate_prompts, validate_row_budgets)
from tracerl_jax.sampling.token_sampling import row_keys_for, sample


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """Shape of the slot engine (hashable, static under jit).

    Attributes:
      num_slots: responses decoded at once (the forward's batch).
      max_prompt_len: a slot's prompt budget in tokens; a queued prompt may
        be at most this long.
      cache_tokens: KV-cache slots available for all slots together (None:
        exactly what ``num_slots`` slots need). Each slot needs
        ``ceil(max_prompt_len / b) b + gen_length + b`` of them.
      fuse_cache_write: every forward has ``2b`` query positions and a
        finished block's K/V are written in its slot's next denoising
        forward (``[pending clean | noised]``, as the block sampler's fused
        write); prompts prefill two blocks per forward. Default False: ``b``
        positions, and a finished block is written by a forward of its own
        in its slot (one more slot-forward per block, each half the size);
        as fast or slightly faster on CPU (benchmarks/README.md, "Slot engine").
    """

    num_slots: int
    max_prompt_len: int
    cache_tokens: Optional[int] = None
    fuse_cache_write: bool = False

    def __post_init__(self):
        for name in ("num_slots", "max_prompt_len"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if self.cache_tokens is not None and (not isinstance(self.cache_tokens, int) or self.cache_tokens < 1):
            raise ValueError(f"cache_tokens must be an int >= 1 or None, got {self.cache_tokens!r}")

    def slot_cache_len(self, cfg: BlockSamplerConfig) -> int:
        """KV-cache slots one engine slot needs: its prompt region, the response, one block of slack."""
        b = cfg.block_size
        return -(-self.max_prompt_len // b) * b + cfg.gen_length + b


class EngineStats(NamedTuple):
    """What one engine run did (for benchmarks).

    Attributes:
      forwards: int32 scalar, forwards run (loop iterations).
      slot_forwards: int32 scalar, ``forwards x num_slots``.
      busy_slot_forwards: int32 scalar, slot-forwards that advanced a live
        response (a prefill chunk, a finished block's cache write or a
        denoising step); the rest were idle (no prompt left to take).
      denoise_slot_forwards: int32 scalar, the denoising steps among them.
    """

    forwards: jax.Array
    slot_forwards: jax.Array
    busy_slot_forwards: jax.Array
    denoise_slot_forwards: jax.Array


def check_engine(cfg: BlockSamplerConfig, engine: EngineConfig) -> None:
    """Host-side checks of the engine settings; raises ``ValueError`` naming the field."""
    if not isinstance(engine, EngineConfig):
        raise ValueError(f"engine must be an EngineConfig, got {type(engine).__name__}")
    if cfg.compat != "recommended":
        raise ValueError(f"the slot engine supports compat='recommended' only, got compat={cfg.compat!r}")
    if engine.cache_tokens is not None:
        per_slot = engine.slot_cache_len(cfg)
        if engine.num_slots * per_slot > engine.cache_tokens:
            raise ValueError(f"num_slots={engine.num_slots} slots need {engine.num_slots * per_slot} cache tokens "
                             f"({per_slot} each); cache_tokens={engine.cache_tokens} holds "
                             f"{engine.cache_tokens // per_slot} slots")


def validate_queue(prompts, prompt_valid, row_keys, cfg: BlockSamplerConfig, engine: EngineConfig,
                   vocab_size: Optional[int] = None, max_positions: Optional[int] = None) -> None:
    """Host-side checks of a refill queue before tracing; raises ``ValueError`` naming the argument.

    Args:
      prompts: int ``[N, Lq]`` left-padded prompt ids (the queue).
      prompt_valid: bool ``[N, Lq]``, True at real tokens.
      row_keys: ``[N]`` PRNG keys (one per response) or None.
      cfg, engine: the sampler and engine settings.
      vocab_size, max_positions: as :func:`validate_prompts`.
    """
    validate_prompts(prompts, prompt_valid, cfg, vocab_size, None)
    if prompts.shape[0] < 1:
        raise ValueError("prompts (the refill queue) must hold at least one prompt, got shape "
                         f"{tuple(prompts.shape)}")
    if row_keys is not None and tuple(row_keys.shape[:1]) != (prompts.shape[0],):
        raise ValueError(f"row_keys must hold one key per queued prompt ({prompts.shape[0]}), "
                         f"got shape {tuple(row_keys.shape)}")
    Lq = prompts.shape[1]
    if Lq > engine.max_prompt_len:
        try:
            longest = int(np.max(np.sum(host_view(prompt_valid), axis=-1)))
        except jax.errors.TracerArrayConversionError:
            longest = Lq
        if longest > engine.max_prompt_len:
            raise ValueError(f"prompts: a prompt of {longest} tokens exceeds the slot's prompt budget "
                             f"max_prompt_len={engine.max_prompt_len}")
    if max_positions is not None:
        b = cfg.block_size
        need = -(-min(Lq, engine.max_prompt_len) // b) * b + cfg.canvas_length
        if need > max_positions:
            raise ValueError(f"prompt budget {engine.max_prompt_len} + generation {cfg.canvas_length} "
                             f"(= {need} after block padding) exceeds the model's max positions {max_positions}")


def _slot_cache(init_cache: Callable, num_slots: int, length: int) -> kvc.KVCache:
    """``num_slots`` caches of batch one, stacked on a leading slot axis (every leaf, ``length`` too)."""
    return jax.vmap(lambda _: init_cache(1, length))(jnp.arange(num_slots))


def _run(forward_fn: ForwardFn, init_cache: Callable, cfg: BlockSamplerConfig, engine: EngineConfig, params,
         prompts: jax.Array, prompt_valid: jax.Array, row_keys: jax.Array, row_budgets: Optional[jax.Array]):
    N, Lq = prompts.shape
    if row_budgets is None:
        row_budgets = jnp.full((N,), cfg.budget, jnp.int32)
    S, b, Sb = engine.num_slots, cfg.block_size, cfg.steps_per_block
    G = cfg.gen_length
    num_blocks = G // b
    T = engine.slot_cache_len(cfg)
    quotas = jnp.asarray(remasking.step_quotas(b, Sb))
    lengths_q = jnp.sum(prompt_valid, axis=-1).astype(jnp.int32)
    ar_b, ar_2b, ar_G = jnp.arange(b), jnp.arange(2 * b), jnp.arange(G)

    def prompt_piece(st, first_block, width):
        """Tokens, positions, block ids and validity of prompt canvas ``[first_block b, +width)`` per slot.

        The canvas is the block sampler's for the prompt alone: ``Lg = ceil(P/b) b``, the prompt at
        ``[Lg - P, Lg)``, RoPE position = index among real tokens, blocks right-aligned to the prompt end.
        """
        P, nbp = st["P"], st["nbp"]
        c = first_block[:, None] * b + jnp.arange(width)[None]
        start = nbp * b - P
        src = c + (Lq - nbp * b)[:, None]
        toks = jnp.take_along_axis(st["prompt"], jnp.clip(src, 0, Lq - 1), axis=1)
        valid = (c >= start[:, None]) & (src < Lq)
        toks = jnp.where(valid, toks, cfg.pad_id).astype(jnp.int32)
        pos = jnp.maximum(c - start[:, None], 0).astype(jnp.int32)
        blk = (jnp.floor_divide(c, b) - nbp[:, None]).astype(jnp.int32)
        return toks, pos, blk, valid

    def refill(st, free):
        """Free slots take the next queued prompts, in slot order; the rest go idle."""
        rank = jnp.cumsum(free) - 1
        idx = st["next"] + rank
        take = free & (idx < N)
        idx_c = jnp.clip(idx, 0, N - 1)
        P = lengths_q[idx_c]
        nbp = -(-P // b)
        sel = lambda new, old: jnp.where(take.reshape(take.shape + (1,) * (old.ndim - 1)), new, old)
        cache = st["cache"]
        cache = cache._replace(length=jnp.where(free, 0, cache.length),
                               info=cache.info._replace(valid=cache.info.valid & ~free[:, None, None]))
        new = dict(st)
        new.update(
            cache=cache, next=st["next"] + jnp.sum(take).astype(jnp.int32),
            live=jnp.where(free, take, st["live"]), resp=sel(idx_c, st["resp"]),
            prompt=sel(prompts[idx_c], st["prompt"]), P=sel(P, st["P"]), nbp=sel(nbp, st["nbp"]),
            rem=sel(nbp, st["rem"]), j=sel(jnp.zeros_like(P), st["j"]), s=sel(jnp.zeros_like(P), st["s"]),
            g=sel(jnp.zeros_like(P), st["g"]), budget=sel(row_budgets[idx_c], st["budget"]),
            appended=sel(jnp.zeros_like(P), st["appended"]),
            key=_select_keys(take, row_keys[idx_c], st["key"]),
            blk=jnp.where(take[:, None], cfg.mask_id, st["blk"]), bstep=jnp.where(take[:, None], 0, st["bstep"]),
            blogp=jnp.where(take[:, None], 0.0, st["blogp"]), bconf=jnp.where(take[:, None], 0.0, st["bconf"]),
            pend=st["pend"] & ~take,
            out_tok=jnp.where(take[:, None], cfg.pad_id, st["out_tok"]),
            out_step=jnp.where(take[:, None], 0, st["out_step"]),
            out_logp=jnp.where(take[:, None], 0.0, st["out_logp"]),
            out_conf=jnp.where(take[:, None], 0.0, st["out_conf"]))
        return new

    zi = jnp.zeros((S,), jnp.int32)
    zb_i, zb_f = jnp.zeros((S, b), jnp.int32), jnp.zeros((S, b), jnp.float32)
    zg_i, zg_f = jnp.zeros((S, G), jnp.int32), jnp.zeros((S, G), jnp.float32)
    st = dict(
        cache=_slot_cache(init_cache, S, T), next=jnp.zeros((), jnp.int32), live=jnp.zeros((S,), bool),
        resp=zi, prompt=jnp.zeros((S, Lq), jnp.int32), P=zi, budget=zi, nbp=zi, rem=zi, j=zi, s=zi, g=zi, appended=zi,
        key=row_keys[jnp.zeros((S,), jnp.int32)],
        blk=zb_i, bstep=zb_i, blogp=zb_f, bconf=zb_f,
        pend=jnp.zeros((S,), bool), pend_blk=zb_i, pend_pos=zb_i,
        out_tok=zg_i, out_step=zg_i, out_logp=zg_f, out_conf=zg_f,
        res_tok=jnp.full((N, G), cfg.pad_id, jnp.int32), res_step=jnp.zeros((N, G), jnp.int32),
        res_logp=jnp.zeros((N, G), jnp.float32), res_conf=jnp.zeros((N, G), jnp.float32),
        res_len=jnp.zeros((N,), jnp.int32), res_steps=jnp.zeros((N,), jnp.int32),
        forwards=jnp.zeros((), jnp.int32), busy=jnp.zeros((), jnp.int32), denoising=jnp.zeros((), jnp.int32))
    st = refill(st, jnp.ones((S,), bool))

    fused = engine.fuse_cache_write
    skip = b if fused else 0   # query positions before the noised block (the clean half of a fused forward)

    def slot_forward(tokens, positions, info, cache):
        one = lambda a: a[None]
        info1 = MaskInfo(*(one(a) for a in info))
        if skip and getattr(forward_fn, "supports_logits_from", False):   # no vocabulary projection of the clean half
            logits, cache = forward_fn(params, one(tokens), one(positions), info1, cache, True, logits_from=skip)
        else:
            logits, cache = forward_fn(params, one(tokens), one(positions), info1, cache, True)
            logits = logits[:, skip:]
        return logits[0], cache

    def inputs_fused(st, live, j):
        """``[S, 2b]`` forward inputs: prefill two prompt blocks, or ``[pending clean | noised block]``."""
        prefill = live & (st["rem"] >= 2)
        denoise = live & (st["rem"] < 2)

        # Prefill: the next two prompt blocks, clean, all written.
        p_tok, p_pos, p_blk, p_val = prompt_piece(st, st["nbp"] - st["rem"], 2 * b)
        # Denoise: [pending clean block | noised block j]. The pending block is the prompt's last block
        # (rem == 1) or the response block finished last.
        l_tok, l_pos, _, l_val = prompt_piece(st, st["nbp"] - 1, b)
        from_prompt = st["rem"] == 1
        pend_tok = jnp.where(from_prompt[:, None], l_tok, st["pend_blk"])
        pend_pos = jnp.where(from_prompt[:, None], l_pos, st["pend_pos"])
        pend_val = jnp.where(from_prompt[:, None], l_val, st["pend"][:, None])
        has_pend = from_prompt | st["pend"]
        blk_pos = (st["P"] + j * b)[:, None] + ar_b[None]
        d_tok = jnp.concatenate([pend_tok, st["blk"]], axis=1)
        d_pos = jnp.concatenate([pend_pos, blk_pos], axis=1)
        d_blk = jnp.concatenate([jnp.broadcast_to((j - 1)[:, None], (S, b)), jnp.broadcast_to(j[:, None], (S, b))],
                                axis=1)
        d_noised = jnp.broadcast_to(ar_2b[None] >= b, (S, 2 * b))
        d_val = jnp.concatenate([pend_val, jnp.ones((S, b), bool)], axis=1)

        pf = prefill[:, None]
        tokens = jnp.where(pf, p_tok, d_tok)
        positions = jnp.where(pf, p_pos, d_pos)
        info = MaskInfo(jnp.where(pf, p_blk, d_blk).astype(jnp.int32), d_noised & ~pf,
                        jnp.where(pf, p_val, d_val & denoise[:, None]))
        keep = jnp.where(prefill, 2 * b, jnp.where(denoise & has_pend, b, 0))
        rem = jnp.where(prefill, st["rem"] - 2, jnp.where(denoise, 0, st["rem"]))
        pend = st["pend"] & ~denoise
        return tokens, positions, info, keep, denoise, rem, pend, blk_pos

    def inputs_unfused(st, live, j):
        """``[S, b]`` forward inputs: one prompt block, the pending block (clean, written), or the noised block."""
        prefill = live & (st["rem"] >= 1)
        save = live & (st["rem"] == 0) & st["pend"]
        denoise = live & (st["rem"] == 0) & ~st["pend"]
        p_tok, p_pos, p_blk, p_val = prompt_piece(st, st["nbp"] - st["rem"], b)
        blk_pos = (st["P"] + j * b)[:, None] + ar_b[None]
        pf, sv = prefill[:, None], save[:, None]
        tokens = jnp.where(pf, p_tok, jnp.where(sv, st["pend_blk"], st["blk"]))
        positions = jnp.where(pf, p_pos, jnp.where(sv, st["pend_pos"], blk_pos))
        blk_id = jnp.where(pf, p_blk, jnp.where(save, j - 1, j)[:, None] + jnp.zeros((S, b), jnp.int32))
        info = MaskInfo(blk_id.astype(jnp.int32), jnp.broadcast_to(denoise[:, None], (S, b)),
                        jnp.where(pf, p_val, (save | denoise)[:, None]))
        keep = jnp.where(prefill | save, b, 0)
        rem = st["rem"] - prefill.astype(jnp.int32)
        pend = st["pend"] & ~save
        return tokens, positions, info, keep, denoise, rem, pend, blk_pos

    def body(st):
        live = st["live"]
        j, s, g = st["j"], st["s"], st["g"]
        tokens, positions, info, keep, denoise, rem, pend, blk_pos = (inputs_fused if fused else inputs_unfused)(
            st, live, j)
        length0 = st["cache"].length
        logits, cache = jax.vmap(slot_forward)(tokens, positions, info, st["cache"])
        cache = jax.vmap(kvc.truncate)(cache, length0 + keep)

        # One denoising step (§1.4, §1.5, §1.8) for the denoising slots.
        masked = st["blk"] == cfg.mask_id
        active = denoise & jnp.any(masked, axis=-1)
        keys = jax.vmap(jax.random.fold_in)(st["key"], g)
        out = jax.vmap(lambda k, z: sample(k, z, cfg.temperature, cfg.top_k, cfg.top_p,
                                           exclude_id=cfg.mask_id))(keys, logits)
        commit = remasking.select(cfg.strategy, out.confidence, masked, quotas[jnp.minimum(s, Sb - 1)],
                                  cfg.threshold) & active[:, None]
        first = commit & (st["bstep"] == 0)
        blk = jnp.where(commit, out.tokens, st["blk"])
        bstep = jnp.where(first, (g + 1)[:, None], st["bstep"])
        blogp = jnp.where(commit, out.logprob, st["blogp"])
        bconf = jnp.where(commit, out.confidence, st["bconf"])
        g = g + active.astype(jnp.int32)
        s = s + denoise.astype(jnp.int32)

        # A block with no masks left (or out of steps) is committed (§1.7): scanned in order, EOS before budget.
        done = denoise & (~jnp.any(blk == cfg.mask_id, axis=-1) | (s >= Sb))
        off = j * b
        idx = off[:, None] + ar_b[None]
        is_eos = (blk == cfg.eos_id) & (not cfg.ignore_eos)
        stop = is_eos | (idx >= st["budget"][:, None])
        first_stop = jnp.where(jnp.any(stop, -1), jnp.argmax(stop, -1), b)[:, None]
        appended = (ar_b[None] < first_stop) | ((ar_b[None] == first_stop) & is_eos)
        n_app = st["appended"] + jnp.where(done, jnp.sum(appended, -1), 0).astype(jnp.int32)
        ended = done & (jnp.any(stop, -1) | (n_app >= st["budget"]) | (j + 1 >= num_blocks))

        # The committed block enters the slot's response buffers at its offset.
        at = (ar_G[None] >= off[:, None]) & (ar_G[None] < (off + b)[:, None]) & done[:, None]
        within = jnp.clip(ar_G[None] - off[:, None], 0, b - 1)
        put = lambda buf, v: jnp.where(at, jnp.take_along_axis(v, within, axis=1), buf)
        out_tok, out_step = put(st["out_tok"], blk), put(st["out_step"], bstep)
        out_logp, out_conf = put(st["out_logp"], blogp), put(st["out_conf"], bconf)

        # A finished response leaves its slot: its rows go to the results at its queue index.
        dest = jnp.where(ended, st["resp"], N)
        res = lambda r, v: r.at[dest].set(v, mode="drop")
        nxt = (~ended)[:, None]
        new = dict(
            st, cache=cache, rem=rem,
            j=jnp.where(done, j + 1, j), s=jnp.where(done, 0, s), g=g, appended=n_app,
            blk=jnp.where(done[:, None], cfg.mask_id, blk), bstep=jnp.where(done[:, None], 0, bstep),
            blogp=jnp.where(done[:, None], 0.0, blogp), bconf=jnp.where(done[:, None], 0.0, bconf),
            pend=jnp.where(done, ~ended, pend),
            pend_blk=jnp.where(done[:, None] & nxt, blk, st["pend_blk"]),
            pend_pos=jnp.where(done[:, None] & nxt, blk_pos, st["pend_pos"]),
            out_tok=out_tok, out_step=out_step, out_logp=out_logp, out_conf=out_conf,
            res_tok=res(st["res_tok"], out_tok), res_step=res(st["res_step"], out_step),
            res_logp=res(st["res_logp"], out_logp), res_conf=res(st["res_conf"], out_conf),
            res_len=res(st["res_len"], n_app), res_steps=res(st["res_steps"], g),
            forwards=st["forwards"] + 1, busy=st["busy"] + jnp.sum(live).astype(jnp.int32),
            denoising=st["denoising"] + jnp.sum(active).astype(jnp.int32))
        return refill(new, ended | ~live)

    st = lax.while_loop(lambda st: jnp.any(st["live"]), body, st)
    rollout = Rollout(st["res_tok"], st["res_step"], st["res_logp"], st["res_conf"], st["res_len"], st["res_steps"])
    stats = EngineStats(st["forwards"], st["forwards"] * S, st["busy"], st["denoising"])
    return rollout, stats


def _typed(keys) -> bool:
    return jnp.issubdtype(keys.dtype, jax.dtypes.prng_key)


def _select_keys(take, new, old):
    """``where(take, new, old)`` for typed PRNG key arrays ``[S]``."""
    data = jnp.where(take.reshape((-1,) + (1,) * (jax.random.key_data(new).ndim - 1)),
                     jax.random.key_data(new), jax.random.key_data(old))
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(new))


def make_slot_engine(forward_fn: ForwardFn, init_cache: Callable[[int, int], kvc.KVCache], cfg: BlockSamplerConfig,
                     engine: EngineConfig, *, vocab_size: Optional[int] = None,
                     max_positions: Optional[int] = None):
    """Builds a compiled slot engine: the block sampler's rollouts, continuously batched.

    Args:
      forward_fn: the block sampler's ``forward_fn`` protocol
        (:func:`tracerl_jax.models.sampler_forward_fn`); the engine calls it
        ``vmap``-ed over slots with batch one and ``write_cache=True``.
      init_cache: ``(batch, max_len) -> KVCache``; the engine builds one
        cache of batch one and ``engine.slot_cache_len(cfg)`` slots per
        engine slot.
      cfg: :class:`BlockSamplerConfig` (strategy, sampling options, lengths,
        stopping); ``compat`` must be ``"recommended"``.
      engine: :class:`EngineConfig` (slots, prompt budget, cache size).
      vocab_size, max_positions: for validation; default the model's.

    Returns:
      ``sample_fn(params, prompts [N, Lq], prompt_valid [N, Lq], rng=None,
      row_keys=None, row_budgets=None, return_stats=False) -> Rollout`` (``[N, G]`` fields, in
      queue order), or ``(Rollout, EngineStats)`` with ``return_stats``. The
      ``N`` prompts are the refill queue; ``N`` may exceed ``num_slots``.
      With the same ``row_keys [N]``, response ``i`` equals the block
      sampler's on prompt ``i`` alone (up to float32 rounding, module
      docstring). ``row_budgets`` (int ``[N]``) are per-response completion
      budgets, as the block sampler's. One compile per ``(N, Lq)``.

    Raises:
      ValueError: (before tracing) ``compat`` other than ``"recommended"``,
        ``num_slots`` beyond ``cache_tokens``, a prompt longer than
        ``max_prompt_len``, a queue whose ``prompt_valid`` / ``row_keys``
        do not match ``prompts``.
    """
    check_engine(cfg, engine)
    vocab_size, max_positions = model_limits(forward_fn, vocab_size, max_positions)
    core = jax.jit(lambda params, prompts, valid, keys, budgets=None: _run(forward_fn, init_cache, cfg, engine, params,
                                                                       prompts, valid, keys, budgets))

    def sample_fn(params, prompts, prompt_valid, rng=None, row_keys=None, row_budgets=None,
                  return_stats: bool = False):
        prompts = jnp.asarray(prompts)
        prompt_valid = jnp.asarray(prompt_valid, bool)
        if row_keys is not None:
            row_keys = jnp.asarray(row_keys) if not isinstance(row_keys, jax.Array) else row_keys
            if not _typed(row_keys):
                if row_keys.ndim != 2:
                    raise ValueError(f"row_keys must be [N] typed keys or [N, 2] raw uint32 keys, "
                                     f"got shape {tuple(row_keys.shape)}")
                row_keys = jax.random.wrap_key_data(row_keys)
        validate_queue(prompts, prompt_valid, row_keys, cfg, engine, vocab_size, max_positions)
        row_budgets = validate_row_budgets(row_budgets, prompts.shape[0], cfg)
        row_keys = row_keys_for(prompts.shape[0], rng, row_keys, random=cfg.temperature != 0.0)
        if not _typed(row_keys):
            row_keys = jax.random.wrap_key_data(row_keys)
        Lq = prompts.shape[1]
        if Lq > engine.max_prompt_len:   # only padding beyond the budget (validate_queue checked)
            cut = Lq - engine.max_prompt_len
            prompts, prompt_valid = prompts[:, cut:], prompt_valid[:, cut:]
        rollout, stats = core(params, prompts.astype(jnp.int32), prompt_valid, row_keys, row_budgets)
        return (rollout, stats) if return_stats else rollout

    # Ahead-of-time lowering, as the block sampler's: ``lower_core(params, prompts, prompt_valid, row_keys)``.
    sample_fn.lower_core = core.lower
    return sample_fn
