"""Random-masking / coupled RL rows and SFT rows for full-attention models (§9.2, §10.2).

Every builder draws per-row response masks and hands them to
``trajectory_full.assemble_full_rows``, so the single-sequence layout,
positions, padding and scoring (Dream's shift) are exactly those of the
TraceRL rows. Train RL rows with the policy step (``steps.FULL_ATTENTION_REF``
is the reference loss) and SFT rows with ``steps.make_sft_step(...,
normalizer="row_tokens")`` (§10.2: per-row token mean, no ``1/t``).

Tail pads: every ``PAD`` of a response beyond its first ``post_num`` (the
per-sequence rule of §5). For RL rollouts pass the response with ``PAD``
after the completion, so tokens after EOS are tail pads too.

Randomness is explicit (Appendix A.3): ``key`` is split into one key per
response, so rows are a deterministic function of the key.
"""

from __future__ import annotations

from functools import partial
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from tracerl_jax import trajectory
from tracerl_jax.attention import causal_info
from tracerl_jax.trajectory_full import FullRows, _check_options, assemble_full_rows

RATIOS = ("token", "row")


def _check(prompt_ids, prompt_valid, response_ids, response_valid, lower_p, upper_p, family, compat, post_num):
    _check_options(family, compat, post_num)
    if not 0.0 <= lower_p <= upper_p <= 1.0:
        raise ValueError(f"need 0 <= lower_p <= upper_p <= 1, got lower_p={lower_p!r}, upper_p={upper_p!r}")
    trajectory._check_rank("prompt_ids", prompt_ids, 2)
    trajectory._check_rank("response_ids", response_ids, 2)
    N, L0 = np.shape(prompt_ids)
    trajectory._check_shape("prompt_valid", prompt_valid, (N, L0))
    trajectory._check_shape("response_ids", response_ids, (N, np.shape(response_ids)[1]))
    if response_valid is not None:
        trajectory._check_shape("response_valid", response_valid, (N,))
    return N


@partial(jax.jit, static_argnames=("mask_id", "pad_id", "family", "compat", "num_draws", "lower_p", "upper_p",
                                   "post_num", "coupled"))
def _random_rows(key, prompt_ids, prompt_valid, response_ids, response_valid, *, mask_id, pad_id, family, compat,
                 num_draws, lower_p, upper_p, post_num, coupled):
    N, L1 = response_ids.shape
    m = num_draws

    def one(k):  # one scalar ratio per row (§9.2), strict "<"
        kt, ku = jax.random.split(k)
        t = jax.random.uniform(kt, (m, 1), jnp.float32, lower_p, upper_p)
        return jax.random.uniform(ku, (m, L1), jnp.float32) < t

    drawn = jax.vmap(one)(jax.random.split(key, N))  # [N, m, L1]
    tail = ~trajectory.trainable_mask(response_ids, pad_id, post_num)[:, None, :]
    masked = drawn | tail
    scored = drawn & ~tail
    rounds = jnp.arange(m, dtype=jnp.int32)
    if coupled:  # each draw, then its complement (interleaved: they share an optimizer step)
        masked = jnp.stack([masked, ~drawn | tail], axis=2).reshape(N, 2 * m, L1)
        scored = jnp.stack([scored, ~drawn & ~tail], axis=2).reshape(N, 2 * m, L1)
        rounds = jnp.arange(2 * m, dtype=jnp.int32)
    per = masked.shape[1]
    idx = jnp.repeat(jnp.arange(N, dtype=jnp.int32), per)
    return assemble_full_rows(prompt_ids, prompt_valid, response_ids, masked.reshape(N * per, L1),
                              scored.reshape(N * per, L1), idx, jnp.tile(rounds, N), response_valid[idx],
                              mask_id=mask_id, pad_id=pad_id, family=family, compat=compat)


def full_random_masking_rows(key: jax.Array, prompt_ids: jax.Array, prompt_valid: jax.Array,
                             response_ids: jax.Array, *, mask_id: int, pad_id: int, family: str,
                             num_draws: int = 35, lower_p: float = 0.1, upper_p: float = 0.9,
                             post_num: Optional[int] = 0, coupled: bool = False,
                             response_valid: Optional[jax.Array] = None,
                             compat: str = "recommended") -> FullRows:
    """``random_masking`` / ``coupled`` rows (§9.2); also random-masking SFT (§10.2).

    Per response, ``num_draws`` draws (``mask_times_per_sample``: 35 for RL,
    LLaDA SFT uses 1): each draws one ratio ``t ~ U(lower_p, upper_p)`` and
    masks every response token with probability ``t`` (strict ``<``). Tail
    pads are always masked and never scored; ``p_mask`` = the drawn tokens.
    ``coupled`` adds after each draw its complement row, which masks the
    tokens the draw left visible (plus the tail pads) and scores them, so a
    pair scores every trainable token once. Empty rows are marked invalid.

    Args:
      key: PRNG key.
      prompt_ids: int ``[N, L0]`` left-padded; prompt_valid: bool ``[N, L0]``.
      response_ids: int ``[N, L1]`` (``PAD`` after the completion).
      mask_id, pad_id, family, compat: as in ``trajectory_full.build_full_rows``.
      num_draws: ``m`` draws per response.
      lower_p, upper_p: range of the masking ratio.
      post_num: ``PAD`` tokens per response kept for training.
      coupled: emit the complementary rows.
      response_valid: optional bool ``[N]``; False rows are marked invalid.

    Returns:
      :class:`FullRows` with ``R = N * m`` rows (``2 * N * m`` when coupled;
      response ``n``'s rows are consecutive, ``round_index`` = draw, or
      ``2 * draw + {0, 1}`` for coupled pairs).
    """
    N = _check(prompt_ids, prompt_valid, response_ids, response_valid, lower_p, upper_p, family, compat, post_num)
    if not isinstance(num_draws, (int, np.integer)) or num_draws < 1:
        raise ValueError(f"num_draws must be an int >= 1, got {num_draws!r}")
    rv = jnp.ones((N,), bool) if response_valid is None else jnp.asarray(response_valid, bool)
    return _random_rows(key, jnp.asarray(prompt_ids), jnp.asarray(prompt_valid, bool), jnp.asarray(response_ids),
                        rv, mask_id=int(mask_id), pad_id=int(pad_id), family=family, compat=compat,
                        num_draws=int(num_draws), lower_p=float(lower_p), upper_p=float(upper_p), post_num=post_num,
                        coupled=bool(coupled))


@partial(jax.jit, static_argnames=("mask_id", "pad_id", "family", "compat", "group", "max_groups", "lower_p",
                                   "upper_p", "post_num", "ratio"))
def _semi_ar_rows(key, prompt_ids, prompt_valid, response_ids, step_map, lengths, *, mask_id, pad_id, family,
                  compat, group, max_groups, lower_p, upper_p, post_num, ratio):
    N, L1 = response_ids.shape
    T = max_groups
    aligned, valid = trajectory.align_step_map(step_map, lengths)
    later, current = trajectory.round_masks(aligned, L1, group, T)  # current: group t; later: t and after

    def one(k):
        ku, kv = jax.random.split(k)
        u = jax.random.uniform(ku, (T, L1 if ratio == "token" else 1), jnp.float32, lower_p, upper_p)
        return jax.random.uniform(kv, (T, L1), jnp.float32) < u

    drawn = jax.vmap(one)(jax.random.split(key, N)) & current  # [N, T, L1]
    masked = (later & ~current) | drawn
    scored = drawn & trajectory.trainable_mask(response_ids, pad_id, post_num)[:, None, :]
    idx = jnp.repeat(jnp.arange(N, dtype=jnp.int32), T)
    return assemble_full_rows(prompt_ids, prompt_valid, response_ids, masked.reshape(N * T, L1),
                              scored.reshape(N * T, L1), idx, jnp.tile(jnp.arange(T, dtype=jnp.int32), N),
                              valid[idx], mask_id=mask_id, pad_id=pad_id, family=family, compat=compat)


def full_semi_ar_sft_rows(key: jax.Array, prompt_ids: jax.Array, prompt_valid: jax.Array, response_ids: jax.Array,
                          *, mask_id: int, pad_id: int, family: str, block_size: int = 16,
                          step_map: Optional[jax.Array] = None, lower_p: float = 0.1, upper_p: float = 0.9,
                          post_num: Optional[int] = 0, ratio: Optional[str] = None,
                          compat: str = "recommended") -> FullRows:
    """``semi-ar`` SFT rows for full-attention models (§10.2).

    The step map (default left to right) is cut into groups of
    ``block_size`` consecutive steps (block ids for the default map). Group
    ``g``'s row keeps earlier groups clean, masks later groups entirely and
    masks each token of group ``g`` with probability ``u``; ``p_mask`` = the
    masked tokens of group ``g`` minus the tail pads. Empty rows are invalid.

    Args:
      key: PRNG key.
      prompt_ids, prompt_valid, response_ids: as :func:`full_random_masking_rows`.
      mask_id, pad_id, family, compat: as in ``trajectory_full.build_full_rows``.
      block_size: steps per group (the reference default is 16).
      step_map: optional int ``[N, L1]`` increasing ids; default ``[1..L1]``.
      lower_p, upper_p: range of ``u``.
      post_num: ``PAD`` tokens per response kept for training.
      ratio: ``"token"`` [REF]: one ``u`` per token (i.i.d. Bernoulli of mean
        ``(lower_p+upper_p)/2``, Q-T5); ``"row"``: one ``u`` per row. Default
        from ``compat`` (``"row"`` when recommended).

    Returns:
      :class:`FullRows` with ``R = N * ceil(max steps / block_size)`` rows.
    """
    N = _check(prompt_ids, prompt_valid, response_ids, None, lower_p, upper_p, family, compat, post_num)
    ratio = ratio or ("token" if compat == "reference" else "row")
    if ratio not in RATIOS:
        raise ValueError(f"ratio must be one of {RATIOS}, got {ratio!r}")
    if not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise ValueError(f"block_size must be an int >= 1, got {block_size!r}")
    L1 = np.shape(response_ids)[1]
    if step_map is None:
        step_map = jnp.broadcast_to(jnp.arange(1, L1 + 1, dtype=jnp.int32), (N, L1))
    trajectory._check_shape("step_map", step_map, (N, L1))
    return _semi_ar_rows(key, jnp.asarray(prompt_ids), jnp.asarray(prompt_valid, bool), jnp.asarray(response_ids),
                         jnp.asarray(step_map, jnp.int32), jnp.full((N,), L1, jnp.int32), mask_id=int(mask_id),
                         pad_id=int(pad_id), family=family, compat=compat, group=int(block_size),
                         max_groups=-(-L1 // int(block_size)), lower_p=float(lower_p), upper_p=float(upper_p),
                         post_num=post_num, ratio=ratio)


def full_ar_sft_rows(prompt_ids: jax.Array, prompt_valid: jax.Array, response_ids: jax.Array, *, pad_id: int,
                     post_num: Optional[int] = 0) -> FullRows:
    """``ar`` SFT rows (Dream only, §10.2): next-token prediction under a causal mask.

    One clean row per example; prompt pads are masked keys, every trainable
    response token is scored (with the Dream shift, the output at ``L0+j-1``
    predicts token ``j``).

    Args:
      prompt_ids: int ``[N, L0]`` left-padded; prompt_valid: bool ``[N, L0]``.
      response_ids: int ``[N, L1]``.
      pad_id, post_num: the per-sequence pad rule.

    Returns:
      :class:`FullRows` with ``R = N`` rows and a causal ``mask_info``.
    """
    N = _check(prompt_ids, prompt_valid, response_ids, None, 0.0, 1.0, "dream", "recommended", post_num)
    L1 = np.shape(response_ids)[1]
    response_ids = jnp.asarray(response_ids)
    rows = assemble_full_rows(jnp.asarray(prompt_ids), jnp.asarray(prompt_valid, bool), response_ids,
                              jnp.zeros((N, L1), bool), trajectory.trainable_mask(response_ids, pad_id, post_num),
                              jnp.arange(N), jnp.zeros((N,), jnp.int32), jnp.ones((N,), bool), mask_id=0,
                              pad_id=pad_id, family="dream")
    return rows._replace(mask_info=causal_info(rows.mask_info.valid))
